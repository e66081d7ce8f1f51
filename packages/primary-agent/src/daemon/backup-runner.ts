import type { KeyObject } from 'node:crypto';
import { ProgressTracker, TandemError, describeError, isTandemError, type ArtifactProgress, type Filestore, type Limiter, type Logger, type PrimaryConfig } from '@tandem/shared';
import { runBackup, type BackupResult, type CommittedLatest } from '../backup/run-backup.js';
import { runRetention } from '../retention/run.js';
import type { AppliedRecord } from '../retention/plan.js';
import { readLastBackup } from '../state-files.js';
import { abortableFilestore } from './abortable.js';
import { errorBody } from './control.js';
import type { Fencing } from './fencing.js';
import { countFilestoreError } from './heartbeat.js';
import type { DaemonMetrics } from './metrics.js';
import type { Clock, DueReason, Scheduler } from './scheduler.js';
import type { SwitchoverCoordinator } from './switchover.js';

/**
 * The daemon's backups: scheduled (a run missed while the daemon was down happens at start-up), on
 * request (POST /v1/backup, `tandem-primary backup`) and the final one of a switchover. One at a
 * time in this process (runBackup's lock file covers other processes). A failed scheduled run is
 * retried (1 min, 5 min, 15 min) unless the next scheduled run comes first; a run that comes due
 * while a switchover holds is deferred until the switchover is called off. The moment a backup
 * commits, the standbys hear of it (onCommitted); then the heartbeat, then retention.
 * A daemon serving several sites runs every site's backups through one Limiter (`concurrency`):
 * a backup waits for a slot before it checks the epoch and starts.
 */
export type Trigger = DueReason | 'request' | 'switchover';

export interface LastRun {
  outcome: 'ok' | 'failed' | 'aborted';
  setId: string | null;
  /** When the run ended. */
  at: string;
  trigger: Trigger | null;
  durationSeconds: number | null;
  storedBytes: number | null;
  durations: Record<string, number> | null;
  error: string | null;
  errorKind: string | null;
}

export interface RunningBackup {
  trigger: Trigger;
  startedAt: Date;
  ac: AbortController;
  promise: Promise<BackupResult>;
  /** The artifacts being uploaded: /status and a waiting `tandem-primary backup` show them. */
  progress: ProgressTracker;
  /** waiting: for a slot of the limiter (other sites' backups use them all). */
  slot: { waiting: boolean };
}

export interface BackupRunnerOptions {
  config: PrimaryConfig;
  filestore: Filestore;
  logger: Logger;
  clock: Clock;
  metrics: DaemonMetrics;
  scheduler: Scheduler;
  fencing: Fencing;
  switchover: Pick<SwitchoverCoordinator, 'holding' | 'describeHold'>;
  /** The primary's public key: retention decides only from what verifies with it. */
  verifyKey: KeyObject;
  timeZone: string;
  /** Delays of the retries after a failed scheduled run. */
  retryDelaysMs: number[];
  isStopping(): boolean;
  /** latest.json names the new set: push it (before any local bookkeeping). */
  onCommitted(l: CommittedLatest, trigger: Trigger): void;
  /** After the bookkeeping of a committed set: a heartbeat now. */
  afterCommit(): void;
  /** A run ended (committed, failed or aborted): the status page lists it. */
  onRunEnded?(run: LastRun): void;
  /** The backups of every site this process serves, at most `concurrency` at once. */
  limiter?: Limiter;
}

export class BackupRunner {
  private last: LastRun | null = null;
  private lastSuccess: Date | null = null;
  private current: RunningBackup | null = null;
  private retryAttempt = 0;
  /** A run that came due while a switchover held: run once it is called off. */
  private skippedDue: DueReason | null = null;
  /** What the standbys reported applied over the push channel: retention keeps those sets. */
  private readonly applied = new Map<string, AppliedRecord>();
  private maintenance: Promise<void> = Promise.resolve();
  private readonly log: Logger;

  constructor(private readonly opts: BackupRunnerOptions) {
    this.log = opts.logger;
  }

  get running(): RunningBackup | null {
    return this.current;
  }

  get lastRun(): LastRun | null {
    return this.last;
  }

  get lastSuccessAt(): Date | null {
    return this.lastSuccess;
  }

