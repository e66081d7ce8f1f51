import type { IncomingMessage } from 'node:http';
import { WebSocket } from 'ws';
import {
  CLOSE_CODES,
  TandemError,
  describeError,
  encodeMessage,
  isTandemError,
  parseMessage,
  type Logger,
  type PrimaryHello,
  type PrimaryMessage,
  type SiteChannel,
  type StandbyMessage,
  type SwitchoverPrimaryMessage,
  type SwitchoverStandbyMessage,
} from '@tandem/shared';
import type { Clock } from './scheduler.js';
import type { SwitchoverCoordinator, SwitchoverPeer } from './switchover.js';

/**
 * The standbys connected to /v1/stream: the handshake (the primary says hello, the standby must
 * answer with its own hello), `applied` reports, pings that drop dead connections, and broadcasts.
 * Every connection was authenticated with one listed standby's own token (server.ts): it is that
 * standby, and a hello, `applied` or `switchover-request` naming another standbyId is closed with 1008.
 * A peer that sends anything that is not a valid standby message at the right moment is closed
 * with 1008 and a reason naming the problem; nothing it sends can stop the daemon.
 */
export interface LatestKnown {
  setId: string;
  createdAt: string;
  committedAt: string;
}

export interface StandbyStatus {
  standbyId: string | null;
  remoteAddress: string;
  connectedSince: string;
  appliedSetId: string | null;
  appliedCreatedAt: string | null;
  appliedAt: string | null;
  /** 0 when it has applied the set latest.json names, else seconds since that set was committed. */
  lagSeconds: number;
}

export interface AppliedEvent {
  standbyId: string;
  setId: string;
  createdAt: string;
  appliedAt: string;
}

/**
 * What a standby's connection is to the hub: the WebSocket itself (a connection of this one site),
 * or this site's channel on a WebSocket shared by several sites (shared/site-channel.ts), which
 * closes alone (a fenced site, a replaced connection) while the socket goes on.
 */
export type PushSocket = WebSocket | SiteChannel;

interface Peer {
  ws: PushSocket;
  remote: string;
  /** The listed standby whose token opened this connection. */
  authenticatedAs: string;
  connectedSince: Date;
  standbyId: string | null;
  appliedSetId: string | null;
  appliedCreatedAt: string | null;
  appliedAt: string | null;
  alive: boolean;
  helloTimer: NodeJS.Timeout | null;
  /** Set once the connection asked for a switchover (switchover.ts); such a connection is not listed as a standby. */
  switchover: SwitchoverPeer | null;
}

export interface StandbyHubOptions {
  site: string;
  logger: Logger;
  clock: Clock;
  hello(): PrimaryHello;
  latest(): LatestKnown | null;
  onApplied(e: AppliedEvent): void;
  /** A standby must say hello within this (default 10 s). */
  helloTimeoutMs?: number;
  /** Ping every (default 15 s); a peer that has not answered the previous ping is dropped. */
  pingIntervalMs?: number;
  /** Where `switchover-*` messages go. */
  switchover?: Pick<SwitchoverCoordinator, 'request' | 'promoting' | 'abort' | 'done' | 'closed'>;
}

/** What a standby sent that breaks the protocol: the connection is closed (1008) with this message as the reason. */
const violation = (message: string): TandemError => new TandemError('permanent', 'PROTOCOL_VIOLATION', message);

const OPEN = WebSocket.OPEN;

const closeReason = (s: string): string => (Buffer.byteLength(s) <= 120 ? s : `${Buffer.from(s).subarray(0, 117).toString('utf8')}...`);

export class StandbyHub {
  private readonly peers = new Set<Peer>();
  private readonly pingTimer: NodeJS.Timeout;

  constructor(private readonly opts: StandbyHubOptions) {
    this.pingTimer = setInterval(() => this.ping(), opts.pingIntervalMs ?? 15_000);
    this.pingTimer.unref();
  }

