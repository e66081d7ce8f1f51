import type { KeyObject } from 'node:crypto';
import {
  TandemError,
  acquireLock,
  describeError,
  encodeStandbyReport,
  isNotFound,
  isTandemError,
  layout,
  loadVerifyKeyFile,
  parseFilestoreUrl,
  verifyLatest,
  type Filestore,
  type LatestPointer,
  type Lock,
  type Logger,
  type PrimaryHello,
  type SetCommitted,
  type StandbyConfig,
} from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { recover } from '../apply/recover.js';
import { compareSets } from '../apply/resolve-set.js';
import { runApply } from '../apply/run-apply.js';
import { ensureSentinel } from '../apply/sentinel.js';
import { readApplied, readPromoted, stateFiles, type AppliedState } from '../apply/state.js';
import { backoffDelay, jittered, type BackoffPolicy } from './backoff.js';
import { daemonFiles, removeDaemonInfo, writeDaemonInfo } from './daemon-info.js';
import { mergeHeartbeats } from './gather-status.js';
import { checkHeartbeat, computeLag, countPendingSets, pendingWithoutListing, type LagFigures, type LatestInfo } from './lag.js';
import { StandbyMetrics, type FailureKind } from './metrics.js';
import { LatestWatcher } from './watch-latest.js';
import { PushClient } from './push-client.js';
import { StatusServer, checkListen } from './server.js';
import type { ErrorInfo, HeartbeatInfo, PollInfo, StandbyStatusDoc } from './status-doc.js';

/**
 * `tandem-standby run`: keeps the standby site equal to the newest committed set.
 *
 * - Work comes from the push channel (`set-committed`: check at once), for a directory filestore
 *   from change events of latest.json (watch-latest.ts), and from polling latest.json with a
 *   conditional GET every pollInterval ±10%. An idle standby makes exactly one
 *   conditional GET per poll and nothing else (no LIST; heartbeat.json and the pending count are read
 *   only when someone asks for /status or /metrics, and at most once per pollInterval).
 * - One loop does everything, so there is one apply at a time by construction; a push that arrives
 *   during an apply queues one re-check. A push is only a hint: what is applied is always what the
 *   signed latest.json names, through the apply engine (runApply), whose ordering refuses the same set
 *   twice and an older one. The daemon itself never starts an apply for a set that is not newer.
 * - Failures never stop the daemon: polls are retried with backoff (capped at pollInterval), applies
 *   with backoff (capped at max(pollInterval, 5 min); 5 min to 1 h for a set that failed integrity or
 *   fencing checks, until latest.json names another). The push channel reconnects by itself.
 * - The one exception: promote ran here (promoted.json). The daemon then stops at once, exit 2.
 */
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
}

interface LatestState {
  pointer: LatestPointer;
  version: string;
}

interface ApplyFailure {
  setId: string;
  count: number;
  retryAt: number;
  /** The filestore failed: retried as soon as a poll finds it answering again. */
  filestore: boolean;
}

/** Errors of the filestore itself (any backend), also when wrapped by the apply engine. */
export function isFilestoreError(err: unknown): boolean {
  for (let e: unknown = err, i = 0; e !== undefined && e !== null && i < 6; e = (e as { cause?: unknown }).cause, i++) {
    if (isTandemError(e) && e.code.startsWith('FILESTORE_')) return true;
  }
  return false;
}

const PUSH_HINT_TRIES = 5;
const ABORT_WAIT_MS = 15_000;

export class StandbyDaemon {
  readonly metrics: StandbyMetrics;
  private readonly config: StandbyConfig;
  private readonly log: Logger;
  private readonly fs: Filestore;
  private readonly verifyKey: KeyObject;
  private readonly random: () => number;
  private server: StatusServer | null = null;
  private push: PushClient | null = null;
  private daemonLock: Lock | null = null;
  private listenAddress: string | null = null;
  private startedAt: Date | null = null;

