import { WebSocket } from 'ws';
import { CLOSE_CODES, MUX_QUERY, SiteMux, TandemError, describeError, type Logger, type SiteChannel } from '@tandem/shared';
import { backoffDelay, type BackoffPolicy } from './backoff.js';
import { DEFAULT_PUSH_BACKOFF, closeGoingAway, dialPrimary, streamUrl, type PrimaryTlsOptions } from './push-client.js';

/**
 * The one push connection of a standby that serves several sites: a WebSocket to the primary's
 * /v1/stream dialled with `?mux=1`, carrying every site's channel (shared/site-channel.ts: each
 * frame in an envelope naming its site). Each site's PushClient takes its channel from here
 * instead of dialling a socket of its own, and does on it what it does on a socket: hello,
 * set-committed, heartbeat, applied.
 *
 * The link owns the socket's life: it dials, and when the socket drops (or a dial fails) every
 * site's channel closes with it and the link redials ONCE for all of them, with capped, jittered
 * exponential backoff; each dial hands every attached site a channel on the new socket, and each
 * says hello again. A site whose channel alone was closed by the primary (the socket stays) asks
 * for a new channel on the same socket after its own backoff.
 *
 * A standby of one site does not use this: it dials as it always did, one socket in the plain
 * framing, which any primary understands.
 */
export interface PushLinkOptions {
  /** primary.url (a URL without a path gets /v1/stream). */
  url: string;
  /** This standby's own token (primary.tokenFile). */
  token: string;
  logger: Logger;
  backoff?: BackoffPolicy;
  handshakeTimeoutMs?: number;
  /** primary.tls as ws options, asked on every dial (a reload counts from the next connection). */
  tls?(): PrimaryTlsOptions;
}

/** A site's end of the link: told each time the link has dialled a new socket. */
export interface LinkMember {
  linkDialled(): void;
}

/** The URL with `?mux=1` added (the primary then frames every site's messages in envelopes). */
export function muxUrl(url: string): string {
  const u = new URL(url);
  const q = u.search.replace(/^\?/, '');
  if (!q.split('&').includes(MUX_QUERY)) u.search = q === '' ? MUX_QUERY : `${q}&${MUX_QUERY}`;
  return u.toString();
}

export class PushLink {
  /** The URL dialled (primary.url's stream URL, with ?mux=1). */
  readonly url: string;
  /** Sockets dialled since the start. */
  dials = 0;
  private ws: WebSocket | null = null;
  private mux: SiteMux | null = null;
  private handshakeDone: () => boolean = () => false;
  private readonly members = new Set<LinkMember>();
  private stopped = true;
  private failures = 0;
  /** The primary closed the socket with "replaced": wait the full cap before dialling again. */
  private replaced = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private next: Date | null = null;
  private readonly log: Logger;

  constructor(private readonly o: PushLinkOptions) {
    const stream = streamUrl(o.url);
    this.url = muxUrl(stream);
    this.log = o.logger.child({ component: 'push-link', primary: stream });
  }

  attach(m: LinkMember): void {
    this.members.add(m);
  }

  detach(m: LinkMember): void {
    this.members.delete(m);
  }

  /** Dials the first socket (sites attached later get a channel on it when they ask). */
  start(): void {
    this.stopped = false;
    if (this.ws === null && this.retryTimer === null) this.dial();
  }

  /** Whether there is a socket (connecting or open) to open a site's channel on. */
  hasSocket(): boolean {
    return this.ws !== null && (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN);
  }

  /** When the link dials again (null: it has a socket, or is stopped). */
  nextAttemptAt(): Date | null {
    return this.next;
  }

  /**
   * The channel of `site` on the current socket (opening with it if it is still connecting), or
   * null while there is none: the link then dials and calls every member's linkDialled().
   */
  channel(site: string): { ws: SiteChannel; handshakeDone(): boolean } | null {
    if (this.stopped || this.mux === null || !this.hasSocket()) return null;
    return { ws: this.mux.channel(site), handshakeDone: this.handshakeDone };
  }

  /** A site heard the primary's hello: the connection works, the backoff starts over. */
  helloSeen(): void {
    this.failures = 0;
    this.replaced = false;
  }

  /** The socket is dead (no ping, no message): dropped, and redialled. */
  drop(why: string): void {
    if (this.ws === null) return;
    this.log.warn({ why }, 'dropping the push connection of every site; redialling');
    this.ws.terminate();
  }

  /** Dials at once if a redial is waiting (primary.tls was reloaded); nothing while connected or connecting. */
  redialNow(): void {
    if (this.stopped || this.retryTimer === null) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.dial();
  }

  /** Closes the socket (1001 going away) and dials no more. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.next = null;
    const ws = this.ws;
    this.ws = null;
    this.mux = null;
    if (ws !== null) await closeGoingAway(ws);
  }

  private dial(): void {
    if (this.stopped) return;
    this.retryTimer = null;
    this.next = null;
    let ws: WebSocket;
    let handshakeDone: () => boolean;
    try {
      ({ ws, handshakeDone } = dialPrimary(this.url, this.o.token, { handshakeTimeoutMs: this.o.handshakeTimeoutMs ?? 10_000, tls: this.o.tls?.() }));
    } catch (err) {
      this.log.error({ err: new TandemError('config', 'PUSH_URL', `primary.url ${this.url}: ${describeError(err)}`) }, 'cannot dial the primary');
      this.scheduleRedial(null, '');
      return;
    }
    this.dials++;
    this.ws = ws;
    this.handshakeDone = handshakeDone;
    let received = false;
    // Registered before the mux's own listeners: when the socket closes, the link knows it is down
    // (and when it dials again) before the sites hear that their channels closed.
    ws.on('message', () => {
      received = true;
    });
    ws.on('close', (code, reason) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.mux = null;
      if (this.stopped) return;
      const text = reason.toString('utf8');
      if (code === CLOSE_CODES.policyViolation && !received) {
        this.log.warn(
          { code, reason: text },
          'the primary closed the connection of every site before sending anything: a tandem-primary older than one that serves several sites on one connection (?mux=1) does this; upgrade it, or give this standby one site per config',
        );
      }
      this.scheduleRedial(code, text);
    });
    ws.on('error', (err) => this.log.debug({ err }, 'push connection error (each site reports it)'));
    this.mux = new SiteMux(ws);
    this.log.debug({ url: this.url, sites: this.members.size, dial: this.dials }, 'dialling the primary: one connection for every site');
    for (const m of [...this.members]) m.linkDialled();
  }

  private scheduleRedial(code: number | null, reason: string): void {
    if (this.stopped) return;
    if (code === CLOSE_CODES.replaced) this.replaced = true;
    this.failures++;
    const policy = this.o.backoff ?? DEFAULT_PUSH_BACKOFF;
    const delay = this.replaced ? policy.capMs : backoffDelay(this.failures, policy);
    this.next = new Date(Date.now() + delay);
    this.log[this.failures === 1 ? 'info' : 'debug']({ code, reason, attempt: this.failures, retryInMs: delay, sites: this.members.size }, 'push connection down: redialling once for every site');
    this.retryTimer = setTimeout(() => this.dial(), delay);
  }
}
