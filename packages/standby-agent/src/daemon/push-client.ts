import type { EventEmitter } from 'node:events';
import { WebSocket } from 'ws';
import {
  CLOSE_CODES,
  MAX_FRAME_BYTES,
  STREAM_PATH,
  TandemError,
  describeError,
  describeTlsFailure,
  encodeMessage,
  trackTlsHandshake,
  isTandemError,
  parseMessage,
  type AppliedMessage,
  type Logger,
  type PrimaryHello,
  type SetCommitted,
  type StandbyHello,
} from '@tandem/shared';
import { backoffDelay, type BackoffPolicy } from './backoff.js';
import type { LinkMember, PushLink } from './push-link.js';

/**
 * The standby's end of the push channel (ws(s)://<primary>/v1/stream, protocol in shared/protocol.ts).
 * Authenticates with `Authorization: Bearer <token>` on the upgrade (this standby's own token, which
 * the primary lists for its standbyId under `standbys:`), says hello on every connection,
 * passes `set-committed` and `heartbeat` on, reports `applied`. Reconnects by itself with capped,
 * jittered exponential backoff; nothing the primary sends, or fails to send, can stop the daemon.
 * A connection that is silent (no message, no ping) for `silenceTimeoutMs` is dropped and redialled:
 * the primary pings every 15 s, so silence means a dead peer or a dead path.
 *
 * One process serving several sites gives each site's client the shared connection (`link`,
 * push-link.ts): the client then takes its site's channel on that one socket instead of dialling,
 * and when the socket drops it waits for the link to redial (once, for every site) instead of
 * redialling itself.
 */
export interface PushClientOptions {
  /** primary.url: ws://host:port or wss://host:port; a URL without a path gets /v1/stream. */
  url: string;
  token: string;
  site: string;
  logger: Logger;
  /** The hello to send on each connection (the applied set as of now). */
  hello(): StandbyHello;
  onPrimaryHello?(msg: PrimaryHello): void;
  onSetCommitted(msg: SetCommitted): void;
  onHeartbeat?(at: string): void;
  /** A failed connection attempt or a lost connection (already logged). */
  onFailure?(err: TandemError): void;
  onConnectedChange?(connected: boolean): void;
  backoff?: BackoffPolicy;
  silenceTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  /** primary.tls as ws options (ca, cert, key), asked on every dial: a reload (SIGHUP) counts from the next connection. */
  tls?(): PrimaryTlsOptions;
  /** The connection shared by the sites of this process (several sites); absent: a socket of its own. */
  link?: PushLink;
}

export interface PushStatus {
  url: string;
  connected: boolean;
  /** Since when connected (or, when not, since when disconnected). */
  since: string;
  /** Failed attempts since the last good connection. */
  failures: number;
  nextAttemptAt: string | null;
  lastError: { at: string; code: string; message: string } | null;
}

export const DEFAULT_PUSH_BACKOFF: BackoffPolicy = { baseMs: 1_000, capMs: 30_000 };

/** What the client talks through: its own WebSocket, or its site's channel on a shared one (SiteChannel). */
export type PushSocket = EventEmitter & {
  readonly readyState: number;
  send(text: string, cb?: (err?: Error) => void): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
};

/**
 * Closes a socket or channel with 1001 (the standby shutting down) and waits for its close, at
 * most 2 s, after which it is terminated. A socket still connecting is terminated at once.
 */
export function closeGoingAway(ws: PushSocket): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const t = setTimeout(() => {
      ws.terminate();
      resolve();
    }, 2_000);
    t.unref();
    ws.once('close', () => {
      clearTimeout(t);
      resolve();
    });
    if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
    else ws.close(CLOSE_CODES.goingAway, 'standby shutting down');
  });
}

/** The URL to dial: the configured one, with /v1/stream when it names no path. */
export function streamUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch (err) {
    throw new TandemError('config', 'PUSH_URL', `primary.url ${url}: ${describeError(err)}`, { hint: 'expected ws://host:port or wss://host:port' });
  }
  if (u.pathname === '' || u.pathname === '/') u.pathname = STREAM_PATH;
  return u.toString();
}

/** primary.tls as ws options (ca, cert, key): tlsOptions(loadClientTls(config.primary.tls)). */
export type PrimaryTlsOptions = { ca?: string; cert?: string; key?: string };

