// npm run bench:push: how fast a running standby follows a running primary, and what an idle standby
// costs the filestore (see docs/benchmarks.md). Both daemons run as operators run them, started the
// way test/daemons.test.ts starts them; a small site (a ~1 MB database, a ~0.3 MB files tree).
//
//   BENCH_PUSH_SETS=20        sets committed one after another in part 1
//   BENCH_FILES_DELTAS=20     new 1 MB files sent one after another in part 3
//   BENCH_IDLE_SECONDS=180    the counting window of part 2
//   BENCH_PUSH_FILESTORE=dir  part 1's filestore: dir (a directory) or s3 (s3rver, no proxy)
//   BENCH_DB, BENCH_KEEP_TMP  as for bench/backup.mjs; the databases are <BENCH_DB>_push*
//
// Part 1, push latency. `tandem-primary run` and `tandem-standby run` (default pollInterval, 60 s;
// push channel over the primary's /v1/stream) on a directory filestore. 20 times: one row is
// inserted, `tandem-primary backup` (carried out by the daemon: it POSTs /v1/backup) commits a
// set, and the benchmark waits for the standby to log "set applied by the daemon" before the
// next. Measured from the set's committedAt in latest.json (taken just before latest.json is
// written, so the write is counted too) to the `time` of the standby's "apply started" log line
// (both processes log JSON lines with epoch-ms times from the same clock). Also broken down by
// the primary's "set-committed pushed" and the standby's "push: set committed" lines.
//
// Part 3, files between sets. A site whose files are content objects (keys.filesKeyFile), both
// daemons, `filesWatch` at its defaults (settle 2 s). BENCH_FILES_DELTAS times, one after another: a
// new 1 MB file of random bytes is written into the primary's paths.files, and the benchmark reads
// the standby's paths.files every 20 ms until the file is there with the same bytes (the standby
// renames it into place whole; any other content there fails the benchmark). Measured from the
// write's return (the file closed) to the first read that found it: the settle time, the delta's
// upload and commit, the push, the standby's apply. Runs while part 2's window runs on.
//
// Part 2, idle filestore requests. A second site on s3rver, its primary daemon running, and two
// idle standby daemons of it, each reaching s3rver through its own counting HTTP proxy on
// 127.0.0.1 (an independent count of the requests, by kind: conditional GET, GET, LIST, PUT ...):
// one at the default pollInterval (60 s), one at 2 s. Both have applied the site's one set and are
// connected to the push channel before the window starts; no backup of that site happens in it.
// The requests counted in the window give requests per poll (against tandem_standby_polls_total)
// and, times 60 polls an hour, requests per hour at the default interval; the 60-s standby's own
// count over the window is the cross-check. The window runs while part 1 runs (another site, another
// filestore, another database), so that the whole benchmark takes about four minutes.
import { randomFillSync } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { PRIMARY_BIN, STANDBY_BIN, dropDatabase, fmtS, loadavg, log, machine, median, printMachine, printResults, psql, runOk, verdict } from './lib/common.mjs';
import { BENCH_DB, addStandby, makeSite, parseJsonOut, removeSite } from './lib/site.mjs';
import { makeFilesSite } from './lib/files-tree.mjs';
import {
  classify,
  daemonInfo,
  httpRequest,
  metric,
  metricSum,
  peakRssMiB,
  s3FilestoreUrl,
  s3rverEnv,
  sleep,
  startCountingProxy,
  startDaemon,
  startS3rver,
  summarize,
  waitFor,
} from './lib/daemons.mjs';

const SETS = intEnv('BENCH_PUSH_SETS', 20, 1, 1000);
const DELTAS = intEnv('BENCH_FILES_DELTAS', 20, 1, 1000);
const IDLE_SECONDS = intEnv('BENCH_IDLE_SECONDS', 180, 10, 3600);
const PART1_STORE = process.env.BENCH_PUSH_FILESTORE ?? 'dir';
if (!['dir', 's3'].includes(PART1_STORE)) throw new Error(`BENCH_PUSH_FILESTORE must be dir or s3, got ${PART1_STORE}`);
const FAST_POLL_SECONDS = 2;
const DEFAULT_POLL_SECONDS = 60;

