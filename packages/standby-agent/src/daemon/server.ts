import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { HISTORY_PATH, StatusPage, TandemError, bearerFrom, closeServer, createDaemonServer, describeError, listenOn, sessionFrom, splitListen, tokensEqual, type Logger, type ReloadingTls, type ServerTlsConfig } from '@tandem/shared';

/**
 * The standby daemon's HTTP server (server.listen):
 *   GET /healthz   200 "ok", no auth, says nothing else
 *   GET /status    JSON: lag, applied and latest set, push channel, last error (token)
 *   GET /metrics   Prometheus text (token)
 *   GET /          the status page, and /status/history, /login, /logout, /assets/* (shared/status-page.ts)
 * /status and /metrics reveal state, so they need `Authorization: Bearer <token>`: the monitoring
 * token (server.readTokenFile: what Prometheus gets), or this standby's own token for the primary
 * (primary.tokenFile), compared in constant time; 401 otherwise. Without any token they are served
 * only when the server listens on a loopback address (see checkListen). A browser logged in to the
 * status page with one of these tokens sends its session cookie instead: it reads the same. The server's limits (idle
 * and slow connections, a connection cap) are shared/net.ts's HTTP_LIMITS, as on the primary.
 *
 * A process serving several sites (host.ts) has one server for them all (`sites` instead of
 * `handlers`), with the same auth:
 *   GET /status              {"sites": {"<site>": <that site's /status>, ...}}
 *   GET /status?site=NAME    that site's /status alone (503 and why while it does not run: its
 *                            start was refused, or it stopped; 404 naming the sites for a name
 *                            this process does not serve)
 *   GET /metrics             every site's metrics, each sample labelled site="<site>", and the
 *                            process metrics once (?site=NAME: that site's and the process's)
 *   GET /?site=NAME          that site's page (its script asks status?site=NAME and
 *                            status/history?site=NAME); / alone redirects to the first site's
 */
export interface StatusServerHandlers {
  status(): Promise<unknown>;
  metrics(): Promise<{ contentType: string; body: string }>;
  /** GET /status/history: what the status page draws (page.ts). */
  history(): Promise<unknown>;
}

/** The handlers of a server for several sites. */
export interface SitesHandlers {
  /** The sites' names, in the config's order. */
  readonly names: readonly string[];
  /** Whether the site runs (its start was not refused, it did not stop). */
  running(site: string): boolean;
  /** One site's /status: 200 and its document, or 503 and why it does not run. */
  status(site: string): Promise<{ code: number; body: unknown }>;
  /** One site's /status/history (a running site's). */
  history(site: string): Promise<unknown>;
  /** Every site's metrics merged (site undefined), or one site's, with the process metrics once. */
  metrics(site?: string): Promise<{ contentType: string; body: string }>;
}

function send(res: ServerResponse, status: number, body: string, contentType: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store', ...extra });
  res.end(body);
}

const sendJson = (res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}) =>
  send(res, status, `${JSON.stringify(body, null, 2)}\n`, 'application/json; charset=utf-8', extra);

const errorJson = (kind: string, code: string, message: string) => ({ error: { kind, code, message } });

const unauthorized = (res: ServerResponse) =>
  sendJson(res, 401, errorJson('config', 'UNAUTHORIZED', 'missing or wrong token: send Authorization: Bearer <token>'), { 'www-authenticate': 'Bearer' });

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  const v = isIP(host);
  if (v === 4) return host.startsWith('127.');
  if (v === 6) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}

/**
 * No token at all: /status and /metrics are served without auth only on a loopback address (where only
 * this host's users reach them); on any other address the daemon refuses to start.
 */
export function checkListen(listen: string, token: string | null, readToken: string | null = null): void {
  if (token !== null || readToken !== null) return;
  if (isLoopback(splitListen(listen).host)) return;
  throw new TandemError('config', 'LISTEN_NEEDS_TOKEN', `server.listen ${listen} is not a loopback address and no token is configured: /status and /metrics would be open to the network`, {
    hint: 'set server.readTokenFile (the monitoring token), or listen on 127.0.0.1',
  });
}

export class StatusServer {
  readonly http: Server;
  /** The certificate in use and its reloading; null without server.tls. */
  readonly tls: ReloadingTls | null;
  readonly scheme: 'http' | 'https';
  private readonly page: StatusPage;

