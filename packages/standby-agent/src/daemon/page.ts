import { EventList, HISTORY_WINDOW_MS, SAMPLE_EVERY_MS, SampleRing, formatDuration, isStoppedHeartbeat, startSampling, type Sampled } from '@tandem/shared';
import type { AppliedState } from '../apply/state.js';
import type { LagFigures } from './lag.js';
import type { StandbyStatusDoc } from './status-doc.js';

/**
 * What the standby daemon has seen, for its status page (GET /status/history): the lag figures
 * once a minute and whenever the applied set, the pending count, the push channel or the primary's
 * heartbeat (seen or not) changed, over the last 24 h; the sets applied, newest first; and the
 * problems of the moment in words.
 */
export interface StandbySample {
  recoveryPointAgeSeconds: number | null;
  applyLagSeconds: number | null;
  pendingSets: number | null;
  primaryHeartbeatAgeSeconds: number | null;
  /** null: no push channel configured. */
  pushConnected: boolean | null;
  appliedSetId: string | null;
  latestStale: boolean;
}

export interface AppliedEntry {
  setId: string;
  createdAt: string;
  committedAt: string | null;
  appliedAt: string;
  applyLagSeconds: number | null;
  bytes: number;
  /** Seconds per stage of the apply. */
  durations: Record<string, number>;
}

export interface StandbyHistoryDoc {
  agent: 'standby';
  now: string;
  startedAt: string | null;
  windowSeconds: number;
  sampleEverySeconds: number;
  samples: Array<Sampled<StandbySample>>;
  applied: AppliedEntry[];
  problems: string[];
}

export interface StandbyHistorySource {
  lag(): LagFigures;
  applied(): AppliedState | null;
  /** null: no push channel configured. */
  pushConnected(): boolean | null;
}

/** The sets applied that the page lists. */
const APPLIED_KEPT = 50;

const round = (v: number | null, digits = 1): number | null => (v === null ? null : Math.round(v * 10 ** digits) / 10 ** digits);

export class StandbyHistory {
  readonly #ring = new SampleRing<StandbySample>((s) => [s.appliedSetId, s.pendingSets, s.pushConnected, s.latestStale, s.primaryHeartbeatAgeSeconds === null].join('|'));
  readonly #applied = new EventList<AppliedEntry>(APPLIED_KEPT, (a) => `${a.setId}@${a.appliedAt}`);
  #timer: { stop(): void } | null = null;
  #startedAt: Date | null = null;

  constructor(private readonly src: StandbyHistorySource) {}

  /** The first sample now, then one a minute. */
  start(): void {
    this.#startedAt = new Date();
    this.sample(true);
    this.#timer = startSampling(() => this.sample(true));
  }

  stop(): void {
    this.#timer?.stop();
    this.#timer = null;
  }

  /** Takes a sample if something changed (or `force`: the minute is up), and notes a newly applied set. */
  sample(force = false): void {
    const a = this.src.applied();
    if (a !== null && !this.#applied.has(`${a.setId}@${a.appliedAt}`)) {
      const committedAt = typeof a.committedAt === 'string' ? a.committedAt : null;
      this.#applied.add({
        setId: a.setId,
        createdAt: a.createdAt,
        committedAt,
        appliedAt: a.appliedAt,
        applyLagSeconds: committedAt === null ? null : Math.max(0, (Date.parse(a.appliedAt) - Date.parse(committedAt)) / 1000),
        bytes: a.bytes,
        durations: a.durations,
      });
    }
    const f = this.src.lag();
    this.#ring.offer(
      {
        recoveryPointAgeSeconds: round(f.recoveryPointAgeSeconds, 0),
        applyLagSeconds: round(f.applyLagSeconds, 3),
        pendingSets: f.pendingSets,
        primaryHeartbeatAgeSeconds: round(f.primaryHeartbeatAgeSeconds, 0),
        pushConnected: this.src.pushConnected(),
        appliedSetId: a?.setId ?? null,
        latestStale: f.heartbeatNewerSetId !== null,
      },
      force,
    );
  }

  /** GET /status/history, beside `status` (the daemon's /status of the same moment). */
  doc(status: StandbyStatusDoc, heartbeatStaleAfterMs: number): StandbyHistoryDoc {
    this.sample();
    return {
      agent: 'standby',
      now: status.now,
      startedAt: this.#startedAt?.toISOString() ?? null,
      windowSeconds: HISTORY_WINDOW_MS / 1000,
      sampleEverySeconds: SAMPLE_EVERY_MS / 1000,
      samples: this.#ring.list(),
      applied: this.#applied.list(),
      problems: standbyProblems(status, heartbeatStaleAfterMs),
    };
  }
}

