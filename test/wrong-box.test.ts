/**
 * The wrong box: each agent refuses to run where the other one's site is, saying why, and a check
 * before the download refuses what would fail later (an unreachable or missing database), with
 * nothing downloaded, staged or created.
 *
 * - `tandem-standby apply --force` (and `run`) on the server epoch.json names as the primary;
 * - `tandem-standby apply` while a tandem-primary daemon runs with its state directory;
 * - `tandem-primary backup` (and `run`) on a site holding the BACKUP sentinel;
 * - a standby database that does not exist: refused by name unless --create-database (or
 *   database.create on the first apply) allows it;
 * - PostgreSQL unreachable: refused before a byte of the set is downloaded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layout } from '@tandem/shared';
import {
  closedPort,
  dbUrl,
  dumpDatabaseState,
  ensurePostgres,
  logRecords,
  messageLines,
  requireCommands,
  runPrimary,
  snapshotTree,
  tmpDir,
  withDb,
  writePrimaryConfig,
} from './support/site.js';
import { apply, backup, createStandbySite, databaseExists, removeStandbySite, runStandby, show, type StandbySite } from './support/standby-helpers.js';

let root: string;
let s: StandbySite;


beforeAll(async () => {
  requireCommands(['zstd', 'tar', 'pg_dump', 'pg_restore']);
  await ensurePostgres();
  root = await tmpDir('tandem-wrong-box-');
  s = await createStandbySite(root);
  await backup(s);
});

afterAll(async () => {
  await removeStandbySite(s, root);
});

/** A standby config (YAML as written) for this site: the fixtures' keys and filestore, the rest as given. */
async function standbyConfig(name: string, o: { db: string; paths: { config: string; security: string; files: string }; stateDir: string; database?: Record<string, unknown> }): Promise<string> {
  const file = join(root, `${name}.yml`);
  await writeFile(
    file,
    toYaml({
      site: s.site,
      database: { url: dbUrl(o.db), ...o.database },
      paths: o.paths,
      filestore: { url: s.filestoreUrl },
      keys: { identityFile: s.keys.identityFile, verifyKeyFile: s.keys.verifyKeyFile },
      stateDir: o.stateDir,
      server: { listen: '127.0.0.1:0' },
      restartCommand: 'true',
    }),
  );
  return file;
}

/** The operator's message (the non-JSON lines of stderr). */
const message = (stderr: string): string => messageLines(stderr).join('\n');

async function readLatest(): Promise<Buffer> {
  const fs = s.openStore();
  try {
    return (await fs.getBuffer(layout.latest(s.site))).body;
  } finally {
    await fs.close();
  }
}

async function storedSets(): Promise<string[]> {
  const fs = s.openStore();
  try {
    return (await fs.list(layout.sets(s.site))).map((o) => o.key).sort();
  } finally {
    await fs.close();
  }
}

async function listOrNone(dir: string): Promise<string[] | null> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return null;
  }
}

