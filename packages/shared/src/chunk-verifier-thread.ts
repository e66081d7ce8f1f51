import { Transform, type TransformCallback } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { SignedPieces, type ChunkMismatch, type StoredChunks } from './chunks.js';
import { TandemError } from './errors.js';
import type { FromHasher, PackRead, PayloadOpened, ToHasher } from './chunk-hasher-worker.js';
import type { PayloadProblem } from './crypto/age/stream.js';
import { takeGiven } from './given-away.js';

/** Buffers lent to the hashing thread at a time (2: measured as fast as 4, with ~20 MiB less at the peak). */
const MAX_LENT = 2;
/** Chunks that are not given away are copied into batches of this size. */
const BATCH = 1 << 20;

/**
 * ChunkVerifier with the hashing on a second thread: the same rule (each piece of the stored bytes
 * is held until its SHA-256 matched the signed digest, and only then passed on; a stream that ends
 * short of the signed pieces fails), the same errors, and the main thread free for what comes after
 * it (decryption, the tar parser, the file system calls) while the next piece is hashed. SHA-256 is
 * about a third of the main thread's work while a files archive is extracted.
 *
 * The bytes are lent, not copied: each buffer (one its producer gave away, see giveAway, or a 1 MiB
 * batch this thread gathered from other chunks) is transferred to the worker, hashed there, and
 * transferred back with the digests of the pieces that ended in it, so every large allocation is
 * this thread's own (memory one thread allocates and another frees stays in the allocating
 * thread's malloc arena).
 * Memory: the held piece, and at most MAX_LENT buffers lent. The worker (chunk-hasher-worker.ts)
 * imports only node:crypto (~3 MB).
 */
export class ChunkVerifierThread extends Transform {
  readonly #pieces: SignedPieces;
  readonly #worker: Worker;
  /** Bytes back from the worker, not yet released (they belong to pieces not yet verified). */
  #held: Buffer[] = [];
  /** Stored bytes released so far (the end of the last verified piece). */
  #released = 0;
  #lent = 0;
  #blocked: (() => void) | undefined;
  #batch: Buffer | undefined;
  #filled = 0;
  #flushCb: TransformCallback | undefined;
  #ended = false;

