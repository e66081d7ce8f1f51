import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from './logger.js';
import { SESSION_TTL_MS, StatusPage, cookieFrom, makeSession, sessionFrom, sessionToken, type PageAccess } from './status-page.js';
import { bearerFrom, tokensEqual } from './token.js';

const READ = 'r'.repeat(16) + 'ead-token-0001';
const OWN = 'o'.repeat(16) + 'wn-token-0002';
const logged: string[] = [];
const logger = { error: (o: object, msg: string) => logged.push(`${msg} ${JSON.stringify(o)}`) } as unknown as Logger;

interface Reply {
  status: number;
  body: string;
  headers: IncomingMessage['headers'];
}

function send(port: number, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** A server that, like the daemons', lets a bearer token or the session cookie read; `/other` is not the page's. */
async function serve(tokens: string[], access?: (req: IncomingMessage) => PageAccess): Promise<{ server: Server; port: number }> {
  const page = new StatusPage({
    agent: 'standby',
    access:
      access ??
      ((req) => {
        if (tokens.length === 0) return 'ok';
        const b = bearerFrom(req);
        if (b !== null) return tokens.some((t) => tokensEqual(b, t)) ? 'ok' : 'unauthorized';
        return sessionFrom(req, tokens) === null ? 'unauthorized' : 'ok';
      }),
    loginTokens: tokens,
    history: () => ({ agent: 'standby', samples: [] }),
    logger,
  });
  const server = createServer((req, res) => {
    void page.handle(req, res).then((mine) => {
      if (!mine) {
        res.writeHead(418);
        res.end('not the page');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

describe('status page sessions', () => {
  it('a session cookie names the token it was made with, until it expires; nothing forged passes', () => {
    const now = Date.parse('2026-05-01T12:00:00Z');
    const v = makeSession(READ, now);
    expect(v).toMatch(/^\d+\.[A-Za-z0-9_-]{43}$/);
    expect(v).not.toContain(READ);
    expect(sessionToken(v, [OWN, READ], now)).toBe(READ);
    expect(sessionToken(v, [OWN], now)).toBeNull(); // the token changed: the session is gone
    expect(sessionToken(v, [READ], now + SESSION_TTL_MS + 1000)).toBeNull(); // expired
    const [exp, mac] = v.split('.');
    expect(sessionToken(`${Number(exp) + 3600}.${mac}`, [READ], now)).toBeNull(); // a longer life, forged
    expect(sessionToken(`${exp}.${mac![0] === 'A' ? 'B' : 'A'}${mac!.slice(1)}`, [READ], now)).toBeNull();
    expect(sessionToken(`${exp}.${mac!.slice(0, -1)}${mac!.endsWith('A') ? 'B' : 'A'}`, [READ], now)).toBeNull(); // one encoding only
    const longLived = makeSession(READ, now, 30 * 24 * 3_600_000);
    expect(sessionToken(longLived, [READ], now)).toBeNull(); // longer than a session lasts
    expect(sessionToken(READ, [READ], now)).toBeNull(); // the token itself is no session
    expect(sessionToken(null, [READ], now)).toBeNull();
  });

  it('reads the cookie among others', () => {
    expect(cookieFrom({ headers: { cookie: 'a=1; tandem_session=12.x; b=2' } }, 'tandem_session')).toBe('12.x');
    expect(cookieFrom({ headers: { cookie: 'xtandem_session=1' } }, 'tandem_session')).toBeNull();
    expect(cookieFrom({ headers: {} }, 'tandem_session')).toBeNull();
  });
});

describe('status page routes', () => {
  let port: number;
  let open: { server: Server; port: number };
  let forbidden: { server: Server; port: number };
  let server: Server;

  beforeAll(async () => {
    ({ server, port } = await serve([OWN, READ]));
    open = await serve([]);
    forbidden = await serve([READ], () => 'forbidden');
  });

  afterAll(async () => {
    for (const s of [server, open?.server, forbidden?.server]) await new Promise<void>((r) => (s ? s.close(() => r()) : r()));
  });

  it('without a token: the login form (401), the history a bare 401; other paths are not the page', async () => {
    const r = await send(port, 'GET', '/');
    expect(r.status).toBe(401);
    expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(r.headers['www-authenticate']).toBe('Bearer');
    expect(r.headers['content-security-policy']).toContain("frame-ancestors 'none'");
    expect(r.body).toContain('<form method="post" action="login">');
    expect(r.body).not.toContain('<!--message-->');
    const h = await send(port, 'GET', '/status/history');
    expect(h.status).toBe(401);
    expect(JSON.parse(h.body)).toMatchObject({ error: { code: 'UNAUTHORIZED' } });
    expect((await send(port, 'GET', '/other')).status).toBe(418);
    expect((await send(port, 'GET', '/status')).status).toBe(418);
  });

  it('a login by URL or form sets the cookie; the cookie opens the page and the history', async () => {
    const viaUrl = await send(port, 'GET', `/?token=${READ}`);
    expect(viaUrl.status).toBe(303);
    expect(viaUrl.headers.location).toBe('./');
    const cookie = String(viaUrl.headers['set-cookie']).split(';')[0]!;
    expect(String(viaUrl.headers['set-cookie'])).toContain('HttpOnly; SameSite=Strict');
    expect(String(viaUrl.headers['set-cookie'])).not.toContain('Secure'); // plain HTTP here
    const pageHtml = await send(port, 'GET', '/', { cookie });
    expect(pageHtml.status).toBe(200);
    expect(pageHtml.body).toContain('assets/standby.js');
    const head = await send(port, 'HEAD', '/', { cookie });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(pageHtml.body));
    expect(JSON.parse((await send(port, 'GET', '/status/history', { cookie })).body)).toEqual({ agent: 'standby', samples: [] });

    const form = await send(port, 'POST', '/login', { 'content-type': 'application/x-www-form-urlencoded' }, `token=${encodeURIComponent(OWN)}`);
    expect(form.status).toBe(303);
    expect(sessionToken(String(form.headers['set-cookie']).split(';')[0]!.split('=')[1]!, [OWN])).toBe(OWN);
    const wrong = await send(port, 'POST', '/login', { 'content-type': 'application/x-www-form-urlencoded' }, 'token=nope');
    expect(wrong.status).toBe(401);
    expect(wrong.body).toContain('That token does not open this page.');
    const empty = await send(port, 'POST', '/login', { 'content-type': 'application/x-www-form-urlencoded' }, 'token=');
    expect(empty.body).toContain('Enter a token.');
  });

  it('a login for one site of a daemon of several goes back to that site, and carries nothing else', async () => {
    const viaUrl = await send(port, 'GET', `/?token=${READ}&site=shop`);
    expect(viaUrl.status).toBe(303);
    expect(viaUrl.headers.location).toBe('./?site=shop');
    const odd = await send(port, 'GET', `/?token=${READ}&site=${encodeURIComponent('//evil.example/x')}`);
    expect(odd.headers.location).toBe('./');
    // The form of a site's page says which site, and the login goes back there.
    const formPage = await send(port, 'GET', '/?site=shop');
    expect(formPage.status).toBe(401);
    expect(formPage.body).toContain('<input type="hidden" name="site" value="shop">');
    expect((await send(port, 'GET', `/?site=${encodeURIComponent('"><script>')}`)).body).not.toContain('<script>');
    const form = await send(port, 'POST', '/login', { 'content-type': 'application/x-www-form-urlencoded' }, `token=${encodeURIComponent(OWN)}&site=shop`);
    expect(form.status).toBe(303);
    expect(form.headers.location).toBe('./?site=shop');
  });

  it('refuses what is not a small form, other methods, unknown assets; logs out', async () => {
    expect((await send(port, 'POST', '/login', { 'content-type': 'application/json' }, `{"token":"${READ}"}`)).status).toBe(415);
    expect((await send(port, 'POST', '/login', { 'content-type': 'application/x-www-form-urlencoded' }, `token=${'x'.repeat(5000)}`)).status).toBe(413);
    expect((await send(port, 'PUT', '/')).status).toBe(405);
    expect((await send(port, 'POST', '/status/history')).status).toBe(405);
    expect((await send(port, 'GET', '/logout')).status).toBe(405);
    expect((await send(port, 'GET', '/assets/nope.js')).status).toBe(404);
    expect((await send(port, 'GET', '/assets/%2e%2e/%2e%2e/package.json')).status).toBe(418); // /package.json: not the page's
    const js = await send(port, 'GET', '/assets/common.js');
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    const css = await send(port, 'GET', '/assets/page.css');
    expect(css.headers['content-type']).toBe('text/css; charset=utf-8');
    const out = await send(port, 'POST', '/logout');
    expect(out.status).toBe(303);
    expect(String(out.headers['set-cookie'])).toMatch(/^tandem_session=; Path=\/; Max-Age=0; HttpOnly; SameSite=Strict$/);
  });

  it('with no token configured (loopback) the page is open; a known token beyond its role gets 403', async () => {
    expect((await send(open.port, 'GET', '/')).status).toBe(200);
    const r = await send(open.port, 'GET', '/?token=anything-at-all');
    expect(r.status).toBe(303);
    expect(r.headers['set-cookie']).toBeUndefined();
    expect((await send(forbidden.port, 'GET', '/')).status).toBe(403);
    expect((await send(forbidden.port, 'GET', '/status/history')).status).toBe(403);
    expect(logged).toEqual([]);
  });
});