  /** `standbyId`: the listed standby whose token the upgrade carried; `req`: the upgrade request. */
  attach(ws: PushSocket, req: IncomingMessage, standbyId: string): void {
    const peer: Peer = {
      ws,
      remote: `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`,
      authenticatedAs: standbyId,
      connectedSince: this.opts.clock.now(),
      standbyId: null,
      appliedSetId: null,
      appliedCreatedAt: null,
      appliedAt: null,
      alive: true,
      helloTimer: null,
      switchover: null,
    };
    this.peers.add(peer);
    const log = this.opts.logger.child({ peer: peer.remote, token: standbyId });
    log.info('standby connected to the push channel');
    peer.helloTimer = setTimeout(() => this.reject(peer, `no hello within ${(this.opts.helloTimeoutMs ?? 10_000) / 1000} s`), this.opts.helloTimeoutMs ?? 10_000);
    peer.helloTimer.unref();
    // The events both kinds emit, with the same arguments (site-channel.ts keeps them so).
    const events = ws as unknown as {
      on(event: 'pong', fn: () => void): void;
      on(event: 'message', fn: (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => void): void;
      on(event: 'error', fn: (err: Error) => void): void;
      on(event: 'close', fn: (code: number, reason: Buffer) => void): void;
    };
    events.on('pong', () => {
      peer.alive = true;
    });
    events.on('message', (data, isBinary) => {
      try {
        this.receive(peer, data, isBinary);
      } catch (err) {
        this.reject(peer, describeError(err));
      }
    });
    events.on('error', (err) => log.warn({ err }, 'push channel error'));
    events.on('close', (code, reason) => {
      if (peer.helloTimer) clearTimeout(peer.helloTimer);
      this.peers.delete(peer);
      log.info({ standbyId: peer.standbyId, code, reason: reason.toString('utf8') }, 'standby disconnected from the push channel');
      if (peer.switchover) this.opts.switchover?.closed(peer.switchover);
    });
    this.send(peer, this.opts.hello());
  }

  private receive(peer: Peer, data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
    if (isBinary) throw violation('binary frames are not part of the protocol; send JSON text');
    let msg: StandbyMessage;
    try {
      msg = parseMessage(data, 'standby-to-primary');
    } catch (err) {
      if (!isTandemError(err) || err.code !== 'PROTOCOL_UNKNOWN_TYPE' || !this.opts.switchover) throw err;
      let sw: SwitchoverStandbyMessage;
      try {
        sw = parseMessage(data, 'switchover-to-primary');
      } catch (err2) {
        throw isTandemError(err2) && err2.code === 'PROTOCOL_UNKNOWN_TYPE' ? err : err2;
      }
      this.receiveSwitchover(peer, sw);
      return;
    }
    if (msg.type === 'hello') {
      if (peer.switchover !== null) throw violation('hello on a switchover connection');
      if (peer.standbyId !== null) throw violation('hello sent twice');
      if (msg.site !== this.opts.site) throw violation(`wrong site "${msg.site}": this primary serves "${this.opts.site}"`);
      this.requireOwnId(peer, msg.standbyId, 'hello');
      for (const other of this.peers) {
        if (other !== peer && other.standbyId === msg.standbyId) {
          this.opts.logger.info({ standbyId: msg.standbyId, old: other.remote, new: peer.remote }, 'standby reconnected: closing its older connection');
          other.ws.close(CLOSE_CODES.replaced, 'replaced by a newer connection of the same standby');
        }
      }
      if (peer.helloTimer) clearTimeout(peer.helloTimer);
      peer.helloTimer = null;
      peer.standbyId = msg.standbyId;
      peer.appliedSetId = msg.appliedSetId;
      peer.appliedCreatedAt = msg.appliedCreatedAt;
      this.opts.logger.info({ standbyId: msg.standbyId, appliedSetId: msg.appliedSetId, peer: peer.remote }, 'standby said hello');
      return;
    }
    if (peer.standbyId === null) throw violation(`"${msg.type}" before hello`);
    if (msg.standbyId !== peer.standbyId) throw violation(`"applied" names standby "${msg.standbyId}", but this connection said hello as "${peer.standbyId}"`);
    peer.appliedSetId = msg.setId;
    peer.appliedCreatedAt = msg.createdAt;
    peer.appliedAt = msg.appliedAt;
    this.opts.logger.info({ standbyId: msg.standbyId, setId: msg.setId, appliedAt: msg.appliedAt }, 'standby applied a set');
    this.opts.onApplied({ standbyId: msg.standbyId, setId: msg.setId, createdAt: msg.createdAt, appliedAt: msg.appliedAt });
  }

  /**
   * `switchover-request` may come first instead of a hello (a connection of its own: the standby
   * daemon's connection of the same standbyId stays); after a hello it must name the same standbyId.
   */
  private receiveSwitchover(peer: Peer, msg: SwitchoverStandbyMessage): void {
    const handler = this.opts.switchover!;
    if (msg.type === 'switchover-request') {
      if (peer.switchover !== null) throw violation('switchover-request sent twice on one connection');
      this.requireOwnId(peer, msg.standbyId, 'switchover-request');
      if (peer.helloTimer) clearTimeout(peer.helloTimer);
      peer.helloTimer = null;
      peer.switchover = {
        remote: peer.remote,
        standbyId: peer.authenticatedAs,
        send: (m) => this.send(peer, m),
        isOpen: () => peer.ws.readyState === OPEN,
      };
      handler.request(peer.switchover, msg);
      return;
    }
    if (peer.switchover === null) throw violation(`"${msg.type}" before "switchover-request"`);
    if (msg.type === 'switchover-abort') handler.abort(peer.switchover, msg);
    else if (msg.type === 'switchover-promoting') handler.promoting(peer.switchover, msg);
    else handler.done(peer.switchover, msg);
  }

  /** A connection speaks for the standby whose token opened it, and for no other. */
  private requireOwnId(peer: Peer, claimed: string, what: string): void {
    if (claimed !== peer.authenticatedAs) throw violation(`"${what}" names standby "${claimed}", but this connection's token is standby "${peer.authenticatedAs}"'s`);
  }

  private reject(peer: Peer, why: string): void {
    this.opts.logger.warn({ peer: peer.remote, standbyId: peer.standbyId, problem: why }, 'closing a standby connection: protocol violation');
    if (peer.helloTimer) clearTimeout(peer.helloTimer);
    peer.helloTimer = null;
    peer.ws.close(CLOSE_CODES.policyViolation, closeReason(why));
    // A peer that does not complete the closing handshake is cut off.
    setTimeout(() => peer.ws.terminate(), 5_000).unref();
  }

  private send(peer: Peer, msg: PrimaryMessage | SwitchoverPrimaryMessage): void {
    if (peer.ws.readyState !== OPEN) return;
    let text: string;
    try {
      text = msg.type.startsWith('switchover-') ? encodeMessage(msg as SwitchoverPrimaryMessage, 'switchover-to-standby') : encodeMessage(msg as PrimaryMessage, 'primary-to-standby');
    } catch (err) {
      this.opts.logger.error({ err, type: msg.type }, 'not sending an invalid message (a bug)');
      return;
    }
    peer.ws.send(text, (err) => {
      if (err) this.opts.logger.debug({ peer: peer.remote, err }, 'send failed');
    });
  }

  broadcast(msg: PrimaryMessage): number {
    let n = 0;
    for (const peer of this.peers) {
      if (peer.ws.readyState === OPEN) {
        this.send(peer, msg);
        n++;
      }
    }
    return n;
  }

  private ping(): void {
    for (const peer of this.peers) {
      if (!peer.alive) {
        this.opts.logger.warn({ peer: peer.remote, standbyId: peer.standbyId }, 'standby did not answer a ping: dropping the connection');
        peer.ws.terminate();
        continue;
      }
      peer.alive = false;
      try {
        peer.ws.ping();
      } catch {
        peer.ws.terminate();
      }
    }
  }

  /** Connected standbys (those that said hello). */
  list(): StandbyStatus[] {
    const now = this.opts.clock.now().getTime();
    const latest = this.opts.latest();
    const out: StandbyStatus[] = [];
    for (const p of this.peers) {
      if (p.standbyId === null || p.ws.readyState !== OPEN) continue;
      let lag = 0;
      if (latest !== null && p.appliedSetId !== latest.setId) {
        const behind = p.appliedCreatedAt === null || Date.parse(p.appliedCreatedAt) < Date.parse(latest.createdAt);
        if (behind) lag = Math.max(0, Math.round((now - Date.parse(latest.committedAt)) / 1000));
      }
      out.push({
        standbyId: p.standbyId,
        remoteAddress: p.remote,
        connectedSince: p.connectedSince.toISOString(),
        appliedSetId: p.appliedSetId,
        appliedCreatedAt: p.appliedCreatedAt,
        appliedAt: p.appliedAt,
        lagSeconds: lag,
      });
    }
    return out.sort((a, b) => String(a.standbyId).localeCompare(String(b.standbyId)));
  }

  get size(): number {
    return this.peers.size;
  }

  closeAll(code: number, reason: string): void {
    for (const peer of this.peers) {
      if (peer.helloTimer) clearTimeout(peer.helloTimer);
      peer.ws.close(code, closeReason(reason));
    }
  }

  /** Drop every connection now (shutdown). */
  terminateAll(): void {
    for (const peer of this.peers) peer.ws.terminate();
  }

  stop(): void {
    clearInterval(this.pingTimer);
  }
}
