import { layout, loadSigningKeyFile, signHeartbeat, verifyLatest, loadVerifyKeyFile, type Heartbeat, type LatestPointer } from '@tandem/shared';
import type { StandbySite } from './standby-helpers.js';

/** latest.json of the site, verified. */
export async function readLatestPointer(s: StandbySite): Promise<LatestPointer> {
  const fs = s.openStore();
  try {
    return verifyLatest((await fs.getBuffer(layout.latest(s.site))).body, loadVerifyKeyFile(s.keys.verifyKeyFile), 'latest.json');
  } finally {
    await fs.close();
  }
}

/**
 * Writes a heartbeat.json signed with the site's key, as a primary daemon would: `ageMs` old, naming
 * `latest` as the primary's newest set (default: what latest.json names now; null: none).
 */
export async function writeSignedHeartbeat(s: StandbySite, opts: { ageMs: number; latest?: LatestPointer | null; primaryHost?: string }): Promise<Heartbeat> {
  const l = opts.latest === undefined ? await readLatestPointer(s) : opts.latest;
  const hb: Heartbeat = {
    format: 'tandem-heartbeat',
    version: 1,
    site: s.site,
    epoch: l?.epoch ?? 1,
    primaryHost: opts.primaryHost ?? 'web1',
    at: new Date(Date.now() - opts.ageMs).toISOString(),
    lastBackup: null,
    nextBackupAt: null,
    latest: l === null ? null : { setId: l.setId, epoch: l.epoch, seq: l.seq, createdAt: l.createdAt, committedAt: l.committedAt },
  };
  const fs = s.openStore();
  try {
    await fs.putBuffer(layout.heartbeat(s.site), signHeartbeat(hb, loadSigningKeyFile(s.keys.signingKeyFile)));
  } finally {
    await fs.close();
  }
  return hb;
}

/** A primary that has been silent for 10 minutes, its last heartbeat naming the newest set: promote may go ahead. */
export const silentPrimary = (s: StandbySite): Promise<Heartbeat> => writeSignedHeartbeat(s, { ageMs: 10 * 60_000 });
