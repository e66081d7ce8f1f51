// npm run bench:files: the files path of a site whose files are content objects (keys.filesKeyFile:
// a signed files index per set, the content in packs under <site>/objects/) against restic, on the
// same trees in the same run (see docs/benchmarks.md).
//
//   BENCH_FILES_MB=500       size of the generated files tree (the one bench:backup uses)
//   BENCH_SMALL_FILES=100000 files of 1-8 KB in ~1000 dirs, for the many-small-files measurement
//   BENCH_RUNS=3             timed repetitions; ratios use the best run of each side, and every
//                            run's own ratio is shown too (a target met in some runs only shows)
//   BENCH_FILES_DB=tandem_bench_files   the site's database: one tiny table (the runs measure files)
//   BENCH_CACHE_DIR, BENCH_KEEP_TMP, BENCH_JSON: as for bench/backup.mjs
//
// The site backs up a working copy of the cached files tree (hard links to it, or a copy), which
// step 3 changes and the end of each run puts back. Each run, in this order, on a fresh site (new
// keys, an empty directory filestore, empty state dirs: no files cache, no standby record):
//   1. `tandem-primary backup --json` (durations.files: the files part; also the whole backup's
//      wall time) | `restic backup` into a fresh repository with a fresh cache dir
//   2. `tandem-standby apply --json` into an empty files dir (durations.files + durations.
//      switch_files) | `restic restore latest --target EMPTYDIR`
//   3. about 1% of the tree's bytes changed: new files of 4-256 KB (half of it), and the largest
//      file edited (a region in its middle overwritten and bytes appended: the other half); then
//      the incremental backup | restic's second backup (same repository, warm cache); the bytes the
//      backup uploaded (packs stored + the files index stored) against the bytes that changed,
//      counted from the data (new files' sizes, the middle bytes that differ, the appended bytes);
//      the apply of that set against the full apply's files part; the storage the site needs (every
//      object and set artifact in the filestore) against restic's repository
//   4. BENCH_SMALL_FILES small files: a backup on a fresh site (the files part, and the objects it
//      created in the filestore: its PUT count) | `restic backup` into a fresh repository; then the
//      standby's apply of that set into an empty files dir (its time printed, its peak RSS in the
//      standby's memory row, its tree compared); then 1% of those files rewritten (every 100th),
//      backed up and applied (time and peak RSS printed, in the memory row too, tree compared)
// Every agent run is measured for peak RSS (node's VmHWM). After each apply, the standby's files dir
// is compared with the primary's tree (entries and sizes; content of the changed files).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import {
  PRIMARY_BIN,
  STANDBY_BIN,
  best,
  dropDatabase,
  fmtList,
  fmtMB,
  fmtS,
  loadavg,
  log,
  machine,
  printMachine,
  printResults,
  quietDisk,
  runMeasured,
  runOk,
  treeStats,
  agentCommand,
  Discard,
  removeTree,
  settleRemovals,
} from './lib/common.mjs';
import { ensureFilesTree } from './lib/dataset.mjs';
import { CACHE_DIR, agentEnv, benchFilesMb, benchRuns, filesTreeDir, parseJsonOut, removeSite } from './lib/site.mjs';
import { resticEnv } from './lib/setup.mjs';
import {
  applyChange,
  dirUsage,
  ensureSmallFilesTree,
  ensureTinyDatabase,
  fileSet,
  makeFilesSite,
  replaceEveryNth,
  revertChange,
  treeDifferences,
  workingCopy,
} from './lib/files-tree.mjs';

const SITE = 'bench'; // makeSite's site name
const CHANGE = 0.01;

const runs = benchRuns();
const filesMb = benchFilesMb();
const smallCount = (() => {
  const n = Number(process.env.BENCH_SMALL_FILES ?? 100_000);
  if (!(Number.isInteger(n) && n >= 1000 && n <= 10_000_000)) throw new Error(`BENCH_SMALL_FILES must be an integer 1000..10000000, got ${process.env.BENCH_SMALL_FILES}`);
  return n;
})();
const FILES_DB = process.env.BENCH_FILES_DB ?? 'tandem_bench_files';
const STANDBY_DB = `${FILES_DB}_standby`;
const standbyDbs = [STANDBY_DB, `${STANDBY_DB}__tandem_new`, `${STANDBY_DB}__tandem_old`];

