/**
 * Acceptance tests of issue 4, primary half: `tandem-primary run` (the daemon), the push channel
 * (/v1/stream) as a standby sees it, /status, /metrics, /healthz, heartbeat.json, `backup` delegated
 * to the daemon, and `prune`. Everything is real: the built CLI, PostgreSQL, a directory filestore,
 * a raw `ws` client playing the standby, raw TCP for the upgrade refusals.
 *
 * Needs: `npm run build` first, PostgreSQL on 127.0.0.1:5432 (or TANDEM_TEST_PG), pg_dump on PATH.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, open, readFile, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { encodeStandbyReport, loadSigningKeyFile, loadVerifyKeyFile, makeSetId, openFilestore, signManifest, verifyHeartbeat, type Manifest } from '@tandem/shared';
import { S3RVER_CREDENTIALS, s3rverEnv, s3rverFilestoreUrl, startS3rver } from './support/s3rver.js';
import {
  closedPort,
  createDemoDatabase,
  createSiteTree,
  dbUrl,
  dropDatabase,
  ensurePostgres,
  logRecords,
  makeKeys,
  requireBuilt,
  requireCommands,
  runPrimary,
  sleep,
  startPrimary,
  tmpDir,
  waitFor,
  initFilestore,
  writePrimaryConfig,
  type KeyFiles,
  type RunningPrimary,
  type SitePaths,
} from './support/site.js';

const SITE = 'demo';
const DB = `tandem_daemon_${process.pid}`;
const TOKEN = 'c0ffee00d15ea5e5a11ce0b0b0c0ffee42424242';
/** The monitoring token (server.readTokenFile) and each listed standby's own token. */
const READ_TOKEN = 'feedface0123456789abcdef0123456789read00';
const STANDBY_IDS = ['sb1', 'sb2', 'good', 'bad', 'hb'] as const;
const sbToken = (id: string) => `standby-${id}-token-0123456789abcdef`;

let work: string;
let keys: KeyFiles;
let site: SitePaths;
let store: string;
let stateDir: string;
let config: string;
let port: number;
let daemon: RunningPrimary | undefined;
const sockets: WebSocket[] = [];

beforeAll(async () => {
  requireCommands(['pg_dump']);
  requireBuilt();
  await ensurePostgres();
  work = await tmpDir('tandem-daemon-test-');
  store = join(work, 'store');
  stateDir = join(work, 'state');
  [, keys, site, port] = await Promise.all([createDemoDatabase(DB, { rows: 50 }), makeKeys(join(work, 'keys')), createSiteTree(join(work, 'site')), closedPort()]);
  const tokenFile = join(work, 'control.token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  const readTokenFile = join(work, 'read.token');
  await writeFile(readTokenFile, `${READ_TOKEN}\n`, { mode: 0o600 });
  const standbys = [];
  for (const id of STANDBY_IDS) {
    await writeFile(join(work, `standby-${id}.token`), `${sbToken(id)}\n`, { mode: 0o600 });
    standbys.push({ id, tokenFile: join(work, `standby-${id}.token`) });
  }
  config = await writePrimaryConfig(join(work, 'primary.yml'), {
    site: SITE,
    databaseUrl: dbUrl(DB),
    paths: site,
    filestoreUrl: pathToFileURL(store).href,
    keys: { signingKeyFile: keys.signingKeyFile, recipientFile: keys.recipientFile },
    stateDir,
    extra: {
      schedule: '0 3 * * *',
      timezone: 'Europe/Amsterdam',
      heartbeatInterval: '1s',
      server: { listen: `127.0.0.1:${port}`, tokenFile, readTokenFile },
      standbys,
    },
  });
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
const auth = { authorization: `Bearer ${TOKEN}` };

async function getStatus(): Promise<Record<string, any>> {
  const r = await fetch(`${base()}/status`, { headers: auth });
  expect(r.status).toBe(200);
  return (await r.json()) as Record<string, any>;
}

async function getMetrics(): Promise<string> {
  const r = await fetch(`${base()}/metrics`, { headers: auth });
  expect(r.status).toBe(200);
  return r.text();
}

/** Send a raw WebSocket upgrade request and return everything the server sends until it closes. */
function rawUpgrade(extraHeaders: string, path = '/v1/stream'): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`socket still open after 5 s; received: ${Buffer.concat(chunks).toString()}`));
    }, 5_000);
    sock.on('data', (c) => chunks.push(c));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
    sock.write(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`,
    );
  });
}

interface Standby {
  ws: WebSocket;
  messages: Array<Record<string, any>>;
  closed: Promise<{ code: number; reason: string }>;
}

/** A raw ws client acting as the listed standby `id` (with its own token). */
async function connectStandby(id: (typeof STANDBY_IDS)[number]): Promise<Standby> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`, { headers: { authorization: `Bearer ${sbToken(id)}` } });
  sockets.push(ws);
  const messages: Array<Record<string, any>> = [];
  ws.on('message', (data) => messages.push(JSON.parse(data.toString()) as Record<string, any>));
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  return { ws, messages, closed };
}

