import type { KeyObject } from 'node:crypto';
import { WalPrefetcher } from '../wal/prefetch.js';
import {
  ReloadingTls,
  TandemError,
  acquireLock,
  loadClientTls,
  tlsOptions,
  loadVerifyKeyFile,
  readEpochDoc,
  type Filestore,
  type Limiter,
  type Lock,
  type Logger,
  type PrimaryHello,
  type SetCommitted,
  type StandbyConfig,
} from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { promotedRefusal, refuseIfPromoted } from '../apply/promoted.js';
import { wrongBoxRefusal } from '../apply/wrong-box.js';
import { ensureSentinel } from '../apply/sentinel.js';
import { readApplied, readPromoted } from '../apply/state.js';
import { Applier } from './applier.js';
import { applyFilesDeltas, pendingDeltas, readDeltaState, type DeltaState } from '../apply/files-delta.js';
import { backoffDelay, loopBackoff } from './backoff.js';
import { daemonFiles, removeDaemonInfo, writeDaemonInfo } from './daemon-info.js';
import { LastError } from './last-error.js';
import { shutdownError, waitForLoop } from './lifecycle.js';
import { StandbyMetrics } from './metrics.js';
import { Observations } from './observed.js';
import { StandbyHistory } from './page.js';
import { LatestPoller } from './poller.js';
import { PushClient } from './push-client.js';
import type { PushLink } from './push-link.js';
import { Reporter } from './reporter.js';
import { StatusServer, checkListen } from './server.js';
import { buildStatusDoc, filesFigures, type StandbyStatusDoc } from './status-doc.js';
import { Waker } from './waker.js';

/**
 * `tandem-standby run`: keeps the standby site equal to the newest committed set.
 *
 * - Work comes from the push channel (`set-committed`: check at once), for a directory filestore
 *   from change events of latest.json (watch-latest.ts), and from polling latest.json with a
 *   conditional GET every pollInterval ±10% (poller.ts). An idle standby makes exactly one
 *   conditional GET per poll and nothing else (no LIST; heartbeat.json and the pending count are read
 *   only when someone asks for /status or /metrics, and at most once per pollInterval: observed.ts).
 * - One loop does everything, so there is one apply at a time by construction; a push that arrives
 *   during an apply queues one re-check. A push is only a hint: what is applied is always what the
 *   signed latest.json names, through the apply engine (runApply, applier.ts), whose ordering refuses
 *   the same set twice and an older one. The daemon itself never starts an apply for a set that is not newer.
 * - Failures never stop the daemon: polls are retried with backoff (capped at pollInterval), applies
 *   with backoff (capped at max(pollInterval, 5 min); 5 min to 1 h for a set that failed integrity or
 *   fencing checks, until latest.json names another: backoff.ts). The push channel reconnects by itself.
 * - The one exception: promote ran here (promoted.json). The daemon then stops at once, exit 2.
 *
 * This class wires the parts together and runs the loop; each part is in a file of its own.
 *
 * One process may serve several sites (host.ts): each site has a StandbyDaemon of its own (its
 * loop, poller, applier, reporter, lag, metrics, status document, state dir, locks), given the
 * parts the sites share (`shared`): the one HTTP server, the one push connection, the limit on
 * applies at once. Such a daemon serves no HTTP itself, dials no socket itself, and leaves SIGHUP
 * and the filestore to the host.
 */
export interface SharedParts {
  /** The host's HTTP server: the address it listens on (daemon.json names it). */
  listen: string;
  /** The push connection every site's channel goes over; null without primary.url or a token. */
  link: PushLink | null;
  /** Applies (and recoveries) across the sites go through this. */
  limiter: Limiter;
  /** Every site of the process (daemon.json lists them). */
  siteNames: readonly string[];
}

export interface StandbyDaemonOptions {
  config: StandbyConfig;
  logger: Logger;
  filestore: Filestore;
  standbyId: string;
  /** This standby's own token: authenticates the push channel, and opens /status and /metrics; null: no push. */
  token: string | null;
  /** The monitoring token (server.readTokenFile): /status and /metrics. Neither token: loopback only. */
  readToken?: string | null;
  /** How long a stop waits for an apply in progress before aborting it (staging rolls back). */
  stopGraceMs?: number;
  /** server.listen override (tests: 127.0.0.1:0). */
  listen?: string;
  /** Directory filestores: watch latest.json for changes (default true). */
  watch?: boolean;
  random?: () => number;
  /** One site of several served by this process (host.ts); absent: this daemon is the process. */
  shared?: SharedParts;
}

