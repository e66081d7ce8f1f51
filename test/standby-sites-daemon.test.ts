/**
 * `tandem-standby run` serving several sites from one process (sites as schemas of one shared
 * database, the Zotonic layout): the real daemon as a child process, real PostgreSQL, sets made
 * by real one-shot `tandem-primary backup` runs.
 *
 * - The push connection: against a stand-in for the primary (ws's WebSocketServer and SiteMux,
 *   sending hello and set-committed per site as shared/protocol.ts defines them): ONE socket
 *   (dialled with ?mux=1) carries every site's hello; a set-committed for one site wakes that
 *   site's apply alone; the socket dropping makes ONE new socket, on which every site says hello
 *   again. A config of one site (even under sites:) still dials plainly, one socket, no ?mux=1.
 * - Polling, end to end: three sites applied by polling; one site's database made unreachable
 *   while the other two still apply new sets; /status (all, ?site=, 404 naming the sites) and
 *   /metrics (every sample labelled by site, the process metrics once, promtool accepts it);
 *   `status --site` reads that site from the daemon; the site comes back when its database does.
 * - A site whose start is refused (promoted here) is shown in /status and the others run; a
 *   config in which no site can start exits with the refusal's status.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import { stringify } from 'yaml';
import { SiteMux, encodeMessage, isMuxRequest, parseMessage, parseSetId, plainChannel, type SiteChannel, type StandbyHello } from '@tandem/shared';
import { startS3rver, s3rverEnv, s3rverFilestoreUrl, type S3rverHandle } from './support/s3rver.js';
import { schemaState } from './support/schema-state.js';
import { closedPort, createSiteTree, dbUrl, ensurePostgres, logRecords, messageLines, requireCommands, runCommand, runPrimary, sleep, tmpDir, waitFor, withDb, type KeyFiles, makeKeys } from './support/site.js';
import { httpGet, metric, startStandbyDaemon, writeToken, type RunningStandby } from './support/standby-daemon.js';
import { runStandby, show, uid } from './support/standby-helpers.js';

const id = uid();
const pdb = `tandem_msp_${id}`;
const TOKEN = randomBytes(24).toString('hex');
const KEYS = ['a', 'b', 'c'] as const;
type Key = (typeof KEYS)[number];
const schemaOf = (k: Key) => `s_${k}`;

interface SiteStatus {
  site: string;
  appliedSetId: string | null;
  latestSetId: string | null;
  applying: unknown;
  lastError: { what: string; code: string; message: string } | null;
  push: { connected: boolean } | null;
  poll: { lastResult: string | null } | null;
  daemon: { running: boolean; listen: string | null };
}

/** The sites of one scenario: a primary config per site (one site each), and the standby's parts. */
interface Scenario {
  root: string;
  filestoreUrl: string;
  env: NodeJS.ProcessEnv;
  site: Record<Key, string>;
  primaryFile: Record<Key, string>;
  standby: Record<Key, { root: string; stateDir: string }>;
  sdb: string;
}

async function makeScenario(root: string, keys: KeyFiles, filestoreUrl: string, env: NodeJS.ProcessEnv): Promise<Scenario> {
  const tag = uid();
  const s: Scenario = {
    root,
    filestoreUrl,
    env,
    site: { a: `a${tag}`, b: `b${tag}`, c: `c${tag}` },
    primaryFile: {} as Record<Key, string>,
    standby: {} as Scenario['standby'],
    sdb: `tandem_mss_${tag}`,
  };
  await withDb('postgres', (c) => c.query(`CREATE DATABASE ${s.sdb}`));
  for (const k of KEYS) {
    const paths = await createSiteTree(join(root, `p-${k}`));
    s.primaryFile[k] = join(root, `primary-${k}.yml`);
    await writeFile(
      s.primaryFile[k],
      stringify({
        site: s.site[k],
        database: { url: dbUrl(pdb), schema: schemaOf(k) },
        paths,
        filestore: { url: filestoreUrl },
        keys: { recipientFile: keys.recipientFile, signingKeyFile: keys.signingKeyFile },
        stateDir: join(root, `p-${k}-state`),
      }),
    );
    const sroot = join(root, `s-${k}`);
    for (const d of ['priv', 'security', 'files']) await mkdir(join(sroot, d), { recursive: true });
    s.standby[k] = { root: sroot, stateDir: join(root, `s-${k}-state`) };
  }
  const r = await runPrimary(['init', '--filestore', '--config', s.primaryFile.a], { env });
  expect(r.code, show(r)).toBe(0);
  return s;
}

