import { MetricsRegistry } from '@tandem/shared';
import { Counter, Gauge } from 'prom-client';
import type { AppliedState } from '../apply/state.js';
import type { LagFigures } from './lag.js';

/**
 * The standby daemon's Prometheus metrics, on its own registry (GET /metrics). The lag figures are
 * computed at scrape time from the daemon's state; an unknown figure is NaN (no heartbeat seen, a
 * pending count the filestore could not give), except the recovery point age with nothing applied,
 * which is +Inf: a failover now would lose everything, and an alert on it should fire.
 */
export interface MetricsSource {
  lag(): LagFigures;
  applied(): AppliedState | null;
  websocketConnected(): boolean;
  /** Files deltas (files as content objects): as the status shows them, when there are any. */
  files?(): { pendingDeltas: number; lagSeconds: number | null } | undefined;
  /** WAL mode: the replay figures (wal-lag.ts). */
  wal?(): { pendingFiles: number | null; replayLagSeconds: number | null; refused: unknown } | undefined;
}

/** What the failures counter counts, by what failed. */
export type FailureKind = 'poll' | 'apply' | 'restart' | 'report' | 'recovery' | 'websocket';
export const FAILURE_KINDS: readonly FailureKind[] = ['poll', 'apply', 'restart', 'report', 'recovery', 'websocket'];

export type PollResult = 'unchanged' | 'changed' | 'error';
export type ApplyOutcome = 'applied' | 'failed' | 'interrupted';

const orNaN = (v: number | null): number => (v === null ? Number.NaN : v);

export class StandbyMetrics extends MetricsRegistry {
  readonly appliesTotal: Counter<'outcome'>;
  readonly failuresTotal: Counter<'kind'>;
  readonly filestoreErrorsTotal: Counter;
  readonly pollsTotal: Counter<'result'>;

