/**
 * Network surface of both daemons (127.0.0.1 only, bounded in count and time): requests without a
 * token, with wrong tokens, with the token in the query string (refused, and never logged), each
 * token used beyond its role (the monitoring token Prometheus holds, the control token, a standby's
 * token naming another standby), oversized and malformed WebSocket frames, idle and half-sent
 * connections, more connections than the cap, and a flood of connections. Afterwards both daemons
 * answer /healthz, serve an authenticated client, logged no token, and their memory stayed put.
 */
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { closedPort, ensurePostgres, logRecords, requireCommands, sleep, startPrimary, tmpDir, waitFor, type RunningPrimary } from '../support/site.js';
import { backup, createStandbySite, dropSiteDatabases, type StandbySite } from '../support/standby-helpers.js';
import { httpGet, startStandbyDaemon, writeDaemonConfig, writeToken, type RunningStandby } from '../support/standby-daemon.js';
import { writeTokens, type TokenSet } from '../support/tokens.js';
import { Tally } from './support/refusal.js';

const tally = new Tally('network surface');
// Every token of both daemons: the primary's control and monitoring tokens, the listed standbys'
// own tokens (net-sb is the standby daemon; net-probe, net-good: raw clients), the standby's monitoring token.
let tokens: TokenSet;
let P_TOKEN: string;
let P_READ: string;
let SB_TOKEN: string;
let PROBE_TOKEN: string;
const S_READ = 'standby-monitoring-token-0123456789abcd';
const allTokens = () => [P_TOKEN, P_READ, SB_TOKEN, PROBE_TOKEN, tokens.standbys['net-good']!.token, S_READ];
let root: string;
let s: StandbySite;
let primary: RunningPrimary;
let standby: RunningStandby;
let pPort: number;
let sListen: string;
const sockets: WebSocket[] = [];

const rssKiB = async (pid: number): Promise<number> => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))![1]);

beforeAll(async () => {
  requireCommands(['pg_dump', 'pg_restore']);
  await ensurePostgres();
  root = await tmpDir('tandem-faults-net-');
  s = await createStandbySite(root);
  await backup(s);
  pPort = await closedPort();
  tokens = await writeTokens(join(root, 'tokens'), 'net', ['net-sb', 'net-probe', 'net-good']);
  P_TOKEN = tokens.control.token;
  P_READ = tokens.read.token;
  SB_TOKEN = tokens.standbys['net-sb']!.token;
  PROBE_TOKEN = tokens.standbys['net-probe']!.token;
  const pdoc = fromYaml(await readFile(s.primary.configFile, 'utf8')) as Record<string, unknown>;
  pdoc.server = tokens.primaryServer(`127.0.0.1:${pPort}`);
  pdoc.standbys = tokens.primaryStandbys();
  pdoc.heartbeatInterval = '2s';
  // A switchover would run these: they must never run here.
  pdoc.onFenced = `touch '${join(root, 'onfenced-ran')}'`;
  pdoc.onResume = `touch '${join(root, 'onresume-ran')}'`;
  await writeFile(s.primary.configFile, toYaml(pdoc));
  primary = startPrimary(['run', '--config', s.primary.configFile], { timeoutMs: 600_000, env: { ...s.env, TANDEM_LOG_LEVEL: 'debug' } });
  await waitFor(() => logRecords(primary.stderrSoFar()).find((r) => String(r.msg).startsWith('tandem-primary daemon ready')), 'the primary ready line', 20_000);

  const scfg = await writeDaemonConfig(s, join(root, 'standby-daemon.yml'), {
    pollInterval: '2s',
    standbyId: 'net-sb',
    primary: { url: `ws://127.0.0.1:${pPort}`, tokenFile: tokens.standbys['net-sb']!.file },
    readTokenFile: await writeToken(join(root, 'tokens', 'standby-read.token'), S_READ),
  });
  standby = await startStandbyDaemon(scfg, s.standby.stateDir, { TANDEM_LOG_LEVEL: 'debug' });
  sListen = standby.listen;
  await waitFor(async () => (await httpGet(sListen, '/healthz')).status === 200 || null, 'standby /healthz', 20_000);
});

afterAll(async () => {
  tally.print();
  for (const w of sockets) w.terminate();
  if (standby && standby.child.exitCode === null) await standby.stop('SIGKILL');
  if (primary && primary.child.exitCode === null) {
    primary.child.kill('SIGKILL');
    await primary.result;
  }
  if (s) await dropSiteDatabases(s);
  if (root) await rm(root, { recursive: true, force: true });
});

