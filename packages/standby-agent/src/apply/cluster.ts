/**
 * WAL mode's seed: the set's base backup becomes the standby's cluster, a hot standby that then
 * replays the primary's WAL from the filestore through `tandem-standby wal-fetch`.
 *
 * - Staging (stage.ts) unpacks the verified base backup into `<dataDir>.tandem-new` beside the live
 *   data directory, with the safe extractor (nothing outside it, bounded by the signed sizes).
 * - `prepareCluster`, still before anything live changes: `pg_verifybackup` checks every file
 *   against PostgreSQL's own backup_manifest and the WAL the backup needs; the standby's own server
 *   settings are carried over from the live data directory (postgresql.conf, pg_hba.conf,
 *   pg_ident.conf: port, addresses and access are this server's, not the primary's); the primary's
 *   postgresql.auto.conf (ALTER SYSTEM: the site's settings) stays, with tandem's recovery settings
 *   appended: restore_command calling the agent, recovery_target_timeline latest; `standby.signal`;
 *   everything owned by the live data directory's owner, the directory 0700.
 * - The switch (journaled like every part): the cluster stopped (stopCommand), live → .tandem-old,
 *   new → live (two renames in one parent directory), the seed recorded for wal-fetch
 *   (wal-seed.json: the cluster's system id), the cluster started (startCommand) and waited for
 *   until it accepts connections. The old data directory goes when the apply finishes.
 */
import { chmod, chown, copyFile, lstat, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { TandemError, fsyncDir, pgEnv, writeFileAtomic, type Logger, type Manifest, type StandbyConfig } from '@tandem/shared';
import { runShell } from './restart.js';
import { exists, swapDir } from './swap-dirs.js';
import type { Names } from './targets.js';

const run = promisify(execFile);

/** The server's own settings, kept from the live data directory through a seed. */
export const SERVER_CONF_FILES = ['postgresql.conf', 'pg_hba.conf', 'pg_ident.conf'] as const;

export const TANDEM_CONF_MARK = '# tandem (WAL mode): recovery from the filestore';

/** What wal-fetch checks each WAL file against: the cluster the standby was seeded from. */
export interface WalSeed {
  format: 'tandem-wal-seed';
  site: string;
  setId: string;
  systemId: string;
  timeline: number;
  startLsn: string;
  epoch: number;
  seededAt: string;
  /** `apply --at`: the replay stops (pauses) at this time. */
  recoveryTargetTime?: string;
  /** The WAL file the base backup starts in (absent after a rejoin). */
  startWalFile?: string;
}

export const walSeedFile = (stateDir: string): string => join(stateDir, 'wal-seed.json');

export async function readWalSeed(stateDir: string): Promise<WalSeed | null> {
  try {
    const v = JSON.parse(await readFile(walSeedFile(stateDir), 'utf8')) as WalSeed;
    return v.format === 'tandem-wal-seed' ? v : null;
  } catch {
    return null;
  }
}

export function walSeedOf(config: StandbyConfig, manifest: Manifest, target?: Date): WalSeed {
  const d = manifest.database;
  return {
    format: 'tandem-wal-seed',
    site: config.site,
    setId: manifest.setId,
    systemId: d.systemId!,
    timeline: d.timeline!,
    startLsn: d.startLsn!,
    epoch: manifest.epoch,
    ...(d.startWalFile === undefined ? {} : { startWalFile: d.startWalFile }),
    seededAt: new Date().toISOString(),
    ...(target === undefined ? {} : { recoveryTargetTime: target.toISOString() }),
  };
}

const shellQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
/** A value in postgresql.conf: single quotes doubled. */
const confQuote = (s: string): string => `'${s.replace(/'/g, "''")}'`;

/** "2026-12-02 21:37:18.059+00": the form recovery_target_time takes (it refuses ISO 8601's "T…Z"). */
export const pgTimestamp = (t: Date): string => t.toISOString().replace('T', ' ').replace('Z', '+00');

/** The restore_command PostgreSQL runs for every WAL file it needs: this agent, with this config. */
export function restoreCommand(config: StandbyConfig): string {
  // The agent that seeds, by absolute path: PostgreSQL's PATH need not have it.
  const bin = process.env.TANDEM_STANDBY_BIN ?? `${shellQuote(process.execPath)} ${shellQuote(realpathSync(process.argv[1]!))}`;
  // --spool: where the daemon puts files it fetched ahead (prefetch.ts): answered without loading the agent.
  return `${bin} wal-fetch --config ${shellQuote(config.configFile)} --site ${shellQuote(config.site)} --spool ${shellQuote(join(config.stateDir, 'wal-spool'))} %f %p`;
}

/** Owner of the live data directory (the cluster's OS user): the seed's files get it. */
export async function clusterOwner(dataDir: string): Promise<{ uid: number; gid: number }> {
  try {
    const s = await stat(dataDir);
    return { uid: s.uid, gid: s.gid };
  } catch (err) {
    throw new TandemError('config', 'WAL_DATA_DIR', `database.dataDir ${dataDir}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such directory' : (err as Error).message}`, {
      hint: 'create the standby cluster first (initdb or pg_createcluster, as its OS user): the seed replaces its data directory and keeps its postgresql.conf, pg_hba.conf and owner',
    });
  }
}

export async function chownTree(dir: string, owner: { uid: number; gid: number }): Promise<void> {
  await chown(dir, owner.uid, owner.gid);
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) await chownTree(p, owner);
    else await chown(p, owner.uid, owner.gid).catch(async (err: unknown) => {
      // lchown for a link (a base backup of a cluster without tablespaces has none).
      if ((await lstat(p)).isSymbolicLink()) return;
      throw err;
    });
  }
}

