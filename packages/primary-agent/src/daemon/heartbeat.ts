import type { KeyObject } from 'node:crypto';
import { layout, signHeartbeat, type Filestore, type Heartbeat } from '@tandem/shared';

/**
 * <site>/heartbeat.json: the primary's signed liveness record, rewritten every heartbeatInterval
 * (and after every backup), so that a standby can tell an idle primary from a dead one. It names
 * the newest set the primary committed: latest.json is signed but carries no freshness of its own,
 * so a replayed older latest.json (or an older heartbeat) shows against a current heartbeat.
 */
export interface HeartbeatInput {
  site: string;
  epoch: number;
  primaryHost: string;
  at: Date;
  lastBackup: { setId: string | null; at: string; outcome: 'ok' | 'failed' } | null;
  nextBackupAt: Date | null;
  /** The newest set this primary committed, as its latest.json names it; null before the first. */
  latest: { setId: string; epoch: number; seq: number; createdAt: string; committedAt: string } | null;
}

export function buildHeartbeat(i: HeartbeatInput): Heartbeat {
  return {
    format: 'tandem-heartbeat',
    version: 1,
    site: i.site,
    epoch: i.epoch,
    primaryHost: i.primaryHost,
    at: i.at.toISOString(),
    lastBackup: i.lastBackup,
    nextBackupAt: i.nextBackupAt?.toISOString() ?? null,
    latest: i.latest === null ? null : { setId: i.latest.setId, epoch: i.latest.epoch, seq: i.latest.seq, createdAt: i.latest.createdAt, committedAt: i.latest.committedAt },
  };
}

export async function writeHeartbeat(fs: Filestore, key: KeyObject, i: HeartbeatInput, signal?: AbortSignal): Promise<Heartbeat> {
  const hb = buildHeartbeat(i);
  await fs.putBuffer(layout.heartbeat(i.site), signHeartbeat(hb, key), { contentType: 'application/json', signal });
  return hb;
}
