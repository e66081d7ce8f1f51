import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { z } from 'zod';
import { TandemError } from './errors.js';

/**
 * Signed chunk digests of a stored artifact: the SHA-256 of every STORED_CHUNK_BYTES piece of the
 * stored (encrypted, compressed) object, in the signed manifest beside the SHA-256 of the whole.
 *
 * They let a standby use an artifact as it downloads and still never decrypt, decompress or parse
 * a byte that the primary did not sign: ChunkVerifier holds each piece until its digest matched and
 * only then passes it on. Without them the standby would have to download the whole object into
 * its staging dir, hash it, and read it back (one more write and read of every stored byte, and a
 * download that cannot overlap its own decoding). What reaches age, zstd, the tar parser or
 * pg_restore is the same either way: bytes the primary's signature vouches for.
 *
 * The list is bounded (MAX_STORED_CHUNKS, 32 GiB of stored bytes) so that a manifest stays a small
 * document; a larger artifact gets none and is verified whole before use, as are sets made by a
 * primary before chunk digests existed.
 */
export const STORED_CHUNK_BYTES = 8 << 20;
export const MAX_STORED_CHUNKS = 4096;

const DIGEST = 32;

export const storedChunksSchema = z.strictObject({
  /** Bytes per piece; the last piece may be shorter. */
  size: z.number().int().min(64 << 10).max(1 << 30),
  /** The SHA-256 digests of the pieces, 32 bytes each, concatenated, base64. */
  sha256: z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64'),
});
export type StoredChunks = z.infer<typeof storedChunksSchema>;

/** How many pieces an object of `storedSize` bytes has (an empty object has none). */
export const chunkCount = (storedSize: number, size: number): number => Math.ceil(storedSize / size);

/** Why `chunks` cannot describe an object of `storedSize` bytes, or undefined when it can. */
export function chunksProblem(chunks: StoredChunks, storedSize: number): string | undefined {
  const n = chunkCount(storedSize, chunks.size);
  if (n > MAX_STORED_CHUNKS) return `lists ${n} chunks, more than ${MAX_STORED_CHUNKS}`;
  const bytes = Buffer.from(chunks.sha256, 'base64').length;
  if (bytes !== n * DIGEST) return `has ${bytes / DIGEST} chunk digests for ${storedSize} stored bytes in chunks of ${chunks.size} (${n} expected)`;
  return undefined;
}

/** A pass-through that computes the chunk digests of what flows through it. */
export class ChunkHasher extends Transform {
  readonly #size: number;
  readonly #digests: Buffer[] = [];
  #hash = createHash('sha256');
  #inChunk = 0;
  #bytes = 0;
  #done = false;