  // What the daemon knows.
  private applied: AppliedState | null = null;
  private latest: LatestState | null = null;
  private latestVersion: string | undefined;
  private latestOlderWarned: string | null = null;
  private reportedSetId: string | null = null;
  private heartbeat: HeartbeatInfo | null = null;
  private heartbeatCache: { version: string | undefined; checkedAt: number } = { version: undefined, checkedAt: 0 };
  private pendingCache: { key: string; count: number | null; at: number } | null = null;
  private lastError: ErrorInfo | null = null;
  private poll: PollInfo;
  private pollFailures = 0;
  private applyFailure: ApplyFailure | null = null;
  private applying: { setId: string | null; since: string } | null = null;
  private pushHint: { msg: SetCommitted; tries: number } | null = null;

  // The loop.
  private stopping = false;
  private wakeReason: string | null = null;
  /** Directory filestores only: latest.json change events wake the loop. */
  private watcher: LatestWatcher | null = null;
  private wakeResolve: (() => void) | null = null;
  private loopTimer: NodeJS.Timeout | null = null;
  private loopDone: Promise<void> | null = null;
  private readonly cycleAbort = new AbortController();
  private applyAbort: AbortController | null = null;
  private fatal: TandemError | null = null;
  private fatalResolve: ((err: TandemError) => void) | null = null;
  /** Settles with the error that stopped the daemon by itself (promoted); never settles otherwise. */
  readonly failed: Promise<TandemError>;

  constructor(private readonly opts: StandbyDaemonOptions) {
    this.config = opts.config;
    this.log = opts.logger.child({ site: opts.config.site, standbyId: opts.standbyId });
    this.fs = opts.filestore;
    this.random = opts.random ?? Math.random;
    this.verifyKey = loadVerifyKeyFile(opts.config.keys.verifyKeyFile);
    this.poll = { intervalSeconds: opts.config.pollInterval / 1000, lastAt: null, lastResult: null, consecutiveErrors: 0, nextAt: null };
    this.failed = new Promise((resolve) => {
      this.fatalResolve = resolve;
    });
    this.metrics = new StandbyMetrics({
      lag: () => this.lagFigures(),
      applied: () => this.applied,
      websocketConnected: () => this.push?.isConnected() ?? false,
    });
  }

  // -------------------------------------------------------------------------------------------
  // Start and stop
  // -------------------------------------------------------------------------------------------

  async start(): Promise<string> {
    const { config } = this;
    const listen = this.opts.listen ?? config.server.listen;
    checkListen(listen, this.opts.token, this.opts.readToken ?? null);
    await refuseIfPromoted(config);
    this.daemonLock = await acquireLock(daemonFiles(config.stateDir).lock, 'run', `tandem-standby run for site "${config.site}"`);
    try {
      // Backup mode from the start: the site must know it is a standby even before the first apply.
      this.applied = await readApplied(config.stateDir);
      if (await ensureSentinel(config.paths.sentinel, config.site, this.applied?.setId ?? null)) {
        this.log.info({ sentinel: config.paths.sentinel }, 'sentinel written: the site is in backup mode');
      }
      this.server = new StatusServer({
        token: this.opts.token,
        readToken: this.opts.readToken ?? null,
        logger: this.log.child({ component: 'http' }),
        handlers: {
          status: () => this.status(),
          metrics: async () => {
            await this.refreshOnDemand();
            return { contentType: this.metrics.contentType, body: await this.metrics.text() };
          },
        },
      });
      this.listenAddress = await this.server.listen(listen);
      this.startedAt = new Date();
      await writeDaemonInfo(config.stateDir, {
        agent: 'tandem-standby',
        pid: process.pid,
        listen: this.listenAddress,
        startedAt: this.startedAt.toISOString(),
        site: config.site,
        standbyId: this.opts.standbyId,
      });
      if (config.primary !== undefined && this.opts.token !== null) {
        this.push = new PushClient({
          url: config.primary.url,
          token: this.opts.token,
          site: config.site,
          logger: this.log,
          hello: () => ({
            type: 'hello',
            standbyId: this.opts.standbyId,
            site: config.site,
            appliedSetId: this.applied?.setId ?? null,
            appliedCreatedAt: this.applied?.createdAt ?? null,
          }),
          onPrimaryHello: (m) => this.onPrimaryHello(m),
          onSetCommitted: (m) => this.onSetCommitted(m),
          onHeartbeat: (at) => this.notePushHeartbeat(at),
          onFailure: () => this.metrics.failuresTotal.inc({ kind: 'websocket' }),
        });
        this.push.start();
      }
      const loc = parseFilestoreUrl(config.filestore.url);
      if (loc.scheme === 'file' && this.opts.watch !== false) {
        this.watcher = new LatestWatcher({ root: loc.root, site: config.site, logger: this.log, onChange: () => this.wake('watch') });
        await this.watcher.start();
      }
      this.log.info(
        {
          listen: this.listenAddress,
          filestore: this.fs.description,
          pollIntervalMs: config.pollInterval,
          push: config.primary?.url ?? null,
          applied: this.applied?.setId ?? null,
        },
        'standby daemon started',
      );
      this.loopDone = this.loop();
      return this.listenAddress;
    } catch (err) {
      await this.cleanUp();
      throw err;
    }
  }

