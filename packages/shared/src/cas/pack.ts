import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { Readable, Transform, pipeline, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import { createDeflateRaw, deflateRaw, deflateRawSync, inflateRawSync } from 'node:zlib';
import type { LocalPack, OpenedPayload, PackReadThread } from '../chunk-verifier-thread.js';
import { createAgeDecryptStream, createAgeEncryptStream, payloadOf } from '../crypto/age/index.js';
import { TandemError } from '../errors.js';
import { objectId } from './object-id.js';

/**
 * A pack: the one kind of content object. Its plaintext is blobs (a small file whole, or one chunk
 * of a large file, chunker.ts) laid end to end; it is stored compressed when that helps and
 * encrypted to the site's recipients, under `<site>/objects/xx/<id>` (object-id.ts).
 *
 * - Packing: blobs are collected until the pack holds PACK_TARGET bytes, so 100,000 thumbnails are
 *   ~a hundred PUTs, not 100,000; a chunk of a large file (≤ 4 MiB) is packed like any blob. A pack's
 *   plaintext is at most MAX_PACK_PLAIN (the target plus the largest chunk).
 * - Id: HMAC of the pack's blob ids in order (each blob id is the HMAC of its bytes): a keyed hash
 *   of the plaintext, without hashing every byte twice. An object is never replaced: when the id is
 *   taken (the same blobs packed by a backup that did not know of it), the next attempt's id is used
 *   (packId). A standby checks a pack by its signed SHA-256 and each blob by its id.
 * - Compression: raw deflate at level 1 (in the thread pool), only when a 64 KiB sample of the pack
 *   shrinks below 90%: media does not compress and is not made to try.
 * - Reading (openPack): the stored bytes must have the size and SHA-256 the signed index lists
 *   before a byte is decrypted; the plaintext is inflated to exactly the signed plain size, never
 *   more; then each blob is checked against its id (blobAt) before it is used.
 */
export const PACK_TARGET = 8 * 1024 * 1024;
export const MAX_PACK_PLAIN = 16 * 1024 * 1024;
const SAMPLE = 64 * 1024;
const deflateRawAsync = promisify(deflateRaw);

export type PackCompression = 'none' | 'deflate';

/** What the index says of a pack: enough to fetch and check it without trusting the filestore. */
export interface PackInfo {
  id: string;
  /** Stored bytes (encrypted, maybe compressed). */
  size: number;
  /** SHA-256 of the stored bytes, hex. */
  sha256: string;
  /** Bytes of the plaintext (the blobs end to end). */
  plain: number;
  c: PackCompression;
}

export interface PackedBlob {
  id: string;
  offset: number;
  length: number;
}

export interface SealedPack {
  info: PackInfo;
  /** The stored bytes, as the encryption produced them (no copy into one buffer). */
  pieces: Buffer[];
  /** The stored bytes as one buffer (copied on first use: for tests and small callers). */
  readonly stored: Buffer;
  blobs: PackedBlob[];
}

/** Runs a transform over pieces and collects what it produces, without joining either side. */
export async function runTransformPieces(t: Transform, input: Buffer[]): Promise<Buffer[]> {
  const out: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    t.on('data', (c: Buffer) => out.push(c));
    t.on('end', resolve);
    t.on('error', reject);
  });
  done.catch(() => undefined); // awaited below; a failure mid-write also ends the wait for 'drain'
  for (const piece of input) {
    if (t.destroyed) break;
    if (!t.write(piece)) await Promise.race([new Promise<void>((r) => t.once('drain', () => r())), done]);
  }
  t.end();
  await done;
  return out;
}

/**
 * The plaintext of a pack as the pieces decryption produced: blobs are read as slices of them (a
 * blob may span two pieces), so that 8 MiB is not copied into one buffer first.
 */
export class PackPlain {
  readonly #starts: number[] = [];
  readonly length: number;

  constructor(readonly pieces: Buffer[]) {
    let at = 0;
    for (const p of pieces) {
      this.#starts.push(at);
      at += p.length;
    }
    this.length = at;
  }

  /** The bytes [offset, offset + length), as slices of the pieces. */
  slices(offset: number, length: number): Buffer[] {
    const out: Buffer[] = [];
    let lo = 0;
    let hi = this.#starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    let left = length;
    for (let i = lo, at = offset - this.#starts[lo]!; left > 0 && i < this.pieces.length; i++, at = 0) {
      const p = this.pieces[i]!;
      const take = Math.min(left, p.length - at);
      out.push(p.subarray(at, at + take));
      left -= take;
    }
    return out;
  }
}

