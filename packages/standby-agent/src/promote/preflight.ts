import type { KeyObject } from 'node:crypto';
import { layout, parseSetId, type Filestore } from '@tandem/shared';
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
