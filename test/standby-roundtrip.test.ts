/**
 * The round trip, against real PostgreSQL, the real agents and both filestores: primary site →
 * backup → apply → the standby equals the primary; change everything, back up, apply, equal again;
 * then promote.
 */
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layout } from '@tandem/shared';
import { silentPrimary } from './support/heartbeat.js';
import { startS3rver, s3rverEnv, s3rverFilestoreUrl, type S3rverHandle } from './support/s3rver.js';
import {
  dumpDatabaseState,
  ensurePostgres,
  mutateDemoDatabase,
  mutateSiteTree,
  requireCommands,
  snapshotTree,
  tmpDir,
  type TreeEntry,
} from './support/site.js';
import {
  apply,
  backup,
  createStandbySite,
  dropSiteDatabases,
  restartLog,
  runStandby,
  show,
  writeSitePrimaryConfig,
  type StandbySite,
} from './support/standby-helpers.js';

const without = (tree: TreeEntry[], paths: string[]) => tree.filter((e) => !paths.includes(e.path));

/** The standby's security tree must equal the primary's except for modes: files 0600, dirs 0700. */
const asSecrets = (tree: TreeEntry[]) => tree.map((e) => ({ ...e, mode: e.type === 'file' ? 0o600 : e.type === 'dir' ? 0o700 : e.mode }));

