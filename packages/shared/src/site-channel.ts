import { EventEmitter } from 'node:events';
import type { WebSocket } from 'ws';
import { CLOSE_CODES, MAX_FRAME_BYTES } from './protocol.js';

/**
 * The push channel of one site over a WebSocket that may carry many (one agent serving several
 * sites keeps ONE connection to its peer, whatever the number of sites).
 *
 * A SiteChannel looks to the code that holds it (the primary's StandbyHub, the standby's
 * PushClient) like the WebSocket it used to hold: send, close, terminate, ping, readyState, and
 * the events open, message, close, ping, pong and error. Two framings:
 *
 * - plain: the WebSocket carries this one site, frames as they are (shared/protocol.ts). A standby
 *   agent of one site, a switchover's own connection, and any agent older than this framing.
 * - mux (the client asked with `?mux=1` on the upgrade URL): every frame is an envelope
 *   `{"mux":1,"site":"<site>","data":"<the frame>"}`, or `{"mux":1,"site":"<site>","closed":
 *   {"code":N,"reason":"..."}}` when one side closes that site's channel alone (a fenced site, a
 *   replaced connection). The WebSocket closing closes every channel on it.
 *
 * Pings are the WebSocket's: a channel's ping() pings the shared socket, and its ping and pong
 * events are every channel's.
 */
export const MUX_QUERY = 'mux=1';

// The WebSocket readyState values (the same in every implementation): a type-only import of ws
// keeps the WebSocket library out of what a one-shot command loads.
const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

interface Envelope {
  mux: 1;
  site: string;
  data?: string;
  closed?: { code: number; reason: string };
}

export function isMuxRequest(url: string | undefined): boolean {
  const q = (url ?? '').split('?')[1];
  return q !== undefined && q.split('&').includes(MUX_QUERY);
}

/** Parses a mux frame; null when it is not one. */
export function parseEnvelope(text: string): Envelope | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (v === null || typeof v !== 'object') return null;
  const e = v as Record<string, unknown>;
  if (e.mux !== 1 || typeof e.site !== 'string' || e.site.length === 0 || e.site.length > 63) return null;
  if (e.data !== undefined && typeof e.data !== 'string') return null;
  if (e.closed !== undefined) {
    const c = e.closed as Record<string, unknown> | null;
    if (c === null || typeof c !== 'object' || typeof c.code !== 'number' || typeof c.reason !== 'string') return null;
  }
  if ((e.data === undefined) === (e.closed === undefined)) return null;
  return e as unknown as Envelope;
}

export class SiteChannel extends EventEmitter {
  private state: number;

  constructor(
    readonly site: string,
    private readonly ws: WebSocket,
    private readonly framing: 'plain' | 'mux',
    /** Told when this channel closed (by either side, or with the socket). */
    private readonly onClosed: (ch: SiteChannel) => void,
  ) {
    super();
    // Open only once opened() says so (and 'open' is emitted then), even on a socket open already.
    this.state = CONNECTING;
  }

  get readyState(): number {
    return this.state;
  }

  /** The socket opened (or was open when this channel was made). */
  opened(): void {
    if (this.state === OPEN) return;
    this.state = OPEN;
    this.emit('open');
  }

  send(text: string, cb?: (err?: Error) => void): void {
    if (this.state !== OPEN || this.ws.readyState !== OPEN) {
      cb?.(new Error('the push channel is not open'));
      return;
    }
    const frame = this.framing === 'plain' ? text : JSON.stringify({ mux: 1, site: this.site, data: text } satisfies Envelope);
    if (Buffer.byteLength(frame) > MAX_FRAME_BYTES) {
      cb?.(new Error(`a frame of ${Buffer.byteLength(frame)} bytes is larger than the push channel takes`));
      return;
    }
    this.ws.send(frame, cb);
  }

  ping(): void {
    if (this.ws.readyState === OPEN) this.ws.ping();
  }

  /** Closes this site's channel: a plain channel closes its socket, a mux one tells the peer. */
  close(code: number = CLOSE_CODES.goingAway, reason = ''): void {
    if (this.state === CLOSED) return;
    if (this.framing === 'plain') {
      this.ws.close(code, reason);
      return; // 'close' comes with the socket's
    }
    if (this.ws.readyState === OPEN) this.ws.send(JSON.stringify({ mux: 1, site: this.site, closed: { code, reason: reason.slice(0, 120) } } satisfies Envelope));
    this.closed(code, reason);
  }

