// npm run bench:sites: what one daemon pair serving many sites costs in memory (see
// docs/benchmarks.md). Zotonic's layout: every site a schema of one shared database, every site
// with its own small config, security and files trees; one config file per agent holding them all.
//
//   BENCH_SITES=20         sites served by the pair
//   BENCH_SITES_ROUNDS=3   rounds of "back up every site, wait until the standby applied every set"
//   BENCH_SITES_ROWS=5000  rows per site's table (~1.3 MB of dump per site)
//   BENCH_DB, BENCH_KEEP_TMP  as for bench/backup.mjs; the databases are <BENCH_DB>_sites_*
//
// The same is run for ONE site first, the reference in the same process run: what a pair of
// daemons for a single site costs. Twenty separate pairs would cost twenty times that; the ratio
// printed is the 20-site pair's peak RSS against it. The RSS of both daemons is sampled every
// 100 ms from /proc/<pid>/status (VmRSS) while the rounds run, and VmHWM (the kernel's peak) read
// at the end. Target: at most 250 MB on each side for 20 sites.
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { PRIMARY_BIN, STANDBY_BIN, dropDatabase, log, machine, pgUrl, printMachine, printResults, psql, runOk, verdict } from './lib/common.mjs';
import { BENCH_DB } from './lib/site.mjs';
import { daemonInfo, httpRequest, sleep, startDaemon, waitFor } from './lib/daemons.mjs';

const SITES = intEnv('BENCH_SITES', 20, 1, 200);
const ROUNDS = intEnv('BENCH_SITES_ROUNDS', 3, 1, 50);
const ROWS = intEnv('BENCH_SITES_ROWS', 5000, 1, 10_000_000);
const TARGET_MB = 250;
const env = { ...process.env, TANDEM_LOG_LEVEL: 'warn', TANDEM_LOG_FORMAT: 'json' };

function intEnv(name, dflt, min, max) {
  const v = Number(process.env[name] ?? dflt);
  if (!(Number.isInteger(v) && v >= min && v <= max)) throw new Error(`${name} must be an integer ${min}..${max}, got ${process.env[name]}`);
  return v;
}

function rss(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) * 1024;
    return { now: kb('VmRSS'), peak: kb('VmHWM') };
  } catch {
    return { now: NaN, peak: NaN };
  }
}
const mb = (b) => b / 1e6;

