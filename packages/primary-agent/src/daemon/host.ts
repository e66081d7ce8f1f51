import type { IncomingMessage } from 'node:http';
import type { WebSocket } from 'ws';
import { Gauge, type Registry } from 'prom-client';
import {
  CLOSE_CODES,
  HISTORY_WINDOW_MS,
  Limiter,
  SAMPLE_EVERY_MS,
  SiteMux,
  TandemError,
  describeError,
  isMuxRequest,
  isTandemError,
  mergeExpositions,
  plainChannel,
  processMetrics,
  type ArtifactProgress,
  type Logger,
  type PrimaryConfig,
  type SiteChannel,
} from '@tandem/shared';
import { errorBody } from './control.js';
import { PrimaryDaemon, type DaemonOptions } from './daemon.js';
import { serverTokens } from './lifecycle.js';
import type { PrimaryHistoryDoc } from './page.js';
import { DaemonServer, type ServerHandlers } from './server.js';

/** With several sites: 1 per site the daemon serves, 0 for one whose start was refused or failed. */
export const SITE_RUNNING_METRIC = 'tandem_site_running';

/**
 * `tandem-primary run` as a process: the sites of its config (one, or several: `sites:`,
 * `sitesDir:`), each a PrimaryDaemon with its own parts (schedule, backups, fencing, heartbeat,
 * standbys, switchover, history, metrics) and its own state directory (daemon.json, lock), served
 * by ONE HTTP/WebSocket server on server.listen with one set of tokens, and one Limiter through
 * which every site's backups go (`concurrency`, default 2: scheduled, requested and a switchover's
 * final one alike).
 *
 * - /status: with several sites {"sites": {"<site>": <its status>}}; ?site=NAME that site's.
 * - /metrics: each site's metrics labelled site="<site>", the process metrics once, and
 *   tandem_site_running{site} (0: its start was refused or failed).
 * - POST /v1/backup?site=NAME (required with several sites); the status page shows ?site=NAME.
 * - /v1/stream: a connection asking for ?mux=1 carries several sites (shared/site-channel.ts),
 *   each channel attached to its site's StandbyHub; any other connection is of the site its first
 *   frame names (hello, switchover-request). With one site, a plain connection is attached at once,
 *   as it always was (the primary says hello first).
 *
 * A site whose start is refused (its BACKUP sentinel, another daemon for its state directory) or
 * fails is logged and shown in /status, and the others run; the start fails (with that site's
 * error, and its exit status) only when no site could start. With one site everything is as it
 * always was: its refusal is the process's.
 */
export interface HostOptions extends Omit<DaemonOptions, 'config' | 'limiter' | 'oneOfSeveral'> {
  sites: PrimaryConfig[];
  /** How many backups run at once across the sites (the config's top-level `concurrency`). */
  concurrency: number;
  /** The control token (server.tokenFile or TANDEM_TOKEN); the others come from the config (serverTokens). */
  token: string;
}

interface Site {
  name: string;
  log: Logger;
  /** null: it could not even be set up (e.g. its signing key unreadable). */
  daemon: PrimaryDaemon | null;
  state: 'starting' | 'running' | 'failed';
  /** Why it is not running (state 'failed'). */
  error: unknown;
}

/** A WebSocket close reason: at most 123 bytes. */
const closeReason = (s: string): string => (Buffer.byteLength(s) <= 120 ? s : `${Buffer.from(s).subarray(0, 117).toString('utf8')}...`);

/** The site a plain connection's first frame names: a standby's hello, or a switchover-request. */
function siteOfFirstFrame(text: string): string | null {
  try {
    const v = JSON.parse(text) as { type?: unknown; site?: unknown } | null;
    if (v === null || typeof v !== 'object') return null;
    if ((v.type === 'hello' || v.type === 'switchover-request') && typeof v.site === 'string' && v.site !== '') return v.site;
  } catch {
    /* not JSON */
  }
  return null;
}

export class PrimaryHost {
  private readonly log: Logger;
  private readonly sites: Site[];
  private readonly byName = new Map<string, Site>();
  private readonly several: boolean;
  private readonly limiter: Limiter;
  private readonly server: DaemonServer;
  /** With several sites: the process metrics and tandem_site_running, beside each site's registry. */
  private readonly processRegistry: Registry | null = null;
  private readonly siteRunning: Gauge<'site'> | null = null;
  /** Every standby connection, closed at the end of the shutdown (a shared one has no site of its own). */
  private readonly sockets = new Set<WebSocket>();
  private readonly helloTimeoutMs: number;
  /** server.listen (a top-level key: the same for every site). */
  private readonly listenOn: string;
  private listening: string | null = null;
  private stopRequested = false;
  private stopped: Promise<void> | null = null;