  constructor(size = STORED_CHUNK_BYTES) {
    super({ highWaterMark: 1 << 20 });
    this.#size = size;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#bytes += chunk.length;
    for (let off = 0; off < chunk.length; ) {
      const take = Math.min(chunk.length - off, this.#size - this.#inChunk);
      this.#hash.update(off === 0 && take === chunk.length ? chunk : chunk.subarray(off, off + take));
      this.#inChunk += take;
      off += take;
      if (this.#inChunk === this.#size) this.#cut();
    }
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.#inChunk > 0) this.#cut();
    this.#done = true;
    cb();
  }

  #cut(): void {
    this.#digests.push(this.#hash.digest());
    this.#hash = createHash('sha256');
    this.#inChunk = 0;
  }

  /** The digests for the manifest, once the stream ended; undefined for an object too large to list. */
  result(): StoredChunks | undefined {
    if (!this.#done) throw new TandemError('internal', 'HASH_NOT_FINISHED', 'ChunkHasher.result() called before the stream ended');
    if (this.#digests.length > MAX_STORED_CHUNKS) return undefined;
    return { size: this.#size, sha256: Buffer.concat(this.#digests).toString('base64') };
  }
}

/** The chunk digests of a whole buffer (tests, and small documents). */
export function chunksOf(data: Buffer, size = STORED_CHUNK_BYTES): StoredChunks | undefined {
  const digests: Buffer[] = [];
  for (let off = 0; off < data.length; off += size) digests.push(createHash('sha256').update(data.subarray(off, off + size)).digest());
  if (digests.length > MAX_STORED_CHUNKS) return undefined;
  return { size, sha256: Buffer.concat(digests).toString('base64') };
}

export interface ChunkMismatch {
  index: number;
  count: number;
  start: number;
  end: number;
  got: string;
  want: string;
}

/**
 * The signed digests of an artifact's pieces, checked in order: what both verifiers (ChunkVerifier
 * here, ChunkVerifierThread with its hashing on a second thread) compare against, and the error a
 * failed piece, or a stream short of the signed pieces, gets.
 */
export class SignedPieces {
  readonly size: number;
  readonly count: number;
  readonly #want: Buffer;
  readonly #mismatch: (m: ChunkMismatch) => Error;
  readonly #short: (pieces: number, count: number) => Error;
  /** Pieces that matched so far. */
  index = 0;

  constructor(chunks: StoredChunks, storedSize: number, onMismatch: (m: ChunkMismatch) => Error, onShort: (pieces: number, count: number) => Error) {
    this.size = chunks.size;
    this.#want = Buffer.from(chunks.sha256, 'base64');
    this.count = chunkCount(storedSize, chunks.size);
    this.#mismatch = onMismatch;
    this.#short = onShort;
  }

  /** The next piece, of `bytes` bytes, hashed to `got`: its error, or undefined (and counted) if it matched. */
  check(got: Buffer, bytes: number): Error | undefined {
    const i = this.index;
    const want = this.#want.subarray(i * DIGEST, (i + 1) * DIGEST);
    const start = i * this.size;
    if (i >= this.count || !got.equals(want)) {
      return this.#mismatch({ index: i, count: this.count, start, end: start + bytes, got: got.toString('hex'), want: want.toString('hex') });
    }
    this.index++;
    return undefined;
  }

  /** At the end of the stream: the error if pieces are missing. */
  ended(): Error | null {
    return this.index === this.count ? null : this.#short(this.index, this.count);
  }
}

/**
 * Holds each piece of the stored bytes until its SHA-256 matched the signed digest, and only then
 * passes it on: nothing downstream (age, zstd, a parser) sees a byte of a piece that failed. It
 * does not bound the length (put the signed-size bound before it); a stream that ends short of the
 * signed pieces fails in flush with `short`. Holds at most one piece (`chunks.size` bytes).
 */
export class ChunkVerifier extends Transform {
  readonly #pieces: SignedPieces;
  #held: Buffer[] = [];
  #hash = createHash('sha256');
  #inChunk = 0;

  constructor(chunks: StoredChunks, storedSize: number, onMismatch: (m: ChunkMismatch) => Error, onShort: (pieces: number, count: number) => Error) {
    super({ highWaterMark: 1 << 20 });
    this.#pieces = new SignedPieces(chunks, storedSize, onMismatch, onShort);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const size = this.#pieces.size;
    for (let off = 0; off < chunk.length; ) {
      const take = Math.min(chunk.length - off, size - this.#inChunk);
      const piece = off === 0 && take === chunk.length ? chunk : chunk.subarray(off, off + take);
      this.#hash.update(piece);
      this.#held.push(piece);
      this.#inChunk += take;
      off += take;
      if (this.#inChunk === size) {
        const err = this.#release();
        if (err) return cb(err);
      }
    }
    cb();
  }

  override _flush(cb: TransformCallback): void {
    if (this.#inChunk > 0) {
      const err = this.#release();
      if (err) return cb(err);
    }
    cb(this.#pieces.ended());
  }

  #release(): Error | undefined {
    const err = this.#pieces.check(this.#hash.digest(), this.#inChunk);
    if (err) {
      this.#held = [];
      return err;
    }
    for (const b of this.#held) this.push(b);
    this.#held = [];
    this.#hash = createHash('sha256');
    this.#inChunk = 0;
    return undefined;
  }
}