/** A raw HTTP request; resolves with everything the server sent until it closed (or 5 s passed). */
function raw(port: number, text: string | Buffer): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    }, 5_000);
    sock.on('data', (c) => chunks.push(c));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
    sock.write(text);
  });
}

const upgrade = (path: string, headers: string) =>
  `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${pPort}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${headers}\r\n`;
const get = (path: string, headers: string, port: number, method = 'GET') => `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n${headers}\r\n`;
const statusOf = (resp: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(resp)?.[1] ?? 0);
const bodyOf = (resp: string) => resp.slice(resp.indexOf('\r\n\r\n') + 4);

function badCredentials(token: string): string[] {
  return [
    '',
    'Authorization: Bearer\r\n',
    'Authorization: Bearer \r\n',
    'Authorization: Bearer wrong-token-wrong-token-wrong\r\n',
    `Authorization: Bearer ${token.slice(0, -1)}\r\n`,
    `Authorization: Bearer ${token}x\r\n`,
    `Authorization: Bearer ${token.toUpperCase()}\r\n`,
    `Authorization: Basic ${token}\r\n`,
    `Authorization: ${token}\r\n`,
    `Authorization: Bearer ${'A'.repeat(8000)}\r\n`,
    `Cookie: token=${token}\r\n`,
    `X-Token: ${token}\r\n`,
  ];
}
const queryTokens = (token: string) => [`?token=${token}`, `?access_token=${token}`, `?authorization=Bearer%20${token}`];

const UNAUTHORIZED_BODY = '{"error":{"kind":"config","code":"UNAUTHORIZED","message":"missingorwrongtoken:sendAuthorization:Bearer<token>"}}';

/** Nothing a 401 may reveal: no site name, set id, host, paths, versions. */
function expectBare401(resp: string, what: string): void {
  expect(statusOf(resp), `${what}\n${resp}`).toBe(401);
  // The body is empty (upgrades) or one fixed error document, whatever was sent.
  const body = bodyOf(resp);
  expect(['', UNAUTHORIZED_BODY], `${what}: body ${body}`).toContain(body.replace(/\s+/g, ''));
  for (const secret of [s.site, 'tandem_', root, 'sets', 'epoch', '0.1.0', ...allTokens()]) expect(resp, what).not.toContain(secret);
  expect(resp).not.toMatch(/^Server:|^X-Powered-By:/im);
}

describe('network surface: authentication', () => {
  it('primary: /v1/stream upgrades, /status, /metrics, POST /v1/backup refuse every bad credential with a bare 401', async () => {
    const setsBefore = await setCount();
    for (const cred of badCredentials(P_TOKEN)) {
      expectBare401(await raw(pPort, upgrade('/v1/stream', cred)), `upgrade with [${cred.trim()}]`);
      for (const path of ['/status', '/metrics']) expectBare401(await raw(pPort, get(path, cred, pPort)), `${path} with [${cred.trim()}]`);
      expectBare401(await raw(pPort, get('/v1/backup', `${cred}Content-Length: 0\r\n`, pPort, 'POST')), `POST /v1/backup with [${cred.trim()}]`);
      tally.add('primary: bad credential x 4 endpoints', 4);
    }
    for (const q of queryTokens(P_TOKEN)) {
      expectBare401(await raw(pPort, upgrade(`/v1/stream${q}`, '')), `upgrade ${q}`);
      expectBare401(await raw(pPort, get(`/status${q}`, '', pPort)), `/status ${q}`);
      expectBare401(await raw(pPort, get(`/v1/backup${q}`, 'Content-Length: 0\r\n', pPort, 'POST')), `/v1/backup ${q}`);
      tally.add('primary: token in the query string x 3 endpoints', 3);
    }
    expect(await setCount()).toBe(setsBefore); // no backup was started
  });

  it('standby: /status and /metrics refuse every bad credential with a bare 401', async () => {
    const port = Number(sListen.split(':').at(-1));
    for (const cred of [...badCredentials(S_READ), `Authorization: Bearer ${P_READ}\r\n`, `Authorization: Bearer ${P_TOKEN}\r\n`]) {
      for (const path of ['/status', '/metrics']) expectBare401(await raw(port, get(path, cred, port)), `${path} with [${cred.trim()}]`);
      tally.add('standby: bad credential x 2 endpoints', 2);
    }
    for (const q of queryTokens(S_READ)) {
      for (const path of ['/status', '/metrics']) expectBare401(await raw(port, get(`${path}${q}`, '', port)), `${path} ${q}`);
      tally.add('standby: token in the query string x 2 endpoints', 2);
    }
  });

  it('odd requests get a plain 4xx and the daemons keep serving', async () => {
    const port = Number(sListen.split(':').at(-1));
    const odd = [
      'GARBAGE\r\n\r\n',
      'GET / HTTP/1.1\r\n\r\n',
      `GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n`,
      `GET /healthz?${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      `GET /status HTTP/1.1\r\nHost: x\r\n${'X-Pad: y\r\n'.repeat(2000)}\r\n`,
      `DELETE /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      `POST /v1/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`,
      Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]), // a TLS ClientHello fragment
    ];
    for (const p of [pPort, port]) {
      for (const req of odd) {
        const resp = await raw(p, req);
        const code = statusOf(resp);
        expect(code === 0 || (code >= 400 && code < 500), `${String(req).slice(0, 40)} -> ${resp.slice(0, 200)}`).toBe(true);
        for (const t of allTokens()) expect(resp).not.toContain(t);
        tally.add('odd or malformed HTTP request');
      }
      expect(statusOf(await raw(p, get('/healthz', '', p)))).toBe(200);
    }
  });
});

