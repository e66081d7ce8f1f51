// npm run bench:backup: the speed and memory of `tandem-primary backup` against its references,
// measured in the same run on the same data (see docs/benchmarks.md).
//
//   BENCH_DB_GB=1.0      size of the generated database (pg_database_size, indexes included)
//   BENCH_FILES_MB=500   size of the generated files tree
//   BENCH_RUNS=3         timed repetitions of every measurement; the best (shortest) run counts
//   BENCH_CACHE_DIR=/var/tmp/tandem-bench   where the files tree is kept for re-runs
//   BENCH_DB=tandem_bench                   the generated database (kept for re-runs)
//   BENCH_KEEP_TMP=1     keep the temp dir (filestore, restic repos) for inspection
//   BENCH_DIAG=1         also: pg_dump -Fc -Z0 alone, and zstd levels 1-3 over that dump (size, time)
//
// Measured, each run in this order (interleaved, so that load from elsewhere hits both sides):
//   1. reference: `pg_dump -Fc DB > /dev/null` (pg_dump's own gzip-6 compression)
//   2. `tandem-primary backup --json` into a directory filestore (durations.db, durations.files,
//      the stored size of the db artifact, and the agent's peak RSS)
//   3. reference: `restic backup` of the files tree into a fresh local repository with a fresh,
//      empty cache dir (restic's first backup, as on a new machine)
// then once: `pg_dump -Fc -f FILE` for the size reference, and the age encrypt stream alone.
import { openSync, closeSync, statSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  PRIMARY_BIN,
  best,
  fmtList,
  fmtMB,
  fmtS,
  loadavg,
  log,
  median,
  pgEnv,
  runMeasured,
  runOk,
  verdict,
  agentCommand,
} from './lib/common.mjs';
import { BENCH_DB, agentEnv, parseJsonOut, removeSite } from './lib/site.mjs';
import { finishBench, resticEnv, setUpBench } from './lib/setup.mjs';
import { encryptThroughput } from './lib/age-throughput.mjs';

const bench = await setUpBench('backup');
const { runs, filesDir, site } = bench;

async function pgDumpToNull() {
  const fd = openSync('/dev/null', 'w');
  try {
    return (await runOk('pg_dump', ['-Fc', BENCH_DB], { env: pgEnv(), stdoutTo: fd })).seconds;
  } finally {
    closeSync(fd);
  }
}

async function tandemBackup() {
  const r = await runMeasured(...agentCommand(PRIMARY_BIN, ['backup', '--config', site.primaryConfig, '--json']), { env: agentEnv() });
  if (r.code !== 0) throw new Error(`tandem-primary backup exited ${r.code ?? r.signal}:\n${r.stderr.trim()}`);
  const out = parseJsonOut(r.stdout, 'tandem-primary backup');
  const db = out.artifacts.find((a) => a.name === 'db');
  const files = out.artifacts.find((a) => a.name === 'files');
  return { wall: r.seconds, durations: out.durations, db, files, peakRssMiB: r.peakRssMiB, treeMaxRssMiB: r.treeMaxRssMiB, setId: out.setId };
}

async function resticBackup(i) {
  const repo = join(site.dir, `restic-${i}`);
  const cache = join(site.dir, `restic-cache-${i}`);
  const env = resticEnv({ RESTIC_REPOSITORY: repo });
  await runOk('restic', ['init', '--quiet'], { env });
  const t = await runOk('restic', ['backup', '--quiet', '--host', 'bench', '--cache-dir', cache, filesDir], { env });
  // restic's fixed cost (open the repo: scrypt key derivation, read the index) for the notes.
  const open = await runOk('restic', ['cat', 'config', '--cache-dir', cache], { env });
  const size = Number((await runOk('du', ['-sb', repo])).stdout.split('\t')[0]);
  rmSync(repo, { recursive: true, force: true });
  rmSync(cache, { recursive: true, force: true });
  return { seconds: t.seconds, openSeconds: open.seconds, repoBytes: size };
}