  /**
   * Stops: no new work; an apply in progress may finish within the grace period, after which it is
   * aborted (staging rolls back; a switch already under way finishes). Resolves with 'clean', or
   * 'left-running' when the apply did not settle even then (the journal is left to the next start).
   */
  async stop(why = 'stop requested'): Promise<'clean' | 'left-running'> {
    if (!this.stopping) this.log.info({ why, applying: this.applying?.setId ?? null }, 'standby daemon stopping');
    this.stopping = true;
    this.wake('stop');
    this.cycleAbort.abort(new Error(why));
    let outcome: 'clean' | 'left-running' = 'clean';
    if (this.loopDone !== null) {
      const grace = this.opts.stopGraceMs ?? 60_000;
      if (!(await settlesWithin(this.loopDone, grace))) {
        this.log.warn({ graceMs: grace, setId: this.applying?.setId }, 'the apply in progress did not finish within the stop grace period: aborting it');
        this.applyAbort?.abort(new Error(`stopped (${why})`));
        if (!(await settlesWithin(this.loopDone, ABORT_WAIT_MS))) {
          this.log.error({ setId: this.applying?.setId }, 'the apply did not stop; leaving it to the journal: the next start finishes or rolls it back');
          outcome = 'left-running';
        }
      }
    }
    await this.cleanUp(outcome === 'clean');
    this.log.info({ outcome }, 'standby daemon stopped');
    return outcome;
  }

  /** Second signal: abort the apply in progress now instead of waiting out the grace period. */
  hurry(): void {
    this.applyAbort?.abort(new Error('stopped at once (second signal)'));
  }

  private async cleanUp(closeFilestore = true): Promise<void> {
    await this.watcher?.stop();
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
    this.wakeReason ??= reason;
    this.wakeResolve?.();
  }

  private async sleep(ms: number): Promise<string> {
    if (this.wakeReason === null && !this.stopping) {
      this.poll.nextAt = new Date(Date.now() + ms).toISOString();
      await new Promise<void>((resolve) => {
        this.wakeResolve = resolve;
        this.loopTimer = setTimeout(() => {
          this.wakeReason ??= 'timer';
          resolve();
        }, ms);
      });
      if (this.loopTimer) clearTimeout(this.loopTimer);
      this.loopTimer = null;
      this.wakeResolve = null;
    }
    const r = this.wakeReason ?? 'timer';
    this.wakeReason = null;
    return r;
  }