/** The standby's config of every site: the shared parts at the top level, a site entry each. */
async function writeSitesConfig(
  s: Scenario,
  keys: KeyFiles,
  file: string,
  o: { pollInterval: string; concurrency: number; primary?: { url: string; tokenFile: string }; readTokenFile?: string; dbUrlOf?: Partial<Record<Key, string>>; only?: Key[] },
): Promise<string> {
  const doc: Record<string, unknown> = {
    database: { url: dbUrl(s.sdb), restoreJobs: 1 },
    filestore: { url: s.filestoreUrl },
    keys: { identityFile: keys.identityFile, verifyKeyFile: keys.verifyKeyFile },
    restartCommand: 'true',
    pollInterval: o.pollInterval,
    server: { listen: '127.0.0.1:0', ...(o.readTokenFile === undefined ? {} : { readTokenFile: o.readTokenFile }) },
    standbyId: 'web2',
    concurrency: o.concurrency,
    ...(o.primary === undefined ? {} : { primary: o.primary }),
    sites: (o.only ?? KEYS).map((k) => ({
      site: s.site[k],
      database: { schema: schemaOf(k), ...(o.dbUrlOf?.[k] === undefined ? {} : { url: o.dbUrlOf[k] }) },
      paths: { config: join(s.standby[k].root, 'priv'), security: join(s.standby[k].root, 'security'), files: join(s.standby[k].root, 'files') },
      stateDir: s.standby[k].stateDir,
    })),
  };
  await writeFile(file, stringify(doc));
  return file;
}

async function backup(s: Scenario, k: Key): Promise<string> {
  const r = await runPrimary(['backup', '--config', s.primaryFile[k]], { env: s.env });
  expect(r.code, show(r)).toBe(0);
  return r.stdout.trim();
}

async function allStatus(d: RunningStandby): Promise<Record<string, SiteStatus>> {
  const r = await httpGet(d.listen, '/status', TOKEN);
  expect(r.status, r.body).toBe(200);
  return (JSON.parse(r.body) as { sites: Record<string, SiteStatus> }).sites;
}

/** Until the daemon has applied `setId` for `site` and nothing is in progress there. */
function waitApplied(d: RunningStandby, site: string, setId: string, timeoutMs = 60_000): Promise<SiteStatus> {
  return waitFor(
    async () => {
      const doc = (await allStatus(d))[site];
      return doc !== undefined && doc.appliedSetId === setId && doc.applying === null ? doc : null;
    },
    `site ${site} to apply ${setId}`,
    timeoutMs,
    100,
  );
}

async function metricsText(d: RunningStandby): Promise<string> {
  const r = await httpGet(d.listen, '/metrics', TOKEN);
  expect(r.status).toBe(200);
  return r.body;
}

/** Changes a site's rows on the primary, so that its next set differs. */
const touch = (k: Key, n: number) => withDb(pdb, (c) => c.query(`INSERT INTO ${schemaOf(k)}.rsc (title) SELECT 'more ' || g FROM generate_series(1, ${n}) g`));

