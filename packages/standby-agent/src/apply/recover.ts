import { isTandemError, type Logger, type StandbyConfig } from '@tandem/shared';
import { finishApply, type FinishResult } from './finish.js';
import { readJournal, removeJournal, type Journal } from './journal.js';
import { dropNextDatabase } from './swap-db.js';
import { removeAll, switchParts } from './switch.js';
import { DIR_PARTS } from './targets.js';

export type Recovery =
  | { action: 'none' }
  | { action: 'rolled-back'; setId: string }
  | { action: 'completed'; setId: string; finish: FinishResult };

/**
 * Finishes or undoes an apply that was killed: a journal in phase 'staging' is rolled back (nothing
 * live had changed), one in phase 'switching' is rolled forward (every part was staged and verified,
 * some may already be live). Run under the apply lock, before anything else.
 */
export async function recover(config: StandbyConfig, logger: Logger): Promise<Recovery> {
  const journal = await readJournal(config.stateDir);
  if (journal === null) return { action: 'none' };
  const log = logger.child({ setId: journal.setId, recovery: journal.phase === 'staging' ? 'roll-back' : 'roll-forward' });
  if (journal.phase === 'staging') {
    log.warn('an earlier apply was interrupted before it changed anything live: removing what it staged');
    await rollBack(config, journal, log);
    return { action: 'rolled-back', setId: journal.setId };
  }
  log.warn({ switched: journal.switched }, 'an earlier apply was interrupted while switching: finishing it');
  await switchParts(config, journal, log).catch(rollBackUnswitchedSchema(config, journal, log));
  const finish = await finishApply(config, journal, log, performance.now());
  if (finish.restartError !== undefined) log.error({ err: finish.restartError }, 'the finished apply could not restart the site');
  return { action: 'completed', setId: journal.setId, finish };
}

/** Removes everything an unfinished apply staged (phase 'staging' only: nothing of it is live). */
export async function rollBack(config: StandbyConfig, journal: Journal, logger: Logger): Promise<void> {
  // A schema has no "next" copy: it is restored in the switch's one transaction (schema.ts).
  if (journal.targets.db.schemaOf === undefined && journal.targets.cluster === undefined) await dropNextDatabase(config, journal.targets.db);
  await removeAll([...DIR_PARTS.map((p) => journal.targets.dirs[p].next), ...(journal.targets.cluster ? [journal.targets.cluster.next] : []), journal.stagingDir], logger);
  await removeJournal(config.stateDir);
}

/**
 * database.schema: the schema is restored in the switch itself, first of the parts. When that
 * transaction failed (and so rolled back) before any part was switched, nothing live changed:
 * the apply is rolled back as one that failed while staging, and the error rethrown.
 */
export function rollBackUnswitchedSchema(config: StandbyConfig, journal: Journal, logger: Logger): (err: unknown) => Promise<never> {
  return async (err) => {
    if (journal.targets.db.schemaOf !== undefined && journal.switched.length === 0 && isTandemError(err) && (err.code === 'SCHEMA_RESTORE_FAILED' || err.code === 'DB_RESTORE_UNSAFE' || err.code === 'PG_RESTORE_UNRESTRICTED')) {
      await rollBack(config, journal, logger).catch((e: unknown) => logger.error({ err: e }, 'could not remove everything the failed apply staged; the next apply retries'));
    }
    throw err;
  };
}
