// npm run bench:apply: the speed and memory of `tandem-standby apply` against its references,
// measured in the same run on the same data (see docs/benchmarks.md). Uses the database and the
// files tree of bench:backup (generated here when missing) and one backup set made here.
//
//   BENCH_DB_GB, BENCH_FILES_MB, BENCH_RUNS, BENCH_CACHE_DIR, BENCH_DB, BENCH_KEEP_TMP: as for
//   bench/backup.mjs; the standby database is <BENCH_DB>_standby, the reference <BENCH_DB>_ref.
//
// Set-up (untimed): one `tandem-primary backup` into a directory filestore, `pg_dump -Fc -f FILE`
// of the same database, and one `restic backup` of the same files tree into a local repository.
// Measured, each run in this order:
//   1. reference: CREATE DATABASE + `pg_restore -j2 -d REF FILE` (a fresh database each run)
//   2. `tandem-standby apply --force --json` (per-stage durations from --json; peak RSS)
//   3. reference: `restic restore latest --target DIR` into a fresh, empty directory
// The database part of an apply is durations.db (the dump streamed from the filestore, each 8 MiB
// piece checked against its signed SHA-256 before use, age decrypt + zstd -d into the staged dump
// file, while the archives download and are verified whole) + durations.restore (CREATE DATABASE +
// pg_restore -j2) + durations.switch_db (the renames); the files part is durations.files (what is
// left of its download, then decrypt + zstd -d + safe tar extraction beside the live dir) +
// durations.switch_files (the directory swap).
//
//   BENCH_APPLY_BASELINE=DIR: a built checkout of another version of tandem (e.g. `git archive` of
//   the previous commit, with node_modules, after `npx tsc -b`): each run then also times that
//   version's `tandem-standby apply` of the same set, right after this one's, and the report ends
//   with what this version costs or saves against it, per stage, in the same run.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  STANDBY_BIN,
  PRIMARY_BIN,
  best,
  dropDatabase,
  fmtList,
  fmtMB,
  fmtS,
  loadavg,
  log,
  median,
  pgEnv,
  psql,
  quietDisk,
  runMeasured,
  runOk,
  verdict,
  agentCommand,
  Discard,
  settleRemovals,
} from './lib/common.mjs';
import { BENCH_DB, REF_DB, STANDBY_DB, agentEnv, parseJsonOut, removeSite } from './lib/site.mjs';
import { finishBench, resticEnv, setUpBench } from './lib/setup.mjs';
import { decryptThroughput } from './lib/age-throughput.mjs';

const RESTORE_JOBS = 2;
// A checkout of another revision, built: its bundled command, or (a revision from before the bundle) its compiled one.
const baselineBin = (dir) => [resolve(dir, 'packages/standby-agent/dist/bundle/tandem-standby.js'), resolve(dir, 'packages/standby-agent/dist/main.js')].find((f) => existsSync(f)) ?? resolve(dir, 'packages/standby-agent/dist/main.js');
const BASELINE = process.env.BENCH_APPLY_BASELINE ? baselineBin(process.env.BENCH_APPLY_BASELINE) : undefined;

const bench = await setUpBench('apply');
const { runs, filesDir, site } = bench;

const standbyDbs = [STANDBY_DB, `${STANDBY_DB}__tandem_new`, `${STANDBY_DB}__tandem_old`, REF_DB];
const dropAll = () => standbyDbs.forEach((d) => dropDatabase(d));
const restic = resticEnv({ RESTIC_REPOSITORY: join(site.dir, 'restic') });
const resticCache = join(site.dir, 'restic-cache');
// Restored trees moved aside, removed with the site at the end (Discard).
const discard = new Discard(join(site.dir, 'discarded'));

async function refRestore(dumpFile) {
  dropDatabase(REF_DB);
  quietDisk();
  const t0 = performance.now();
  psql('postgres', `CREATE DATABASE "${REF_DB}" TEMPLATE template0`);
  const create = (performance.now() - t0) / 1000;
  const r = await runOk('pg_restore', [`-j${RESTORE_JOBS}`, '-d', REF_DB, dumpFile], { env: pgEnv() });
  const total = (performance.now() - t0) / 1000;
  dropDatabase(REF_DB);
  return { seconds: total, create, restore: r.seconds };
}