async function expectEqualSites(s: StandbySite, setId: string): Promise<void> {
  expect(await dumpDatabaseState(s.standby.db)).toEqual(await dumpDatabaseState(s.primary.db));
  expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
  const sec = await snapshotTree(s.standby.paths.security);
  expect(sec).toEqual(asSecrets(await snapshotTree(s.primary.paths.security)));
  expect((await stat(s.standby.paths.security)).mode & 0o777).toBe(0o700);
  // Config: equal except the preserved file (the standby's own) and the sentinel.
  const cfg = await snapshotTree(s.standby.paths.config);
  expect(without(cfg, ['BACKUP', 'config.d/db.yml'])).toEqual(without(await snapshotTree(s.primary.paths.config), ['config.d/db.yml']));
  expect(await readFile(join(s.standby.paths.config, 'config.d', 'db.yml'), 'utf8')).toContain('standby-db.local');
  const sentinel = JSON.parse(await readFile(s.standby.paths.sentinel, 'utf8')) as Record<string, unknown>;
  expect(sentinel).toMatchObject({ mode: 'backup', site: s.site });
  const applied = JSON.parse(await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8')) as Record<string, unknown>;
  expect(applied).toMatchObject({ setId, site: s.site, restart: 'ok' });
  expect(applied.bytes).toBeGreaterThan(0);
}

describe.each(['dir', 's3'] as const)('standby round trip (%s filestore)', (kind) => {
  let root: string;
  let s: StandbySite;
  let s3: S3rverHandle | undefined;

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-standby-rt-');
    if (kind === 's3') {
      s3 = await startS3rver();
      // One restore job on S3: the dump stays encrypted on disk and streams into pg_restore.
      s = await createStandbySite(root, { filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'unique' }), env: s3rverEnv(), restoreJobs: 1 });
    } else {
      s = await createStandbySite(root);
    }
  });

  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    await s3?.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('applies a set, applies the next one, and promotes', async () => {
    const first = await backup(s);
    const r1 = await apply(s, ['--json']);
    expect(r1.code, show(r1)).toBe(0);
    expect(JSON.parse(r1.stdout)).toMatchObject({ status: 'applied', setId: first });
    await expectEqualSites(s, first);
    // The dump and the files archive carry signed chunk digests and were used as they downloaded
    // (the dump with more than one restore job; kept stored, encrypted, for a one-job restore it is
    // verified whole first, like the small documents, which download while the dump decompresses).
    const staged = r1.stderr
      .split('\n')
      .filter((l) => l.includes('artifact verified and staged'))
      .map((l) => JSON.parse(l) as { artifact: string; streamed: boolean });
    expect(staged.map((l) => l.artifact)).toEqual(['db', 'dbmeta', 'config', 'security', 'files']);
    for (const l of staged) expect(l.streamed, l.artifact).toBe(l.artifact === 'files' || (l.artifact === 'db' && kind === 'dir'));
    expect(await restartLog(s)).toEqual([`backup ${first}`]);

    // A standby-only file in the config dir that is not preserved goes; the preserved one stays.
    await writeFile(join(s.standby.paths.config, 'local-only.txt'), 'not preserved\n');
    await mutateDemoDatabase(s.primary.db);
    await mutateSiteTree(join(root, 'primary'));
    // The first set stored the (random, media-like) files uncompressed; this one is told to
    // compress them whatever they are: the standby reads each as its manifest says.
    await writeSitePrimaryConfig(s, s.primary.configFile, { compression: { files: 'zstd' } });
    const second = await backup(s);
    const store = s.openStore();
    try {
      const names = async (id: string) => (await store.list(layout.set(s.site, id))).map((o) => o.key.split('/').pop()).filter((n) => n?.startsWith('files.'));
      expect(await names(first)).toEqual(['files.tar.age']);
      expect(await names(second)).toEqual(['files.tar.zst.age']);
    } finally {
      await store.close();
    }
    const r2 = await apply(s);
    expect(r2.code, show(r2)).toBe(0);
    expect(r2.stdout).toContain(`applied set ${second}`);
    await expectEqualSites(s, second);
    expect(await restartLog(s)).toEqual([`backup ${first}`, `backup ${second}`]);

    // Same set again: a no-op that says so; the restore drill passes on it.
    const r3 = await apply(s);
    expect(r3.code, show(r3)).toBe(0);
    expect(r3.stdout).toContain('already applied');
    expect(await restartLog(s)).toHaveLength(2);
    // --force applies it again, for real: recorded anew and restarted.
    const r3f = await apply(s, ['--force']);
    expect(r3f.code, show(r3f)).toBe(0);
    expect(r3f.stdout).toContain(`applied set ${second}`);
    await expectEqualSites(s, second);
    expect(await restartLog(s)).toEqual([`backup ${first}`, `backup ${second}`, `backup ${second}`]);
    const v = await runStandby(['verify', '--config', s.standby.configFile, '--json'], { env: s.env });
    expect(v.code, show(v)).toBe(0);
    const report = JSON.parse(v.stdout) as { ok: boolean; setId: string; artifacts: Array<{ name: string; ok: boolean; entries: number }> };
    expect(report).toMatchObject({ ok: true, setId: second });
    expect(report.artifacts.map((a) => [a.name, a.ok])).toEqual([['db', true], ['dbmeta', true], ['config', true], ['security', true], ['files', true]]);
    expect(report.artifacts.every((a) => a.entries > 0)).toBe(true);

    await silentPrimary(s); // the primary's last heartbeat, stale and naming the newest set
    const p = await runStandby(['promote', '--config', s.standby.configFile, '--json'], { env: s.env });
    expect(p.code, show(p)).toBe(0);
    expect(JSON.parse(p.stdout)).toMatchObject({ status: 'promoted', appliedSetId: second, forced: false, restart: 'ok' });
    await expect(stat(s.standby.paths.sentinel)).rejects.toThrow(/ENOENT/);
    expect(await restartLog(s)).toEqual([`backup ${first}`, `backup ${second}`, `backup ${second}`, `primary ${second}`]);
    // The promoted site's data is still the second set's.
    expect(await dumpDatabaseState(s.standby.db)).toEqual(await dumpDatabaseState(s.primary.db));
    // ... and an apply would overwrite the new primary: refused.
    const r4 = await apply(s);
    expect(r4.code, show(r4)).not.toBe(0);
    expect(r4.stderr).toMatch(/promoted to primary/);
  });
});
