import type { KeyObject } from 'node:crypto';
import { formatDuration, isNotFound, layout, parseSetId, verifyHeartbeat, type Filestore } from '@tandem/shared';
import { compareSets, readLatest } from '../apply/resolve-set.js';
import type { AppliedState } from '../apply/state.js';

/** What the primary committed that this standby has not applied. */
export interface Unapplied {
  /** Committed sets (with a manifest) newer than the applied one. */
  sets: number;
  /** Primary history between the applied set's creation and the newest set's. */
  seconds: number;
  newestSetId: string;
  newestCreatedAt: string;
}

/** One preflight check as promote reports it. */
export interface Check {
  name: 'apply-complete' | 'newest-applied' | 'primary-silent';
  ok: boolean;
  detail: string;
}

export async function checkUnapplied(fs: Filestore, site: string, verifyKey: KeyObject, applied: AppliedState | null): Promise<Unapplied> {
  const { latest } = await readLatest(fs, site, verifyKey);
  const prefix = layout.sets(site);
  let sets = 0;
  for (const o of await fs.list(prefix)) {
    const [id, file] = o.key.slice(prefix.length).split('/');
    if (file !== 'manifest.json' || id === undefined) continue;
    const p = parseSetId(id);
    if (p === null) continue;
    if (applied === null || compareSets({ ...p, setId: id }, applied) > 0) sets++;
  }
  const from = applied === null ? Date.parse(latest.createdAt) : Date.parse(applied.createdAt);
  return {
    sets,
    seconds: Math.max(0, Math.round((Date.parse(latest.createdAt) - from) / 1000)),
    newestSetId: latest.setId,
    newestCreatedAt: latest.createdAt,
  };
}

/**
 * Is the primary silent? A fresh heartbeat means it may be alive and serving: promoting then risks
 * two primaries. No heartbeat at all (a primary run from cron, without the daemon) tells nothing
 * either way, and is reported as such.
 */
export async function checkPrimarySilent(fs: Filestore, site: string, verifyKey: KeyObject, staleAfterMs: number, now = new Date()): Promise<Check> {
  const key = layout.heartbeat(site);
  let raw: Buffer;
  try {
    raw = (await fs.getBuffer(key)).body;
  } catch (err) {
    if (!isNotFound(err)) throw err;
    return { name: 'primary-silent', ok: true, detail: 'no primary heartbeat in the filestore (no primary daemon has run): cannot tell whether it is alive' };
  }
  const hb = verifyHeartbeat(raw, verifyKey, `${fs.description}/${key}`);
  const age = now.getTime() - Date.parse(hb.at);
  const ageText = `${formatDuration(Math.max(0, age))} old (from ${hb.primaryHost}, epoch ${hb.epoch})`;
  if (age < staleAfterMs) {
    return {
      name: 'primary-silent',
      ok: false,
      detail: `the primary's heartbeat is fresh: ${ageText}, stale only after ${formatDuration(staleAfterMs)}; the primary may be alive, and promoting now risks two primaries`,
    };
  }
  return { name: 'primary-silent', ok: true, detail: `the primary's heartbeat is stale: ${ageText}` };
}
