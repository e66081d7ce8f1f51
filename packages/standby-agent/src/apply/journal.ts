import { TandemError } from '@tandem/shared';
import { readJsonFile, removeStateFile, stateFiles, writeJsonFile, type SetIdentity } from './state.js';
import type { StagedDb } from './stage.js';
import type { PartName, Targets } from './targets.js';
import type { WalSeed } from './cluster.js';

/**
 * The apply journal: what an apply in progress has done, so that a killed apply is finished or
 * rolled back by the next one.
 *
 * - phase 'staging': nothing live has changed. Everything made so far (staging dir, "next" dirs, the
 *   "next" database) is disposable: recovery rolls back.
 * - phase 'switching': every part is staged and verified, and parts are being switched in. Recovery
 *   rolls forward: it switches every part not yet in `switched`, using the staged next dir/database.
 *
 * The journal carries the names it works on, so recovery does not depend on the config staying the same.
 */
export interface Journal extends SetIdentity {
  format: 'tandem-apply-journal';
  /**
   * 2: the files' staged plan patches files in place (PlanOp pt), which a version that knows only 1
   * would rename over them: it refuses this journal instead.
   */
  version: 1 | 2;
  phase: 'staging' | 'switching';
  startedAt: string;
  stagingDir: string;
  targets: Targets;
  switched: PartName[];
  /** Seconds per stage so far, carried into applied.json. */
  durations: Record<string, number>;
  /**
   * database.schema only: the staged dump, which the switch restores (schema.ts), and, once the
   * switch transaction has been started, the oid the live schema had before it (null: there was
   * none), from which a roll-forward tells whether that transaction committed.
   */
  schemaSwitch?: { staged: StagedDb; liveOid?: number | null };
  /** The files are content objects: the files part is switched in place from its plan (files-objects.ts). */
  filesObjects?: boolean;
  /** WAL mode: the db part is the cluster's data directory, seeded from this base backup (cluster.ts). */
  walSeed?: WalSeed;
  /** WAL mode, the cluster already seeded from the same cluster and replaying its WAL: the db part stays as it is. */
  dbKept?: boolean;
}

export async function readJournal(stateDir: string): Promise<Journal | null> {
  const file = stateFiles(stateDir).journal;
  const j = await readJsonFile<Journal>(file, 'apply journal');
  if (j !== null && (j.format !== 'tandem-apply-journal' || (j.version !== 1 && j.version !== 2) || (j.phase !== 'staging' && j.phase !== 'switching'))) {
    throw new TandemError('internal', 'JOURNAL_UNKNOWN', `apply journal ${file}: not a journal this version of tandem understands`, {
      hint: 'finish it with the tandem version that wrote it',
    });
  }
  return j;
}

/** Written atomically and fsynced: after this returns, a crash recovers to this journal. */
export const writeJournal = (stateDir: string, j: Journal): Promise<void> => writeJsonFile(stateFiles(stateDir).journal, j);

export const removeJournal = (stateDir: string): Promise<void> => removeStateFile(stateFiles(stateDir).journal);
