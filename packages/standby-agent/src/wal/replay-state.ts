/**
 * What `wal-fetch` (PostgreSQL's restore_command) did last, for status, metrics and --max-lag:
 * `<stateDir>/wal-replay.json`. Written by each wal-fetch that restored a file or refused one;
 * a file not there yet ("not yet") is the normal state of a standby that is caught up and writes
 * nothing. `recent` keeps the newest restored segments with the time the primary stored each, from
 * which the status tells how old the newest replayed WAL is.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '@tandem/shared';

export interface RestoredWal {
  name: string;
  /** When the primary stored it (its signed document). */
  archivedAt: string;
  /** When this standby handed it to PostgreSQL. */
  at: string;
  epoch: number;
}

export interface WalReplayRecord {
  format: 'tandem-wal-replay';
  last?: RestoredWal;
  /** The newest refusal, cleared by the next file restored. */
  refused?: { name: string; at: string; code: string; error: string };
  recent: RestoredWal[];
}

const RECENT = 64;

export const walReplayFile = (stateDir: string): string => join(stateDir, 'wal-replay.json');
/**
 * The daemon's own refusals while fetching ahead (prefetch.ts), in a file of its own: wal-replay.json
 * has one writer, PostgreSQL's restore_command (one call at a time), so that no record of a file
 * handed to PostgreSQL is lost to a second writer. Readers merge the two.
 */
export const walPrefetchFile = (stateDir: string): string => join(stateDir, 'wal-prefetch.json');

type Refusal = NonNullable<WalReplayRecord['refused']>;

function merge(replay: WalReplayRecord, prefetch: unknown): WalReplayRecord {
  const r = (prefetch as { refused?: Refusal } | null)?.refused;
  if (r === undefined || typeof r.at !== 'string' || typeof r.name !== 'string') return replay;
  if (replay.refused !== undefined && Date.parse(replay.refused.at) >= Date.parse(r.at)) return replay;
  return { ...replay, refused: r };
}

const parseReplay = (text: string): WalReplayRecord | null => {
  const v = JSON.parse(text) as WalReplayRecord;
  return v.format === 'tandem-wal-replay' && Array.isArray(v.recent) ? v : null;
};

export async function readWalReplay(stateDir: string): Promise<WalReplayRecord> {
  let replay: WalReplayRecord = { format: 'tandem-wal-replay', recent: [] };
  try {
    replay = parseReplay(await readFile(walReplayFile(stateDir), 'utf8')) ?? replay;
  } catch {
    // none yet, or unreadable: it is only a status
  }
  const prefetch = await readFile(walPrefetchFile(stateDir), 'utf8')
    .then((t) => JSON.parse(t) as unknown)
    .catch(() => null);
  return merge(replay, prefetch);
}

/** What the daemon refused while fetching ahead (its own file: see walPrefetchFile). */
export async function recordPrefetchRefused(stateDir: string, refused: Refusal): Promise<void> {
  await writeFileAtomic(walPrefetchFile(stateDir), `${JSON.stringify({ refused })}\n`);
}

/** The same, synchronously (the daemon's lag figures are computed on the spot; the file is small). */
export function readWalReplaySync(stateDir: string): WalReplayRecord {
  let replay: WalReplayRecord = { format: 'tandem-wal-replay', recent: [] };
  try {
    replay = parseReplay(readFileSync(walReplayFile(stateDir), 'utf8')) ?? replay;
  } catch {
    // none yet, or unreadable
  }
  let prefetch: unknown = null;
  try {
    prefetch = JSON.parse(readFileSync(walPrefetchFile(stateDir), 'utf8'));
  } catch {
    // none
  }
  return merge(replay, prefetch);
}

export async function recordRestored(stateDir: string, r: RestoredWal): Promise<void> {
  const cur = await readWalReplay(stateDir);
  const recent = [...cur.recent.filter((x) => x.name !== r.name), r].slice(-RECENT);
  await writeFileAtomic(walReplayFile(stateDir), `${JSON.stringify({ format: 'tandem-wal-replay', last: r, recent } satisfies WalReplayRecord)}\n`);
}

export async function recordRefused(stateDir: string, refused: NonNullable<WalReplayRecord['refused']>): Promise<void> {
  const cur = await readWalReplay(stateDir);
  await writeFileAtomic(walReplayFile(stateDir), `${JSON.stringify({ ...cur, refused } satisfies WalReplayRecord)}\n`);
}
