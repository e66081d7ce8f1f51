/**
 * age decryption on a worker thread, as a Duplex: stored bytes in, plaintext out, the same errors
 * as createAgeDecryptStream. A standby's staging is bound by the node thread (reading the stored
 * copy, feeding zstd, parsing tar, writing files); taking the ChaCha20-Poly1305 work off it lets
 * the second core do it at the same time.
 */
import { existsSync } from 'node:fs';
import { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { TandemError, type ErrorKind } from '../../errors.js';
import { createAgeDecryptStream } from './decrypt.js';

/** Input not yet decrypted that may be in flight to the worker (bounded memory). */
const MAX_IN_FLIGHT = 4;

/** The worker script: beside this module when built; from sources (tests), the built copy. */
function workerUrl(): URL {
  const here = new URL('./decrypt-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  return new URL(here.href.replace('/src/crypto/age/', '/dist/crypto/age/'));
}

class AgeDecryptWorkerStream extends Duplex {
  readonly #worker: Worker;
  #sent = 0;
  #acked = 0;
  #waiting: (() => void) | undefined;
  #finished: ((err?: Error | null) => void) | undefined;
  #failed = false;
  /** The reader has enough buffered: accept no more input until it reads (bounded memory). */
  #full = false;

  constructor(identities: string[], label: string | undefined) {
    super({ readableHighWaterMark: 1 << 20, writableHighWaterMark: 1 << 20 });
    this.#worker = new Worker(workerUrl(), { workerData: { identities, label } });
    this.#worker.on('message', (m: { data?: Uint8Array; ack?: number; done?: boolean; error?: { kind: ErrorKind; code: string; message: string; hint?: string } }) => {
      if (m.error) return this.#fail(new TandemError(m.error.kind, m.error.code, m.error.message, m.error.hint === undefined ? {} : { hint: m.error.hint }));
      if (m.data && !this.push(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength))) this.#full = true;
      if (m.ack !== undefined) {
        this.#acked = m.ack;
        this.#release();
      }
      if (m.done) {
        this.push(null);
        void this.#worker.terminate();
        const fin = this.#finished;
        this.#finished = undefined;
        fin?.();
      }
    });
    this.#worker.on('error', (err) => this.#fail(err));
  }

  #fail(err: Error): void {
    if (this.#failed) return;
    this.#failed = true;
    void this.#worker.terminate();
    this.destroy(err);
  }

  /** Lets the writer go on once little enough input is in flight and the reader wants more. */
  #release(): void {
    if (this.#waiting === undefined || this.#full || this.#sent - this.#acked >= MAX_IN_FLIGHT) return;
    const go = this.#waiting;
    this.#waiting = undefined;
    go();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    // A copy the worker owns: the caller may reuse its buffer, and a transfer detaches it.
    const copy = new Uint8Array(chunk.length);
    copy.set(chunk);
    this.#worker.postMessage({ data: copy }, [copy.buffer]);
    this.#sent++;
    this.#waiting = () => cb();
    this.#release();
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#finished = cb;
    this.#worker.postMessage({ end: true });
  }

  override _read(): void {
    // Output arrives as the worker sends it; reading again lets more input go to it.
    this.#full = false;
    this.#release();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    void this.#worker.terminate();
    cb(err);
  }
}

/** Artifacts at least this large decrypt on a worker thread; smaller ones are not worth its start. */
export const OFFTHREAD_DECRYPT_MIN_BYTES = 16 << 20;

/**
 * createAgeDecryptStream, on a worker thread when `size` (the stored bytes to come, if known) is
 * at least OFFTHREAD_DECRYPT_MIN_BYTES.
 */
export function createAgeDecryptStreamFor(identities: string[], opts: { label?: string; size?: number } = {}): Duplex {
  if (opts.size === undefined || opts.size < OFFTHREAD_DECRYPT_MIN_BYTES) return createAgeDecryptStream(identities, opts);
  // Key errors (no identity, a malformed one) are thrown here, as in-thread, not from the worker.
  createAgeDecryptStream(identities, opts);
  return new AgeDecryptWorkerStream(identities, opts.label);
}
