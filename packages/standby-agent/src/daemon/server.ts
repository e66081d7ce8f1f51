import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { TandemError, bearerFrom, closeServer, createBoundedServer, describeError, listenOn, splitListen, tokensEqual, type Logger } from '@tandem/shared';

/**
 * The standby daemon's HTTP server (server.listen):
 *   GET /healthz   200 "ok", no auth, says nothing else
 *   GET /status    JSON: lag, applied and latest set, push channel, last error (token)
 *   GET /metrics   Prometheus text (token)
 * /status and /metrics reveal state, so they need `Authorization: Bearer <token>`: the monitoring
 * token (server.readTokenFile: what Prometheus gets), or this standby's own token for the primary
 * (primary.tokenFile), compared in constant time; 401 otherwise. Without any token they are served
 * only when the server listens on a loopback address (see checkListen). The server's limits (idle
 * and slow connections, a connection cap) are shared/net.ts's HTTP_LIMITS, as on the primary.
 */
export interface StatusServerHandlers {
  status(): Promise<unknown>;
  metrics(): Promise<{ contentType: string; body: string }>;
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

  /** token: primary.tokenFile's (or null); readToken: server.readTokenFile's (or null). */
  constructor(private readonly opts: { token: string | null; readToken?: string | null; logger: Logger; handlers: StatusServerHandlers }) {
    this.http = createBoundedServer((req, res) => {
      this.route(req, res).catch((err: unknown) => {
        opts.logger.error({ err, url: req.url }, 'request handler failed');
        if (!res.headersSent) sendJson(res, 500, errorJson('internal', 'INTERNAL', describeError(err)));
        else res.destroy();
      });
    });
    this.http.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      else socket.destroy();
    });
  }

  private authorized(req: IncomingMessage): boolean {
    const accepted = [this.opts.token, this.opts.readToken ?? null].filter((t): t is string => t !== null);
    if (accepted.length === 0) return true; // loopback only: checkListen
    const presented = bearerFrom(req);
    if (presented === null) return false;
    let ok = false;
    for (const t of accepted) ok = tokensEqual(presented, t) || ok; // every one compared
    return ok;
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    req.resume();
    if (path !== '/healthz' && path !== '/status' && path !== '/metrics') {
      return sendJson(res, 404, errorJson('not-found', 'NOT_FOUND', 'no such endpoint (try /healthz, /status, /metrics)'));
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

  async close(): Promise<void> {
    await closeServer(this.http);
  }
}