const rowsOf = async (db: string, k: Key): Promise<number> =>
  withDb(db, async (c) => (await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${schemaOf(k)}.rsc`)).rows[0]!.n);

describe('tandem-standby run: several sites in one process', () => {
  let root: string;
  let keys: KeyFiles;
  const scenarios: Scenario[] = [];
  const daemons: RunningStandby[] = [];

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-standby-sites-');
    keys = await makeKeys(join(root, 'keys'));
    await withDb('postgres', (c) => c.query(`CREATE DATABASE ${pdb}`));
    await withDb(pdb, async (c) => {
      for (const k of KEYS) {
        await c.query(`CREATE SCHEMA ${schemaOf(k)}`);
        await c.query(`CREATE TABLE ${schemaOf(k)}.rsc (id serial PRIMARY KEY, title text NOT NULL)`);
        await c.query(`INSERT INTO ${schemaOf(k)}.rsc (title) SELECT '${k} ' || g FROM generate_series(1, ${KEYS.indexOf(k) * 10 + 30}) g`);
      }
    });
    await writeToken(join(root, 'standby.token'), TOKEN);
  });

  afterAll(async () => {
    for (const d of daemons) if (d.child.exitCode === null && d.child.signalCode === null) await d.stop('SIGKILL');
    await withDb('postgres', async (c) => {
      for (const db of [pdb, ...scenarios.map((s) => s.sdb)]) await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    }).catch(() => undefined);
    if (root) await rm(root, { recursive: true, force: true });
  });

  describe('one push connection for every site (a stand-in primary)', () => {
    let s3: S3rverHandle;
    let s: Scenario;
    let standIn: StandIn;

    beforeAll(async () => {
      s3 = await startS3rver();
      // An S3 filestore: no change events of latest.json, so only a push (or a poll) wakes a site.
      s = await makeScenario(join(root, 'push'), keys, s3rverFilestoreUrl(s3, { prefix: 'unique' }), s3rverEnv());
      scenarios.push(s);
      standIn = await primaryStandIn(TOKEN);
    });

    afterAll(async () => {
      await standIn?.close();
      await s3?.destroy();
    });

    it('dials ONE socket (?mux=1) for three sites; a set-committed wakes that site alone; a dropped socket is redialled once and every site says hello again', async () => {
      const sets: Record<Key, string[]> = { a: [], b: [], c: [] };
      for (const k of KEYS) sets[k].push(await backup(s, k));
      const cfg = await writeSitesConfig(s, keys, join(s.root, 'standby.yml'), {
        pollInterval: '1h',
        concurrency: 2,
        primary: { url: standIn.url, tokenFile: join(root, 'standby.token') },
      });
      const d = await startStandbyDaemon(cfg, s.standby.a.stateDir, s.env);
      daemons.push(d);

      // The first round of each site applies what is committed.
      for (const k of KEYS) await waitApplied(d, s.site[k], sets[k][0]!);
      // Every site said hello, on one and the same socket, which asked for the mux framing with this standby's token.
      await waitFor(() => standIn.conns[0]?.hellos.size === 3, 'every site to say hello', 20_000);
      await sleep(1_000);
      expect(standIn.conns).toHaveLength(1);
      const first = standIn.conns[0]!;
      expect(isMuxRequest(first.url)).toBe(true);
      expect(first.url.split('?')[0]).toBe('/v1/stream');
      expect(first.auth).toBe(`Bearer ${TOKEN}`);
      expect([...first.hellos.keys()].sort()).toEqual(KEYS.map((k) => s.site[k]).sort());
      for (const k of KEYS) expect(first.hellos.get(s.site[k])).toMatchObject({ type: 'hello', standbyId: 'web2', site: s.site[k] });
      await waitFor(
        async () => {
          const t = await metricsText(d);
          return KEYS.every((k) => metric(t, 'tandem_standby_websocket_connected', { site: s.site[k] }) === 1);
        },
        'every site connected',
        20_000,
        100,
      );

      // New sets for a and b; nothing wakes them (no change events on S3, polls an hour apart).
      await touch('a', 7);
      await touch('b', 9);
      sets.a.push(await backup(s, 'a'));
      sets.b.push(await backup(s, 'b'));
      await sleep(1_500);
      let st = await allStatus(d);
      expect(st[s.site.a]!.appliedSetId).toBe(sets.a[0]);
      expect(st[s.site.b]!.appliedSetId).toBe(sets.b[0]);
      const pollsOfB = (t: string) => metric(t, 'tandem_standby_polls_total', { site: s.site.b, result: 'changed' });
      const bBefore = pollsOfB(await metricsText(d));

      // The primary announces a's set: a looks at once and applies it; b hears nothing and does nothing.
      standIn.commit(s.site.a, sets.a[1]!);
      await waitApplied(d, s.site.a, sets.a[1]!, 60_000);
      expect(await rowsOf(s.sdb, 'a')).toBe(await rowsOf(pdb, 'a'));
      await sleep(1_500);
      st = await allStatus(d);
      expect(st[s.site.b]!.appliedSetId).toBe(sets.b[0]);
      expect(st[s.site.b]!.latestSetId).toBe(sets.b[0]); // b did not even look
      expect(pollsOfB(await metricsText(d))).toBe(bBefore);
      expect(await rowsOf(s.sdb, 'b')).not.toBe(await rowsOf(pdb, 'b'));

      // The socket drops: ONE new socket, and every site says hello on it, with what it has applied.
      first.ws.terminate();
      await waitFor(() => standIn.conns[1]?.hellos.size === 3, 'every site to say hello on a new socket', 30_000, 50);
      await sleep(3_000);
      expect(standIn.conns).toHaveLength(2);
      const second = standIn.conns[1]!;
      expect(isMuxRequest(second.url)).toBe(true);
      expect(second.hellos.get(s.site.a)!.appliedSetId).toBe(sets.a[1]);
      expect(second.hellos.get(s.site.b)!.appliedSetId).toBe(sets.b[0]);
      expect(second.hellos.get(s.site.c)!.appliedSetId).toBe(sets.c[0]);

      // The new socket carries pushes: b's set now.
      standIn.commit(s.site.b, sets.b[1]!);
      const bDone = await waitApplied(d, s.site.b, sets.b[1]!, 60_000);
      expect(bDone.push?.connected).toBe(true);
      expect(await rowsOf(s.sdb, 'b')).toBe(await rowsOf(pdb, 'b'));
      expect(standIn.conns).toHaveLength(2);

      // The primary closes one site's channel alone: that site opens a new one on the same socket.
      standIn.closeSite(s.site.c, 1001, 'this site only');
      await waitFor(() => second.helloCount.get(s.site.c) === 2, 'site c to say hello again on the same socket', 20_000, 50);
      expect(second.helloCount.get(s.site.a)).toBe(1);
      expect(standIn.conns).toHaveLength(2);
      await waitFor(
        async () => metric(await metricsText(d), 'tandem_standby_websocket_connected', { site: s.site.c }) === 1,
        'site c connected again',
        10_000,
        100,
      );

      // SIGTERM stops every site; each closes its channel, then the socket goes.
      const r = await d.stop('SIGTERM');
      expect(r.code, show(r)).toBe(0);
      await waitFor(() => second.closedCode !== null, 'the socket to close');
      expect(second.closedCode).toBe(1001);
      const logs = logRecords(r.stderr);
      expect(logs.filter((l) => l.msg === 'push: set committed; checking now').map((l) => l.site)).toEqual([s.site.a, s.site.b]);
      for (const k of KEYS) await expect(readFile(join(s.standby[k].stateDir, 'daemon.json'))).rejects.toThrow();
    });

    it('a config of one site (under sites:) dials as before: its own socket, plain frames, no ?mux=1', async () => {
      const before = standIn.conns.length;
      const cfg = await writeSitesConfig(s, keys, join(s.root, 'standby-one.yml'), {
        pollInterval: '1h',
        concurrency: 2,
        primary: { url: standIn.url, tokenFile: join(root, 'standby.token') },
        only: ['c'],
      });
      const d = await startStandbyDaemon(cfg, s.standby.c.stateDir, s.env);
      daemons.push(d);
      await waitFor(() => standIn.conns[before]?.hellos.size === 1, 'the hello of the one site', 20_000);
      const conn = standIn.conns[before]!;
      expect(isMuxRequest(conn.url)).toBe(false);
      expect(conn.plainFirst).toMatchObject({ type: 'hello', site: s.site.c, standbyId: 'web2' });
      // /status is the one site's document, as it always was.
      const doc = JSON.parse((await httpGet(d.listen, '/status', TOKEN)).body) as SiteStatus & { sites?: unknown };
      expect(doc.sites).toBeUndefined();
      expect(doc.site).toBe(s.site.c);
      const text = await metricsText(d);
      expect(text).not.toMatch(/site="/);
      expect(text).toMatch(/^process_cpu_user_seconds_total /m);
      const r = await d.stop('SIGTERM');
      expect(r.code, show(r)).toBe(0);
    });
  });

  describe('polling, end to end, with one site unreachable', () => {
    let s: Scenario;
    let proxy: Proxy;
    let d: RunningStandby;
    let cfg: string;
    const sets: Record<Key, string[]> = { a: [], b: [], c: [] };

    beforeAll(async () => {
      s = await makeScenario(join(root, 'poll'), keys, `file://${join(root, 'poll', 'store')}`, {});
      scenarios.push(s);
      proxy = await tcpProxy(5432);
    });

    afterAll(async () => {
      await proxy?.close();
    });

    it('applies all three sites by polling; /status shows each, and ?site= one', async () => {
      for (const k of KEYS) sets[k].push(await backup(s, k));
      // Site c reaches the standby's database through a proxy this test can cut.
      const cUrl = dbUrl(s.sdb).replace(/:5432\//, `:${proxy.port}/`);
      expect(cUrl).not.toBe(dbUrl(s.sdb));
      cfg = await writeSitesConfig(s, keys, join(s.root, 'standby.yml'), { pollInterval: '1s', concurrency: 1, dbUrlOf: { c: cUrl }, readTokenFile: join(root, 'standby.token') });
      d = await startStandbyDaemon(cfg, s.standby.a.stateDir, s.env);
      daemons.push(d);
      for (const k of KEYS) await waitApplied(d, s.site[k], sets[k][0]!);
      for (const k of KEYS) expect(await schemaState(dbUrl(s.sdb), schemaOf(k))).toEqual(await schemaState(dbUrl(pdb), schemaOf(k)));
      // Each site has its own daemon.json (the one process, the one server) and its sentinel.
      for (const k of KEYS) {
        const info = JSON.parse(await readFile(join(s.standby[k].stateDir, 'daemon.json'), 'utf8')) as { pid: number; listen: string; site: string; sites: string[] };
        expect(info).toMatchObject({ pid: d.pid, listen: d.listen, site: s.site[k] });
        expect(info.sites).toEqual(KEYS.map((x) => s.site[x]));
        expect(JSON.parse(await readFile(join(s.standby[k].root, 'priv', 'BACKUP'), 'utf8'))).toMatchObject({ mode: 'backup', site: s.site[k] });
      }

      const all = await allStatus(d);
      expect(Object.keys(all)).toEqual(KEYS.map((k) => s.site[k]));
      for (const k of KEYS) expect(all[s.site[k]]).toMatchObject({ site: s.site[k], appliedSetId: sets[k][0], push: null, daemon: { running: true, listen: d.listen } });
      const one = await httpGet(d.listen, `/status?site=${s.site.b}`, TOKEN);
      expect(one.status).toBe(200);
      expect(JSON.parse(one.body)).toMatchObject({ site: s.site.b, appliedSetId: sets.b[0] });
      const unknown = await httpGet(d.listen, '/status?site=nope', TOKEN);
      expect(unknown.status).toBe(404);
      const why = (JSON.parse(unknown.body) as { error: { code: string; message: string } }).error;
      expect(why.code).toBe('UNKNOWN_SITE');
      expect(why.message).toContain(`no site "nope" here: this standby serves ${KEYS.map((k) => `"${s.site[k]}"`).join(', ')}`);
      expect((await httpGet(d.listen, '/status?site=nope')).status).toBe(401); // the names only with a token
      expect((await httpGet(d.listen, '/status')).status).toBe(401);

      // The page: / goes to the first site's; ?site=NAME is that site's (its script asks status and
      // status/history with the page's ?site=).
      expect((await httpGet(d.listen, '/')).status).toBe(401); // no token: the login form, no site named
      const page = await httpGet(d.listen, '/', TOKEN);
      expect(page.status).toBe(303);
      expect(page.headers.location).toBe(`./?site=${s.site.a}`);
      const html = await httpGet(d.listen, `/?site=${s.site.c}`, TOKEN);
      expect(html.status).toBe(200);
      expect(html.body).toContain('assets/standby.js');
      expect((await httpGet(d.listen, '/?site=nope', TOKEN)).status).toBe(404);
      const history = JSON.parse((await httpGet(d.listen, `/status/history?site=${s.site.c}`, TOKEN)).body) as { agent: string; applied: Array<{ setId: string }> };
      expect(history.agent).toBe('standby');
      expect(history.applied.map((a) => a.setId)).toEqual([sets.c[0]]);

      // One apply at a time here (concurrency 1): the others waited their turn, and said so.
      const waits = logRecords((d as RunningStandby).stderrSoFar()).filter((l) => typeof l.msg === 'string' && l.msg.includes('waits its turn'));
      expect(waits.length).toBeGreaterThanOrEqual(1);
    });

    it("one site's database unreachable: the other two still apply new sets; that site reports it, and catches up when it is back", async () => {
      await proxy.cut();
      for (const k of KEYS) {
        await touch(k, 5 + KEYS.indexOf(k));
        sets[k].push(await backup(s, k));
      }
      for (const k of ['a', 'b'] as const) await waitApplied(d, s.site[k], sets[k][1]!);
      expect(await rowsOf(s.sdb, 'a')).toBe(await rowsOf(pdb, 'a'));
      expect(await rowsOf(s.sdb, 'b')).toBe(await rowsOf(pdb, 'b'));
      const c = await waitFor(
        async () => {
          const doc = (await allStatus(d))[s.site.c]!;
          return doc.lastError?.what === 'apply' ? doc : null;
        },
        'site c to report its failed apply',
        60_000,
        100,
      );
      expect(c.appliedSetId).toBe(sets.c[0]);
      expect(c.latestSetId).toBe(sets.c[1]);
      expect(c.lastError!.message).toMatch(new RegExp(`${proxy.port}|ECONNREFUSED|connect`));

      // /metrics: each site's samples labelled with it, the process metrics once; promtool accepts it.
      const text = await metricsText(d);
      expect(metric(text, 'tandem_standby_applies_total', { site: s.site.a, outcome: 'applied' })).toBe(2);
      expect(metric(text, 'tandem_standby_applies_total', { site: s.site.b, outcome: 'applied' })).toBe(2);
      expect(metric(text, 'tandem_standby_applies_total', { site: s.site.c, outcome: 'applied' })).toBe(1);
      expect(metric(text, 'tandem_standby_applies_total', { site: s.site.c, outcome: 'failed' })).toBeGreaterThanOrEqual(1);
      for (const k of KEYS) expect(metric(text, 'tandem_standby_site_running', { site: s.site[k] })).toBe(1);
      expect(text.match(/^process_cpu_user_seconds_total /gm)).toHaveLength(1);
      expect(text.match(/^# TYPE tandem_standby_applies_total /gm)).toHaveLength(1);
      for (const line of text.split('\n').filter((l) => l.startsWith('tandem_standby_') && !l.startsWith('tandem_standby_site_running'))) {
        expect(line).toMatch(new RegExp(`site="(${KEYS.map((k) => s.site[k]).join('|')})"`));
      }
      if (spawnSync('sh', ['-c', 'command -v promtool'], { stdio: 'ignore' }).status === 0) {
        // A parse error (two TYPE lines of one metric, a bad label) fails; of the lint, only what it
        // says of prom-client's own process gauges (nodejs_*_total), as for a daemon of one site.
        const promtool = await runCommand('promtool', ['check', 'metrics'], { input: text });
        const said = `${promtool.stdout.toString()}${promtool.stderr}`;
        const problems = said.split('\n').filter((l) => l.trim() !== '' && !/^nodejs_\w+_total non-counter metrics should not have "_total" suffix$/.test(l));
        expect(problems, said).toEqual([]);
        expect([0, 3], said).toContain(promtool.code);
      }
      const oneSite = await httpGet(d.listen, `/metrics?site=${s.site.b}`, TOKEN);
      expect(metric(oneSite.body, 'tandem_standby_applies_total', { site: s.site.b, outcome: 'applied' })).toBe(2);
      expect(metric(oneSite.body, 'tandem_standby_applies_total', { site: s.site.a, outcome: 'applied' })).toBeUndefined();

      // `status --site` reads that site from the daemon (its polling, its error).
      const st = await runStandby(['status', '--config', cfg, '--site', s.site.c, '--json'], { env: s.env });
      expect(st.code, show(st)).toBe(0);
      const doc = JSON.parse(st.stdout) as SiteStatus;
      expect(doc).toMatchObject({ site: s.site.c, appliedSetId: sets.c[0], daemon: { running: true, listen: d.listen } });
      expect(doc.poll).not.toBeNull();
      expect(doc.lastError?.what).toBe('apply');

      // The database is back: c applies its set at its next retry.
      await proxy.restore();
      await waitApplied(d, s.site.c, sets.c[1]!, 90_000);
      expect(await schemaState(dbUrl(s.sdb), schemaOf('c'))).toEqual(await schemaState(dbUrl(pdb), schemaOf('c')));

      const r = await d.stop('SIGTERM');
      expect(r.code, show(r)).toBe(0);
      for (const k of KEYS) await expect(readFile(join(s.standby[k].stateDir, 'daemon.json'))).rejects.toThrow();
    });

    it('a site whose start is refused (promoted here) is shown in /status; the others run; no site at all: the refusal', async () => {
      if (d !== undefined && d.child.exitCode === null && d.child.signalCode === null) await d.stop('SIGTERM');
      // Site b of another standby config was promoted here.
      const stateB = join(s.root, 'refused-b-state');
      await mkdir(stateB, { recursive: true });
      const promoted = (site: string) => JSON.stringify({ site, promotedAt: '2026-01-01T00:00:00.000Z', appliedSetId: null, forced: true, unapplied: null, restart: 'none' });
      await writeFile(join(stateB, 'promoted.json'), promoted(s.site.b));
      const refusedCfg = await writeSitesConfig(s, keys, join(s.root, 'standby-refused.yml'), { pollInterval: '1s', concurrency: 2, only: ['a', 'b'] });
      const text = (await readFile(refusedCfg, 'utf8')).replace(s.standby.b.stateDir, stateB);
      await writeFile(refusedCfg, text);
      const d2 = await startStandbyDaemon(refusedCfg, s.standby.a.stateDir, s.env);
      daemons.push(d2);
      // daemon.json is written as a site starts; the process counts it as running once its start returned.
      const all = await waitFor(async () => {
        const st = await allStatus(d2);
        return st[s.site.a]?.daemon?.running === true ? st : null;
      }, 'site a to run');
      expect(all[s.site.a]).toMatchObject({ site: s.site.a, daemon: { running: true } });
      expect(all[s.site.b]).toMatchObject({ site: s.site.b, state: 'refused', error: { code: 'PROMOTED' } });
      // No token configured: open, on a loopback address.
      const one = await httpGet(d2.listen, `/status?site=${s.site.b}`);
      expect(one.status).toBe(503);
      expect((await httpGet(d2.listen, `/status/history?site=${s.site.b}`)).status).toBe(503); // the page says why
      expect(JSON.parse(one.body)).toMatchObject({ state: 'refused', error: { code: 'PROMOTED', message: expect.stringMatching(/promoted to primary at 2026-01-01/) } });
      const m = await httpGet(d2.listen, '/metrics');
      expect(metric(m.body, 'tandem_standby_site_running', { site: s.site.a })).toBe(1);
      expect(metric(m.body, 'tandem_standby_site_running', { site: s.site.b })).toBe(0);
      expect(logRecords(d2.stderrSoFar()).some((l) => l.site === s.site.b && String(l.msg).startsWith(`site "${s.site.b}" not started`))).toBe(true);
      const r2 = await d2.stop('SIGTERM');
      expect(r2.code, show(r2)).toBe(0);

      // Every site refused: the start fails with the first refusal's exit status (2: promoted).
      const stateA = join(s.root, 'refused-a-state');
      await mkdir(stateA, { recursive: true });
      await writeFile(join(stateA, 'promoted.json'), promoted(s.site.a));
      await writeFile(refusedCfg, text.replace(s.standby.a.stateDir, stateA));
      const r3 = await runStandby(['run', '--config', refusedCfg], { env: s.env, timeoutMs: 30_000 });
      expect(r3.code, show(r3)).toBe(2);
      expect(messageLines(r3.stderr).join('\n')).toMatch(new RegExp(`no site of .* could start: site "${s.site.a}": .*promoted.*; site "${s.site.b}": .*promoted`));
    });
  });
});