  /** stateDir/last-backup.json (written by runBackup, in or outside the daemon): the last run before this start. */
  async loadLastRun(): Promise<void> {
    const doc = await readLastBackup(this.opts.config.stateDir);
    if (doc === null) return;
    const ok = doc.outcome === 'ok' ? doc : null;
    this.last = {
      outcome: doc.outcome,
      setId: doc.setId || null,
      at: doc.at,
      trigger: null,
      durationSeconds: ok?.durations.total ?? null,
      storedBytes: ok?.storedBytes ?? null,
      durations: ok?.durations ?? null,
      error: doc.outcome === 'failed' ? doc.error : null,
      errorKind: null,
    };
    if (this.last.outcome === 'ok') {
      this.noteSuccess(new Date(doc.at));
      this.setBackupMetrics(this.last);
    }
    this.opts.metrics.lastBackupSuccess.set(this.last.outcome === 'ok' ? 1 : 0);
  }

  /** A set committed at `at` (by this daemon, or by a run outside it that latest.json shows). */
  noteSuccess(at: Date): void {
    if (this.lastSuccess === null || at > this.lastSuccess) this.lastSuccess = at;
    this.opts.metrics.lastBackupTimestamp.set(this.lastSuccess.getTime() / 1000);
  }

  private setBackupMetrics(run: LastRun): void {
    const { metrics } = this.opts;
    metrics.lastBackupDuration.reset();
    for (const [stage, s] of Object.entries(run.durations ?? {})) metrics.lastBackupDuration.set({ stage }, s);
    if (run.storedBytes !== null) metrics.lastBackupStoredBytes.set(run.storedBytes);
  }

  /** A standby reported over the push channel that it applied a set. */
  noteApplied(r: AppliedRecord): void {
    this.applied.set(r.standbyId, r);
  }

  /** The scheduler says a run is due. */
  due(reason: DueReason, scheduledAt: Date): void {
    const { switchover } = this.opts;
    if (switchover.holding()) {
      this.skippedDue ??= reason;
      this.log.info({ reason, scheduledAt: scheduledAt.toISOString() }, `backup due, but a switchover holds the primary: deferred until it ends (${switchover.describeHold()})`);
      return;
    }
    if (this.current) {
      this.log.info({ reason, scheduledAt: scheduledAt.toISOString(), running: this.current.trigger }, 'backup due, but one is already running: skipped');
      return;
    }
    this.log.info({ reason, scheduledAt: scheduledAt.toISOString() }, 'backup due');
    this.backupNow(reason).catch(() => undefined); // reported by backupNow
  }

  /** Run a backup now. Throws kind 'busy' when one is running, 'fenced' when this primary is fenced. */
  backupNow(trigger: Trigger): Promise<BackupResult> {
    const { config, fencing, switchover } = this.opts;
    if (this.opts.isStopping()) return Promise.reject(new TandemError('transient', 'SHUTTING_DOWN', 'the daemon is shutting down; no new backup is started'));
    if (fencing.fenced) return Promise.reject(fencing.error());
    if (trigger !== 'switchover' && switchover.holding()) {
      return Promise.reject(
        new TandemError('busy', 'SWITCHOVER_HOLD', `no backup of site "${config.site}" now: ${switchover.describeHold()}`, {
          hint: 'the switchover ends with this primary fenced or resumed; /status shows it',
        }),
      );
    }
    if (this.current) {
      const r = this.current;
      return Promise.reject(
        new TandemError('busy', 'BACKUP_RUNNING', `a backup of site "${config.site}" is already running in the daemon (${r.trigger}, started ${r.startedAt.toISOString()})`, {
          hint: 'wait for it to finish: `tandem-primary list` shows the new set when it is committed',
        }),
      );
    }
    const ac = new AbortController();
    const progress = new ProgressTracker();
    const startedAt = this.opts.clock.now();
    const log = this.log.child({ trigger });
    const slot = { waiting: false };
    const promise = (async () => {
      try {
        const result = await this.inSlot(ac.signal, log, slot, async () => {
          // Rule 7: a primary that sees a higher epoch than its own stops uploading.
          await fencing.beforeBackup();
          log.info('backup starting');
          // The wrapper refuses new filestore operations once aborted (deletes excepted, for the
          // clean-up), so an abort between two artifacts stops the backup there.
          return runBackup(config, {
            filestore: abortableFilestore(this.opts.filestore, ac.signal),
            logger: log,
            signal: ac.signal,
            progress,
            // The push goes out the moment latest.json names the set, before any local bookkeeping.
            onCommitted: (l) => this.opts.onCommitted(l, trigger),
          });
        });
        this.committed(result, trigger);
        return result;
      } catch (err) {
        this.failed(err, trigger, ac.signal.aborted);
        throw err;
      } finally {
        this.current = null;
      }
    })();
    this.current = { trigger, startedAt, ac, promise, progress, slot };
    return promise;
  }

