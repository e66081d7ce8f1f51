import type { KeyObject } from 'node:crypto';
import { TandemError, isNotFound } from '../errors.js';
import type { Filestore } from '../filestore/filestore.js';
import { verifyLatest, type LatestPointer } from '../manifest.js';
import { layout } from './layout.js';

/**
 * <site>/latest.json: the signed pointer to the newest committed set (its schema, signLatest and
 * verifyLatest are beside the manifest's, in manifest.ts). What a reader trusts is checkLatest's
 * answer: the signature, the schema, and that the pointer is for the reader's own site (a copy of
 * another site's latest.json, signed with the same key, verifies too).
 */
export { latestSchema, signLatest, verifyLatest, type LatestPointer } from '../manifest.js';

/** Verifies latest.json bytes the caller read: signature, schema, site. */
export function checkLatest(raw: Buffer, trust: KeyObject, site: string, label: string): LatestPointer {
  const latest = verifyLatest(raw, trust, label);
  if (latest.site !== site) throw new TandemError('integrity', 'SITE_MISMATCH', `${label} is for site "${latest.site}", not "${site}"`);
  return latest;
}

export interface VerifiedLatest {
  latest: LatestPointer;
  /** The bytes read (a manifest is checked against the SHA-256 they name). */
  raw: Buffer;
  /** The filestore's version of the object, for a later conditional read. */
  version: string;
}

/**
 * latest.json, verified (checkLatest); null when the site has none. With `knownVersion` it is a
 * conditional read: `{ unchanged: true }` when the object is still that version (no body moves).
 * Throws the verification's error (DOC_*, SITE_MISMATCH) when it does not verify.
 */
export function readVerifiedLatest(fs: Filestore, site: string, trust: KeyObject, opts?: { signal?: AbortSignal }): Promise<VerifiedLatest | null>;
export function readVerifiedLatest(
  fs: Filestore,
  site: string,
  trust: KeyObject,
  opts: { signal?: AbortSignal; knownVersion: string | undefined },
): Promise<VerifiedLatest | { unchanged: true } | null>;
export async function readVerifiedLatest(
  fs: Filestore,
  site: string,
  trust: KeyObject,
  opts: { signal?: AbortSignal; knownVersion?: string } = {},
): Promise<VerifiedLatest | { unchanged: true } | null> {
  const key = layout.latest(site);
  let raw: Buffer;
  let version: string;
  try {
    if ('knownVersion' in opts) {
      const r = await fs.getIfChanged(key, opts.knownVersion, { signal: opts.signal });
      if (!r.changed) return { unchanged: true };
      ({ body: raw, info: { version } } = r);
    } else {
      ({ body: raw, info: { version } } = await fs.getBuffer(key, { signal: opts.signal }));
    }
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
  return { latest: checkLatest(raw, trust, site, `${fs.description}/${key}`), raw, version };
}