/** A WebSocket to the primary, being opened. */
export interface PrimarySocket {
  ws: WebSocket;
  /**
   * Whether the TLS handshake had completed (wss only): a reset after it is the primary refusing
   * this standby's client certificate (classifyWsError, describeTlsFailure).
   */
  handshakeDone(): boolean;
}

/**
 * Opens a WebSocket to the primary's /v1/stream as every connection of this standby's does (the
 * push client, the check's probe, a switchover): this standby's bearer token on the upgrade,
 * frames up to MAX_FRAME_BYTES, no compression, no redirects, primary.tls, and with wss the TLS
 * handshake tracked. Throws what the ws constructor throws for a URL it cannot dial.
 */
export function dialPrimary(url: string, token: string, opts: { handshakeTimeoutMs: number; tls?: PrimaryTlsOptions }): PrimarySocket {
  const tracked = /^(wss|https):/.test(url) ? trackTlsHandshake() : null;
  const ws = new WebSocket(url, {
    headers: { authorization: `Bearer ${token}` },
    handshakeTimeout: opts.handshakeTimeoutMs,
    maxPayload: MAX_FRAME_BYTES,
    perMessageDeflate: false,
    followRedirects: false,
    ...opts.tls,
    ...(tracked === null ? {} : { createConnection: tracked.createConnection }),
  });
  return { ws, handshakeDone: () => tracked?.handshakeDone ?? false };
}

export class PushClient implements LinkMember {
  private ws: PushSocket | null = null;
  private connected = false;
  private stopped = false;
  private failures = 0;
  private since = new Date();
  private retryTimer: NodeJS.Timeout | null = null;
  private silenceTimer: NodeJS.Timeout | null = null;
  private nextAttemptAt: Date | null = null;
  private lastError: PushStatus['lastError'] = null;
  /** Set when the primary closed with "replaced": wait the full cap before dialling again. */
  private replaced = false;
  private readonly url: string;
  private readonly log: Logger;

  constructor(private readonly opts: PushClientOptions) {
    this.url = streamUrl(opts.url);
    this.log = opts.logger.child({ component: 'push', primary: this.url });
  }

  start(): void {
    this.stopped = false;
    this.opts.link?.attach(this);
    this.dial();
  }

  /** The shared connection dialled a new socket: this site's channel goes on it (unless it has a live one). */
  linkDialled(): void {
    if (this.stopped) return;
    if (this.ws !== null && this.ws.readyState !== WebSocket.CLOSED) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.dial();
  }

  isConnected(): boolean {
    return this.connected;
  }

  status(): PushStatus {
    return {
      url: this.url,
      connected: this.connected,
      since: this.since.toISOString(),
      failures: this.failures,
      nextAttemptAt: (this.nextAttemptAt ?? (this.waitingForLink() ? this.opts.link!.nextAttemptAt() : null))?.toISOString() ?? null,
      lastError: this.lastError,
    };
  }

  /** Sends `applied` if connected; otherwise the next hello carries the applied set. */
  sendApplied(msg: Omit<AppliedMessage, 'type'>): boolean {
    return this.send(encodeMessage({ type: 'applied', ...msg }, 'standby-to-primary'));
  }

  /**
   * Dials at once if a retry is waiting (primary.tls was reloaded: the fix should not wait out the
   * backoff); nothing while connected or connecting.
   */
  redialNow(): void {
    if (this.stopped || this.retryTimer === null) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.dial();
  }

  /** Closes the connection (1001 going away; on a shared one, this site's channel alone) and stops redialling. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.opts.link?.detach(this);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.nextAttemptAt = null;
    this.clearSilence();
    const ws = this.ws;
    this.ws = null;
    this.setConnected(false);
    if (ws !== null) await closeGoingAway(ws);
  }

  private send(text: string): boolean {
    const ws = this.ws;
    if (ws === null || !this.connected || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(text, (err) => {
      if (err) this.log.debug({ err }, 'send failed (the connection is going down)');
    });
    return true;
  }

  private setConnected(c: boolean): void {
    if (this.connected === c) return;
    this.connected = c;
    this.since = new Date();
    this.opts.onConnectedChange?.(c);
  }

  private armSilence(): void {
    this.clearSilence();
    const ms = this.opts.silenceTimeoutMs ?? 60_000;
    this.silenceTimer = setTimeout(() => {
      this.log.warn({ silentForMs: ms }, 'push channel silent (no message, no ping): reconnecting');
      this.problem(new TandemError('transient', 'PUSH_SILENT', `no message or ping from the primary for ${ms / 1000} s`));
      // The primary's pings are the socket's: a silent channel on a shared socket is a dead socket.
      if (this.opts.link !== undefined) this.opts.link.drop(`site "${this.opts.site}" heard nothing for ${ms / 1000} s`);
      else this.ws?.terminate();
    }, ms);
    this.silenceTimer.unref();
  }

  private clearSilence(): void {
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    this.silenceTimer = null;
  }

  private problem(err: TandemError): void {
    this.lastError = { at: new Date().toISOString(), code: err.code, message: err.message };
  }

  /** Waiting for the shared connection to dial again (it calls linkDialled()). */
  private waitingForLink(): boolean {
    return this.opts.link !== undefined && !this.stopped && this.ws === null && this.retryTimer === null;
  }

