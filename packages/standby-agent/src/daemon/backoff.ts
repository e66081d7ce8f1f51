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