  constructor(opts: HostOptions) {
    const { sites: configs, logger } = opts;
    const first = configs[0];
    if (first === undefined) throw new TandemError('internal', 'NO_SITES', 'the daemon was given no site to serve');
    this.log = logger;
    this.several = configs.length > 1;
    this.helloTimeoutMs = opts.helloTimeoutMs ?? 10_000;
    this.listenOn = first.server.listen;
    this.limiter = new Limiter(opts.concurrency);
    this.sites = configs.map((config) => {
      const log = this.several ? logger.child({ site: config.site }) : logger;
      const site: Site = { name: config.site, log, daemon: null, state: 'starting', error: null };
      try {
        site.daemon = new PrimaryDaemon({ ...opts, config, logger: log, limiter: this.limiter, oneOfSeveral: this.several });
      } catch (err) {
        if (!this.several) throw err;
        this.failed(site, err);
      }
      this.byName.set(site.name, site);
      return site;
    });
    if (this.sites.every((s) => s.daemon === null)) throw this.sites[0]!.error;
    // server, standbys and the tokens are top-level keys: the same for every site.
    this.server = new DaemonServer({
      tokens: serverTokens(first, opts.token, logger),
      logger: logger.child({ component: 'http' }),
      handlers: this.handlers(),
      tls: first.server.tls,
    });
    if (this.several) {
      this.processRegistry = processMetrics();
      this.siteRunning = new Gauge({
        name: SITE_RUNNING_METRIC,
        help: 'Per site of the daemon: 1 while it serves the site, 0 when its start was refused or failed (/status?site= says why)',
        labelNames: ['site'],
        registers: [this.processRegistry],
      });
      this.setRunningGauge();
    }
  }

  /** host:port the server is bound to, once it listens. */
  get listenAddress(): string | null {
    return this.listening;
  }

  /** 'https' with server.tls (the push channel is then wss://). */
  get scheme(): 'http' | 'https' {
    return this.server.scheme;
  }

  /** The sites' daemons (those that could be set up), in the config's order. */
  get daemons(): PrimaryDaemon[] {
    return this.sites.flatMap((s) => (s.daemon === null ? [] : [s.daemon]));
  }

  /**
   * Each site's checks (its sentinel, its daemon.json), then the server, then each site serves.
   * Throws when no site could start (with one site: its refusal, as always).
   */
  async start(): Promise<{ listen: string; running: string[]; failed: string[] }> {
    for (const s of this.sites) {
      if (s.daemon === null) continue;
      try {
        await s.daemon.prepare();
      } catch (err) {
        if (!this.several) throw err;
        this.failed(s, err);
      }
    }
    this.requireOneStarting();
    const listen = await this.server.listen(this.listenOn);
    this.listening = listen;
    process.on('SIGHUP', this.onHangup);
    await Promise.all(
      this.sites
        .filter((s) => s.state === 'starting')
        .map(async (s) => {
          try {
            await s.daemon!.serve(listen, this.server.scheme);
            s.state = 'running';
          } catch (err) {
            if (!this.several) throw err;
            this.failed(s, err);
          }
        }),
    );
    this.setRunningGauge();
    const running = this.sites.filter((s) => s.state === 'running').map((s) => s.name);
    const failed = this.sites.filter((s) => s.state === 'failed').map((s) => s.name);
    if (this.several) {
      if (running.length === 0) throw this.sites[0]!.error;
      const scheme = this.server.scheme;
      this.log.info(
        { listen, url: `${scheme}://${listen}`, stream: `${scheme === 'https' ? 'wss' : 'ws'}://${listen}/v1/stream`, sites: running, notStarted: failed, concurrency: this.limiter.max },
        `tandem-primary daemon ready: listening on ${scheme}://${listen} (sites ${running.map((n) => `"${n}"`).join(', ')}${failed.length > 0 ? `; not started: ${failed.map((n) => `"${n}"`).join(', ')}` : ''}; ${this.limiter.max} backup${this.limiter.max === 1 ? '' : 's'} at once)`,
      );
    }
    return { listen, running, failed };
  }

  /** No site left to start: the first refusal is the process's (its exit status). */
  private requireOneStarting(): void {
    if (this.sites.some((s) => s.state === 'starting')) return;
    throw this.sites[0]!.error;
  }