export class StandbyDaemon {
  readonly metrics: StandbyMetrics;
  /** Settles with the error that stopped the daemon by itself (promoted); never settles otherwise. */
  readonly failed: Promise<TandemError>;
  private readonly config: StandbyConfig;
  private readonly log: Logger;
  private readonly fs: Filestore;
  private readonly verifyKey: KeyObject;
  private prefetch: WalPrefetcher | null = null;
  private readonly random: () => number;
  private readonly errors: LastError;
  /** What the status page draws: the lag over 24 h, the sets applied (page.ts). */
  private readonly history: StandbyHistory;
  private readonly observed: Observations;
  private readonly poller: LatestPoller;
  private readonly reporter: Reporter;
  private readonly applier: Applier;
  private readonly waker = new Waker();
  private readonly cycleAbort = new AbortController();
  private server: StatusServer | null = null;
  private push: PushClient | null = null;
  private daemonLock: Lock | null = null;
  private listenAddress: string | null = null;
  /** primary.tls (CA, client certificate) for the push channel, reloaded on SIGHUP and on change. */
  private clientTls: ReloadingTls | null = null;
  private startedAt: Date | null = null;
  private stopping = false;
  private loopDone: Promise<void> | null = null;
  private fatal: TandemError | null = null;
  private fatalResolve: ((err: TandemError) => void) | null = null;

  constructor(private readonly opts: StandbyDaemonOptions) {
    const config = opts.config;
    this.config = config;
    this.log = opts.logger.child({ site: config.site, standbyId: opts.standbyId });
    this.fs = opts.filestore;
    this.random = opts.random ?? Math.random;
    const verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
    this.verifyKey = verifyKey;
    this.failed = new Promise((resolve) => {
      this.fatalResolve = resolve;
    });
    this.metrics = new StandbyMetrics(
      {
        lag: () => this.observed.lagFigures(),
        applied: () => this.observed.applied,
        websocketConnected: () => this.push?.isConnected() ?? false,
        files: () => this.filesNow(),
        wal: () => this.observed.walFigures(),
      },
      opts.shared === undefined ? {} : { site: config.site },
    );
    this.history = new StandbyHistory({
      lag: () => this.observed.lagFigures(),
      applied: () => this.observed.applied,
      pushConnected: () => (config.primary === undefined || opts.token === null ? null : (this.push?.isConnected() ?? false)),
    });
    const common = { fs: this.fs, logger: this.log, metrics: this.metrics, stopping: () => this.stopping };
    this.errors = new LastError(this.log);
    this.observed = new Observations({ ...common, site: config.site, verifyKey, pollIntervalMs: config.pollInterval, latestReadAt: () => this.poller.latestReadAt(), ...(config.database.mode === 'wal' ? { walStateDir: config.stateDir } : {}) });
    this.poller = new LatestPoller({
      ...common,
      config,
      verifyKey,
      errors: this.errors,
      observed: this.observed,
      random: this.random,
      signal: this.cycleAbort.signal,
      watch: opts.watch !== false,
      onChange: () => this.wake('watch'),
      onFilestoreBack: () => this.applier.retries.filestoreAnswers(),
    });
    this.reporter = new Reporter({
      ...common,
      site: config.site,
      standbyId: opts.standbyId,
      errors: this.errors,
      push: () => this.push,
      signal: this.cycleAbort.signal,
      database: config.database,
      busy: () => this.applier.applying !== null,
    });
    const limiter = opts.shared?.limiter;
    this.applier = new Applier({
      ...common,
      config,
      errors: this.errors,
      observed: this.observed,
      reporter: this.reporter,
      random: this.random,
      die: (err) => this.die(err),
      limit:
        limiter === undefined
          ? undefined
          : (what, fn) =>
              limiter.run(fn, (ahead) =>
                this.log.info({ ahead, concurrency: limiter.max }, `${what} waits its turn: other sites apply (at most ${limiter.max} at once, the concurrency of this config)`),
              ),
    });
  }

  // -------------------------------------------------------------------------------------------
  // Start and stop
  // -------------------------------------------------------------------------------------------

