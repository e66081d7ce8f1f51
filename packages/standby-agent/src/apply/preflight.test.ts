import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ArtifactEntry, ArtifactName, Manifest, StandbyConfig } from '@tandem/shared';
import { checkSpace, checkTools, databaseMissing } from './preflight.js';
import type { AppliedState } from './state.js';
import { dbNames, dirNames, type Targets } from './targets.js';

/**
 * The parts of the preflight that need no PostgreSQL: tools (real programs, and a fake old
 * pg_restore), the database-exists rule, and free space against real file systems. The database
 * checks run against a real server in test/wrong-box.test.ts.
 */
let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tandem-preflight-'));
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

const configWith = (o: { binDir?: string; restoreJobs?: number; create?: boolean; stateDir?: string; base?: string } = {}): StandbyConfig => {
  const base = o.base ?? '/srv/demo';
  return {
    site: 'demo',
    configFile: '/etc/tandem/standby.yml',
    stateDir: o.stateDir ?? '/var/lib/tandem/demo',
    database: { url: 'postgres://tandem@127.0.0.1/demo', binDir: o.binDir, restoreJobs: o.restoreJobs ?? 2, maintenanceDb: 'postgres', create: o.create ?? false },
    paths: { config: join(base, 'priv'), security: join(base, 'security'), files: join(base, 'files'), sentinel: join(base, 'priv', 'BACKUP') },
  } as unknown as StandbyConfig;
};

const entry = (name: ArtifactName, storedSize: number, plainSize: number, chunks = true): ArtifactEntry =>
  ({ name, kind: 'tar', file: `${name}.x`, storedSize, storedSha256: '0'.repeat(64), plainSize, compression: 'zstd', encryption: 'age', ...(chunks ? { chunks: { size: 8 << 20, sha256: [] } } : {}) }) as unknown as ArtifactEntry;

const manifestWith = (sizes: Partial<Record<ArtifactName, [number, number]>>, serverVersion = '15.8', unchunked: ArtifactName[] = []): Manifest =>
  ({
    setId: '20261122T030000Z-e1-000042',
    database: { name: 'demo', serverVersion },
    artifacts: (['db', 'config', 'security', 'files'] as const).map((n) => entry(n, sizes[n]?.[0] ?? 1000, sizes[n]?.[1] ?? 2000, !unchunked.includes(n))),
  }) as unknown as Manifest;

const targetsFor = (config: StandbyConfig): Targets => ({
  db: dbNames('demo'),
  dirs: { config: dirNames(config.paths.config), security: dirNames(config.paths.security), files: dirNames(config.paths.files) },
});

describe('preflight: tools', () => {
  it('passes with the installed pg_restore, zstd and prlimit', async () => {
    expect(await checkTools(configWith(), manifestWith({}, '15.8 (Debian 15.8-0+deb12u1)'))).toEqual([]);
  });

  it('names a pg_restore missing from database.binDir, and one older than the set', async () => {
    const missing = await checkTools(configWith({ binDir: join(root, 'no-such-bin') }), manifestWith({}));
    expect(missing).toHaveLength(1);
    expect(missing[0]).toMatchObject({ code: 'MISSING_BINARY', kind: 'config' });
    expect(missing[0]!.message).toContain(join(root, 'no-such-bin', 'pg_restore'));
    expect(missing[0]!.hint).toContain('fix database.binDir');

    const old = join(root, 'old-bin');
    await mkdir(old, { recursive: true });
    await writeFile(join(old, 'pg_restore'), '#!/bin/sh\necho "pg_restore (PostgreSQL) 13.16"\n');
    await chmod(join(old, 'pg_restore'), 0o755);
    const tooOld = await checkTools(configWith({ binDir: old }), manifestWith({}, '15.8 (Debian 15.8-0+deb12u1)'));
    expect(tooOld).toEqual([
      expect.objectContaining({
        code: 'PG_RESTORE_TOO_OLD',
        message: `${join(old, 'pg_restore')} is version 13.16, older than the PostgreSQL 15.8 (Debian 15.8-0+deb12u1) the set was dumped from: it cannot be relied on to read that dump`,
      }),
    ]);
    expect(await checkTools(configWith({ binDir: old }), manifestWith({}, '13.2'))).toEqual([]);
  });
});

describe('preflight: the live database that does not exist', () => {
  const applied = { setId: '20261121T030000Z-e1-000041' } as AppliedState;
  const t = targetsFor(configWith());

  it('is refused by name, saying both ways to allow it', () => {
    const p = databaseMissing({ config: configWith(), targets: t, applied: null, createDatabase: false });
    expect(p).toMatchObject({ code: 'DB_MISSING', message: 'the database "demo" (database.url in /etc/tandem/standby.yml) does not exist on this server' });
    expect(p!.hint).toContain('tandem-standby apply --create-database');
    expect(p!.hint).toContain('database.create: true');
  });

  it('is created with --create-database at any time, with database.create on the first apply only', () => {
    expect(databaseMissing({ config: configWith(), targets: t, applied, createDatabase: true })).toBeNull();
    expect(databaseMissing({ config: configWith({ create: true }), targets: t, applied: null, createDatabase: false })).toBeNull();
    const later = databaseMissing({ config: configWith({ create: true }), targets: t, applied, createDatabase: false });
    expect(later?.message).toContain(`though set ${applied.setId} was applied here before: database.create only lets the first apply create it`);
  });
});

describe('preflight: free space', () => {
  it('passes what fits and refuses what does not, naming the file system and what needs the room', async () => {
    const base = join(root, 'site');
    await mkdir(base, { recursive: true });
    const config = configWith({ base, stateDir: join(root, 'state') });
    expect(await checkSpace(config, manifestWith({}), targetsFor(config))).toEqual([]);

    const huge = 1 << 30; // a GiB; a million of them below: more than any disk here
    // A files archive without chunk digests (an older primary's set) is downloaded whole first.
    const problems = await checkSpace(config, manifestWith({ db: [1000, huge * 1_000_000], files: [5000, 9000] }, '15.8', ['files']), targetsFor(config));
    expect(problems).toHaveLength(1); // state dir and site dirs share one file system here: one sum
    expect(problems[0]).toMatchObject({ code: 'DISK_SPACE', kind: 'permanent' });
    expect(problems[0]!.message).toContain(`not enough free space on the file system of ${join(root, 'state', 'staging')}, ${base}: `);
    expect(problems[0]!.message).toMatch(/\(the dump 976\.6 TiB; the stored copy of the files artifact while it is used 4\.9 KiB; the new config dir, up to 2\.0 KiB; .*the new files dir, up to 8\.8 KiB\)$/);

    // With chunk digests it streams into its extraction: no stored copy of it needs room.
    const streamed = await checkSpace(config, manifestWith({ db: [1000, huge * 1_000_000], files: [5000, 9000] }), targetsFor(config));
    expect(streamed[0]!.message).toMatch(/\(the dump 976\.6 TiB; the stored copy of the config artifact while it is used 1000 B; the new config dir, up to 2\.0 KiB; .*the new files dir, up to 8\.8 KiB\)$/);
    expect(streamed[0]!.message).not.toContain('stored copy of the files artifact');

    // One job: the dump's stored copy is kept instead of the plain dump.
    const oneJob = configWith({ base, stateDir: join(root, 'state'), restoreJobs: 1 });
    expect(await checkSpace(oneJob, manifestWith({ db: [1000, huge * 1_000_000] }), targetsFor(oneJob))).toEqual([]);
  });
});
