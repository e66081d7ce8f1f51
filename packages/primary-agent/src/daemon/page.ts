import { EventList, HISTORY_WINDOW_MS, SAMPLE_EVERY_MS, SampleRing, formatDuration, startSampling, type Sampled } from '@tandem/shared';
import type { LastRun } from './backup-runner.js';
import type { FencedState } from './fencing.js';
import type { HeartbeatState } from './heartbeat.js';
import type { LatestKnown, StandbyStatus } from './standbys.js';

/**
 * What the primary daemon has seen, for its status page (GET /status/history): the age of the
 * newest committed set and each connected standby's lag (as it reported over the push channel),
 * once a minute and whenever the newest set, the standbys connected or their being behind changed,
 * over the last 24 h; the backup runs, newest first; and the problems of the moment in words.
 */
export interface PrimarySample {
  /** Seconds since the newest committed set was made: what losing this server now would lose. */
  newestSetAgeSeconds: number | null;
  newestSetId: string | null;
  standbysConnected: number;
  /** Per connected standby: 0 when it has applied the newest set, else seconds since that was committed. */
  standbys: Record<string, number>;
  fenced: boolean;
}

export interface BackupEntry {
  setId: string | null;
  /** When the run ended. */
  at: string;
  trigger: string | null;
  outcome: LastRun['outcome'];
  durationSeconds: number | null;
  storedBytes: number | null;
  durations: Record<string, number> | null;
  error: string | null;
}

export interface PrimaryHistoryDoc {
  agent: 'primary';
  now: string;
  startedAt: string | null;
  windowSeconds: number;
  sampleEverySeconds: number;
  samples: Array<Sampled<PrimarySample>>;
  backups: BackupEntry[];
  /** The standbys the config lists (standbys:). */
  configuredStandbys: string[];
  problems: string[];
}

export interface PrimaryHistorySource {
  now(): Date;
  latest(): LatestKnown | null;
  standbys(): StandbyStatus[];
  fenced(): boolean;
}

/** What the problems are judged from: the daemon's state of the moment. */
export interface PrimaryPageState {
  now: Date;
  epoch: number | null;
  fenced: FencedState | null;
  lastRun: LastRun | null;
  latest: LatestKnown | null;
  heartbeat: HeartbeatState;
  standbys: StandbyStatus[];
  configuredStandbys: string[];
  /** describeHold() while a switchover holds this primary, else null. */
  switchoverHold: string | null;
}

/** The backup runs the page lists. */
const BACKUPS_KEPT = 50;
/** A connected standby this far behind the newest set is a problem (the alert rule's threshold too). */
export const STANDBY_BEHIND_SECONDS = 3600;

export class PrimaryHistory {
  readonly #ring = new SampleRing<PrimarySample>((s) =>
    [s.newestSetId, s.fenced, ...Object.entries(s.standbys).map(([id, lag]) => `${id}:${lag > 0 ? 'behind' : 'ok'}`)].join('|'),
  );
  readonly #backups = new EventList<BackupEntry>(BACKUPS_KEPT, (b) => `${b.at} ${b.setId ?? ''}`);
  #timer: { stop(): void } | null = null;
  #startedAt: Date | null = null;

  constructor(private readonly src: PrimaryHistorySource) {}

  /** The first sample now, then one a minute. */
  start(): void {
    this.#startedAt = this.src.now();
    this.sample(true);
    this.#timer = startSampling(() => this.sample(true));
  }

  stop(): void {
    this.#timer?.stop();
    this.#timer = null;
  }

  /** A backup run ended (or, at start, the last one before it). */
  noteRun(run: LastRun): void {
    this.#backups.add({
      setId: run.setId,
      at: run.at,
      trigger: run.trigger,
      outcome: run.outcome,
      durationSeconds: run.durationSeconds,
      storedBytes: run.storedBytes,
      durations: run.durations,
      error: run.error,
    });
    this.sample();
  }

  /** Takes a sample if something changed (or `force`: the minute is up). */
  sample(force = false): void {
    const now = this.src.now().getTime();
    const latest = this.src.latest();
    const standbys: Record<string, number> = {};
    for (const s of this.src.standbys()) if (s.standbyId !== null) standbys[s.standbyId] = s.lagSeconds;
    this.#ring.offer(
      {
        newestSetAgeSeconds: latest === null ? null : Math.max(0, Math.round((now - Date.parse(latest.createdAt)) / 1000)),
        newestSetId: latest?.setId ?? null,
        standbysConnected: Object.keys(standbys).length,
        standbys,
        fenced: this.src.fenced(),
      },
      force,
    );
  }

  doc(state: PrimaryPageState): PrimaryHistoryDoc {
    this.sample();
    return {
      agent: 'primary',
      now: state.now.toISOString(),
      startedAt: this.#startedAt?.toISOString() ?? null,
      windowSeconds: HISTORY_WINDOW_MS / 1000,
      sampleEverySeconds: SAMPLE_EVERY_MS / 1000,
      samples: this.#ring.list(),
      backups: this.#backups.list(),
      configuredStandbys: state.configuredStandbys,
      problems: primaryProblems(state),
    };
  }
}

const when = (iso: string | null | undefined): string => (iso ? iso.replace(/\.\d{3}Z$/, 'Z') : '?');
const ago = (seconds: number): string => formatDuration(seconds * 1000);

/** What is wrong on this primary now, each in a sentence an operator can act on; empty: nothing. */
export function primaryProblems(s: PrimaryPageState): string[] {
  const out: string[] = [];
  if (s.fenced !== null) {
    const epoch = s.fenced.filestoreEpoch === null ? '' : ` (the filestore is at epoch ${s.fenced.filestoreEpoch})`;
    out.push(`This primary is fenced since ${when(s.fenced.at)}${epoch}: ${s.fenced.why}. It makes no more backups.`);
  }
  if (s.switchoverHold !== null) out.push(`A switchover holds this primary (the site's writes are stopped, no backups): ${s.switchoverHold}.`);
  const r = s.lastRun;
  if (r !== null && r.outcome === 'failed') out.push(`The last backup${r.trigger ? ` (${r.trigger})` : ''} failed at ${when(r.at)}: ${r.error ?? 'no reason recorded'}`);
  if (r !== null && r.outcome === 'aborted') out.push(`The last backup${r.trigger ? ` (${r.trigger})` : ''} was aborted at ${when(r.at)}: nothing of it was committed.`);
  if (s.latest === null && s.fenced === null) out.push('No set has been committed yet: a standby has nothing to apply, and a failover now would lose everything.');
  if (s.heartbeat.lastError !== null) out.push(`heartbeat.json could not be written: ${s.heartbeat.lastError}`);
  const connected = new Set(s.standbys.map((x) => x.standbyId));
  const missing = s.configuredStandbys.filter((id) => !connected.has(id));
  if (s.fenced === null && missing.length > 0) {
    out.push(`${missing.length === 1 ? `Standby ${missing[0]} is` : `Standbys ${missing.join(', ')} are`} not connected to the push channel: down, or applying by polling only.`);
  }
  for (const x of s.standbys) {
    if (x.lagSeconds > STANDBY_BEHIND_SECONDS && s.latest !== null) {
      out.push(`Standby ${x.standbyId} has not applied ${s.latest.setId}, committed ${ago(x.lagSeconds)} ago (it has ${x.appliedSetId ?? 'nothing'}).`);
    }
  }
  return out;
}