async function tandemApply(bin = STANDBY_BIN, extraArgs = []) {
  quietDisk();
  const r = await runMeasured(...agentCommand(bin, ['apply', '--config', site.standbyConfig, '--force', '--json', ...extraArgs]), { env: agentEnv() });
  if (r.code !== 0) throw new Error(`tandem-standby apply exited ${r.code ?? r.signal}:\n${r.stderr.trim()}`);
  const out = parseJsonOut(r.stdout, 'tandem-standby apply');
  const d = out.durations ?? {};
  const need = ['db', 'restore', 'files'];
  const missing = need.filter((k) => typeof d[k] !== 'number');
  if (missing.length > 0) throw new Error(`tandem-standby apply --json has no durations.${missing.join(', durations.')}: ${JSON.stringify(out)}`);
  const dbPart = d.db + d.restore + (d.switch_db ?? 0);
  const filesPart = d.files + (d.switch_files ?? 0);
  return { wall: r.seconds, durations: d, dbPart, filesPart, peakRssMiB: r.peakRssMiB, treeMaxRssMiB: r.treeMaxRssMiB, status: out.status };
}

async function resticRestore(i) {
  const target = join(site.dir, `restic-restore-${i}`);
  quietDisk();
  const t = await runOk('restic', ['restore', 'latest', '--quiet', '--cache-dir', resticCache, '--target', target], { env: restic });
  discard.put(target);
  return { seconds: t.seconds };
}

