import { WebSocket } from 'ws';
import {
  CLOSE_CODES,
  STREAM_PATH,
  TandemError,
  describeError,
  describeTlsFailure,
  encodeMessage,
  isTandemError,
  parseMessage,
  type Logger,
  type PrimaryHello,
  type SwitchoverPrimaryMessage,
  type SwitchoverStandbyMessage,
} from '@tandem/shared';
import { dialPrimary, type PrimaryTlsOptions } from '../daemon/push-client.js';

/**
 * The switchover's own connection to the primary's /v1/stream (this standby's own bearer token on
 * the upgrade; the primary accepts the request only for the standby that token belongs to). It
 * sends `switchover-request` first instead of a hello, so that the standby daemon's connection of
 * the same standbyId (if one runs here) is not replaced. The primary's hello is checked (site) and
 * then everything but `switchover-*` messages (heartbeats, set-committed) is ignored.
 */
export type ChannelEvent =
  | { kind: 'message'; msg: SwitchoverPrimaryMessage }
  | { kind: 'closed'; code: number; reason: string; fenced: boolean };

/** primary.url with /v1/stream when it names no path. */
export function switchoverStreamUrl(url: string): string {
  const u = new URL(url);
  if (u.pathname === '' || u.pathname === '/') u.pathname = STREAM_PATH;
  return u.toString();
}

function upgradeRefused(status: number, url: string): TandemError {
  if (status === 401) {
    return new TandemError('config', 'SWITCHOVER_UNAUTHORIZED', `the primary at ${url} refused the token (401): the switchover request was not sent`, {
      hint: "primary.tokenFile (or TANDEM_TOKEN) must hold this standby's own token, the one the primary's config lists for it under standbys: (id and tokenFile)",
    });
  }
  if (status === 403) {
    return new TandemError('config', 'SWITCHOVER_FORBIDDEN', `the primary at ${url} refused the token (403): it is the primary's monitoring or control token, not a standby's; the switchover request was not sent`, {
      hint: "primary.tokenFile (or TANDEM_TOKEN) must hold this standby's own token, the one the primary's config lists for it under standbys: (id and tokenFile)",
    });
  }
  if (status === 503) {
    return new TandemError('precondition', 'SWITCHOVER_PRIMARY_UNAVAILABLE', `the primary at ${url} refuses connections (503): it is fenced or shutting down; nothing changed`, {
      hint: "check the primary's /status; if it is fenced, another server is the primary already",
    });
  }
  return new TandemError('permanent', 'SWITCHOVER_REFUSED', `the primary at ${url} answered the WebSocket upgrade with HTTP ${status}; nothing changed`, {
    hint: 'primary.url must name the primary agent\'s server.listen (ws://host:port)',
  });
}

export class SwitchoverChannel {
  private readonly events: ChannelEvent[] = [];
  private waiter: (() => void) | null = null;
  private closedEvent: ChannelEvent | null = null;
  hello: PrimaryHello | null = null;

  private constructor(
    private readonly ws: WebSocket,
    readonly url: string,
    private readonly log: Logger,
  ) {}

