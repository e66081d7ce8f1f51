import { Gauge, type Registry } from 'prom-client';
import {
  Limiter,
  ReloadingTls,
  TandemError,
  describeError,
  isTandemError,
  loadClientTls,
  mergeExpositions,
  processMetrics,
  tlsOptions,
  type Filestore,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { StandbyDaemon, type StandbyDaemonOptions } from './daemon.js';
import type { StoppableDaemon } from './lifecycle.js';
import { PushLink } from './push-link.js';
import { StatusServer, checkListen, type SitesHandlers } from './server.js';

/** With several sites: 1 per site the daemon runs, 0 for one refused at start or stopped (promoted). */
export const STANDBY_SITE_RUNNING_METRIC = 'tandem_standby_site_running';

/**
 * `tandem-standby run` for a config of several sites (sites:, sitesDir:): every site served by
 * this one process. Each site keeps all of its own machinery, a StandbyDaemon (daemon.ts): its
 * loop, poller, applier, reporter, lag, metrics, status document, and in its own state dir its
 * daemon.json, daemon lock and apply lock. What the process has once is shared:
 *
 * - ONE HTTP server on server.listen (server.ts): /status {"sites": {...}} and ?site=NAME, /metrics
 *   with every sample labelled site="<site>" and the process metrics once, the page per site.
 * - ONE push connection to the primary (push-link.ts): primary.url dialled with ?mux=1, every
 *   site's channel on it; when it drops it is redialled once for all the sites.
 * - ONE limit on applies at once across the sites (the config's `concurrency`): an apply waits
 *   its turn, and says so in the log.
 *
 * A site never stops the others: a site whose start is refused (promote ran there, this server
 * is its primary, another daemon holds its state dir, a key that cannot be read) is logged and
 * shown in /status, and the others run; only when no site could start does the start fail, with
 * the first site's refusal (its exit status). A site that stops by itself later (promoted while
 * running) stops alone; when none is left running, the process stops with that error. A failing
 * database, filestore or apply of one site is that site's retry, as with one site.
 */
/** What a site's daemon takes, for every site alike (the filestore: the sites' top-level filestore:, closed by the host when all stopped). */
export type StandbyHostOptions = Pick<StandbyDaemonOptions, 'logger' | 'filestore' | 'standbyId' | 'token' | 'readToken' | 'stopGraceMs' | 'listen' | 'watch' | 'random'> & {
  /** The sites, in the config's order (more than one; one site runs as a StandbyDaemon alone). */
  sites: StandbyConfig[];
  /** How many applies run at once across the sites. */
  concurrency: number;
};

/** Why a site does not run, as /status shows it. */
interface SiteProblem {
  at: string;
  kind: string;
  code: string;
  message: string;
  hint?: string;
}

type SiteState =
  | { state: 'starting' }
  | { state: 'running'; daemon: StandbyDaemon }
  | { state: 'stopping'; daemon: StandbyDaemon; error: SiteProblem; stopped: Promise<'clean' | 'left-running'> }
  | { state: 'refused'; error: SiteProblem; thrown: unknown }
  | { state: 'stopped'; error: SiteProblem };

const problemOf = (err: unknown): SiteProblem => {
  const te = isTandemError(err) ? err : null;
  return {
    at: new Date().toISOString(),
    kind: te?.kind ?? 'internal',
    code: te?.code ?? 'UNEXPECTED',
    message: describeError(err),
    ...(te?.hint === undefined ? {} : { hint: te.hint }),
  };
};

export class StandbyHost implements StoppableDaemon {
  /** Settles with the error of the last site that stopped by itself, once none runs; never otherwise. */
  readonly failed: Promise<TandemError>;
  private readonly log: Logger;
  private readonly sites = new Map<string, SiteState>();
  private readonly limiter: Limiter;
  private readonly processRegistry: Registry;
  private server: StatusServer | null = null;
  private link: PushLink | null = null;
  private clientTls: ReloadingTls | null = null;
  private listenAddress: string | null = null;
  private fatalResolve: ((err: TandemError) => void) | null = null;
  private stopping = false;

  constructor(private readonly o: StandbyHostOptions) {
    this.log = o.logger.child({ standbyId: o.standbyId });
    this.limiter = new Limiter(o.concurrency);
    for (const c of o.sites) this.sites.set(c.site, { state: 'starting' });
    this.failed = new Promise((resolve) => {
      this.fatalResolve = resolve;
    });
    this.processRegistry = processMetrics();
    const sites = this.sites;
    new Gauge({
      name: STANDBY_SITE_RUNNING_METRIC,
      help: "1 while the site's standby runs in this process; 0 while it does not: its start was refused, or it stopped (promoted); /status says why",
      labelNames: ['site'],
      registers: [this.processRegistry],
      collect() {
        for (const [site, s] of sites) this.set({ site }, s.state === 'running' ? 1 : 0);
      },
    });
  }

  get names(): string[] {
    return [...this.sites.keys()];
  }

  // -------------------------------------------------------------------------------------------
  // Start and stop
  // -------------------------------------------------------------------------------------------

  async start(): Promise<string> {
    const first = this.o.sites[0]!;
    const token = this.o.token;
    const readToken = this.o.readToken ?? null;
    const listen = this.o.listen ?? first.server.listen;
    checkListen(listen, token, readToken);
    try {
      // server, primary, filestore, standbyId ... are said once, at the top level: the first site's are every site's.
      const primary = first.primary;
      if (primary !== undefined && token !== null) {
        const primaryTls = primary.tls;
        if (primaryTls !== undefined) {
          this.clientTls = new ReloadingTls({ what: 'primary.tls', load: () => loadClientTls(primaryTls, this.log), logger: this.log, apply: () => this.link?.redialNow() });
        }
        this.link = new PushLink({ url: primary.url, token, logger: this.log, tls: this.clientTls === null ? undefined : () => tlsOptions(this.clientTls!.current) });
      }
      this.server = new StatusServer({ token, readToken, tls: first.server.tls, logger: this.log.child({ component: 'http' }), sites: this.handlers() });
      this.listenAddress = await this.server.listen(listen);
      process.on('SIGHUP', this.onHangup);

      await Promise.all(this.o.sites.map((c) => this.startSite(c)));
      const running = this.names.filter((n) => this.sites.get(n)!.state === 'running');
      if (running.length === 0) throw this.noSiteStarted();
      this.link?.start();
      const refused = this.names.filter((n) => this.sites.get(n)!.state !== 'running');
      this.log.info(
        {
          listen: this.listenAddress,
          url: `${this.server.scheme}://${this.listenAddress}`,
          filestore: this.o.filestore.description,
          push: this.link === null ? null : this.link.url,
          sites: this.names,
          running,
          refused,
          concurrency: this.limiter.max,
        },
        `standby daemon started for ${running.length} of ${this.sites.size} sites${refused.length === 0 ? '' : ` (not started: ${refused.join(', ')})`}`,
      );
      return this.listenAddress;
    } catch (err) {
      await this.cleanUp();
      throw err;
    }
  }

  private async startSite(config: StandbyConfig): Promise<void> {
    const site = config.site;
    let daemon: StandbyDaemon;
    try {
      daemon = new StandbyDaemon({
        config,
        logger: this.o.logger,
        filestore: this.o.filestore,
        standbyId: this.o.standbyId,
        token: this.o.token,
        readToken: this.o.readToken ?? null,
        stopGraceMs: this.o.stopGraceMs,
        watch: this.o.watch,
        random: this.o.random,
        shared: { listen: this.listenAddress!, link: this.link, limiter: this.limiter, siteNames: this.names },
      });
      await daemon.start();
    } catch (err) {
      const problem = problemOf(err);
      this.sites.set(site, { state: 'refused', error: problem, thrown: err });
      this.log.error(
        { site, code: problem.code, err, ...(problem.hint === undefined ? {} : { hint: problem.hint }) },
        `site "${site}" not started: ${problem.message}; the other sites run`,
      );
      return;
    }
    this.sites.set(site, { state: 'running', daemon });
    void daemon.failed.then((err) => this.siteFailed(site, daemon, err));
  }

  /**
   * No site could start: the first site's refusal, with its exit status (2 promoted or a bad
   * config, 75 another daemon holds the state dir ...), naming every site's.
   */
  private noSiteStarted(): TandemError {
    const states = this.names.map((n) => [n, this.sites.get(n)!] as const);
    const all = states.map(([n, s]) => `site "${n}": ${s.state === 'refused' ? s.error.message : s.state}`).join('; ');
    const first = states[0]![1];
    const thrown = first.state === 'refused' && isTandemError(first.thrown) ? first.thrown : null;
    return new TandemError(thrown?.kind ?? 'internal', thrown?.code ?? 'NO_SITE_STARTED', `no site of ${this.o.sites[0]!.configFile} could start: ${all}`, {
      hint: thrown?.hint ?? `see the log lines of site "${states[0]![0]}"`,
      exitCode: thrown?.exitCode ?? 1,
    });
  }

  /** A site stopped by itself (promoted): it stops alone; the process ends when none is left. */
  private async siteFailed(site: string, daemon: StandbyDaemon, err: TandemError): Promise<void> {
    if (this.stopping) return;
    const problem = problemOf(err);
    const stopped = daemon.stop(err.code === 'PROMOTED' ? 'promoted' : err.code).catch((e: unknown) => {
      this.log.error({ site, err: e }, 'the site did not stop cleanly');
      return 'left-running' as const;
    });
    this.sites.set(site, { state: 'stopping', daemon, error: problem, stopped });
    this.log.error({ site, code: err.code }, `site "${site}" stopped: ${err.message}; the other sites run`);
    await stopped;
    if (this.stopping) return;
    this.sites.set(site, { state: 'stopped', error: problem });
    if (![...this.sites.values()].some((s) => s.state === 'running' || s.state === 'stopping')) this.fatalResolve?.(err);
  }

  /**
   * Stops every site (each as a daemon of one site stops: an apply in progress may finish within
   * the grace period), then the push connection and the HTTP server.
   */
  async stop(why = 'stop requested'): Promise<'clean' | 'left-running'> {
    this.stopping = true;
    const outcomes = await Promise.all(
      [...this.sites.values()].map((s) => (s.state === 'running' ? s.daemon.stop(why) : s.state === 'stopping' ? s.stopped : Promise.resolve('clean' as const))),
    );
    await this.cleanUp(!outcomes.includes('left-running'));
    const outcome = outcomes.includes('left-running') ? 'left-running' : 'clean';
    this.log.info({ outcome, sites: this.names }, 'standby daemon stopped (every site)');
    return outcome;
  }

  /** Second signal: every site's apply in progress is aborted now. */
  hurry(): void {
    for (const s of this.sites.values()) if (s.state === 'running' || s.state === 'stopping') s.daemon.hurry();
  }

  /** SIGHUP: server.tls and primary.tls are read again (for new connections). */
  private readonly onHangup = (): void => {
    if ((this.server?.tls ?? null) === null && this.clientTls === null) {
      this.log.info({ signal: 'SIGHUP' }, 'SIGHUP: nothing to reload (no server.tls or primary.tls)');
      return;
    }
    this.server?.reloadTls('SIGHUP');
    this.clientTls?.reload('SIGHUP');
  };

  private async cleanUp(closeFilestore = true): Promise<void> {
    process.off('SIGHUP', this.onHangup);
    this.clientTls?.close();
    await this.link?.stop().catch(() => undefined);
    await this.server?.close().catch(() => undefined);
    if (closeFilestore) await this.o.filestore.close().catch(() => undefined);
  }

  // -------------------------------------------------------------------------------------------
  // What the HTTP server serves
  // -------------------------------------------------------------------------------------------

  private handlers(): SitesHandlers {
    const daemonOf = (site: string): StandbyDaemon | null => {
      const s = this.sites.get(site);
      return s?.state === 'running' ? s.daemon : null;
    };
    return {
      names: this.names,
      running: (site) => daemonOf(site) !== null,
      status: async (site) => {
        const d = daemonOf(site);
        if (d !== null) return { code: 200, body: await d.status() };
        const s = this.sites.get(site)!;
        return {
          code: 503,
          body: { site, standbyId: this.o.standbyId, now: new Date().toISOString(), state: s.state, error: 'error' in s ? s.error : null },
        };
      },
      history: async (site) => {
        const d = daemonOf(site);
        if (d === null) throw new TandemError('not-found', 'SITE_NOT_RUNNING', `site "${site}" does not run in this process: see /status?site=${site}`);
        return d.historyDoc();
      },
      metrics: async (site) => {
        const chosen = site === undefined ? this.names : [site];
        const texts = await Promise.all(chosen.map((n) => daemonOf(n)?.scrape() ?? Promise.resolve('')));
        return { contentType: this.processRegistry.contentType, body: mergeExpositions([await this.processRegistry.metrics(), ...texts]) };
      },
    };
  }
}