  async start(): Promise<string> {
    const { config } = this;
    const shared = this.opts.shared;
    const listen = this.opts.listen ?? config.server.listen;
    if (shared === undefined) checkListen(listen, this.opts.token, this.opts.readToken ?? null);
    await refuseIfPromoted(config, 'daemon');
    await this.refuseOnThePrimary();
    this.daemonLock = await acquireLock(daemonFiles(config.stateDir).lock, 'run', `tandem-standby run for site "${config.site}"`);
    try {
      // Backup mode from the start: the site must know it is a standby even before the first apply.
      this.observed.applied = await readApplied(config.stateDir);
      if (await ensureSentinel(config.paths.sentinel, config.site, this.observed.applied?.setId ?? null)) {
        this.log.info({ sentinel: config.paths.sentinel }, 'sentinel written: the site is in backup mode');
      }
      if (shared === undefined) {
        const primaryTls = config.primary?.tls;
        if (primaryTls !== undefined && this.opts.token !== null) {
          this.clientTls = new ReloadingTls({ what: 'primary.tls', load: () => loadClientTls(primaryTls, this.log), logger: this.log, apply: () => this.push?.redialNow() });
        }
        this.server = new StatusServer({
          token: this.opts.token,
          readToken: this.opts.readToken ?? null,
          tls: config.server.tls,
          logger: this.log.child({ component: 'http' }),
          handlers: {
            status: () => this.status(),
            metrics: async () => ({ contentType: this.metrics.contentType, body: await this.scrape() }),
            history: () => this.historyDoc(),
          },
        });
        this.listenAddress = await this.server.listen(listen);
        process.on('SIGHUP', this.onHangup);
      } else {
        this.listenAddress = shared.listen;
      }
      this.startedAt = new Date();
      this.history.start();
      // WAL mode: fetch ahead what PostgreSQL will ask restore_command for next (prefetch.ts).
      if (config.database.mode === 'wal') {
        this.prefetch = new WalPrefetcher({ config, fs: this.fs, logger: this.log.child({ component: 'wal-prefetch' }), verifyKey: this.verifyKey });
        this.prefetch.start();
      }
      await writeDaemonInfo(config.stateDir, {
        agent: 'tandem-standby',
        pid: process.pid,
        listen: this.listenAddress,
        startedAt: this.startedAt.toISOString(),
        site: config.site,
        standbyId: this.opts.standbyId,
        ...(shared === undefined ? {} : { sites: [...shared.siteNames] }),
      });
      if (config.primary !== undefined && this.opts.token !== null && (shared === undefined || shared.link !== null)) {
        this.push = new PushClient({
          url: config.primary.url,
          token: this.opts.token,
          site: config.site,
          logger: this.log,
          hello: () => ({
            type: 'hello',
            standbyId: this.opts.standbyId,
            site: config.site,
            appliedSetId: this.observed.applied?.setId ?? null,
            appliedCreatedAt: this.observed.applied?.createdAt ?? null,
          }),
          onPrimaryHello: (m) => this.onPrimaryHello(m),
          onSetCommitted: (m) => this.onSetCommitted(m),
          onHeartbeat: (at) => this.observed.notePushHeartbeat(at),
          onFailure: () => this.metrics.failuresTotal.inc({ kind: 'websocket' }),
          onConnectedChange: () => this.history.sample(),
          tls: this.clientTls === null ? undefined : () => tlsOptions(this.clientTls!.current),
          link: shared?.link ?? undefined,
        });
        this.push.start();
      }
      await this.poller.startWatching();
      this.log.info(
        {
          listen: this.listenAddress,
          url: this.server === null ? undefined : `${this.server.scheme}://${this.listenAddress}`,
          filestore: this.fs.description,
          pollIntervalMs: config.pollInterval,
          push: config.primary?.url ?? null,
          applied: this.observed.applied?.setId ?? null,
        },
        'standby daemon started',
      );
      this.loopDone = this.loop();
      return this.listenAddress;
    } catch (err) {
      await this.cleanUp(shared === undefined);
      throw err;
    }
  }

  /**
   * This server is the site's primary (apply/wrong-box.ts): refused before the sentinel is written
   * into the primary's config dir. epoch.json is read once here; a filestore that does not answer
   * now leaves that part to every apply (runApply checks it again).
   */
  private async refuseOnThePrimary(): Promise<void> {
    const epoch = await readEpochDoc(this.fs, this.config.site).then(
      (found) => found?.doc ?? null,
      (err: unknown) => {
        this.log.warn({ err }, 'cannot read epoch.json at start; whether this server is the primary is checked again before every apply');
        return null;
      },
    );
    const refusal = await wrongBoxRefusal(this.config, epoch, 'daemon');
    if (refusal !== null) throw refusal;
  }

