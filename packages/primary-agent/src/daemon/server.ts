import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { HISTORY_PATH, MAX_FRAME_BYTES, STREAM_PATH, StatusPage, TandemError, bearerFrom, sessionFrom, closeServer, createDaemonServer, listenOn, tokensEqual, type Logger, type ReloadingTls, type ServerTlsConfig } from '@tandem/shared';
import { answerBackup, type BackupHandler } from './backup-stream.js';
import { errorBody } from './control.js';

/**
 * The daemon's HTTP server (node:http + ws in noServer mode):
 *   GET  /healthz      200 "ok", no auth, says nothing else
 *   GET  /status       JSON (monitoring or control token)
 *   GET  /metrics      Prometheus text (monitoring or control token)
 *   POST /v1/backup    run a backup now; 200 BackupResult, 409 busy, 500/503 error JSON (control token)
 *                      (or, asked for, its progress and then that: backup-stream.ts)
 *   GET  /v1/stream    WebSocket upgrade (a standby's own token): the push channel to standbys
 *   GET  /             the status page, and /status/history, /login, /logout, /assets/* (shared/status-page.ts)
 * Tokens are compared in constant time, each presented token against every configured one. No
 * token, or an unknown one: a bare 401 (an upgrade gets "HTTP/1.1 401 Unauthorized" and a destroyed
 * socket, nothing else). A known token used where its role does not reach: 403. The server's
 * limits (idle and slow connections, a connection cap) are shared/net.ts's HTTP_LIMITS. A browser
 * logged in to the status page (with the monitoring or the control token) sends its session cookie
 * instead of a token: it counts as the monitoring token, whichever token it was made with.
 *
 * One server serves every site of the process (host.ts). `?site=NAME` picks a site: /status,
 * /status/history and the page show that site (without it: /status every site, under "sites",
 * and the page the first one), POST /v1/backup backs it up (required with several sites). A name
 * the process does not serve: 404 (400 on POST /v1/backup) naming the sites it does. With one site
 * nothing needs it, and every answer is that site's.
 */
export interface ServerHandlers {
  /** The sites served, in the config's order. */
  readonly sites: readonly string[];
  /** GET /status: `site` null is every site (one: that site's status, as it always was). */
  status(site: string | null): { status: number; body: unknown };
  /** GET /status/history: what the status page draws (page.ts), of `site` (null: the first). */
  history(site: string | null): unknown;
  metrics(): Promise<{ contentType: string; body: string }>;
  /** POST /v1/backup of `site`; with `onProgress` (the client asked for it), the backup's progress as it runs (backup-stream.ts). */
  backup(site: string, onProgress?: Parameters<BackupHandler>[0]): ReturnType<BackupHandler>;
  /** null to accept, else the status line to refuse upgrades with (e.g. when fenced). */
  refuseUpgrade(): string | null;
  /** An accepted /v1/stream connection of the listed standby `standbyId`. */
  attach(ws: WebSocket, req: IncomingMessage, standbyId: string): void;
}

/** Why a `?site=` cannot be answered: the status to answer with and the error. */
interface SiteRefusal {
  status: number;
  error: TandemError;
}

/** The tokens this server knows, by what each grants. */
export interface ServerTokens {
  /** server.tokenFile: POST /v1/backup, /status, /metrics. */
  control: string;
  /** server.readTokenFile: /status and /metrics. */
  read: string | null;
  /** standbys[]: /v1/stream, as that standby. */
  standbys: ReadonlyArray<{ id: string; token: string }>;
}

/** Who presented a token. */
export type Caller = { role: 'control' } | { role: 'read' } | { role: 'standby'; standbyId: string };

export interface DaemonServerOptions {
  tokens: ServerTokens;
  logger: Logger;
  handlers: ServerHandlers;
  /** server.tls: HTTPS/WSS only (shared/tls-server.ts). */
  tls?: ServerTlsConfig;
}

/** The caller a presented token identifies, or null. Every configured token is compared (no early exit). */
export function identify(tokens: ServerTokens, presented: string | null): Caller | null {
  if (presented === null) return null;
  let caller: Caller | null = null;
  if (tokensEqual(presented, tokens.control)) caller = { role: 'control' };
  if (tokens.read !== null && tokensEqual(presented, tokens.read)) caller ??= { role: 'read' };
  for (const sb of tokens.standbys) {
    if (tokensEqual(presented, sb.token)) caller ??= { role: 'standby', standbyId: sb.id };
  }
  return caller;
}