  private async loop(): Promise<void> {
    let delay = 0;
    let failures = 0;
    while (!this.stopping) {
      const reason = await this.sleep(delay);
      if (this.stopping) break;
      try {
        delay = await this.cycle(reason);
        failures = 0;
      } catch (err) {
        // A bug, not a filestore problem (those are handled inside): log it, back off, carry on.
        failures++;
        delay = backoffDelay(failures, { baseMs: 1_000, capMs: this.config.pollInterval }, this.random);
        this.log.error({ err }, 'unexpected error in the standby loop; retrying');
        this.noteError('internal', err);
      }
    }
  }

  /** One round: recover, report, poll, apply if there is something newer. Returns ms until the next. */
  private async cycle(reason: string): Promise<number> {
    const { config } = this;
    const promoted = await readPromoted(config.stateDir);
    if (promoted !== null) {
      this.die(promotedError(config, promoted.promotedAt));
      return 0;
    }
    // An apply that was interrupted (crash, kill, a stop past its grace period) is finished or rolled
    // back before anything else, as `tandem-standby apply` does.
    const journal = await readJournal(config.stateDir).catch(() => null);
    if (journal !== null && !this.waitingFor(journal.setId)) {
      await this.recoverJournal();
      if (this.stopping) return 0;
    }
    this.applied = await readApplied(config.stateDir);
    await this.reportIfNeeded();

    // A filestore directory that did not exist at start: watch it once it does.
    if (this.watcher !== null && !this.watcher.watching) await this.watcher.start();
    const pollOk = await this.pollLatest(reason);
    if (this.stopping) return 0;
    const now = Date.now();
    let next = pollOk ? jittered(config.pollInterval, 0.1, this.random) : backoffDelay(this.pollFailures, this.pollBackoff(), this.random);

    const latest = this.latest?.pointer ?? null;
    const newer = latest !== null && (this.applied === null || compareSets(latest, this.applied) > 0);
    const older = latest !== null && this.applied !== null && compareSets(latest, this.applied) < 0;
    if (!older && this.lastError?.what === 'latest') this.lastError = null;
    if (older && this.applied !== null && this.latestOlderWarned !== latest.setId) {
      this.latestOlderWarned = latest.setId;
      this.noteError(
        'latest',
        new TandemError('precondition', 'LATEST_OLDER', `latest.json names set ${latest.setId}, older than the applied set ${this.applied.setId}: not going back`, {
          hint: 'check that the primary and this standby use the same filestore and site',
        }),
      );
    }
    if (newer && !this.waitingFor(latest.setId, now)) {
      await this.apply(latest);
      if (this.stopping) return 0;
      // Something newer may have been committed meanwhile: look again at once after a success.
      if (this.applyFailure === null) return 0;
    }
    // A failed apply or recovery that is still wanted is retried at its time, even between polls.
    const f = this.applyFailure;
    const stillWanted = f !== null && ((newer && f.setId === latest.setId) || (await readJournal(config.stateDir).catch(() => null))?.setId === f.setId);
    if (f !== null && stillWanted && f.retryAt > Date.now()) next = Math.min(next, f.retryAt - Date.now());

    // A push named a set the filestore does not show yet: look again soon (a few times).
    const hint = this.pushHint;
    if (hint !== null) {
      const seen = this.latest?.pointer ?? null;
      if ((seen !== null && compareSets(seen, hint.msg) >= 0) || (this.applied !== null && compareSets(this.applied, hint.msg) >= 0)) {
        this.pushHint = null;
      } else if (hint.tries >= PUSH_HINT_TRIES) {
        this.log.warn({ setId: hint.msg.setId }, 'the primary announced a set that latest.json does not name; polling will pick it up');
        this.pushHint = null;
      } else {
        hint.tries++;
        next = Math.min(next, 200 * 2 ** hint.tries);
      }
    }
    return next;
  }

  /** True while a failed apply (or recovery) of this set waits for its retry time. */
  private waitingFor(setId: string, now = Date.now()): boolean {
    const f = this.applyFailure;
    return f !== null && f.setId === setId && now < f.retryAt;
  }

  private pollBackoff(): BackoffPolicy {
    return { baseMs: Math.min(1_000, this.config.pollInterval), capMs: this.config.pollInterval };
  }

