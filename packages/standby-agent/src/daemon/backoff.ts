import { isTandemError } from '@tandem/shared';
import { isFilestoreError } from './last-error.js';

/**
 * Retry timing for the daemon: exponential backoff, capped, with "equal jitter" (half the delay
 * fixed, half random) so that many standbys that lost the same filestore or primary at the same
 * moment do not come back in lockstep, and no retry ever comes immediately.
 */
export interface BackoffPolicy {
  /** Delay before the first retry, in ms. */
  baseMs: number;
  /** Upper bound for any delay, in ms. */
  capMs: number;
}

/** Delay before retry number `attempt` (1 = first retry after one failure). */
export function backoffDelay(attempt: number, p: BackoffPolicy, random: () => number = Math.random): number {
  const n = Math.max(1, Math.floor(attempt));
  const cap = Math.max(1, p.capMs);
  // 2^30 is far past any cap; keeps the arithmetic finite for absurd attempt counts.
  const d = Math.min(cap, Math.max(1, p.baseMs) * 2 ** Math.min(n - 1, 30));
  return Math.round(d / 2 + random() * (d / 2));
}

/** `ms` ± `fraction` (e.g. 0.1 for ±10%): spreads the polls of many standbys over time. */
export function jittered(ms: number, fraction: number, random: () => number = Math.random): number {
  return Math.max(1, Math.round(ms * (1 - fraction + 2 * fraction * random())));
}

/** Polls of latest.json that failed: from 1 s (or pollInterval, if shorter) up to pollInterval. */
export const pollBackoff = (pollIntervalMs: number): BackoffPolicy => ({ baseMs: Math.min(1_000, pollIntervalMs), capMs: pollIntervalMs });

/** A round of the daemon's loop that failed on a bug: from 1 s up to pollInterval. */
export const loopBackoff = (pollIntervalMs: number): BackoffPolicy => ({ baseMs: 1_000, capMs: pollIntervalMs });

/**
 * A failed apply or recovery. A set that failed integrity or fencing checks will fail them again:
 * 5 min to 1 h, until latest.json names another set. A lock someone else holds (an `apply` by hand)
 * is soon free: 1 s up to pollInterval. Anything else: 2 s up to max(pollInterval, 5 min).
 */
export function applyBackoff(err: unknown, pollIntervalMs: number): BackoffPolicy {
  if (isTandemError(err, 'integrity') || isTandemError(err, 'fenced')) return { baseMs: 5 * 60_000, capMs: 60 * 60_000 };
  if (isTandemError(err, 'busy')) return { baseMs: 1_000, capMs: pollIntervalMs };
  return { baseMs: 2_000, capMs: Math.max(pollIntervalMs, 5 * 60_000) };
}

export interface ApplyFailure {
  setId: string;
  /** Failures of this set in a row. */
  count: number;
  /** Not retried before this time (ms since the epoch). */
  retryAt: number;
  /** The filestore failed: retried as soon as a poll finds it answering again. */
  filestore: boolean;
}

/**
 * The retry state of failed applies (and recoveries): one set at a time, the one that failed last.
 * A success, or the filestore answering again after it failed, ends the wait.
 */
export class ApplyRetries {
  #failure: ApplyFailure | null = null;

  constructor(
    private readonly pollIntervalMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  get failure(): ApplyFailure | null {
    return this.#failure;
  }

  /** Records a failure of `setId`; returns it, with the delay before the retry. */
  failed(setId: string, err: unknown, now = Date.now()): ApplyFailure & { delayMs: number } {
    const count = this.#failure?.setId === setId ? this.#failure.count + 1 : 1;
    const delayMs = backoffDelay(count, applyBackoff(err, this.pollIntervalMs), this.random);
    this.#failure = { setId, count, retryAt: now + delayMs, filestore: isFilestoreError(err) || isTandemError(err, 'transient') };
    return { ...this.#failure, delayMs };
  }

  succeeded(): void {
    this.#failure = null;
  }

  /** True while a failed apply (or recovery) of this set waits for its retry time. */
  waitingFor(setId: string, now = Date.now()): boolean {
    const f = this.#failure;
    return f !== null && f.setId === setId && now < f.retryAt;
  }

  /** The filestore answers again: an apply that failed on it need not wait out its backoff. */
  filestoreAnswers(): void {
    if (this.#failure?.filestore === true) this.#failure.retryAt = 0;
  }
}