const pgVerifyBackupBin = (config: StandbyConfig): string => (config.database.binDir ? join(config.database.binDir, 'pg_verifybackup') : 'pg_verifybackup');

/**
 * The recovery settings (restore_command through this agent, the newest timeline) appended to the
 * data directory's postgresql.auto.conf, replacing those of an earlier seed or rejoin, and
 * `standby.signal`: PostgreSQL starts as a hot standby replaying from the filestore.
 */
export async function makeStandbyDataDir(config: StandbyConfig, dir: string, extra: Record<string, string> = {}): Promise<void> {
  await writeRestoreCommand(config, dir, extra);
  await writeFile(join(dir, 'standby.signal'), '', { mode: 0o600 });
}

/** The recovery settings alone (pg_rewind --restore-target-wal reads restore_command from there). */
export async function writeRestoreCommand(config: StandbyConfig, dir: string, extra: Record<string, string> = {}): Promise<void> {
  const autoConf = join(dir, 'postgresql.auto.conf');
  const text = (await exists(autoConf)) ? await readFile(autoConf, 'utf8') : '';
  // An earlier block of ours (a rejoined former standby) goes: the last setting would win anyway,
  // but the file stays readable.
  const mark = text.indexOf(TANDEM_CONF_MARK);
  const before = mark === -1 ? text : text.slice(0, mark);
  const settings = { restore_command: confQuote(restoreCommand(config)), recovery_target_timeline: "'latest'", ...extra };
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${v}`);
  await writeFile(autoConf, `${before}${before.endsWith('\n') || before === '' ? '' : '\n'}${TANDEM_CONF_MARK}\n${lines.join('\n')}\n`, { mode: 0o600 });
}

/** Everything between the unpacked base backup and a data directory ready to swap in. */
export async function prepareCluster(config: StandbyConfig, names: Names, manifest: Manifest, logger: Logger, target?: Date): Promise<number> {
  const t0 = performance.now();
  const dir = names.next;
  // PostgreSQL's own check of the backup: every file's checksum, and the WAL it needs (pg_waldump).
  try {
    await run(pgVerifyBackupBin(config), ['--quiet', dir], { maxBuffer: 4 << 20 });
  } catch (err) {
    const e = err as { stderr?: string; code?: string | number };
    if (e.code === 'ENOENT') {
      throw new TandemError('config', 'TOOL_MISSING', `pg_verifybackup not found (${pgVerifyBackupBin(config)})`, { hint: 'install postgresql-client-15 (it has pg_verifybackup), or set database.binDir' });
    }
    throw new TandemError('integrity', 'BASE_BACKUP_INVALID', `set ${manifest.setId}: pg_verifybackup refused the base backup: ${(e.stderr ?? String(err)).trim().split('\n').slice(0, 5).join('; ')}`, {
      hint: 'the live cluster is untouched; make a new set on the primary',
    });
  }
  const owner = await clusterOwner(config.database.dataDir!);
  for (const f of SERVER_CONF_FILES) {
    if (await exists(join(config.database.dataDir!, f))) await copyFile(join(config.database.dataDir!, f), join(dir, f));
  }
  // apply --at: replay up to that moment and pause there (readable; promote or apply again to go on).
  await makeStandbyDataDir(config, dir, target === undefined ? {} : { recovery_target_time: confQuote(pgTimestamp(target)), recovery_target_action: "'pause'" });
  await chownTree(dir, owner);
  await chmod(dir, 0o700);
  logger.info({ dataDir: dir, seconds: Math.round(performance.now() - t0) / 1000 }, 'base backup verified (pg_verifybackup) and made a standby data directory');
  return Math.round(performance.now() - t0) / 1000;
}

/** Stops the cluster, swaps the data directories, records the seed, starts it and waits for it. */
export async function swapCluster(config: StandbyConfig, names: Names, seed: WalSeed, logger: Logger, between?: () => void): Promise<string> {
  const outcome = await swapDir(
    names,
    async () => {
      await runShell(config.database.stopCommand!, 'database.stopCommand', logger);
    },
    between,
  );
  await writeFileAtomic(walSeedFile(config.stateDir), `${JSON.stringify(seed, null, 2)}\n`);
  await fsyncDir(config.stateDir);
  await runShell(config.database.startCommand!, 'database.startCommand', logger);
  await waitAccepting(config, logger);
  return outcome;
}

/** Until the cluster accepts connections (a hot standby does once it is consistent), at most 5 minutes. */
export async function waitAccepting(config: StandbyConfig, logger: Logger, timeoutMs = 300_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    const c = new pg.Client({ connectionString: config.database.url, password: pgEnv(config.database).PGPASSWORD, connectionTimeoutMillis: 5000 });
    try {
      await c.connect();
      await c.query('select 1');
      return;
    } catch (err) {
      last = err;
    } finally {
      await c.end().catch(() => undefined);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  logger.error({ err: last }, 'the seeded cluster does not accept connections');
  throw new TandemError('transient', 'CLUSTER_NOT_STARTED', `the cluster in ${config.database.dataDir} did not accept connections within ${timeoutMs / 1000} s after database.startCommand: ${(last as Error)?.message ?? ''}`, {
    hint: "look at PostgreSQL's log; the seed is in place, and the next apply retries the start",
  });
}