  /** The conditional GET of latest.json; false when the filestore failed. */
  private async pollLatest(reason: string): Promise<boolean> {
    const key = layout.latest(this.config.site);
    const at = new Date().toISOString();
    try {
      const r = await this.fs.getIfChanged(key, this.latestVersion, { signal: this.cycleAbort.signal });
      this.pollSucceeded(at, r.changed ? 'changed' : 'unchanged');
      this.metrics.pollsTotal.inc({ result: r.changed ? 'changed' : 'unchanged' });
      if (!r.changed) return true;
      this.latestVersion = r.info.version;
      const label = `${this.fs.description}/${key}`;
      try {
        const p = verifyLatest(r.body, this.verifyKey, label);
        if (p.site !== this.config.site) throw new TandemError('integrity', 'SITE_MISMATCH', `${label} is for site "${p.site}", not "${this.config.site}"`);
        if (this.latest?.pointer.setId !== p.setId) this.log.info({ setId: p.setId, committedAt: p.committedAt, reason }, 'latest.json names a new set');
        this.latest = { pointer: p, version: r.info.version };
      } catch (err) {
        // Keep what was last verified; these bytes are not read again until latest.json changes.
        this.metrics.failuresTotal.inc({ kind: 'poll' });
        this.noteError('poll', err);
      }
      return true;
    } catch (err) {
      if (this.stopping) return false;
      if (isNotFound(err)) {
        if (this.poll.lastResult !== 'missing') this.log.info({ key }, 'no latest.json yet: the primary has not committed a set');
        this.pollSucceeded(at, 'missing');
        this.metrics.pollsTotal.inc({ result: 'unchanged' });
        this.latestVersion = undefined;
        return true;
      }
      this.pollFailures++;
      this.poll = { ...this.poll, lastAt: at, lastResult: 'error', consecutiveErrors: this.pollFailures };
      this.metrics.pollsTotal.inc({ result: 'error' });
      this.metrics.filestoreErrorsTotal.inc();
      this.metrics.failuresTotal.inc({ kind: 'poll' });
      this.noteError('poll', err, this.pollFailures === 1 ? 'warn' : 'debug');
      return false;
    }
  }

  private pollSucceeded(at: string, result: PollInfo['lastResult']): void {
    if (this.pollFailures > 0) {
      this.log.info({ failedPolls: this.pollFailures }, 'the filestore answers again');
      // An apply that failed on the filestore need not wait out its backoff now that it is back.
      if (this.applyFailure?.filestore === true) this.applyFailure.retryAt = 0;
    }
    this.pollFailures = 0;
    this.poll = { ...this.poll, lastAt: at, lastResult: result, consecutiveErrors: 0 };
    if (this.lastError?.what === 'poll') this.lastError = null;
  }

  private async apply(latest: LatestPointer): Promise<void> {
    const log = this.log.child({ setId: latest.setId });
    this.applying = { setId: latest.setId, since: new Date().toISOString() };
    this.applyAbort = new AbortController();
    try {
      const r = await runApply(this.config, { filestore: this.fs, logger: log, signal: this.applyAbort.signal, latest });
      this.applied = r.applied;
      this.applyFailure = null;
      if (this.lastError?.what === 'apply' || this.lastError?.what === 'recovery') this.lastError = null;
      if (r.status === 'applied') {
        this.metrics.appliesTotal.inc({ outcome: 'applied' });
        log.info({ appliedSetId: r.applied.setId, seconds: r.applied.durations.total, bytes: r.applied.bytes }, 'set applied by the daemon');
      }
      if (r.restartError !== undefined) {
        this.metrics.failuresTotal.inc({ kind: 'restart' });
        this.noteError('restart', r.restartError);
      } else if (this.lastError?.what === 'restart') {
        this.lastError = null;
      }
      await this.reportIfNeeded();
    } catch (err) {
      this.applyFailed(latest.setId, err, 'apply');
    } finally {
      this.applying = null;
      this.applyAbort = null;
    }
  }

