import { readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { TandemError, fsyncDir, writeFileAtomic, type SetRef } from '@tandem/shared';

/**
 * The standby's own records in its state dir, each one small JSON file written atomically:
 *   applied.json    the set the live site now equals
 *   promoted.json   written by promote: this server is the primary now
 *   journal.json    an apply in progress (see journal.ts)
 *   apply.lock      held by apply and promote, so they never overlap
 */
export const stateFiles = (stateDir: string) => ({
  applied: join(stateDir, 'applied.json'),
  promoted: join(stateDir, 'promoted.json'),
  /** A promote between raising the epoch and its end (promoted.json): a retry finishes it. */
  promoting: join(stateDir, 'promoting.json'),
  journal: join(stateDir, 'journal.json'),
  lock: join(stateDir, 'apply.lock'),
});

export type RestartStatus = 'pending' | 'ok' | 'failed' | 'none';

/**
 * A set as an apply records it, in its journal while it runs and in applied.json once done: a SetRef,
 * so the store's compareSets orders it against any other set.
 */
export interface SetIdentity extends SetRef {
  site: string;
  /** When the primary made the set. */
  createdAt: string;
  /**
   * When latest.json committed the set, as the signed pointer said when the apply read it; null when
   * the set was applied by name (--set). Absent in records of older versions. Apply lag = appliedAt − this.
   */
  committedAt?: string | null;
  /** Stored (encrypted) bytes of the set. */
  bytes: number;
}

/** The applied set: the set the live site now equals. */
export interface AppliedState extends SetIdentity {
  appliedAt: string;
  /** Seconds per stage. */
  durations: Record<string, number>;
  /** 'pending' until restartCommand has run: an apply killed before it restarts on the next run. */
  restart: RestartStatus;
}

export interface PromotedState {
  site: string;
  promotedAt: string;
  /** The set the site held when it became the primary (null: none was ever applied). */
  appliedSetId: string | null;
  forced: boolean;
  unapplied: { sets: number; seconds: number } | null;
  restart: RestartStatus;
  /** The epoch this promote raised (null: could not be raised, forced). Absent in older records. */
  epoch?: number | null;
  /** The name epoch.json now gives the primary (for people). */
  primaryName?: string;
  /** The agent id epoch.json now names: the tandem-primary here must have it (same stateDir, or a copy of agent-id). */
  primaryId?: string;
  /** Preflight failures that --force overrode. */
  overridden?: string[];
}

/** Parsed JSON, or null when the file does not exist. */
export async function readJsonFile<T>(file: string, what: string): Promise<T | null> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new TandemError('internal', 'STATE_DAMAGED', `${what} ${file} is not valid JSON (damaged?)`, {
      hint: 'inspect it; if it cannot be repaired, move it aside and run the command again',
    });
  }
}

export const writeJsonFile = (file: string, value: unknown): Promise<void> =>
  writeFileAtomic(file, `${JSON.stringify(value, null, 2)}\n`);

/** Remove a state file so that its absence survives a crash. */
export async function removeStateFile(file: string): Promise<void> {
  await rm(file, { force: true });
  await fsyncDir(dirname(file));
}

export const readApplied = (stateDir: string): Promise<AppliedState | null> =>
  readJsonFile<AppliedState>(stateFiles(stateDir).applied, 'applied-set record');

export const writeApplied = (stateDir: string, s: AppliedState): Promise<void> => writeJsonFile(stateFiles(stateDir).applied, s);

export const readPromoted = (stateDir: string): Promise<PromotedState | null> =>
  readJsonFile<PromotedState>(stateFiles(stateDir).promoted, 'promotion record');

export const writePromoted = (stateDir: string, s: PromotedState): Promise<void> => writeJsonFile(stateFiles(stateDir).promoted, s);
