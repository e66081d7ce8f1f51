/**
 * The lag figures of a standby in WAL mode, from what wal-fetch recorded (wal-replay.json) and the
 * primary's signed heartbeat (its `wal` member: the newest WAL file PostgreSQL archived, and how
 * long written WAL has waited in the current one):
 *
 * - pendingFiles: WAL files archived and not yet handed to PostgreSQL (the heartbeat's newest
 *   archived file minus the newest restored one, on one timeline; null when unknown).
 * - recoveryPointAt: up to when this standby holds the primary's writes. With nothing pending, the
 *   heartbeat's time minus the WAL waiting on the primary (an idle primary: the heartbeat itself);
 *   else when the newest replayed file was stored (it holds every commit before its switch).
 *   Before any file is replayed, the seed's set (the caller's fallback).
 * - replayLagSeconds: how far the replayed WAL trails the newest archived WAL (0 with nothing pending).
 * - refused: the newest refusal, when it is newer than the newest restore (the replay is stuck).
 *
 * recoveryPointAgeSeconds (status, metrics, --max-lag) is `now - recoveryPointAt`: as in dump mode,
 * what a failover now would lose.
 */
import { segmentDistance } from '@tandem/shared';
import type { WalReplayRecord } from './replay-state.js';


export interface WalHeartbeat {
  at: string;
  wal?: { lastArchived: string | null; current?: string | null; pendingSeconds: number; failing: boolean };
}

export interface WalFigures {
  lastReplayed: string | null;
  lastReplayedArchivedAt: string | null;
  newestArchived: string | null;
  pendingFiles: number | null;
  replayLagSeconds: number | null;
  recoveryPointAt: string | null;
  /** The primary says archiving fails (the filestore, fencing): WAL waits on the primary. */
  primaryArchiveFailing: boolean | null;
  refused: { name: string; code: string; at: string } | null;
}

const isSegmentName = (n: string): boolean => /^[0-9A-F]{24}(\.partial)?$/.test(n);

export function walFigures(replay: WalReplayRecord, hb: WalHeartbeat | null, fallbackAt: string | null, now: Date): WalFigures {
  const restored = [...replay.recent].reverse().find((r) => isSegmentName(r.name)) ?? null;
  const newest = hb?.wal?.lastArchived ?? null;
  let pending: number | null = null;
  if (restored !== null && newest !== null) {
    const d = segmentDistance(restored.name, newest);
    pending = d === null ? null : Math.max(0, d);
  }
  let recoveryPointAt: string | null = restored?.archivedAt ?? fallbackAt;
  // Caught up with the primary itself, not only with the filestore: archiving works, and no
  // finished file waits for it (the file being written is at most the one after the last archived).
  const w = hb?.wal;
  const backlog = w === undefined || w.lastArchived === null || w.current == null ? null : segmentDistance(w.lastArchived, w.current);
  const primaryCaughtUp = w !== undefined && !w.failing && backlog !== null && backlog <= 1;
  if (pending === 0 && hb !== null && w !== undefined && primaryCaughtUp) {
    const upTo = new Date(Date.parse(hb.at) - w.pendingSeconds * 1000).toISOString();
    if (recoveryPointAt === null || upTo > recoveryPointAt) recoveryPointAt = upTo;
  }
  const replayLagSeconds =
    pending === 0 ? 0 : pending === null || restored === null || hb === null ? null : Math.max(0, Math.round((Date.parse(hb.at) - Date.parse(restored.archivedAt)) / 100) / 10);
  const refused = replay.refused !== undefined && (replay.last === undefined || Date.parse(replay.refused.at) > Date.parse(replay.last.at)) ? { name: replay.refused.name, code: replay.refused.code, at: replay.refused.at } : null;
  void now;
  return {
    lastReplayed: restored?.name ?? null,
    lastReplayedArchivedAt: restored?.archivedAt ?? null,
    newestArchived: newest,
    pendingFiles: pending,
    replayLagSeconds,
    recoveryPointAt,
    primaryArchiveFailing: hb?.wal?.failing ?? null,
    refused,
  };
}
