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

export async function readWalReplay(stateDir: string): Promise<WalReplayRecord> {
  try {
    const v = JSON.parse(await readFile(walReplayFile(stateDir), 'utf8')) as WalReplayRecord;
    if (v.format === 'tandem-wal-replay' && Array.isArray(v.recent)) return v;
  } catch {
    // none yet, or unreadable: it is only a status
  }
  return { format: 'tandem-wal-replay', recent: [] };
}

/** The same, synchronously (the daemon's lag figures are computed on the spot; the file is small). */
export function readWalReplaySync(stateDir: string): WalReplayRecord {
  try {
    const v = JSON.parse(readFileSync(walReplayFile(stateDir), 'utf8')) as WalReplayRecord;
    if (v.format === 'tandem-wal-replay' && Array.isArray(v.recent)) return v;
  } catch {
    // none yet, or unreadable
  }
  return { format: 'tandem-wal-replay', recent: [] };
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