const when = (iso: string | null | undefined): string => (iso ? iso.replace(/\.\d{3}Z$/, 'Z') : '?');
const ago = (seconds: number): string => formatDuration(seconds * 1000);

/** What is wrong on this standby now, each in a sentence an operator can act on; empty: nothing. */
export function standbyProblems(d: StandbyStatusDoc, heartbeatStaleAfterMs: number): string[] {
  const out: string[] = [];
  if (d.promoted !== null) out.push(`This server was promoted to primary at ${when(d.promoted.promotedAt)}: it applies no more sets.`);
  if (d.appliedSetId === null && d.applying === null) out.push('Nothing is applied yet: a failover now would lose everything.');
  if (d.heartbeatNewerSetId !== null) {
    out.push(
      `latest.json hides set ${d.heartbeatNewerSetId}: the primary's signed heartbeat names it, latest.json names ${d.latestSetId ?? 'none'}. ` +
        'An old latest.json was put back (or rolled back), and this standby does not see the new sets.',
    );
  }
  const hb = d.primaryHeartbeatAgeSeconds;
  if (hb === null) out.push('No heartbeat from the primary seen: is `tandem-primary run` running?');
  else if (d.primaryHeartbeat !== null && isStoppedHeartbeat(d.primaryHeartbeat)) {
    out.push(`The primary's daemon stopped at ${when(d.primaryHeartbeat.at)} (its last heartbeat said so): no backups are made until it runs again.`);
  } else if (hb * 1000 > heartbeatStaleAfterMs) out.push(`The primary's last heartbeat is ${ago(hb)} old (stale after ${ago(heartbeatStaleAfterMs / 1000)}): the primary, or the way to it, may be down.`);
  if (d.push !== null && !d.push.connected) {
    const why = d.push.lastError ? `: ${d.push.lastError.message}` : '';
    const poll = d.poll ? `; polling every ${ago(d.poll.intervalSeconds)} covers it` : '';
    out.push(`The push channel to ${d.push.url} is down since ${when(d.push.since)} (${d.push.failures} failed attempts${why})${poll}.`);
  }
  if (d.pendingSets !== null && d.pendingSets > 0 && d.applying === null) {
    const waited = d.latestCommittedAt === null ? null : (Date.parse(d.now) - Date.parse(d.latestCommittedAt)) / 1000;
    const grace = 2 * (d.poll?.intervalSeconds ?? 60);
    if (waited === null || waited > grace) out.push(`${d.pendingSets} committed set(s) not applied yet${d.latestSetId ? `, the newest ${d.latestSetId}` : ''}${waited === null ? '' : ` (committed ${ago(waited)} ago)`}.`);
  }
  if (d.unfinishedApply !== null && d.applying?.setId !== d.unfinishedApply.setId) {
    out.push(`An apply of ${d.unfinishedApply.setId} was interrupted (phase ${d.unfinishedApply.phase}, started ${when(d.unfinishedApply.startedAt)}): the next apply finishes or rolls it back.`);
  }
  if (d.lastError !== null) out.push(`The last ${d.lastError.what} failed at ${when(d.lastError.at)}: ${d.lastError.message}`);
  out.push(...d.problems);
  return out;
}