function sendJson(res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...extra });
  res.end(text);
}

function sendText(res: ServerResponse, status: number, text: string, contentType = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

const unauthorized = new TandemError('config', 'UNAUTHORIZED', 'missing or wrong token: send Authorization: Bearer <token>');
const forbidden = (what: string, needs: string) =>
  new TandemError('config', 'FORBIDDEN', `this token may not ${what}: that takes ${needs}`, { hint: 'see docs/operations.md, "Tokens": which token goes where' });

function rawRefusal(socket: Duplex, statusLine: string): void {
  if (socket.writable) socket.write(`HTTP/1.1 ${statusLine}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  socket.destroy();
}

export class DaemonServer {
  readonly http: Server;
  /** The certificate in use and its reloading; null without server.tls. */
  readonly tls: ReloadingTls | null;
  readonly scheme: 'http' | 'https';
  private readonly wss: WebSocketServer;
  private readonly page: StatusPage;

  constructor(private readonly opts: DaemonServerOptions) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false, clientTracking: false });
    ({ http: this.http, tls: this.tls, scheme: this.scheme } = createDaemonServer((req, res) => {
      this.route(req, res).catch((err: unknown) => {
        opts.logger.error({ err, url: req.url }, 'request handler failed');
        if (!res.headersSent) sendJson(res, 500, errorBody(err));
        else res.destroy();
      });
    }, { tls: opts.tls, logger: opts.logger }));
    const { control, read } = opts.tokens;
    this.page = new StatusPage({
      agent: 'primary',
      access: (req) => {
        const caller = this.caller(req);
        return caller === null ? 'unauthorized' : caller.role === 'standby' ? 'forbidden' : 'ok';
      },
      loginTokens: read === null ? [control] : [control, read],
      history: (query) => opts.handlers.history(query.get('site')),
      logger: opts.logger,
    });
    // A backup answered over POST /v1/backup may take long: the limits only bound receiving the
    // request, which is empty.
    this.http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head));
    this.http.on('clientError', (_err, socket) => rawRefusal(socket, '400 Bad Request'));
  }

  /** The request may read the status (the monitoring or control token, or a session). */
  private reads(req: IncomingMessage): boolean {
    const caller = this.caller(req);
    return caller !== null && caller.role !== 'standby';
  }

  private caller(req: IncomingMessage): Caller | null {
    const bearer = bearerFrom(req);
    if (bearer !== null) return identify(this.opts.tokens, bearer);
    // The status page's session cookie reads, whichever token it was made with.
    const { control, read } = this.opts.tokens;
    return sessionFrom(req, read === null ? [control] : [control, read]) === null ? null : { role: 'read' };
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => undefined);
    const path = (req.url ?? '').split('?')[0];
    const caller = this.caller(req);
    if (caller === null) {
      this.opts.logger.warn({ peer: req.socket.remoteAddress, path }, 'refused an unauthenticated WebSocket upgrade');
      rawRefusal(socket, '401 Unauthorized');
      return;
    }
    if (path !== STREAM_PATH) {
      rawRefusal(socket, '404 Not Found');
      return;
    }
    if (caller.role !== 'standby') {
      // The monitoring and control tokens are not a standby's: no push channel, no switchover.
      this.opts.logger.warn({ peer: req.socket.remoteAddress, role: caller.role }, `refused a WebSocket upgrade with the ${caller.role === 'read' ? 'monitoring' : 'control'} token: /v1/stream takes a standby's own token (standbys[].tokenFile)`);
      rawRefusal(socket, '403 Forbidden');
      return;
    }
    const refusal = this.opts.handlers.refuseUpgrade();
    if (refusal !== null) {
      rawRefusal(socket, refusal);
      return;
    }
    const standbyId = caller.standbyId;
    this.wss.handleUpgrade(req, socket, head, (ws) => this.opts.handlers.attach(ws, req, standbyId));
  }

  /**
   * The site `?site=` names (null: none named), or why it cannot be answered: a name not served,
   * or (`required`) no name while several sites are served.
   */
  private site(query: URLSearchParams, what: string, required: boolean): { site: string | null } | SiteRefusal {
    const sites = this.opts.handlers.sites;
    const named = query.get('site');
    const list = sites.map((s) => `"${s}"`).join(', ');
    if (named === null || named === '') {
      if (required && sites.length > 1) {
        return {
          status: 400,
          error: new TandemError('config', 'SITE_REQUIRED', `${what}: this primary serves ${sites.length} sites (${list}): say which with ?site=NAME`, {
            hint: `e.g. tandem-primary backup --site ${sites[0]} (it adds ?site= itself)`,
          }),
        };
      }
      return { site: null };
    }
    if (sites.includes(named)) return { site: named };
    return {
      status: required ? 400 : 404,
      error: new TandemError('not-found', 'UNKNOWN_SITE', `${what}: this primary serves no site "${named.slice(0, 64)}"; it serves ${list}`, { hint: 'pass one of those names as ?site=NAME' }),
    };
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    const url = new URL(req.url ?? '/', 'http://localhost');
    const query = url.searchParams;
    const pagePath = url.pathname; // as the status page reads it
    if ((req.method === 'GET' || req.method === 'HEAD') && (pagePath === '/' || pagePath === HISTORY_PATH) && !query.has('token') && this.reads(req)) {
      // The page shows one site: the one named, else the first (a redirect names it, so that
      // what the page's script fetches says it too).
      const picked = this.site(query, `GET ${pagePath}`, false);
      if ('error' in picked) {
        req.resume();
        return sendJson(res, picked.status, errorBody(picked.error));
      }
      if (pagePath === '/' && picked.site === null && this.opts.handlers.sites.length > 1) {
        req.resume();
        res.writeHead(303, { location: `./?site=${encodeURIComponent(this.opts.handlers.sites[0]!)}`, 'cache-control': 'no-store', 'content-length': 0 });
        res.end();
        return;
      }
    }
    if (await this.page.handle(req, res)) return;
    req.resume(); // no request bodies are read; drain whatever was sent
    if (path === '/healthz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return sendText(res, 405, 'method not allowed\n');
      return sendText(res, 200, 'ok\n');
    }
    const known = ['/status', '/metrics', '/v1/backup', STREAM_PATH];
    if (!known.includes(path ?? '')) return sendJson(res, 404, { error: { kind: 'not-found', code: 'NOT_FOUND', message: 'no such endpoint' } });
    const caller = this.caller(req);
    if (caller === null) return sendJson(res, 401, errorBody(unauthorized), { 'www-authenticate': 'Bearer' });
    const reads = caller.role === 'control' || caller.role === 'read';
    if ((path === '/status' || path === '/metrics') && req.method === 'GET') {
      if (!reads) return sendJson(res, 403, errorBody(forbidden(`read ${path}`, 'the monitoring token (server.readTokenFile) or the control token (server.tokenFile)')));
      if (path === '/status') {
        const picked = this.site(query, 'GET /status', false);
        if ('error' in picked) return sendJson(res, picked.status, errorBody(picked.error));
        const r = this.opts.handlers.status(picked.site);
        return sendJson(res, r.status, r.body);
      }
      const m = await this.opts.handlers.metrics();
      return sendText(res, 200, m.body, m.contentType);
    }
    if (path === '/v1/backup' && req.method === 'POST') {
      if (caller.role !== 'control') return sendJson(res, 403, errorBody(forbidden('start a backup', 'the control token (server.tokenFile)')));
      const picked = this.site(query, 'POST /v1/backup', true);
      if ('error' in picked) return sendJson(res, picked.status, errorBody(picked.error));
      const site = picked.site ?? this.opts.handlers.sites[0]!;
      return answerBackup(req, res, (onProgress) => this.opts.handlers.backup(site, onProgress));
    }
    if (path === STREAM_PATH) return sendJson(res, 426, { error: { kind: 'config', code: 'UPGRADE_REQUIRED', message: 'this endpoint is a WebSocket' } });
    return sendJson(res, 405, { error: { kind: 'config', code: 'METHOD_NOT_ALLOWED', message: `${req.method} is not allowed on ${path}` } });
  }

  /** Listen on host:port; resolves with the address actually bound. */
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
    this.wss.close();
  }
}