// ---------------------------------------------------------------------------------------------
// A stand-in for the primary's push endpoint, and a TCP proxy that can be cut
// ---------------------------------------------------------------------------------------------

interface StandInConn {
  url: string;
  auth: string | undefined;
  ws: WebSocket;
  /** Each site's (last) hello on this socket, and how many it sent. */
  hellos: Map<string, StandbyHello>;
  helloCount: Map<string, number>;
  /** A plain connection's first frame. */
  plainFirst?: unknown;
  closedCode: number | null;
}

interface StandIn {
  url: string;
  conns: StandInConn[];
  /** Sends set-committed for the site's set on its channel. */
  commit(site: string, setId: string): void;
  /** Closes the site's channel alone (the socket stays). */
  closeSite(site: string, code: number, reason: string): void;
  close(): Promise<void>;
}

/**
 * The primary's /v1/stream as far as a standby's push client sees it: every site's hello is
 * answered with the primary's hello (latestSetId null: the hello itself wakes nothing), pings
 * every 5 s, and set-committed is sent when the test says. ?mux=1 connections are taken apart
 * with SiteMux; others are the channel of the site their first frame names.
 */
async function primaryStandIn(token: string): Promise<StandIn> {
  const conns: StandInConn[] = [];
  const channels = new Map<string, SiteChannel>();
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    verifyClient: (info: { req: { headers: Record<string, string | string[] | undefined> } }) => info.req.headers.authorization === `Bearer ${token}`,
  });
  wss.on('connection', (ws, req) => {
    const conn: StandInConn = { url: req.url ?? '', auth: req.headers.authorization, ws, hellos: new Map(), helloCount: new Map(), closedCode: null };
    conns.push(conn);
    const pinger = setInterval(() => ws.ping(), 5_000);
    ws.on('close', (code) => {
      conn.closedCode = code;
      clearInterval(pinger);
    });
    const serve = (ch: SiteChannel) => {
      ch.on('message', (data: Buffer) => {
        const m = parseMessage(data, 'standby-to-primary');
        if (m.type !== 'hello') return;
        conn.hellos.set(ch.site, m);
        conn.helloCount.set(ch.site, (conn.helloCount.get(ch.site) ?? 0) + 1);
        channels.set(ch.site, ch);
        ch.send(encodeMessage({ type: 'hello', site: ch.site, epoch: 1, latestSetId: null, serverTime: new Date().toISOString() }, 'primary-to-standby'));
      });
    };
    if (isMuxRequest(req.url)) {
      new SiteMux(ws, (ch) => {
        serve(ch);
        return null;
      });
    } else {
      plainChannel(
        ws,
        (text) => {
          try {
            return (JSON.parse(text) as { site?: string }).site ?? null;
          } catch {
            return null;
          }
        },
        (ch, text) => {
          conn.plainFirst = JSON.parse(text);
          if (ch === null) ws.close(1008, 'no site');
          else serve(ch);
        },
      );
    }
  });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  return {
    url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`,
    conns,
    commit(site, setId) {
      const ch = channels.get(site);
      const p = parseSetId(setId);
      if (ch === undefined || p === null) throw new Error(`no channel of site ${site}, or ${setId} is not a set id`);
      ch.send(encodeMessage({ type: 'set-committed', site, setId, epoch: p.epoch, seq: p.seq, createdAt: p.time.toISOString(), committedAt: new Date().toISOString() }, 'primary-to-standby'));
    },
    closeSite(site, code, reason) {
      channels.get(site)!.close(code, reason);
    },
    close: () =>
      new Promise<void>((r) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => r());
      }),
  };
}

interface Proxy {
  port: number;
  /** Refuses new connections and ends the open ones: the database is unreachable through it. */
  cut(): Promise<void>;
  /** Listens again on the same port. */
  restore(): Promise<void>;
  close(): Promise<void>;
}

/** A TCP proxy on 127.0.0.1 to `targetPort` (PostgreSQL), which the test can cut and restore. */
async function tcpProxy(targetPort: number): Promise<Proxy> {
  const sockets = new Set<Socket>();
  let server: Server | null = null;
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      const srv = createServer((client) => {
        const upstream = connect(targetPort, '127.0.0.1');
        sockets.add(client).add(upstream);
        const end = () => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on('error', end).on('close', end);
        upstream.on('error', end).on('close', end);
        client.pipe(upstream).pipe(client);
      });
      srv.once('error', reject);
      srv.listen(port, '127.0.0.1', () => {
        server = srv;
        resolve((srv.address() as AddressInfo).port);
      });
    });
  const stop = async () => {
    const srv = server;
    server = null;
    for (const sk of sockets) sk.destroy();
    sockets.clear();
    if (srv !== null) await new Promise<void>((r) => srv.close(() => r()));
  };
  // Not port 0: the restore listens on the same port again, and a port out of the ephemeral range
  // cannot have been taken by a client socket meanwhile.
  const port = await listen(await closedPort());
  return { port, cut: stop, restore: async () => void (await listen(port)), close: stop };
}