async function runPair(n, tag) {
  const root = mkdtempSync(join(os.tmpdir(), `tandem-bench-sites-${tag}-`));
  const pdb = `${BENCH_DB}_sites_${tag}_p`;
  const sdb = `${BENCH_DB}_sites_${tag}_s`;
  for (const db of [pdb, sdb]) dropDatabase(db);
  psql('postgres', `CREATE DATABASE ${pdb}`);
  psql('postgres', `CREATE DATABASE ${sdb}`);
  psql(sdb, 'CREATE EXTENSION citext SCHEMA public');
  const names = Array.from({ length: n }, (_, i) => `bench-${tag}-${String(i + 1).padStart(2, '0')}`);
  const schemas = names.map((_, i) => `site_${String(i + 1).padStart(2, '0')}`);
  const sql = ['CREATE EXTENSION citext SCHEMA public;'];
  for (const s of schemas) {
    sql.push(`CREATE SCHEMA ${s};`, `CREATE TABLE ${s}.rsc (id serial PRIMARY KEY, name public.citext NOT NULL, props jsonb, body text);`);
    sql.push(`INSERT INTO ${s}.rsc (name, props, body) SELECT '${s} ' || g, jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b')), md5(g::text) || repeat(' lorem ipsum', 16) FROM generate_series(1, ${ROWS}) g;`);
    sql.push(`CREATE INDEX ON ${s}.rsc (lower(body));`);
  }
  psql(pdb, sql.join('\n'));

  const keysDir = join(root, 'keys');
  await runOk(process.execPath, [PRIMARY_BIN, 'init', '--keys-dir', keysDir], { env });
  const token = (name) => {
    const f = join(keysDir, `${name}.token`);
    writeFileSync(f, `${randomBytes(24).toString('hex')}\n`, { mode: 0o600 });
    return f;
  };
  const tokens = { control: token('control'), read: token('read'), standby: token('standby') };
  const tokenOf = (f) => readFileSync(f, 'utf8').trim();
  const tree = (base, site) => {
    const p = { config: join(base, 'priv'), security: join(base, 'security'), files: join(base, 'files') };
    for (const d of Object.values(p)) mkdirSync(d, { recursive: true });
    writeFileSync(join(p.config, 'site.yml'), `site: ${site}\nhostname: ${site}.example.com\n`);
    writeFileSync(join(p.security, 'site.key'), randomBytes(64).toString('base64'), { mode: 0o600 });
    for (let i = 0; i < 4; i++) writeFileSync(join(p.files, `media-${i}.bin`), randomBytes(64 * 1024));
    return p;
  };
  const filestore = { url: `file://${join(root, 'store')}` };
  const primaryFile = join(root, 'primary.yml');
  const pState = (s) => join(root, 'p-state', s);
  const sState = (s) => join(root, 's-state', s);
  const primarySites = names.map((site, i) => ({ site, database: { schema: schemas[i] }, paths: tree(join(root, 'p', site), site), stateDir: pState(site) }));
  const standbySites = names.map((site, i) => ({ site, database: { schema: schemas[i] }, paths: tree(join(root, 's', site), site), stateDir: sState(site) }));
  const primaryDoc = {
    database: { url: pgUrl(pdb) },
    filestore,
    keys: { recipientFile: join(keysDir, 'backup.agepub'), signingKeyFile: join(keysDir, 'signing.key') },
    server: { listen: '127.0.0.1:0', tokenFile: tokens.control, readTokenFile: tokens.read },
    standbys: [{ id: 'bench-standby', tokenFile: tokens.standby }],
    concurrency: 2,
    schedule: '0 3 * * *',
  };
  // One site: the one-site config operators write today (site: at the top level).
  const oneSite = (doc, entry) => ({ ...doc, ...entry, database: { ...doc.database, ...entry.database } });
  writeFileSync(primaryFile, stringify(n === 1 ? oneSite(primaryDoc, primarySites[0]) : { ...primaryDoc, sites: primarySites }));
  await runOk(process.execPath, [PRIMARY_BIN, 'init', '--filestore', '--config', primaryFile], { env });

  const primary = startDaemon(PRIMARY_BIN, ['run', '--config', primaryFile], { env, name: 'tandem-primary' });
  const pListen = (await daemonInfo(pState(names[0]), primary, 60_000)).listen;
  const standbyFile = join(root, 'standby.yml');
  const standbyDoc = {
    database: { url: pgUrl(sdb), restoreJobs: 1 },
    filestore,
    keys: { identityFile: join(keysDir, 'backup.agekey'), verifyKeyFile: join(keysDir, 'signing.pub') },
    server: { listen: '127.0.0.1:0', readTokenFile: tokens.read },
    primary: { url: `ws://${pListen}`, tokenFile: tokens.standby },
    standbyId: 'bench-standby',
    pollInterval: '60s',
    concurrency: 2,
    restartCommand: 'true',
  };
  writeFileSync(standbyFile, stringify(n === 1 ? oneSite(standbyDoc, standbySites[0]) : { ...standbyDoc, sites: standbySites }));
  const standby = startDaemon(STANDBY_BIN, ['run', '--config', standbyFile], { env, name: 'tandem-standby' });
  await daemonInfo(sState(names[0]), standby, 60_000);

  const samples = { primary: [], standby: [] };
  const sampler = setInterval(() => {
    samples.primary.push(rss(primary.child.pid).now);
    samples.standby.push(rss(standby.child.pid).now);
  }, 100);
  const applied = (s) => {
    try {
      return JSON.parse(readFileSync(join(sState(s), 'applied.json'), 'utf8')).setId;
    } catch {
      return null;
    }
  };
  const latest = (s) => {
    try {
      return JSON.parse(readFileSync(join(root, 'store', s, 'latest.json'), 'utf8')).setId;
    } catch {
      return null;
    }
  };
  const t0 = performance.now();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      if (round > 1) for (const s of schemas) psql(pdb, `UPDATE ${s}.rsc SET props = props || '{"round": ${round}}' WHERE id % 7 = 0`);
      // Round 1: a site without a set is backed up when the daemon starts (a missed run).
      if (round > 1) {
        const query = n === 1 ? '' : '?site=';
        const results = await Promise.all(names.map((s) => httpRequest(pListen, `/v1/backup${query ? `${query}${s}` : ''}`, { method: 'POST', token: tokenOf(tokens.control) })));
        for (const [i, r] of results.entries()) if (r.status !== 200) throw new Error(`backup of ${names[i]}: HTTP ${r.status} ${r.body}\n${primary.tail()}`);
      }
      await waitFor(() => names.every((s) => applied(s) !== null && applied(s) === latest(s)), `every site applied (round ${round})`, 600_000, 200);
      log(`${tag}: round ${round}: ${n} site${n > 1 ? 's' : ''} backed up and applied`);
    }
    await sleep(1000);
  } finally {
    clearInterval(sampler);
  }
  const seconds = (performance.now() - t0) / 1000;
  const end = { primary: rss(primary.child.pid), standby: rss(standby.child.pid) };
  await standby.stop();
  await primary.stop();
  for (const db of [pdb, sdb]) dropDatabase(db);
  if (!process.env.BENCH_KEEP_TMP) rmSync(root, { recursive: true, force: true });
  const peakOf = (xs, hwm) => Math.max(hwm, ...xs.filter(Number.isFinite));
  return {
    n,
    seconds,
    primary: { peak: peakOf(samples.primary, end.primary.peak), idle: end.primary.now },
    standby: { peak: peakOf(samples.standby, end.standby.peak), idle: end.standby.now },
  };
}

