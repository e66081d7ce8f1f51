// Throughput of tandem's own age streams (packages/shared/dist/crypto/age/index.js) alone: plaintext
// from memory, output to a sink that discards it: no disk, no network, no child process.
// Input comes in `pieceKiB` buffers: 64 KiB is what the backup pipeline hands the encrypter (zstd's
// stdout pipe yields 64 KiB chunks), 1024 KiB is the best case.
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ROOT, MIB, best, median } from './common.mjs';

const age = await import(`${ROOT}/packages/shared/dist/crypto/age/index.js`);

/** Discards everything, counting bytes (`.bytes`). */
export function sink() {
  const s = new Writable({
    highWaterMark: 4 * MIB,
    write(chunk, _enc, cb) {
      s.bytes += chunk.length;
      cb();
    },
    writev(chunks, cb) {
      for (const { chunk } of chunks) s.bytes += chunk.length;
      cb();
    },
  });
  s.bytes = 0;
  return s;
}

// 16 distinct random 1 MiB blocks, cycled: incompressible and free to "generate" during the run.
const blocks = Array.from({ length: 16 }, () => randomBytes(MIB));
export function* plaintext(totalMiB, piece) {
  for (let i = 0; i < totalMiB; i++) {
    const block = blocks[i % blocks.length];
    for (let off = 0; off < MIB; off += piece) yield block.subarray(off, off + piece);
  }
}

async function timeRuns(runs, fn) {
  const secs = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    secs.push((performance.now() - t0) / 1000);
  }
  return secs;
}

/** MB/s (decimal) of encrypting `totalMiB` MiB: {best, median, runs: [MB/s...]}. */
export async function encryptThroughput({ totalMiB = 512, pieceKiB = 64, runs = 3 } = {}) {
  const kp = age.generateAgeKeyPair();
  const piece = pieceKiB * 1024;
  const bytes = totalMiB * MIB;
  // Warm-up (JIT, OpenSSL cipher fetch).
  await pipeline(Readable.from(plaintext(16, piece)), age.createAgeEncryptStream([kp.recipient]), sink());
  const secs = await timeRuns(runs, async () => {
    const s = sink();
    await pipeline(Readable.from(plaintext(totalMiB, piece)), age.createAgeEncryptStream([kp.recipient]), s);
    if (s.bytes < bytes) throw new Error(`encrypt produced ${s.bytes} bytes`);
  });
  const rates = secs.map((s) => bytes / 1e6 / s);
  return { best: Math.max(...rates), median: median(rates), runs: rates, seconds: best(secs), totalMiB, pieceKiB };
}

/** The ciphertext of `totalMiB` MiB encrypted to `recipient`, re-sliced into `pieceKiB` buffers as a file or S3 read stream would give it. */
export async function ciphertextPieces(recipient, totalMiB, pieceKiB) {
  const piece = pieceKiB * 1024;
  const collected = [];
  await pipeline(
    Readable.from(plaintext(totalMiB, MIB)),
    age.createAgeEncryptStream([recipient]),
    new Writable({
      write(chunk, _enc, cb) {
        collected.push(chunk);
        cb();
      },
    }),
  );
  const all = Buffer.concat(collected);
  collected.length = 0;
  const pieces = [];
  for (let off = 0; off < all.length; off += piece) pieces.push(all.subarray(off, off + piece));
  return pieces;
}

/** MB/s (decimal, of plaintext) of decrypting `totalMiB` MiB fed in `pieceKiB` buffers. */
export async function decryptThroughput({ totalMiB = 512, pieceKiB = 64, runs = 3 } = {}) {
  const kp = age.generateAgeKeyPair();
  const bytes = totalMiB * MIB;
  const pieces = await ciphertextPieces(kp.recipient, totalMiB, pieceKiB);
  const secs = await timeRuns(runs, async () => {
    const s = sink();
    await pipeline(Readable.from(pieces), age.createAgeDecryptStream([kp.identity]), s);
    if (s.bytes !== bytes) throw new Error(`decrypt produced ${s.bytes} bytes`);
  });
  const rates = secs.map((s) => bytes / 1e6 / s);
  return { best: Math.max(...rates), median: median(rates), runs: rates, seconds: best(secs), totalMiB, pieceKiB };
}