  private dial(): void {
    if (this.stopped) return;
    this.retryTimer = null;
    this.nextAttemptAt = null;
    let ws: PushSocket;
    let handshakeDone: () => boolean;
    if (this.opts.link !== undefined) {
      const ch = this.opts.link.channel(this.opts.site);
      if (ch === null) return; // no socket now: the link dials, then calls linkDialled()
      ({ ws, handshakeDone } = ch);
    } else {
      try {
        ({ ws, handshakeDone } = dialPrimary(this.url, this.opts.token, { handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 10_000, tls: this.opts.tls?.() }));
      } catch (err) {
        this.failed(new TandemError('config', 'PUSH_URL', `primary.url ${this.url}: ${describeError(err)}`));
        return;
      }
    }
    this.ws = ws;
    let failure: TandemError | null = null;
    let opened = false;
    const onOpen = () => {
      if (opened || this.ws !== ws) return;
      opened = true;
      this.armSilence();
      try {
        ws.send(encodeMessage(this.opts.hello(), 'standby-to-primary'));
      } catch (err) {
        failure = isTandemError(err) ? err : new TandemError('internal', 'PUSH_HELLO', describeError(err));
        ws.close(CLOSE_CODES.policyViolation, 'standby could not say hello');
      }
    };
    ws.on('open', onOpen);
    // A channel taken on a shared socket that is open already is open from the start.
    if (ws.readyState === WebSocket.OPEN) queueMicrotask(onOpen);
    ws.on('ping', () => this.armSilence());
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      this.armSilence();
      try {
        this.receive(data as Buffer | ArrayBuffer | Buffer[], isBinary);
      } catch (err) {
        failure = isTandemError(err) ? err : new TandemError('permanent', 'PROTOCOL_INVALID', describeError(err));
        this.log.warn({ err: failure }, 'the primary sent something that is not protocol: closing the push channel');
        ws.close(CLOSE_CODES.policyViolation, failure.message.slice(0, 120));
      }
    });
    ws.on('error', (err: Error) => {
      failure ??= classifyWsError(err, this.url, handshakeDone());
    });
    ws.on('close', (code: number, reasonBuf: Buffer) => {
      if (this.ws === ws) this.ws = null;
      this.clearSilence();
      const wasConnected = this.connected;
      this.setConnected(false);
      if (this.stopped) return;
      const reason = reasonBuf.toString('utf8');
      if (code === CLOSE_CODES.replaced) this.replaced = true;
      failure ??= closeError(code, reason);
      if (wasConnected) this.log.warn({ code, reason, err: failure }, 'push channel lost; reconnecting');
      this.failed(failure);
    });
  }

  private receive(data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
    if (isBinary) throw new TandemError('permanent', 'PROTOCOL_INVALID', 'the primary sent a binary frame');
    let msg;
    try {
      msg = parseMessage(data, 'primary-to-standby');
    } catch (err) {
      // A message type this version does not know is a newer primary: ignore it.
      if (isTandemError(err) && err.code === 'PROTOCOL_UNKNOWN_TYPE') {
        this.log.debug({ err }, 'ignoring a message of an unknown type');
        return;
      }
      throw err;
    }
    if (msg.type === 'hello') {
      if (msg.site !== this.opts.site) {
        throw new TandemError('config', 'PUSH_WRONG_SITE', `the primary at ${this.url} serves site "${msg.site}", not "${this.opts.site}"`, {
          hint: 'check primary.url: it must name the primary agent of this site',
        });
      }
      const wasFailing = this.failures > 0;
      this.failures = 0;
      this.replaced = false;
      this.opts.link?.helloSeen();
      this.setConnected(true);
      this.log[wasFailing ? 'info' : 'debug']({ epoch: msg.epoch, latestSetId: msg.latestSetId }, 'push channel connected');
      this.opts.onPrimaryHello?.(msg);
      return;
    }
    if (!this.connected) throw new TandemError('permanent', 'PROTOCOL_INVALID', `"${msg.type}" before the primary's hello`);
    if (msg.type === 'set-committed') {
      if (msg.site !== this.opts.site) throw new TandemError('permanent', 'PROTOCOL_INVALID', `set-committed for site "${msg.site}", not "${this.opts.site}"`);
      this.opts.onSetCommitted(msg);
      return;
    }
    if (msg.type === 'heartbeat') {
      this.opts.onHeartbeat?.(msg.at);
      return;
    }
    // Anything else the protocol knows (e.g. a switchover's messages) is not for this connection.
    this.log.debug({ type: (msg as { type: string }).type }, 'ignoring a message not meant for the daemon');
  }

  private failed(err: TandemError): void {
    this.failures++;
    this.problem(err);
    this.opts.onFailure?.(err);
    const link = this.opts.link;
    if (link !== undefined && !link.hasSocket()) {
      // The shared socket went (or never came): the link redials once for every site and then hands
      // this site a channel on the new socket (linkDialled).
      const retryAt = link.nextAttemptAt();
      const retryInMs = retryAt === null ? null : Math.max(0, retryAt.getTime() - Date.now());
      this.log[this.failures === 1 ? 'warn' : 'debug']({ err, code: err.code, attempt: this.failures, retryInMs }, 'push channel unavailable; polling covers it meanwhile');
      return;
    }
    const policy = this.opts.backoff ?? DEFAULT_PUSH_BACKOFF;
    const delay = this.replaced ? policy.capMs : backoffDelay(this.failures, policy);
    this.nextAttemptAt = new Date(Date.now() + delay);
    this.log[this.failures === 1 ? 'warn' : 'debug']({ err, code: err.code, attempt: this.failures, retryInMs: delay }, 'push channel unavailable; polling covers it meanwhile');
    this.retryTimer = setTimeout(() => this.dial(), delay);
  }
}

