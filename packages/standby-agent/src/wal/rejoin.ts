/**
 * WAL mode: a former primary rejoins as a standby of the server that replaced it.
 *
 * After a promote the old primary's cluster has gone its own way (WAL it wrote before it was
 * stopped, or after, while fenced, that no standby ever saw). `pg_rewind` winds its data directory
 * back to where the new primary's timeline forked and copies what changed since from the new
 * primary (a libpq connection: --source), which is far cheaper than a new copy of the cluster; it
 * needs wal_log_hints = on (or data checksums) on the old primary, and PostgreSQL says so when it
 * cannot. Then the data directory becomes a hot standby replaying from the filestore, exactly as
 * a seed makes one (cluster.ts): restore_command through this agent, the newest timeline,
 * standby.signal, wal-seed.json naming the cluster, the BACKUP sentinel.
 *
 * When pg_rewind cannot (no wal_log_hints, the WAL it needs is gone, the new primary unreachable,
 * or no --source at all), the cluster is seeded afresh from the newest set instead: `apply --force`.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TandemError, acquireLock, agentId, controlSystemId, readEpochDoc, writeFileAtomic, type Filestore, type Logger, type StandbyConfig } from '@tandem/shared';
import { SERVER_CONF_FILES, makeStandbyDataDir, waitAccepting, walSeedFile, writeRestoreCommand, type WalSeed } from '../apply/cluster.js';
import { runShell } from '../apply/restart.js';
import { runApply } from '../apply/run-apply.js';
import { ensureSentinel } from '../apply/sentinel.js';
import { stateFiles } from '../apply/state.js';

const run = promisify(execFile);

export interface RejoinResult {
  method: 'pg_rewind' | 'seed';
  /** Why pg_rewind was not used or failed (method seed). */
  why?: string;
  systemId: string;
}

export async function rejoin(config: StandbyConfig, opts: { filestore: Filestore; logger: Logger; source?: string; seed?: boolean }): Promise<RejoinResult> {
  const { logger, filestore: fs } = opts;
  if (config.database.mode !== 'wal') {
    throw new TandemError('config', 'WAL_MODE_OFF', `site "${config.site}" is not in WAL mode (database.mode in ${config.configFile}): rejoin is for WAL mode; in dump mode, \`tandem-standby apply\` makes any server a standby`);
  }
  // Never the site's primary: rejoin turns this server's cluster into a copy.
  const epoch = (await readEpochDoc(fs, config.site))?.doc ?? null;
  if (epoch !== null && epoch.primaryId === agentId(config.stateDir)) {
    throw new TandemError('precondition', 'REJOIN_IS_PRIMARY', `epoch.json names this server (agent ${epoch.primaryId}, epoch ${epoch.epoch}) as the primary of site "${config.site}": it cannot rejoin as a standby of itself`, {
      hint: 'run rejoin on the former primary, with the standby config of that server',
    });
  }
  if (opts.seed === true || opts.source === undefined) {
    const why = opts.seed === true ? '--seed' : 'no --source to rewind from';
    return seedAfresh(config, opts, why);
  }
  const lock = await acquireLock(stateFiles(config.stateDir).lock, 'rejoin', `an apply or promote of site "${config.site}"`);
  let why: string | undefined;
  try {
    await runShell(config.database.stopCommand!, 'database.stopCommand', logger);
    const bin = config.database.binDir ? join(config.database.binDir, 'pg_rewind') : 'pg_rewind';
    // The WAL pg_rewind must read back to the fork was archived and may be gone from pg_wal: it
    // fetches it with the cluster's restore_command (--restore-target-wal), which is this agent's,
    // checking each file against the cluster's own system id.
    const systemId = await controlSystemId(config.database.dataDir!);
    await writeFileAtomic(walSeedFile(config.stateDir), `${JSON.stringify(rejoinSeed(config, systemId, epoch?.epoch ?? 0), null, 2)}\n`);
    await writeRestoreCommand(config, config.database.dataDir!);
    // pg_rewind copies the new primary's configuration files over this server's: keep this server's.
    const own = new Map<string, Buffer>();
    for (const f of SERVER_CONF_FILES) {
      const body = await readFile(join(config.database.dataDir!, f)).catch(() => null);
      if (body !== null) own.set(f, body);
    }
    try {
      const r = await run(bin, ['--target-pgdata', config.database.dataDir!, '--source-server', opts.source, '--restore-target-wal'], { maxBuffer: 8 << 20 });
      logger.info({ output: `${r.stdout}${r.stderr}`.trim().split('\n').slice(-3).join('; ') }, 'pg_rewind wound the cluster back to the new primary\'s timeline');
    } catch (err) {
      const e = err as { stderr?: string; code?: string | number };
      why = e.code === 'ENOENT' ? `pg_rewind not found (${bin})` : `pg_rewind failed: ${(e.stderr ?? String(err)).trim().split('\n').slice(-3).join('; ')}`;
      logger.warn({ reason: why }, 'cannot rewind: seeding the cluster afresh from the newest set instead');
    }
    if (why === undefined) {
      // pg_rewind copied the source's configuration files too: this server's own come back.
      for (const [f, body] of own) await writeFile(join(config.database.dataDir!, f), body);
      await makeStandbyDataDir(config, config.database.dataDir!);
      await ensureSentinel(config.paths.sentinel, config.site, null);
      // This server was the primary; an explicit rejoin makes it a standby again.
      await rm(stateFiles(config.stateDir).promoted, { force: true });
      await runShell(config.database.startCommand!, 'database.startCommand', logger);
      await waitAccepting(config, logger);
      logger.info('rejoined as a standby (pg_rewind): the cluster replays the new primary\'s WAL from the filestore');
      return { method: 'pg_rewind', systemId };
    }
  } finally {
    await lock.release();
  }
  return seedAfresh(config, opts, why);
}

const rejoinSeed = (config: StandbyConfig, systemId: string, epoch: number): WalSeed => ({
  format: 'tandem-wal-seed',
  site: config.site,
  setId: 'rejoin',
  systemId,
  timeline: 0,
  startLsn: '0/0',
  epoch,
  seededAt: new Date().toISOString(),
});

async function seedAfresh(config: StandbyConfig, opts: { filestore: Filestore; logger: Logger }, why: string): Promise<RejoinResult> {
  // This server was the primary (promoted.json, if it ever was promoted): an explicit rejoin makes it
  // a standby again; the record comes back if the seed cannot be made. wal-seed.json stays until a
  // new seed replaces it (--force seeds anew whatever it says).
  const promotedFile = stateFiles(config.stateDir).promoted;
  const promoted = await readFile(promotedFile).catch(() => null);
  await rm(promotedFile, { force: true });
  const restorePromoted = async () => {
    if (promoted !== null) await writeFileAtomic(promotedFile, promoted);
  };
  const r = await runApply(config, { filestore: opts.filestore, logger: opts.logger, force: true, caller: 'apply' }).catch(async (err: unknown) => {
    await restorePromoted().catch(() => undefined);
    if (err instanceof TandemError && err.kind === 'fenced') {
      throw new TandemError(err.kind, err.code, `${err.message} (seeding afresh because ${why})`, {
        hint: 'make a set on the new primary first (`tandem-primary backup` there), then rejoin again',
        cause: err,
      });
    }
    throw err;
  });
  const systemId = await controlSystemId(config.database.dataDir!);
  opts.logger.info({ setId: r.applied.setId }, 'rejoined as a standby: seeded afresh from the newest set');
  return { method: 'seed', why, systemId };
}