  /** A site that will not run: logged, shown in /status; the others go on. */
  private failed(s: Site, err: unknown): void {
    s.state = 'failed';
    s.error = err;
    s.log.error(
      { err, kind: isTandemError(err) ? err.kind : 'internal', code: isTandemError(err) ? err.code : undefined },
      `site "${s.name}" not started: ${describeError(err)}`,
    );
    if (s.daemon !== null) void s.daemon.stop('start-up failed').catch(() => undefined);
    this.setRunningGauge();
  }

  private setRunningGauge(): void {
    for (const s of this.sites) this.siteRunning?.set({ site: s.name }, s.state === 'running' ? 1 : 0);
  }

  /** SIGHUP while serving: server.tls's files are read again (a failure keeps the old ones, logged). */
  private readonly onHangup = (): void => {
    if (this.server.tls === null) {
      this.log.info({ signal: 'SIGHUP' }, 'SIGHUP: nothing to reload (no server.tls)');
      return;
    }
    this.server.reloadTls('SIGHUP');
  };

  /**
   * Stop once (a second call gets the first one's promise): every site stops (its schedule, its
   * running backup aborted, its stopped heartbeat, its connections), then the shared connections
   * and the server close, and each site's daemon.json goes.
   */
  stop(reason: string): Promise<void> {
    if (this.stopped) return this.stopped;
    this.stopRequested = true;
    this.stopped = (async () => {
      process.off('SIGHUP', this.onHangup);
      this.log.info({ reason }, 'shutting down');
      await Promise.all(this.daemons.map((d) => d.stop(reason).catch((err: unknown) => this.log.error({ err, site: d.site }, 'stopping a site failed'))));
      for (const ws of this.sockets) ws.close(CLOSE_CODES.goingAway, 'primary shutting down');
      const deadline = Date.now() + 1_000;
      while (this.sockets.size > 0 && Date.now() < deadline) await sleep(20);
      for (const ws of this.sockets) ws.terminate();
      await this.server.close();
      await Promise.all(this.daemons.map((d) => d.release()));
      this.log.info('stopped');
    })();
    return this.stopped;
  }

  // -------------------------------------------------------------------------------------------
  // What the server asks
  // -------------------------------------------------------------------------------------------

  private handlers(): ServerHandlers {
    const names = this.sites.map((s) => s.name);
    return {
      sites: names,
      status: (site) => {
        if (!this.several) return { status: 200, body: this.sites[0]!.daemon!.status() };
        if (site === null) return { status: 200, body: { sites: Object.fromEntries(this.sites.map((s) => [s.name, this.siteStatus(s)])) } };
        return { status: 200, body: this.siteStatus(this.byName.get(site)!) };
      },
      history: (site) => this.history(site),
      metrics: () => this.metrics(),
      backup: (site, onProgress) => this.backup(site, onProgress),
      refuseUpgrade: () => {
        if (this.stopRequested) return '503 Service Unavailable';
        // One site: a fenced primary refuses the upgrade itself, as it always did.
        if (!this.several && this.sites[0]!.daemon!.fenced) return '503 Service Unavailable';
        return null;
      },
      attach: (ws, req, standbyId) => this.attach(ws, req, standbyId),
    };
  }

  /** A site's /status: its daemon's, or why it does not run. */
  private siteStatus(s: Site): Record<string, unknown> {
    if (s.state !== 'failed' && s.daemon !== null) return s.daemon.status();
    return { site: s.name, running: false, error: errorBody(s.error).error };
  }

  private history(site: string | null): unknown {
    if (!this.several) return this.sites[0]!.daemon!.historyDoc();
    const s = site === null ? this.sites[0]! : this.byName.get(site)!;
    const sites = this.sites.map((x) => ({ site: x.name, running: x.state !== 'failed' }));
    if (s.state !== 'failed' && s.daemon !== null) return { ...s.daemon.historyDoc(), site: s.name, sites };
    // What the page draws for a site that does not run: the reason, as its problem.
    const doc: PrimaryHistoryDoc & { site: string; sites: unknown } = {
      agent: 'primary',
      now: new Date().toISOString(),
      startedAt: null,
      windowSeconds: HISTORY_WINDOW_MS / 1000,
      sampleEverySeconds: SAMPLE_EVERY_MS / 1000,
      samples: [],
      backups: [],
      configuredStandbys: [],
      problems: [`Site ${s.name} is not running in this daemon: ${describeError(s.error)}`],
      site: s.name,
      sites,
    };
    return doc;
  }

  private async metrics(): Promise<{ contentType: string; body: string }> {
    if (!this.several || this.processRegistry === null) {
      const m = this.sites[0]!.daemon!.metrics;
      return { contentType: m.contentType, body: await m.text() };
    }
    const texts = [await this.processRegistry.metrics()];
    for (const s of this.sites) {
      if (s.state !== 'failed' && s.daemon !== null) texts.push(await s.daemon.metrics.text());
    }
    return { contentType: this.processRegistry.contentType, body: mergeExpositions(texts) };
  }

