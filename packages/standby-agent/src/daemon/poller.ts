import type { KeyObject } from 'node:crypto';
import {
  TandemError,
  checkLatest,
  compareSets,
  isNotFound,
  layout,
  type Filestore,
  type LatestPointer,
  type Logger,
  type SetCommitted,
  type StandbyConfig,
} from '@tandem/shared';
import { backoffDelay, jittered, pollBackoff } from './backoff.js';
import type { LastError } from './last-error.js';
import type { StandbyMetrics } from './metrics.js';
import type { Observations } from './observed.js';
import type { PollInfo } from './status-doc.js';
import { LatestWatcher } from './watch-latest.js';

/** How many quick re-checks a push gets when latest.json does not name its set yet. */
const PUSH_HINT_TRIES = 5;

export interface LatestPollerOptions {
  config: StandbyConfig;
  fs: Filestore;
  verifyKey: KeyObject;
  logger: Logger;
  metrics: StandbyMetrics;
  errors: LastError;
  observed: Observations;
  random: () => number;
  /** Aborted by the stop. */
  signal: AbortSignal;
  stopping(): boolean;
  /** Directory filestores: watch latest.json for changes (default true). */
  watch: boolean;
  /** A change event of latest.json: check now. */
  onChange(): void;
  /** The filestore answers again after failed polls. */
  onFilestoreBack(): void;
}

/**
 * Finding out that a set is new: the conditional GET of latest.json every pollInterval ±10%
 * (verified, then kept in the observations), for a directory filestore change events of
 * latest.json (watch-latest.ts), and the hints of the push channel. What is applied is always what
 * the signed latest.json names; a push only makes the daemon look sooner.
 */
export class LatestPoller {
  #poll: PollInfo;
  #version: string | undefined;
  #failures = 0;
  #olderWarned: string | null = null;
  #hint: { msg: SetCommitted; tries: number } | null = null;
  #watcher: LatestWatcher | null = null;

  constructor(private readonly o: LatestPollerOptions) {
    this.#poll = { intervalSeconds: o.config.pollInterval / 1000, lastAt: null, lastResult: null, consecutiveErrors: 0, nextAt: null };
  }

  /** The polling as /status shows it. */
  get poll(): PollInfo {
    return this.#poll;
  }

  /** The loop sleeps until then: the next poll, unless something wakes it sooner. */
  nextPollAt(at: Date): void {
    this.#poll.nextAt = at.toISOString();
  }

  /** When latest.json was last read: the last poll, if it succeeded. */
  latestReadAt(): Date | null {
    return this.#poll.lastAt !== null && this.#poll.lastResult !== 'error' ? new Date(this.#poll.lastAt) : null;
  }

  /** Directory filestores: starts watching latest.json (a directory that does not exist yet: at a later poll). */
  async startWatching(): Promise<void> {
    const loc = this.o.config.filestore.location;
    if (loc.scheme !== 'file' || !this.o.watch) return;
    this.#watcher = new LatestWatcher({ root: loc.root, site: this.o.config.site, logger: this.o.logger, onChange: () => this.o.onChange() });
    await this.#watcher.start();
  }

  async stopWatching(): Promise<void> {
    await this.#watcher?.stop();
  }

