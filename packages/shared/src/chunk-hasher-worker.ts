/**
 * The worker thread of ChunkVerifierThread (chunk-verifier-thread.ts): SHA-256 of each piece of the
 * stored bytes it is lent, the buffer sent straight back with the digests of the pieces that ended
 * inside it. It imports nothing but node:crypto (so it cuts pieces itself rather than load
 * ChunkHasher, whose module loads zod) and allocates nothing large: the buffers are the main thread's.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';

export type ToHasher = { t: 'in'; buf: ArrayBuffer; len: number } | { t: 'end' };
export type FromHasher = { t: 'back'; buf: ArrayBuffer; len: number; digests: ArrayBuffer[] } | { t: 'end'; digests: ArrayBuffer[] };

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

port.on('message', (m: ToHasher) => {
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
