// Shared helpers for the benchmarks: running and timing commands, peak RSS, the machine, and the
// report lines. Plain ESM, no dependencies beyond Node and the system tools the benchmarks name.
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
// The commands as shipped (scripts/bundle.mjs; npm run build makes them).
export const PRIMARY_BIN = resolve(ROOT, 'packages/primary-agent/dist/bundle/tandem-primary.js');
export const STANDBY_BIN = resolve(ROOT, 'packages/standby-agent/dist/bundle/tandem-standby.js');
export const PG_HOST = process.env.BENCH_PGHOST ?? '127.0.0.1';
export const PG_PORT = process.env.BENCH_PGPORT ?? '5432';
export const PG_USER = process.env.BENCH_PGUSER ?? 'postgres';
export const pgUrl = (db) => `postgres://${PG_USER}@${PG_HOST}:${PG_PORT}/${db}`;

export const MB = 1e6;
export const MIB = 1024 * 1024;

/** Environment for pg_dump/pg_restore/psql run by the benchmark itself. */
export const pgEnv = () => ({ ...process.env, PGHOST: PG_HOST, PGPORT: PG_PORT, PGUSER: PG_USER });

export function log(msg) {
  process.stderr.write(`bench: ${msg}\n`);
}

export const loadavg = () => os.loadavg().map((l) => l.toFixed(2)).join(' ');

/** Runs psql -c SQL against `db`; returns trimmed stdout (-At). Throws with stderr on failure. */
export function psql(db, sql) {
  const r = spawnSync('psql', ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', pgUrl(db), '-c', sql], {
    encoding: 'utf8',
    env: pgEnv(),
    maxBuffer: 64 * MIB,
  });
  if (r.status !== 0) throw new Error(`psql on ${db} failed: ${r.stderr || r.error}\n  SQL: ${sql.slice(0, 300)}`);
  return r.stdout.trim();
}

/**
 * Trees a bench is done with, moved aside (a rename) while timed steps remain, and removed at its end
 * (clear). On ext4 without a journal, as on the machines measured, the inode allocator passes over
 * every inode freed in the last 60 s (360 s while its inode table block is unwritten), a buffer
 * lookup each, for every file it creates: removing a tree of a few thousand files between two timed
 * restores made the next one spend up to half its CPU there (perf: ext4_create, recently_deleted),
 * whichever tool it was, by how long ago the bench had removed what. A rename frees no inode.
 */
export class Discard {
  #n = 0;
  constructor(dir) {
    this.dir = dir;
  }