  /** Ends this channel at once (a plain channel: its socket). */
  terminate(): void {
    if (this.state === CLOSED) return;
    if (this.framing === 'plain') {
      this.ws.terminate();
      return;
    }
    this.close(1006, 'terminated');
  }

  /** A frame for this channel arrived. */
  received(text: string): void {
    if (this.state !== OPEN) return;
    this.emit('message', Buffer.from(text, 'utf8'), false);
  }

  /** The channel ended: by the peer's `closed`, our close, or the socket closing. */
  closed(code: number, reason: string): void {
    if (this.state === CLOSED) return;
    this.state = CLOSED;
    this.onClosed(this);
    this.emit('close', code, Buffer.from(reason, 'utf8'));
  }
}

/**
 * The sites' channels on one WebSocket, routed by the envelope's site. `onOpen(site)`: the peer
 * sent the first frame of a site not open yet (the accepting side: attach it, or return a reason
 * to refuse it; the channel receives that frame right after). Undefined: frames of unknown sites
 * are refused (the dialling side only opens channels itself).
 */
export class SiteMux {
  private readonly channels = new Map<string, SiteChannel>();

  constructor(
    private readonly ws: WebSocket,
    private readonly onOpen?: (ch: SiteChannel) => string | null,
  ) {
    ws.on('message', (data, isBinary) => this.frame(data as Buffer, isBinary));
    ws.on('ping', () => this.each((c) => c.emit('ping')));
    ws.on('pong', () => this.each((c) => c.emit('pong')));
    ws.on('error', (err) => this.each((c) => c.emit('error', err)));
    ws.on('open', () => this.each((c) => c.opened()));
    ws.on('close', (code, reason) => this.each((c) => c.closed(code, reason.toString('utf8'))));
  }

  get size(): number {
    return this.channels.size;
  }

  get socket(): WebSocket {
    return this.ws;
  }

  /** The channel of `site`, opened now when there is none (open at once if the socket is). */
  channel(site: string): SiteChannel {
    const have = this.channels.get(site);
    if (have !== undefined && have.readyState !== CLOSED) return have;
    const ch = new SiteChannel(site, this.ws, 'mux', (c) => {
      if (this.channels.get(c.site) === c) this.channels.delete(c.site);
    });
    this.channels.set(site, ch);
    if (this.ws.readyState === OPEN) queueMicrotask(() => ch.opened());
    return ch;
  }

  private each(fn: (c: SiteChannel) => void): void {
    for (const c of [...this.channels.values()]) fn(c);
  }

  private frame(data: Buffer, isBinary: boolean): void {
    const env = isBinary ? null : parseEnvelope(data.toString('utf8'));
    if (env === null) {
      this.ws.close(CLOSE_CODES.policyViolation, 'expected a mux frame (this connection asked for ?mux=1)');
      return;
    }
    let ch = this.channels.get(env.site);
    if (env.closed !== undefined) {
      ch?.closed(env.closed.code, env.closed.reason);
      return;
    }
    if (ch === undefined) {
      if (this.onOpen === undefined) return; // a late frame of a channel this side closed
      ch = new SiteChannel(env.site, this.ws, 'mux', (c) => {
        if (this.channels.get(c.site) === c) this.channels.delete(c.site);
      });
      this.channels.set(env.site, ch);
      ch.opened();
      const refusal = this.onOpen(ch);
      if (refusal !== null) {
        ch.close(CLOSE_CODES.policyViolation, refusal);
        return;
      }
    }
    ch.received(env.data!);
  }
}

/**
 * A plain WebSocket as the channel of the site its first frame names (the accepting side of a
 * connection without ?mux=1): `onFirst` gets the channel and the first frame's text, and attaches
 * the channel before that frame is delivered to it.
 */
export function plainChannel(ws: WebSocket, siteOf: (text: string) => string | null, onFirst: (ch: SiteChannel | null, text: string) => void): void {
  let ch: SiteChannel | null = null;
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? '' : (data as Buffer).toString('utf8');
    if (ch !== null) {
      if (isBinary) ch.emit('message', data, true);
      else ch.received(text);
      return;
    }
    const site = siteOf(text);
    if (site === null) {
      onFirst(null, text);
      return;
    }
    ch = new SiteChannel(site, ws, 'plain', () => undefined);
    ch.opened();
    ws.on('ping', () => ch?.emit('ping'));
    ws.on('pong', () => ch?.emit('pong'));
    ws.on('error', (err) => ch?.emit('error', err));
    ws.on('close', (code, reason) => ch?.closed(code, reason.toString('utf8')));
    onFirst(ch, text);
    ch.received(text);
  });
}
