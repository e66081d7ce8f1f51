import type { PackReadThread } from '../chunk-verifier-thread.js';
import { PackReadError } from '../chunk-verifier-thread.js';
import { TandemError, isNotFound } from '../errors.js';
import { fsError, notAFile } from '../filestore/dir-errors.js';
import type { Filestore } from '../filestore/filestore.js';
import { objectKey } from './object-id.js';
import { MAX_PACK_PLAIN, type PackInfo } from './pack.js';

/**
 * Fetching a pack's stored bytes, the same for an apply, a files delta, `verify --read-data` and the
 * pages of an index (either agent): bounded by the size the signed index lists (never more than that in memory, whatever the
 * filestore sends), a missing or wrongly sized object named as such. Checking the SHA-256 before a
 * byte is decrypted, and the rest, is openPack's.
 */

/** What to do about an object that is missing or damaged in the filestore. */
export const OBJECT_HINT =
  'restore the object from a copy of the filestore, or have the primary store the content again: `tandem-primary backup --repair-objects` makes a new set with new objects (run `tandem-standby verify --read-data` to find every damaged object of a set)';

/** The most stored bytes a pack can have: its largest plaintext, and age's and deflate's overhead with room to spare. */
export const MAX_PACK_STORED = MAX_PACK_PLAIN + 1024 * 1024;

export const objectMissing = (label: string, info: PackInfo, where: string, cause?: unknown): TandemError =>
  new TandemError('integrity', 'OBJECT_MISSING', `${label}: object ${info.id} is missing from ${where}: the signed index lists it, the filestore does not have it`, {
    cause,
    hint: OBJECT_HINT,
  });

export const objectWrongSize = (label: string, info: PackInfo, size: number): TandemError =>
  new TandemError('integrity', 'OBJECT_SIZE', `${label}: object ${info.id} has ${size} bytes, the signed index says ${info.size} (truncated or replaced)`, {
    hint: OBJECT_HINT,
  });

function checkPackSize(info: PackInfo, label: string): void {
  if (info.size > MAX_PACK_STORED) {
    throw new TandemError('integrity', 'OBJECT_SIZE', `${label}: object ${info.id}: the signed index says ${info.size} stored bytes, more than a pack can have (${MAX_PACK_STORED})`, {
      hint: 'the index is signed, so this set was made by a faulty primary: make a new set',
    });
  }
}

/**
 * The stored bytes of the pack `info` of `site` from a directory filestore, read whole and hashed on
 * the reader's thread: the bytes (the reader's buffer: give it back with reader.release once they
 * are decrypted) and their SHA-256, for openPackPieces to compare. The same bounds and errors as
 * fetchPackStored.
 */
export async function fetchPackLocal(fs: Filestore, reader: PackReadThread, site: string, info: PackInfo, o: { label: string }): Promise<{ bytes: Buffer; sha256: Buffer }> {
  checkPackSize(info, o.label);
  if (fs.localPath === undefined) throw new TandemError('internal', 'NOT_LOCAL', `${o.label}: ${fs.description} has no local files to read packs from`);
  const path = fs.localPath(objectKey(site, info.id));
  try {
    return await reader.read(path, info.size);
  } catch (err) {
    if (!(err instanceof PackReadError)) throw err;
    if (err.reason.missing) throw objectMissing(o.label, info, fs.description, fsError(Object.assign(new Error(err.message), { code: 'ENOENT' }), 'read', path));
    if (err.reason.notFile) throw objectMissing(o.label, info, fs.description, notAFile(path));
    if (err.reason.size !== undefined) throw objectWrongSize(o.label, info, err.reason.size);
    throw fsError(Object.assign(new Error(err.message), { code: err.reason.code }), 'read', path);
  }
}

/** The stored bytes of the pack `info` of `site`, as the filestore sent them (pieces, not joined). */
export async function fetchPackStored(fs: Filestore, site: string, info: PackInfo, o: { label: string; signal?: AbortSignal }): Promise<Buffer[]> {
  checkPackSize(info, o.label);
  let got;
  try {
    got = await fs.get(objectKey(site, info.id), { signal: o.signal });
  } catch (err) {
    if (isNotFound(err)) throw objectMissing(o.label, info, fs.description, err);
    throw err;
  }
  if (got.info.size !== info.size) {
    got.body.destroy();
    throw objectWrongSize(o.label, info, got.info.size);
  }
  const pieces: Buffer[] = [];
  let len = 0;
  for await (const c of got.body as AsyncIterable<Buffer>) {
    if (len + c.length > info.size) {
      got.body.destroy();
      throw objectWrongSize(o.label, info, len + c.length);
    }
    pieces.push(c);
    len += c.length;
  }
  if (len !== info.size) throw objectWrongSize(o.label, info, len);
  return pieces;
}
