// Throughput of tandem's age streams vs the `age` CLI.
//
//   npx tsc -b   (or: npx tsc -p packages/shared)
//   node bench/crypto-throughput.mjs [MiB] [pieceKiB] [runs]   defaults: 512 MiB, 1024 KiB pieces, 3 runs
//
// Input is generated in memory and fed in `pieceKiB` buffers (64 mimics the backup pipeline's
// chunks); output goes to a sink that discards it, so the figures are the crypto and stream
// plumbing only (no disk, no network). Each figure is run `runs` times and printed as best and
// median: on a shared 2-core machine a single run mostly measures the neighbours.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ROOT } from './lib/common.mjs';
import { ciphertextPieces, decryptThroughput, encryptThroughput, plaintext } from './lib/age-throughput.mjs';

const { formatIdentityFile, generateAgeKeyPair } = await import(`${ROOT}/packages/shared/dist/crypto/age/index.js`);

const totalMiB = Number(process.argv[2] ?? 512);
const pieceKiB = Number(process.argv[3] ?? 1024);
const runs = Number(process.argv[4] ?? 3);
if (!(pieceKiB > 0 && 1024 % pieceKiB === 0)) throw new Error('pieceKiB must divide 1024');
const totalBytes = totalMiB * 1024 * 1024;

const show = (label, rates) => {
  const sorted = [...rates].sort((a, b) => b - a);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  console.log(`${label.padEnd(24)} best ${sorted[0].toFixed(0).padStart(5)} MB/s, median ${median.toFixed(0).padStart(5)} MB/s  (${rates.length} runs)`);
};

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

async function cliRates(fn) {
  const rates = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    rates.push(totalBytes / 1e6 / ((performance.now() - t0) / 1000));
  }
  return rates;
}

console.log(`node ${process.version}, ${totalMiB} MiB in ${pieceKiB} KiB buffers, ${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(2)}`);
show('tandem age encrypt', (await encryptThroughput({ totalMiB, pieceKiB, runs })).runs);
show('tandem age decrypt', (await decryptThroughput({ totalMiB, pieceKiB, runs })).runs);

const kp = generateAgeKeyPair();
const dir = mkdtempSync(join(tmpdir(), 'tandem-bench-'));
try {
  const keyFile = join(dir, 'key.txt');
  writeFileSync(keyFile, formatIdentityFile(kp), { mode: 0o600 });
  const ciphertext = await ciphertextPieces(kp.recipient, totalMiB, pieceKiB);
  show('age CLI encrypt (pipe)', await cliRates(() => runCli('age', ['-e', '-r', kp.recipient], plaintext(totalMiB, pieceKiB * 1024))));
  show('age CLI decrypt (pipe)', await cliRates(() => runCli('age', ['-d', '-i', keyFile], ciphertext)));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