/** A failed dial as the operator should read it: a refused token (401, 403) named as such, else unreachable. */
export function classifyWsError(err: Error, url: string, afterHandshake = false): TandemError {
  const tls = describeTlsFailure(err, `the primary at ${url}`, 'primary.tls', { afterHandshake });
  if (tls !== null) return tls;
  const m = /Unexpected server response: (\d+)/.exec(err.message);
  if (m) {
    const status = Number(m[1]);
    if (status === 401) {
      return new TandemError('config', 'PUSH_UNAUTHORIZED', `the primary at ${url} refused the token (401)`, {
        hint: "primary.tokenFile must hold this standby's own token, the one the primary's config lists for it under standbys: (id and tokenFile)",
      });
    }
    if (status === 403) {
      return new TandemError('config', 'PUSH_FORBIDDEN', `the primary at ${url} refused the token for the push channel (403): it is the primary's monitoring or control token, not a standby's`, {
        hint: "primary.tokenFile must hold this standby's own token, the one the primary's config lists for it under standbys: (id and tokenFile)",
      });
    }
    return new TandemError('permanent', 'PUSH_REFUSED', `the primary at ${url} answered the upgrade with HTTP ${status}`);
  }
  const code = (err as NodeJS.ErrnoException).code;
  return new TandemError('transient', 'PUSH_UNREACHABLE', `cannot reach the primary at ${url}: ${code ?? err.message}`);
}

function closeError(code: number, reason: string): TandemError {
  if (code === CLOSE_CODES.fenced) {
    return new TandemError('fenced', 'PUSH_FENCED', `the primary closed the push channel: it is fenced (a higher epoch exists)${reason ? `: ${reason}` : ''}`, {
      hint: 'point primary.url at the new primary',
    });
  }
  if (code === CLOSE_CODES.replaced) {
    return new TandemError('config', 'PUSH_REPLACED', 'the primary replaced this connection with a newer one of the same standbyId', {
      hint: 'two standbys with the same standbyId? give each its own standbyId',
    });
  }
  return new TandemError('transient', 'PUSH_CLOSED', `push channel closed (${code}${reason ? `: ${reason}` : ''})`);
}
