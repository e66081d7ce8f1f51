import { createHash, type KeyObject } from 'node:crypto';
import {
  TandemError,
  compareSets,
  isNotFound,
  isSetId,
  layout,
  readVerifiedLatest,
  requireEpoch,
  verifyManifest,
  type Filestore,
  type LatestPointer,
  type Manifest,
} from '@tandem/shared';
import type { AppliedState } from './state.js';

/** The order of sets is the store's (epoch, seq); re-exported for the modules that import it from here. */
export { compareSets };

/**
 * Which set to apply, and whether to: the signed pointer and manifest, the epoch, and the order of
 * sets (ordering rule 3: a set older than the applied one is never applied by accident).
 */
export interface ResolvedSet {
  manifest: Manifest;
  /** The signed latest.json when the set was found through it. */
  latest: LatestPointer | null;
}

async function getSmall(fs: Filestore, key: string, what: string): Promise<Buffer> {
  try {
    return (await fs.getBuffer(key)).body;
  } catch (err) {
    if (isNotFound(err)) throw new TandemError('not-found', 'SET_NOT_FOUND', `${what}: ${fs.description}/${key} does not exist`, { cause: err });
    throw err;
  }
}

/** latest.json, verified (readVerifiedLatest); not-found NO_SETS when the site has none. */
export async function readLatest(fs: Filestore, site: string, verifyKey: KeyObject): Promise<{ latest: LatestPointer; raw: Buffer }> {
  const found = await readVerifiedLatest(fs, site, verifyKey);
  if (found === null) {
    throw new TandemError('not-found', 'NO_SETS', `site "${site}" has no committed set yet: ${fs.description}/${layout.latest(site)} does not exist`, {
      hint: 'run `tandem-primary backup` on the primary first, and check that both agents use the same filestore URL and site',
    });
  }
  return { latest: found.latest, raw: found.raw };
}

/** Reads and verifies one set's manifest; with the latest pointer, also checks the pointer names exactly these bytes. */
export async function readManifest(
  fs: Filestore,
  site: string,
  setId: string,
  verifyKey: KeyObject,
  latest: LatestPointer | null = null,
): Promise<Manifest> {
  if (!isSetId(setId)) {
    throw new TandemError('config', 'BAD_SET_ID', `"${setId}" is not a set id (expected e.g. 20261122T030000Z-e1-000042)`);
  }
  const key = layout.manifest(site, setId);
  const raw = await getSmall(fs, key, `set ${setId} is not committed (no manifest)`);
  const label = `set ${setId}: manifest.json`;
  const manifest = verifyManifest(raw, verifyKey, label);
  const mismatch = (what: string) => new TandemError('integrity', 'MANIFEST_MISMATCH', `${label}: ${what}`);
  if (manifest.setId !== setId) throw mismatch(`names set ${manifest.setId}: it was copied from another set`);
  if (manifest.site !== site) throw mismatch(`is for site "${manifest.site}", not "${site}"`);
  if (latest !== null) {
    const sha = createHash('sha256').update(raw).digest('hex');
    if (sha !== latest.manifestSha256 || latest.epoch !== manifest.epoch || latest.seq !== manifest.seq) {
      throw mismatch('differs from the one latest.json committed (replaced after the commit?)');
    }
  }
  return manifest;
}

/** A set made by a primary of a lower epoch than the filestore's was made by a fenced primary. */
export function checkEpoch(manifest: Manifest, currentEpoch: number): void {
  if (manifest.epoch < currentEpoch) {
    throw new TandemError(
      'fenced',
      'SET_FENCED',
      `set ${manifest.setId} was made in epoch ${manifest.epoch}, but the filestore is at epoch ${currentEpoch}: it comes from a primary that has since been replaced`,
      { hint: 'apply a set of the current epoch' },
    );
  }
}

/**
 * Finds the set (newest, or the named one) and verifies its manifest and epoch. Changes nothing.
 * `knownLatest`: a latest.json the caller has just read and verified (the daemon's poll), used
 * instead of reading it again.
 */
export async function resolveSet(fs: Filestore, site: string, verifyKey: KeyObject, setId?: string, knownLatest?: LatestPointer): Promise<ResolvedSet> {
  let latest: LatestPointer | null = null;
  if (setId === undefined) {
    latest = knownLatest ?? (await readLatest(fs, site, verifyKey)).latest;
    setId = latest.setId;
  }
  const manifest = await readManifest(fs, site, setId, verifyKey, latest);
  checkEpoch(manifest, await requireEpoch(fs, site));
  return { manifest, latest };
}

export type Decision = 'apply' | 'already-applied';

/**
 * The ordering rule against what this standby has applied: the same set again is a no-op unless forced;
 * an older one is refused unless it was named explicitly and allowed.
 */
export function decide(
  manifest: Manifest,
  applied: AppliedState | null,
  opts: { named: boolean; allowOlder: boolean; force: boolean },
): Decision {
  if (applied === null) return 'apply';
  const c = compareSets(manifest, applied);
  if (c === 0) return opts.force ? 'apply' : 'already-applied';
  if (c > 0) return 'apply';
  if (opts.named && opts.allowOlder) return 'apply';
  throw new TandemError(
    'precondition',
    'SET_OLDER',
    `set ${manifest.setId} (epoch ${manifest.epoch}, seq ${manifest.seq}) is older than the applied set ${applied.setId} (epoch ${applied.epoch}, seq ${applied.seq}); refusing to go back`,
    {
      hint: opts.named
        ? 'to roll the standby back on purpose, add --allow-older'
        : 'latest.json points to an older set than this standby has: check that the primary and the standby use the same filestore',
    },
  );
}