describe('the standby agent on the primary', () => {
  it('apply --force on the server epoch.json names as the primary is refused; the primary site is untouched', async () => {
    // A standby config written on the primary's server: its site and, as both agents of a server
    // share it by default, its state directory (and so its agent id).
    const cfg = await standbyConfig('standby-on-primary', { db: s.primary.db, paths: s.primary.paths, stateDir: s.primary.stateDir });
    const id = (await readFile(join(s.primary.stateDir, 'agent-id'), 'utf8')).trim();
    const trees = async () => Promise.all([snapshotTree(s.primary.paths.config), snapshotTree(s.primary.paths.security), snapshotTree(s.primary.paths.files)]);
    const before = { trees: await trees(), db: await dumpDatabaseState(s.primary.db), state: await listOrNone(s.primary.stateDir) };

    const r = await runStandby(['apply', '--config', cfg, '--force']);
    expect(r.code, show(r)).toBe(1);
    const text = message(r.stderr);
    expect(text).toMatch(new RegExp(`epoch\\.json of site "${s.site}" names agent ${id} \\(.+\\) as the primary in epoch 1`));
    expect(text).toContain(`and that is this server's own agent id (${join(s.primary.stateDir, 'agent-id')}): this server is the site's primary`);
    expect(text).toContain("applying a set here would overwrite the primary's live site with a copy of it; nothing was changed");
    expect(text).toMatch(/hint: run tandem-standby on the standby server/);

    // The daemon refuses too, before it marks the site as a standby: exit 2, not to be restarted.
    const d = await runStandby(['run', '--config', cfg], { timeoutMs: 30_000 });
    expect(d.code, show(d)).toBe(2);
    expect(message(d.stderr)).toContain('the standby daemon must not run here');

    await expect(readFile(join(s.primary.paths.config, 'BACKUP'))).rejects.toThrow(/ENOENT/);
    expect(await trees()).toEqual(before.trees);
    expect(await dumpDatabaseState(s.primary.db)).toEqual(before.db);
    expect(await listOrNone(s.primary.stateDir)).toEqual(before.state); // no staging, journal or lock
    expect(await databaseExists(`${s.primary.db}__tandem_new`)).toBe(false);
    // And that primary still backs up.
    expect(await backup(s)).toMatch(/-e1-/);
  });

  it('apply is refused while a tandem-primary daemon runs with the same state directory', async () => {
    const state = join(root, 'shared-state');
    await mkdir(state, { recursive: true });
    const sleeper: ChildProcess = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      await writeFile(join(state, 'daemon.json'), JSON.stringify({ agent: 'tandem-primary', pid: sleeper.pid, listen: '127.0.0.1:7070', startedAt: '2026-11-22T03:00:00.000Z', site: s.site }));
      const cfg = await standbyConfig('standby-beside-primary-daemon', { db: s.standby.db, paths: s.standby.paths, stateDir: state, database: { create: true } });
      const r = await runStandby(['apply', '--config', cfg]);
      expect(r.code, show(r)).toBe(1);
      expect(message(r.stderr)).toContain(`a tandem-primary daemon (pid ${sleeper.pid}, since 2026-11-22T03:00:00.000Z) runs with this state directory (${join(state, 'daemon.json')}): this server is the site's primary`);
      expect(await databaseExists(s.standby.db)).toBe(false);
      await expect(readFile(s.standby.paths.sentinel)).rejects.toThrow(/ENOENT/);
    } finally {
      sleeper.kill();
    }
  });
});

describe('the primary agent on a standby', () => {
  it('backup and run refuse while the BACKUP sentinel exists: nothing uploaded, latest.json unchanged', async () => {
    const r = await apply(s); // the standby: its site now holds the sentinel
    expect(r.code, show(r)).toBe(0);
    const sentinel = s.standby.paths.sentinel;
    await readFile(sentinel);
    // A primary config written on the standby's server, for its site.
    const cfg = await writePrimaryConfig(join(root, 'primary-on-standby.yml'), {
      site: s.site,
      databaseUrl: dbUrl(s.standby.db),
      paths: s.standby.paths,
      filestoreUrl: s.filestoreUrl,
      keys: s.keys,
      stateDir: join(root, 'primary-on-standby-state'),
    });
    const latest = await readLatest();
    const sets = await storedSets();

    const b = await runPrimary(['backup', '--config', cfg]);
    expect(b.code, show(b)).toBe(1);
    const text = message(b.stderr);
    expect(text).toContain(`the sentinel ${sentinel} exists (written by tandem-standby at `);
    expect(text).toContain(`site "${s.site}" on this server is a standby in backup mode; a backup from here would publish the standby's copy as the site's newest set; nothing was uploaded`);
    expect(text).toMatch(/hint: run tandem-primary on the primary server\. To make this server the primary, promote it/);
    expect(text).not.toMatch(/fenced/);
    expect(await readLatest()).toEqual(latest);
    expect(await storedSets()).toEqual(sets);

    const d = await runPrimary(['run', '--config', cfg], { env: { TANDEM_TOKEN: 'x'.repeat(40) }, timeoutMs: 30_000 });
    expect(d.code, show(d)).toBe(2);
    expect(message(d.stderr)).toContain('the primary daemon must not run here');
    expect(await readLatest()).toEqual(latest);
    expect(await storedSets()).toEqual(sets);
  });
});

