// A site in WAL mode for the benchmarks (database.mode: wal): two real PostgreSQL clusters on this
// machine (wal-cluster.mjs), the primary archiving through the built `tandem-primary wal-push`, the
// standby's cluster seeded by the built `tandem-standby apply` as a hot standby whose
// restore_command is the built `tandem-standby wal-fetch`, and a directory filestore.
//
// PostgreSQL runs archive_command and restore_command as its own OS user, so the agents run as the
// postgres OS user too (spawned with its uid and gid, as on a server where the agent runs as the
// cluster's user): the site's directory, keys, state dirs and filestore belong to postgres.
//
// The standby daemon (`tandem-standby run`) fetches WAL ahead into its state dir's spool, from which
// restore_command answers without loading the agent: standby.yml gives it a loopback listen address
// and a poll interval, and wal-replay.json in its state dir says which restored files came that way.
//
// Also here: the peak RSS of the agent processes PostgreSQL starts (wal-push, wal-fetch), sampled
// from /proc, and the WAL files of a site as stored in the directory filestore.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PRIMARY_BIN, STANDBY_BIN } from './common.mjs';
import { PG_BIN, createCluster, freePort, giveToPostgres, postgresIds } from './wal-cluster.mjs';

/** High-water mark of a process's resident set (VmHWM), KiB; undefined once it is gone. */
export function vmHwmKiB(pid) {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The agent processes started here and still running: a benchmark's Ctrl-C handler ends them. */
export const agentChildren = new Set();

const agentEnv = (extra = {}) => ({ ...process.env, TANDEM_LOG_FORMAT: 'json', TANDEM_LOG_LEVEL: 'info', ...extra });

/**
 * Runs a built agent (`node <main> ...args`) as postgres to completion; never rejects on a non-zero
 * exit. Returns {code, signal, seconds, stdout, stderr, peakRssMiB} (VmHWM polled every 50 ms).
 */
export function runAgentAsPostgres(main, args, { env = {}, timeoutMs = 600_000 } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [main, ...args], { ...postgresIds(), cwd: '/tmp', env: agentEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    agentChildren.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-256 * 1024)));
    let hwm = 0;
    const poll = setInterval(() => (hwm = Math.max(hwm, vmHwmKiB(child.pid) ?? 0)), 50);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (e) => {
      clearInterval(poll);
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      agentChildren.delete(child);
      clearInterval(poll);
      clearTimeout(timer);
      resolve({ code, signal, seconds: (performance.now() - t0) / 1000, stdout, stderr, peakRssMiB: hwm ? hwm / 1024 : undefined });
    });
  });
}

/**
 * Starts a built agent's daemon as postgres. Its stderr (JSON log lines) is kept (the last 2 MB);
 * its VmHWM and CPU time are polled every 500 ms. Returns {child, stderr(), peakRssMiB(),
 * cpuSeconds(), stop()}.
 */
export function startAgentAsPostgres(main, args, { env = {} } = {}) {
  const child = spawn(process.execPath, [main, ...args], { ...postgresIds(), cwd: '/tmp', env: agentEnv(env), stdio: ['ignore', 'ignore', 'pipe'] });
  agentChildren.add(child);
  let err = '';
  child.stderr.on('data', (d) => (err = (err + d).slice(-2 * 1024 * 1024)));
  let hwm = 0;
  let ticks = 0;
  const sample = () => {
    hwm = Math.max(hwm, vmHwmKiB(child.pid) ?? 0);
    ticks = Math.max(ticks, cpuTicks(child.pid) ?? 0);
  };
  const poll = setInterval(sample, 500);
  let exit = null;
  const exited = new Promise((resolve) =>
    child.once('close', (code, signal) => {
      agentChildren.delete(child);
      clearInterval(poll);
      exit = { code, signal };
      resolve(exit);
    }),
  );
  return {
    child,
    get exit() {
      return exit;
    },
    stderr: () => err,
    peakRssMiB: () => {
      if (exit === null) sample();
      return hwm ? hwm / 1024 : undefined;
    },
    /** User + system CPU seconds used so far (last seen up to 500 ms before it exited). */
    cpuSeconds: () => {
      if (exit === null) sample();
      return ticks / CLK_TCK;
    },
    /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit. */
    async stop(graceMs = 15_000) {
      if (exit !== null) return exit;
      sample();
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const e = await exited;
      clearTimeout(t);
      return e;
    },
  };
}