  private async backup(site: string, onProgress?: (artifacts: ArtifactProgress[]) => void): Promise<{ status: number; body: unknown }> {
    const s = this.byName.get(site)!;
    if (s.state === 'failed' || s.daemon === null) {
      return {
        status: 503,
        body: errorBody(
          new TandemError('precondition', 'SITE_NOT_RUNNING', `site "${s.name}" is not running in this daemon: ${describeError(s.error)}`, {
            hint: 'see the daemon log and /status; `tandem-primary backup --local` backs it up outside the daemon',
          }),
        ),
      };
    }
    return s.daemon.requestBackup(onProgress);
  }

  // -------------------------------------------------------------------------------------------
  // The push channel
  // -------------------------------------------------------------------------------------------

  /** An accepted /v1/stream connection of the listed standby `standbyId`. */
  private attach(ws: WebSocket, req: IncomingMessage, standbyId: string): void {
    this.sockets.add(ws);
    ws.on('close', () => this.sockets.delete(ws));
    ws.on('error', () => undefined); // each channel's hub logs it
    if (isMuxRequest(req.url)) {
      // A connection that opens no channel at all is closed as one that never says hello is.
      let opened = false;
      const timer = setTimeout(() => {
        if (opened) return;
        this.log.warn({ peer: req.socket.remoteAddress, token: standbyId }, 'closing a standby connection: protocol violation (no site\'s channel opened)');
        ws.close(CLOSE_CODES.policyViolation, `no hello within ${this.helloTimeoutMs / 1000} s`);
      }, this.helloTimeoutMs);
      timer.unref();
      ws.on('close', () => clearTimeout(timer));
      new SiteMux(ws, (ch) => {
        opened = true;
        return this.openChannel(ch, req, standbyId);
      });
      return;
    }
    if (!this.several) {
      // One site: the connection is its channel from the start, and the primary says hello first.
      this.sites[0]!.daemon!.attach(ws, req, standbyId);
      return;
    }
    // Several sites: the first frame (the standby's hello, or a switchover-request) names the site.
    const timer = setTimeout(() => {
      this.log.warn({ peer: req.socket.remoteAddress, token: standbyId }, 'closing a standby connection: protocol violation (no first frame naming the site)');
      ws.close(CLOSE_CODES.policyViolation, `no hello within ${this.helloTimeoutMs / 1000} s`);
    }, this.helloTimeoutMs);
    timer.unref();
    ws.on('close', () => clearTimeout(timer));
    plainChannel(ws, siteOfFirstFrame, (ch) => {
      clearTimeout(timer);
      if (ch === null) {
        this.log.warn({ peer: req.socket.remoteAddress, token: standbyId }, 'closing a standby connection: protocol violation (the first frame names no site)');
        ws.close(CLOSE_CODES.policyViolation, 'the first frame must be the standby\'s hello (or a switchover-request) naming the site');
        return;
      }
      const refusal = this.openChannel(ch, req, standbyId);
      if (refusal !== null) ch.close(CLOSE_CODES.policyViolation, closeReason(refusal));
    });
  }

  /**
   * A standby opened the channel of `ch.site`: attached to that site's hub; null when it was (or
   * when it was closed here, as a fenced site closes its channels: 4003), else the reason to
   * refuse it with (1008).
   */
  private openChannel(ch: SiteChannel, req: IncomingMessage, standbyId: string): string | null {
    const s = this.byName.get(ch.site);
    const peer = `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
    if (s === undefined) {
      const why = `no site "${ch.site.slice(0, 40)}" here: this primary serves ${this.sites.map((x) => x.name).join(', ')}`;
      this.log.warn({ peer, token: standbyId, site: ch.site }, `refused a standby channel: ${why}`);
      return closeReason(why);
    }
    if (s.state === 'failed' || s.daemon === null) {
      const why = `site "${s.name}" is not running on this primary (its start failed)`;
      s.log.warn({ peer, token: standbyId }, `refused a standby channel: ${why}`);
      return why;
    }
    const refusal = s.daemon.channelRefusal();
    if (refusal !== null) {
      s.log.info({ peer, token: standbyId, code: refusal.code }, `refused a standby channel: ${refusal.reason}`);
      ch.close(refusal.code, refusal.reason);
      return null;
    }
    s.daemon.attach(ch, req, standbyId);
    return null;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