const results = { dump: [], tandem: [], restic: [] };
try {
  // Warm-up, untimed: the database and the tree into the page cache, and one backup (so that every
  // timed backup, like the references, reads warm data and writes into an existing filestore).
  log('warm-up (untimed): pg_dump, tar of the files tree, one tandem backup');
  await pgDumpToNull();
  // Through a pipe: GNU tar writing to /dev/null itself does not read the files' contents at all.
  await runOk('sh', ['-c', 'tar -cf - -C "$1" . | cat > /dev/null', 'warm', filesDir]);
  await tandemBackup();

  for (let i = 1; i <= runs; i++) {
    log(`run ${i}/${runs} (load ${loadavg()})`);
    const dump = await pgDumpToNull();
    results.dump.push(dump);
    log(`  pg_dump -Fc > /dev/null: ${fmtS(dump)}`);
    const t = await tandemBackup();
    results.tandem.push({ ...t, load: loadavg() });
    log(`  tandem-primary backup: db ${fmtS(t.durations.db)}, files ${fmtS(t.durations.files)}, total ${fmtS(t.durations.total)}, wall ${fmtS(t.wall)}, peak RSS ${t.peakRssMiB?.toFixed(0)} MiB`);
    const r = await resticBackup(i);
    results.restic.push(r);
    log(`  restic backup (fresh repo, fresh cache): ${fmtS(r.seconds)} (of which opening the repo ~${fmtS(r.openSeconds)})`);
  }

  log('size reference: pg_dump -Fc -f FILE');
  const refFile = join(site.dir, 'ref.dump');
  const dumpFile = await runOk('pg_dump', ['-Fc', '-f', refFile, BENCH_DB], { env: pgEnv() });
  const refSize = statSync(refFile).size;
  rmSync(refFile);

  let diag;
  if (process.env.BENCH_DIAG === '1') {
    log('diagnostics: pg_dump -Fc -Z0 -f FILE, then zstd -1/-2/-3 (-T1) of that file to /dev/null');
    const plainFile = join(site.dir, 'plain.dump');
    const z0 = await runOk('pg_dump', ['-Fc', '-Z0', '-f', plainFile, BENCH_DB], { env: pgEnv() });
    diag = { z0Seconds: z0.seconds, plainBytes: statSync(plainFile).size, levels: [] };
    for (const level of [1, 2, 3]) {
      const out = join(site.dir, `plain.dump.${level}.zst`);
      const z = await runOk('zstd', [`-${level}`, '-T1', '-q', '-f', '-o', out, plainFile]);
      diag.levels.push({ level, seconds: z.seconds, bytes: statSync(out).size });
      rmSync(out);
    }
    rmSync(plainFile);
  }

  log('age encrypt stream alone: 512 MiB in memory -> null, 64 KiB and 1 MiB pieces, 3 runs each');
  const enc64 = await encryptThroughput({ totalMiB: 512, pieceKiB: 64, runs: 3 });
  const enc1m = await encryptThroughput({ totalMiB: 512, pieceKiB: 1024, runs: 3 });

  // ---- report
  const dumpBest = best(results.dump);
  const dbBest = best(results.tandem.map((t) => t.durations.db));
  const filesBest = best(results.tandem.map((t) => t.durations.files));
  const resticBest = best(results.restic.map((r) => r.seconds));
  const peak = Math.max(...results.tandem.map((t) => t.peakRssMiB ?? NaN));
  const treePeak = Math.max(...results.tandem.map((t) => t.treeMaxRssMiB ?? NaN));
  const dbArt = results.tandem[results.tandem.length - 1].db;
  const filesArt = results.tandem[results.tandem.length - 1].files;

  console.log('\nraw figures (seconds of every run, best first in brackets):');
  console.log(`  pg_dump -Fc > /dev/null          ${fmtList(results.dump)}  [best ${fmtS(dumpBest)}, median ${fmtS(median(results.dump))}]`);
  console.log(`  tandem db artifact (durations.db)  ${fmtList(results.tandem.map((t) => t.durations.db))}  [best ${fmtS(dbBest)}]`);
  console.log(`  tandem files artifact              ${fmtList(results.tandem.map((t) => t.durations.files))}  [best ${fmtS(filesBest)}]`);
  console.log(`  tandem backup total / wall         ${fmtList(results.tandem.map((t) => t.durations.total))} / ${fmtList(results.tandem.map((t) => t.wall))}`);
  console.log(`  restic backup (first, fresh cache) ${fmtList(results.restic.map((r) => r.seconds))}  [best ${fmtS(resticBest)}; opening the repo alone ${fmtList(results.restic.map((r) => r.openSeconds))} s]`);
  console.log(`  pg_dump -Fc -f FILE                ${fmtS(dumpFile.seconds)} (single run, size reference)`);
  console.log(`  db: plain custom-format dump ${dbArt.plainSize} B; tandem stored ${dbArt.storedSize} B; pg_dump -Fc file ${refSize} B`);
  console.log(`  files: tar ${filesArt.plainSize} B; tandem stored ${filesArt.storedSize} B; restic repo ${results.restic[0].repoBytes} B`);
  console.log(`  agent peak RSS (VmHWM of node) ${fmtList(results.tandem.map((t) => t.peakRssMiB ?? NaN), (x) => x.toFixed(1))} MiB; ` +
    `largest process of the tree (GNU time) ${fmtList(results.tandem.map((t) => t.treeMaxRssMiB ?? NaN), (x) => x.toFixed(1))} MiB`);
  console.log(`  age encrypt, 64 KiB pieces: ${fmtList(enc64.runs, (x) => x.toFixed(0))} MB/s; 1 MiB pieces: ${fmtList(enc1m.runs, (x) => x.toFixed(0))} MB/s`);
  console.log(`  load average during the tandem runs: ${results.tandem.map((t) => t.load.split(' ')[0]).join(', ')}; now ${loadavg()}`);
  console.log(`  db stage throughput: ${(dbArt.plainSize / 1e6 / dbBest).toFixed(0)} MB/s of dump; files: ${(filesArt.plainSize / 1e6 / filesBest).toFixed(0)} MB/s of tar`);

  if (diag) {
    console.log(`  diagnostics: pg_dump -Fc -Z0 -f FILE ${fmtS(diag.z0Seconds)} (${diag.plainBytes} B); zstd -T1 of that file:`);
    for (const l of diag.levels) {
      console.log(`    zstd -${l.level}: ${fmtS(l.seconds)} (${(diag.plainBytes / 1e6 / l.seconds).toFixed(0)} MB/s), ${l.bytes} B = ${(l.bytes / refSize).toFixed(3)} x pg_dump -Fc`);
    }
  }

  const rows = [
    verdict('db artifact time / pg_dump -Fc', dbBest / dumpBest, '<=', 0.5, 'ratio', `${fmtS(dbBest)} / ${fmtS(dumpBest)}`),
    verdict('db artifact size / pg_dump -Fc', dbArt.storedSize / refSize, '<=', 1.1, 'ratio', `${fmtMB(dbArt.storedSize)} / ${fmtMB(refSize)}`),
    verdict('files artifact time / restic backup', filesBest / resticBest, '<=', 1.0, 'ratio', `${fmtS(filesBest)} / ${fmtS(resticBest)}`),
    verdict('agent peak RSS', peak, '<=', 200, 'MiB', `node VmHWM, worst of ${runs} runs`),
    verdict('age encrypt throughput', enc64.best, '>=', 400, 'MB/s', `best of 3, 512 MiB in 64 KiB pieces (1 MiB pieces: ${enc1m.best.toFixed(0)} MB/s)`),
  ];
  finishBench(bench, 'backup', rows, { treePeak, json: { results, refSize, diag, enc64, enc1m } });
} finally {
  removeSite(site);
}
