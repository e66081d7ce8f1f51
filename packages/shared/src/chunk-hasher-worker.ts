/**
 * The worker thread of ChunkVerifierThread and PackReadThread (chunk-verifier-thread.ts).
 * - ChunkVerifierThread: SHA-256 of each piece of the stored bytes it is lent, the buffer sent
 *   straight back with the digests of the pieces that ended inside it.
 * - PackReadThread: a pack of a directory filestore read whole into the buffer it is lent (the file
 *   opened, checked to be a regular file of the signed size, read, closed here), and its SHA-256.
 *   On request it then opens the pack's age payload in place (its STREAM chunks, with the payload
 *   key the main thread unwrapped from the header once the SHA-256 matched the signed one).
 * It imports nothing but node:crypto, node:fs and the age STREAM rules (crypto/age/stream.ts, which
 * imports node:crypto alone), so it cuts pieces itself rather than load ChunkHasher, whose module
 * loads zod, and allocates nothing large: the buffers are the main thread's.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { openPayloadInPlace, type PayloadProblem } from './crypto/age/stream.js';

export type ToHasher =
  | { t: 'in'; buf: ArrayBuffer; len: number }
  | { t: 'end' }
  | { t: 'pack'; n: number; path: string; size: number; buf: ArrayBuffer }
  | { t: 'open'; n: number; buf: ArrayBuffer; start: number; end: number; key: ArrayBuffer };
/** A payload opened: the plaintext's length at the front of `buf`, or why it was refused. */
export type PayloadOpened = { t: 'opened'; n: number; buf: ArrayBuffer; plain?: number; problem?: PayloadProblem };
/** A pack read: `got` the bytes read (the file's size when it is not the one asked for), `err` an errno code and message. */
export type PackRead = { t: 'pack'; n: number; buf: ArrayBuffer; got: number; digest?: ArrayBuffer; err?: { code: string; message: string }; notFile?: boolean };
export type FromHasher = { t: 'back'; buf: ArrayBuffer; len: number; digests: ArrayBuffer[] } | { t: 'end'; digests: ArrayBuffer[] } | PackRead | PayloadOpened;

const port = parentPort!;
const size = (workerData as { size: number }).size;
let hash: Hash = createHash('sha256');
let inPiece = 0;

const cut = (digests: ArrayBuffer[]): void => {
  const d = hash.digest();
  digests.push(d.buffer.slice(d.byteOffset, d.byteOffset + d.length) as ArrayBuffer);
  hash = createHash('sha256');
  inPiece = 0;
};

/** Reads the file at `path` whole into `buf` when it is a regular file of exactly `size` bytes, and hashes it. */
function readPack(m: Extract<ToHasher, { t: 'pack' }>): PackRead {
  const out: PackRead = { t: 'pack', n: m.n, buf: m.buf, got: 0 };
  let fd: number | undefined;
  try {
    // O_NONBLOCK: a FIFO in the object's place opens at once and is refused below as not a file,
    // instead of blocking this thread until someone writes to it (regular files ignore the flag).
    fd = openSync(m.path, constants.O_RDONLY | constants.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isFile()) return { ...out, notFile: true };
    if (st.size !== m.size) return { ...out, got: st.size };
    const b = Buffer.from(m.buf, 0, m.size);
    let got = 0;
    while (got < m.size) {
      const n = readSync(fd, b, got, m.size - got, got);
      if (n === 0) break;
      got += n;
    }
    // One byte more: a file that grew since fstat is not the object the index lists either.
    if (got === m.size && readSync(fd, Buffer.alloc(1), 0, 1, got) > 0) got++;
    if (got !== m.size) return { ...out, got };
    const d = createHash('sha256').update(b).digest();
    return { ...out, got, digest: d.buffer.slice(d.byteOffset, d.byteOffset + d.length) as ArrayBuffer };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { ...out, err: { code: e.code ?? 'UNKNOWN', message: e.message } };
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

port.on('message', (m: ToHasher) => {
  if (m.t === 'pack') {
    const r = readPack(m);
    port.postMessage(r, [m.buf]);
    return;
  }
  if (m.t === 'open') {
    const r = openPayloadInPlace(Buffer.from(m.buf), m.start, m.end, Buffer.from(m.key));
    port.postMessage({ t: 'opened', n: m.n, buf: m.buf, ...('plain' in r ? { plain: r.plain } : { problem: r }) } satisfies PayloadOpened, [m.buf]);
    return;
  }
  const digests: ArrayBuffer[] = [];
  if (m.t === 'end') {
    if (inPiece > 0) cut(digests);
    port.postMessage({ t: 'end', digests } satisfies FromHasher);
    return;
  }
  const b = Buffer.from(m.buf, 0, m.len);
  for (let off = 0; off < b.length; ) {
    const take = Math.min(b.length - off, size - inPiece);
    hash.update(off === 0 && take === b.length ? b : b.subarray(off, off + take));
    inPiece += take;
    off += take;
    if (inPiece === size) cut(digests);
  }
  port.postMessage({ t: 'back', buf: m.buf, len: m.len, digests } satisfies FromHasher, [m.buf]);
});
