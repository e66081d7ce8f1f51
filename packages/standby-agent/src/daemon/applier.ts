import { TandemError, acquireLock, isTandemError, type Filestore, type LatestPointer, type Logger, type StandbyConfig } from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { refuseIfPromoted } from '../apply/promoted.js';
import { recover } from '../apply/recover.js';
import { runApply } from '../apply/run-apply.js';
import { stateFiles } from '../apply/state.js';
import { ApplyRetries } from './backoff.js';
import { isFilestoreError, type LastError } from './last-error.js';
import type { StandbyMetrics } from './metrics.js';
import type { Observations } from './observed.js';
import type { Reporter } from './reporter.js';

export interface ApplierOptions {
  config: StandbyConfig;
  fs: Filestore;
  logger: Logger;
  metrics: StandbyMetrics;
  errors: LastError;
  observed: Observations;
  reporter: Reporter;
  random: () => number;
  stopping(): boolean;
  /** promote ran here (PROMOTED), or this server is the site's primary (THIS_IS_THE_PRIMARY): the daemon must stop. */
  die(err: TandemError): void;
  /**
   * One process serving several sites: every apply and recovery runs inside this, which lets at
   * most `concurrency` of them (across the sites) run at once. Absent: at once.
   */
  limit?: <T>(what: string, fn: () => Promise<T>) => Promise<T>;
}

/** What an apply or recovery does when its turn comes after the daemon began to stop: nothing. */
const SKIPPED = Symbol('skipped: stopping');

/**
 * The daemon's applies, through the apply engine (runApply), and the recovery of an interrupted
 * one (the journal). One at a time: the daemon's loop calls them. A failure is recorded for its
 * retry (backoff.ts) and never thrown: the loop goes on.
 */
export class Applier {
  /** The apply (or recovery) running now. */
  applying: { setId: string | null; since: string } | null = null;
  readonly retries: ApplyRetries;
  #abort: AbortController | null = null;

  constructor(private readonly o: ApplierOptions) {
    this.retries = new ApplyRetries(o.config.pollInterval, o.random);
  }

  /** Aborts the apply in progress (staging rolls back; a switch already under way finishes). */
  abort(reason: TandemError): void {
    this.#abort?.abort(reason);
  }

  async apply(latest: LatestPointer): Promise<void> {
    const { metrics, errors, observed } = this.o;
    const log = this.o.logger.child({ setId: latest.setId });
    const abort = new AbortController();
    this.#abort = abort;
    try {
      const r = await this.#limited(`the apply of set ${latest.setId}`, () => {
        this.applying = { setId: latest.setId, since: new Date().toISOString() };
        return runApply(this.o.config, { filestore: this.o.fs, logger: log, signal: abort.signal, latest, caller: 'daemon' });
      });
      if (r === SKIPPED) return;
      observed.applied = r.applied;
      this.retries.succeeded();
      errors.clear('apply', 'recovery');
      if (r.status === 'applied') {
        metrics.appliesTotal.inc({ outcome: 'applied' });
        log.info({ appliedSetId: r.applied.setId, seconds: r.applied.durations.total, bytes: r.applied.bytes }, 'set applied by the daemon');
      }
      if (r.restartError !== undefined) {
        metrics.failuresTotal.inc({ kind: 'restart' });
        errors.note('restart', r.restartError);
      } else {
        errors.clear('restart');
      }
      await this.o.reporter.reportIfNeeded(observed.applied);
    } catch (err) {
      this.#failed(latest.setId, err, 'apply');
    } finally {
      this.applying = null;
      this.#abort = null;
    }
  }

  /**
   * An apply that was interrupted (crash, kill, a stop past its grace period) is finished or rolled
   * back, as `tandem-standby apply` does, under the same lock.
   */
  async recoverJournal(): Promise<void> {
    const { config, metrics, errors, observed } = this.o;
    const journal = await readJournal(config.stateDir);
    if (journal === null) return;
    try {
      const done = await this.#limited(`the recovery of the interrupted apply of set ${journal.setId}`, async () => {
        this.applying = { setId: journal.setId, since: new Date().toISOString() };
        const lock = await acquireLock(stateFiles(config.stateDir).lock, 'apply', `an apply or promote of site "${config.site}"`);
        try {
          await refuseIfPromoted(config, 'daemon');
          const r = await recover(config, this.o.logger);
          this.retries.succeeded();
          if (r.action === 'completed') {
            observed.applied = r.finish.applied;
            if (r.finish.restartError !== undefined) {
              metrics.failuresTotal.inc({ kind: 'restart' });
              errors.note('restart', r.finish.restartError);
            }
          }
        } finally {
          await lock.release();
        }
      });
      if (done === SKIPPED) return;
      await this.o.reporter.reportIfNeeded(observed.applied);
    } catch (err) {
      this.#failed(journal.setId, err, 'recovery');
    } finally {
      this.applying = null;
    }
  }

  /**
   * `fn` through the limit of the process (several sites), or at once. A turn that comes after the
   * stop began (the wait for it outlasted the sites' other applies) runs nothing.
   */
  async #limited<T>(what: string, fn: () => Promise<T>): Promise<T | typeof SKIPPED> {
    if (this.o.limit === undefined) return fn();
    return this.o.limit(what, async () => (this.o.stopping() ? SKIPPED : fn()));
  }

  #failed(setId: string, err: unknown, what: 'apply' | 'recovery'): void {
    const { metrics } = this.o;
    if (isTandemError(err) && (err.code === 'PROMOTED' || err.code === 'THIS_IS_THE_PRIMARY')) {
      this.o.die(err);
      return;
    }
    if (this.o.stopping() && isTandemError(err) && err.code === 'INTERRUPTED') {
      metrics.appliesTotal.inc({ outcome: 'interrupted' });
      this.o.logger.warn({ setId, err }, 'apply interrupted by the stop');
      return;
    }
    if (what === 'apply') metrics.appliesTotal.inc({ outcome: 'failed' });
    metrics.failuresTotal.inc({ kind: what });
    if (isFilestoreError(err)) metrics.filestoreErrorsTotal.inc();
    const f = this.retries.failed(setId, err);
    this.o.errors.note(what, err, 'error', { attempt: f.count, retryInMs: f.delayMs });
  }
}
