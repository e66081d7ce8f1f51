import { createHmac, timingSafeEqual } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join, sep } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import { TandemError, describeError } from './errors.js';
import type { Logger } from './logger.js';
import { tokensEqual } from './token.js';

/**
 * Each daemon's status page, for people with a browser (the JSON of /status and the text of
 * /metrics are for programs):
 *   GET  /                  the page (HTML; its script draws it from /status and /status/history)
 *   GET  /?token=TOKEN      logs in: sets the session cookie and redirects to / (the token leaves the URL)
 *   POST /login             logs in from the form (token=TOKEN), as above
 *   POST /logout            drops the session cookie
 *   GET  /status/history    JSON: what the daemon has seen over the last 24 h (history.ts)
 *   GET  /assets/NAME       the page's script and style sheet (no auth: they hold no data)
 * The page and /status/history take what /status takes: a browser cannot send `Authorization:
 * Bearer` when it opens a page, so a login with such a token gives it a session cookie instead
 * (HttpOnly, SameSite=Strict, Secure over TLS, 12 h). The cookie holds no token: an expiry and an
 * HMAC of it keyed with the token, so it dies with the token (a new token, a restart with it) or
 * after 12 h, and it opens only what reads (the page, /status, /status/history, /metrics): a
 * session made with the primary's control token starts no backup and opens no push channel.
 * The files are in the package's assets/status-page directory, read when first asked for.
 */
let foundStatusPageDir: string | undefined;
/**
 * Where the page's files are: the shared package's assets/status-page/. Beside this module's
 * package when it runs compiled (dist/) or from source; from a command's bundle (which lives in an
 * agent's package, scripts/bundle.mjs), through the shared package it is installed with.
 */
export function statusPageDir(): string {
  if (foundStatusPageDir !== undefined) return foundStatusPageDir;
  const beside = fileURLToPath(new URL('../assets/status-page/', import.meta.url));
  if (existsSync(`${beside}common.js`)) return (foundStatusPageDir = beside);
  try {
    const sharedMain = createRequire(import.meta.url).resolve('@tandem/shared');
    const dir = join(dirname(sharedMain), '..', 'assets', 'status-page') + sep;
    if (existsSync(`${dir}common.js`)) return (foundStatusPageDir = dir);
  } catch {
    // not resolvable: the error below names the first place looked
  }
  return beside;
}
export const SESSION_COOKIE = 'tandem_session';
export const SESSION_TTL_MS = 12 * 3_600_000;
export const HISTORY_PATH = '/status/history';

const ASSET_TYPES: Record<string, string> = {
  'page.css': 'text/css; charset=utf-8',
  'common.js': 'text/javascript; charset=utf-8',
  'primary.js': 'text/javascript; charset=utf-8',
  'standby.js': 'text/javascript; charset=utf-8',
};
const PAGE_PATHS = new Set(['/', '/login', '/logout', HISTORY_PATH]);
const MAX_FORM_BYTES = 4096;

const HTML_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

// ---------------------------------------------------------------------------------------------
// The session cookie
// ---------------------------------------------------------------------------------------------

/** A site name as the config allows it: what a login may carry back to the page (nothing else). */
const SITE_PARAM = /^[a-z0-9][a-z0-9_-]{0,62}$/;

function sessionMac(token: string, expires: number): Buffer {
  return createHmac('sha256', token).update(`tandem status page session until ${expires}`).digest();
}

/** A session cookie value for `token`: `<expiry, unix seconds>.<HMAC>`. */
export function makeSession(token: string, nowMs = Date.now(), ttlMs = SESSION_TTL_MS): string {
  const expires = Math.floor((nowMs + ttlMs) / 1000);
  return `${expires}.${sessionMac(token, expires).toString('base64url')}`;
}

/**
 * The token (of `tokens`) a session cookie value was made with, or null: unknown, forged, expired
 * or expiring further out than a session lasts. Every token is compared (no early exit).
 */