  /**
   * token: primary.tokenFile's (or null); readToken: server.readTokenFile's (or null); tls:
   * server.tls (HTTPS only); handlers for one site, or sites for several.
   */
  constructor(private readonly opts: { token: string | null; readToken?: string | null; logger: Logger; handlers?: StatusServerHandlers; sites?: SitesHandlers; tls?: ServerTlsConfig }) {
    if ((opts.handlers === undefined) === (opts.sites === undefined)) throw new TypeError('StatusServer: give handlers (one site) or sites (several), not both');
    ({ http: this.http, tls: this.tls, scheme: this.scheme } = createDaemonServer((req, res) => {
      const routed = opts.sites === undefined ? this.route(req, res) : this.routeSites(opts.sites, req, res);
      routed.catch((err: unknown) => {
        opts.logger.error({ err, url: req.url }, 'request handler failed');
        if (!res.headersSent) sendJson(res, 500, errorJson('internal', 'INTERNAL', describeError(err)));
        else res.destroy();
      });
    }, { tls: opts.tls, logger: opts.logger }));
    const sites = opts.sites;
    this.page = new StatusPage({
      agent: 'standby',
      access: (req) => (this.authorized(req) ? 'ok' : 'unauthorized'),
      loginTokens: this.accepted(),
      // Several sites: the page's ?site= (its script passes it on), else the first site.
      history: sites === undefined ? () => opts.handlers!.history() : (query: URLSearchParams) => sites.history(query.get('site') ?? sites.names[0]!),
      logger: opts.logger,
    });
    this.http.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      else socket.destroy();
    });
  }

  private accepted(): string[] {
    return [this.opts.token, this.opts.readToken ?? null].filter((t): t is string => t !== null);
  }

  private authorized(req: IncomingMessage): boolean {
    const accepted = this.accepted();
    if (accepted.length === 0) return true; // loopback only: checkListen
    const presented = bearerFrom(req);
    if (presented === null) return sessionFrom(req, accepted) !== null; // the status page's session cookie
    let ok = false;
    for (const t of accepted) ok = tokensEqual(presented, t) || ok; // every one compared
    return ok;
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (await this.page.handle(req, res)) return;
    req.resume();
    if (path !== '/healthz' && path !== '/status' && path !== '/metrics') {
      return sendJson(res, 404, errorJson('not-found', 'NOT_FOUND', 'no such endpoint (try /, /healthz, /status, /metrics)'));
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return sendJson(res, 405, errorJson('config', 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${path}`), { allow: 'GET, HEAD' });
    }
    if (path === '/healthz') return send(res, 200, 'ok\n', 'text/plain; charset=utf-8');
    if (!this.authorized(req)) return unauthorized(res);
    if (path === '/status') return sendJson(res, 200, await this.opts.handlers!.status());
    const m = await this.opts.handlers!.metrics();
    return send(res, 200, m.body, m.contentType);
  }

  /** The routes of a server for several sites (see the top of this file). */
  private async routeSites(sites: SitesHandlers, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    const reads = req.method === 'GET' || req.method === 'HEAD';
    const named = url.searchParams.get('site');
    if (named !== null && !sites.names.includes(named) && path !== '/healthz' && !path.startsWith('/assets/')) {
      req.resume();
      if (!this.authorized(req)) return unauthorized(res); // the names are for those who may read the status
      const names = sites.names.map((n) => `"${n}"`).join(', ');
      return sendJson(res, 404, errorJson('not-found', 'UNKNOWN_SITE', `no site ${JSON.stringify(named)} here: this standby serves ${names} (ask ?site= one of them)`));
    }
    // (Only for those who may read the status: the site names are theirs; anyone else gets the login form.)
    if (path === '/' && reads && named === null && !url.searchParams.has('token') && this.authorized(req)) {
      // The page is one site's (its script asks ./status?site= and ./status/history?site= as its own URL says): the first site's.
      req.resume();
      const q = new URLSearchParams(url.searchParams);
      q.set('site', sites.names[0]!);
      return send(res, 303, '', 'text/plain; charset=utf-8', { location: `./?${q.toString()}` });
    }
    if (path === HISTORY_PATH && reads && this.authorized(req)) {
      const site = named ?? sites.names[0]!;
      if (!sites.running(site)) {
        // The page of a site that does not run says why (its status), rather than fail on its history.
        req.resume();
        const one = await sites.status(site);
        return sendJson(res, one.code, one.body);
      }
    }
    if (await this.page.handle(req, res)) return;

    req.resume();
    if (path !== '/healthz' && path !== '/status' && path !== '/metrics') {
      return sendJson(res, 404, errorJson('not-found', 'NOT_FOUND', 'no such endpoint (try /, /healthz, /status, /metrics)'));
    }
    if (!reads) return sendJson(res, 405, errorJson('config', 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${path}`), { allow: 'GET, HEAD' });
    if (path === '/healthz') return send(res, 200, 'ok\n', 'text/plain; charset=utf-8');
    if (!this.authorized(req)) return unauthorized(res);
    if (path === '/status') {
      if (named !== null) {
        const one = await sites.status(named);
        return sendJson(res, one.code, one.body);
      }
      const all: Record<string, unknown> = {};
      for (const [name, one] of await Promise.all(sites.names.map(async (n) => [n, await sites.status(n)] as const))) all[name] = one.body;
      return sendJson(res, 200, { sites: all });
    }
    const m = await sites.metrics(named ?? undefined);
    return send(res, 200, m.body, m.contentType);
  }

  /** Listens on host:port; resolves with the address actually bound (port 0 picks one). */
  listen(listen: string): Promise<string> {
    return listenOn(this.http, listen);
  }

  /** Reads server.tls's files again (SIGHUP); false when they failed and the old ones stay. */
  reloadTls(trigger: string): boolean {
    return this.tls?.reload(trigger) ?? true;
  }

  async close(): Promise<void> {
    this.tls?.close();
    await closeServer(this.http);
  }
}