export async function runTransform(t: Transform, input: Buffer): Promise<Buffer> {
  const out: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    t.on('data', (c: Buffer) => out.push(c));
    t.on('end', resolve);
    t.on('error', reject);
  });
  t.end(input);
  await done;
  return out.length === 1 ? out[0]! : Buffer.concat(out);
}

/**
 * `attempt` > 0 only when an object of the plain id exists already: stored bytes are never replaced
 * (an earlier set's signed index lists their SHA-256, and age output differs at every sealing), so
 * the pack takes the next id instead.
 */
export function packId(hmacKey: Buffer, blobIds: string[], attempt = 0): string {
  const parts = [Buffer.from('tandem-pack-v1\0'), ...blobIds.map((id) => Buffer.from(id, 'hex'))];
  if (attempt > 0) parts.push(Buffer.from(`\0${attempt}`));
  return objectId(hmacKey, Buffer.concat(parts));
}

/** Whether deflate is worth it for this plaintext (a sample from its middle, cheap). */
export function compressible(plain: Buffer): boolean {
  if (plain.length < 512) return false;
  const start = plain.length > SAMPLE ? Math.floor((plain.length - SAMPLE) / 2) : 0;
  const sample = plain.subarray(start, start + SAMPLE);
  return deflateRawSync(sample, { level: 1 }).length < sample.length * 0.9;
}

/** Seals blobs (each with its id) into a pack; recipients null: the set is unencrypted. */
export async function sealPack(blobs: Array<{ id: string; data: Buffer }>, o: { hmacKey: Buffer; recipients: string[] | null; attempt?: number }): Promise<SealedPack> {
  const placed: PackedBlob[] = [];
  let offset = 0;
  for (const b of blobs) {
    placed.push({ id: b.id, offset, length: b.data.length });
    offset += b.data.length;
  }
  if (offset > MAX_PACK_PLAIN) throw new RangeError(`pack of ${offset} bytes is over the ${MAX_PACK_PLAIN} limit`);
  // A sample from the blob at the middle of the pack decides; only a pack that compresses is joined.
  const middle = placed.find((b) => b.offset + b.length > offset / 2) ?? placed[0];
  const deflate = middle !== undefined && compressible(blobs[placed.indexOf(middle)]!.data);
  const body = deflate ? [await deflateRawAsync(Buffer.concat(blobs.map((b) => b.data), offset), { level: 1 })] : blobs.map((b) => b.data);
  const pieces = o.recipients ? await runTransformPieces(createAgeEncryptStream(o.recipients), body) : body;
  const hash = createHash('sha256');
  let size = 0;
  for (const p of pieces) {
    hash.update(p);
    size += p.length;
  }
  const info: PackInfo = { id: packId(o.hmacKey, placed.map((b) => b.id), o.attempt), size, sha256: hash.digest('hex'), plain: offset, c: deflate ? 'deflate' : 'none' };
  let joined: Buffer | undefined;
  return {
    info,
    pieces,
    get stored() {
      joined ??= pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces, size);
      return joined;
    },
    blobs: placed,
  };
}

/** What a stream of a pack's stored bytes tells once it ended: what the index says of the pack. */
export interface PackStream {
  /** The stored bytes as they are made: compressed (maybe), encrypted (unless the set is not). */
  stream: Readable;
  /** The pack's info, complete (size, SHA-256) once the stream ended. */
  info(): PackInfo;
}

/** Plaintext fed to compression and encryption a piece at a time: what waits downstream stays bounded. */
const FEED = 1 << 20;

/**
 * A pack sealed as it is uploaded: the plaintext (the blobs end to end, one buffer) flows through
 * deflate (when a sample says it helps), age and a hasher into whatever reads `stream`, so that the
 * stored bytes are never held whole: a backup keeps the plaintext of the packs in flight and little
 * more. The caller keeps `plain` unchanged until the stream ended. `id` is decided before (packId);
 * size and SHA-256 are known once the last byte went through.
 */
