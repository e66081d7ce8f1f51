/**
 * Crash safety: `apply` is SIGKILLed at every named stage; right after the kill the standby database
 * and trees are exactly the previous set's or the new one's (never a mix, never missing), and the
 * next `apply` finishes (or rolls back and redoes) the job.
 */
import { readFile, rm, stat } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpDatabaseState, ensurePostgres, mutateDemoDatabase, mutateSiteTree, requireCommands, snapshotTree, tmpDir, type DatabaseState, type TreeEntry } from './support/site.js';
import { apply, backup, createStandbySite, dropSiteDatabases, expectNoLeftovers, restartLog, show, type StandbySite } from './support/standby-helpers.js';
import { join } from 'node:path';

/** In the order an apply passes them; from 'db-swapped' on the live database is the new set's. */
const POINTS = [
  'journal-written',
  'staged-db',
  'staged-config',
  'staged-security',
  'staged-files',
  'sentinel-written',
  'db-restored',
  'switching',
  'db-swapped',
  'config-swapped',
  'security-swapped',
  'files-swapped',
  'recorded',
  'before-restart',
] as const;
const SWITCHED_FROM = (part: string) => POINTS.indexOf(`${part}-swapped` as (typeof POINTS)[number]);

interface SetImage {
  id: string;
  db: DatabaseState;
  files: TreeEntry[];
  siteYml: string;
}

describe('apply killed at each stage', () => {
  let root: string;
  let s: StandbySite;
  const sets: SetImage[] = [];

  const image = async (id: string): Promise<SetImage> => ({
    id,
    db: await dumpDatabaseState(s.primary.db),
    files: await snapshotTree(s.primary.paths.files),
    siteYml: await readFile(join(s.primary.paths.config, 'config.d', 'site.yml'), 'utf8'),
  });

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-standby-kill-');
    s = await createStandbySite(root);
    sets.push(await image(await backup(s)));
    const r = await apply(s);
    expect(r.code, show(r)).toBe(0);
    await mutateDemoDatabase(s.primary.db);
    await mutateSiteTree(join(root, 'primary'));
    sets.push(await image(await backup(s)));
  });

  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it.each(POINTS.map((p, i) => [p, i] as const))('killed at %s, the next apply completes', async (point, i) => {
    // Alternate directions: even points go A → B (the newest), odd ones B → A (named, older).
    const [prev, next] = i % 2 === 0 ? [sets[0]!, sets[1]!] : [sets[1]!, sets[0]!];
    const args = next === sets[1] ? [] : ['--set', next.id, '--allow-older'];

    const killed = await apply(s, args, { TANDEM_FAULT_KILL_AT: point });
    expect(killed.signal, show(killed)).toBe('SIGKILL');

    // Right after the kill: each part is wholly the previous set's or the new one's, as the stage says.
    const db = await dumpDatabaseState(s.standby.db);
    expect(db).toEqual(i >= SWITCHED_FROM('db') ? next.db : prev.db);
    expect(await snapshotTree(s.standby.paths.files)).toEqual(i >= SWITCHED_FROM('files') ? next.files : prev.files);
    const siteYml = await readFile(join(s.standby.paths.config, 'config.d', 'site.yml'), 'utf8');
    expect(siteYml).toBe(i >= SWITCHED_FROM('config') ? next.siteYml : prev.siteYml);
    await stat(s.standby.paths.sentinel); // present throughout

    const done = await apply(s, args);
    expect(done.code, show(done)).toBe(0);
    expect(await dumpDatabaseState(s.standby.db)).toEqual(next.db);
    expect(await snapshotTree(s.standby.paths.files)).toEqual(next.files);
    expect(await readFile(join(s.standby.paths.config, 'config.d', 'site.yml'), 'utf8')).toBe(next.siteYml);
    const applied = JSON.parse(await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8')) as { setId: string; restart: string };
    expect(applied).toMatchObject({ setId: next.id, restart: 'ok' });
    expect((await restartLog(s)).at(-1)).toBe(`backup ${next.id}`);
    expect(await expectNoLeftovers(s)).toEqual([]);
  });
});