  /** One look at latest.json (the reason is logged when it names a new set); false when the filestore failed. */
  async check(reason: string): Promise<boolean> {
    // A filestore directory that did not exist at start: watch it once it does.
    if (this.#watcher !== null && !this.#watcher.watching) await this.#watcher.start();
    return this.#pollLatest(reason);
  }

  /** The time to the next poll after one that succeeded (`ok`) or failed. */
  nextDelay(ok: boolean): number {
    const { pollInterval } = this.o.config;
    return ok ? jittered(pollInterval, 0.1, this.o.random) : backoffDelay(this.#failures, pollBackoff(pollInterval), this.o.random);
  }

  /**
   * latest.json (as last verified) against the applied set: the set to apply when it is newer. One
   * naming an older set is an error, noted once per set: the daemon never goes back.
   */
  newerSet(): LatestPointer | null {
    const { observed, errors } = this.o;
    const latest = observed.latest?.pointer ?? null;
    const applied = observed.applied;
    const newer = latest !== null && (applied === null || compareSets(latest, applied) > 0);
    const older = latest !== null && applied !== null && compareSets(latest, applied) < 0;
    if (!older) errors.clear('latest');
    if (older && applied !== null && this.#olderWarned !== latest.setId) {
      this.#olderWarned = latest.setId;
      errors.note(
        'latest',
        new TandemError('precondition', 'LATEST_OLDER', `latest.json names set ${latest.setId}, older than the applied set ${applied.setId}: not going back`, {
          hint: 'check that the primary and this standby use the same filestore and site',
        }),
      );
    }
    return newer ? latest : null;
  }

  /** A push announced a set: true when it is newer than the applied one (it is then looked for at once). */
  pushed(msg: SetCommitted): boolean {
    const applied = this.o.observed.applied;
    if (applied !== null && compareSets(msg, applied) <= 0) return false;
    this.#hint = { msg, tries: 0 };
    return true;
  }

  /**
   * A push named a set the filestore does not show yet: the time to look again (soon, a few times),
   * or null when there is no such push (any more).
   */
  hintDelay(): number | null {
    const hint = this.#hint;
    if (hint === null) return null;
    const seen = this.o.observed.latest?.pointer ?? null;
    const applied = this.o.observed.applied;
    if ((seen !== null && compareSets(seen, hint.msg) >= 0) || (applied !== null && compareSets(applied, hint.msg) >= 0)) {
      this.#hint = null;
      return null;
    }
    if (hint.tries >= PUSH_HINT_TRIES) {
      this.o.logger.warn({ setId: hint.msg.setId }, 'the primary announced a set that latest.json does not name; polling will pick it up');
      this.#hint = null;
      return null;
    }
    hint.tries++;
    return 200 * 2 ** hint.tries;
  }

  /** The conditional GET of latest.json; false when the filestore failed. */
  async #pollLatest(reason: string): Promise<boolean> {
    const { config, fs, metrics, errors, observed } = this.o;
    const key = layout.latest(config.site);
    const at = new Date().toISOString();
    try {
      const r = await fs.getIfChanged(key, this.#version, { signal: this.o.signal });
      this.#succeeded(at, r.changed ? 'changed' : 'unchanged');
      metrics.pollsTotal.inc({ result: r.changed ? 'changed' : 'unchanged' });
      if (!r.changed) return true;
      this.#version = r.info.version;
      const label = `${fs.description}/${key}`;
      try {
        const p = checkLatest(r.body, this.o.verifyKey, config.site, label);
        if (observed.latest?.pointer.setId !== p.setId) this.o.logger.info({ setId: p.setId, committedAt: p.committedAt, reason }, 'latest.json names a new set');
        observed.latest = { pointer: p, version: r.info.version };
      } catch (err) {
        // Keep what was last verified; these bytes are not read again until latest.json changes.
        metrics.failuresTotal.inc({ kind: 'poll' });
        errors.note('poll', err);
      }
      return true;
    } catch (err) {
      if (this.o.stopping()) return false;
      if (isNotFound(err)) {
        if (this.#poll.lastResult !== 'missing') this.o.logger.info({ key }, 'no latest.json yet: the primary has not committed a set');
        this.#succeeded(at, 'missing');
        metrics.pollsTotal.inc({ result: 'unchanged' });
        this.#version = undefined;
        return true;
      }
      this.#failures++;
      this.#poll = { ...this.#poll, lastAt: at, lastResult: 'error', consecutiveErrors: this.#failures };
      metrics.pollsTotal.inc({ result: 'error' });
      metrics.filestoreErrorsTotal.inc();
      metrics.failuresTotal.inc({ kind: 'poll' });
      errors.note('poll', err, this.#failures === 1 ? 'warn' : 'debug');
      return false;
    }
  }

  #succeeded(at: string, result: PollInfo['lastResult']): void {
    if (this.#failures > 0) {
      this.o.logger.info({ failedPolls: this.#failures }, 'the filestore answers again');
      this.o.onFilestoreBack();
    }
    this.#failures = 0;
    this.#poll = { ...this.#poll, lastAt: at, lastResult: result, consecutiveErrors: 0 };
    this.o.errors.clear('poll');
  }
}
