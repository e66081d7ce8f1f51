import type { Logger, StandbyConfig } from '@tandem/shared';
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
  await switchParts(config, journal, log);
  const finish = await finishApply(config, journal, log, performance.now());
  if (finish.restartError !== undefined) log.error({ err: finish.restartError }, 'the finished apply could not restart the site');
  return { action: 'completed', setId: journal.setId, finish };
}

/** Removes everything an unfinished apply staged (phase 'staging' only: nothing of it is live). */
export async function rollBack(config: StandbyConfig, journal: Journal, logger: Logger): Promise<void> {
  await dropNextDatabase(config, journal.targets.db);
  await removeAll([...DIR_PARTS.map((p) => journal.targets.dirs[p].next), journal.stagingDir], logger);
  await removeJournal(config.stateDir);
}