const m = machine();
console.log('tandem bench:files');
printMachine(m);

ensureTinyDatabase(FILES_DB);
const cachedTree = filesTreeDir();
ensureFilesTree(cachedTree, filesMb);
const smallTree = join(CACHE_DIR, `small-${smallCount}`);
ensureSmallFilesTree(smallTree, smallCount);
const tree = treeStats(cachedTree);
const small = treeStats(smallTree);

const work = mkdtempSync(join(os.tmpdir(), 'tandem-bench-files-'));
const workTree = join(work, 'files');
// What the runs are done with is moved aside and removed at the end (Discard: removing it between
// timed steps slows the next step's creation of files on some file systems).
const discard = new Discard(join(work, 'discarded'));
let copyMode;
try {
  copyMode = workingCopy(cachedTree, workTree);
} catch (err) {
  rmSync(work, { recursive: true, force: true });
  throw err;
}
console.log(`data:    files ${cachedTree}: ${fmtMB(tree.bytes)} of random bytes in ${tree.files} files, ${tree.dirs} dirs (backed up from a working copy: ${copyMode})`);
console.log(`         small files ${smallTree}: ${fmtMB(small.bytes)} in ${small.files} files, ${small.dirs} dirs`);
console.log(`         database ${FILES_DB}: one table of 100 rows (the site needs one; the figures are the files')`);
console.log(`         ${runs} timed run(s) of each measurement; ratios use the best (shortest) run of each side, and each run's own ratio is listed`);

// ---- the measured commands

async function measured(what, cmd, args, env) {
  quietDisk();
  const r = await runMeasured(cmd, args, { env });
  if (r.code !== 0) throw new Error(`${what} exited ${r.code ?? r.signal}:\n${r.stderr.trim().slice(-4000)}`);
  return r;
}

async function tandemBackup(site, extra = []) {
  const r = await measured('tandem-primary backup', ...agentCommand(PRIMARY_BIN, ['backup', '--config', site.primaryConfig, '--json', ...extra]), agentEnv());
  const out = parseJsonOut(r.stdout, 'tandem-primary backup');
  if (!out.files) throw new Error(`tandem-primary backup --json has no "files" figures: the files were not backed up as content objects (keys.filesKeyFile in ${site.primaryConfig}?)\n${r.stdout.slice(0, 800)}`);
  const index = out.artifacts.find((a) => a.name === 'files');
  if (!index || index.kind !== 'files-index') throw new Error(`set ${out.setId}: the files artifact is ${index?.kind ?? 'missing'}, not a files index`);
  if (typeof out.durations?.files !== 'number') throw new Error(`tandem-primary backup --json has no durations.files: ${JSON.stringify(out.durations)}`);
  return {
    wall: r.seconds,
    files: out.durations.files,
    durations: out.durations,
    stats: out.files,
    indexStored: index.storedSize,
    uploaded: out.files.storedBytes + index.storedSize,
    setId: out.setId,
    peakRssMiB: r.peakRssMiB,
    treeMaxRssMiB: r.treeMaxRssMiB,
  };
}

/** The apply logs at info (a dozen lines): its "files staged" line says what it wrote and fetched. */
async function tandemApply(site, extra = []) {
  const env = { ...agentEnv(), TANDEM_LOG_LEVEL: 'info' };
  const r = await measured('tandem-standby apply', ...agentCommand(STANDBY_BIN, ['apply', '--config', site.standbyConfig, '--json', ...extra]), env);
  const out = parseJsonOut(r.stdout, 'tandem-standby apply');
  const d = out.durations ?? {};
  if (typeof d.files !== 'number') throw new Error(`tandem-standby apply --json has no durations.files: ${JSON.stringify(out)}`);
  let staged;
  for (const line of r.stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const rec = JSON.parse(line);
      if (typeof rec.changed === 'number' && typeof rec.bytesWritten === 'number') staged = { files: rec.files, changed: rec.changed, removed: rec.removed, bytesWritten: rec.bytesWritten, packs: rec.packs };
    } catch {
      /* not a log record */
    }
  }
  return { wall: r.seconds, durations: d, filesPart: d.files + (d.switch_files ?? 0), staged, peakRssMiB: r.peakRssMiB, treeMaxRssMiB: r.treeMaxRssMiB, setId: out.setId };
}
const stagedText = (a) => (a.staged ? `wrote ${a.staged.changed} of ${a.staged.files} files (${a.staged.bytesWritten} B) from ${a.staged.packs} packs, removed ${a.staged.removed}` : 'no "files staged" log line');