const PUSH_DB = `${BENCH_DB}_push`;
const STANDBY_DBS = { follow: `${PUSH_DB}_standby`, idle60: `${PUSH_DB}_idle60`, idle2: `${PUSH_DB}_idle2`, files: `${PUSH_DB}_files` };
const TOKEN = Buffer.from(randomFillSync(new Uint8Array(24))).toString('hex');
// The daemons log at info (the lines this benchmark reads), as JSON.
const daemonEnv = (extra = {}) => ({ ...process.env, TANDEM_LOG_LEVEL: 'info', TANDEM_LOG_FORMAT: 'json', ...extra });
const cliEnv = (extra = {}) => ({ ...process.env, TANDEM_LOG_LEVEL: 'warn', TANDEM_LOG_FORMAT: 'json', ...extra });

function intEnv(name, dflt, min, max) {
  const v = Number(process.env[name] ?? dflt);
  if (!(Number.isInteger(v) && v >= min && v <= max)) throw new Error(`${name} must be an integer ${min}..${max}, got ${process.env[name]}`);
  return v;
}

/** Nearest-rank percentile (p in 0..100) of xs. */
function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)];
}
const ms = (x) => `${Math.round(x)} ms`;

const allDbs = () => Object.values(STANDBY_DBS).flatMap((d) => [d, `${d}__tandem_new`, `${d}__tandem_old`]);

// ---- the small site ------------------------------------------------------------------------------

function createSmallDatabase() {
  dropDatabase(PUSH_DB);
  psql('postgres', `CREATE DATABASE "${PUSH_DB}"`);
  psql(
    PUSH_DB,
    `CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, body text NOT NULL, at timestamptz NOT NULL DEFAULT now());
     INSERT INTO items (name, body) SELECT 'item ' || i, repeat(md5(i::text), 8) FROM generate_series(1, 2000) i;
     CREATE INDEX items_name ON items (name);`,
  );
  for (const d of allDbs()) dropDatabase(d);
  for (const d of Object.values(STANDBY_DBS)) psql('postgres', `CREATE DATABASE "${d}"`);
  return Number(psql(PUSH_DB, `SELECT pg_database_size(current_database())`));
}

/** ~40 small files of random bytes (1-16 KiB) in 4 dirs. */
function createSmallTree() {
  const dir = mkdtempSync(join(os.tmpdir(), 'tandem-bench-push-files-'));
  let bytes = 0;
  for (let d = 0; d < 4; d++) {
    mkdirSync(join(dir, `d${d}`));
    for (let f = 0; f < 10; f++) {
      const buf = randomFillSync(Buffer.alloc(1024 * (1 + ((d * 10 + f) % 16))));
      writeFileSync(join(dir, `d${d}`, `f${f}.bin`), buf);
      bytes += buf.length;
    }
  }
  return { dir, bytes, files: 40 };
}

/** The standbys of the runs below, each with a token of its own (keys/standby-<id>.token). */
const STANDBY_IDS = ['idle60', 'idle2', 'follow'];
const PRIMARY_DAEMON_YAML = `schedule: "0 0 1 1 *"
timezone: UTC
server:
  listen: 127.0.0.1:0
  tokenFile: ./keys/control.token
  readTokenFile: ./keys/read.token
standbys:
${STANDBY_IDS.map((id) => `  - { id: ${id}, tokenFile: ./keys/standby-${id}.token }`).join('\n')}
`;

/** The daemon keys of a standby config; no pollInterval key unless given (the default is 60 s). */
const standbyDaemonYaml = ({ primaryListen, standbyId, pollInterval }) =>
  `primary:
  url: ws://${primaryListen}
  tokenFile: ./keys/standby-${standbyId}.token
server:
  listen: 127.0.0.1:0
  readTokenFile: ./keys/read.token
standbyId: ${standbyId}
${pollInterval ? `pollInterval: ${pollInterval}\n` : ''}`;