  private applyFailed(setId: string, err: unknown, what: 'apply' | 'recovery'): void {
    if (isTandemError(err) && err.code === 'PROMOTED') {
      this.die(err);
      return;
    }
    if (this.stopping && isTandemError(err) && err.code === 'INTERRUPTED') {
      this.metrics.appliesTotal.inc({ outcome: 'interrupted' });
      this.log.warn({ setId, err: err.message }, 'apply interrupted by the stop');
      return;
    }
    if (what === 'apply') this.metrics.appliesTotal.inc({ outcome: 'failed' });
    this.metrics.failuresTotal.inc({ kind: what });
    if (isFilestoreError(err)) this.metrics.filestoreErrorsTotal.inc();
    const count = this.applyFailure?.setId === setId ? this.applyFailure.count + 1 : 1;
    const badSet = isTandemError(err, 'integrity') || isTandemError(err, 'fenced');
    const policy: BackoffPolicy = badSet
      ? { baseMs: 5 * 60_000, capMs: 60 * 60_000 }
      : isTandemError(err, 'busy')
        ? { baseMs: 1_000, capMs: this.config.pollInterval }
        : { baseMs: 2_000, capMs: Math.max(this.config.pollInterval, 5 * 60_000) };
    const delay = backoffDelay(count, policy, this.random);
    this.applyFailure = { setId, count, retryAt: Date.now() + delay, filestore: isFilestoreError(err) || isTandemError(err, 'transient') };
    this.noteError(what, err, 'error', { attempt: count, retryInMs: delay });
  }

