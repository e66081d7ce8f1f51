// npm run bench:rpo: the recovery point of a site in WAL mode (database.mode: wal) under a steady
// write load, what its WAL costs the filestore, and what the agents weigh.
//
//   BENCH_RPO_SECONDS=180     the load window of each run
//   BENCH_RPO_RUNS=1          runs of each configuration, each on a fresh pair of clusters
//   BENCH_RPO_TPS=200         pgbench's rate (-R), two clients
//   BENCH_RPO_SCALE=10        pgbench -i -s: the database size (10: ~160 MB)
//   BENCH_RPO_RETRY_INTERVAL=500ms   the standby cluster's wal_retrieve_retry_interval (how soon
//                             PostgreSQL asks restore_command again after "not there yet";
//                             PostgreSQL's default is 5s, the test suite's standbys use 500ms)
//   BENCH_RPO_CONFIGS=default,5s     which configurations to run
//   BENCH_JSON=1              also print a JSON summary (any other value: write it to that file)
//   BENCH_KEEP_TMP=1          leave the run's directory (clusters stopped) for a look at the logs
//
// Two configurations, each run on a fresh pair of clusters: database.maxDelay at its default (60s)
// and maxDelay: 5s. Each run, on this machine, with the built agents (packages/*/dist) running as
// the postgres OS user (as PostgreSQL runs archive_command and restore_command):
//   1. two clusters (initdb in a temp dir, free ports), keys (`tandem-primary init --keys-dir`), a
//      directory filestore (`tandem-primary init --filestore`); the primary's archive_command is
//      `tandem-primary wal-push`;
//   2. seed: `pgbench -i -s 10` on the primary and a table rpo_stamps(at timestamptz); a set
//      (`tandem-primary backup`); the standby cluster seeded as a hot standby (`tandem-standby
//      apply`, restore_command `tandem-standby wal-fetch --spool <standby state>/wal-spool`); the
//      standby daemon (`tandem-standby run`, pollInterval 2s, listening on 127.0.0.1), which fetches
//      WAL ahead into that spool so that restore_command only moves a verified file into place; the
//      primary daemon (`tandem-primary run`), which switches WAL files within maxDelay; then the
//      stamp writer (below) starts, and its first stamp must reach the standby before the load starts;
//   3. load for BENCH_RPO_SECONDS: `pgbench -n -c 2 -j 2 -R <tps> -T <secs>` plus a stamp writer
//      (a pg client in this process) inserting now() into rpo_stamps every 100 ms; every second the
//      benchmark reads max(at) on the primary and on the standby (a read-only query on the hot
//      standby). One lag sample = the primary's newest stamp - the standby's newest stamp: the
//      commits a failover at that second would have lost, in seconds of writes;
//   4. the WAL of the window: from the segment holding pg_current_wal_lsn() at its start to the
//      one holding it at its end (then switched, and waited for until archived). Its
//      filestore bytes are the two objects of each of those segments in <store>/<site>/wal/ (the
//      zstd+age body and the signed document), per hour of the window. The compressed WAL they are
//      held against is the same segments compressed by this benchmark with `zstd -1` (each
//      segment's plain bytes from the primary's pg_wal, or when PostgreSQL has recycled it, the
//      stored body decrypted with the age CLI; either way checked against the SHA-256 the document
//      signs);
//   5. the dump-mode comparison: one dump-mode-equivalent set at this database size, `pg_dump -Fc
//      -Z0 | zstd -1` (bytes counted), times the sets per hour dump mode would need for the same
//      p99 recovery point (3600 / p99 seconds), as bytes per hour;
//   6. peak RSS: the two daemons' VmHWM (polled while they run, with their CPU time), and the
//      largest VmHWM seen of the wal-push and wal-fetch processes of this run's site, with the CPU
//      time they used (/proc sampled every 100 ms from the start of the seed: short-lived processes,
//      so lower bounds);
//   7. the spool: which of the window's restored WAL files restore_command took from the daemon's
//      spool (`via: "spool"` in the standby state dir's wal-replay.json, whose `recent` keeps the
//      newest 64: read every second during the window and once at its end, so none is missed).
// Targets: lag p99 <= 60 s at the default, <= 10 s at 5s; filestore bytes <= 1.1x the compressed
// WAL; every agent's peak RSS <= 200 MiB. With several runs, the worst run decides.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { PRIMARY_BIN, STANDBY_BIN, fmtMB, loadavg, log, machine, printMachine, printResults } from './lib/common.mjs';
import { sleep, waitFor } from './lib/daemons.mjs';
import { PG_BIN, logTail } from './lib/wal-cluster.mjs';
import { agentChildren, makeWalSite, pipeThrough, plainSegment, restoredWal, sampleWalAgents, startAgentAsPostgres, storedSegments } from './lib/wal-site.mjs';

