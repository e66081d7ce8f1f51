// Throughput of tandem's age streams vs the `age` CLI.
//
//   npx tsc -b   (or: npx tsc -p packages/shared)
//   node bench/crypto-throughput.mjs [MiB] [pieceKiB] [runs]   defaults: 512 MiB, 1024 KiB pieces, 3 runs
//
// Input is generated in memory and fed in 1 MiB buffers (pieceKiB=64 mimics fs.createReadStream,
// where every chunk is copied once into the stream's hold-back buffer); output goes to a sink that discards it, so
// the figures are the crypto + stream plumbing only (no disk, no network). Imports the module file
// directly rather than dist/index.js, which re-exports modules that need not be built for this.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  createAgeDecryptStream,
  createAgeEncryptStream,
  formatIdentityFile,
  generateAgeKeyPair,
} from '../packages/shared/dist/crypto/age.js';

const MIB = 1024 * 1024;
const totalMiB = Number(process.argv[2] ?? 512);
const totalBytes = totalMiB * MIB;
const piece = Number(process.argv[3] ?? 1024) * 1024;
if (!(piece > 0 && MIB % piece === 0)) throw new Error('pieceKiB must divide 1024');

// 16 distinct random 1 MiB blocks, cycled: incompressible and cheap to "generate" during the run.
const blocks = Array.from({ length: 16 }, () => randomBytes(MIB));
function* plaintext() {
  for (let i = 0; i < totalMiB; i++) {
    const block = blocks[i % blocks.length];
    for (let off = 0; off < MIB; off += piece) yield block.subarray(off, off + piece);
  }
}

/** Discards everything, counting bytes. */
function sink() {
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

/** Re-slices the collected ciphertext into `piece`-sized buffers, like a file or S3 read stream would. */
function rechunk(buffers) {
  const all = Buffer.concat(buffers);
  const out = [];
  for (let off = 0; off < all.length; off += piece) out.push(all.subarray(off, off + piece));
  return out;
}

const mbps = (bytes, ms) => (bytes / 1e6 / (ms / 1000)).toFixed(0);

// Each figure is run `runs` times; best and median are printed, since on a shared 2-core machine a
// single run mostly measures the neighbours.
const runs = Number(process.argv[4] ?? 3);

async function timed(label, fn) {
  const times = [];
  let bytes = 0;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    bytes = await fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const best = times[0];
  const median = times[Math.floor((times.length - 1) / 2)];
  console.log(
    `${label.padEnd(24)} best ${mbps(totalBytes, best).padStart(5)} MB/s, median ${mbps(totalBytes, median).padStart(5)} MB/s` +
      `  (${runs} runs, ${bytes} bytes out)`,
  );
}

function runCli(cmd, args, inputs) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    let bytes = 0;
    child.stdout.on('data', (d) => (bytes += d.length));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(bytes) : reject(new Error(`${cmd} exited ${code}`))));
    pipeline(Readable.from(inputs), child.stdin).catch(reject);
  });
}

const kp = generateAgeKeyPair();
const dir = mkdtempSync(join(tmpdir(), 'tandem-bench-'));
const keyFile = join(dir, 'key.txt');
writeFileSync(keyFile, formatIdentityFile(kp), { mode: 0o600 });

console.log(`node ${process.version}, ${totalMiB} MiB in ${piece / 1024} KiB buffers, ${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(2)}`);
try {
  // Warm-up (JIT, OpenSSL cipher fetch) so the first measurement is not penalised.
  await pipeline(Readable.from(blocks), createAgeEncryptStream([kp.recipient]), sink());

  await timed('tandem age encrypt', async () => {
    const s = sink();
    await pipeline(Readable.from(plaintext()), createAgeEncryptStream([kp.recipient]), s);
    return s.bytes;
  });

  // Ciphertext for the decrypt runs (kept in memory so decrypt is not measured against the disk).
  const collected = [];
  await pipeline(
    Readable.from(plaintext()),
    createAgeEncryptStream([kp.recipient]),
    new Writable({
      write(chunk, _enc, cb) {
        collected.push(chunk);
        cb();
      },
    }),
  );
  const ciphertext = rechunk(collected);
  collected.length = 0;

  await timed('tandem age decrypt', async () => {
    const s = sink();
    await pipeline(Readable.from(ciphertext), createAgeDecryptStream([kp.identity]), s);
    if (s.bytes !== totalBytes) throw new Error(`decrypt produced ${s.bytes} bytes`);
    return s.bytes;
  });

  await timed('age CLI encrypt (pipe)', () => runCli('age', ['-e', '-r', kp.recipient], plaintext()));
  await timed('age CLI decrypt (pipe)', () => runCli('age', ['-d', '-i', keyFile], ciphertext));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