  private async recoverJournal(): Promise<void> {
    const { config } = this;
    const journal = await readJournal(config.stateDir);
    if (journal === null) return;
    this.applying = { setId: journal.setId, since: new Date().toISOString() };
    try {
      const lock = await acquireLock(stateFiles(config.stateDir).lock, 'apply', `an apply or promote of site "${config.site}"`);
      try {
        await refuseIfPromoted(config);
        const r = await recover(config, this.log);
        this.applyFailure = null;
        if (r.action === 'completed') {
          this.applied = r.finish.applied;
          if (r.finish.restartError !== undefined) {
            this.metrics.failuresTotal.inc({ kind: 'restart' });
            this.noteError('restart', r.finish.restartError);
          }
        }
      } finally {
        await lock.release();
      }
      await this.reportIfNeeded();
    } catch (err) {
      this.applyFailed(journal.setId, err, 'recovery');
    } finally {
      this.applying = null;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Telling the primary
  // -------------------------------------------------------------------------------------------

  /**
   * After a set became live (by this daemon, a recovery, or an `apply` by hand): the filestore report
   * (retention keeps the set) and `applied` on the push channel. A failed report is retried next cycle.
   */
  private async reportIfNeeded(): Promise<void> {
    const a = this.applied;
    if (a === null || a.setId === this.reportedSetId) return;
    const announced = this.push?.sendApplied({ standbyId: this.opts.standbyId, setId: a.setId, createdAt: a.createdAt, appliedAt: a.appliedAt }) ?? false;
    const key = layout.standby(this.config.site, this.opts.standbyId);
    try {
      const body = encodeStandbyReport({ standbyId: this.opts.standbyId, setId: a.setId, createdAt: a.createdAt, appliedAt: a.appliedAt });
      await this.fs.putBuffer(key, body, { contentType: 'application/json', contentLength: body.length, signal: this.cycleAbort.signal });
      this.reportedSetId = a.setId;
      if (this.lastError?.what === 'report') this.lastError = null;
      this.log.info({ setId: a.setId, key, announced }, 'reported the applied set');
    } catch (err) {
      if (this.stopping) return;
      this.metrics.failuresTotal.inc({ kind: 'report' });
      if (isFilestoreError(err)) this.metrics.filestoreErrorsTotal.inc();
      this.noteError('report', err);
    }
  }

  private onPrimaryHello(m: PrimaryHello): void {
    this.notePushHeartbeat(m.serverTime, m.epoch);
    const skew = (Date.parse(m.serverTime) - Date.now()) / 1000;
    if (Math.abs(skew) > 5) {
      this.log.warn({ skewSeconds: Math.round(skew) }, "the primary's clock differs from this server's: lag and heartbeat ages are off by that much");
    }
    if (m.latestSetId !== null && m.latestSetId !== this.applied?.setId) this.wake('push-hello');
  }

  private onSetCommitted(m: SetCommitted): void {
    if (this.applied !== null && compareSets(m, this.applied) <= 0) {
      this.log.debug({ setId: m.setId }, 'push: set already applied');
      return;
    }
    this.log.info({ setId: m.setId, applying: this.applying?.setId ?? null }, this.applying ? 'push: set committed; checking once the apply in progress ends' : 'push: set committed; checking now');
    this.pushHint = { msg: m, tries: 0 };
    // New work: a failure backoff for an older set does not hold this one up.
    this.wake('push');
  }

  private notePushHeartbeat(at: string, epoch?: number | null): void {
    if (Number.isNaN(Date.parse(at))) return;
    const prev = this.heartbeat;
    if (prev !== null && Date.parse(prev.at) >= Date.parse(at)) return;
    this.heartbeat = {
      at,
      source: 'push',
      primaryHost: prev?.primaryHost ?? null,
      epoch: epoch ?? prev?.epoch ?? null,
      lastBackup: prev?.lastBackup ?? null,
      nextBackupAt: prev?.nextBackupAt ?? null,
      latest: prev?.latest, // a push heartbeat names no set: the last signed one's stands
    };
  }

  // -------------------------------------------------------------------------------------------
  // Status and metrics
  // -------------------------------------------------------------------------------------------

  private noteError(what: FailureKind | 'latest' | 'internal', err: unknown, level: 'error' | 'warn' | 'debug' = 'warn', extra: object = {}): void {
    const te = isTandemError(err) ? err : null;
    this.lastError = {
      at: new Date().toISOString(),
      what,
      kind: te?.kind ?? 'internal',
      code: te?.code ?? 'UNEXPECTED',
      message: describeError(err),
    };
    this.log[level]({ what, code: this.lastError.code, err: this.lastError.message, ...extra }, `${what} failed`);
  }

  private latestInfo(): LatestInfo | null {
    const p = this.latest?.pointer;
    return p === undefined ? null : { setId: p.setId, epoch: p.epoch, seq: p.seq, createdAt: p.createdAt, committedAt: p.committedAt };
  }

  private lagFigures(): LagFigures {
    const latest = this.latestInfo();
    let pending = pendingWithoutListing(this.applied, latest, this.heartbeat?.latest);
    if (pending === null && this.pendingCache !== null && this.pendingCache.key === this.pendingKey()) pending = this.pendingCache.count;
    // latest.json as of the last poll that read it: a set committed since is no alarm yet.
    const latestReadAt = this.poll.lastAt !== null && this.poll.lastResult !== 'error' ? new Date(this.poll.lastAt) : null;
    return computeLag({ now: new Date(), applied: this.applied, latest, heartbeatAt: this.heartbeat?.at ?? null, pendingSets: pending, heartbeatLatest: this.heartbeat?.latest, latestReadAt });
  }

  private pendingKey(): string {
    return `${this.latest?.pointer.setId ?? '-'}|${this.applied?.setId ?? '-'}`;
  }

  /**
   * What /status and /metrics need beyond the poll loop, fetched when asked and at most once per
   * pollInterval: the pending count (a LIST, only while something is pending) and heartbeat.json
   * (the push channel brings heartbeats too, but only the signed one names the primary's newest set,
   * which tells a replayed latest.json).
   */
  private async refreshOnDemand(): Promise<void> {
    const now = Date.now();
    const ttl = this.config.pollInterval;
    if (pendingWithoutListing(this.applied, this.latestInfo(), this.heartbeat?.latest) === null) {
      const key = this.pendingKey();
      const c = this.pendingCache;
      if (c === null || c.key !== key || now - c.at >= ttl) {
        try {
          const count = await countPendingSets(this.fs, this.config.site, this.applied, AbortSignal.timeout(10_000));
          this.pendingCache = { key, count, at: now };
        } catch (err) {
          this.metrics.filestoreErrorsTotal.inc();
          this.pendingCache = { key, count: null, at: now };
          this.log.debug({ err: describeError(err) }, 'could not count pending sets');
        }
      }
    }
    if (now - this.heartbeatCache.checkedAt >= ttl) {
      this.heartbeatCache.checkedAt = now;
      const key = layout.heartbeat(this.config.site);
      try {
        const r = await this.fs.getIfChanged(key, this.heartbeatCache.version, { signal: AbortSignal.timeout(10_000) });
        if (r.changed) {
          this.heartbeatCache.version = r.info.version;
          const hb = checkHeartbeat(r.body, this.verifyKey, this.config.site, `${this.fs.description}/${key}`);
          // The newest heartbeat counts, and the newest set any signed one named: an older heartbeat.json
          // put back does not turn the clock back.
          this.heartbeat = mergeHeartbeats(hb, this.heartbeat);
        }
      } catch (err) {
        if (!isNotFound(err)) {
          if (isFilestoreError(err)) this.metrics.filestoreErrorsTotal.inc();
          this.log.debug({ err: describeError(err) }, 'could not read heartbeat.json');
        }
      }
    }
  }

  async status(): Promise<StandbyStatusDoc> {
    // An `apply` by hand between two cycles shows at once.
    if (this.applying === null) this.applied = await readApplied(this.config.stateDir).catch(() => this.applied);
    await this.refreshOnDemand();
    const a = this.applied;
    const p = this.latest?.pointer ?? null;
    const lag = this.lagFigures();
    const journal = await readJournal(this.config.stateDir).catch(() => null);
    const promoted = await readPromoted(this.config.stateDir).catch(() => null);
    return {
      site: this.config.site,
      standbyId: this.opts.standbyId,
      now: new Date().toISOString(),
      appliedSetId: a?.setId ?? null,
      appliedCreatedAt: a?.createdAt ?? null,
      appliedAt: a?.appliedAt ?? null,
      appliedCommittedAt: a === null ? null : (a.committedAt ?? (p !== null && p.setId === a.setId ? p.committedAt : null)),
      latestSetId: p?.setId ?? null,
      latestCreatedAt: p?.createdAt ?? null,
      latestCommittedAt: p?.committedAt ?? null,
      ...lag,
      primaryHeartbeat: this.heartbeat,
      applying: this.applying,
      unfinishedApply: journal === null ? null : { setId: journal.setId, phase: journal.phase, startedAt: journal.startedAt },
      promoted: promoted === null ? null : { promotedAt: promoted.promotedAt },
      daemon: { running: true, pid: process.pid, listen: this.listenAddress, startedAt: this.startedAt?.toISOString() ?? null, reachable: true },
      push: this.push?.status() ?? null,
      poll: this.poll,
      lastError: this.lastError,
      problems: [],
    };
  }
}

function promotedError(config: StandbyConfig, promotedAt: string): TandemError {
  return new TandemError(
    'precondition',
    'PROMOTED',
    `site "${config.site}" on this server was promoted to primary at ${promotedAt}: this server is the primary now, and the standby agent must not apply sets over it`,
    {
      hint: `run tandem-primary here instead; to make this server a standby again on purpose, remove ${stateFiles(config.stateDir).promoted} first`,
      exitCode: 2,
    },
  );
}

async function refuseIfPromoted(config: StandbyConfig): Promise<void> {
  const promoted = await readPromoted(config.stateDir);
  if (promoted !== null) throw promotedError(config, promoted.promotedAt);
}

async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
