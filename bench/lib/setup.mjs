// The set-up and the end of the report that bench:backup and bench:apply share: the sizes from the
// environment (BENCH_RUNS, BENCH_DB_GB, BENCH_FILES_MB), the machine header, the generated database
// and files tree (created when missing) with their "data:" lines, the throwaway site, and at the end
// the PASS/MISS block, the tree's peak RSS line and the BENCH_JSON file.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fmtMB, loadavg, machine, printMachine, printResults, treeStats } from './common.mjs';
import { ensureDatabase, ensureFilesTree } from './dataset.mjs';
import { BENCH_DB, STANDBY_DB, benchFilesMb, benchGb, benchRuns, filesTreeDir, makeSite } from './site.mjs';

/**
 * Prints the header of `tandem bench:<name>` (machine, data), generating the database BENCH_DB and
 * the cached files tree when missing, and makes the site (primary backing up BENCH_DB and the tree,
 * standby applying into STANDBY_DB). The caller removes the site (removeSite) when done.
 * Returns {runs, gb, filesMb, machine, dbInfo, filesDir, tree, site}.
 */
export async function setUpBench(name) {
  const runs = benchRuns();
  const gb = benchGb();
  const filesMb = benchFilesMb();

  const m = machine();
  console.log(`tandem bench:${name}`);
  printMachine(m);

  const dbInfo = await ensureDatabase(BENCH_DB, gb);
  const filesDir = filesTreeDir();
  mkdirSync(join(filesDir, '..'), { recursive: true });
  ensureFilesTree(filesDir, filesMb);
  const tree = treeStats(filesDir);
  console.log(
    `data:    database ${dbInfo.name}: ${fmtMB(dbInfo.size)} (pg_database_size; tables ${fmtMB(dbInfo.heap)}; ` +
      `${Object.entries(dbInfo.rows).map(([t, n]) => `${n} ${t}`).join(', ')})`,
  );
  console.log(`         files ${filesDir}: ${fmtMB(tree.bytes)} of random bytes in ${tree.files} files, ${tree.dirs} dirs`);
  console.log(`         ${runs} timed run(s) of each measurement; ratios use the best (shortest) run of each side`);

  const site = makeSite({ db: BENCH_DB, filesDir, standbyDb: STANDBY_DB });
  return { runs, gb, filesMb, machine: m, dbInfo, filesDir, tree, site };
}

/** Environment for restic run by the benchmark (a fixed password, no progress output), plus `extra`. */
export const resticEnv = (extra = {}) => ({ ...process.env, RESTIC_PASSWORD: 'tandem-bench', RESTIC_PROGRESS_FPS: '0', ...extra });

/**
 * The end of the report: the PASS/MISS block titled `bench:<name> results (...)`, the largest
 * process of the agent's tree (when GNU time measured it), and with BENCH_JSON set, that file:
 * {machine, db, tree, ...json, rows, load}.
 */
export function finishBench(bench, name, rows, { treePeak, json }) {
  const { runs, gb, filesMb } = bench;
  printResults(`bench:${name} results (BENCH_DB_GB=${gb}, BENCH_FILES_MB=${filesMb}, ${runs} runs, best of each):`, rows);
  if (!Number.isNaN(treePeak)) console.log(`  (largest process in the agent's tree, from GNU time: ${treePeak.toFixed(1)} MiB)`);
  if (process.env.BENCH_JSON) {
    writeFileSync(
      process.env.BENCH_JSON,
      JSON.stringify({ machine: bench.machine, db: bench.dbInfo, tree: bench.tree, ...json, rows, load: loadavg() }, null, 2),
    );
  }
}