function intEnv(name, dflt, min, max) {
  const v = process.env[name] === undefined || process.env[name] === '' ? dflt : Number(process.env[name]);
  if (!(Number.isInteger(v) && v >= min && v <= max)) throw new Error(`${name} must be an integer ${min}..${max}, got ${process.env[name]}`);
  return v;
}

const SECONDS = intEnv('BENCH_RPO_SECONDS', 180, 10, 24 * 3600);
const RUNS = intEnv('BENCH_RPO_RUNS', 1, 1, 20);
const TPS = intEnv('BENCH_RPO_TPS', 200, 1, 100_000);
const SCALE = intEnv('BENCH_RPO_SCALE', 10, 1, 1000);
const RETRY = process.env.BENCH_RPO_RETRY_INTERVAL || '500ms';
if (!/^\d+(ms|s|min)?$/.test(RETRY)) throw new Error(`BENCH_RPO_RETRY_INTERVAL must be a PostgreSQL duration such as 500ms or 5s, got ${RETRY}`);
const STAMP_EVERY_MS = 100;
const SAMPLE_EVERY_MS = 1000;
const RSS_TARGET_MIB = 200;
const BYTES_TARGET = 1.1;

const ALL_CONFIGS = [
  { key: 'default', label: 'maxDelay 60s (default)', maxDelay: undefined, maxDelaySeconds: 60, p99Target: 60 },
  { key: '5s', label: 'maxDelay 5s', maxDelay: '5s', maxDelaySeconds: 5, p99Target: 10 },
];
const wanted = (process.env.BENCH_RPO_CONFIGS || ALL_CONFIGS.map((c) => c.key).join(',')).split(',').map((k) => k.trim());
const CONFIGS = ALL_CONFIGS.filter((c) => wanted.includes(c.key));
if (CONFIGS.length !== wanted.length) throw new Error(`BENCH_RPO_CONFIGS: expected a comma-separated list of ${ALL_CONFIGS.map((c) => c.key).join(', ')}, got ${process.env.BENCH_RPO_CONFIGS}`);

// ---- clean-up, also on Ctrl-C: the children this benchmark started, the clusters, the temp dirs
const live = { children: new Set(), clusters: new Set(), roots: new Set() };
function cleanUpNow() {
  for (const c of [...live.children, ...agentChildren]) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const c of live.clusters) c.stopNowSync();
  for (const r of live.roots) {
    if (process.env.BENCH_KEEP_TMP === '1') log(`BENCH_KEEP_TMP=1: leaving ${r}`);
    else rmSync(r, { recursive: true, force: true });
  }
  live.children.clear();
  live.clusters.clear();
  live.roots.clear();
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    log(`${sig}: stopping the load, the daemons and the clusters, removing the temp dirs`);
    cleanUpNow();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}

// ---- small helpers
const pct = (xs, p) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const fmtSec = (x) => (Number.isFinite(x) ? `${x.toFixed(1)} s` : 'n/a');
const fmtMiB = (x) => (x === undefined || Number.isNaN(x) ? 'n/a' : `${x.toFixed(1)} MiB`);
/** The position of a WAL segment (16 MiB segments: 256 per xlog id) from its 24-hex-digit name. */
const segNo = (name) => BigInt(`0x${name.slice(8, 16)}`) * 256n + BigInt(`0x${name.slice(16, 24)}`);
const cpuText = (a) =>
  ['wal-push', 'wal-fetch'].map((k) => `${k} ${a[k].cpuSeconds.toFixed(1)} CPU-s (${((a[k].cpuSeconds / a.seconds) * 100).toFixed(0)}% of a core)`).join(', ');
const waitText = (w) => `p50 ${fmtSec(w.p50)}, max ${fmtSec(w.max)} (via the spool p50 ${fmtSec(w.spoolP50)}, fetched by wal-fetch p50 ${fmtSec(w.fetchedP50)})`;
const pgArgs = (cluster) => ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres'];
/** The warn/error/fatal lines (pino levels 40-60) of an agent's JSON log, as "level msg". */
const daemonProblems = (text) =>
  text
    .split('\n')
    .filter((l) => /"level":(40|50|60)/.test(l))
    .map((l) => {
      try {
        const r = JSON.parse(l);
        return `${r.level} ${r.msg}${r.err?.message ? `: ${r.err.message}` : ''}`;
      } catch {
        return l;
      }
    });
const problemLines = (file) => {
  try {
    return readFileSync(file, 'utf8').split('\n').filter((l) => /\b(ERROR|FATAL|PANIC)\b|"level":(50|60)/.test(l));
  } catch {
    return [];
  }
};