/** User + system CPU of a process so far, in clock ticks (/proc/<pid>/stat); undefined once it is gone. */
function cpuTicks(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
  } catch {
    return undefined;
  }
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/**
 * Samples, every `everyMs`, the VmHWM and CPU time of every running process whose command line is
 * a built agent's `wal-push` or `wal-fetch` (the ones PostgreSQL's archiver and startup process
 * start) for the site in `root`: one of its arguments lies under `root` (its --config), so that the
 * agents of other sites on the same machine, a test suite's for one, are not counted. A process
 * living shorter than the interval can be missed, and one is last seen up to `everyMs` before it
 * exits: the figures are lower bounds. Returns {stop(), result()}: per command, {processes seen,
 * max peak RSS MiB, CPU seconds seen}.
 */
export function sampleWalAgents(root, everyMs = 100) {
  const under = `${root.replace(/\/+$/, '')}/`;
  const kinds = [
    { key: 'wal-push', bin: PRIMARY_BIN },
    { key: 'wal-fetch', bin: STANDBY_BIN },
  ];
  const cpu = { 'wal-push': new Map(), 'wal-fetch': new Map() };
  const peak = { 'wal-push': 0, 'wal-fetch': 0 };
  const tick = () => {
    let pids;
    try {
      pids = readdirSync('/proc').filter((n) => /^\d+$/.test(n));
    } catch {
      return;
    }
    for (const pid of pids) {
      let cmd;
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      } catch {
        continue;
      }
      // The node process itself (argv: node, main.js, command ...), not the shell that started it.
      if (cmd[0] !== process.execPath) continue;
      const k = kinds.find((x) => cmd[1] === x.bin && cmd[2] === x.key);
      if (!k || !cmd.some((a) => a.startsWith(under))) continue;
      peak[k.key] = Math.max(peak[k.key], vmHwmKiB(pid) ?? 0);
      const ticks = cpuTicks(pid);
      if (ticks !== undefined) cpu[k.key].set(pid, Math.max(cpu[k.key].get(pid) ?? 0, ticks));
    }
  };
  const timer = setInterval(tick, everyMs);
  return {
    stop: () => clearInterval(timer),
    result: () =>
      Object.fromEntries(
        Object.keys(cpu).map((k) => [
          k,
          { processes: cpu[k].size, peakRssMiB: peak[k] ? peak[k] / 1024 : undefined, cpuSeconds: [...cpu[k].values()].reduce((a, b) => a + b, 0) / CLK_TCK },
        ]),
      ),
  };
}

const put = (path, text, mode = 0o644) => {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, text, { mode });
};

/**
 * Makes a WAL-mode site in `root` (an empty directory): keys (`tandem-primary init --keys-dir`),
 * two clusters (the primary's created and started, archiving through wal-push; the standby's
 * created, not started), small config/security/files trees, primary.yml and standby.yml, and the
 * filestore (`tandem-primary init --filestore`). Options: maxDelay (a duration for
 * database.maxDelay, e.g. "5s"; none: the default), retryInterval (the standby cluster's
 * wal_retrieve_retry_interval, verbatim, e.g. "'500ms'"), primaryConf (more primary settings),
 * pollInterval (the standby daemon's, default '2s').
 * Returns {site, root, keysDir, storeDir, env, primaryConfig, standbyConfig, primaryStateDir,
 * standbyStateDir, primary, standby, primaryCli, standbyCli}.
 */