describe('the standby database', () => {
  const typo = () => `${s.standby.db}_typo`;
  const created = () => `${s.standby.db}_created`;
  afterAll(async () => {
    for (const db of [typo(), created()]) await withDb('postgres', (c) => c.query(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`));
  });

  const dbsLike = async (name: string): Promise<string[]> =>
    (await withDb('postgres', (c) => c.query<{ datname: string }>('SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1', [`${name}%`]))).rows.map((r) => r.datname);

  it('a database that does not exist is refused by name, and nothing is created; --create-database creates it', async () => {
    const state = join(root, 'typo-state');
    const cfg = await standbyConfig('standby-typo', { db: typo(), paths: s.standby.paths, stateDir: state });
    const r = await runStandby(['apply', '--config', cfg]);
    expect(r.code, show(r)).toBe(1);
    const text = message(r.stderr);
    expect(text).toContain(`the database "${typo()}" (database.url in ${cfg}) does not exist on this server; nothing was downloaded and nothing changed`);
    expect(text).toContain('apply --create-database');
    expect(text).toContain('database.create: true');
    expect(await dbsLike(typo())).toEqual([]);
    expect(await listOrNone(join(state, 'staging'))).toBeNull();

    // Asked for: the first apply creates it.
    const cfg2 = await standbyConfig('standby-create', { db: created(), paths: s.standby.paths, stateDir: join(root, 'create-state') });
    const c = await runStandby(['apply', '--config', cfg2, '--create-database']);
    expect(c.code, show(c)).toBe(0);
    expect(await dbsLike(created())).toEqual([created()]);
  });

  it('database.create counts on the first apply only: a name that vanished later is refused', async () => {
    const state = join(root, 'create-key-state');
    const ok = await standbyConfig('standby-create-key', { db: created(), paths: s.standby.paths, stateDir: state, database: { create: true } });
    await withDb('postgres', (c) => c.query(`DROP DATABASE IF EXISTS "${created()}" WITH (FORCE)`));
    const r = await runStandby(['apply', '--config', ok]);
    expect(r.code, show(r)).toBe(0);
    // The same standby, the name misspelt later: not created again.
    const later = await standbyConfig('standby-create-key-typo', { db: typo(), paths: s.standby.paths, stateDir: state, database: { create: true } });
    const t = await runStandby(['apply', '--config', later, '--force']);
    expect(t.code, show(t)).toBe(1);
    expect(message(t.stderr)).toContain(`the database "${typo()}" (database.url in ${later}) does not exist on this server, though set `);
    expect(message(t.stderr)).toContain('database.create only lets the first apply create it');
    expect(await dbsLike(typo())).toEqual([]);
  });

  it('with PostgreSQL unreachable, apply is refused before any download: nothing staged, no stack trace', async () => {
    const state = join(root, 'down-state');
    const port = await closedPort();
    const cfg = await standbyConfig('standby-db-down', { db: s.standby.db, paths: s.standby.paths, stateDir: state, database: { create: true } });
    await writeFile(cfg, (await readFile(cfg, 'utf8')).replace(/127\.0\.0\.1:5432/, `127.0.0.1:${port}`));
    expect(await readFile(cfg, 'utf8')).toContain(`127.0.0.1:${port}`);
    const r = await runStandby(['apply', '--config', cfg]);
    expect(r.code, show(r)).toBe(1); // as for any database error (DB_CONNECT)
    const text = message(r.stderr);
    expect(text).toMatch(new RegExp(`error: database postgres://postgres@127\\.0\\.0\\.1:${port}/postgres: connection refused; set \\S+ was not downloaded and nothing changed`));
    expect(text).toMatch(/hint: is PostgreSQL running/);
    // No stack trace anywhere: not in the message, not in an error-level log record.
    expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(logRecords(r.stderr).filter((l) => typeof l.level === 'number' && l.level >= 50)).toEqual([]);
    expect(JSON.stringify(logRecords(r.stderr))).not.toMatch(/"stack"/);
    // Nothing staged, no journal: not a byte of the set on disk.
    expect(await listOrNone(join(state, 'staging'))).toBeNull();
    expect(await listOrNone(state)).not.toContain('journal.json');
  });
});