export function sealPackStream(blobIds: string[], plain: Buffer, o: { hmacKey: Buffer; recipients: string[] | null; attempt?: number }): PackStream {
  if (plain.length > MAX_PACK_PLAIN) throw new RangeError(`pack of ${plain.length} bytes is over the ${MAX_PACK_PLAIN} limit`);
  const deflate = compressible(plain);
  const hash = createHash('sha256');
  let size = 0;
  let ended = false;
  const hasher = new Transform({
    transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
    flush(cb: TransformCallback) {
      ended = true;
      cb();
    },
  });
  const feed = function* () {
    for (let at = 0; at < plain.length; at += FEED) yield plain.subarray(at, Math.min(at + FEED, plain.length));
  };
  const stages: Transform[] = [];
  if (deflate) stages.push(createDeflateRaw({ level: 1 }));
  if (o.recipients) stages.push(createAgeEncryptStream(o.recipients));
  // A failure anywhere (or the reader destroying the stream) destroys every stage; it surfaces on `stream`.
  pipeline([Readable.from(feed(), { objectMode: false }), ...stages, hasher], () => undefined);
  const id = packId(o.hmacKey, blobIds, o.attempt);
  let digest: string | undefined;
  return {
    stream: hasher,
    info() {
      if (!ended) throw new TandemError('internal', 'PACK_NOT_FINISHED', `pack ${id}: its info was asked for before its stored bytes were all read`);
      digest ??= hash.digest('hex');
      return { id, size, sha256: digest, plain: plain.length, c: deflate ? 'deflate' : 'none' };
    },
  };
}

/**
 * The plaintext of a stored pack, after its size and SHA-256 matched the signed index's: only then
 * decrypted (unless the set is unencrypted), then inflated to exactly the signed plain size.
 */
export async function openPack(stored: Buffer, info: PackInfo, o: { identities: string[] | null; label: string }): Promise<Buffer> {
  const p = await openPackPieces([stored], info, o);
  return p.pieces.length === 1 ? p.pieces[0]! : Buffer.concat(p.pieces, p.length);
}

/**
 * openPack over the stored bytes as they were read (pieces), to the plaintext as pieces. `sha256`:
 * the digest of exactly these bytes, computed where they were read (PackReadThread), else here.
 */
export async function openPackPieces(stored: Buffer[], info: PackInfo, o: { identities: string[] | null; label: string; sha256?: Buffer }): Promise<PackPlain> {
  let digest = o.sha256;
  if (digest === undefined) {
    const h = createHash('sha256');
    for (const p of stored) h.update(p);
    digest = h.digest();
  }
  checkStored(stored.reduce((n, p) => n + p.length, 0), digest, info, o.label);
  let body: Buffer[];
  try {
    body = o.identities ? await runTransformPieces(createAgeDecryptStream(o.identities, { label: `${o.label}: object ${info.id}` }), stored) : stored;
  } catch (err) {
    throw undecryptable(info, o.label, err);
  }
  return plainOf(body, info, o.label);
}

/**
 * An encrypted pack read whole on the reading thread (PackReadThread.read: its bytes, in a buffer
 * of the thread's pool, and their SHA-256), opened there too: once its size and SHA-256 match the
 * signed index, its header is read here (the file key unwrapped with the site's identity), and the
 * payload is opened in place on that thread (openPayloadInPlace). The plaintext stays in the pool's
 * buffer: no copy, and none of the 64 KiB buffers a stream decryptor makes (500 MB of them for the
 * bench tree, whose freeing was most of the collector's work). The same checks and errors as
 * openPackPieces. `release` gives the buffer back to the pool: call it once nothing refers to the
 * plaintext's bytes any more (a deflated pack is inflated into memory of its own, and its buffer
 * released before this returns; on an error it is released too).
 */
export async function openPackLocal(got: LocalPack, info: PackInfo, o: { identities: string[]; label: string; reader: PackReadThread }): Promise<{ plain: PackPlain; release: () => void }> {
  let bytes = got.bytes;
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    o.reader.release(bytes);
  };
  try {
    checkStored(bytes.length, got.sha256, info, o.label);
    let opened: OpenedPayload;
    try {
      const { start, payloadKey } = payloadOf(o.identities, bytes, `${o.label}: object ${info.id}`);
      opened = await o.reader.openPayload(bytes, start, payloadKey);
    } catch (err) {
      throw undecryptable(info, o.label, err);
    }
    bytes = opened.bytes;
    if (opened.problem !== undefined) {
      throw undecryptable(info, o.label, new TandemError('integrity', opened.problem.code, `${o.label}: object ${info.id}: ${opened.problem.message}`));
    }
    const plain = plainOf([bytes.subarray(0, opened.plain)], info, o.label);
    if (info.c !== 'none') release();
    return { plain, release };
  } catch (err) {
    release();
    throw err;
  }
}