  /**
   * Stops: no new work; an apply in progress may finish within the grace period, after which it is
   * aborted (staging rolls back; a switch already under way finishes). Resolves with 'clean', or
   * 'left-running' when the apply did not settle even then (the journal is left to the next start).
   */
  async stop(why = 'stop requested'): Promise<'clean' | 'left-running'> {
    if (!this.stopping) this.log.info({ why, applying: this.applier.applying?.setId ?? null }, 'standby daemon stopping');
    this.stopping = true;
    this.wake('stop');
    this.cycleAbort.abort(shutdownError(why));
    const outcome =
      this.loopDone === null
        ? 'clean'
        : await waitForLoop(this.loopDone, {
            graceMs: this.opts.stopGraceMs ?? 60_000,
            why,
            log: this.log,
            applyingSetId: () => this.applier.applying?.setId,
            abortApply: (reason) => this.applier.abort(reason),
          });
    // The filestore of several sites is the host's: it closes it once they all stopped.
    await this.cleanUp(outcome === 'clean' && this.opts.shared === undefined);
    this.log.info({ outcome }, 'standby daemon stopped');
    return outcome;
  }

  /** Second signal: abort the apply in progress now instead of waiting out the grace period. */
  hurry(): void {
    this.applier.abort(shutdownError('stopped at once (second signal)'));
  }

  /** SIGHUP: server.tls and primary.tls are read again (for new connections); a failure keeps the old ones, logged. */
  private readonly onHangup = (): void => {
    if ((this.server?.tls ?? null) === null && this.clientTls === null) {
      this.log.info({ signal: 'SIGHUP' }, 'SIGHUP: nothing to reload (no server.tls or primary.tls)');
      return;
    }
    this.server?.reloadTls('SIGHUP');
    this.clientTls?.reload('SIGHUP');
  };

  private async cleanUp(closeFilestore = true): Promise<void> {
    this.history.stop();
    this.prefetch?.stop();
    process.off('SIGHUP', this.onHangup);
    this.clientTls?.close();
    await this.poller.stopWatching();
    await this.push?.stop().catch(() => undefined);
    await this.server?.close().catch(() => undefined);
    if (this.listenAddress !== null) await removeDaemonInfo(this.config.stateDir).catch(() => undefined);
    await this.daemonLock?.release().catch(() => undefined);
    this.daemonLock = null;
    if (closeFilestore) await this.fs.close().catch(() => undefined);
  }

  private die(err: TandemError): void {
    if (this.fatal !== null) return;
    this.fatal = err;
    this.log.error({ code: err.code }, err.message);
    this.stopping = true;
    this.wake('fatal');
    this.fatalResolve?.(err);
  }

  // -------------------------------------------------------------------------------------------
  // The loop
  // -------------------------------------------------------------------------------------------

  private wake(reason: string): void {
    this.waker.wake(reason);
  }

  private async loop(): Promise<void> {
    let delay = 0;
    let failures = 0;
    while (!this.stopping) {
      const reason = await this.waker.sleep(delay, this.stopping, (until) => this.poller.nextPollAt(until));
      if (this.stopping) break;
      try {
        delay = await this.cycle(reason);
        this.history.sample();
        failures = 0;
      } catch (err) {
        // A bug, not a filestore problem (those are handled inside): log it, back off, carry on.
        failures++;
        delay = backoffDelay(failures, loopBackoff(this.config.pollInterval), this.random);
        this.log.error({ err }, 'unexpected error in the standby loop; retrying');
        this.errors.note('internal', err);
      }
    }
  }

  /** One round: recover, report, poll, apply if there is something newer. Returns ms until the next. */
  private async cycle(reason: string): Promise<number> {
    const { config, observed, poller, applier } = this;
    const refusal = await promotedRefusal(config, 'daemon');
    if (refusal !== null) {
      this.die(refusal);
      return 0;
    }
    // An apply that was interrupted (crash, kill, a stop past its grace period) is finished or rolled
    // back before anything else, as `tandem-standby apply` does.
    const journal = await readJournal(config.stateDir).catch(() => null);
    if (journal !== null && !applier.retries.waitingFor(journal.setId)) {
      await applier.recoverJournal();
      if (this.stopping) return 0;
    }
    observed.applied = await readApplied(config.stateDir);
    await this.reporter.reportIfNeeded(observed.applied);

    const pollOk = await poller.check(reason);
    if (this.stopping) return 0;
    const now = Date.now();
    let next = poller.nextDelay(pollOk);

    const newer = poller.newerSet();
    if (newer !== null && !applier.retries.waitingFor(newer.setId, now)) {
      await applier.apply(newer);
      if (this.stopping) return 0;
      // Something newer may have been committed meanwhile: look again at once after a success.
      if (applier.retries.failure === null) return 0;
    }
    // Files deltas on top of the applied set (files as content objects, the primary watching them).
    const pointer = observed.latest?.pointer ?? null;
    this.#deltaState = await readDeltaState(config.stateDir);
    if (newer === null && pointer?.files && (await pendingDeltas(config, pointer)) > 0) {
      try {
        await applyFilesDeltas(config, { filestore: this.fs, latest: pointer, verifyKey: this.verifyKey, logger: this.log });
        this.#deltaState = await readDeltaState(config.stateDir);
        this.errors.clear('apply');
      } catch (err) {
        this.errors.note('apply', err, 'error', { filesDelta: pointer.files.delta });
      }
      if (this.stopping) return 0;
    }
    // A failed apply or recovery that is still wanted is retried at its time, even between polls.
    const f = applier.retries.failure;
    const stillWanted = f !== null && ((newer !== null && f.setId === newer.setId) || (await readJournal(config.stateDir).catch(() => null))?.setId === f.setId);
    if (f !== null && stillWanted && f.retryAt > Date.now()) next = Math.min(next, f.retryAt - Date.now());

    // A push named a set the filestore does not show yet: look again soon (a few times).
    const hint = poller.hintDelay();
    if (hint !== null) next = Math.min(next, hint);
    return next;
  }

