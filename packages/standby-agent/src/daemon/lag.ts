import type { KeyObject } from 'node:crypto';
import { checkHeartbeat, compareSets, countSetsNewerThan, readVerifiedHeartbeat, type Filestore, type Heartbeat } from '@tandem/shared';
import type { AppliedState } from '../apply/state.js';

/**
 * Replication lag, as docs/operations.md defines it:
 *
 * - recovery point age = now − createdAt of the newest applied set: what a failover right now would
 *   lose back to. It grows between backups even when nothing is wrong, so alert on it against the
 *   backup schedule (e.g. > 26 h for nightly backups).
 * - apply lag = appliedAt − committedAt of that set: how long the standby took to pick up and apply
 *   the set once the primary committed it (push: seconds; polling: up to pollInterval + apply time).
 * - pending sets = committed sets (with a manifest) newer than the applied one.
 * - primary heartbeat age = now − `at` of the primary's newest heartbeat: a fresh heartbeat with no new
 *   set is an idle primary; a stale one is a dead primary (or a dead link to it).
 * - heartbeat newer set = the set the primary's signed heartbeat names when latest.json names an
 *   older one: latest.json is signed but says nothing of its age, so an old copy put back (replayed)
 *   would freeze this standby with "0 pending"; the heartbeat, rewritten every heartbeatInterval,
 *   names the newest set the primary committed and gives it away.
 *
 * Every figure is null when it cannot be known (nothing applied, no heartbeat, filestore unreachable).
 */
export interface LatestInfo {
  setId: string;
  epoch: number;
  seq: number;
  createdAt: string;
  committedAt: string;
}

export interface LagFigures {
  recoveryPointAgeSeconds: number | null;
  applyLagSeconds: number | null;
  pendingSets: number | null;
  primaryHeartbeatAgeSeconds: number | null;
  /** The newer set the primary's heartbeat names than latest.json does (null: none, or not known). */
  heartbeatNewerSetId: string | null;
}

/**
 * The primary writes latest.json before the heartbeat that names the new set. latest.json read
 * before that commit (a daemon's last poll) rightly names an older set: only latest.json read after
 * the commit counts, with this much allowance for the two servers' clocks (the standby daemon warns
 * about a difference above 5 s).
 */
export const FRESHNESS_SLACK_MS = 5_000;

/**
 * The set `heartbeatLatest` names when latest.json, read at `latestReadAt` (after that set was
 * committed), names an older one or none. `latestReadAt` null: latest.json could not be read, so it
 * cannot be told; undefined: it was read after the heartbeat (the order `status` reads them in).
 */
export function heartbeatNewerSet(heartbeatLatest: LatestInfo | null | undefined, latest: LatestInfo | null, latestReadAt?: Date | null): string | null {
  if (heartbeatLatest === null || heartbeatLatest === undefined) return null;
  if (latest !== null && compareSets(heartbeatLatest, latest) <= 0) return null;
  if (latestReadAt === null) return null;
  if (latestReadAt !== undefined && latestReadAt.getTime() - Date.parse(heartbeatLatest.committedAt) < FRESHNESS_SLACK_MS) return null;
  return heartbeatLatest.setId;
}

const seconds = (ms: number): number => Math.round(ms) / 1000;

/** When the applied set was committed: recorded at apply time, else from latest.json if it still names it. */
export function committedAtOf(applied: AppliedState, latest: LatestInfo | null): string | null {
  if (typeof applied.committedAt === 'string') return applied.committedAt;
  if (latest !== null && latest.setId === applied.setId) return latest.committedAt;
  return null;
}

export function computeLag(i: {
  now: Date;
  applied: AppliedState | null;
  latest: LatestInfo | null;
  heartbeatAt: string | null;
  pendingSets: number | null;
  /** The newest set the primary's heartbeat names (absent or null: none known). */
  heartbeatLatest?: LatestInfo | null;
  /** When `latest` was read (see heartbeatNewerSet). */
  latestReadAt?: Date | null;
}): LagFigures {
  const now = i.now.getTime();
  const a = i.applied;
  const committedAt = a === null ? null : committedAtOf(a, i.latest);
  return {
    recoveryPointAgeSeconds: a === null ? null : seconds(Math.max(0, now - Date.parse(a.createdAt))),
    applyLagSeconds: a === null || committedAt === null ? null : seconds(Math.max(0, Date.parse(a.appliedAt) - Date.parse(committedAt))),
    pendingSets: i.pendingSets,
    primaryHeartbeatAgeSeconds: i.heartbeatAt === null ? null : seconds(Math.max(0, now - Date.parse(i.heartbeatAt))),
    heartbeatNewerSetId: heartbeatNewerSet(i.heartbeatLatest, i.latest, i.latestReadAt),
  };
}

/**
 * Pending sets without a LIST when the answer is known: 0 when latest.json names the applied set
 * (or an older one), null when it takes a listing (see countPendingSets). A heartbeat naming a newer
 * set than the applied one takes a listing too, whatever latest.json says (it may be an old copy).
 */
export function pendingWithoutListing(applied: AppliedState | null, latest: LatestInfo | null, heartbeatLatest?: LatestInfo | null): number | null {
  if (heartbeatLatest && (applied === null || compareSets(heartbeatLatest, applied) > 0)) return null;
  if (latest === null) return applied === null ? 0 : null;
  if (applied !== null && compareSets(latest, applied) <= 0) return 0;
  return null;
}

/** Committed sets (a manifest exists) newer than the applied one: one LIST of the site's sets (countSetsNewerThan). */
export async function countPendingSets(fs: Filestore, site: string, applied: AppliedState | null, signal?: AbortSignal): Promise<number> {
  return (await countSetsNewerThan(fs, site, applied, { signal })).count;
}

/** Moved to the store (heartbeat.json is one of its documents); re-exported for the modules that import it from here. */
export { checkHeartbeat };

/** The primary's heartbeat.json, verified; null when there is none (the store's readVerifiedHeartbeat). */
export const readHeartbeat = (fs: Filestore, site: string, verifyKey: KeyObject, signal?: AbortSignal): Promise<Heartbeat | null> =>
  readVerifiedHeartbeat(fs, site, verifyKey, { signal });

/**
 * Nagios-style verdict on the recovery point age: ok up to the warning threshold (default 80% of
 * maxLag, or --warn-lag), warning above, critical beyond maxLag.
 */
export type LagVerdict = 'ok' | 'warning' | 'critical';
export const WARN_FRACTION = 0.8;

export function judgeLag(
  recoveryPointAgeSeconds: number | null,
  maxLagSeconds: number,
  heartbeatNewerSetId: string | null = null,
  warnAboveSeconds = WARN_FRACTION * maxLagSeconds,
): LagVerdict {
  // Nothing applied: a failover now would lose everything.
  if (recoveryPointAgeSeconds === null) return 'critical';
  // latest.json hides newer sets: this standby falls behind however young its set still is.
  if (heartbeatNewerSetId !== null) return 'critical';
  if (recoveryPointAgeSeconds > maxLagSeconds) return 'critical';
  if (recoveryPointAgeSeconds > warnAboveSeconds) return 'warning';
  return 'ok';
}

export const verdictExitCode = (v: LagVerdict): number => (v === 'ok' ? 0 : v === 'warning' ? 1 : 2);
