import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import { MAX_FRAME_BYTES, STREAM_PATH, TandemError, bearerFrom, closeServer, describeError, listenOn, tokensEqual, type Logger } from '@tandem/shared';
import { errorBody } from './control.js';
import type { StandbyHub } from './standbys.js';

/**
 * The daemon's HTTP server (node:http + ws in noServer mode):
 *   GET  /healthz      200 "ok", no auth, says nothing else
 *   GET  /status       JSON (token)
 *   GET  /metrics      Prometheus text (token)
 *   POST /v1/backup    run a backup now; 200 BackupResult, 409 busy, 500/503 error JSON (token)
 *   GET  /v1/stream    WebSocket upgrade (token): the push channel to standbys
 * The token is compared in constant time. An upgrade without a valid token gets
 * "HTTP/1.1 401 Unauthorized" and a destroyed socket, nothing else.
 */
export interface ServerHandlers {
  status(): unknown;
  metrics(): Promise<{ contentType: string; body: string }>;
  backup(): Promise<{ status: number; body: unknown }>;
  /** null to accept, else the status line to refuse upgrades with (e.g. when fenced). */
  refuseUpgrade(): string | null;
}

export interface DaemonServerOptions {
  token: string;
  logger: Logger;
  hub: StandbyHub;
  handlers: ServerHandlers;
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

function rawRefusal(socket: Duplex, statusLine: string): void {
  if (socket.writable) socket.write(`HTTP/1.1 ${statusLine}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  socket.destroy();
}

export class DaemonServer {
  readonly http: Server;
  private readonly wss: WebSocketServer;

  constructor(private readonly opts: DaemonServerOptions) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false, clientTracking: false });
    this.http = createServer((req, res) => {
      this.route(req, res).catch((err: unknown) => {
        opts.logger.error({ err, url: req.url }, 'request handler failed');
        if (!res.headersSent) sendJson(res, 500, errorBody(err));
        else res.destroy();
      });
    });
    // A backup answered over POST /v1/backup may take long; the default request timeouts only bound
    // receiving the request, which is empty.
    this.http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head));
    this.http.on('clientError', (_err, socket) => rawRefusal(socket, '400 Bad Request'));
  }

  private authorized(req: IncomingMessage): boolean {
    const presented = bearerFrom(req);
    return presented !== null && tokensEqual(presented, this.opts.token);
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => undefined);
    const path = (req.url ?? '').split('?')[0];
    if (!this.authorized(req)) {
      this.opts.logger.warn({ peer: req.socket.remoteAddress, path }, 'refused an unauthenticated WebSocket upgrade');
      rawRefusal(socket, '401 Unauthorized');
      return;
    }
    if (path !== STREAM_PATH) {
      rawRefusal(socket, '404 Not Found');
      return;
    }
    const refusal = this.opts.handlers.refuseUpgrade();
    if (refusal !== null) {
      rawRefusal(socket, refusal);
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.opts.hub.attach(ws, req));
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    req.resume(); // no request bodies are read; drain whatever was sent
    if (path === '/healthz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return sendText(res, 405, 'method not allowed\n');
      return sendText(res, 200, 'ok\n');
    }
    const known = ['/status', '/metrics', '/v1/backup', STREAM_PATH];
    if (!known.includes(path ?? '')) return sendJson(res, 404, { error: { kind: 'not-found', code: 'NOT_FOUND', message: 'no such endpoint' } });
    if (!this.authorized(req)) return sendJson(res, 401, errorBody(unauthorized), { 'www-authenticate': 'Bearer' });
    if (path === '/status' && req.method === 'GET') return sendJson(res, 200, this.opts.handlers.status());
    if (path === '/metrics' && req.method === 'GET') {
      const m = await this.opts.handlers.metrics();
      return sendText(res, 200, m.body, m.contentType);
    }
    if (path === '/v1/backup' && req.method === 'POST') {
      const r = await this.opts.handlers.backup();
      return sendJson(res, r.status, r.body);
    }
    if (path === STREAM_PATH) return sendJson(res, 426, { error: { kind: 'config', code: 'UPGRADE_REQUIRED', message: 'this endpoint is a WebSocket' } });
    return sendJson(res, 405, { error: { kind: 'config', code: 'METHOD_NOT_ALLOWED', message: `${req.method} is not allowed on ${path}` } });
  }

  /** Listen on host:port; resolves with the address actually bound. */
  listen(listen: string): Promise<string> {
    return listenOn(this.http, listen);
  }

  async close(): Promise<void> {
    await closeServer(this.http);
    this.wss.close();
  }
}