export async function makeWalSite(root, { maxDelay, retryInterval, primaryConf = {}, pollInterval = '2s' } = {}) {
  const site = `rpo${Math.random().toString(16).slice(2, 8)}`;
  mkdirSync(root, { recursive: true });
  const env = { TANDEM_STANDBY_BIN: `${process.execPath} ${STANDBY_BIN}` };
  const keysDir = join(root, 'keys');
  const storeDir = join(root, 'store');
  const primaryConfig = join(root, 'primary.yml');
  const standbyConfig = join(root, 'standby.yml');
  const primaryStateDir = join(root, 'primary-state');
  const standbyStateDir = join(root, 'standby-state');
  const trees = {};
  for (const side of ['primary', 'standby']) {
    const base = join(root, side);
    trees[side] = { config: join(base, 'priv'), security: join(base, 'security'), files: join(base, 'files') };
    mkdirSync(trees[side].config, { recursive: true });
    mkdirSync(trees[side].security, { recursive: true });
    mkdirSync(trees[side].files, { recursive: true });
  }
  put(join(trees.primary.config, 'config.d', 'site.yml'), 'hostname: bench.example\nlanguage: en\n');
  put(join(trees.primary.security, 'site.key'), `-----BEGIN PRIVATE KEY-----\n${'A'.repeat(1600)}\n-----END PRIVATE KEY-----\n`, 0o600);
  put(join(trees.primary.files, 'logo.txt'), 'a small files tree: this benchmark measures the database\n');
  giveToPostgres(root);

  const archive = `'${process.execPath} ${PRIMARY_BIN} wal-push --config ${primaryConfig} %p %f'`;
  const primary = await createCluster({ name: `${site}-primary`, root: join(root, 'pg-primary'), conf: { archive_mode: 'on', archive_command: archive, ...primaryConf } });
  const standby = await createCluster({ name: `${site}-standby`, root: join(root, 'pg-standby'), conf: retryInterval ? { wal_retrieve_retry_interval: retryInterval } : {} });

  const primaryCli = (args, e = {}) => runAgentAsPostgres(PRIMARY_BIN, args, { env: { ...env, ...e } });
  const standbyCli = (args, e = {}) => runAgentAsPostgres(STANDBY_BIN, args, { env: { ...env, ...e } });
  const k = await primaryCli(['init', '--keys-dir', keysDir]);
  if (k.code !== 0) throw new Error(`tandem-primary init --keys-dir: ${k.stderr}`);

  const listen = `127.0.0.1:${await freePort()}`;
  writeFileSync(
    primaryConfig,
    `site: ${site}
database:
  url: ${primary.url}
  mode: wal
${maxDelay ? `  maxDelay: ${maxDelay}\n` : ''}paths:
  config: ${trees.primary.config}
  security: ${trees.primary.security}
  files: ${trees.primary.files}
filestore:
  url: file://${storeDir}
keys:
  recipientFile: ${join(keysDir, 'backup.agepub')}
  signingKeyFile: ${join(keysDir, 'signing.key')}
stateDir: ${primaryStateDir}
# No scheduled backup during the benchmark.
schedule: '0 3 1 1 *'
server:
  listen: ${listen}
  tokenFile: ${join(keysDir, 'control.token')}
`,
  );
  writeFileSync(
    standbyConfig,
    `site: ${site}
database:
  url: ${standby.url}
  mode: wal
  binDir: ${PG_BIN}
  dataDir: ${standby.dataDir}
  startCommand: ${JSON.stringify(standby.startCommand)}
  stopCommand: ${JSON.stringify(standby.stopCommand)}
paths:
  config: ${trees.standby.config}
  security: ${trees.standby.security}
  files: ${trees.standby.files}
filestore:
  url: file://${storeDir}
keys:
  identityFile: ${join(keysDir, 'backup.agekey')}
  verifyKeyFile: ${join(keysDir, 'signing.pub')}
stateDir: ${standbyStateDir}
# The daemon (tandem-standby run): loopback only, so no token.
pollInterval: '${pollInterval}'
server:
  listen: 127.0.0.1:${await freePort()}
`,
  );
  giveToPostgres(root);
  await primary.start();
  const init = await primaryCli(['init', '--filestore', '--config', primaryConfig]);
  if (init.code !== 0) throw new Error(`tandem-primary init --filestore: ${init.stderr}`);
  return { site, root, keysDir, storeDir, env, primaryConfig, standbyConfig, primaryStateDir, standbyStateDir, primary, standby, primaryCli, standbyCli };
}