  /** `site`: one site of several served by one process (every sample labelled site="<site>", no process metrics). */
  constructor(src: MetricsSource, opts: { site?: string } = {}) {
    super(opts);
    const registers = this.registers;
    new Gauge({
      name: 'tandem_standby_recovery_point_age_seconds',
      help: 'What a failover now would lose, in seconds: since the newest applied set was created on the primary (in WAL mode: since the newest write the replayed WAL holds) (+Inf: nothing applied)',
      registers,
      collect() {
        const v = src.lag().recoveryPointAgeSeconds;
        this.set(v === null ? Number.POSITIVE_INFINITY : v);
      },
    });
    new Gauge({
      name: 'tandem_standby_apply_lag_seconds',
      help: 'Seconds from the commit of the newest applied set (latest.json written) to its apply on this standby (NaN: unknown)',
      registers,
      collect() {
        this.set(orNaN(src.lag().applyLagSeconds));
      },
    });
    new Gauge({
      name: 'tandem_standby_files_lag_seconds',
      help: 'Files as content objects: seconds the files are behind while files deltas are pending, 0 when none is (NaN: unknown)',
      registers,
      collect() {
        const f = src.files?.();
        this.set(f === undefined ? 0 : orNaN(f.lagSeconds));
      },
    });
    new Gauge({
      name: 'tandem_standby_files_deltas_pending',
      help: 'Files deltas latest.json names on top of the applied set that this standby has not applied',
      registers,
      collect() {
        this.set(src.files?.()?.pendingDeltas ?? 0);
      },
    });
    new Gauge({
      name: 'tandem_standby_wal_replay_lag_seconds',
      help: 'WAL mode: seconds the replayed WAL trails the newest WAL the primary archived, 0 when none is pending (NaN: unknown or not WAL mode)',
      registers,
      collect() {
        const w = src.wal?.();
        this.set(w === undefined ? Number.NaN : orNaN(w.replayLagSeconds));
      },
    });
    new Gauge({
      name: 'tandem_standby_wal_files_pending',
      help: 'WAL mode: WAL files in the filestore not yet handed to PostgreSQL (NaN: unknown or not WAL mode)',
      registers,
      collect() {
        const w = src.wal?.();
        this.set(w === undefined ? Number.NaN : orNaN(w.pendingFiles));
      },
    });
    new Gauge({
      name: 'tandem_standby_wal_refused',
      help: 'WAL mode: 1 when the newest WAL file fetched was refused (forged, altered, foreign or from a fenced primary) and the replay waits before it',
      registers,
      collect() {
        this.set(src.wal?.()?.refused ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tandem_standby_pending_sets',
      help: 'Committed sets newer than the applied one (NaN: unknown)',
      registers,
      collect() {
        this.set(orNaN(src.lag().pendingSets));
      },
    });
    new Gauge({
      name: 'tandem_standby_primary_heartbeat_age_seconds',
      help: "Seconds since the primary's newest heartbeat (push channel or heartbeat.json; NaN: none seen)",
      registers,
      collect() {
        this.set(orNaN(src.lag().primaryHeartbeatAgeSeconds));
      },
    });
    new Gauge({
      name: 'tandem_standby_latest_stale',
      help: "1 while the primary's signed heartbeat names a newer set than latest.json (an old latest.json put back, or rolled back): this standby does not see new sets",
      registers,
      collect() {
        this.set(src.lag().heartbeatNewerSetId === null ? 0 : 1);
      },
    });
    new Gauge({
      name: 'tandem_standby_last_apply_timestamp_seconds',
      help: 'Unix time at which the applied set was applied (0: none)',
      registers,
      collect() {
        const a = src.applied();
        this.set(a === null ? 0 : Date.parse(a.appliedAt) / 1000);
      },
    });
    new Gauge({
      name: 'tandem_standby_last_apply_duration_seconds',
      help: 'Seconds per stage of the apply of the applied set (db, config, security, files, restore, total)',
      labelNames: ['stage'],
      registers,
      collect() {
        this.reset();
        for (const [stage, s] of Object.entries(src.applied()?.durations ?? {})) {
          if (typeof s === 'number') this.set({ stage }, s);
        }
      },
    });
    new Gauge({
      name: 'tandem_standby_last_apply_bytes',
      help: 'Stored (compressed, encrypted) bytes of the applied set',
      registers,
      collect() {
        this.set(src.applied()?.bytes ?? 0);
      },
    });
    new Gauge({
      name: 'tandem_standby_websocket_connected',
      help: "1 while the push channel to the primary is connected (0 also when none is configured)",
      registers,
      collect() {
        this.set(src.websocketConnected() ? 1 : 0);
      },
    });
    this.appliesTotal = new Counter({ name: 'tandem_standby_applies_total', help: 'Applies started by the daemon, by outcome (applied, failed, interrupted)', labelNames: ['outcome'], registers });
    this.failuresTotal = new Counter({
      name: 'tandem_standby_failures_total',
      help: 'Failures by what failed: poll (latest.json), apply, restart (restartCommand after an applied set), report (standby report), recovery (apply journal), websocket (push channel)',
      labelNames: ['kind'],
      registers,
    });
    this.filestoreErrorsTotal = new Counter({ name: 'tandem_standby_filestore_errors_total', help: 'Filestore requests of the daemon that failed (polls, reports, heartbeat reads, listings)', registers });
    this.pollsTotal = new Counter({ name: 'tandem_standby_polls_total', help: 'Conditional GETs of latest.json, by result (unchanged, changed, error)', labelNames: ['result'], registers });
    for (const outcome of ['applied', 'failed', 'interrupted'] satisfies ApplyOutcome[]) this.appliesTotal.inc({ outcome }, 0);
    for (const kind of FAILURE_KINDS) this.failuresTotal.inc({ kind }, 0);
    for (const result of ['unchanged', 'changed', 'error'] satisfies PollResult[]) this.pollsTotal.inc({ result }, 0);
    this.filestoreErrorsTotal.inc(0);
  }
}
