import type { KeyObject } from 'node:crypto';
import { compareSets, countSetsNewerThan, formatDuration, isStoppedHeartbeat, layout, readVerifiedHeartbeat, type Filestore, type Heartbeat, type SetRef } from '@tandem/shared';
import { readLatest } from '../apply/resolve-set.js';
import type { AppliedState } from '../apply/state.js';
import type { HeartbeatInfo } from '../daemon/status-doc.js';

/** A set as the order of sets sees it (the store's). */
export type { SetRef };

/** The newest set this standby knows was committed, and when latest.json says it was (if it names it). */
export interface KnownNewest extends SetRef {
  committedAt: string | null;
}

/** What the primary committed that this standby has not applied. */
export interface Unapplied {
  /** Committed sets (with a manifest) newer than the applied one. */
  sets: number;
  /** Primary history between the applied set's creation and the newest set's. */
  seconds: number;
  newestSetId: string;
  newestCreatedAt: string;
  /** The newest committed set anywhere: latest.json's, or a newer manifest in the listing. */
  newest: KnownNewest;
}

/** One preflight check as promote reports it. */
export interface Check {
  name: 'apply-complete' | 'filestore' | 'newest-applied' | 'files-deltas-applied' | 'wal-replayed' | 'primary-silent';
  ok: boolean;
  detail: string;
}

export async function checkUnapplied(fs: Filestore, site: string, verifyKey: KeyObject, applied: AppliedState | null): Promise<Unapplied> {
  const { latest } = await readLatest(fs, site, verifyKey);
  const { count: sets, newest: listed } = await countSetsNewerThan(fs, site, applied);
  let newest: KnownNewest = { setId: latest.setId, epoch: latest.epoch, seq: latest.seq, committedAt: latest.committedAt };
  // A manifest newer than latest.json's set: latest.json is an old copy, or the commit is half done.
  if (listed !== null && compareSets(listed, newest) > 0) newest = { setId: listed.setId, epoch: listed.epoch, seq: listed.seq, committedAt: null };
  const from = applied === null ? Date.parse(latest.createdAt) : Date.parse(applied.createdAt);
  return {
    sets,
    seconds: Math.max(0, Math.round((Date.parse(latest.createdAt) - from) / 1000)),
    newestSetId: latest.setId,
    newestCreatedAt: latest.createdAt,
    newest,
  };
}

/**
 * Is the primary silent? Three answers: alive (a fresh heartbeat: promoting risks two primaries),
 * silent (a stale heartbeat that is the primary's last word, or at once a signed "stopped" one: its
 * daemon wrote it as it shut down cleanly), and unknown, refused like alive:
 * - no heartbeat.json (a primary run from cron, without the daemon, writes none; or it was removed);
 * - a stale heartbeat that names an older set than one committed since (`newest`): an old
 *   heartbeat.json put back to make a live primary look dead, or one that stopped right after a
 *   commit (or backs up from cron since its daemon stopped), which cannot be told apart.
 * `pushed` is the heartbeat the standby daemon last saw on the push channel, if one runs: a fresher
 * one than heartbeat.json's means the primary is alive whatever the file says (a stopped heartbeat
 * older than a running one is not the last word). A stopped heartbeat that names an older set than
 * one committed since is unknown too: the primary went on after it (from cron), or it was put back.
 */
export async function checkPrimarySilent(
  fs: Filestore,
  site: string,
  verifyKey: KeyObject,
  staleAfterMs: number,
  now = new Date(),
  known: { newest?: KnownNewest | SetRef | null; pushed?: HeartbeatInfo | null } = {},
): Promise<Check> {
  const key = layout.heartbeat(site);
  const hb: Heartbeat | null = await readVerifiedHeartbeat(fs, site, verifyKey);
  const pushed = known.pushed ?? null;
  const pushedFresher = pushed !== null && (hb === null || Date.parse(pushed.at) > Date.parse(hb.at));
  if (hb !== null && !pushedFresher && isStoppedHeartbeat(hb)) {
    const predates = heartbeatPredates(hb, known.newest ?? null);
    const how = `stopped cleanly at ${hb.at} (${formatDuration(Math.max(0, now.getTime() - Date.parse(hb.at)))} ago; its daemon's last heartbeat, signed, from ${hb.primaryHost}, epoch ${hb.epoch})`;
    if (predates !== null) {
      return {
        name: 'primary-silent',
        ok: false,
        detail: `unknown whether the primary is alive: its heartbeat says it ${how}, but it ${predates}: the primary went on after its daemon stopped (a backup from cron?), or an old heartbeat.json was put back (replayed); make sure the old primary is down`,
      };
    }
    return { name: 'primary-silent', ok: true, detail: `the primary ${how}, and names the newest set` };
  }
  const at = pushedFresher ? pushed.at : hb?.at;
  if (at !== undefined) {
    const age = now.getTime() - Date.parse(at);
    const source = pushedFresher ? `as the standby daemon last saw it${pushed.primaryHost ? `, from ${pushed.primaryHost}` : ''}` : `from ${hb!.primaryHost}, epoch ${hb!.epoch}`;
    const ageText = `${formatDuration(Math.max(0, age))} old (${source})`;
    if (age < staleAfterMs) {
      return {
        name: 'primary-silent',
        ok: false,
        detail: `the primary's heartbeat is fresh: ${ageText}, stale only after ${formatDuration(staleAfterMs)}; the primary may be alive, and promoting now risks two primaries`,
      };
    }
    if (hb !== null) {
      const predates = heartbeatPredates(hb, known.newest ?? null);
      if (predates !== null) {
        return {
          name: 'primary-silent',
          ok: false,
          detail: `unknown whether the primary is alive: its heartbeat is stale (${ageText}), but it ${predates}: an old heartbeat.json was put back (replayed), or the primary went on (or stopped) after its daemon's last heartbeat; make sure the old primary is down`,
        };
      }
      return { name: 'primary-silent', ok: true, detail: `the primary's heartbeat is stale: ${ageText}, and names the newest set` };
    }
  }
  return {
    name: 'primary-silent',
    ok: false,
    detail: `unknown whether the primary is alive: there is no ${key} in the filestore (no primary daemon has run, or the file was removed); make sure the old primary is down`,
  };
}

/** How a heartbeat falls short of the newest set committed (null: it names it, or nothing newer is known). */
function heartbeatPredates(hb: Heartbeat, newest: KnownNewest | SetRef | null): string | null {
  if (newest === null) return null;
  if (hb.latest === undefined) {
    // A primary that predates heartbeats naming sets: its time against the commit's.
    const committedAt = 'committedAt' in newest ? newest.committedAt : null;
    return committedAt !== null && Date.parse(hb.at) < Date.parse(committedAt) ? `was written at ${hb.at}, before set ${newest.setId} was committed (${committedAt})` : null;
  }
  if (hb.latest !== null && compareSets(hb.latest, newest) >= 0) return null;
  return `names ${hb.latest === null ? 'no set' : `set ${hb.latest.setId}`} as the newest, while set ${newest.setId} was committed since`;
}
