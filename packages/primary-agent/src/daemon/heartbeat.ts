import type { KeyObject } from 'node:crypto';
import { layout, signHeartbeat, type Filestore, type Heartbeat } from '@tandem/shared';

/**
 * <site>/heartbeat.json: the primary's signed liveness record, rewritten every heartbeatInterval
 * (and after every backup), so that a standby can tell an idle primary from a dead one.
 */
export interface HeartbeatInput {
  site: string;
  epoch: number;
  primaryHost: string;
  at: Date;
  lastBackup: { setId: string | null; at: string; outcome: 'ok' | 'failed' } | null;
  nextBackupAt: Date | null;
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
  };
}

export async function writeHeartbeat(fs: Filestore, key: KeyObject, i: HeartbeatInput, signal?: AbortSignal): Promise<Heartbeat> {
  const hb = buildHeartbeat(i);
  await fs.putBuffer(layout.heartbeat(i.site), signHeartbeat(hb, key), { contentType: 'application/json', signal });
  return hb;
}
