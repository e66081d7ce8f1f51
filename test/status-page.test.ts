/**
 * The daemons' status pages, as an operator opens them: `tandem-primary run` and `tandem-standby
 * run` (push channel, directory filestore, PostgreSQL), two sets applied, then `/` of each loaded
 * in headless Chromium (Debian's `chromium`): the script must have run, so the DOM holds the lag
 * figures /status gives and the set ids; a screenshot of each is taken (TANDEM_UPDATE_SCREENSHOTS=1
 * copies them to docs/). Without a token the page is a 401 login form; a login (the form, or
 * `?token=`) gives a session cookie that reads and does nothing else. The metrics: a fresh primary
 * exports every label set of its counters at 0, and the primary's view of its standbys is
 * tandem_primary_*, apart from the standby's own tandem_standby_*.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKUP_FAILURE_KINDS } from '../packages/primary-agent/src/daemon/metrics.js';
import { REPO_ROOT, closedPort, ensurePostgres, requireCommands, runCommand, runPrimary, startPrimary, tmpDir, waitFor, type RunningPrimary } from './support/site.js';
import { httpGet, metric, startStandbyDaemon, writeDaemonConfig, type RunningStandby } from './support/standby-daemon.js';
import { createStandbySite, dropSiteDatabases, show, writeSitePrimaryConfig, type StandbySite } from './support/standby-helpers.js';
import { writeTokens, type TokenSet } from './support/tokens.js';

const SB = 'web2';
const UPDATE_DOCS = process.env.TANDEM_UPDATE_SCREENSHOTS === '1';

interface Reply {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

/** One HTTP request with any method, headers and body (the fixtures' httpGet sends only GET + bearer). */
function http(listen: string, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Reply> {
  const i = listen.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const req = request({ host: listen.slice(0, i), port: Number(listen.slice(i + 1)), path, method, headers: body === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(body)) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** The CLI's duration format (formatDuration), as the page writes the figures. */
function duration(seconds: number): string {
  const ms = seconds * 1000;
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  const m = Math.round(s / 60);
  return m < 120 ? `${m}m` : `${Math.floor(m / 60)}h${m % 60 ? `${m % 60}m` : ''}`;
}

const sessionOf = (r: Reply): string => {
  const raw = r.headers['set-cookie'];
  const line = (Array.isArray(raw) ? raw : [raw ?? '']).find((c) => c.startsWith('tandem_session=')) ?? '';
  return line.split(';')[0]!;
};

/**
 * Chromium, headless, on `url`: the DOM after the page's script ran (virtual time lets its fetches
 * finish), or a screenshot. A profile of its own each time (no cookie carried over).
 */
async function chromium(url: string, out: { dumpDom: true } | { screenshot: string }, profile: string): Promise<string> {
  const args = [
    '--headless=new',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--hide-scrollbars',
    '--force-device-scale-factor=1',
    `--user-data-dir=${profile}`,
    '--window-size=1200,1250',
    '--virtual-time-budget=15000',
    ...('dumpDom' in out ? ['--dump-dom'] : [`--screenshot=${out.screenshot}`]),
    url,
  ];
  const r = await runCommand('chromium', args, { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`chromium exited ${r.code ?? r.signal}: ${r.stderr.slice(-2000)}`);
  return r.stdout.toString('utf8');
}

/** The text of the first element with this attribute value (data-figure="pending" → its .value). */
function figureValue(dom: string, key: string): string | undefined {
  const m = new RegExp(`data-figure="${key}"[^>]*><div class="label">[^<]*</div><div class="value">([^<]*)</div>`).exec(dom);
  return m?.[1];
}

describe('the status pages (primary and standby daemons, Chromium)', () => {
  let root: string;
  let s: StandbySite;
  let tokens: TokenSet;
  let port: number;
  let primary: RunningPrimary | undefined;
  let standby: RunningStandby | undefined;
  const sets: string[] = [];
  const primaryListen = () => `127.0.0.1:${port}`;

  beforeAll(async () => {
    requireCommands(['chromium', 'age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-status-page-');
    s = await createStandbySite(root, { restoreJobs: 1 });
    tokens = await writeTokens(join(root, 'tokens'), `page${randomBytes(3).toString('hex')}`, [SB]);
    port = await closedPort();
    await writeSitePrimaryConfig(s, s.primary.configFile, {
      schedule: '0 0 1 1 *',
      timezone: 'UTC',
      heartbeatInterval: '1s',
      server: tokens.primaryServer(primaryListen()),
      standbys: tokens.primaryStandbys(),
    });
    await writeDaemonConfig(s, s.standby.configFile, {
      restoreJobs: 1,
      pollInterval: '30s',
      standbyId: SB,
      primary: { url: `ws://${primaryListen()}`, tokenFile: tokens.standbys[SB]!.file },
      readTokenFile: tokens.read.file,
    });
    // A first set before the primary daemon starts, so that it has no missed run to make up.
    const r0 = await runPrimary(['backup', '--local', '--config', s.primary.configFile], { env: s.env });
    expect(r0.code, show(r0)).toBe(0);
    sets.push(r0.stdout.trim());
    primary = startPrimary(['run', '--config', s.primary.configFile], { env: s.env, timeoutMs: 300_000 });
    await waitFor(async () => (await httpGet(primaryListen(), '/healthz').catch(() => null))?.status === 200, 'the primary daemon to listen', 30_000, 50);
  });

  afterAll(async () => {
    for (const d of [standby, primary]) {
      if (d && d.child.exitCode === null && d.child.signalCode === null) {
        d.child.kill('SIGKILL');
        await d.result;
      }
    }
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('a fresh primary exports every failure kind and outcome at 0, and its view of the standbys as tandem_primary_*', async () => {
    const m = (await httpGet(primaryListen(), '/metrics', tokens.read.token)).body;
    for (const kind of BACKUP_FAILURE_KINDS) expect(m, kind).toMatch(new RegExp(`^tandem_backup_failures_total\\{kind="${kind}"\\} 0$`, 'm'));
    expect(BACKUP_FAILURE_KINDS).toContain('external');
    for (const outcome of ['ok', 'failed', 'aborted']) expect(metric(m, 'tandem_backups_total', { outcome }), outcome).toBe(0);
    expect(metric(m, 'tandem_primary_standbys_connected')).toBe(0);
    expect(m).toMatch(/^# TYPE tandem_primary_standby_lag_seconds gauge$/m);
    // The standby's names are the standby's alone.
    expect(m).not.toMatch(/^tandem_standby/m);
    expect(m).not.toContain('tandem_standby_applied_lag_seconds');
    expect(m).not.toMatch(/^tandem_standbys_connected/m);
  });

  it('the standby applies two sets through the push; each side names its own lag', async () => {
    standby = await startStandbyDaemon(s.standby.configFile, s.standby.stateDir, s.env);
    const sbStatus = async () => JSON.parse((await httpGet(standby!.listen, '/status', tokens.read.token)).body) as { appliedSetId: string | null; applying: unknown; push: { connected: boolean } | null };
    await waitFor(async () => {
      const st = await sbStatus();
      return st.appliedSetId === sets[0] && st.applying === null && st.push?.connected === true;
    }, 'the standby to apply the first set and connect', 60_000, 100);
    const r = await runPrimary(['backup', '--config', s.primary.configFile], { env: s.env });
    expect(r.code, show(r)).toBe(0);
    sets.push(r.stdout.trim());
    await waitFor(async () => {
      const st = await sbStatus();
      return st.appliedSetId === sets[1] && st.applying === null;
    }, 'the second set to be applied', 60_000, 100);
    const pm = await waitFor(async () => {
      const m = (await httpGet(primaryListen(), '/metrics', tokens.read.token)).body;
      return metric(m, 'tandem_primary_standby_lag_seconds', { standby: SB }) === 0 ? m : null;
    }, "the primary to hear the standby's apply");
    expect(metric(pm, 'tandem_primary_standbys_connected')).toBe(1);
    expect(metric(pm, 'tandem_backups_total', { outcome: 'ok' })).toBe(1);
    const sm = (await httpGet(standby.listen, '/metrics', tokens.read.token)).body;
    expect(metric(sm, 'tandem_standby_apply_lag_seconds')).toBeGreaterThanOrEqual(0);
    expect(sm).not.toMatch(/^tandem_primary_/m);
  });

  it('the page and /status/history take what /status takes; a login gives a session cookie that only reads', async () => {
    const sb = standby!.listen;
    const read = tokens.read.token;

    // No token: a login form (HTML, 401) that gives nothing away; the history is a bare 401.
    const anon = await http(sb, 'GET', '/');
    expect(anon.status).toBe(401);
    expect(anon.headers['content-type']).toMatch(/^text\/html/);
    expect(anon.body).toMatch(/<form method="post" action="login">/);
    for (const secret of [s.site, sets[0]!, sets[1]!, SB, read]) expect(anon.body).not.toContain(secret);
    expect((await http(sb, 'GET', '/status/history')).status).toBe(401);
    expect((await http(sb, 'GET', '/status/history', { authorization: `Bearer ${'x'.repeat(40)}` })).status).toBe(401);
    expect((await http(sb, 'GET', '/status', { cookie: `tandem_session=${read}` })).status).toBe(401);

    // With the token: the page (a script of the package, under a strict CSP) and the history.
    const page = await http(sb, 'GET', '/', { authorization: `Bearer ${read}` });
    expect(page.status).toBe(200);
    expect(page.body).toContain('<script type="module" src="assets/standby.js"></script>');
    expect(page.headers['content-security-policy']).toContain("script-src 'self'");
    const js = await http(sb, 'GET', '/assets/standby.js');
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toMatch(/^text\/javascript/);
    expect((await http(sb, 'GET', '/assets/../../package.json')).status).toBe(404);
    const hist = JSON.parse((await http(sb, 'GET', '/status/history', { authorization: `Bearer ${read}` })).body) as {
      agent: string;
      samples: Array<{ t: number; appliedSetId: string | null }>;
      applied: Array<{ setId: string; appliedAt: string }>;
      problems: string[];
    };
    expect(hist.agent).toBe('standby');
    expect(hist.applied.map((a) => a.setId)).toEqual([sets[1], sets[0]]);
    expect(hist.samples.map((x) => x.appliedSetId)).toContain(sets[1]);
    expect(hist.problems).toEqual([]);

    // A wrong token in the form or the URL: the form again, no cookie.
    const wrong = await http(sb, 'GET', `/?token=${'y'.repeat(40)}`);
    expect(wrong.status).toBe(401);
    expect(wrong.headers['set-cookie']).toBeUndefined();
    expect(wrong.body).toContain('That token does not open this page.');

    // The token in the URL: a cookie, and the URL without it.
    const viaUrl = await http(sb, 'GET', `/?token=${read}`);
    expect(viaUrl.status).toBe(303);
    expect(viaUrl.headers.location).toBe('./');
    const setCookie = String(viaUrl.headers['set-cookie']);
    expect(setCookie).toMatch(/^tandem_session=\d+\.[A-Za-z0-9_-]{43}; Path=\/; Max-Age=43200; HttpOnly; SameSite=Strict$/);
    expect(setCookie).not.toContain(read);
    const cookie = sessionOf(viaUrl);
    for (const path of ['/', '/status', '/status/history', '/metrics']) expect((await http(sb, 'GET', path, { cookie })).status, path).toBe(200);
    // Forged or tampered: refused.
    const [exp, mac] = cookie.slice('tandem_session='.length).split('.');
    expect((await http(sb, 'GET', '/status', { cookie: `tandem_session=${Number(exp) + 1}.${mac}` })).status).toBe(401);
    expect((await http(sb, 'GET', '/status', { cookie: `tandem_session=${exp}.${'A'.repeat(43)}` })).status).toBe(401);

    // The form: the same, the token in the body.
    const form = await http(sb, 'POST', '/login', { 'content-type': 'application/x-www-form-urlencoded' }, `token=${encodeURIComponent(read)}`);
    expect(form.status).toBe(303);
    expect(sessionOf(form)).toMatch(/^tandem_session=/);
    const logout = await http(sb, 'POST', '/logout', { cookie });
    expect(String(logout.headers['set-cookie'])).toMatch(/^tandem_session=; Path=\/; Max-Age=0/);

    // The primary: a session made with the control token reads, and starts no backup.
    const p = primaryListen();
    const control = sessionOf(await http(p, 'GET', `/?token=${tokens.control.token}`));
    expect(control).toMatch(/^tandem_session=/);
    expect((await http(p, 'GET', '/', { cookie: control })).status).toBe(200);
    expect((await http(p, 'GET', '/status/history', { cookie: control })).status).toBe(200);
    const refused = await http(p, 'POST', '/v1/backup', { cookie: control });
    expect(refused.status).toBe(403);
    // A standby's token opens the push channel, not the status page.
    expect((await http(p, 'GET', '/', { authorization: `Bearer ${tokens.standbys[SB]!.token}` })).status).toBe(403);
    expect((await http(p, 'GET', `/?token=${tokens.standbys[SB]!.token}`)).status).toBe(401);
    // The standby's session is not the primary's (another token, another HMAC).
    expect((await http(p, 'GET', '/status', { cookie })).status).toBe(200); // same read token on both here
    expect((await http(sb, 'GET', '/status', { cookie: control })).status).toBe(401);
  });

  it("the standby's page in Chromium: the lag figures of /status, the sets, the push channel, a chart", async () => {
    const url = `http://${standby!.listen}/?token=${tokens.read.token}`;
    const dom = await chromium(url, { dumpDom: true }, join(root, 'chromium-standby-dom'));
    expect(dom, 'the script ran and drew the page').toContain('data-ready="true"');
    const st = JSON.parse((await httpGet(standby!.listen, '/status', tokens.read.token)).body) as { applyLagSeconds: number; pendingSets: number; recoveryPointAgeSeconds: number };
    expect(figureValue(dom, 'apply-lag')).toBe(duration(st.applyLagSeconds));
    expect(figureValue(dom, 'pending')).toBe(String(st.pendingSets));
    expect(figureValue(dom, 'recovery-point-age')).toMatch(/^\d+(ms|s|m)$/);
    for (const id of sets) expect(dom).toContain(id);
    expect(dom).toMatch(/id="push-state">connected since /);
    expect(dom).toContain('id="no-problems"');
    expect(dom).toMatch(/<svg class="chart"[^>]*data-chart="recovery-point-age"/);
    expect(dom).toMatch(/<path class="line s1" d="M[\d.]+ [\d.]+/);
    expect(dom).toMatch(/<svg class="bars"/); // the last apply's stages

    const shot = join(root, 'status-page.png');
    await chromium(url, { screenshot: shot }, join(root, 'chromium-standby-shot'));
    const png = await readFile(shot);
    expect(png.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
    expect(png.length).toBeGreaterThan(20_000);
    if (UPDATE_DOCS) await copyFile(shot, join(REPO_ROOT, 'docs', 'status-page.png'));
  });

  it("the primary's page in Chromium: the newest set, the last backup, the standby connected", async () => {
    const url = `http://${primaryListen()}/?token=${tokens.read.token}`;
    const dom = await chromium(url, { dumpDom: true }, join(root, 'chromium-primary-dom'));
    expect(dom).toContain('data-ready="true"');
    expect(dom).toContain(sets[1]);
    expect(figureValue(dom, 'last-backup')).toBe('ok');
    expect(figureValue(dom, 'standbys')).toBe('1 of 1');
    expect(dom).toContain(`>${SB}<`);
    expect(dom).toMatch(/not fenced \(epoch 1\)/);
    expect(dom).toContain('id="no-problems"');
    expect(dom).toMatch(/data-chart="standby-lag"/);
    if (UPDATE_DOCS) {
      const shot = join(root, 'status-page-primary.png');
      await chromium(url, { screenshot: shot }, join(root, 'chromium-primary-shot'));
      await mkdir(join(REPO_ROOT, 'docs'), { recursive: true });
      expect((await stat(shot)).size).toBeGreaterThan(20_000);
      await copyFile(shot, join(REPO_ROOT, 'docs', 'status-page-primary.png'));
    }
  });
});
