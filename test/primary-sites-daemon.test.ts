/**
 * One `tandem-primary run` serving several sites (a config with `sites:`): three sites, each a
 * schema of one shared database but the third, whose database is down (its url names a closed
 * port), on ONE port with one set of tokens. Backups go one at a time (concurrency 1): the missed
 * runs of all three at start-up and three requested together. /status lists every site, /metrics
 * labels every site's series (and passes promtool), POST /v1/backup takes ?site=. Standbys: a
 * plain connection of one site and a ?mux=1 connection carrying two each get their site's
 * set-committed; a newer connection of the same standby replaces one site's channel, not the
 * shared socket. A site whose start is refused (its BACKUP sentinel) is reported and the others
 * run; with every site refused the daemon exits 2. Everything real: the built CLI, PostgreSQL,
 * pg_dump, a directory filestore, `ws` clients with a listed standby's token.
 *
 * Needs: `npm run build` first, PostgreSQL on 127.0.0.1:5432 (or TANDEM_TEST_PG), pg_dump, promtool
 * and chromium on PATH (scripts/setup.sh --test).
 */
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { stringify as toYaml } from 'yaml';
import { loadVerifyKeyFile, openFilestore, raiseEpoch, verifyHeartbeat } from '@tandem/shared';
import {
  closedPort,
  createSiteTree,
  dbUrl,
  dropDatabase,
  ensurePostgres,
  initFilestore,
  logRecords,
  makeKeys,
  messageLines,
  requireBuilt,
  requireCommands,
  runCommand,
  runPrimary,
  startPrimary,
  tmpDir,
  waitFor,
  withDb,
  type KeyFiles,
  type RunningPrimary,
} from './support/site.js';
import { writeTokens, type TokenSet } from './support/tokens.js';

const DB = `tandem_sites_daemon_${process.pid}`;
const SITES = ['alpha', 'beta', 'gamma'] as const;
type SiteName = (typeof SITES)[number];
/** gamma's database is down: its url names a port nothing listens on. */
const DOWN: SiteName = 'gamma';

let work: string;
let keys: KeyFiles;
let tokens: TokenSet;
let store: string;
let config: string;
let port: number;
let daemon: RunningPrimary | undefined;
const sockets: WebSocket[] = [];
const stateDir = (site: string) => join(work, 'state', site);
const sitePaths: Record<string, { config: string; security: string; files: string }> = {};

beforeAll(async () => {
  requireCommands(['pg_dump', 'promtool', 'chromium']);
  requireBuilt();
  await ensurePostgres();
  work = await tmpDir('tandem-sites-daemon-');
  store = join(work, 'store');
  await withDb('postgres', (c) => c.query(`CREATE DATABASE ${DB}`));
  await withDb(DB, async (c) => {
    for (const site of SITES) {
      await c.query(`CREATE SCHEMA s_${site}`);
      await c.query(`CREATE TABLE s_${site}.rsc (id serial PRIMARY KEY, title text NOT NULL)`);
      await c.query(`INSERT INTO s_${site}.rsc (title) SELECT '${site} ' || g FROM generate_series(1, 100) g`);
    }
  });
  let downPort: number;
  [keys, tokens, port, downPort] = await Promise.all([makeKeys(join(work, 'keys')), writeTokens(join(work, 'tokens'), 'sites', ['sb1', 'sb2']), closedPort(), closedPort()]);
  for (const site of SITES) sitePaths[site] = await createSiteTree(join(work, 'sites', site));
  config = join(work, 'primary.yml');
  await writeFile(
    config,
    toYaml({
      filestore: { url: pathToFileURL(store).href },
      keys: { recipientFile: keys.recipientFile, signingKeyFile: keys.signingKeyFile },
      server: tokens.primaryServer(`127.0.0.1:${port}`),
      standbys: tokens.primaryStandbys(),
      heartbeatInterval: '1s',
      schedule: '0 3 * * *',
      timezone: 'UTC',
      concurrency: 1,
      sites: SITES.map((site) => ({
        site,
        database: { url: site === DOWN ? `postgres://postgres@127.0.0.1:${downPort}/${DB}` : dbUrl(DB), schema: `s_${site}` },
        paths: sitePaths[site],
        stateDir: stateDir(site),
      })),
    }),
  );
  await initFilestore(config);
});