const restic = (repo) => resticEnv({ RESTIC_REPOSITORY: repo });

/** `restic backup --quiet --json` prints only its summary: what it found new and what it added. */
async function resticBackup(repo, cache, dir, { init }) {
  if (init) await runOk('restic', ['init', '--quiet'], { env: restic(repo) });
  const before = dirUsage(repo).bytes;
  const r = await measured('restic backup', 'restic', ['backup', '--quiet', '--json', '--host', 'bench', '--cache-dir', cache, dir], restic(repo));
  const summary = parseJsonOut(r.stdout, 'restic backup --json');
  if (summary.message_type !== 'summary') throw new Error(`restic backup --json: the last line is not its summary: ${r.stdout.slice(-500)}`);
  return { seconds: r.seconds, peakRssMiB: r.peakRssMiB, summary, repoGrowth: dirUsage(repo).bytes - before };
}

async function resticRestore(repo, cache, target) {
  discard.put(target);
  const r = await measured('restic restore', 'restic', ['restore', 'latest', '--quiet', '--cache-dir', cache, '--target', target], restic(repo));
  return { seconds: r.seconds, peakRssMiB: r.peakRssMiB };
}

/** The standby's files dir against the tree it was applied from; a problem is recorded, not thrown (the figures still print). */
const checks = [];
function checkApplied(what, run, primaryTree, standbyTree, contentPaths = []) {
  const diff = treeDifferences(primaryTree, standbyTree, contentPaths);
  checks.push({ what, run, ok: diff.length === 0, diff });
  if (diff.length > 0) log(`  CHECK FAILED: after ${what}, the standby's files differ from the primary's:\n    ${diff.join('\n    ')}`);
}

// ---- the runs