  /**
   * `fn` once the limiter has a slot for it (at once without a limiter). A wait is logged; an abort
   * while waiting ends the wait at once (the slot, when it comes, passes on unused). Once `fn`
   * started, an abort is its to handle, so the caller waits for its clean-up.
   */
  private inSlot<T>(signal: AbortSignal, log: Logger, slot: { waiting: boolean }, fn: () => Promise<T>): Promise<T> {
    const limiter = this.opts.limiter;
    if (limiter === undefined) return fn();
    let started = false;
    let waitingSince: number | null = null;
    const task = limiter.run(
      async () => {
        started = true;
        slot.waiting = false;
        signal.throwIfAborted();
        if (waitingSince !== null) log.info({ waitedSeconds: Math.round((Date.now() - waitingSince) / 100) / 10, concurrency: limiter.max }, 'a backup slot is free: the backup starts');
        return fn();
      },
      (ahead) => {
        waitingSince = Date.now();
        slot.waiting = true;
        log.info(
          { ahead, running: limiter.active, concurrency: limiter.max },
          `backup waiting for a slot: ${limiter.active} backup${limiter.active === 1 ? '' : 's'} of this daemon's sites run${limiter.active === 1 ? 's' : ''} (concurrency ${limiter.max}), ${ahead} waiting including this one`,
        );
      },
    );
    if (started) return task;
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        if (!started) reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      task.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  private committed(r: BackupResult, trigger: Trigger): void {
    const { metrics } = this.opts;
    const at = this.opts.clock.now();
    this.last = {
      outcome: 'ok',
      setId: r.setId,
      at: at.toISOString(),
      trigger,
      durationSeconds: r.durations.total ?? null,
      storedBytes: r.storedBytes,
      durations: r.durations,
      error: null,
      errorKind: null,
    };
    this.noteSuccess(at);
    this.setBackupMetrics(this.last);
    metrics.lastBackupSuccess.set(1);
    metrics.backupsTotal.inc({ outcome: 'ok' });
    this.opts.onRunEnded?.(this.last);
    this.retryAttempt = 0;
    this.opts.scheduler.cancelRetry();
    this.opts.fencing.committed(r.epoch); // runBackup checked that epoch.json names this server in it

    this.opts.afterCommit();
    this.maintenance = this.maintenance.then(() => this.retention());
  }

  private failed(err: unknown, trigger: Trigger, aborted: boolean): void {
    const { metrics } = this.opts;
    const kind = isTandemError(err) ? err.kind : 'internal';
    const outcome = aborted ? 'aborted' : 'failed';
    this.last = {
      outcome,
      setId: null,
      at: this.opts.clock.now().toISOString(),
      trigger,
      durationSeconds: null,
      storedBytes: null,
      durations: null,
      error: describeError(err),
      errorKind: kind,
    };
    metrics.lastBackupSuccess.set(0);
    metrics.backupsTotal.inc({ outcome });
    this.opts.onRunEnded?.(this.last);
    if (aborted) {
      this.log.warn({ trigger }, 'backup aborted; nothing committed');
      return;
    }
    metrics.backupFailuresTotal.inc({ kind });
    metrics.countIfFilestoreError(err);
    if (kind === 'busy') {
      this.log.warn({ trigger, err }, 'backup not started: another backup of this site is running (outside the daemon)');
      return;
    }
    this.log.error({ trigger, kind, code: isTandemError(err) ? err.code : undefined, err }, 'backup failed; nothing committed');
    if (kind === 'fenced') {
      this.opts.fencing.fence(null, describeError(err));
      return;
    }
    const delays = this.opts.retryDelaysMs;
    if (trigger !== 'request' && trigger !== 'switchover' && kind !== 'config' && kind !== 'integrity' && this.retryAttempt < delays.length) {
      const at = this.opts.scheduler.retryAfter(delays[this.retryAttempt]!);
      this.retryAttempt++;
      if (at) this.log.info({ retryAt: at.toISOString(), attempt: this.retryAttempt }, 'the failed backup will be retried');
    }
  }

  /** POST /v1/backup: the set, or the error with its HTTP status; `onProgress` is told the upload's progress about 4 times a second. */
  async request(onProgress?: (artifacts: ArtifactProgress[]) => void): Promise<{ status: number; body: unknown }> {
    this.log.info('backup requested over HTTP (tandem-primary backup)');
    let timer: NodeJS.Timeout | undefined;
    try {
      const run = this.backupNow('request');
      const tracker = this.current?.progress;
      if (onProgress && tracker) timer = setInterval(() => onProgress(tracker.snapshot()), PROGRESS_EVERY_MS);
      return { status: 200, body: await run };
    } catch (err) {
      const kind = isTandemError(err) ? err.kind : 'internal';
      const status = kind === 'busy' ? 409 : kind === 'fenced' || (isTandemError(err) && err.code === 'SHUTTING_DOWN') ? 503 : 500;
      return { status, body: errorBody(err) };
    } finally {
      clearInterval(timer);
    }
  }

  private async retention(): Promise<void> {
    const { config, metrics } = this.opts;
    if (this.opts.isStopping() || this.opts.fencing.fenced) return;
    try {
      const o = await runRetention(config, {
        filestore: this.opts.filestore,
        verifyKey: this.opts.verifyKey,
        logger: this.log.child({ component: 'retention' }),
        timeZone: this.opts.timeZone,
        extraApplied: [...this.applied.values()],
        now: this.opts.clock.now(),
      });
      this.log.info({ kept: o.plan.keep.length, deleted: o.deleted, failed: o.failed.length }, 'retention done');
      if (o.failed.length > 0) metrics.filestoreErrorsTotal.inc(o.failed.length);
    } catch (err) {
      countFilestoreError(metrics, this.log, 'retention', err);
    }
  }

  /** A switchover was called off (or refused after it waited): run what came due meanwhile. */
  afterSwitchoverCalledOff(): void {
    const reason = this.skippedDue;
    this.skippedDue = null;
    if (reason === null || this.opts.fencing.fenced || this.opts.isStopping()) return;
    this.log.info({ reason }, 'running the backup that came due during the switchover');
    this.due(reason, this.opts.clock.now());
  }

  /** Abort the running backup, if any (nothing of it is committed). */
  abort(reason: TandemError): void {
    this.current?.ac.abort(reason);
  }

  /** Shutdown: abort the running backup and wait for it to clean up, and for retention (at most 10 s). */
  async stop(reason: string): Promise<void> {
    const running = this.current;
    if (running) {
      this.log.warn({ trigger: running.trigger }, 'aborting the running backup; nothing of it will be committed');
      running.ac.abort(new TandemError('transient', 'SHUTDOWN', `the daemon is shutting down (${reason})`));
      await running.promise.catch(() => undefined);
    }
    await Promise.race([this.maintenance, sleep(10_000)]);
  }

  /** The backup part of /status. */
  status(): { backupRunning: unknown; lastBackup: unknown; lastSuccessAt: string | null } {
    const last = this.last;
    return {
      backupRunning: this.current
        ? {
            trigger: this.current.trigger,
            startedAt: this.current.startedAt.toISOString(),
            artifacts: this.current.progress.snapshot(),
            // Only while it waits: other sites' backups hold every slot (concurrency).
            ...(this.current.slot.waiting ? { waitingForSlot: true } : {}),
          }
        : null,
      lastBackup: last
        ? {
            id: last.setId,
            time: last.at,
            duration: last.durationSeconds,
            bytes: last.storedBytes,
            outcome: last.outcome,
            error: last.error,
            trigger: last.trigger,
          }
        : null,
      lastSuccessAt: this.lastSuccess?.toISOString() ?? null,
    };
  }
}

/** How often a waiting client is sent the backup's progress. */
const PROGRESS_EVERY_MS = 250;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