  /**
   * Connects, sends `first` (the switchover-request) and waits for the primary's hello; throws when
   * that fails. opts.tls: primary.tls as ws options (ca, cert, key).
   */
  static async open(
    primaryUrl: string,
    token: string,
    opts: { site: string; logger: Logger; timeoutMs?: number; tls?: PrimaryTlsOptions; first?: SwitchoverStandbyMessage },
  ): Promise<SwitchoverChannel> {
    let url: string;
    try {
      url = switchoverStreamUrl(primaryUrl);
    } catch (err) {
      throw new TandemError('config', 'SWITCHOVER_URL', `primary.url ${primaryUrl}: ${describeError(err)}`);
    }
    const timeoutMs = opts.timeoutMs ?? 15_000;
    const { ws, handshakeDone } = dialPrimary(url, token, { handshakeTimeoutMs: timeoutMs, tls: opts.tls });
    const ch = new SwitchoverChannel(ws, url, opts.logger);
    await new Promise<void>((resolve, reject) => {
      let settled = false;
      const done = (err?: TandemError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          ws.terminate();
          reject(err);
        } else resolve();
      };
      const timer = setTimeout(() => done(new TandemError('transient', 'SWITCHOVER_UNREACHABLE', `no hello from the primary at ${url} within ${timeoutMs / 1000} s; nothing changed`)), timeoutMs);
      // The request goes first, as soon as the socket is open: a primary serving several sites
      // learns from it which site this connection is for, and only then says hello. (A primary of
      // another site refuses the request, naming its site: nothing changes there.)
      if (opts.first !== undefined) {
        const first = opts.first;
        ws.on('open', () => ws.send(encodeMessage(first, 'switchover-to-primary')));
      }
      ws.on('unexpected-response', (_req, res) => {
        res.resume();
        done(upgradeRefused(res.statusCode ?? 0, url));
      });
      ws.on('error', (err) => {
        const code = (err as NodeJS.ErrnoException).code;
        const tls = describeTlsFailure(err, `the primary at ${url}`, 'primary.tls', { afterHandshake: handshakeDone() });
        if (tls !== null) {
          done(new TandemError(tls.kind, tls.code, `${tls.message}; nothing changed`, { hint: tls.hint }));
          return;
        }
        done(new TandemError('transient', 'SWITCHOVER_UNREACHABLE', `cannot reach the primary at ${url}: ${code ?? err.message}; nothing changed`, {
          hint: 'is `tandem-primary run` running there, and does primary.url name its server.listen?',
        }));
      });
      ws.on('close', (code, reason) => {
        if (!settled) done(new TandemError('transient', 'SWITCHOVER_CLOSED', `the primary at ${url} closed the connection (${code}${reason.length ? `: ${reason.toString('utf8')}` : ''}); nothing changed`));
        ch.push({ kind: 'closed', code, reason: reason.toString('utf8'), fenced: code === CLOSE_CODES.fenced });
      });
      ws.on('message', (data, isBinary) => {
        if (isBinary) return;
        const raw = data as Buffer;
        if (ch.hello === null) {
          try {
            const m = parseMessage(raw, 'primary-to-standby');
            if (m.type !== 'hello') return;
            if (m.site !== opts.site) {
              done(new TandemError('config', 'SWITCHOVER_WRONG_SITE', `the primary at ${url} serves site "${m.site}", not "${opts.site}"; nothing changed`, {
                hint: 'primary.url must name the primary agent of this site',
              }));
              return;
            }
            ch.hello = m;
            done();
          } catch (err) {
            done(new TandemError('permanent', 'PROTOCOL_INVALID', `the primary at ${url} did not say hello: ${describeError(err)}`));
          }
          return;
        }
        ch.receive(raw);
      });
    });
    return ch;
  }

  private receive(raw: Buffer): void {
    let msg: SwitchoverPrimaryMessage;
    try {
      msg = parseMessage(raw, 'switchover-to-standby');
    } catch (err) {
      if (isTandemError(err) && err.code === 'PROTOCOL_UNKNOWN_TYPE') return; // heartbeat, set-committed ...
      this.log.warn({ err }, 'the primary sent an invalid switchover message: ignored');
      return;
    }
    this.push({ kind: 'message', msg });
  }

  private push(e: ChannelEvent): void {
    if (e.kind === 'closed') {
      if (this.closedEvent) return;
      this.closedEvent = e;
    }
    this.events.push(e);
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** How the connection ended, once it has. */
  get closed(): ChannelEvent | null {
    return this.closedEvent;
  }

  send(msg: SwitchoverStandbyMessage): boolean {
    if (!this.isOpen()) return false;
    this.ws.send(encodeMessage(msg, 'switchover-to-primary'));
    return true;
  }

  /** The next event, or null at `deadline` (ms since the epoch) or when `signal` aborts. */
  async next(deadline: number, signal?: AbortSignal): Promise<ChannelEvent | null> {
    for (;;) {
      const e = this.events.shift();
      if (e) return e;
      const wait = deadline - Date.now();
      if (wait <= 0 || signal?.aborted) return null;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, wait);
        const onAbort = () => done();
        signal?.addEventListener('abort', onAbort, { once: true });
        this.waiter = done;
        function done() {
          clearTimeout(t);
          signal?.removeEventListener('abort', onAbort);
          resolve();
        }
      });
      this.waiter = null;
    }
  }

  async close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.ws.terminate();
        resolve();
      }, 2_000);
      t.unref();
      this.ws.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      this.ws.close(CLOSE_CODES.goingAway, 'switchover client done');
    });
  }
}