afterAll(async () => {
  for (const s of sockets) s.terminate();
  if (daemon && daemon.child.exitCode === null) {
    daemon.child.kill('SIGKILL');
    await daemon.result;
  }
  await dropDatabase(DB).catch(() => undefined);
  if (work) await rm(work, { recursive: true, force: true });
});

const base = () => `http://127.0.0.1:${port}`;
const control = () => ({ authorization: `Bearer ${tokens.control.token}` });
const log = () => logRecords(daemon!.stderrSoFar());

async function getJson(path: string, status = 200): Promise<any> {
  const r = await fetch(`${base()}${path}`, { headers: control() });
  const body = await r.text();
  expect(r.status, body).toBe(status);
  return JSON.parse(body);
}

const post = (path: string) => fetch(`${base()}${path}`, { method: 'POST', headers: control() });

async function startDaemon(): Promise<Record<string, unknown>> {
  daemon = startPrimary(['run', '--config', config], { timeoutMs: 180_000 });
  return waitFor(() => log().find((r) => String(r.msg).startsWith('tandem-primary daemon ready')), 'the ready line', 30_000);
}

async function stopDaemon(): Promise<void> {
  daemon!.child.kill('SIGTERM');
  const r = await daemon!.result;
  expect(r.code, r.stderr.slice(-2000)).toBe(0);
}

interface Run {
  site: string;
  trigger: string;
  start: number;
  end: number;
  outcome: 'committed' | 'failed';
}

/** Every backup the log shows, from "backup starting" to its commit or failure. */
function backupRuns(): Run[] {
  const runs: Run[] = [];
  const open = new Map<string, Run>();
  for (const r of log()) {
    const site = String(r.site);
    if (r.msg === 'backup starting') {
      const run: Run = { site, trigger: String(r.trigger), start: Number(r.time), end: Number.NaN, outcome: 'failed' };
      open.set(site, run);
      runs.push(run);
    } else if ((r.msg === 'backup committed' || r.msg === 'backup failed; nothing committed') && open.has(site)) {
      const run = open.get(site)!;
      run.end = Number(r.time);
      run.outcome = r.msg === 'backup committed' ? 'committed' : 'failed';
      open.delete(site);
    }
  }
  return runs;
}

/** No two backups ran at the same time (concurrency 1). */
function expectOneAtATime(runs: Run[]): void {
  const sorted = [...runs].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    expect(Number.isNaN(prev.end), `${prev.site}'s backup ended`).toBe(false);
    expect(cur.start, `${cur.site}'s backup started after ${prev.site}'s ended`).toBeGreaterThanOrEqual(prev.end);
  }
}

interface Client {
  ws: WebSocket;
  /** Frames as received (a mux client's are envelopes). */
  frames: Array<Record<string, any>>;
  closed: Promise<{ code: number; reason: string }>;
}