const R = [];
const dropStandbyDbs = () => standbyDbs.forEach((d) => dropDatabase(d));
// Interrupted (Ctrl-C), the temp dirs go too: the sites of the run, the working copy and restic's repositories.
const liveSites = new Set();
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    log(`${sig}: removing the temp dirs`);
    for (const site of liveSites) removeSite(site);
    if (process.env.BENCH_KEEP_TMP !== '1') rmSync(work, { recursive: true, force: true });
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}
const newSite = (filesDir) => {
  const site = makeFilesSite({ db: FILES_DB, filesDir, standbyDb: STANDBY_DB });
  liveSites.add(site);
  return site;
};
const dropSite = (site) => {
  liveSites.delete(site);
  if (process.env.BENCH_KEEP_TMP === '1') removeSite(site);
  else discard.put(site.dir);
};
try {
  // Through a pipe: GNU tar writing to /dev/null itself does not read the files' contents at all.
  log('warm-up (untimed): tar of both trees through a pipe (into the page cache)');
  await runOk('sh', ['-c', 'tar -cf - -C "$1" . | cat > /dev/null', 'warm', workTree]);
  await runOk('sh', ['-c', 'tar -cf - -C "$1" . | cat > /dev/null', 'warm', smallTree]);
  // restic's fixed cost (a repository's scrypt key derivation, reading its index), for the notes.
  const probeRepo = join(work, 'restic-probe');
  await runOk('restic', ['init', '--quiet'], { env: restic(probeRepo) });
  const resticOpen = (await runOk('restic', ['cat', 'config', '--no-cache'], { env: restic(probeRepo) })).seconds;
  rmSync(probeRepo, { recursive: true, force: true });

  await settleRemovals();
  for (let i = 1; i <= runs; i++) {
    log(`run ${i}/${runs} (load ${loadavg()})`);
    const run = { i };
    R.push(run);
    dropStandbyDbs();
    const site = newSite(workTree);
    const repo = join(work, `restic-${i}`);
    const cache = join(work, `restic-cache-${i}`);
    const restoreDir = join(work, `restic-restore-${i}`);
    let change;
    try {
      // 1. Initial backup.
      run.backup = await tandemBackup(site);
      const b = run.backup;
      log(`  1. tandem-primary backup (fresh filestore, no cache): files ${fmtS(b.files)}, whole backup ${fmtS(b.durations.total)} (wall ${fmtS(b.wall)}), ` +
        `${b.stats.packsUploaded} packs, ${fmtMB(b.stats.storedBytes)} + index ${fmtMB(b.indexStored)}, cache ${b.stats.cache}, peak RSS ${b.peakRssMiB?.toFixed(0)} MiB`);
      run.resticBackup = await resticBackup(repo, cache, workTree, { init: true });
      log(`     restic backup (fresh repo, fresh cache): ${fmtS(run.resticBackup.seconds)}`);

      // 2. Full apply.
      run.apply = await tandemApply(site, ['--create-database']);
      log(`  2. tandem-standby apply (empty files dir, no record): files part ${fmtS(run.apply.filesPart)} (stage ${fmtS(run.apply.durations.files)} + switch ${fmtS(run.apply.durations.switch_files ?? 0)}), ` +
        `whole apply ${fmtS(run.apply.durations.total ?? NaN)} (wall ${fmtS(run.apply.wall)}), ${stagedText(run.apply)}, peak RSS ${run.apply.peakRssMiB?.toFixed(0)} MiB`);
      checkApplied('the full apply', i, workTree, site.standbyFilesDir);
      run.resticRestore = await resticRestore(repo, cache, restoreDir);
      discard.put(restoreDir);
      log(`     restic restore latest (empty target): ${fmtS(run.resticRestore.seconds)}`);

      // 3. The 1% change.
      change = applyChange(workTree, cachedTree, CHANGE);
      run.change = { ...change, added: change.added.length };
      log(`  3. changed: ${change.added.length} new files (${change.newBytes} B), ${change.edited.p} edited (${change.edited.differing} of ${change.edited.regionLen} middle bytes differ, ` +
        `${change.edited.appendLen} B appended): ${change.changedBytes} B changed = ${((change.changedBytes / change.treeBytes) * 100).toFixed(2)}% of ${change.treeBytes} B`);
      run.incBackup = await tandemBackup(site);
      const ib = run.incBackup;
      log(`     incremental backup: files ${fmtS(ib.files)}, whole backup ${fmtS(ib.durations.total)} (wall ${fmtS(ib.wall)}), read ${ib.stats.filesRead} files (${ib.stats.bytesRead} B), ` +
        `${ib.stats.blobsUploaded} blobs (${ib.stats.newBytes} B plain) in ${ib.stats.packsUploaded} packs (${ib.stats.pagesUploaded ?? '?'} of the index's ${ib.stats.pages ?? '?'} pages among them): ${ib.stats.storedBytes} B + index root ${ib.indexStored} B uploaded, cache ${ib.stats.cache}, peak RSS ${ib.peakRssMiB?.toFixed(0)} MiB`);
      run.resticInc = await resticBackup(repo, cache, workTree, { init: false });
      const ri = run.resticInc;
      log(`     restic second backup (same repo, warm cache): ${fmtS(ri.seconds)}, ${ri.summary.files_new} new and ${ri.summary.files_changed} changed files, ` +
        `${ri.summary.data_added} B added, the repository grew ${ri.repoGrowth} B`);
      run.incApply = await tandemApply(site);
      log(`     apply of the change: files part ${fmtS(run.incApply.filesPart)} (stage ${fmtS(run.incApply.durations.files)} + switch ${fmtS(run.incApply.durations.switch_files ?? 0)}), ` +
        `whole apply ${fmtS(run.incApply.durations.total ?? NaN)}, ${stagedText(run.incApply)}, peak RSS ${run.incApply.peakRssMiB?.toFixed(0)} MiB`);
      checkApplied('the apply of the change', i, workTree, site.standbyFilesDir, [...change.added.map((f) => f.p), change.edited.p]);
      const siteRoot = join(site.filestoreDir, SITE);
      run.storage = {
        objects: dirUsage(join(siteRoot, 'objects')),
        sets: dirUsage(join(siteRoot, 'sets')),
        site: dirUsage(siteRoot),
        restic: dirUsage(repo),
      };
      log(`     storage: site ${run.storage.site.bytes} B (objects ${run.storage.objects.bytes} B in ${run.storage.objects.files}, sets ${run.storage.sets.bytes} B); restic repo ${run.storage.restic.bytes} B in ${run.storage.restic.files} files`);
    } finally {
      if (change) revertChange(workTree, cachedTree, change, copyMode);
      dropSite(site);
      for (const p of [repo, cache, restoreDir]) if (process.env.BENCH_KEEP_TMP !== '1') discard.put(p);
    }

    // 4. Many small files, on a fresh site (a working copy: step 4's change replaces some of them).
    const smallWork = join(work, `small-${i}`);
    workingCopy(smallTree, smallWork);
    const smallSite = newSite(smallWork);
    const sRepo = join(work, `restic-small-${i}`);
    const sCache = join(work, `restic-small-cache-${i}`);
    try {
      const before = fileSet(smallSite.filestoreDir);
      run.small = await tandemBackup(smallSite);
      const after = fileSet(smallSite.filestoreDir);
      const created = [...after].filter((p) => !before.has(p));
      const setDir = join(smallSite.filestoreDir, SITE, 'sets', run.small.setId);
      const objects = created.filter((p) => p.startsWith(join(smallSite.filestoreDir, SITE, 'objects') + '/')).length;
      const setArtifacts = created.filter((p) => p.startsWith(setDir + '/')).length;
      // PUTs: the objects and the set's own files (artifacts, manifest); `created` also has latest.json and epoch.json.
      run.small.puts = { count: objects + setArtifacts, objects, setArtifacts, created: created.length };
      const s = run.small;
      log(`  4. small files: tandem backup files ${fmtS(s.files)}, whole backup ${fmtS(s.durations.total)} (wall ${fmtS(s.wall)}), ${s.stats.packsUploaded} packs; ` +
        `PUTs ${s.puts.count} (objects ${s.puts.objects} + the set's files ${s.puts.setArtifacts}; ${s.puts.created} files created in the filestore in all), peak RSS ${s.peakRssMiB?.toFixed(0)} MiB`);
      run.resticSmall = await resticBackup(sRepo, sCache, smallTree, { init: true });
      run.resticSmall.repo = dirUsage(sRepo);
      log(`     restic backup (fresh repo, fresh cache): ${fmtS(run.resticSmall.seconds)}, ${run.resticSmall.repo.files} files in the repository`);
      // The standby's side of many small files: its memory is the target here (every file's entry
      // passes through the apply), and the tree must come out the same.
      run.smallApply = await tandemApply(smallSite, ['--create-database']);
      log(`     tandem-standby apply of it (empty files dir): files part ${fmtS(run.smallApply.filesPart)} (stage ${fmtS(run.smallApply.durations.files)} + switch ${fmtS(run.smallApply.durations.switch_files ?? 0)}), ` +
        `${stagedText(run.smallApply)}, peak RSS ${run.smallApply.peakRssMiB?.toFixed(0)} MiB`);
      checkApplied('the apply of the small files', i, smallTree, smallSite.standbyFilesDir);
      // 1% of them rewritten: the apply of that change, its memory above all (every file's record
      // line and every entry of the index pass through it).
      const rewritten = replaceEveryNth(smallWork, 100);
      run.smallIncBackup = await tandemBackup(smallSite);
      run.smallIncApply = await tandemApply(smallSite);
      log(`     ${rewritten.length} of them rewritten: incremental backup files ${fmtS(run.smallIncBackup.files)}, apply files part ${fmtS(run.smallIncApply.filesPart)} ` +
        `(stage ${fmtS(run.smallIncApply.durations.files)} + switch ${fmtS(run.smallIncApply.durations.switch_files ?? 0)}), ${stagedText(run.smallIncApply)}, peak RSS ${run.smallIncApply.peakRssMiB?.toFixed(0)} MiB`);
      checkApplied('the apply of the small files changed', i, smallWork, smallSite.standbyFilesDir, rewritten);
    } finally {
      dropSite(smallSite);
      if (process.env.BENCH_KEEP_TMP !== '1') for (const p of [sRepo, sCache, smallWork]) discard.put(p);
    }
  }

  // ---- report
  const col = (f, fmt) => fmtList(R.map(f), fmt);
  const pct = (x) => `${(x * 100).toFixed(1)}%`;
  console.log('\nraw figures (every run, in order):');
  console.log('  1. initial backup of the files (fresh filestore, no cache) vs restic backup (fresh repo, fresh cache)');
  console.log(`     tandem files part (durations.files)   ${col((r) => r.backup.files)} s  [best ${fmtS(best(R.map((r) => r.backup.files)))}]`);
  console.log(`     tandem whole backup (total / wall)    ${col((r) => r.backup.durations.total)} / ${col((r) => r.backup.wall)} s  (db ${col((r) => r.backup.durations.db ?? NaN)} s)`);
  console.log(`     restic backup                         ${col((r) => r.resticBackup.seconds)} s  [best ${fmtS(best(R.map((r) => r.resticBackup.seconds)))}; opening a repository alone ~${fmtS(resticOpen)}]`);
  const b0 = R[0].backup;
  console.log(`     tandem: ${b0.stats.files} files (${b0.stats.bytes} B) read, ${b0.stats.blobsUploaded} blobs in ${b0.stats.packsUploaded} packs, ${b0.stats.storedBytes} B stored + index ${b0.indexStored} B`);
  console.log('  2. full apply of the files (empty files dir, no record) vs restic restore latest --target EMPTYDIR');
  console.log(`     tandem files part (files + switch)    ${col((r) => r.apply.filesPart)} s  [best ${fmtS(best(R.map((r) => r.apply.filesPart)))}]`);
  console.log(`       stage files / switch_files          ${col((r) => r.apply.durations.files)} / ${col((r) => r.apply.durations.switch_files ?? 0)} s`);
  console.log(`     tandem whole apply (total / wall)     ${col((r) => r.apply.durations.total ?? NaN)} / ${col((r) => r.apply.wall)} s`);
  console.log(`       ${R.map((r) => stagedText(r.apply)).join('; ')}`);
  console.log(`     restic restore                        ${col((r) => r.resticRestore.seconds)} s  [best ${fmtS(best(R.map((r) => r.resticRestore.seconds)))}]`);
  const c0 = R[0].change;
  console.log(`  3. ~1% changed: ${c0.added} new files (${c0.newBytes} B) and ${c0.edited.p} (${c0.edited.sizeBefore} B -> ${c0.edited.sizeAfter} B: ${c0.edited.differing} of ${c0.edited.regionLen} bytes at ${c0.edited.regionAt} differ, ${c0.edited.appendLen} B appended)`);
  console.log(`     changed bytes (from the data)         ${col((r) => r.change.changedBytes, String)} B (${pct(c0.changedBytes / c0.treeBytes)} of the tree)`);
  console.log(`     tandem incremental, files part        ${col((r) => r.incBackup.files)} s  [best ${fmtS(best(R.map((r) => r.incBackup.files)))}]; whole backup wall ${col((r) => r.incBackup.wall)} s`);
  console.log(`     restic second backup                  ${col((r) => r.resticInc.seconds)} s  [best ${fmtS(best(R.map((r) => r.resticInc.seconds)))}]`);
  console.log(`     tandem read: files / bytes            ${col((r) => r.incBackup.stats.filesRead, String)} / ${col((r) => r.incBackup.stats.bytesRead, String)} B (cache ${R.map((r) => r.incBackup.stats.cache).join(', ')})`);
  console.log(`     new blobs: count / plain bytes        ${col((r) => r.incBackup.stats.blobsUploaded, String)} / ${col((r) => r.incBackup.stats.newBytes, String)} B`);
  console.log(`     uploaded: packs stored + index        ${R.map((r) => `${r.incBackup.stats.storedBytes} + ${r.incBackup.indexStored} = ${r.incBackup.uploaded}`).join('; ')} B`);
  console.log(`     restic: data added / repo growth      ${col((r) => r.resticInc.summary.data_added, String)} / ${col((r) => r.resticInc.repoGrowth, String)} B (${col((r) => r.resticInc.repoGrowth / r.change.changedBytes, (x) => x.toFixed(2))} x the changed bytes)`);
  console.log(`     tandem apply of the change, files     ${col((r) => r.incApply.filesPart)} s (stage ${col((r) => r.incApply.durations.files)}, switch ${col((r) => r.incApply.durations.switch_files ?? 0)}); whole apply wall ${col((r) => r.incApply.wall)} s`);
  console.log(`       ${R.map((r) => stagedText(r.incApply)).join('; ')}`);
  console.log(`     storage the site needs (2 sets)       ${col((r) => r.storage.site.bytes, String)} B: objects ${col((r) => r.storage.objects.bytes, String)} B (${col((r) => r.storage.objects.files, String)} packs), set artifacts ${col((r) => r.storage.sets.bytes, String)} B`);
  console.log(`     restic repository (2 snapshots)       ${col((r) => r.storage.restic.bytes, String)} B in ${col((r) => r.storage.restic.files, String)} files; tandem / restic ${col((r) => r.storage.site.bytes / r.storage.restic.bytes, (x) => x.toFixed(3))}`);
  console.log(`  4. ${small.files} small files (${fmtMB(small.bytes)}), fresh site vs restic backup (fresh repo, fresh cache)`);
  console.log(`     tandem files part                     ${col((r) => r.small.files)} s  [best ${fmtS(best(R.map((r) => r.small.files)))}]; whole backup wall ${col((r) => r.small.wall)} s`);
  console.log(`     restic backup                         ${col((r) => r.resticSmall.seconds)} s  [best ${fmtS(best(R.map((r) => r.resticSmall.seconds)))}]`);
  console.log(`     tandem PUTs (objects + set's files)   ${col((r) => r.small.puts.count, String)}: objects ${col((r) => r.small.puts.objects, String)}, the set's files ${col((r) => r.small.puts.setArtifacts, String)} ` +
    `(files created in all, latest.json and epoch.json too: ${col((r) => r.small.puts.created, String)}); restic repository files ${col((r) => r.resticSmall.repo.files, String)}`);
  console.log(`     tandem-standby apply (empty dir)      ${col((r) => r.smallApply.filesPart)} s (stage ${col((r) => r.smallApply.durations.files)}, switch ${col((r) => r.smallApply.durations.switch_files ?? 0)})`);
  console.log(`     1% rewritten: backup / apply          ${col((r) => r.smallIncBackup.files)} / ${col((r) => r.smallIncApply.filesPart)} s`);
  const backups = R.flatMap((r) => [r.backup, r.incBackup, r.small, r.smallIncBackup]);
  const applies = R.flatMap((r) => [r.apply, r.incApply, r.smallApply, r.smallIncApply]);
  console.log('  5. peak RSS (node VmHWM), MiB');
  console.log(`     tandem-primary backup: initial ${col((r) => r.backup.peakRssMiB ?? NaN, (x) => x.toFixed(1))}; incremental ${col((r) => r.incBackup.peakRssMiB ?? NaN, (x) => x.toFixed(1))}; small files ${col((r) => r.small.peakRssMiB ?? NaN, (x) => x.toFixed(1))}; small files, 1% rewritten ${col((r) => r.smallIncBackup.peakRssMiB ?? NaN, (x) => x.toFixed(1))}`);
  console.log(`     tandem-standby apply:  full ${col((r) => r.apply.peakRssMiB ?? NaN, (x) => x.toFixed(1))}; change ${col((r) => r.incApply.peakRssMiB ?? NaN, (x) => x.toFixed(1))}; small files ${col((r) => r.smallApply.peakRssMiB ?? NaN, (x) => x.toFixed(1))}; small files, 1% rewritten ${col((r) => r.smallIncApply.peakRssMiB ?? NaN, (x) => x.toFixed(1))}`);
  console.log(`     restic (for reference): backup ${col((r) => r.resticBackup.peakRssMiB ?? NaN, (x) => x.toFixed(1))}; restore ${col((r) => r.resticRestore.peakRssMiB ?? NaN, (x) => x.toFixed(1))}; small ${col((r) => r.resticSmall.peakRssMiB ?? NaN, (x) => x.toFixed(1))}`);
  console.log(`  load average now: ${loadavg()}`);

  // Rows: the best-of-runs ratio decides; each run's own ratio and verdict follow in the detail.
  const perRun = (xs, cmp, target, f = (x) => x.toFixed(2)) => {
    const ok = xs.map((x) => (cmp === '<=' ? x <= target : x >= target));
    return `runs ${xs.map((x, k) => `${f(x)} ${ok[k] ? 'PASS' : 'MISS'}`).join(', ')} (${ok.filter(Boolean).length}/${xs.length} runs pass)`;
  };
  const ratioRow = (name, tandem, ref, target, what) => {
    const b = best(tandem) / best(ref);
    const pass = b <= target;
    return {
      name,
      value: b,
      shown: b.toFixed(2),
      target: `<= ${target}`,
      pass,
      detail: `best ${fmtS(best(tandem))} / ${fmtS(best(ref))}${what ? ` ${what}` : ''}; ${perRun(tandem.map((t, k) => t / ref[k]), '<=', target)}`,
    };
  };
  const rssRow = (name, xs, what) => {
    const worst = Math.max(...xs.map((x) => x.peakRssMiB ?? NaN));
    return { name, value: worst, shown: `${worst.toFixed(1)} MiB`, target: '<= 200 MiB', pass: worst <= 200, detail: `worst of ${xs.length} ${what}; ${xs.filter((x) => x.peakRssMiB <= 200).length}/${xs.length} within the target` };
  };
  const upRatios = R.map((r) => r.incBackup.uploaded / r.change.changedBytes);
  const upBest = Math.min(...upRatios);
  const failedChecks = checks.filter((c) => !c.ok);
  const rows = [
    ratioRow('initial backup, files part / restic backup', R.map((r) => r.backup.files), R.map((r) => r.resticBackup.seconds), 1.0,
      `(whole backup wall best ${fmtS(best(R.map((r) => r.backup.wall)))})`),
    ratioRow('full apply, files part / restic restore', R.map((r) => r.apply.filesPart), R.map((r) => r.resticRestore.seconds), 1.0),
    ratioRow('1% change: incremental backup / restic 2nd backup', R.map((r) => r.incBackup.files), R.map((r) => r.resticInc.seconds), 1.0),
    {
      name: '1% change: bytes uploaded / bytes changed',
      value: upBest,
      shown: upBest.toFixed(2),
      target: '<= 1.1',
      pass: upBest <= 1.1,
      detail: `best ${R[upRatios.indexOf(upBest)].incBackup.uploaded} B / ${R[upRatios.indexOf(upBest)].change.changedBytes} B (packs stored + index stored / true changed bytes); ${perRun(upRatios, '<=', 1.1)}`,
    },
    ratioRow('1% change: apply / full apply (files parts)', R.map((r) => r.incApply.filesPart), R.map((r) => r.apply.filesPart), 0.1),
    ratioRow(`${small.files} small files: backup / restic backup`, R.map((r) => r.small.files), R.map((r) => r.resticSmall.seconds), 1.0,
      `(PUTs ${R.map((r) => r.small.puts.count).join(', ')})`),
    rssRow('tandem-primary peak RSS (every backup)', backups, 'backups'),
    rssRow('tandem-standby peak RSS (every apply)', applies, 'applies'),
    {
      name: "standby's files equal the primary's after each apply",
      value: failedChecks.length,
      shown: `${checks.length - failedChecks.length}/${checks.length}`,
      target: 'all',
      pass: failedChecks.length === 0,
      detail: failedChecks.map((c) => `run ${c.run}, ${c.what}: ${c.diff[0]}`).join('; '),
    },
  ];
  printResults(`bench:files results (BENCH_FILES_MB=${filesMb}, BENCH_SMALL_FILES=${smallCount}, ${runs} runs, best of each):`, rows);
  const treePeak = Math.max(...[...backups, ...applies].map((x) => x.treeMaxRssMiB ?? NaN));
  if (!Number.isNaN(treePeak)) console.log(`  (largest process in an agent's tree, from GNU time: ${treePeak.toFixed(1)} MiB)`);
  if (process.env.BENCH_JSON) {
    writeFileSync(process.env.BENCH_JSON, JSON.stringify({ machine: m, tree, small, copyMode, resticOpen, runs: R, checks, rows, load: loadavg() }, null, 2));
  }
} finally {
  dropStandbyDbs();
  if (process.env.BENCH_KEEP_TMP === '1') log(`BENCH_KEEP_TMP=1: leaving ${work}`);
  else removeTree(work);
}