/**
 * A site (makeSite) with the daemon keys and the token; one --local backup (so that the primary
 * daemon has no missed run to make up and the standbys something to apply), then the primary daemon.
 */
async function startPrimarySite({ filesDir, filestoreUrl, env, name, filesObjects = false, standbyDb = STANDBY_DBS.follow }) {
  const site = (filesObjects ? makeFilesSite : makeSite)({ db: PUSH_DB, filesDir, standbyDb, filestoreUrl, primaryExtra: PRIMARY_DAEMON_YAML, env });
  // TOKEN is the monitoring token (what the bench reads /status and /metrics with); the others differ.
  writeFileSync(join(site.dir, 'keys', 'read.token'), `${TOKEN}\n`, { mode: 0o600 });
  writeFileSync(join(site.dir, 'keys', 'control.token'), `${TOKEN}-control\n`, { mode: 0o600 });
  for (const id of STANDBY_IDS) writeFileSync(join(site.dir, 'keys', `standby-${id}.token`), `${TOKEN}-${id}\n`, { mode: 0o600 });
  const first = await runOk(process.execPath, [PRIMARY_BIN, 'backup', '--local', '--config', site.primaryConfig], { env: cliEnv(env) });
  const firstSet = first.stdout.trim();
  const primary = startDaemon(PRIMARY_BIN, ['run', '--config', site.primaryConfig], { env: daemonEnv(env), name: `${name} primary` });
  const info = await daemonInfo(join(site.dir, 'state', 'primary'), primary);
  await waitFor(async () => (await httpRequest(info.listen, '/healthz').catch(() => null))?.status === 200, `${name} primary to answer /healthz`, 30_000, 50);
  return { site, primary, listen: info.listen, firstSet };
}

/** Starts a standby daemon from `config` and waits until it has applied `setId` and its push channel is up. */
async function startStandby({ config, stateDir, env, name, setId }) {
  const d = startDaemon(STANDBY_BIN, ['run', '--config', config], { env: daemonEnv(env), name });
  const info = await daemonInfo(stateDir, d);
  await d.waitForRecord((r) => r.msg === 'reported the applied set' && r.setId === setId, `${name}: reported the applied set ${setId}`, 120_000);
  await waitFor(
    async () => {
      const st = JSON.parse((await httpRequest(info.listen, '/status', { token: TOKEN })).body);
      return st.appliedSetId === setId && st.applying === null && st.push?.connected === true;
    },
    `${name} to be idle with the push channel up`,
    30_000,
    100,
  );
  return { daemon: d, listen: info.listen, stateDir };
}

const readMetrics = async (s) => (await httpRequest(s.listen, '/metrics', { token: TOKEN })).body;
const pollsOf = (text) => metricSum(text, 'tandem_standby_polls_total');

// ---- run -------------------------------------------------------------------------------------------

const m = machine();
console.log('tandem bench:push');
printMachine(m);