/** The stored bytes' size and SHA-256 against the signed index, before a byte of them is used. */
function checkStored(size: number, digest: Buffer, info: PackInfo, label: string): void {
  if (size !== info.size) {
    throw new TandemError('integrity', 'OBJECT_SIZE', `${label}: object ${info.id} has ${size} bytes, the signed index says ${info.size} (truncated or replaced)`);
  }
  if (!timingSafeEqual(digest, Buffer.from(info.sha256, 'hex'))) {
    throw new TandemError('integrity', 'OBJECT_CHECKSUM', `${label}: object ${info.id} does not match the SHA-256 in the signed index: it was altered or swapped`, {
      hint: 'run `tandem-standby verify --read-data` to find every damaged object of the set; then `tandem-primary backup --repair-objects` stores the content again in new objects',
    });
  }
}

const undecryptable = (info: PackInfo, label: string, err: unknown): TandemError =>
  new TandemError('integrity', 'OBJECT_DECRYPT', `${label}: object ${info.id} matched its checksum but could not be decrypted: ${(err as Error).message}`, { cause: err });

/** The decrypted body of a pack, inflated when it was deflated, checked against its signed plain size. */
function plainOf(body: Buffer[], info: PackInfo, label: string): PackPlain {
  let plain: PackPlain;
  if (info.c === 'none') plain = new PackPlain(body);
  else {
    try {
      plain = new PackPlain([inflateRawSync(body.length === 1 ? body[0]! : Buffer.concat(body), { maxOutputLength: Math.max(1, info.plain) })]);
    } catch (err) {
      throw new TandemError('integrity', 'OBJECT_DECOMPRESS', `${label}: object ${info.id} does not inflate to its signed plain size ${info.plain}: ${(err as Error).message}`, { cause: err });
    }
  }
  if (plain.length !== info.plain) {
    throw new TandemError('integrity', 'OBJECT_PLAIN_SIZE', `${label}: object ${info.id} holds ${plain.length} plain bytes, the signed index says ${info.plain}`);
  }
  return plain;
}

/** blobAt over a PackPlain: the blob's slices, after their bytes matched its id. */
export function blobSlices(plain: PackPlain, blob: PackedBlob, hmacKey: Buffer, label: string): Buffer[] {
  if (blob.offset + blob.length > plain.length) {
    throw new TandemError('integrity', 'OBJECT_BLOB_RANGE', `${label}: blob ${blob.id} lies outside its object (${blob.offset}+${blob.length} of ${plain.length} bytes)`);
  }
  const slices = plain.slices(blob.offset, blob.length);
  const mac = createHmac('sha256', hmacKey);
  for (const sl of slices) mac.update(sl);
  if (!timingSafeEqual(mac.digest(), Buffer.from(blob.id, 'hex'))) {
    throw new TandemError('integrity', 'OBJECT_BLOB_MISMATCH', `${label}: the bytes of blob ${blob.id} do not match its id (a pack made with another files key, or altered before it was encrypted)`, {
      hint: 'check that keys.filesKeyFile is the same files.agekey on the primary and on this standby',
    });
  }
  return slices;
}

/** One blob of an opened pack, after its bytes matched its id (the HMAC under the files key). */
export function blobAt(plain: Buffer, blob: PackedBlob, hmacKey: Buffer, label: string): Buffer {
  if (blob.offset + blob.length > plain.length) {
    throw new TandemError('integrity', 'OBJECT_BLOB_RANGE', `${label}: blob ${blob.id} lies outside its object (${blob.offset}+${blob.length} of ${plain.length} bytes)`);
  }
  const data = plain.subarray(blob.offset, blob.offset + blob.length);
  if (!timingSafeEqual(Buffer.from(objectId(hmacKey, data), 'hex'), Buffer.from(blob.id, 'hex'))) {
    throw new TandemError('integrity', 'OBJECT_BLOB_MISMATCH', `${label}: the bytes of blob ${blob.id} do not match its id (a pack made with another files key, or altered before it was encrypted)`, {
      hint: 'check that keys.filesKeyFile is the same files.agekey on the primary and on this standby',
    });
  }
  return data;
}