/** An idle connection (nothing sent) and a half-sent request; each resolves `closed` with ms after opening. */
interface Idle {
  label: string;
  openedAt: number;
  closed: Promise<number>;
}
let idle: Idle[] | undefined;
function openIdleConnections(): Idle[] {
  return [
    ['idle (nothing sent)', ''],
    ['half-sent request', 'GET /status HTTP/1.1\r\nHost: x\r\n'],
  ].map(([label, text]) => {
    const openedAt = Date.now();
    const sock = connect(port, '127.0.0.1', () => sock.write(text!));
    sock.on('error', () => undefined);
    sock.on('data', () => undefined);
    return { label: label!, openedAt, closed: new Promise<number>((r) => sock.on('close', () => r(Date.now() - openedAt))) };
  });
}

const msgs = (stderr: string) => logRecords(stderr).map((r) => String(r.msg));
const daemonLog = () => logRecords(daemon!.stderrSoFar());
const latestSetId = async () => (JSON.parse(await readFile(join(store, SITE, 'latest.json'), 'utf8')) as { setId: string }).setId;
const setDirs = async () => (await readdir(join(store, SITE, 'sets')).catch(() => [] as string[])).sort();

let firstSet: string;
let pushedSet: string;

describe('tandem-primary run', () => {
  it('starts with a ready line naming the address; /healthz answers without a token and says nothing else', async () => {
    // A first set, made locally, so that the daemon has no missed run to catch up on.
    const local = await runPrimary(['backup', '--config', config, '--local']);
    expect(local.code).toBe(0);
    expect(msgs(local.stderr).filter((m) => m.includes('daemon'))).toEqual([]);
    firstSet = local.stdout.trim();

    daemon = startPrimary(['run', '--config', config], { timeoutMs: 120_000 });
    const ready = await waitFor(() => daemonLog().find((r) => String(r.msg).startsWith('tandem-primary daemon ready')), 'the ready line', 20_000);
    expect(ready.listen).toBe(`127.0.0.1:${port}`);
    expect(ready.msg).toContain(`listening on http://127.0.0.1:${port}`);
    expect(daemonLog().some((r) => String(r.msg).includes('missed'))).toBe(false);

    const info = JSON.parse(await readFile(join(stateDir, 'daemon.json'), 'utf8')) as Record<string, unknown>;
    expect(info).toMatchObject({ pid: daemon.child.pid, listen: `127.0.0.1:${port}` });
    expect(typeof info.startedAt).toBe('string');
    const { stat } = await import('node:fs/promises');
    expect((await stat(join(stateDir, 'daemon.json'))).mode & 0o777).toBe(0o600);

    const h = await fetch(`${base()}/healthz`);
    expect(h.status).toBe(200);
    expect(await h.text()).toBe('ok\n');

    // A second daemon for the same state dir is refused.
    const second = await runPrimary(['run', '--config', config]);
    expect(second.code).toBe(75);
    expect(second.stderr).toMatch(/tandem-primary: error: a tandem-primary daemon for site "demo" is already running \(pid \d+, listening on 127\.0\.0\.1:\d+\)/);
  });

  it('refuses unauthenticated upgrades with a bare 401 and no WebSocket; /status and /metrics need the token', async () => {
    const bare = 'HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';
    expect(await rawUpgrade('')).toBe(bare);
    expect(await rawUpgrade('Authorization: Bearer wrong-token-wrong-token\r\n')).toBe(bare);
    expect(await rawUpgrade('', `/v1/stream?token=${TOKEN}`)).toBe(bare); // never from the query string
    expect(await rawUpgrade(`Authorization: Basic ${TOKEN}\r\n`)).toBe(bare);

    const refused = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`, { headers: { authorization: 'Bearer not-the-token-at-all' } });
    const status = await new Promise<number>((resolve) => {
      refused.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      refused.on('open', () => resolve(-1));
      refused.on('error', () => resolve(-2));
    });
    expect(status).toBe(401);

    for (const path of ['/status', '/metrics']) {
      expect((await fetch(`${base()}${path}`)).status).toBe(401);
      expect((await fetch(`${base()}${path}`, { headers: { authorization: 'Bearer nope-nope-nope-nope' } })).status).toBe(401);
    }
    expect((await fetch(`${base()}/v1/backup`, { method: 'POST' })).status).toBe(401);
    expect(await setDirs()).toEqual([firstSet]); // and no backup was made
  });

  it('gives each token its role only: the monitoring token reads /status and /metrics, nothing else; no control or monitoring token opens the push channel', async () => {
    idle = openIdleConnections();
    const read = { authorization: `Bearer ${READ_TOKEN}` };
    expect((await fetch(`${base()}/status`, { headers: read })).status).toBe(200);
    expect(await (await fetch(`${base()}/metrics`, { headers: read })).text()).toMatch(/^tandem_fenced 0$/m);
    const backup = await fetch(`${base()}/v1/backup`, { method: 'POST', headers: read });
    expect(backup.status).toBe(403);
    expect(((await backup.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('the control token (server.tokenFile)') });
    const forbidden = 'HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';
    expect(await rawUpgrade(`Authorization: Bearer ${READ_TOKEN}\r\n`)).toBe(forbidden);
    expect(await rawUpgrade(`Authorization: Bearer ${TOKEN}\r\n`)).toBe(forbidden);
    // A standby's token opens the push channel and nothing else.
    const sbAuth = { authorization: `Bearer ${sbToken('sb1')}` };
    expect((await fetch(`${base()}/status`, { headers: sbAuth })).status).toBe(403);
    expect((await fetch(`${base()}/v1/backup`, { method: 'POST', headers: sbAuth })).status).toBe(403);
    expect(await setDirs()).toEqual([firstSet]); // no backup was made
    expect(daemonLog().some((l) => String(l.msg).includes('refused a WebSocket upgrade with the monitoring token'))).toBe(true);

    // A monitoring token equal to the control token would undo the split: the daemon does not start.
    const same = join(work, 'primary-same-token.yml');
    await writeFile(same, (await readFile(config, 'utf8')).replace(join(work, 'read.token'), join(work, 'control.token')));
    const r = await runPrimary(['run', '--config', same]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${same}: server.tokenFile and server.readTokenFile hold the same token`);
  });

  it('says hello to a standby, and pushes set-committed when `tandem-primary backup` has the daemon back up', async () => {
    const sb = await connectStandby('sb1');
    await waitFor(() => sb.messages.length > 0, 'hello', 3_000);
    expect(sb.messages[0]).toMatchObject({ type: 'hello', site: SITE, epoch: 1, latestSetId: firstSet });
    expect(Date.parse(sb.messages[0]!.serverTime)).toBeGreaterThan(Date.now() - 60_000);
    sb.ws.send(JSON.stringify({ type: 'hello', standbyId: 'sb1', site: SITE, appliedSetId: firstSet, appliedCreatedAt: new Date().toISOString() }));

    const r = await runPrimary(['backup', '--config', config]);
    expect(r.code).toBe(0);
    pushedSet = r.stdout.trim();
    expect(pushedSet).toMatch(/^\d{8}T\d{6}Z-e1-\d{6}$/);
    expect(pushedSet > firstSet).toBe(true);
    // The CLI did not back up itself: the daemon did.
    expect(logRecords(r.stderr).some((l) => String(l.msg).includes('daemon is running: it makes the backup'))).toBe(true);
    expect(logRecords(r.stderr).some((l) => l.msg === 'backup started')).toBe(false);
    expect(daemonLog().some((l) => l.msg === 'backup requested over HTTP (tandem-primary backup)')).toBe(true);
    expect(daemonLog().some((l) => l.msg === 'backup started' && l.setId === pushedSet)).toBe(true);

    const pushed = await waitFor(() => sb.messages.find((m) => m.type === 'set-committed'), 'set-committed', 3_000);
    expect(pushed).toMatchObject({ type: 'set-committed', site: SITE, setId: pushedSet, epoch: 1 });
    const latest = JSON.parse(await readFile(join(store, SITE, 'latest.json'), 'utf8')) as Record<string, unknown>;
    expect(pushed).toEqual({ type: 'set-committed', site: SITE, setId: latest.setId, epoch: latest.epoch, seq: latest.seq, createdAt: latest.createdAt, committedAt: latest.committedAt });

    const status = await getStatus();
    expect(status.lastBackup).toMatchObject({ id: pushedSet, outcome: 'ok', trigger: 'request', error: null });
    expect(status.lastBackup.bytes).toBeGreaterThan(0);
    expect(status.lastBackup.duration).toBeGreaterThan(0);
    expect(Date.parse(status.nextRunAt)).toBeGreaterThan(Date.now());

    // --json prints what a local --json run prints.
    const j = await runPrimary(['backup', '--config', config, '--json']);
    expect(j.code).toBe(0);
    const out = JSON.parse(j.stdout) as Record<string, unknown>;
    expect(Object.keys(out).sort()).toEqual(['artifacts', 'createdAt', 'durations', 'epoch', 'setId', 'site', 'storedBytes']);
    await waitFor(() => sb.messages.find((m) => m.type === 'set-committed' && m.setId === out.setId), 'the second push', 3_000);
    pushedSet = String(out.setId);

    // Retention ran after the backups: the superseded sets of today are gone, the latest stays.
    await waitFor(async () => (await setDirs()).length === 1, 'retention after the backup', 10_000);
    expect(await setDirs()).toEqual([pushedSet]);
  });

  it('records `applied` from the standby in /status and /metrics', async () => {
    const sb = await connectStandby('sb2');
    sb.ws.send(JSON.stringify({ type: 'hello', standbyId: 'sb2', site: SITE, appliedSetId: null, appliedCreatedAt: null }));
    await waitFor(async () => (await getStatus()).standbys.some((s: any) => s.standbyId === 'sb2'), 'sb2 in /status', 3_000);
    const before = (await getStatus()).standbys.find((s: any) => s.standbyId === 'sb2');
    expect(before).toMatchObject({ standbyId: 'sb2', appliedSetId: null });

    const createdAt = (JSON.parse(await readFile(join(store, SITE, 'latest.json'), 'utf8')) as { createdAt: string }).createdAt;
    const appliedAt = new Date().toISOString();
    sb.ws.send(JSON.stringify({ type: 'applied', standbyId: 'sb2', setId: pushedSet, createdAt, appliedAt }));
    const s = await waitFor(async () => (await getStatus()).standbys.find((x: any) => x.standbyId === 'sb2' && x.appliedSetId === pushedSet), 'applied in /status', 3_000);
    expect(s).toMatchObject({ standbyId: 'sb2', appliedSetId: pushedSet, appliedAt, lagSeconds: 0 });
    expect(Date.parse(s.connectedSince)).toBeLessThanOrEqual(Date.now());

    const m = await getMetrics();
    expect(m).toMatch(/^tandem_primary_standbys_connected 2$/m);
    expect(m).toMatch(/^tandem_primary_standby_lag_seconds\{standby="sb2"\} 0$/m);
    expect(m).toMatch(/^tandem_last_backup_success 1$/m);
    expect(m).toMatch(/^tandem_backups_total\{outcome="ok"\} 2$/m);
    expect(m).toMatch(/^tandem_last_backup_duration_seconds\{stage="db"\} [0-9.e-]+$/m);
    expect(m).toMatch(/^tandem_last_backup_stored_bytes [1-9]\d*$/m);
    expect(m).toMatch(/^tandem_fenced 0$/m);
    expect(m).toMatch(/^tandem_next_backup_timestamp_seconds [1-9]/m);
    expect(m).toMatch(/^tandem_last_backup_timestamp_seconds [1-9]/m);
    expect(m).toMatch(/^tandem_heartbeat_timestamp_seconds [1-9]/m);
    expect(m).toMatch(/^tandem_filestore_errors_total 0$/m);
  });

  it('writes heartbeat.json, signed, and sends heartbeat messages', async () => {
    const verifyKey = loadVerifyKeyFile(keys.verifyKeyFile);
    const hb = await waitFor(async () => {
      const raw = await readFile(join(store, SITE, 'heartbeat.json')).catch(() => null);
      if (!raw) return null;
      const h = verifyHeartbeat(raw, verifyKey, 'heartbeat.json');
      return h.lastBackup?.setId === pushedSet ? h : null;
    }, 'a heartbeat naming the last backup', 5_000);
    expect(hb).toMatchObject({ format: 'tandem-heartbeat', version: 1, site: SITE, epoch: 1, lastBackup: { setId: pushedSet, outcome: 'ok' } });
    expect(Date.now() - Date.parse(hb.at)).toBeLessThan(10_000);
    expect(Date.parse(hb.nextBackupAt!)).toBeGreaterThan(Date.now());
    const sb = await connectStandby('hb');
    await waitFor(() => sb.messages.some((m) => m.type === 'heartbeat'), 'a heartbeat message', 3_000);
  });

  it('closes a standby that sends a malformed message with 1008, and keeps serving the others', async () => {
    const good = await connectStandby('good');
    good.ws.send(JSON.stringify({ type: 'hello', standbyId: 'good', site: SITE, appliedSetId: null, appliedCreatedAt: null }));
    const cases: Array<[string, RegExp]> = [
      ['this is not json', /not UTF-8 JSON/],
      [JSON.stringify({ type: 'set-committed', site: SITE }), /message type "set-committed" is not one of hello, applied/],
      [JSON.stringify({ type: 'hello', standbyId: '../etc', site: SITE, appliedSetId: null, appliedCreatedAt: null }), /standbyId/],
      [JSON.stringify({ type: 'applied', standbyId: 'x', setId: pushedSet, createdAt: new Date().toISOString(), appliedAt: new Date().toISOString() }), /"applied" before hello/],
      [JSON.stringify({ type: 'hello', standbyId: 'x', site: 'other', appliedSetId: null, appliedCreatedAt: null }), /wrong site/],
      // A standby's token speaks for that standby only.
      [JSON.stringify({ type: 'hello', standbyId: 'good', site: SITE, appliedSetId: null, appliedCreatedAt: null }), /names standby "good", but this connection's token is standby "bad"'s/],
    ];
    for (const [frame, reason] of cases) {
      const bad = await connectStandby('bad');
      bad.ws.send(frame);
      const closed = await bad.closed;
      expect(closed.code).toBe(1008);
      expect(closed.reason).toMatch(reason);
    }
    expect(good.ws.readyState).toBe(WebSocket.OPEN);
    expect((await fetch(`${base()}/healthz`)).status).toBe(200);
    expect((await getStatus()).standbys.some((s: any) => s.standbyId === 'good')).toBe(true);
    expect(daemon!.child.exitCode).toBeNull();
  });

  it('answers 409 to a second backup request while one runs', async () => {
    const post = () => fetch(`${base()}/v1/backup`, { method: 'POST', headers: auth });
    const [a, b] = await Promise.all([post(), sleep(50).then(post)]);
    expect([a.status, b.status].sort()).toEqual([200, 409]);
    const busy = (a.status === 409 ? a : b);
    expect(((await busy.json()) as { error: { kind: string; message: string } }).error).toMatchObject({ kind: 'busy', message: expect.stringMatching(/already running in the daemon/) });
    const ok = (await (a.status === 200 ? a : b).json()) as { setId: string };
    expect(ok.setId).toBe(await latestSetId());
    pushedSet = ok.setId;
    await waitFor(() => daemonLog().filter((l) => l.msg === 'retention done').length >= 3, 'retention after the third backup', 10_000);
  });

  it('prune --dry-run lists what it would delete and why, and deletes nothing; prune deletes it manifest first', async () => {
    // sb2 applied the previous set: the daemon's retention kept it (WebSocket report). A real standby
    // also writes its report into the filestore, which is what a manual prune reads.
    const kept = (await setDirs()).filter((id) => id !== pushedSet);
    expect(kept).toHaveLength(1);
    const appliedAt = new Date().toISOString();
    await mkdir(join(store, SITE, 'standbys'), { recursive: true });
    await writeFile(join(store, SITE, 'standbys', 'sb2.json'), encodeStandbyReport({ standbyId: 'sb2', setId: kept[0]!, createdAt: new Date().toISOString(), appliedAt }));

    // An old committed set and an old leftover, as weeks of operation would leave them.
    const oldTime = new Date(Date.now() - 40 * 86_400_000);
    const oldSet = makeSetId(oldTime, 1, 1);
    const leftover = makeSetId(new Date(Date.now() - 3 * 86_400_000), 1, 2);
    await mkdir(join(store, SITE, 'sets', oldSet), { recursive: true });
    await writeFile(join(store, SITE, 'sets', oldSet, 'db.dump.zst.age'), 'x');
    // Signed like a real one (retention trusts no manifest that does not verify): the newest set's, re-dated.
    const { signature: _sig, ...base } = JSON.parse(await readFile(join(store, SITE, 'sets', pushedSet, 'manifest.json'), 'utf8')) as Manifest & { signature: unknown };
    const oldManifest = { ...base, setId: oldSet, seq: 1, createdAt: oldTime.toISOString(), completedAt: oldTime.toISOString() };
    await writeFile(join(store, SITE, 'sets', oldSet, 'manifest.json'), signManifest(oldManifest, loadSigningKeyFile(keys.signingKeyFile)));
    await mkdir(join(store, SITE, 'sets', leftover), { recursive: true });
    await writeFile(join(store, SITE, 'sets', leftover, 'db.dump.zst.age'), 'x');
    const threeDaysAgo = new Date(Date.now() - 3 * 86_400_000);
    await utimes(join(store, SITE, 'sets', leftover, 'db.dump.zst.age'), threeDaysAgo, threeDaysAgo);
    const before = await setDirs();
    expect(before).toEqual([oldSet, leftover, kept[0]!, pushedSet].sort());

    const dry = await runPrimary(['prune', '--config', config, '--dry-run']);
    expect(dry.code).toBe(0);
    const lines = dry.stdout.trim().split('\n');
    expect(lines).toContainEqual(`would delete  ${oldSet}  older than the last 7 day(s) and 4 week(s)`);
    expect(lines).toContainEqual(`would delete  ${leftover}  uncommitted leftover of an interrupted backup, older than 24 h [uncommitted]`);
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^keep +${pushedSet}  latest.json names it; daily: newest of \\d{4}-\\d\\d-\\d\\d; weekly: newest of \\d{4}-W\\d\\d$`)));
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^keep +${kept[0]}  standby sb2 applied it at ${appliedAt} \\(within 24 h\\)$`)));
    expect(lines.at(-1)).toBe('dry run: 2 set(s) would be deleted, 2 kept; nothing was changed');
    expect(await setDirs()).toEqual(before);

    const json = await runPrimary(['prune', '--config', config, '--dry-run', '--json']);
    const plan = JSON.parse(json.stdout) as { dryRun: boolean; delete: Array<{ setId: string; reasons: string[] }>; deleted: string[] };
    expect(plan.dryRun).toBe(true);
    expect(plan.delete.map((d) => d.setId).sort()).toEqual([oldSet, leftover].sort());
    expect(plan.deleted).toEqual([]);
    expect(await setDirs()).toEqual(before);

    const real = await runPrimary(['prune', '--config', config]);
    expect(real.code).toBe(0);
    expect(real.stdout).toMatch(new RegExp(`^deleted  ${oldSet}  older than`, 'm'));
    expect(real.stdout.trim().split('\n').at(-1)).toBe('2 of 2 set(s) deleted, 2 kept');
    expect(await setDirs()).toEqual([kept[0]!, pushedSet].sort());
  });

  it('closes an idle and a half-sent connection within the header timeout, and closes connections past the cap at once', async () => {
    // Opened by the token test, seconds ago: both must be gone 10 s (+ the 1 s check) after they opened.
    const closedAfter = await Promise.all(idle!.map((c) => Promise.race([c.closed, sleep(Math.max(0, c.openedAt + 13_000 - Date.now())).then(() => -1)])));
    for (const [i, ms] of closedAfter.entries()) {
      expect(ms, `${idle![i]!.label}: still open 13 s after it opened`).toBeGreaterThan(0);
      expect(ms, idle![i]!.label).toBeLessThan(12_500);
      expect(ms, idle![i]!.label).toBeGreaterThan(9_000);
    }
    // 140 sockets at once: the ones past the cap (128 open connections, these and the standbys' of
    // the tests above) are closed at once, and the daemon serves again once they are gone.
    const socks = Array.from({ length: 140 }, () => {
      const sock = connect(port, '127.0.0.1');
      sock.on('error', () => undefined);
      const t0 = Date.now();
      return { sock, closed: new Promise<number>((r) => sock.on('close', () => r(Date.now() - t0))) };
    });
    await sleep(1_000);
    const early = (await Promise.all(socks.map((x) => Promise.race([x.closed, sleep(0).then(() => -1)])))).filter((ms) => ms >= 0).length;
    expect(early).toBeGreaterThanOrEqual(140 - 128);
    expect(early).toBeLessThan(140 - 128 + sockets.length + 1);
    for (const x of socks) x.sock.destroy();
    await waitFor(async () => (await fetch(`${base()}/healthz`).then((r) => r.status, () => 0)) === 200 || null, '/healthz after the flood', 5_000);
  });

  it('SIGTERM aborts a running backup (nothing committed), exits 0 and removes daemon.json', async () => {
    // A 1 GiB sparse file makes the files artifact take seconds: long enough to interrupt.
    const fh = await open(join(site.files, 'sparse.bin'), 'w');
    await fh.truncate(1024 ** 3);
    await fh.close();
    const latestBefore = await latestSetId();
    const setsBefore = await setDirs();
    const post = fetch(`${base()}/v1/backup`, { method: 'POST', headers: auth }).then(
      async (r) => ({ status: r.status, body: (await r.json()) as Record<string, any> }),
      (err: unknown) => ({ status: 0, body: { err: String(err) } }),
    );
    await waitFor(() => daemonLog().some((l) => l.msg === 'artifact uploaded' && l.artifact === 'db' && typeof l.setId === 'string' && l.setId > pushedSet), 'the db artifact of the backup', 20_000);
    const tKill = Date.now();
    daemon!.child.kill('SIGTERM');
    const r = await daemon!.result;
    expect(r.code).toBe(0);
    expect(Date.now() - tKill).toBeLessThan(4_000); // aborted where it was, not after the 1 GiB artifact
    expect(logRecords(r.stderr).some((l) => l.msg === 'backup aborted; nothing committed')).toBe(true);
    expect(msgs(r.stderr)).not.toContain('handles still open 5 s after shutdown; exiting anyway');
    const answered = await post;
    expect([0, 503, 500]).toContain(answered.status);
    expect(existsSync(join(stateDir, 'daemon.json'))).toBe(false);
    expect(await latestSetId()).toBe(latestBefore);
    expect(await setDirs()).toEqual(setsBefore);
    await rm(join(site.files, 'sparse.bin'));
  });

  it('without the daemon, `backup` runs locally again; with an unreachable one, locally with a warning', async () => {
    const r = await runPrimary(['backup', '--config', config]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(await latestSetId());
    expect(msgs(r.stderr).filter((m) => m.includes('daemon'))).toEqual([]);
    expect(msgs(r.stderr)).toContain('backup committed');

    // daemon.json names a live process (this test runner) on a port nobody listens on.
    await writeFile(join(stateDir, 'daemon.json'), JSON.stringify({ pid: process.pid, listen: `127.0.0.1:${await closedPort()}`, startedAt: new Date().toISOString() }));
    const u = await runPrimary(['backup', '--config', config]);
    expect(u.code).toBe(0);
    expect(u.stdout.trim()).toBe(await latestSetId());
    const warning = logRecords(u.stderr).find((l) => l.msg === 'the daemon cannot be reached: backing up locally instead');
    expect(warning?.level).toBe(40);
    expect(msgs(u.stderr)).toContain('backup committed');
    await rm(join(stateDir, 'daemon.json'));
  });
});