async function connect(standby: 'sb1' | 'sb2', mux: boolean): Promise<Client> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream${mux ? '?mux=1' : ''}`, { headers: { authorization: `Bearer ${tokens.standbys[standby]!.token}` } });
  sockets.push(ws);
  const frames: Array<Record<string, any>> = [];
  ws.on('message', (d) => frames.push(JSON.parse(d.toString()) as Record<string, any>));
  const closed = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  return { ws, frames, closed };
}

const hello = (standbyId: string, site: string) => JSON.stringify({ type: 'hello', standbyId, site, appliedSetId: null, appliedCreatedAt: null });
const envelope = (site: string, data: string) => JSON.stringify({ mux: 1, site, data });
/** The messages of `site` a mux client received (unwrapped), and the closes of its channels. */
const muxData = (c: Client, site: string) => c.frames.filter((f) => f.site === site && typeof f.data === 'string').map((f) => JSON.parse(f.data) as Record<string, any>);
const muxClosed = (c: Client, site: string) => c.frames.find((f) => f.site === site && f.closed !== undefined)?.closed as { code: number; reason: string } | undefined;

const setIds: Record<string, string[]> = { alpha: [], beta: [] };
let plain: Client;
let mux: Client;

describe('tandem-primary run with three sites', () => {
  it('serves every site on one port; the missed runs at start-up back up one site at a time (concurrency 1)', async () => {
    const ready = await startDaemon();
    expect(ready.listen).toBe(`127.0.0.1:${port}`);
    expect(ready.sites).toEqual([...SITES]);
    expect(ready.concurrency).toBe(1);
    // Each site is ready on its own line, with its own next run.
    for (const site of SITES) expect(log().some((r) => r.site === site && String(r.msg).startsWith(`site "${site}" ready`))).toBe(true);
    // Each site's daemon.json, in its own state dir, names the one address they share.
    for (const site of SITES) {
      const info = JSON.parse(await readFile(join(stateDir(site), 'daemon.json'), 'utf8')) as Record<string, unknown>;
      expect(info).toMatchObject({ agent: 'tandem-primary', site, listen: `127.0.0.1:${port}`, pid: daemon!.child.pid });
    }

    // No site had a backup: each runs its missed one at once, and they wait for the one slot.
    await waitFor(() => backupRuns().filter((r) => r.trigger === 'missed' && !Number.isNaN(r.end)).length === 3, 'the three start-up backups', 60_000);
    const runs = backupRuns();
    expect(runs.map((r) => `${r.site}:${r.outcome}`).sort()).toEqual(['alpha:committed', 'beta:committed', 'gamma:failed']);
    expectOneAtATime(runs);
    const waits = log().filter((r) => String(r.msg).startsWith('backup waiting for a slot'));
    expect(waits.length, 'two of the three waited for the slot').toBeGreaterThanOrEqual(2);
    expect(waits[0]).toMatchObject({ concurrency: 1, running: 1 });
  });

  it('/status lists all three sites; ?site=NAME gives that one; an unknown name is a 404 naming them', async () => {
    // A run is logged as ended a moment before the site records it for /status: under load, look again.
    const all = await waitFor(async () => {
      const doc = await getJson('/status');
      return SITES.every((site) => doc.sites?.[site]?.lastBackup != null) ? doc : null;
    }, 'every site to record its start-up backup', 30_000, 50);
    expect(Object.keys(all)).toEqual(['sites']);
    expect(Object.keys(all.sites)).toEqual([...SITES]);
    for (const site of SITES) {
      expect(all.sites[site]).toMatchObject({ site, epoch: 1, fenced: null, schedule: '0 3 * * *', timezone: 'UTC', pid: daemon!.child.pid });
    }
    expect(all.sites.alpha.lastBackup).toMatchObject({ outcome: 'ok', trigger: 'missed' });
    expect(all.sites.beta.lastBackup).toMatchObject({ outcome: 'ok', trigger: 'missed' });
    // gamma's database is down: its backup failed, saying why; the others were not held up by it.
    expect(all.sites.gamma.lastBackup).toMatchObject({ outcome: 'failed', trigger: 'missed' });
    expect(all.sites.gamma.lastBackup.error).toMatch(/connect|ECONNREFUSED|could not|server/i);
    expect(all.sites.gamma.latest).toBeNull();
    // Each site's own set (set ids are per site: two sites backed up in the same second may share one).
    for (const site of ['alpha', 'beta']) expect(all.sites[site].latest.setId).toMatch(/^\d{8}T\d{6}Z-e1-\d{6}$/);
    const alpha = await getJson('/status?site=alpha');
    expect(alpha).toMatchObject({ site: 'alpha', latest: { setId: all.sites.alpha.latest.setId } });

    const beta = await getJson('/status?site=beta');
    expect(beta).toMatchObject({ site: 'beta', latest: { setId: all.sites.beta.latest.setId } });
    expect(beta.sites).toBeUndefined();

    const unknown = await getJson('/status?site=delta', 404);
    expect(unknown.error.code).toBe('UNKNOWN_SITE');
    expect(unknown.error.message).toBe('GET /status: this primary serves no site "delta"; it serves "alpha", "beta", "gamma"');
  });

  it('a plain connection of one site and a ?mux=1 connection of two each get their site\'s set-committed; backups requested together run one at a time', async () => {
    plain = await connect('sb1', false);
    plain.ws.send(hello('sb1', 'alpha'));
    mux = await connect('sb2', true);
    mux.ws.send(envelope('alpha', hello('sb2', 'alpha')));
    mux.ws.send(envelope('beta', hello('sb2', 'beta')));
    // With several sites the primary answers a plain connection once its hello named the site.
    await waitFor(() => plain.frames.some((f) => f.type === 'hello'), "the primary's hello on the plain connection", 10_000);
    expect(plain.frames.find((f) => f.type === 'hello')).toMatchObject({ site: 'alpha', epoch: 1 });
    await waitFor(() => muxData(mux, 'alpha').some((m) => m.type === 'hello') && muxData(mux, 'beta').some((m) => m.type === 'hello'), 'hellos on both mux channels', 10_000);
    expect(muxData(mux, 'beta').find((m) => m.type === 'hello')).toMatchObject({ site: 'beta', epoch: 1 });
    await waitFor(async () => {
      const st = await getJson('/status');
      return st.sites.alpha.standbys.length === 2 && st.sites.beta.standbys.length === 1 && st.sites.gamma.standbys.length === 0;
    }, 'the standbys listed under their sites', 10_000);

    const before = backupRuns().length;
    const [a, b, g] = await Promise.all(SITES.map((site) => post(`/v1/backup?site=${site}`)));
    const [ra, rb, rg] = [(await a!.json()) as any, (await b!.json()) as any, (await g!.json()) as any];
    expect(a!.status, JSON.stringify(ra)).toBe(200);
    expect(b!.status, JSON.stringify(rb)).toBe(200);
    expect(g!.status).toBe(500);
    expect(rg.error.message).toMatch(/connect|ECONNREFUSED|could not|server/i);
    setIds.alpha!.push(ra.setId);
    setIds.beta!.push(rb.setId);
    const requested = backupRuns().slice(before);
    expect(requested.map((r) => `${r.site}:${r.trigger}`).sort()).toEqual(['alpha:request', 'beta:request', 'gamma:request']);
    expectOneAtATime(backupRuns());

    // Each connection gets its own site's set, and nothing of the others.
    await waitFor(() => plain.frames.some((f) => f.type === 'set-committed'), 'set-committed on the plain connection', 10_000);
    expect(plain.frames.filter((f) => f.type === 'set-committed')).toEqual([expect.objectContaining({ site: 'alpha', setId: ra.setId, epoch: 1 })]);
    await waitFor(() => muxData(mux, 'beta').some((m) => m.type === 'set-committed'), 'set-committed of beta on the mux connection', 10_000);
    expect(muxData(mux, 'alpha').filter((m) => m.type === 'set-committed')).toEqual([expect.objectContaining({ site: 'alpha', setId: ra.setId })]);
    expect(muxData(mux, 'beta').filter((m) => m.type === 'set-committed')).toEqual([expect.objectContaining({ site: 'beta', setId: rb.setId })]);
    expect(mux.frames.some((f) => f.site === 'gamma')).toBe(false);
  });

  it('POST /v1/backup needs ?site= naming a site it serves (400 naming them)', async () => {
    const missing = await post('/v1/backup');
    expect(missing.status).toBe(400);
    expect(((await missing.json()) as any).error).toMatchObject({ code: 'SITE_REQUIRED', message: 'POST /v1/backup: this primary serves 3 sites ("alpha", "beta", "gamma"): say which with ?site=NAME' });
    const unknown = await post('/v1/backup?site=delta');
    expect(unknown.status).toBe(400);
    expect(((await unknown.json()) as any).error.message).toContain('serves no site "delta"; it serves "alpha", "beta", "gamma"');
  });

  it('a newer connection of the same standby replaces that site\'s channel only; an unknown site\'s channel is refused', async () => {
    const newer = await connect('sb2', false);
    newer.ws.send(hello('sb2', 'alpha'));
    await waitFor(() => muxClosed(mux, 'alpha'), "the mux's alpha channel closed", 10_000);
    expect(muxClosed(mux, 'alpha')).toEqual({ code: 4009, reason: 'replaced by a newer connection of the same standby' });
    mux.ws.send(envelope('delta', hello('sb2', 'delta')));
    await waitFor(() => muxClosed(mux, 'delta'), 'the unknown channel refused', 10_000);
    expect(muxClosed(mux, 'delta')).toEqual({ code: 1008, reason: 'no site "delta" here: this primary serves alpha, beta, gamma' });

    // The shared socket and its beta channel go on: the next set of beta comes over it.
    expect(mux.ws.readyState).toBe(WebSocket.OPEN);
    const r = await post('/v1/backup?site=beta');
    expect(r.status).toBe(200);
    const { setId } = (await r.json()) as { setId: string };
    setIds.beta!.push(setId);
    await waitFor(() => muxData(mux, 'beta').some((m) => m.type === 'set-committed' && m.setId === setId), 'the second beta set on the mux', 10_000);
    expect(muxData(mux, 'alpha').filter((m) => m.type === 'set-committed')).toHaveLength(1);
    newer.ws.terminate();
  });

  it('a switchover-request as the first frame of a plain connection goes to the site it names', async () => {
    const c = await connect('sb1', false);
    c.ws.send(JSON.stringify({ type: 'switchover-request', requestId: 'req-0123456789', site: 'beta', standbyId: 'sb1', timeoutSeconds: 60 }));
    await waitFor(() => c.frames.some((f) => f.type === 'switchover-failed'), "beta's answer", 10_000);
    expect(c.frames.find((f) => f.type === 'hello')).toMatchObject({ site: 'beta' });
    // beta's coordinator answered: this config has no onFenced, so it refuses, changing nothing.
    expect(c.frames.find((f) => f.type === 'switchover-failed')).toMatchObject({ requestId: 'req-0123456789', step: 'request', primary: 'unchanged' });
    expect(c.frames.find((f) => f.type === 'switchover-failed')!.error).toContain('onFenced is not configured');
    expect(log().some((l) => l.site === 'beta' && l.msg === 'switchover request refused')).toBe(true);
    c.ws.terminate();
    // A first frame that names no site is refused.
    const bad = await connect('sb1', false);
    bad.ws.send(JSON.stringify({ type: 'applied', standbyId: 'sb1', setId: setIds.alpha![0], createdAt: new Date().toISOString(), appliedAt: new Date().toISOString() }));
    expect(await bad.closed).toEqual({ code: 1008, reason: "the first frame must be the standby's hello (or a switchover-request) naming the site" });
  });

  it('`tandem-primary backup --site NAME` has the daemon back that site up', async () => {
    const r = await runPrimary(['backup', '--config', config, '--site', 'alpha'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    const setId = r.stdout.trim();
    expect(log().some((l) => l.site === 'alpha' && l.msg === 'backup committed' && l.setId === setId)).toBe(true);
    setIds.alpha!.push(setId);
    expect((await getJson('/status?site=alpha')).latest.setId).toBe(setId);
  });

  it('/metrics labels each site\'s series with its site, has the process metrics once, and passes promtool', async () => {
    const r = await fetch(`${base()}/metrics`, { headers: { authorization: `Bearer ${tokens.read.token}` } });
    expect(r.status).toBe(200);
    const text = await r.text();
    const samples = (name: string) => text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
    const value = (name: string, labels: string[]) => {
      const line = samples(name).find((l) => labels.every((x) => l.includes(x)));
      return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
    };
    expect(value('tandem_backups_total', ['site="alpha"', 'outcome="ok"'])).toBe(1 + setIds.alpha!.length);
    expect(value('tandem_backups_total', ['site="beta"', 'outcome="ok"'])).toBe(1 + setIds.beta!.length);
    expect(value('tandem_backups_total', ['site="gamma"', 'outcome="ok"'])).toBe(0);
    expect(value('tandem_backups_total', ['site="gamma"', 'outcome="failed"'])).toBe(2);
    expect(value('tandem_last_backup_success', ['site="gamma"'])).toBe(0);
    expect(value('tandem_primary_standbys_connected', ['site="beta"'])).toBe(1);
    expect(value('tandem_primary_standby_lag_seconds', ['site="alpha"', 'standby="sb1"'])).toBe(0);
    for (const site of SITES) expect(value('tandem_site_running', [`site="${site}"`])).toBe(1);
    // Every tandem sample names its site; the process metrics are there once, without one.
    const tandem = text.split('\n').filter((l) => l.startsWith('tandem_'));
    expect(tandem.filter((l) => !/\bsite="(alpha|beta|gamma)"/.test(l))).toEqual([]);
    expect(samples('process_cpu_user_seconds_total')).toHaveLength(1);
    expect(samples('process_cpu_user_seconds_total')[0]).not.toContain('site=');
    expect(text.split('\n').filter((l) => l === '# TYPE tandem_backups_total counter')).toHaveLength(1);

    // promtool parses the exposition (a second HELP or TYPE of a metric, a bad line: a parse error)
    // and lints it. The only lint it may report is prom-client's own process gauges named *_total,
    // which a daemon of one site has too.
    const check = await runCommand('promtool', ['check', 'metrics'], { input: text });
    const said = `${check.stdout.toString()}${check.stderr}`.split('\n').filter((l) => l.trim() !== '');
    expect(said.filter((l) => !/^nodejs_active_\w+_total non-counter metrics should not have "_total" suffix$/.test(l)), said.join('\n')).toEqual([]);
    // And it does catch what a merge gone wrong would give: the same metric's HELP twice.
    const twice = await runCommand('promtool', ['check', 'metrics'], { input: `${text}# HELP tandem_backups_total again\n` });
    expect(twice.code).not.toBe(0);
  });

  it('the status page shows one site: / goes to the first, ?site=NAME picks one and lists the others', async () => {
    const read = { authorization: `Bearer ${tokens.read.token}` };
    const root = await fetch(`${base()}/`, { headers: read, redirect: 'manual' });
    expect(root.status).toBe(303);
    expect(root.headers.get('location')).toBe('./?site=alpha');
    const page = await fetch(`${base()}/?site=beta`, { headers: read });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('assets/primary.js');
    const hist = (await (await fetch(`${base()}/status/history?site=beta`, { headers: read })).json()) as any;
    expect(hist).toMatchObject({ agent: 'primary', site: 'beta', sites: SITES.map((site) => ({ site, running: true })) });
    expect(hist.backups.map((b: { setId: string | null }) => b.setId)).toEqual(expect.arrayContaining(setIds.beta!));
    const unknown = await fetch(`${base()}/status/history?site=delta`, { headers: read });
    expect(unknown.status).toBe(404);

    // In a browser: the login lands on the first site's page, drawn from its figures, with links to the others.
    const args = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking', '--disable-component-update'];
    const r = await runCommand('chromium', [...args, `--user-data-dir=${join(work, 'chromium')}`, '--virtual-time-budget=15000', '--dump-dom', `${base()}/?token=${tokens.read.token}`], { timeoutMs: 120_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const dom = r.stdout.toString('utf8');
    expect(dom).toContain('data-ready="true"');
    expect(dom).toContain('site alpha, epoch 1');
    expect(dom).toContain(setIds.alpha!.at(-1));
    expect(dom).toMatch(/id="sites">sites: <strong>alpha<\/strong> · <a href="\?site=beta">beta<\/a> · <a href="\?site=gamma">gamma<\/a>/);
  });

  it('SIGTERM stops every site: each writes its stopped heartbeat and removes its daemon.json; the connections close', async () => {
    await stopDaemon();
    const verifyKey = loadVerifyKeyFile(keys.verifyKeyFile);
    for (const site of SITES) {
      const hb = verifyHeartbeat(await readFile(join(store, site, 'heartbeat.json')), verifyKey, `${site}/heartbeat.json`);
      expect(hb).toMatchObject({ site, state: 'stopped', epoch: 1 });
      expect(existsSync(join(stateDir(site), 'daemon.json'))).toBe(false);
    }
    expect((await plain.closed).code).toBe(1001);
    expect((await mux.closed).code).toBe(1001);
    const shutdowns = log().filter((l) => l.msg === 'shutting down');
    expect(shutdowns).toHaveLength(1);
    expect(log().filter((l) => l.msg === 'heartbeat.json says stopped: a standby may promote without waiting for it to go stale').map((l) => l.site).sort()).toEqual([...SITES]);
  });
});