export function sessionToken(value: string | null, tokens: readonly string[], nowMs = Date.now()): string | null {
  if (value === null) return null;
  const m = /^(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(value);
  if (m === null) return null;
  const expires = Number(m[1]);
  if (expires * 1000 <= nowMs || expires * 1000 > nowMs + SESSION_TTL_MS + 60_000) return null;
  const mac = Buffer.from(m[2]!, 'base64url');
  if (mac.length !== 32 || mac.toString('base64url') !== m[2]) return null; // one encoding only
  let found: string | null = null;
  for (const t of tokens) {
    if (timingSafeEqual(mac, sessionMac(t, expires)) && found === null) found = t;
  }
  return found;
}

/** The value of cookie `name` in the request's Cookie header(s), or null. */
export function cookieFrom(req: { headers: IncomingMessage['headers'] }, name: string): string | null {
  const h = req.headers.cookie;
  if (typeof h !== 'string') return null;
  for (const part of h.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}

/** The token the request's session cookie was made with (of `tokens`), or null. */
export function sessionFrom(req: { headers: IncomingMessage['headers'] }, tokens: readonly string[], nowMs = Date.now()): string | null {
  return sessionToken(cookieFrom(req, SESSION_COOKIE), tokens, nowMs);
}

const overTls = (req: IncomingMessage): boolean => (req.socket as { encrypted?: boolean }).encrypted === true;

function sessionCookie(value: string, req: IncomingMessage, maxAgeSeconds: number): string {
  return `${SESSION_COOKIE}=${value}; Path=/; Max-Age=${maxAgeSeconds}; HttpOnly; SameSite=Strict${overTls(req) ? '; Secure' : ''}`;
}

// ---------------------------------------------------------------------------------------------
// The page's routes
// ---------------------------------------------------------------------------------------------

/** What a request's credentials (a bearer token or the session cookie) may do with the status. */
export type PageAccess = 'ok' | 'unauthorized' | 'forbidden';

export interface StatusPageOptions {
  agent: 'primary' | 'standby';
  /** Whether the request may read the status (the server's own rule for GET /status). */
  access(req: IncomingMessage): PageAccess;
  /** The tokens a login may present (each reads the status); empty: none is needed (loopback only). */
  loginTokens: readonly string[];
  /** The document of GET /status/history; `query`: its query string (a primary serving several sites reads ?site=). */
  history(query: URLSearchParams): unknown;
  logger: Logger;
  now?: () => number;
}

const errorDoc = (code: string, message: string) => `${JSON.stringify({ error: { kind: 'config', code, message } }, null, 2)}\n`;
const UNAUTHORIZED = errorDoc('UNAUTHORIZED', 'missing or wrong token: send Authorization: Bearer <token>');

export class StatusPage {
  readonly #files = new Map<string, string>();
  readonly #now: () => number;

  constructor(private readonly o: StatusPageOptions) {
    this.#now = o.now ?? Date.now;
  }

  /** True when `path` is one of the page's (the server passes the request on to handle()). */
  static owns(path: string): boolean {
    return PAGE_PATHS.has(path) || path.startsWith('/assets/');
  }

  /**
   * Answers a request for one of the page's paths; false (and nothing sent) for any other path.
   * Never throws: a failure is logged without the URL (it may hold a token) and answered with 500.
   */
  async handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    if (!StatusPage.owns(path)) return false;
    try {
      await this.#route(req, res, path, url.searchParams);
    } catch (err) {
      this.o.logger.error({ path, err: describeError(err) }, 'status page request failed');
      if (!res.headersSent) this.#send(req, res, 500, errorDoc('INTERNAL', describeError(err)).replace('"config"', '"internal"'), { 'content-type': 'application/json; charset=utf-8' });
      else res.destroy();
    }
    return true;
  }

  async #route(req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams): Promise<void> {
    const method = req.method ?? 'GET';
    const reads = method === 'GET' || method === 'HEAD';
    if (path.startsWith('/assets/')) {
      req.resume();
      const name = path.slice('/assets/'.length);
      const type = ASSET_TYPES[name];
      if (type === undefined) return this.#send(req, res, 404, errorDoc('NOT_FOUND', 'no such file'), { 'content-type': 'application/json; charset=utf-8' });
      if (!reads) return this.#notAllowed(req, res, path, 'GET, HEAD');
      return this.#send(req, res, 200, await this.#file(name), { 'content-type': type, 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' });
    }
    if (path === '/login') {
      if (method === 'POST') {
        const form = await this.#form(req, res);
        return this.#login(req, res, form?.get('token') ?? null, form?.get('site') ?? null);
      }
      req.resume();
      if (!reads) return this.#notAllowed(req, res, path, 'GET, HEAD, POST');
      return this.#loginPage(req, res, 200, '', query.get('site'));
    }
    if (path === '/logout') {
      req.resume();
      if (method !== 'POST') return this.#notAllowed(req, res, path, 'POST');
      return this.#send(req, res, 303, '', { location: './login', 'set-cookie': sessionCookie('', req, 0), 'cache-control': 'no-store' });
    }
    req.resume();
    if (!reads) return this.#notAllowed(req, res, path, 'GET, HEAD');
    if (path === '/' && query.has('token')) return this.#login(req, res, query.get('token'), query.get('site'));
    const access = this.o.access(req);
    if (path === HISTORY_PATH) {
      const json = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };
      if (access === 'unauthorized') return this.#send(req, res, 401, UNAUTHORIZED, { ...json, 'www-authenticate': 'Bearer' });
      if (access === 'forbidden') return this.#send(req, res, 403, errorDoc('FORBIDDEN', 'this token may not read the status'), json);
      return this.#send(req, res, 200, `${JSON.stringify(await this.o.history(query))}\n`, json); // compact: a day of samples
    }
    if (access === 'unauthorized') return this.#loginPage(req, res, 401, '', query.get('site'));
    if (access === 'forbidden') return this.#loginPage(req, res, 403, 'This token may not read the status: log in with the monitoring token.', query.get('site'));
    return this.#send(req, res, 200, await this.#file(`${this.o.agent}.html`), HTML_HEADERS);
  }

  /** A token from the form or the URL: a session cookie and back to the page, or the form again. */
  async #login(req: IncomingMessage, res: ServerResponse, token: string | null, site: string | null = null): Promise<void> {
    if (res.headersSent) return; // the form was refused (#form answered)
    const tokens = this.o.loginTokens;
    // Back to the page of the site the login was for (a daemon of several sites), else the first.
    const back = site !== null && SITE_PARAM.test(site) ? `./?site=${site}` : './';
    if (tokens.length === 0) return this.#send(req, res, 303, '', { location: back, 'cache-control': 'no-store' });
    let found: string | null = null;
    for (const t of tokens) {
      if (token !== null && tokensEqual(token.trim(), t) && found === null) found = t;
    }
    if (found === null) return this.#loginPage(req, res, 401, token === null || token.trim() === '' ? 'Enter a token.' : 'That token does not open this page.', site);
    const cookie = sessionCookie(makeSession(found, this.#now()), req, SESSION_TTL_MS / 1000);
    this.#send(req, res, 303, '', { location: back, 'set-cookie': cookie, 'cache-control': 'no-store' });
  }

  async #loginPage(req: IncomingMessage, res: ServerResponse, status: number, message: string, site: string | null = null): Promise<void> {
    const html = (await this.#file('login.html'))
      .replace('<!--message-->', message === '' ? '' : `<p class="login-error">${escapeHtml(message)}</p>`)
      .replace('<!--site-->', site !== null && SITE_PARAM.test(site) ? `<input type="hidden" name="site" value="${site}">` : '');
    this.#send(req, res, status, html, status === 401 ? { ...HTML_HEADERS, 'www-authenticate': 'Bearer' } : HTML_HEADERS);
  }

  /** The login form's fields; null (and 413/415 sent) when the body is too big or not a form. */
  async #form(req: IncomingMessage, res: ServerResponse): Promise<URLSearchParams | null> {
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/x-www-form-urlencoded\b/i.test(type)) {
      req.resume();
      this.#send(req, res, 415, errorDoc('UNSUPPORTED_MEDIA_TYPE', 'send the login form as application/x-www-form-urlencoded'), { 'content-type': 'application/json; charset=utf-8' });
      return null;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > MAX_FORM_BYTES) {
        this.#send(req, res, 413, errorDoc('TOO_LARGE', `the login form is larger than ${MAX_FORM_BYTES} bytes`), { 'content-type': 'application/json; charset=utf-8', connection: 'close' });
        req.destroy();
        return null;
      }
      chunks.push(c);
    }
    return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  }

  #notAllowed(req: IncomingMessage, res: ServerResponse, path: string, allow: string): void {
    this.#send(req, res, 405, errorDoc('METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${path}`), { 'content-type': 'application/json; charset=utf-8', allow });
  }

  #send(req: IncomingMessage, res: ServerResponse, status: number, body: string, headers: Record<string, string>): void {
    res.writeHead(status, { ...headers, 'content-length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  async #file(name: string): Promise<string> {
    const cached = this.#files.get(name);
    if (cached !== undefined) return cached;
    const file = `${statusPageDir()}${name}`;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new TandemError('internal', 'STATUS_PAGE_MISSING', `the status page's file ${file} cannot be read: ${describeError(err)}`, {
        hint: 'the installation is incomplete: reinstall tandem (the package ships assets/status-page/)',
      });
    }
    this.#files.set(name, text);
    return text;
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