printMachine(machine());
log(`bench:sites: one site (reference), then ${SITES} sites; ${ROUNDS} rounds each, ${ROWS} rows per site`);
const one = await runPair(1, 'one');
const many = await runPair(SITES, 'many');
for (const r of [one, many]) {
  console.log(
    `  ${String(r.n).padStart(3)} site${r.n > 1 ? 's' : ' '}: ${r.seconds.toFixed(1)} s; tandem-primary peak ${mb(r.primary.peak).toFixed(0)} MB (${mb(r.primary.idle).toFixed(0)} MB at the end), tandem-standby peak ${mb(r.standby.peak).toFixed(0)} MB (${mb(r.standby.idle).toFixed(0)} MB at the end)`,
  );
}
printResults(`bench:sites (${SITES} sites on one daemon pair)`, [
  verdict(`tandem-primary peak RSS, ${SITES} sites`, mb(many.primary.peak), '<=', TARGET_MB, 'MB', `one site: ${mb(one.primary.peak).toFixed(0)} MB; ${SITES} separate daemons: ~${(mb(one.primary.peak) * SITES).toFixed(0)} MB (ratio ${(many.primary.peak / (one.primary.peak * SITES)).toFixed(2)})`),
  verdict(`tandem-standby peak RSS, ${SITES} sites`, mb(many.standby.peak), '<=', TARGET_MB, 'MB', `one site: ${mb(one.standby.peak).toFixed(0)} MB; ${SITES} separate daemons: ~${(mb(one.standby.peak) * SITES).toFixed(0)} MB (ratio ${(many.standby.peak / (one.standby.peak * SITES)).toFixed(2)})`),
]);