const cleanups = [];
const daemons = [];
let tree;
try {
  const dbBytes = createSmallDatabase();
  tree = createSmallTree();
  console.log(`data:    database ${PUSH_DB}: ${(dbBytes / 1e6).toFixed(1)} MB (pg_database_size, 2,000 rows); files: ${tree.files} files, ${(tree.bytes / 1e3).toFixed(0)} kB`);
  console.log(`         part 1: ${SETS} sets, filestore ${PART1_STORE === 'dir' ? 'a directory' : 's3rver'}, standby pollInterval default (60 s)`);
  console.log(`         part 2: idle standbys on s3rver behind counting proxies, pollInterval 60 s and ${FAST_POLL_SECONDS} s, window ${IDLE_SECONDS} s`);
  console.log(`         part 3: ${DELTAS} new 1 MB files on a site whose files are content objects, filesWatch at its defaults, a directory filestore`);

  // ---- part 2 set-up: s3rver, the idle site, its primary and two idle standbys, then the window opens.
  log('part 2 set-up: s3rver, two counting proxies, a site on s3rver, its primary daemon and two idle standby daemons');
  const s3 = await startS3rver();
  cleanups.push(() => s3.stop());
  const proxy60 = await startCountingProxy(s3.port);
  const proxy2 = await startCountingProxy(s3.port);
  cleanups.push(() => proxy60.close(), () => proxy2.close());
  const s3env = s3rverEnv();
  const idle = await startPrimarySite({ filesDir: tree.dir, filestoreUrl: s3FilestoreUrl(s3.endpoint, { prefix: 'idle/' }), env: s3env, name: 'idle-site' });
  cleanups.push(() => removeSite(idle.site));
  daemons.push(idle.primary);
  const idleStandbys = {};
  for (const [name, proxy, poll] of [
    ['idle60', proxy60, undefined],
    ['idle2', proxy2, `${FAST_POLL_SECONDS}s`],
  ]) {
    const sb = addStandby(idle.site, name, {
      standbyDb: STANDBY_DBS[name],
      create: true,
      filestoreUrl: s3FilestoreUrl(proxy.endpoint, { prefix: 'idle/' }),
      extra: standbyDaemonYaml({ primaryListen: idle.listen, standbyId: name, pollInterval: poll }),
    });
    const s = await startStandby({ config: sb.config, stateDir: sb.stateDir, env: s3env, name, setId: idle.firstSet });
    daemons.push(s.daemon);
    idleStandbys[name] = { ...s, proxy };
  }
  await sleep(3_000); // the reports and the first conditional polls are done
  const window = { startedAt: Date.now() };
  for (const s of Object.values(idleStandbys)) {
    s.polls0 = pollsOf(await readMetrics(s)); // before the count: a /metrics read may fetch heartbeat.json
    s.from = s.proxy.count();
  }
  log(`part 2 window opened (${IDLE_SECONDS} s; it runs on while part 1 runs)`);

  // ---- part 1: push latency.
  log(`part 1 set-up: a site on ${PART1_STORE === 'dir' ? 'a directory filestore' : 's3rver'}, both daemons`);
  const s3env1 = PART1_STORE === 's3' ? s3env : {};
  const follow = await startPrimarySite({
    filesDir: tree.dir,
    filestoreUrl: PART1_STORE === 's3' ? s3FilestoreUrl(s3.endpoint, { prefix: 'follow/' }) : undefined,
    env: s3env1,
    name: 'site',
  });
  cleanups.push(() => removeSite(follow.site));
  daemons.push(follow.primary);
  const sbf = addStandby(follow.site, 'standby', { standbyDb: STANDBY_DBS.follow, create: true, extra: standbyDaemonYaml({ primaryListen: follow.listen, standbyId: 'follow' }) });
  const standby = await startStandby({ config: sbf.config, stateDir: sbf.stateDir, env: s3env1, name: 'standby', setId: follow.firstSet });
  daemons.push(standby.daemon);
  const P = follow.primary;
  const S = standby.daemon;
  await sleep(500);

  log(`part 1: ${SETS} sets, one after another (load ${loadavg()})`);
  const rows = [];
  for (let i = 1; i <= SETS; i++) {
    psql(PUSH_DB, `INSERT INTO items (name, body) VALUES ('set ${i}', repeat('x', 100))`);
    const t0 = Date.now();
    const r = await runOk(process.execPath, [PRIMARY_BIN, 'backup', '--config', follow.site.primaryConfig, '--json'], { env: cliEnv(s3env1) });
    const cliReturned = Date.now();
    const { setId } = parseJsonOut(r.stdout, 'tandem-primary backup');
    const bySet = (msg) => (rec) => rec.setId === setId && (typeof msg === 'string' ? rec.msg === msg : msg.test(rec.msg));
    const applied = await S.waitForRecord(bySet('set applied by the daemon'), `set applied ${setId}`, 120_000);
    const pushed = P.records.find(bySet(/^set-committed pushed to \d+ standby/));
    if (!pushed) throw new Error(`set ${setId}: the primary daemon logged no "set-committed pushed": was the backup made by the daemon?\n${r.stderr}`);
    const committedLog = P.records.find(bySet('backup committed'));
    const received = S.records.find(bySet(/^push: set committed/));
    const newSet = S.records.find(bySet('latest.json names a new set'));
    const started = S.records.find(bySet('apply started'));
    if (!newSet || !started) throw new Error(`set ${setId}: missing standby log lines\n${S.tail()}`);
    const committedAt = Date.parse(newSet.committedAt);
    const row = {
      setId,
      reason: newSet.reason,
      latency: started.time - committedAt,
      fromCommittedLog: committedLog ? started.time - committedLog.time : NaN,
      toPushed: pushed.time - committedAt,
      pushToReceived: received ? received.time - pushed.time : NaN,
      receivedToStarted: received ? started.time - received.time : NaN,
      cliAfterCommit: cliReturned - committedAt,
      backupMs: committedAt - t0,
      applyMs: applied.time - started.time,
    };
    rows.push(row);
    log(
      `  ${String(i).padStart(2)} ${setId}: committedAt -> apply started ${ms(row.latency)} (pushed +${ms(row.toPushed)}, received +${ms(row.pushToReceived)}, ` +
        `started +${ms(row.receivedToStarted)}; by ${row.reason}); apply ${ms(row.applyMs)}`,
    );
    await sleep(300); // the standby's report and its look-again poll after the apply
  }
  const part1Load = loadavg();

  // ---- part 3: files between sets.
  log('part 3 set-up: a site whose files are content objects, both daemons');
  const filesTree = createSmallTree();
  cleanups.push(() => rmSync(filesTree.dir, { recursive: true, force: true }));
  const fsite = await startPrimarySite({ filesDir: filesTree.dir, env: {}, name: 'files-site', filesObjects: true, standbyDb: STANDBY_DBS.files });
  cleanups.push(() => removeSite(fsite.site));
  daemons.push(fsite.primary);
  appendFileSync(fsite.site.standbyConfig, standbyDaemonYaml({ primaryListen: fsite.listen, standbyId: 'follow' }));
  const fstandby = await startStandby({ config: fsite.site.standbyConfig, stateDir: join(fsite.site.dir, 'state', 'standby'), env: {}, name: 'files standby', setId: fsite.firstSet });
  daemons.push(fstandby.daemon);
  await waitFor(
    async () => (JSON.parse((await httpRequest(fsite.listen, '/status', { token: TOKEN })).body).filesWatch?.mode ?? 'stopped') !== 'stopped',
    "the primary's files watch to start",
    30_000,
    50,
  );
  log(`part 3: ${DELTAS} new 1 MB files, one after another (load ${loadavg()})`);
  const deltaMs = [];
  for (let i = 1; i <= DELTAS; i++) {
    const rel = join('d0', `upload-${i}.bin`);
    const data = randomFillSync(Buffer.alloc(1_000_000));
    writeFileSync(join(filesTree.dir, rel), data);
    const t0 = performance.now();
    const there = join(fsite.site.dir, 'standby', 'files', rel);
    await waitFor(
      async () => {
        let got;
        try {
          got = readFileSync(there);
        } catch {
          return false;
        }
        if (!got.equals(data)) throw new Error(`${there}: ${got.length} bytes that are not the primary's ${data.length}`);
        return true;
      },
      `${rel} on the standby`,
      60_000,
      20,
    );
    deltaMs.push(performance.now() - t0);
    log(`  ${String(i).padStart(2)} ${rel}: on the standby after ${ms(deltaMs.at(-1))}`);
    await sleep(200);
  }
  const deltaRss = { primary: peakRssMiB(fsite.primary.child.pid), standby: peakRssMiB(fstandby.daemon.child.pid) };

  // ---- part 2: close the window.
  const left = window.startedAt + IDLE_SECONDS * 1000 - Date.now();
  if (left > 0) {
    log(`part 2: ${Math.ceil(left / 1000)} s left of the window`);
    await sleep(left);
  }
  const windowSeconds = (Date.now() - window.startedAt) / 1000;
  const idleResults = {};
  for (const [name, s] of Object.entries(idleStandbys)) {
    const reqs = s.proxy.requests.slice(s.from); // before the /metrics read below
    const text = await readMetrics(s);
    const polls = pollsOf(text) - s.polls0;
    const kinds = summarize(reqs);
    const lists = reqs.filter((q) => classify(q) === 'LIST').length;
    const other = reqs.filter((q) => !(classify(q) === 'GET-conditional' && q.path.endsWith('/latest.json'))).length;
    // The spacing of its polls, from the proxy's clock: the last poll before the window and those in it.
    const pollTimes = s.proxy.requests
      .slice(Math.max(0, s.from - 1))
      .filter((q) => classify(q) === 'GET-conditional' && q.path.endsWith('/latest.json'))
      .map((q) => q.at);
    const gaps = pollTimes.slice(1).map((t, i) => (t - pollTimes[i]) / 1000);
    idleResults[name] = {
      meanGapSeconds: gaps.length > 0 ? gaps.reduce((a, b) => a + b, 0) / gaps.length : NaN,
      gaps,
      requests: reqs.length,
      polls,
      perPoll: reqs.length / Math.max(polls, 1),
      lists,
      other,
      kinds,
      paths: [...new Set(reqs.map((q) => `${q.method} ${q.path}`))],
      changed: metric(text, 'tandem_standby_polls_total', { result: 'changed' }) ?? 0,
    };
  }

  // ---- report
  const lat = rows.map((r) => r.latency);
  const p50 = percentile(lat, 50);
  const p99 = percentile(lat, 99);
  const byReason = rows.reduce((a, r) => ((a[r.reason] = (a[r.reason] ?? 0) + 1), a), {});
  const med = (k) => median(rows.map((r) => r[k]).filter((x) => !Number.isNaN(x)));
  console.log('\nraw figures, part 1 (ms; per set in commit order):');
  console.log(`  committedAt -> apply started   ${rows.map((r) => Math.round(r.latency)).join(', ')}`);
  console.log(`  sorted                         ${[...lat].sort((a, b) => a - b).map(Math.round).join(', ')}`);
  console.log(`  p50 ${ms(p50)}, p99 ${ms(p99)} (nearest rank: value ${Math.ceil(0.99 * rows.length)} of ${rows.length} sorted), max ${ms(Math.max(...lat))}, min ${ms(Math.min(...lat))}`);
  console.log(`  found by: ${Object.entries(byReason).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  console.log(
    `  medians: committedAt -> "set-committed pushed" ${ms(med('toPushed'))}; -> standby "push: set committed" +${ms(med('pushToReceived'))}; ` +
      `-> "apply started" +${ms(med('receivedToStarted'))}`,
  );
  console.log(`  from the primary's "backup committed" line (after the latest.json write returned) to apply started: p50 ${ms(percentile(rows.map((r) => r.fromCommittedLog), 50))}, max ${ms(Math.max(...rows.map((r) => r.fromCommittedLog)))}`);
  console.log(`  backup command start -> committedAt: median ${ms(med('backupMs'))}; committedAt -> backup command returned: median ${ms(med('cliAfterCommit'))}; apply (started -> applied): median ${ms(med('applyMs'))}`);
  console.log(`  load average after part 1: ${part1Load}`);
  console.log(`\nraw figures, part 2 (window ${windowSeconds.toFixed(0)} s):`);
  for (const [name, r] of Object.entries(idleResults)) {
    console.log(`  ${name}: ${r.requests} requests, ${r.polls} polls (tandem_standby_polls_total; changed ${r.changed} since start) = ${r.perPoll.toFixed(2)} per poll; ${JSON.stringify(r.kinds)}`);
    console.log(`          ${r.paths.join('; ') || '(none)'}`);
  }
  const fast = idleResults.idle2;
  const slow = idleResults.idle60;
  const perHour = fast.perPoll * (3600 / DEFAULT_POLL_SECONDS);
  const slowPerHour = (3600 / slow.meanGapSeconds) * slow.perPoll;
  console.log(
    `  at ${DEFAULT_POLL_SECONDS} s: ${fast.perPoll.toFixed(2)} requests/poll x ${3600 / DEFAULT_POLL_SECONDS} polls/h = ${perHour.toFixed(0)} requests/h (extrapolated from the ${FAST_POLL_SECONDS}-s standby)`,
  );
  console.log(
    `  cross-check, the ${DEFAULT_POLL_SECONDS}-s standby itself: ${slow.requests} requests in ${windowSeconds.toFixed(0)} s (${(windowSeconds / DEFAULT_POLL_SECONDS).toFixed(1)} poll intervals; ` +
      `how many polls fall inside depends on the phase); its polls ${slow.meanGapSeconds.toFixed(1)} s apart on average ` +
      `(${slow.gaps.map((g) => g.toFixed(1)).join(', ')} s by the proxy's clock; ${fast.meanGapSeconds.toFixed(2)} s for the ${FAST_POLL_SECONDS}-s one) = ${slowPerHour.toFixed(0)} requests/h`,
  );

  console.log(`\nraw figures, part 3 (ms; a new 1 MB file written on the primary -> the same bytes on the standby):`);
  console.log(`  in order                       ${deltaMs.map(Math.round).join(', ')}`);
  console.log(`  sorted                         ${[...deltaMs].sort((a, b) => a - b).map(Math.round).join(', ')}`);
  console.log(`  peak RSS (VmHWM) of the daemons: tandem-primary run ${deltaRss.primary.toFixed(1)} MiB, tandem-standby run ${deltaRss.standby.toFixed(1)} MiB`);
  const d50 = percentile(deltaMs, 50);
  const d99 = percentile(deltaMs, 99);

  const results = [
    verdict('push: committedAt -> apply started, p99', p99, '<=', 1000, 'ms', `p50 ${ms(p50)}, ${rows.length} sets, ${Object.entries(byReason).map(([k, v]) => `${v} by ${k}`).join(', ')}`),
    verdict('files delta: new 1 MB file -> on the standby, p99', d99 / 1000, '<=', 10, 's', `p50 ${(d50 / 1000).toFixed(1)} s, ${deltaMs.length} files, settle 2 s (the default) included`),
    verdict("files delta: the daemons' peak RSS", Math.max(deltaRss.primary, deltaRss.standby), '<=', 200, 'MiB', `primary ${deltaRss.primary.toFixed(1)}, standby ${deltaRss.standby.toFixed(1)} MiB (VmHWM, from their start through part 3)`),
    verdict('idle standby: filestore requests per poll', fast.perPoll, '<=', 1, 'ratio', `${fast.requests} requests / ${fast.polls} polls at ${FAST_POLL_SECONDS} s, counted by the proxy`),
    verdict(`idle standby: requests/hour at ${DEFAULT_POLL_SECONDS} s`, perHour, '<=', 60, '/h', `from ${FAST_POLL_SECONDS} s; at ${DEFAULT_POLL_SECONDS} s itself: ${slowPerHour.toFixed(0)}/h (${slow.requests} in ${windowSeconds.toFixed(0)} s)`),
    verdict('idle standby: LIST requests', fast.lists + slow.lists, '<=', 0, 'req', 'both idle standbys, whole window'),
    verdict('idle standby: not a conditional GET of latest.json', fast.other + slow.other, '<=', 0, 'req', 'both idle standbys, whole window'),
  ];
  printResults(`bench:push results (${SETS} sets; idle window ${windowSeconds.toFixed(0)} s):`, results);
  if (process.env.BENCH_JSON) writeFileSync(process.env.BENCH_JSON, JSON.stringify({ machine: m, rows, deltaMs, idleResults, results, load: loadavg() }, null, 2));
} finally {
  for (const d of daemons.reverse()) {
    const r = await d.stop().catch(() => null);
    if (r && r.code !== 0) log(`${d.name} exited ${r.code ?? r.signal}:\n${d.tail()}`);
  }
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch((e) => log(`clean-up: ${e.message}`));
  if (tree) rmSync(tree.dir, { recursive: true, force: true });
  for (const d of [...allDbs(), PUSH_DB]) {
    try {
      dropDatabase(d);
    } catch (e) {
      log(`could not drop ${d}: ${e.message}`);
    }
  }
}
