import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { StatusPage, TandemError, bearerFrom, closeServer, createDaemonServer, describeError, listenOn, sessionFrom, splitListen, tokensEqual, type Logger, type ReloadingTls, type ServerTlsConfig } from '@tandem/shared';

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
 */
export interface StatusServerHandlers {
  status(): Promise<unknown>;
  metrics(): Promise<{ contentType: string; body: string }>;
  /** GET /status/history: what the status page draws (page.ts). */
  history(): Promise<unknown>;
}

function send(res: ServerResponse, status: number, body: string, contentType: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store', ...extra });
  res.end(body);
}

const sendJson = (res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}) =>
  send(res, status, `${JSON.stringify(body, null, 2)}\n`, 'application/json; charset=utf-8', extra);

const errorJson = (kind: string, code: string, message: string) => ({ error: { kind, code, message } });

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

  /** token: primary.tokenFile's (or null); readToken: server.readTokenFile's (or null); tls: server.tls (HTTPS only). */
  constructor(private readonly opts: { token: string | null; readToken?: string | null; logger: Logger; handlers: StatusServerHandlers; tls?: ServerTlsConfig }) {
    ({ http: this.http, tls: this.tls, scheme: this.scheme } = createDaemonServer((req, res) => {
      this.route(req, res).catch((err: unknown) => {
        opts.logger.error({ err, url: req.url }, 'request handler failed');
        if (!res.headersSent) sendJson(res, 500, errorJson('internal', 'INTERNAL', describeError(err)));
        else res.destroy();
      });
    }, { tls: opts.tls, logger: opts.logger }));
    this.page = new StatusPage({
      agent: 'standby',
      access: (req) => (this.authorized(req) ? 'ok' : 'unauthorized'),
      loginTokens: this.accepted(),
      history: () => opts.handlers.history(),
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
    if (!this.authorized(req)) {
      return sendJson(res, 401, errorJson('config', 'UNAUTHORIZED', 'missing or wrong token: send Authorization: Bearer <token>'), { 'www-authenticate': 'Bearer' });
    }
    if (path === '/status') return sendJson(res, 200, await this.opts.handlers.status());
    const m = await this.opts.handlers.metrics();
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