  /** `path` (if it is there) out of the way, on the same file system. */
  put(path) {
    if (!existsSync(path)) return;
    mkdirSync(this.dir, { recursive: true });
    renameSync(path, join(this.dir, String(this.#n++)));
  }

  /** Everything put aside removed (after the last timed step). */
  clear() {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** When a bench last removed a tree (ms since the epoch), for the next bench to wait out (settleRemovals). */
const REMOVED_AT = join(os.tmpdir(), 'tandem-bench-removed-at');
/**
 * How long a removal is felt by the creation of files: 60 s after the inode table block was written
 * (the removal is followed by sync(1)), with a margin.
 */
const REMOVAL_FELT_MS = 65_000;

/**
 * Removes a tree a bench made (its sites, restic's repositories and restored trees at the end), then
 * sync(1), and notes the time: a bench started right after waits that removal out (settleRemovals).
 */
export function removeTree(path) {
  if (!existsSync(path)) return;
  rmSync(path, { recursive: true, force: true });
  spawnSync('sync');
  writeFileSync(REMOVED_AT, String(Date.now()));
}

/**
 * Before a bench's first timed step: if a bench removed its trees less than REMOVAL_FELT_MS ago (two
 * benches run back to back), waits until then. The first timed steps of both sides would otherwise
 * create their files among the inodes it freed (see Discard), by how recently: the second bench of
 * a pair measured the first one's clean-up. BENCH_SETTLE=0 leaves it out.
 */
export async function settleRemovals() {
  if (process.env.BENCH_SETTLE === '0') return;
  let at;
  try {
    at = Number(readFileSync(REMOVED_AT, 'utf8'));
  } catch {
    return;
  }
  const wait = at + REMOVAL_FELT_MS - Date.now();
  if (!(wait > 0) || wait > REMOVAL_FELT_MS) return;
  log(`waiting ${(wait / 1000).toFixed(0)} s: a bench removed its trees ${((Date.now() - at) / 1000).toFixed(0)} s ago, and creating files is slower on some file systems for a minute after (BENCH_SETTLE=0: no wait)`);
  await new Promise((r) => setTimeout(r, wait));
}

/**
 * Untimed, before every timed step of either side: a CHECKPOINT of the local PostgreSQL and
 * sync(1), so that no step pays for what the step before it left to write back (the checkpoint a
 * restore's WAL asks for, the dirty pages of a restored tree). On a 2-core VM with one disk that
 * carry-over moved single runs of either side by up to two times (the first timed run after the
 * warm-up was always the slow one). BENCH_QUIET=0 leaves it out.
 */
export function quietDisk() {
  if (process.env.BENCH_QUIET === '0') return;
  try {
    psql('postgres', 'CHECKPOINT');
  } catch {
    // a server without the rights or not running: sync alone
  }
  spawnSync('sync');
}

export function databaseExists(db) {
  return psql('postgres', `SELECT 1 FROM pg_database WHERE datname = '${db.replace(/'/g, "''")}'`) === '1';
}

export function dropDatabase(db) {
  psql('postgres', `DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
}

/** First line of `cmd args` (stdout or stderr), for the machine description. */
function versionOf(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) return 'not installed';
  return `${r.stdout}${r.stderr}`.split('\n').find((l) => l.trim())?.trim() ?? '?';
}

export function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? '?';
  const mhz = /^cpu MHz\s*:\s*(.*)$/m.exec(cpuinfo)?.[1];
  let pg = '?';
  try {
    pg = psql('postgres', 'SHOW server_version') + ` (shared_buffers ${psql('postgres', 'SHOW shared_buffers')})`;
  } catch {
    /* reported as ? */
  }
  return {
    cpu: `${model}${mhz ? ` @ ${Number(mhz).toFixed(0)} MHz` : ''}`,
    cores: os.cpus().length,
    ramGiB: (os.totalmem() / 1024 ** 3).toFixed(1),
    kernel: os.release(),
    node: process.version,
    postgres: pg,
    pgDump: versionOf('pg_dump', ['--version']),
    zstd: versionOf('zstd', ['--version']).replace(/^\*+\s*|\s*\*+$/g, ''),
    restic: versionOf('restic', ['version']),
    age: versionOf('age', ['--version']),
    tar: versionOf('tar', ['--version']),
  };
}

export function printMachine(m) {
  console.log(`machine: ${m.cpu}, ${m.cores} cores, ${m.ramGiB} GiB RAM, Linux ${m.kernel}`);
  console.log(`         node ${m.node}; PostgreSQL ${m.postgres}; ${m.pgDump}`);
  console.log(`         ${m.zstd}; ${m.restic}; age ${m.age}; ${m.tar}`);
  console.log(`         load average at start: ${loadavg()}`);
}

/** The node process under /usr/bin/time (its only child), or the pid itself. */
function agentPid(pid, viaTime) {
  if (!viaTime) return pid;
  try {
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    return kids.length > 0 ? Number(kids[0]) : undefined;
  } catch {
    return undefined;
  }
}

function vmHwmKiB(pid) {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export const HAVE_GNU_TIME = existsSync('/usr/bin/time');

/**
 * An agent's command as it is installed and run (by an operator, cron or a systemd unit): the bin
 * executed by its first line (`#!/usr/bin/env -S GLIBC_TUNABLES=... node`: `node` from PATH), so
 * that what that line sets is measured too. A bin that is not executable (a compiled main.js of
 * an older version) runs as `node BIN`.
 */
export function agentCommand(bin, args) {
  try {
    accessSync(bin, fsConstants.X_OK);
    return [bin, args];
  } catch {
    return [process.execPath, [bin, ...args]];
  }
}

/**
 * Runs a command, returning wall seconds, stdout, stderr and memory figures:
 * - peakRssMiB: VmHWM of the process itself (for `node main.js ...`: the agent), polled every 50 ms
 *   from /proc while it runs (VmHWM is the kernel's high-water mark, so a late poll still sees it);
 * - treeMaxRssMiB: GNU time's "Maximum resident set size" (the largest of the process and the
 *   children it waited for: pg_dump, zstd, tar ...), when /usr/bin/time is installed.
 * The wall time is measured around the whole process, /usr/bin/time included (~1 ms).
 */
export function runMeasured(cmd, args, { env = process.env, stdoutTo } = {}) {
  return new Promise((resolveP, reject) => {
    const viaTime = HAVE_GNU_TIME;
    const [bin, argv] = viaTime ? ['/usr/bin/time', ['-v', cmd, ...args]] : [cmd, args];
    const t0 = performance.now();
    const child = spawn(bin, argv, { env, stdio: ['ignore', stdoutTo ?? 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      if (stderr.length > 4 * MIB) stderr = stderr.slice(-MIB);
    });
    let hwm = 0;
    let target;
    const poll = () => {
      target ??= agentPid(child.pid, viaTime);
      if (target !== undefined) hwm = Math.max(hwm, vmHwmKiB(target) ?? 0);
    };
    const timer = setInterval(poll, 50);
    child.on('error', (e) => {
      clearInterval(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearInterval(timer);
      const seconds = (performance.now() - t0) / 1000;
      let treeMaxRssMiB;
      if (viaTime) {
        const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(stderr);
        if (m) treeMaxRssMiB = Number(m[1]) / 1024;
        stderr = stderr.replace(/\n?\tCommand being timed:[\s\S]*$/, '');
      }
      resolveP({ code, signal, seconds, stdout, stderr, peakRssMiB: hwm ? hwm / 1024 : undefined, treeMaxRssMiB });
    });
  });
}

/** Runs a command to completion, throwing with its stderr on failure; returns {seconds, stdout}. */
export async function runOk(cmd, args, opts = {}) {
  const t0 = performance.now();
  const r = await new Promise((resolveP, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['ignore', opts.stdoutTo ?? 'pipe', 'pipe'], cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-64 * 1024)));
    child.on('error', reject);
    child.on('close', (code, signal) => resolveP({ code, signal, stdout, stderr }));
  });
  const seconds = (performance.now() - t0) / 1000;
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.signal ?? `exit ${r.code}`}):\n${r.stderr.trim()}`);
  }
  return { seconds, stdout: r.stdout, stderr: r.stderr };
}

/** Sizes and counts of a directory tree (regular files only for bytes). */
export function treeStats(dir) {
  let files = 0;
  let dirs = 0;
  let bytes = 0;
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory()) {
        dirs++;
        walk(p);
      } else if (e.isFile()) {
        files++;
        bytes += statSize(p);
      }
    }
  };
  walk(dir);
  return { files, dirs, bytes };
}
const statSize = (p) => statSync(p).size;

export const best = (xs) => Math.min(...xs);
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export const fmtS = (s) => `${s.toFixed(2)} s`;
export const fmtMB = (b) => `${(b / MB).toFixed(1)} MB`;
export const fmtList = (xs, f = (x) => x.toFixed(2)) => xs.map(f).join(', ');

/**
 * One result row. `cmp` is '<=' or '>='. Returns the row for the summary table.
 */
export function verdict(name, value, cmp, target, unit, detail) {
  const pass = cmp === '<=' ? value <= target : value >= target;
  const shown = unit === 'ratio' ? value.toFixed(2) : `${value.toFixed(unit === 'MB/s' ? 0 : 1)} ${unit}`;
  const tgt = unit === 'ratio' ? `${cmp} ${target}` : `${cmp} ${target} ${unit}`;
  return { name, value, shown, target: tgt, pass, detail };
}

export function printResults(title, rows) {
  console.log(`\n${title}`);
  const w = Math.max(...rows.map((r) => r.name.length));
  for (const r of rows) {
    console.log(`  ${r.pass ? 'PASS' : 'MISS'}  ${r.name.padEnd(w)}  ${r.shown.padStart(9)}  (target ${r.target})  ${r.detail ?? ''}`);
  }
  const miss = rows.filter((r) => !r.pass).length;
  console.log(`  ${rows.length - miss} PASS, ${miss} MISS`);
}
