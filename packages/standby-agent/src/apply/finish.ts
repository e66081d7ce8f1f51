import type { Logger, StandbyConfig } from '@tandem/shared';
import { faultPoint } from './fault.js';
import { removeJournal, type Journal } from './journal.js';
import { runRestart } from './restart.js';
import { readApplied, writeApplied, type AppliedState } from './state.js';
import { dropOldSchema } from './schema.js';
import { dropOldDatabase } from './swap-db.js';
import { removeAll } from './switch.js';
import { DIR_PARTS } from './targets.js';

export interface FinishResult {
  applied: AppliedState;
  /** The restart command's failure, if it failed: the set is applied and recorded all the same. */
  restartError?: unknown;
}

/**
 * After every part is switched: record the applied set, drop what was kept for rollback, end the
 * journal, then restart the site. The restart comes last and is recorded in applied.json, so a kill
 * before it is made good by the next apply (see runPendingRestart).
 */
export async function finishApply(config: StandbyConfig, journal: Journal, logger: Logger, t0: number): Promise<FinishResult> {
  let applied = await readApplied(config.stateDir);
  // Recorded already by this very apply (killed after its record)? Then keep that record.
  if (applied === null || applied.setId !== journal.setId || applied.appliedAt < journal.startedAt) {
    applied = {
      site: journal.site,
      setId: journal.setId,
      epoch: journal.epoch,
      seq: journal.seq,
      createdAt: journal.createdAt,
      committedAt: journal.committedAt ?? null,
      appliedAt: new Date().toISOString(),
      bytes: journal.bytes,
      durations: { ...journal.durations, total: Math.round(performance.now() - t0) / 1000 },
      restart: config.restartCommand ? 'pending' : 'none',
    };
    await writeApplied(config.stateDir, applied);
  }
  faultPoint('recorded');

  const db = journal.targets.db;
  if (journal.walSeed === undefined && journal.dbKept !== true) await (db.schemaOf === undefined ? dropOldDatabase(config, db) : dropOldSchema(config, db, logger)).catch((err: unknown) =>
    logger.warn({ err, [db.schemaOf === undefined ? 'database' : 'schema']: db.old }, `could not drop the previous ${db.schemaOf === undefined ? 'database' : 'schema'}; the next apply drops it`),
  );
  // Files switched in place leave their staging (the plan, what was renamed from it) under "next".
  await removeAll([...DIR_PARTS.map((p) => journal.targets.dirs[p].old), ...(journal.targets.cluster ? [journal.targets.cluster.old] : []), ...(journal.filesObjects ? [journal.targets.dirs.files.next] : []), journal.stagingDir], logger);
  await removeJournal(config.stateDir);
  logger.info('set applied'); // the logger names the set

  faultPoint('before-restart');
  return { applied, ...(await restartAfterApply(config, applied, logger)) };
}

/** Runs restartCommand (TANDEM_MODE=backup) if one is pending, and records the outcome. */
export async function restartAfterApply(
  config: StandbyConfig,
  applied: AppliedState,
  logger: Logger,
): Promise<{ restartError?: unknown }> {
  if (!config.restartCommand || applied.restart === 'ok' || applied.restart === 'none') return {};
  try {
    await runRestart(config.restartCommand, { mode: 'backup', site: config.site, setId: applied.setId }, logger);
    applied.restart = 'ok';
    return {};
  } catch (err) {
    applied.restart = 'failed';
    return { restartError: err };
  } finally {
    await writeApplied(config.stateDir, applied);
  }
}