describe('a site whose start is refused', () => {
  it('is logged and reported while the other sites run', async () => {
    await writeFile(join(sitePaths.gamma!.config, 'BACKUP'), 'this site is a standby here\n');
    const ready = await startDaemon();
    expect(ready.sites).toEqual(['alpha', 'beta']);
    expect(ready.notStarted).toEqual(['gamma']);
    const refused = log().find((l) => l.site === 'gamma' && String(l.msg).startsWith('site "gamma" not started'));
    expect(refused).toMatchObject({ level: 50, kind: 'precondition' });

    const st = await getJson('/status');
    expect(st.sites.gamma).toMatchObject({ site: 'gamma', running: false, error: { kind: 'precondition' } });
    expect(st.sites.gamma.error.message).toContain('BACKUP');
    expect(st.sites.alpha.latest.setId).toBe(setIds.alpha!.at(-1));
    const r = await post('/v1/backup?site=gamma');
    expect(r.status).toBe(503);
    expect(((await r.json()) as any).error.code).toBe('SITE_NOT_RUNNING');
    const ok = await post('/v1/backup?site=beta');
    expect(ok.status).toBe(200);
    const metrics = await (await fetch(`${base()}/metrics`, { headers: control() })).text();
    expect(metrics).toContain('tandem_site_running{site="gamma"} 0');
    expect(metrics).toContain('tandem_site_running{site="alpha"} 1');
    expect(metrics).not.toMatch(/^tandem_backups_total\{[^}]*site="gamma"/m);
    // A standby's channel of the refused site is closed with the reason.
    const c = await connect('sb1', true);
    c.ws.send(envelope('gamma', hello('sb1', 'gamma')));
    await waitFor(() => muxClosed(c, 'gamma'), 'the refused site\'s channel closed', 10_000);
    expect(muxClosed(c, 'gamma')).toEqual({ code: 1008, reason: 'site "gamma" is not running on this primary (its start failed)' });
  });

  it('a fenced site closes its channels (4003) and refuses new ones; the other sites go on', async () => {
    const c = await connect('sb2', true);
    c.ws.send(envelope('alpha', hello('sb2', 'alpha')));
    c.ws.send(envelope('beta', hello('sb2', 'beta')));
    await waitFor(() => muxData(c, 'alpha').some((m) => m.type === 'hello') && muxData(c, 'beta').some((m) => m.type === 'hello'), 'both channels open', 10_000);
    // beta's standby was promoted elsewhere: its epoch.json moves on.
    const fs = openFilestore(pathToFileURL(store).href);
    try {
      await raiseEpoch(fs, 'beta', { id: 'agent-web2', host: 'web2' }, 'promote', { expect: 1 });
    } finally {
      await fs.close();
    }
    await waitFor(() => muxClosed(c, 'beta'), "beta's channel closed", 10_000);
    expect(muxClosed(c, 'beta')).toEqual({ code: 4003, reason: 'this primary is fenced: a higher epoch exists' });
    c.frames.length = 0;
    c.ws.send(envelope('beta', hello('sb2', 'beta')));
    await waitFor(() => muxClosed(c, 'beta'), "beta's new channel refused", 10_000);
    expect(muxClosed(c, 'beta')).toEqual({ code: 4003, reason: 'this primary is fenced: a higher epoch exists' });

    const st = await getJson('/status');
    expect(st.sites.beta.fenced).not.toBeNull();
    expect(st.sites.alpha.fenced).toBeNull();
    expect((await post('/v1/backup?site=beta')).status).toBe(503);
    const r = await post('/v1/backup?site=alpha');
    expect(r.status).toBe(200);
    const { setId } = (await r.json()) as { setId: string };
    await waitFor(() => muxData(c, 'alpha').some((m) => m.type === 'set-committed' && m.setId === setId), "alpha's set on the shared socket", 10_000);
    const metrics = await (await fetch(`${base()}/metrics`, { headers: control() })).text();
    expect(metrics).toMatch(/^tandem_fenced\{site="beta"\} 1$/m);
    expect(metrics).toMatch(/^tandem_fenced\{site="alpha"\} 0$/m);
    await stopDaemon();
  });

  it('with every site refused, the daemon exits 2 with the refusal', async () => {
    for (const site of ['alpha', 'beta']) await writeFile(join(sitePaths[site]!.config, 'BACKUP'), 'a standby here\n');
    const r = await runPrimary(['run', '--config', config], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(2);
    const errors = messageLines(r.stderr).filter((l) => l.startsWith('tandem-primary: error: '));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain('BACKUP');
    expect(logRecords(r.stderr).filter((l) => String(l.msg).includes('not started')).map((l) => l.site).sort()).toEqual([...SITES]);
    for (const site of SITES) await rm(join(sitePaths[site]!.config, 'BACKUP'));
  });
});