const results = { ref: [], tandem: [], restic: [], baseline: [] };
try {
  dropAll();
  psql('postgres', `CREATE DATABASE "${STANDBY_DB}"`); // the standby's (empty) live database

  log('set-up (untimed): tandem-primary backup, pg_dump -Fc -f FILE, restic backup');
  const b = await runOk(process.execPath, [PRIMARY_BIN, 'backup', '--config', site.primaryConfig, '--json'], { env: agentEnv() });
  const set = parseJsonOut(b.stdout, 'tandem-primary backup');
  const dumpFile = join(site.dir, 'ref.dump');
  await runOk('pg_dump', ['-Fc', '-f', dumpFile, BENCH_DB], { env: pgEnv() });
  await runOk('restic', ['init', '--quiet'], { env: restic });
  await runOk('restic', ['backup', '--quiet', '--host', 'bench', '--cache-dir', resticCache, filesDir], { env: restic });
  log(`  set ${set.setId}: ${fmtMB(set.storedBytes)} stored`);

  // Warm-up, untimed: one apply (the standby then has a live database and files dir to replace, as
  // in steady state) and one reference restore.
  await settleRemovals();
  log('warm-up (untimed): one tandem-standby apply, one pg_restore, one restic restore');
  const first = await tandemApply(STANDBY_BIN, ['--create-database']); // the first apply creates the standby database
  await refRestore(dumpFile);
  await resticRestore(0);

  for (let i = 1; i <= runs; i++) {
    log(`run ${i}/${runs} (load ${loadavg()})`);
    const ref = await refRestore(dumpFile);
    results.ref.push(ref);
    log(`  CREATE DATABASE + pg_restore -j${RESTORE_JOBS}: ${fmtS(ref.seconds)} (pg_restore ${fmtS(ref.restore)})`);
    const t = await tandemApply();
    results.tandem.push({ ...t, load: loadavg() });
    const d = t.durations;
    log(
      `  tandem-standby apply: db part ${fmtS(t.dbPart)} (stage ${fmtS(d.db)} + restore ${fmtS(d.restore)} + switch ${fmtS(d.switch_db ?? 0)}), ` +
        `files part ${fmtS(t.filesPart)} (stage ${fmtS(d.files)} + switch ${fmtS(d.switch_files ?? 0)}), total ${fmtS(d.total ?? NaN)}, wall ${fmtS(t.wall)}, peak RSS ${t.peakRssMiB?.toFixed(0)} MiB`,
    );
    const r = await resticRestore(i);
    results.restic.push(r);
    log(`  restic restore: ${fmtS(r.seconds)}`);
    if (BASELINE) {
      const b = await tandemApply(BASELINE);
      results.baseline.push({ ...b, load: loadavg() });
      log(`  baseline apply (${BASELINE}): stage db ${fmtS(b.durations.db)}, stage files ${fmtS(b.durations.files)}, db part ${fmtS(b.dbPart)}, files part ${fmtS(b.filesPart)}`);
    }
  }

  log('age decrypt stream alone: 512 MiB in memory -> null, 64 KiB pieces, 3 runs');
  const dec = await decryptThroughput({ totalMiB: 512, pieceKiB: 64, runs: 3 });

  // ---- report
  const refBest = best(results.ref.map((r) => r.seconds));
  const dbBest = best(results.tandem.map((t) => t.dbPart));
  const filesBest = best(results.tandem.map((t) => t.filesPart));
  const resticBest = best(results.restic.map((r) => r.seconds));
  const peak = Math.max(first.peakRssMiB ?? NaN, ...results.tandem.map((t) => t.peakRssMiB ?? NaN));
  const treePeak = Math.max(first.treeMaxRssMiB ?? NaN, ...results.tandem.map((t) => t.treeMaxRssMiB ?? NaN));
  const dbArt = set.artifacts.find((a) => a.name === 'db');
  const filesArt = set.artifacts.find((a) => a.name === 'files');
  const col = (k) => fmtList(results.tandem.map((t) => t.durations[k] ?? NaN));

  console.log('\nraw figures (seconds of every run):');
  console.log(`  CREATE DATABASE + pg_restore -j${RESTORE_JOBS} FILE   ${fmtList(results.ref.map((r) => r.seconds))}  [best ${fmtS(refBest)}, median ${fmtS(median(results.ref.map((r) => r.seconds)))}; CREATE DATABASE ${fmtList(results.ref.map((r) => r.create))}]`);
  console.log(`  tandem db part                      ${fmtList(results.tandem.map((t) => t.dbPart))}  [best ${fmtS(dbBest)}]`);
  console.log(`    stage db (download, verify, decrypt, zstd -d to file)  ${col('db')}`);
  console.log(`    restore (CREATE DATABASE + pg_restore -j${RESTORE_JOBS})           ${col('restore')}`);
  console.log(`    switch_db (renames)                                     ${col('switch_db')}`);
  console.log(`  tandem files part                   ${fmtList(results.tandem.map((t) => t.filesPart))}  [best ${fmtS(filesBest)}]`);
  console.log(`    stage files (download, verify, decrypt, zstd -d, extract)  ${col('files')}`);
  console.log(`    switch_files                                               ${col('switch_files')}`);
  console.log(`  restic restore latest               ${fmtList(results.restic.map((r) => r.seconds))}  [best ${fmtS(resticBest)}]`);
  console.log(`  tandem apply total / wall           ${col('total')} / ${fmtList(results.tandem.map((t) => t.wall))}`);
  console.log(`  set: db ${dbArt.storedSize} B stored (${dbArt.plainSize} B dump), files ${filesArt.storedSize} B stored (${filesArt.plainSize} B tar)`);
  console.log(`  agent peak RSS (VmHWM of node) ${fmtList([first, ...results.tandem].map((t) => t.peakRssMiB ?? NaN), (x) => x.toFixed(1))} MiB (warm-up first); ` +
    `largest process of the tree (GNU time) ${fmtList([first, ...results.tandem].map((t) => t.treeMaxRssMiB ?? NaN), (x) => x.toFixed(1))} MiB`);
  console.log(`  age decrypt, 64 KiB pieces: ${fmtList(dec.runs, (x) => x.toFixed(0))} MB/s`);
  console.log(`  load average during the tandem runs: ${results.tandem.map((t) => t.load.split(' ')[0]).join(', ')}; now ${loadavg()}`);

  const rows = [
    verdict(`apply db part / pg_restore -j${RESTORE_JOBS}`, dbBest / refBest, '<=', 1.2, 'ratio', `${fmtS(dbBest)} / ${fmtS(refBest)}`),
    verdict('apply files part / restic restore', filesBest / resticBest, '<=', 1.0, 'ratio', `${fmtS(filesBest)} / ${fmtS(resticBest)}`),
    verdict('agent peak RSS', peak, '<=', 200, 'MiB', `node VmHWM, worst of ${runs + 1} applies`),
  ];
  if (BASELINE) {
    console.log(`\nthis version against BENCH_APPLY_BASELINE (${BASELINE}), same runs, best of each (this − baseline):`);
    const cmp = (what, pick) => {
      const a = best(results.tandem.map(pick));
      const b = best(results.baseline.map(pick));
      console.log(`  ${what.padEnd(12)} ${fmtS(a)} vs ${fmtS(b)}: ${a >= b ? '+' : ''}${(a - b).toFixed(2)} s (${a >= b ? '+' : ''}${(((a - b) / b) * 100).toFixed(0)}%); all runs ${fmtList(results.tandem.map(pick))} vs ${fmtList(results.baseline.map(pick))}`);
    };
    cmp('stage db', (t) => t.durations.db);
    cmp('stage files', (t) => t.durations.files);
    cmp('db part', (t) => t.dbPart);
    cmp('files part', (t) => t.filesPart);
    cmp('whole apply', (t) => t.durations.total ?? NaN);
  }
  finishBench(bench, 'apply', rows, { treePeak, json: { results, first, dec } });
} finally {
  removeSite(site);
  dropAll();
}
