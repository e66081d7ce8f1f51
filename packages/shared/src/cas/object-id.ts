import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Content objects (the files of a set, stored once whatever the number of sets that hold them)
 * are named by a KEYED hash of their plaintext: HMAC-SHA-256 under the site's files key (made by
 * `tandem-primary init`, held by the primary and its standbys, never stored in the filestore).
 * A plain SHA-256 name would let anyone who can list the filestore test whether a file they know
 * (a leaked document, a known image) is in it; without the key, the name says nothing.
 */
export const OBJECT_ID_PATTERN = /^[0-9a-f]{64}$/;

export function objectId(key: Buffer, plaintext: Buffer): string {
  return createHmac('sha256', key).update(plaintext).digest('hex');
}

/** objectId as its 32 bytes. */
export function objectIdBytes(key: Buffer, plaintext: Buffer): Buffer {
  return createHmac('sha256', key).update(plaintext).digest();
}

/** A standby's check before it uses a byte of an object: its plaintext is what its name says. */
export function objectMatches(key: Buffer, id: string, plaintext: Buffer): boolean {
  if (!OBJECT_ID_PATTERN.test(id)) return false;
  return timingSafeEqual(Buffer.from(objectId(key, plaintext), 'hex'), Buffer.from(id, 'hex'));
}

/**
 * Where an object lives: `<site>/objects/<first two hex digits>/<id>`. 256 directories keep a
 * directory filestore's directories small with millions of objects; on S3 the prefix spreads the
 * keys and lets a listing (garbage collection) run as 256 independent pages.
 */
export function objectKey(site: string, id: string): string {
  if (!OBJECT_ID_PATTERN.test(id)) throw new RangeError(`not an object id: ${id}`);
  return `${site}/objects/${id.slice(0, 2)}/${id}`;
}