  // -------------------------------------------------------------------------------------------
  // The push channel
  // -------------------------------------------------------------------------------------------

  private onPrimaryHello(m: PrimaryHello): void {
    this.observed.notePushHeartbeat(m.serverTime, m.epoch);
    const skew = (Date.parse(m.serverTime) - Date.now()) / 1000;
    if (Math.abs(skew) > 5) {
      this.log.warn({ skewSeconds: Math.round(skew) }, "the primary's clock differs from this server's: lag and heartbeat ages are off by that much");
    }
    if (m.latestSetId !== null && m.latestSetId !== this.observed.applied?.setId) this.wake('push-hello');
  }

  /** files-delta.json as the last cycle read it. */
  #deltaState: DeltaState | null = null;

  /** The files figures (status-doc.ts) from what the last cycle saw, for the metrics. */
  private filesNow() {
    const p = this.observed.latest?.pointer;
    return filesFigures({ applied: this.observed.applied, latest: this.observed.latestInfo(), now: new Date(), filesDelta: { applied: this.#deltaState, newest: p?.files ?? null } });
  }

  private onSetCommitted(m: SetCommitted): void {
    if (m.filesDelta !== undefined && m.setId === this.observed.applied?.setId) {
      this.log.debug({ setId: m.setId, delta: m.filesDelta }, 'push: files delta committed; checking now');
      this.wake('push');
      return;
    }
    if (!this.poller.pushed(m)) {
      this.log.debug({ setId: m.setId }, 'push: set already applied');
      return;
    }
    const applying = this.applier.applying;
    this.log.info({ setId: m.setId, applying: applying?.setId ?? null }, applying ? 'push: set committed; checking once the apply in progress ends' : 'push: set committed; checking now');
    // New work: a failure backoff for an older set does not hold this one up.
    this.wake('push');
  }

  // -------------------------------------------------------------------------------------------
  // Status
  // -------------------------------------------------------------------------------------------

  /** The text of GET /metrics (this site's registry), the on-demand figures refreshed first. */
  async scrape(): Promise<string> {
    await this.observed.refreshOnDemand();
    return this.metrics.text();
  }

  /** GET /status/history: what the status page draws. */
  async historyDoc(): Promise<unknown> {
    return this.history.doc(await this.status(), this.config.heartbeatStaleAfter);
  }

  async status(): Promise<StandbyStatusDoc> {
    const { config, observed } = this;
    // An `apply` by hand between two cycles shows at once.
    if (this.applier.applying === null) observed.applied = await readApplied(config.stateDir).catch(() => observed.applied);
    await observed.refreshOnDemand();
    const seen = observed.observed();
    const journal = await readJournal(config.stateDir).catch(() => null);
    const promoted = await readPromoted(config.stateDir).catch(() => null);
    return buildStatusDoc({
      site: config.site,
      standbyId: this.opts.standbyId,
      now: new Date(),
      ...seen,
      applying: this.applier.applying,
      journal,
      promoted,
      daemon: { running: true, pid: process.pid, listen: this.listenAddress, startedAt: this.startedAt?.toISOString() ?? null, reachable: true },
      push: this.push?.status() ?? null,
      poll: this.poller.poll,
      lastError: this.errors.current,
      problems: [],
      filesDelta: { applied: await readDeltaState(config.stateDir), newest: observed.latest?.pointer.files ?? null },
    });
  }
}