  constructor(chunks: StoredChunks, storedSize: number, onMismatch: (m: ChunkMismatch) => Error, onShort: (pieces: number, count: number) => Error) {
    super({ highWaterMark: 1 << 20 });
    this.#pieces = new SignedPieces(chunks, storedSize, onMismatch, onShort);
    this.#worker = new Worker(workerUrl(), { workerData: { size: chunks.size }, resourceLimits: { maxYoungGenerationSizeMb: 2 } });
    this.#worker.on('message', (m: FromHasher) => this.#onMessage(m));
    this.#worker.on('error', (err) => this.destroy(new TandemError('internal', 'HASH_THREAD_FAILED', `the hashing thread failed: ${err.message}`, { cause: err })));
    this.#worker.on('exit', (code) => {
      if (!this.#ended && !this.destroyed) this.destroy(new TandemError('internal', 'HASH_THREAD_FAILED', `the hashing thread exited (code ${code}) before the end`));
    });
  }

  #lend(buf: ArrayBuffer, len: number): void {
    this.#worker.postMessage({ t: 'in', buf, len } satisfies ToHasher, [buf]);
    this.#lent++;
  }

  #lendBatch(): void {
    if (this.#batch === undefined || this.#filled === 0) return;
    this.#lend(this.#batch.buffer as ArrayBuffer, this.#filled);
    this.#batch = undefined;
    this.#filled = 0;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (takeGiven(chunk)) {
      // Its producer gave it away (an fs read's own buffer): lent as it is.
      this.#lendBatch();
      this.#lend(chunk.buffer as ArrayBuffer, chunk.length);
    } else {
      // Anything else is copied into batches of this thread's own: whoever wrote it may still
      // hold it, and a transferred buffer is gone from the thread that sent it.
      for (let off = 0; off < chunk.length; ) {
        this.#batch ??= Buffer.allocUnsafeSlow(BATCH);
        const take = Math.min(chunk.length - off, BATCH - this.#filled);
        chunk.copy(this.#batch, this.#filled, off, off + take);
        this.#filled += take;
        off += take;
        if (this.#filled === BATCH) this.#lendBatch();
      }
    }
    if (this.#lent >= MAX_LENT) this.#blocked = () => cb();
    else cb();
  }

  override _flush(cb: TransformCallback): void {
    this.#lendBatch();
    this.#flushCb = cb;
    this.#worker.postMessage({ t: 'end' } satisfies ToHasher);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#held = [];
    void this.#worker.terminate();
    cb(err);
  }

  #onMessage(m: FromHasher): void {
    if (this.destroyed || m.t === 'pack' || m.t === 'opened') return;
    if (m.t === 'back') {
      this.#held.push(Buffer.from(m.buf, 0, m.len));
      this.#lent--;
    }
    for (const d of m.digests) {
      const err = this.#verified(Buffer.from(d));
      if (err) return void this.destroy(err);
    }
    if (m.t === 'end') {
      this.#ended = true;
      void this.#worker.terminate();
      const cb = this.#flushCb;
      this.#flushCb = undefined;
      cb?.(this.#pieces.ended());
      return;
    }
    const go = this.#blocked;
    if (go !== undefined && this.#lent < MAX_LENT) {
      this.#blocked = undefined;
      go();
    }
  }

  /** The digest of the next piece arrived: compare, and pass the piece's bytes on if it matched. */
  #verified(got: Buffer): Error | undefined {
    let held = 0;
    for (const b of this.#held) held += b.length;
    const end = this.#released + Math.min(held, this.#pieces.size);
    const err = this.#pieces.check(got, end - this.#released);
    if (err) {
      this.#held = [];
      return err;
    }
    // Release the bytes up to the piece's end; a buffer across the boundary is split.
    let left = end - this.#released;
    while (left > 0) {
      const b = this.#held[0]!;
      if (b.length <= left) {
        this.#held.shift();
        this.push(b);
        left -= b.length;
      } else {
        this.push(b.subarray(0, left));
        this.#held[0] = b.subarray(left);
        left = 0;
      }
    }
    this.#released = end;
    return undefined;
  }
}

/** What PackReadThread.read found: the pack's bytes (a buffer of the pool until released) and their SHA-256. */
export interface LocalPack {
  bytes: Buffer;
  sha256: Buffer;
}

/** A payload openPayload opened in place: the buffer back (to release), the plaintext's length at its front, or why not. */
export interface OpenedPayload {
  bytes: Buffer;
  plain?: number;
  problem?: PayloadProblem;
}

/** Why a local pack could not be read: the file missing or not one, another size, or an errno. */
export class PackReadError extends Error {
  constructor(
    readonly path: string,
    readonly reason: { missing?: boolean; notFile?: boolean; size?: number; code?: string },
    message: string,
  ) {
    super(message);
  }
}

/**
 * Packs of a directory filestore read whole, and hashed, on a second thread, while this one decrypts
 * and writes the packs before them: an apply's reads and SHA-256 (a third of its thread's work for
 * a tree of media) no longer wait for this thread, and wait for nothing from it (the worker opens,
 * checks and reads the file itself: a read handed to the thread pool goes on only when this thread
 * comes back to its event loop, which a file-writing loop does only between packs).
 *
 * The buffers are this thread's and are lent: each read fills one from a pool (at most `max`, each
 * kept for the next pack once released), so that a pack's 8-16 MiB are not fresh memory every time
 * (on the machines measured, memory touched for the first time costs ~1-3 ms per MiB). The bytes
 * are the caller's until release(); the SHA-256 is of exactly those bytes (the buffer was away while
 * it was computed, out of reach of anything else in this process).
 */
export class PackReadThread {
  readonly #worker: Worker;
  readonly #free: Buffer[] = [];
  #count = 0;
  #allocated = 0;
  #n = 0;
  readonly #pending = new Map<number, { resolve: (p: LocalPack) => void; reject: (e: Error) => void; path: string; size: number }>();
  readonly #opening = new Map<number, { resolve: (r: OpenedPayload) => void; reject: (e: Error) => void }>();
  readonly #waiting: Array<() => void> = [];
  #failed: Error | undefined;

  constructor(private readonly max = 3) {
    this.#worker = new Worker(workerUrl(), { workerData: { size: 1 }, resourceLimits: { maxYoungGenerationSizeMb: 2 } });
    this.#worker.on('message', (m: FromHasher) => {
      if (m.t === 'pack') this.#onRead(m);
      else if (m.t === 'opened') this.#onOpened(m);
    });
    const fail = (err: Error) => {
      this.#failed = err;
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
      for (const p of this.#opening.values()) p.reject(err);
      this.#opening.clear();
    };
    this.#worker.on('error', (err) => fail(new TandemError('internal', 'HASH_THREAD_FAILED', `the pack reading thread failed: ${err.message}`, { cause: err })));
    this.#worker.on('exit', (code) => {
      if (this.#pending.size + this.#opening.size > 0) fail(new TandemError('internal', 'HASH_THREAD_FAILED', `the pack reading thread exited (code ${code}) with reads pending`));
    });
    // Idle, the worker does not keep the process alive; reads pending do (their promises are awaited).
    this.#worker.unref();
  }

  /** The file at `path`, which must be a regular file of exactly `size` bytes, and its SHA-256. */
  async read(path: string, size: number): Promise<LocalPack> {
    if (this.#failed) throw this.#failed;
    let buf = this.#free.pop();
    while (buf === undefined && this.#count >= this.max) {
      await new Promise<void>((r) => this.#waiting.push(r));
      buf = this.#free.pop();
    }
    if (buf === undefined || buf.length < size) {
      if (buf === undefined) this.#count++;
      // Never smaller than a pack usually is, so that one buffer serves the packs after it.
      buf = Buffer.allocUnsafeSlow(Math.max(size, 12 << 20));
      this.#allocated++;
    }
    const n = this.#n++;
    const done = new Promise<LocalPack>((resolve, reject) => this.#pending.set(n, { resolve, reject, path, size }));
    this.#worker.ref();
    this.#worker.postMessage({ t: 'pack', n, path, size, buf: buf.buffer as ArrayBuffer } satisfies ToHasher, [buf.buffer as ArrayBuffer]);
    return done;
  }

  /**
   * The age payload `bytes[start, bytes.length)` of a pack read() returned (its SHA-256 already
   * matched) opened in place on the worker with `payloadKey`: the plaintext lands at the front of
   * the same memory. `bytes` is away (detached) meanwhile; the result's `bytes` is that memory again,
   * given back whether or not the payload opened, and is what to release().
   */
  async openPayload(bytes: Buffer, start: number, payloadKey: Buffer): Promise<OpenedPayload> {
    if (this.#failed) throw this.#failed;
    const n = this.#n++;
    const done = new Promise<OpenedPayload>((resolve, reject) => this.#opening.set(n, { resolve, reject }));
    this.#worker.ref();
    const msg: ToHasher = { t: 'open', n, buf: bytes.buffer as ArrayBuffer, start: bytes.byteOffset + start, end: bytes.byteOffset + bytes.length, key: Uint8Array.from(payloadKey).buffer };
    this.#worker.postMessage(msg, [bytes.buffer as ArrayBuffer]);
    return done;
  }

  #onOpened(m: PayloadOpened): void {
    const p = this.#opening.get(m.n);
    if (p === undefined) return;
    this.#opening.delete(m.n);
    if (this.#pending.size + this.#opening.size === 0) this.#worker.unref();
    p.resolve({ bytes: Buffer.from(m.buf), ...(m.plain !== undefined ? { plain: m.plain } : {}), ...(m.problem !== undefined ? { problem: m.problem } : {}) });
  }

  /** Buffers allocated so far (a released one serves the next read that fits in it). */
  get allocated(): number {
    return this.#allocated;
  }

  /** Gives a buffer read() returned back to the pool (its bytes must not be used after). */
  release(bytes: Buffer): void {
    this.#free.push(Buffer.from(bytes.buffer, 0, bytes.buffer.byteLength));
    this.#waiting.shift()?.();
  }

  #onRead(m: PackRead): void {
    const p = this.#pending.get(m.n);
    if (p === undefined) return;
    this.#pending.delete(m.n);
    if (this.#pending.size + this.#opening.size === 0) this.#worker.unref();
    const buf = Buffer.from(m.buf);
    if (m.digest !== undefined) return p.resolve({ bytes: buf.subarray(0, p.size), sha256: Buffer.from(m.digest) });
    this.release(buf);
    if (m.err?.code === 'ENOENT') return p.reject(new PackReadError(p.path, { missing: true }, `${p.path} does not exist`));
    if (m.err) return p.reject(new PackReadError(p.path, { code: m.err.code }, `cannot read ${p.path}: ${m.err.message}`));
    if (m.notFile) return p.reject(new PackReadError(p.path, { notFile: true }, `${p.path} is not a file`));
    p.reject(new PackReadError(p.path, { size: m.got }, `${p.path} has ${m.got} bytes, not ${p.size}`));
  }

  async close(): Promise<void> {
    this.#free.length = 0;
    await this.#worker.terminate();
  }
}

/**
 * The worker module beside this one. When this module runs from its TypeScript source (the unit
 * tests), the built one in dist: a worker thread loads JavaScript.
 */
function workerUrl(): URL {
  const here = import.meta.url;
  if (here.endsWith('.ts')) return new URL(here.replace(/\/src\/chunk-verifier-thread\.ts$/, '/dist/chunk-hasher-worker.js'));
  return new URL('./chunk-hasher-worker.js', here);
}