describe('tandem-primary run through a filestore outage (s3rver)', () => {
  it('stays up, counts the errors, and carries on when the S3 server is back', async () => {
    const s3 = await startS3rver({ buckets: ['tandem'] });
    const url = s3rverFilestoreUrl(s3, { prefix: 'unique' });
    const reader = openFilestore(url, { s3: { credentials: S3RVER_CREDENTIALS } });
    const s3Port = await closedPort();
    const s3State = join(work, 'state-s3');
    const s3Config = await writePrimaryConfig(join(work, 'primary-s3.yml'), {
      site: SITE,
      databaseUrl: dbUrl(DB),
      paths: site,
      filestoreUrl: url,
      keys: { signingKeyFile: keys.signingKeyFile, recipientFile: keys.recipientFile },
      stateDir: s3State,
      extra: { heartbeatInterval: '1s', server: { listen: `127.0.0.1:${s3Port}` }, onFenced: `echo "$TANDEM_SITE $TANDEM_EPOCH $TANDEM_FILESTORE_EPOCH" > ${join(work, 'fenced.txt')}` },
    });
    await initFilestore(s3Config, s3rverEnv());
    const noToken = await runPrimary(['run', '--config', s3Config], { env: { ...s3rverEnv(), TANDEM_TOKEN: '' } });
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toMatch(/tandem-primary: error: no token: set server.tokenFile in the config or TANDEM_TOKEN in the environment\n  hint: make one with `openssl rand -hex 32/);
    const env = { ...s3rverEnv(), TANDEM_TOKEN: TOKEN };
    // No backup yet at all: the daemon makes one at start-up (the missed-run rule).
    const d = startPrimary(['run', '--config', s3Config], { env, timeoutMs: 120_000 });
    const log = () => logRecords(d.stderrSoFar());
    const url2 = (p: string) => `http://127.0.0.1:${s3Port}${p}`;
    const metric = async (name: string) => {
      const text = await (await fetch(url2('/metrics'), { headers: auth })).text();
      return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
    };
    const heartbeatAt = async () => {
      try {
        return (JSON.parse((await reader.getBuffer(`${SITE}/heartbeat.json`)).body.toString()) as { at: string }).at;
      } catch {
        return null;
      }
    };
    try {
      await waitFor(() => log().some((l) => String(l.msg).startsWith('the last scheduled backup was missed')), 'the missed run at start-up', 20_000);
      const first = await waitFor(() => log().find((l) => l.msg === 'backup committed'), 'the start-up backup', 30_000);
      await waitFor(heartbeatAt, 'a heartbeat on S3', 5_000);

      await s3.stop();
      await waitFor(async () => (await metric('tandem_filestore_errors_total')) > 0, 'filestore errors counted', 10_000);
      const failed = await fetch(url2('/v1/backup'), { method: 'POST', headers: auth });
      expect(failed.status).toBe(500);
      expect(((await failed.json()) as { error: { message: string } }).error.message).toBeTruthy();
      expect((await fetch(url2('/healthz'))).status).toBe(200);
      expect(await metric('tandem_last_backup_success')).toBe(0);
      expect(d.child.exitCode).toBeNull();

      await s3.restart();
      const before = await heartbeatAt();
      await waitFor(async () => {
        const at = await heartbeatAt();
        return at !== null && at !== before;
      }, 'heartbeats again after the outage', 10_000);
      const ok = await fetch(url2('/v1/backup'), { method: 'POST', headers: auth });
      expect(ok.status).toBe(200);
      const set = ((await ok.json()) as { setId: string }).setId;
      expect(set > String(first.setId)).toBe(true);
      expect(await metric('tandem_last_backup_success')).toBe(1);
      const status = (await (await fetch(url2('/status'), { headers: auth })).json()) as Record<string, any>;
      expect(status.lastBackup).toMatchObject({ id: set, outcome: 'ok' });

      // Another server is promoted: the epoch rises. This primary stops at once.
      await reader.putBuffer(`${SITE}/epoch.json`, Buffer.from(JSON.stringify({ format: 'tandem-epoch', version: 1, epoch: 2, primaryHost: 'web2', since: new Date().toISOString() })));
      await waitFor(async () => (await metric('tandem_fenced')) === 1, 'tandem_fenced 1', 10_000);
      expect(await waitFor(() => readFile(join(work, 'fenced.txt'), 'utf8').catch(() => ''), 'onFenced', 5_000)).toBe(`${SITE} 1 2\n`);
      const refused = await fetch(url2('/v1/backup'), { method: 'POST', headers: auth });
      expect(refused.status).toBe(503);
      expect(((await refused.json()) as { error: { kind: string } }).error.kind).toBe('fenced');
      const cli = await runPrimary(['backup', '--config', s3Config], { env });
      expect(cli.code).toBe(4);
      expect(cli.stderr).toMatch(/tandem-primary: error: this primary is fenced/);
      expect(await metric('tandem_next_backup_timestamp_seconds')).toBe(0);
      const fencedHeartbeat = await heartbeatAt();
      await sleep(1_500);
      expect(await heartbeatAt()).toBe(fencedHeartbeat); // no more heartbeats over the new primary's
      d.child.kill('SIGTERM');
      expect((await d.result).code).toBe(0);
    } finally {
      if (d.child.exitCode === null) d.child.kill('SIGKILL');
      await reader.close();
      await s3.destroy();
    }
  });
});