describe('network surface: each token only what it grants', () => {
  it('the monitoring token (what Prometheus holds) reads /status and /metrics of the primary, and nothing else: no backup, no push channel, no switchover', async () => {
    const setsBefore = await setCount();
    const read = `Authorization: Bearer ${P_READ}\r\n`;
    expect(statusOf(await raw(pPort, get('/status', read, pPort)))).toBe(200);
    expect(bodyOf(await raw(pPort, get('/metrics', read, pPort)))).toMatch(/^tandem_fenced 0$/m);
    const backup = await raw(pPort, get('/v1/backup', `${read}Content-Length: 0\r\n`, pPort, 'POST'));
    expect(statusOf(backup)).toBe(403);
    expect(bodyOf(backup)).toContain('the control token (server.tokenFile)');
    // Neither the monitoring nor the control token opens the push channel, so neither can ask for a switchover.
    for (const t of [P_READ, P_TOKEN]) {
      expect(await raw(pPort, upgrade('/v1/stream', `Authorization: Bearer ${t}\r\n`))).toBe('HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    }
    // The standby's monitoring token reads the standby's /status; the primary's does not.
    expect((await httpGet(sListen, '/status', S_READ)).status).toBe(200);
    expect((await httpGet(sListen, '/metrics', S_READ)).status).toBe(200);
    tally.add('monitoring or control token used beyond its role (refused)', 3);
    expect(await setCount()).toBe(setsBefore);
    expect(existsSync(join(root, 'onfenced-ran'))).toBe(false);
  });

  it("a listed standby's token opens the push channel only, as that standby: a switchover request or hello under another id is closed, onFenced never runs", async () => {
    const setsBefore = await setCount();
    const probe = `Authorization: Bearer ${PROBE_TOKEN}\r\n`;
    for (const path of ['/status', '/metrics']) expect(statusOf(await raw(pPort, get(path, probe, pPort)))).toBe(403);
    expect(statusOf(await raw(pPort, get('/v1/backup', `${probe}Content-Length: 0\r\n`, pPort, 'POST')))).toBe(403);
    const claims = [
      { type: 'switchover-request', requestId: 'made-up-0002', site: s.site, standbyId: 'made-up', timeoutSeconds: 3600 },
      { type: 'switchover-request', requestId: 'made-up-0003', site: s.site, standbyId: 'net-sb', timeoutSeconds: 3600 },
      { type: 'hello', standbyId: 'net-sb', site: s.site, appliedSetId: null, appliedCreatedAt: null },
    ];
    for (const claim of claims) {
      const c = await client('net-probe');
      c.ws.send(JSON.stringify(claim));
      const closed = await Promise.race([c.closed, sleep(5_000).then(() => ({ code: -1, reason: 'still open after 5 s' }))]);
      expect(closed.code, JSON.stringify(claim)).toBe(1008);
      expect(closed.reason).toContain(`but this connection's token is standby "net-probe"'s`);
      tally.add("standby token claiming another standby's id (closed)");
    }
    await sleep(300);
    // The real standby's connection was not replaced by the claim to be net-sb.
    const st = JSON.parse(bodyOf(await raw(pPort, get('/status', `Authorization: Bearer ${P_READ}\r\n`, pPort)))) as { standbys: Array<{ standbyId: string }>; switchover: unknown };
    expect(st.standbys.map((x) => x.standbyId)).toContain('net-sb');
    expect(st.switchover).toBeNull();
    expect(existsSync(join(root, 'onfenced-ran'))).toBe(false);
    expect(await setCount()).toBe(setsBefore);
    tally.add('standby token used beyond its role (refused)', 3);
  });
});

describe('network surface: connection limits', () => {
  it('both daemons close idle and half-sent connections within 10-12.5 s, and close connections past the cap of 128 at once', async () => {
    const sPort = Number(sListen.split(':').at(-1));
    /** A connection that sends `text`, then (with trickle) one more header line a second. */
    const openIdle = (port: number, text: string, trickle = false) => {
      const t0 = Date.now();
      const sock = connect(port, '127.0.0.1', () => sock.write(text));
      sock.on('error', () => undefined);
      sock.on('data', () => undefined);
      const timer = trickle ? setInterval(() => sock.writable && sock.write('X-Slow: y\r\n'), 1_000) : null;
      return new Promise<number>((r) =>
        sock.on('close', () => {
          if (timer) clearInterval(timer);
          r(Date.now() - t0);
        }),
      );
    };
    const idle = [pPort, sPort].flatMap((port) => [
      { what: `port ${port === pPort ? 'primary' : 'standby'}: nothing sent`, closed: openIdle(port, '') },
      { what: `port ${port === pPort ? 'primary' : 'standby'}: half-sent request`, closed: openIdle(port, 'GET /status HTTP/1.1\r\nHost: x\r\n') },
      { what: `port ${port === pPort ? 'primary' : 'standby'}: one header a second`, closed: openIdle(port, 'GET /status HTTP/1.1\r\n', true) },
    ]);
    const after = await Promise.all(idle.map((c) => Promise.race([c.closed, sleep(20_000).then(() => -1)])));
    for (const [i, ms] of after.entries()) {
      expect(ms, `${idle[i]!.what}: still open after 20 s`).toBeGreaterThan(0);
      expect(ms, idle[i]!.what).toBeGreaterThan(9_000);
      expect(ms, idle[i]!.what).toBeLessThan(12_500);
      tally.add('idle or slow connection cut off within the header timeout');
    }
    for (const port of [pPort, sPort]) {
      const socks = Array.from({ length: 160 }, () => {
        const sock = connect(port, '127.0.0.1');
        sock.on('error', () => undefined);
        return { sock, closed: new Promise<boolean>((r) => sock.on('close', () => r(true))) };
      });
      await sleep(1_000);
      const early = (await Promise.all(socks.map((x) => Promise.race([x.closed, sleep(0).then(() => false)])))).filter(Boolean).length;
      expect(early, `port ${port}`).toBeGreaterThanOrEqual(160 - 128);
      expect(early, `port ${port}`).toBeLessThanOrEqual(160 - 128 + 10);
      for (const x of socks) x.sock.destroy();
      tally.add('connection past the cap closed at once', early);
      await waitFor(async () => statusOf(await raw(port, get('/healthz', '', port))) === 200 || null, '/healthz after the cap', 5_000);
    }
    // The standby's push channel survived the flood of the primary's port (the cap refuses new connections only).
    const st = JSON.parse(bodyOf(await raw(pPort, get('/status', `Authorization: Bearer ${P_READ}\r\n`, pPort)))) as { standbys: Array<{ standbyId: string }> };
    expect(st.standbys.map((x) => x.standbyId)).toContain('net-sb');
  });
});

async function setCount(): Promise<number> {
  const { readdir } = await import('node:fs/promises');
  return (await readdir(join(root, 'store', s.site, 'sets'))).length;
}

interface Client {
  ws: WebSocket;
  messages: Array<Record<string, unknown>>;
  closed: Promise<{ code: number; reason: string }>;
}
/** A raw push client holding the token of listed standby `id` (default net-probe). */
async function client(id = 'net-probe'): Promise<Client> {
  const ws = new WebSocket(`ws://127.0.0.1:${pPort}/v1/stream`, { headers: { authorization: `Bearer ${tokens.standbys[id]!.token}` }, maxPayload: 1 << 20 });
  sockets.push(ws);
  const messages: Array<Record<string, unknown>> = [];
  ws.on('message', (d) => messages.push(JSON.parse(d.toString()) as Record<string, unknown>));
  ws.on('error', () => undefined);
  const closed = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  return { ws, messages, closed };
}

/** An authenticated client gets the primary's hello. */
async function authenticatedWorks(): Promise<void> {
  const c = await client();
  const hello = await waitFor(() => c.messages.find((m) => m.type === 'hello'), 'hello from the primary', 5_000);
  expect(hello.site).toBe(s.site);
  c.ws.close(1000);
  await c.closed;
}

describe('network surface: frames', () => {
  it('oversized frames close that client with 1009 (or 1008); the daemon keeps serving', async () => {
    const sizes = [64 * 1024 + 1, 100 * 1024, 1 << 20];
    for (const size of sizes) {
      for (const kind of ['text', 'binary'] as const) {
        const c = await client();
        const payload = kind === 'text' ? JSON.stringify({ type: 'hello', standbyId: 'big', site: s.site, pad: 'x'.repeat(size) }) : Buffer.alloc(size, 1);
        c.ws.send(payload);
        const closed = await Promise.race([c.closed, sleep(5_000).then(() => ({ code: -1, reason: 'still open after 5 s' }))]);
        expect([1008, 1009], `${kind} ${size}: ${closed.code} ${closed.reason}`).toContain(closed.code);
        tally.add('oversized frame');
      }
    }
    await authenticatedWorks();
  });

  it('malformed or unexpected frames close that client with 1008; the others keep their connection', async () => {
    const good = await client('net-good');
    good.ws.send(JSON.stringify({ type: 'hello', standbyId: 'net-good', site: s.site, appliedSetId: null, appliedCreatedAt: null }));
    const frames: Array<string | Buffer> = [
      'not json',
      '{"type":"hello"',
      '',
      'null',
      '[]',
      '42',
      '"hello"',
      '{}',
      JSON.stringify({ type: 'nope' }),
      JSON.stringify({ type: 'hello' }),
      JSON.stringify({ type: 'hello', standbyId: '', site: s.site, appliedSetId: null, appliedCreatedAt: null }),
      JSON.stringify({ type: 'hello', standbyId: 'x'.repeat(500), site: s.site, appliedSetId: null, appliedCreatedAt: null }),
      JSON.stringify({ type: 'hello', standbyId: '../../etc', site: s.site, appliedSetId: null, appliedCreatedAt: null }),
      JSON.stringify({ type: 'hello', standbyId: 'x', site: 'another-site', appliedSetId: null, appliedCreatedAt: null }),
      JSON.stringify({ type: 'hello', standbyId: 'x', site: s.site, appliedSetId: 42, appliedCreatedAt: null }),
      JSON.stringify({ type: 'hello', standbyId: 'x', site: s.site, appliedSetId: '../../x', appliedCreatedAt: 'yesterday' }),
      // Valid hellos, but for another standby than the token's: a made-up one, a listed one.
      JSON.stringify({ type: 'hello', standbyId: 'made-up', site: s.site, appliedSetId: null, appliedCreatedAt: null }),
      JSON.stringify({ type: 'hello', standbyId: 'net-good', site: s.site, appliedSetId: null, appliedCreatedAt: null }),
      JSON.stringify({ type: 'switchover-request', requestId: 'made-up-0001', site: s.site, standbyId: 'made-up', timeoutSeconds: 3600 }),
      JSON.stringify({ type: 'applied', standbyId: 'x', setId: 'y', createdAt: 'z', appliedAt: 'w' }),
      JSON.stringify({ type: 'set-committed', site: s.site }),
      JSON.stringify({ type: 'switchover-done', requestId: 'x', epoch: 99 }),
      JSON.stringify({ type: '__proto__', __proto__: { polluted: true } }),
      '{"type":"hello","constructor":{"prototype":{"polluted":true}}}',
      Buffer.from([0xff, 0xfe, 0xfd]),
      Buffer.from('{"type":"hello"}\u0000', 'utf8'),
      '\ud800',
    ];
    for (const f of frames) {
      const c = await client();
      c.ws.send(f);
      const closed = await Promise.race([c.closed, sleep(5_000).then(() => ({ code: -1, reason: 'still open after 5 s' }))]);
      expect([1008, 1007], `${JSON.stringify(String(f)).slice(0, 80)}: ${closed.code} ${closed.reason}`).toContain(closed.code);
      tally.add('malformed or unexpected frame');
    }
    expect(good.ws.readyState).toBe(WebSocket.OPEN);
    good.ws.close(1000);
    await good.closed;
    await authenticatedWorks();
  });
});

describe('network surface: a flood of connections', () => {
  it('300 sockets opened and closed, 50 concurrent unauthenticated upgrades, 50 half-sent requests: both daemons keep serving, memory stays put', async () => {
    const sPort = Number(sListen.split(':').at(-1));
    const rss0 = { p: await rssKiB(primary.child.pid!), s: await rssKiB(standby.pid) };
    const started = Date.now();

    for (const port of [pPort, sPort]) {
      // 300 bare connections, 50 at a time, opened and closed at once.
      for (let batch = 0; batch < 6; batch++) {
        await Promise.all(
          Array.from({ length: 50 }, () => new Promise<void>((resolve) => {
            const sock = connect(port, '127.0.0.1', () => sock.destroy());
            sock.on('error', () => resolve());
            sock.on('close', () => resolve());
          })),
        );
      }
      tally.add('bare connection opened and closed', 300);
    }
    // 50 concurrent unauthenticated upgrades (primary) and 50 concurrent unauthenticated /status (standby).
    const up = await Promise.all(Array.from({ length: 50 }, (_, i) => raw(pPort, upgrade('/v1/stream', i % 2 ? '' : 'Authorization: Bearer nope\r\n'))));
    for (const r of up) expect(statusOf(r)).toBe(401);
    const st = await Promise.all(Array.from({ length: 50 }, () => raw(sPort, get('/status', '', sPort))));
    for (const r of st) expect(statusOf(r)).toBe(401);
    tally.add('concurrent unauthenticated upgrade or request', 100);

    // 50 half-sent requests held open (slow clients): the daemons must still answer others meanwhile.
    const held: Socket[] = [];
    for (const port of [pPort, sPort]) {
      for (let i = 0; i < 25; i++) {
        const sock = connect(port, '127.0.0.1');
        sock.on('error', () => undefined);
        sock.write(`GET /status HTTP/1.1\r\nHost: x\r\n`);
        held.push(sock);
      }
    }
    tally.add('half-sent request held open', 50);
    await sleep(300);
    expect(statusOf(await raw(pPort, get('/healthz', '', pPort)))).toBe(200);
    expect(statusOf(await raw(sPort, get('/healthz', '', sPort)))).toBe(200);
    await authenticatedWorks();
    for (const h of held) h.destroy();

    // 20 authenticated push clients connecting and leaving.
    for (let i = 0; i < 20; i++) {
      const c = await client();
      c.ws.send(JSON.stringify({ type: 'hello', standbyId: 'net-probe', site: s.site, appliedSetId: null, appliedCreatedAt: null }));
      await waitFor(() => c.messages.find((m) => m.type === 'hello'), 'hello', 5_000);
      c.ws.terminate();
    }
    tally.add('authenticated client connecting and vanishing', 20);

    const seconds = (Date.now() - started) / 1000;
    await sleep(500);
    expect(statusOf(await raw(pPort, get('/healthz', '', pPort)))).toBe(200);
    expect((await httpGet(sListen, '/status', S_READ)).status).toBe(200);
    const pStatus = await raw(pPort, get('/status', `Authorization: Bearer ${P_TOKEN}\r\n`, pPort));
    expect(statusOf(pStatus)).toBe(200);
    await authenticatedWorks();
    const rss1 = { p: await rssKiB(primary.child.pid!), s: await rssKiB(standby.pid) };
    console.log(
      `[network surface] flood took ${seconds.toFixed(1)} s; RSS primary ${(rss0.p / 1024).toFixed(0)} -> ${(rss1.p / 1024).toFixed(0)} MiB, standby ${(rss0.s / 1024).toFixed(0)} -> ${(rss1.s / 1024).toFixed(0)} MiB`,
    );
    expect(rss1.p - rss0.p).toBeLessThan(64 * 1024);
    expect(rss1.s - rss0.s).toBeLessThan(64 * 1024);
    expect(primary.child.exitCode).toBeNull();
    expect(standby.child.exitCode).toBeNull();
  });
});

describe('network surface: logs', () => {
  it('no token appears in any log line of either daemon', async () => {
    await sleep(200);
    const logs = `${primary.stderrSoFar()}\n${standby.stderrSoFar()}`;
    const lines = logs.split('\n').filter((l) => l !== '');
    expect(lines.length).toBeGreaterThan(5);
    for (const t of [...allTokens(), ...allTokens().map((x) => x.slice(-24)), P_TOKEN.toUpperCase()]) {
      expect(lines.filter((l) => l.includes(t))).toEqual([]);
    }
    console.log(`[network surface] ${lines.length} log lines, none holds a token`);
  });
});