/**
 * The WAL segments of `site` in the directory filestore `storeDir` whose names lie in [from, to]
 * (24-hex-digit names of one timeline compare as their positions): for each, its name, the bytes
 * of its two objects (the body `<name>.zst[.age]` and the signed document `<name>.json`) and the
 * document's plainSize, plainSha256 and storedSize.
 */
export function storedSegments(storeDir, site, from, to) {
  const dir = join(storeDir, site, 'wal');
  const out = [];
  for (const f of readdirSync(dir)) {
    const m = /^([0-9A-F]{24})\.json$/.exec(f);
    if (!m || m[1] < from || m[1] > to) continue;
    const doc = JSON.parse(readFileSync(join(dir, f), 'utf8'));
    const docBytes = statSync(join(dir, f)).size;
    const bodyFile = join(dir, doc.file);
    out.push({ name: m[1], bodyFile, bodyBytes: statSync(bodyFile).size, docBytes, plainSize: doc.plainSize, plainSha256: doc.plainSha256, storedSize: doc.storedSize });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : 1));
}

/** Runs `cmd args` with `input` on stdin; resolves stdout as a Buffer, rejects on a non-zero exit. */
export function pipeThrough(cmd, args, input) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out = [];
    let err = '';
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => (err += d));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`))));
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

export const sha256 = (b) => createHash('sha256').update(b).digest('hex');

/**
 * The plain bytes of a stored segment, checked against its document's SHA-256: the primary's own
 * copy in pg_wal when it is still there and the same, else the stored body decrypted (age CLI with
 * the site's identity) and decompressed (zstd -d). Returns {plain, source: 'pg_wal' | 'filestore'}.
 */
export async function plainSegment(seg, { pgWalDir, identityFile }) {
  try {
    const b = readFileSync(join(pgWalDir, seg.name));
    if (b.length === seg.plainSize && sha256(b) === seg.plainSha256) return { plain: b, source: 'pg_wal' };
  } catch {
    /* recycled or removed: read it back from the filestore */
  }
  const zst = await pipeThrough('age', ['-d', '-i', identityFile, seg.bodyFile], Buffer.alloc(0));
  const plain = await pipeThrough('zstd', ['-d', '-q', '-c'], zst);
  if (sha256(plain) !== seg.plainSha256) throw new Error(`WAL segment ${seg.name}: the stored body does not decrypt to the SHA-256 its document names`);
  return { plain, source: 'filestore' };
}

/**
 * The restored WAL files that `<stateDir>/wal-replay.json` lists (its `recent`: the newest 64), each
 * {name, via, archivedAt, at}: via 'spool' for a file restore_command took from the daemon's spool,
 * 'filestore' for one the full wal-fetch fetched itself; archivedAt when the primary stored it, at
 * when restore_command handed it to PostgreSQL (both epoch ms). An empty list when there is none yet.
 */
export function restoredWal(stateDir) {
  try {
    const v = JSON.parse(readFileSync(join(stateDir, 'wal-replay.json'), 'utf8'));
    if (v.format !== 'tandem-wal-replay' || !Array.isArray(v.recent)) return [];
    return v.recent.filter((r) => typeof r?.name === 'string').map((r) => ({ name: r.name, via: r.via === 'spool' ? 'spool' : 'filestore', archivedAt: Date.parse(r.archivedAt), at: Date.parse(r.at) }));
  } catch {
    return [];
  }
}