/** Runs a command as root to completion, keeping the child for the clean-up; rejects on failure. */
function runTracked(cmd, args, what) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-64 * 1024)));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      live.children.delete(child);
      if (code === 0) resolve({ stdout, stderr });
      else reject(new Error(`${what}: ${cmd} ${args.join(' ')} exited ${code ?? signal}: ${(stderr || stdout).trim().slice(-2000)}`));
    });
  });
}

/** `pg_dump -Fc -Z0 | zstd -1`, the bytes counted (nothing written to disk). */
function dumpSetBytes(cluster) {
  return new Promise((resolve, reject) => {
    const dump = spawn(join(PG_BIN, 'pg_dump'), ['-Fc', '-Z0', ...pgArgs(cluster), 'postgres'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const zstd = spawn('zstd', ['-1', '-q', '-c'], { stdio: ['pipe', 'pipe', 'pipe'] });
    live.children.add(dump);
    live.children.add(zstd);
    dump.stdout.pipe(zstd.stdin);
    let bytes = 0;
    let err = '';
    zstd.stdout.on('data', (d) => (bytes += d.length));
    dump.stderr.on('data', (d) => (err += d));
    zstd.stderr.on('data', (d) => (err += d));
    const codes = [];
    const done = (name) => (code) => {
      codes.push([name, code]);
      if (codes.length < 2) return;
      live.children.delete(dump);
      live.children.delete(zstd);
      if (codes.every(([, c]) => c === 0)) resolve(bytes);
      else reject(new Error(`pg_dump -Fc -Z0 | zstd -1: ${codes.map(([n, c]) => `${n} exited ${c}`).join(', ')}: ${err.trim()}`));
    };
    dump.once('close', done('pg_dump'));
    zstd.once('close', done('zstd'));
    dump.once('error', reject);
    zstd.once('error', reject);
  });
}

const newClient = async (cluster, name) => {
  const c = new pg.Client({ connectionString: cluster.url, connectionTimeoutMillis: 10_000, application_name: name });
  c.on('error', () => undefined); // a broken connection shows as failed queries, counted
  await c.connect();
  return c;
};

// ---- one run of one configuration, on a fresh pair of clusters
async function runOnce(cfg, runNo) {
  const root = mkdtempSync(join(os.tmpdir(), 'tandem-bench-rpo-'));
  live.roots.add(root);
  const run = { config: cfg.key, run: runNo, root };
  let s;
  let daemon;
  let standbyDaemon;
  const restored = new Map(); // WAL file name -> {via: 'spool' | 'filestore', archivedAt, at}, from wal-replay.json
  const noteRestored = () => {
    if (s) for (const r of restoredWal(s.standbyStateDir)) restored.set(r.name, r);
  };
  const agents = sampleWalAgents(root, 100);
  const agentsSince = performance.now();
  const cpuBefore = process.cpuUsage();
  const clients = [];
  const samples = [];
  let sampleErrors = 0;
  let start;
  let t0;
  try {
    log(`[${cfg.label}, run ${runNo}] two clusters, keys and the filestore in ${root}`);
    s = await makeWalSite(root, { maxDelay: cfg.maxDelay, retryInterval: `'${RETRY}'` });
    live.clusters.add(s.primary);
    live.clusters.add(s.standby);
    run.site = s.site;

    // 2. The seed.
    let t = performance.now();
    await runTracked(join(PG_BIN, 'pgbench'), ['-i', '-q', '-s', String(SCALE), ...pgArgs(s.primary), 'postgres'], 'pgbench -i');
    run.pgbenchInitSeconds = (performance.now() - t) / 1000;
    await s.primary.query('create table rpo_stamps (at timestamptz not null)');
    await s.primary.query('insert into rpo_stamps (at) values (now())');
    const [{ size }] = await s.primary.query("select pg_database_size('postgres')::text as size");
    run.databaseBytes = Number(size);
    log(`  pgbench -i -s ${SCALE}: ${run.pgbenchInitSeconds.toFixed(1)} s, database ${fmtMB(run.databaseBytes)}`);

    const b = await s.primaryCli(['backup', '--config', s.primaryConfig, '--json']);
    if (b.code !== 0) throw new Error(`tandem-primary backup exited ${b.code}: ${b.stderr.slice(-3000)}`);
    run.backup = { seconds: b.seconds, peakRssMiB: b.peakRssMiB, setId: JSON.parse(b.stdout.trim().split('\n').reverse().find((l) => l.startsWith('{'))).setId };
    log(`  tandem-primary backup: ${b.seconds.toFixed(1)} s, set ${run.backup.setId}, peak RSS ${fmtMiB(b.peakRssMiB)}`);

    await s.standby.start(); // a running standby server, as on a real one: the seed stops it
    const a = await s.standbyCli(['apply', '--config', s.standbyConfig, '--json']);
    if (a.code !== 0) throw new Error(`tandem-standby apply exited ${a.code}: ${a.stderr.slice(-3000)}`);
    run.apply = { seconds: a.seconds, peakRssMiB: a.peakRssMiB };
    const [{ r }] = await s.standby.query('select pg_is_in_recovery() as r');
    if (r !== true) throw new Error('the seeded standby cluster is not in recovery');
    log(`  tandem-standby apply: ${a.seconds.toFixed(1)} s (a hot standby now), peak RSS ${fmtMiB(a.peakRssMiB)}`);

    standbyDaemon = startAgentAsPostgres(STANDBY_BIN, ['run', '--config', s.standbyConfig], { env: s.env });
    live.children.add(standbyDaemon.child);
    await waitFor(() => standbyDaemon.stderr().includes('standby daemon started') || standbyDaemon.exit, 'the standby daemon starts', 60_000, 100);
    if (standbyDaemon.exit) throw new Error(`tandem-standby run exited (${standbyDaemon.exit.code ?? standbyDaemon.exit.signal}):\n${standbyDaemon.stderr().slice(-3000)}`);

    daemon = startAgentAsPostgres(PRIMARY_BIN, ['run', '--config', s.primaryConfig], { env: s.env });
    live.children.add(daemon.child);
    await waitFor(() => daemon.stderr().includes('WAL mode: written WAL goes to the filestore') || daemon.exit, 'the primary daemon starts', 60_000, 100);
    if (daemon.exit) throw new Error(`tandem-primary run exited (${daemon.exit.code ?? daemon.exit.signal}):\n${daemon.stderr().slice(-3000)}`);

    // The stamp writer starts first, and its first stamp must reach the standby before the window
    // opens: the whole path works, and the window starts from a steady stream (a gap in the stamps
    // would count as lag that no failover loses).
    const writer = await newClient(s.primary, 'rpo stamps');
    clients.push(writer);
    const stamps = { written: 0, skipped: 0, failed: 0 };
    let writing = false;
    t = Date.now();
    const [{ at: first }] = (await writer.query('insert into rpo_stamps (at) values (now()) returning at')).rows;
    stamps.written++;
    const stampTimer = setInterval(() => {
      if (writing) return void stamps.skipped++;
      writing = true;
      writer
        .query('insert into rpo_stamps (at) values (now())')
        .then(() => stamps.written++, () => stamps.failed++)
        .finally(() => (writing = false));
    }, STAMP_EVERY_MS);
    let pgbenchOut;
    try {
      await waitFor(
        async () => {
          const [{ m }] = await s.standby.query('select max(at) as m from rpo_stamps');
          return m !== null && m.getTime() >= first.getTime();
        },
        `the standby to replay a stamp written after the seed (maxDelay ${cfg.maxDelaySeconds} s)`,
        cfg.maxDelaySeconds * 1000 + 90_000,
        250,
      );
      run.firstStampSeconds = (Date.now() - t) / 1000;
      log(`  the daemon runs; the first stamp reached the standby in ${run.firstStampSeconds.toFixed(1)} s`);

      // 3. The load window. Its WAL starts in the segment holding the current position (which may
      // hold a few stamps written just before: a few kB).
      const [startRow] = await s.primary.query('select pg_current_wal_lsn()::text as lsn, pg_walfile_name(pg_current_wal_lsn() + 1) as seg, (select wal_bytes::text from pg_stat_wal) as wal');
      start = startRow;
      const pReader = await newClient(s.primary, 'rpo sampler');
      const sReader = await newClient(s.standby, 'rpo sampler');
      clients.push(pReader, sReader);
      let sampling = false;
      t0 = Date.now();
      log(`  load: pgbench -c 2 -R ${TPS} -T ${SECONDS} and a stamp every ${STAMP_EVERY_MS} ms; lag sampled every second`);
      const bench = runTracked(join(PG_BIN, 'pgbench'), ['-n', '-c', '2', '-j', '2', '-R', String(TPS), '-T', String(SECONDS), ...pgArgs(s.primary), 'postgres'], 'pgbench');
      const sampleTimer = setInterval(() => {
        noteRestored();
        if (sampling) return;
        sampling = true;
        const q = 'select max(at) as m from rpo_stamps';
        Promise.all([pReader.query(q), sReader.query(q)])
          .then(([p, sb]) => {
            const pm = p.rows[0].m;
            const sm = sb.rows[0].m;
            samples.push({ t: (Date.now() - t0) / 1000, primary: pm.toISOString(), standby: sm?.toISOString() ?? null, lag: sm ? (pm.getTime() - sm.getTime()) / 1000 : NaN });
          }, () => sampleErrors++)
          .finally(() => (sampling = false));
      }, SAMPLE_EVERY_MS);
      try {
        await sleep(SECONDS * 1000);
      } finally {
        clearInterval(sampleTimer);
        pgbenchOut = await bench;
      }
    } finally {
      clearInterval(stampTimer);
    }
    const [end] = await s.primary.query(
      `select pg_current_wal_lsn()::text as lsn, pg_walfile_name(pg_current_wal_lsn()) as seg, pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::text as bytes,
              (select wal_bytes from pg_stat_wal) - $2::numeric as written`,
      [start.lsn, start.wal],
    );
    const windowSeconds = (Date.now() - t0) / 1000;
    noteRestored();
    for (const c of clients.splice(0)) await c.end().catch(() => undefined);
    const tps = /tps = ([\d.]+)/.exec(pgbenchOut.stdout)?.[1];
    const lags = samples.map((x) => x.lag).filter(Number.isFinite);
    run.window = { seconds: windowSeconds, startLsn: start.lsn, endLsn: end.lsn, startSeg: start.seg, endSeg: end.seg, lsnBytes: Number(end.bytes), walBytes: Number(end.written) };
    run.load = { pgbenchTps: tps ? Number(tps) : NaN, stamps };
    run.lag = { samples: lags.length, errors: sampleErrors + (samples.length - lags.length), p50: pct(lags, 50), p99: pct(lags, 99), max: lags.length ? Math.max(...lags) : NaN, series: samples };
    log(`  window ${windowSeconds.toFixed(0)} s: pgbench ${run.load.pgbenchTps} tps, ${stamps.written} stamps (${stamps.skipped} skipped, ${stamps.failed} failed); ` +
      `${run.window.walBytes} B of WAL written, the position advanced ${run.window.lsnBytes} B (${start.seg} .. ${end.seg}); lag p50 ${fmtSec(run.lag.p50)}, p99 ${fmtSec(run.lag.p99)}, max ${fmtSec(run.lag.max)} over ${lags.length} samples`);

    // 4. The window's WAL: switched, archived, then measured in the filestore.
    await s.primary.query('select pg_switch_wal()');
    await waitFor(
      async () => {
        const [x] = await s.primary.query('select last_archived_wal as w from pg_stat_archiver');
        return x.w !== null && x.w.length === 24 && x.w >= end.seg;
      },
      `the primary to archive ${end.seg}`,
      120_000,
      250,
    );
    // The window's segments as the standby restored them (the last one may still be on its way).
    await waitFor(() => (noteRestored(), restored.has(end.seg)), `the standby to restore ${end.seg}`, 60_000, 250).catch(() => undefined);
    noteRestored();
    const inWindow = [...restored.values()].filter((r) => r.name >= start.seg && r.name <= end.seg);
    // How long each file waited between being stored by the primary and being handed to PostgreSQL.
    const waits = (rs) => rs.map((r) => (r.at - r.archivedAt) / 1000).filter(Number.isFinite);
    const spooled = inWindow.filter((r) => r.via === 'spool');
    const fetched = inWindow.filter((r) => r.via !== 'spool');
    run.spool = {
      windowRestored: inWindow.length,
      windowViaSpool: spooled.length,
      allRestored: restored.size,
      allViaSpool: [...restored.values()].filter((r) => r.via === 'spool').length,
      storedToRestored: { p50: pct(waits(inWindow), 50), max: Math.max(...waits(inWindow)), spoolP50: pct(waits(spooled), 50), fetchedP50: pct(waits(fetched), 50) },
    };
    const [arch] = await s.primary.query('select archived_count::text as ok, failed_count::text as failed from pg_stat_archiver');
    run.archiver = { archived: Number(arch.ok), failed: Number(arch.failed) };
    const segs = storedSegments(s.storeDir, s.site, start.seg, end.seg);
    const expected = Number(segNo(end.seg) - segNo(start.seg)) + 1;
    const sources = { pg_wal: 0, filestore: 0 };
    let compressed = 0;
    let plainBytes = 0;
    for (const seg of segs) {
      const { plain, source } = await plainSegment(seg, { pgWalDir: join(s.primary.dataDir, 'pg_wal'), identityFile: join(s.keysDir, 'backup.agekey') });
      sources[source]++;
      plainBytes += plain.length;
      seg.zstd1 = (await pipeThrough('zstd', ['-1', '-q', '-c'], plain)).length;
      compressed += seg.zstd1;
    }
    const stored = segs.reduce((n, x) => n + x.bodyBytes + x.docBytes, 0);
    const perHour = (bytes) => (bytes / windowSeconds) * 3600;
    run.wal = {
      segments: segs.length,
      expectedSegments: expected,
      plainBytes,
      bodyBytes: segs.reduce((n, x) => n + x.bodyBytes, 0),
      docBytes: segs.reduce((n, x) => n + x.docBytes, 0),
      storedSizeSigned: segs.reduce((n, x) => n + x.storedSize, 0),
      filestoreBytes: stored,
      compressedBytes: compressed,
      filestorePerHour: perHour(stored),
      compressedPerHour: perHour(compressed),
      ratio: stored / compressed,
      plainFrom: sources,
      perSegment: segs.map(({ name, bodyBytes, docBytes, zstd1 }) => ({ name, bodyBytes, docBytes, zstd1 })),
    };
    log(`  WAL in the filestore: ${segs.length} of ${expected} segments; ${stored} B stored (bodies ${run.wal.bodyBytes} + documents ${run.wal.docBytes}) ` +
      `vs ${compressed} B zstd -1 of the same segments: ${run.wal.ratio.toFixed(3)}; plain bytes from pg_wal ${sources.pg_wal}, from the filestore ${sources.filestore}`);

    // 5. The dump-mode comparison at this database size.
    t = performance.now();
    run.dump = { setBytes: await dumpSetBytes(s.primary), seconds: (performance.now() - t) / 1000 };
    run.dump.setsPerHour = 3600 / run.lag.p99;
    run.dump.perHour = run.dump.setBytes * run.dump.setsPerHour;
    log(`  pg_dump -Fc -Z0 | zstd -1: ${run.dump.setBytes} B in ${run.dump.seconds.toFixed(1)} s; x ${run.dump.setsPerHour.toFixed(1)} sets/h (3600 / p99) = ${fmtMB(run.dump.perHour)}/h`);

    // 6. The daemons' peaks and CPU; the logs' error lines.
    const st = await daemon.stop();
    live.children.delete(daemon.child);
    run.daemon = { peakRssMiB: daemon.peakRssMiB(), cpuSeconds: daemon.cpuSeconds(), exit: st, problems: daemonProblems(daemon.stderr()) };
    const sst = await standbyDaemon.stop();
    live.children.delete(standbyDaemon.child);
    run.standbyDaemon = { peakRssMiB: standbyDaemon.peakRssMiB(), cpuSeconds: standbyDaemon.cpuSeconds(), exit: sst, problems: daemonProblems(standbyDaemon.stderr()) };
    agents.stop();
    run.walAgents = { ...agents.result(), seconds: (performance.now() - agentsSince) / 1000 };
    const own = process.cpuUsage(cpuBefore);
    run.benchCpuSeconds = (own.user + own.system) / 1e6;
    run.logProblems = { primary: problemLines(s.primary.logFile), standby: problemLines(s.standby.logFile) };
    log(`  spool: ${run.spool.windowViaSpool} of the window's ${run.spool.windowRestored} restored WAL files came via the spool (${run.spool.allViaSpool} of ${run.spool.allRestored} since the seed); ` +
      `stored -> handed to PostgreSQL: ${waitText(run.spool.storedToRestored)}`);
    log(`  peak RSS: primary daemon ${fmtMiB(run.daemon.peakRssMiB)} (${run.daemon.cpuSeconds.toFixed(1)} CPU-s), standby daemon ${fmtMiB(run.standbyDaemon.peakRssMiB)} (${run.standbyDaemon.cpuSeconds.toFixed(1)} CPU-s); wal-push ${fmtMiB(run.walAgents['wal-push'].peakRssMiB)} (${run.walAgents['wal-push'].processes} seen), ` +
      `wal-fetch ${fmtMiB(run.walAgents['wal-fetch'].peakRssMiB)} (${run.walAgents['wal-fetch'].processes} seen); ${cpuText(run.walAgents)}; archiver ${run.archiver.archived} archived, ${run.archiver.failed} failed; ` +
      `error lines in the logs: primary ${run.logProblems.primary.length}, standby ${run.logProblems.standby.length}`);
    for (const [side, lines] of Object.entries(run.logProblems)) for (const l of lines.slice(-5)) log(`    ${side} log: ${l.slice(0, 400)}`);
    for (const [side, d] of [['tandem-primary run', run.daemon], ['tandem-standby run', run.standbyDaemon]]) {
      if (d.problems.length) log(`    ${side}: ${d.problems.length} warn/error lines; the last: ${d.problems.slice(-3).map((l) => l.slice(0, 300)).join(' | ')}`);
    }
    run.ok = true;
  } catch (err) {
    run.ok = false;
    run.error = err.message;
    log(`  FAILED: ${err.message}`);
    if (s) {
      log(`  --- primary's PostgreSQL log (${s.primary.logFile}), last lines ---\n${logTail(s.primary.logFile, 25)}`);
      log(`  --- standby's PostgreSQL log (${s.standby.logFile}), last lines ---\n${logTail(s.standby.logFile, 25)}`);
    }
    if (daemon) log(`  --- tandem-primary run, last log lines ---\n${daemon.stderr().trim().split('\n').slice(-15).join('\n')}`);
    if (standbyDaemon) log(`  --- tandem-standby run, last log lines ---\n${standbyDaemon.stderr().trim().split('\n').slice(-15).join('\n')}`);
  } finally {
    agents.stop();
    for (const c of clients) await c.end().catch(() => undefined);
    if (daemon && daemon.exit === null) await daemon.stop(5_000);
    if (daemon) live.children.delete(daemon.child);
    if (standbyDaemon && standbyDaemon.exit === null) await standbyDaemon.stop(5_000);
    if (standbyDaemon) live.children.delete(standbyDaemon.child);
    if (s) {
      for (const c of [s.primary, s.standby]) {
        await c.stop('immediate').catch(() => c.stopNowSync());
        live.clusters.delete(c);
      }
    }
    if (process.env.BENCH_KEEP_TMP === '1') log(`BENCH_KEEP_TMP=1: leaving ${root}`);
    else rmSync(root, { recursive: true, force: true });
    live.roots.delete(root);
  }
  return run;
}

// ---- main
const m = machine();
console.log('tandem bench:rpo');
printMachine(m);
console.log(`load:    pgbench -i -s ${SCALE}; then pgbench -c 2 -R ${TPS} for ${SECONDS} s, a stamp every ${STAMP_EVERY_MS} ms, the lag sampled every ${SAMPLE_EVERY_MS / 1000} s`);
console.log(`         standby wal_retrieve_retry_interval ${RETRY}; ${RUNS} run(s) of each configuration, each on a fresh pair of clusters; the worst run decides`);

const results = {};
for (const cfg of CONFIGS) {
  results[cfg.key] = [];
  for (let i = 1; i <= RUNS; i++) results[cfg.key].push(await runOnce(cfg, i));
}

// ---- report
const rows = [];
console.log('\nraw figures (every run, in order):');
for (const cfg of CONFIGS) {
  const R = results[cfg.key];
  console.log(`  ${cfg.label}`);
  for (const r of R) {
    if (!r.ok) {
      console.log(`    run ${r.run}: FAILED: ${r.error.split('\n')[0]}`);
      continue;
    }
    const w = r.wal;
    console.log(`    run ${r.run}: database ${fmtMB(r.databaseBytes)}; window ${r.window.seconds.toFixed(0)} s, pgbench ${r.load.pgbenchTps} tps, ${r.load.stamps.written} stamps`);
    console.log(`      replay lag (primary's newest stamp - standby's), ${r.lag.samples} samples: p50 ${fmtSec(r.lag.p50)}, p99 ${fmtSec(r.lag.p99)}, max ${fmtSec(r.lag.max)}` +
      `${r.lag.errors ? ` (${r.lag.errors} samples failed)` : ''}`);
    console.log(`      WAL written ${fmtMB(r.window.walBytes)} (pg_stat_wal.wal_bytes); the position advanced ${fmtMB(r.window.lsnBytes)} (pg_current_wal_lsn: the segment tails ` +
      `that WAL switches skip count too); ${w.segments} segments archived (${w.expectedSegments} expected, ${fmtMB(w.plainBytes)} of segment files)`);
    console.log(`      filestore: ${w.filestoreBytes} B (bodies ${w.bodyBytes} B + signed documents ${w.docBytes} B) = ${fmtMB(w.filestorePerHour)}/h`);
    console.log(`      compressed WAL (the same segments, zstd -1 by the benchmark): ${w.compressedBytes} B = ${fmtMB(w.compressedPerHour)}/h; filestore / compressed ${w.ratio.toFixed(3)}`);
    console.log(`        (the documents' storedSize sum ${w.storedSizeSigned} B; plain segments read from pg_wal ${w.plainFrom.pg_wal}, decrypted from the filestore ${w.plainFrom.filestore})`);
    console.log(`      dump mode for the same p99: one set ${fmtMB(r.dump.setBytes)} (pg_dump -Fc -Z0 | zstd -1) x ${r.dump.setsPerHour.toFixed(1)} sets/h = ${fmtMB(r.dump.perHour)}/h; ` +
      `WAL mode stores ${(w.filestorePerHour / r.dump.perHour).toFixed(3)}x that`);
    console.log(`      restore_command via the standby daemon's spool: ${r.spool.windowViaSpool} of the window's ${r.spool.windowRestored} restored WAL files ` +
      `(${r.spool.allViaSpool} of ${r.spool.allRestored} since the seed); the rest the full wal-fetch fetched itself`);
    console.log(`      a window's WAL file from stored by the primary (its archivedAt) to handed to PostgreSQL: ${waitText(r.spool.storedToRestored)}`);
    console.log(`      peak RSS: tandem-primary run ${fmtMiB(r.daemon.peakRssMiB)} (${r.daemon.cpuSeconds.toFixed(1)} CPU-s); tandem-standby run ${fmtMiB(r.standbyDaemon.peakRssMiB)} ` +
      `(${r.standbyDaemon.cpuSeconds.toFixed(1)} CPU-s); wal-push ${fmtMiB(r.walAgents['wal-push'].peakRssMiB)} (of ${r.walAgents['wal-push'].processes} seen); ` +
      `wal-fetch ${fmtMiB(r.walAgents['wal-fetch'].peakRssMiB)} (of ${r.walAgents['wal-fetch'].processes} seen); backup ${fmtMiB(r.backup.peakRssMiB)}, apply ${fmtMiB(r.apply.peakRssMiB)}`);
    console.log(`      CPU of the agents PostgreSQL ran, from the seed on (${r.walAgents.seconds.toFixed(0)} s): ${cpuText(r.walAgents)}; ` +
      `this benchmark's own process ${r.benchCpuSeconds.toFixed(1)} CPU-s`);
    console.log(`      archiver: ${r.archiver.archived} archived, ${r.archiver.failed} failed; error lines in the PostgreSQL logs: primary ${r.logProblems.primary.length}, standby ${r.logProblems.standby.length}; ` +
      `warn/error lines of the daemons: tandem-primary run ${r.daemon.problems.length}, tandem-standby run ${r.standbyDaemon.problems.length}`);
  }

  const ok = R.filter((r) => r.ok);
  const failed = R.length - ok.length;
  const worst = (f) => (ok.length ? Math.max(...ok.map(f)) : NaN);
  const each = (f, fmt) => ok.map((r) => fmt(f(r))).join(', ');
  const p99 = worst((r) => r.lag.p99);
  rows.push({
    name: `${cfg.label}: replay lag p99`,
    value: p99,
    shown: fmtSec(p99),
    target: `<= ${cfg.p99Target} s`,
    pass: failed === 0 && p99 <= cfg.p99Target,
    detail: `runs ${each((r) => r.lag.p99, fmtSec)}${failed ? `; ${failed} run(s) failed` : ''}`,
  });
  const ratio = worst((r) => r.wal.ratio);
  rows.push({
    name: `${cfg.label}: filestore bytes / compressed WAL`,
    value: ratio,
    shown: ratio.toFixed(3),
    target: `<= ${BYTES_TARGET}`,
    pass: failed === 0 && ratio <= BYTES_TARGET,
    detail: `runs ${each((r) => r.wal.ratio, (x) => x.toFixed(3))}; ${each((r) => r.wal.filestorePerHour, (x) => `${fmtMB(x)}/h`)} vs zstd -1 of the same segments`,
  });
  const rss = worst((r) => Math.max(r.daemon.peakRssMiB ?? NaN, r.standbyDaemon.peakRssMiB ?? NaN, r.walAgents['wal-push'].peakRssMiB ?? 0, r.walAgents['wal-fetch'].peakRssMiB ?? 0));
  rows.push({
    name: `${cfg.label}: agents' peak RSS`,
    value: rss,
    shown: fmtMiB(rss),
    target: `<= ${RSS_TARGET_MIB} MiB`,
    pass: failed === 0 && rss <= RSS_TARGET_MIB,
    detail: 'the largest of the two daemons, wal-push and wal-fetch',
  });
}
printResults(`bench:rpo results (BENCH_RPO_SECONDS=${SECONDS}, BENCH_RPO_TPS=${TPS}, ${RUNS} run(s), the worst run of each):`, rows);
console.log(`  load average now: ${loadavg()}`);

if (process.env.BENCH_JSON) {
  const strip = (r) => (r.lag ? { ...r, lag: { ...r.lag, series: undefined } } : r);
  const summary = {
    machine: m,
    knobs: { seconds: SECONDS, runs: RUNS, tps: TPS, scale: SCALE, retryInterval: RETRY },
    configs: Object.fromEntries(CONFIGS.map((c) => [c.key, { ...c, runs: results[c.key].map(strip) }])),
    rows,
    load: loadavg(),
  };
  if (process.env.BENCH_JSON === '1') console.log(`\n${JSON.stringify(summary, null, 2)}`);
  else writeFileSync(process.env.BENCH_JSON, JSON.stringify({ ...summary, configs: Object.fromEntries(CONFIGS.map((c) => [c.key, { ...c, runs: results[c.key] }])) }, null, 2));
}
process.exitCode = Object.values(results).flat().some((r) => !r.ok) ? 1 : 0;
