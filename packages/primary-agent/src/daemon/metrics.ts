import { MetricsRegistry, isFilestoreError, type ErrorKind } from '@tandem/shared';
import { Counter, Gauge } from 'prom-client';

/**
 * The primary daemon's Prometheus metrics, on its own registry (served at GET /metrics).
 * Standby figures are computed at scrape time from the live connections; they are the primary's
 * view (tandem_primary_*), not the standby's own figures (tandem_standby_*, from the standby).
 * Every labelled counter has each of its label sets from the start, at 0: a rate or an alert on
 * it works before the first event.
 */
export interface StandbyLag {
  standbyId: string;
  lagSeconds: number;
}

/** Every kind a backup failure can have (tandem_backup_failures_total{kind}): all of ErrorKind. */
export const BACKUP_FAILURE_KINDS = ['config', 'not-found', 'transient', 'permanent', 'integrity', 'precondition', 'fenced', 'busy', 'external', 'internal'] as const satisfies readonly ErrorKind[];
// A kind added to ErrorKind must be added above (this fails to compile otherwise).
const allKinds: Exclude<ErrorKind, (typeof BACKUP_FAILURE_KINDS)[number]> extends never ? true : never = true;
void allKinds;

export type BackupOutcome = 'ok' | 'failed' | 'aborted';
export const BACKUP_OUTCOMES: readonly BackupOutcome[] = ['ok', 'failed', 'aborted'];

export class DaemonMetrics extends MetricsRegistry {
  readonly lastBackupTimestamp: Gauge;
  readonly lastBackupSuccess: Gauge;
  readonly lastBackupDuration: Gauge<'stage'>;
  readonly lastBackupStoredBytes: Gauge;
  readonly backupsTotal: Counter<'outcome'>;
  readonly backupFailuresTotal: Counter<'kind'>;
  readonly nextBackupTimestamp: Gauge;
  readonly filestoreErrorsTotal: Counter;
  readonly heartbeatTimestamp: Gauge;
  readonly fenced: Gauge;
  readonly switchoverHeld: Gauge;
  readonly filesDeltasTotal: Counter;

  /**
   * `site`: this daemon serves several sites; every sample is labelled site="<site>" and the process
   * metrics are left to the host's own registry (shared/metrics.ts).
   */
  constructor(
    live: {
      standbys(): StandbyLag[];
      nextRunAt(): Date | null;
      /** WAL mode: the archiver as the daemon last read it (wal-timer.ts); undefined in dump mode. */
      wal?(): { lastArchivedAt: string | null; failing: boolean; pendingSeconds: number } | null | undefined;
    },
    site?: string,
  ) {
    super(site === undefined ? {} : { site });
    const standbys = () => live.standbys();
    const registers = this.registers;
    this.lastBackupTimestamp = new Gauge({
      name: 'tandem_last_backup_timestamp_seconds',
      help: 'Unix time at which the last successful backup was committed',
      registers,
    });
    this.lastBackupSuccess = new Gauge({ name: 'tandem_last_backup_success', help: '1 if the last backup run committed its set, 0 if it failed', registers });
    this.lastBackupDuration = new Gauge({
      name: 'tandem_last_backup_duration_seconds',
      help: 'Seconds per stage of the last successful backup (db, config, security, files, commit, total)',
      labelNames: ['stage'],
      registers,
    });
    this.lastBackupStoredBytes = new Gauge({ name: 'tandem_last_backup_stored_bytes', help: 'Stored (compressed, encrypted) bytes of the last successful backup', registers });
    this.backupsTotal = new Counter({ name: 'tandem_backups_total', help: 'Backup runs by outcome (ok, failed, aborted)', labelNames: ['outcome'], registers });
    this.backupFailuresTotal = new Counter({ name: 'tandem_backup_failures_total', help: 'Failed backup runs by error kind', labelNames: ['kind'], registers });
    new Gauge({
      name: 'tandem_wal_archive_failing',
      help: "WAL mode: 1 while PostgreSQL's archive_command (tandem-primary wal-push) fails: the filestore is unreachable, or this primary is fenced (PostgreSQL keeps the WAL)",
      registers,
      collect() {
        const w = live.wal?.();
        this.set(w === undefined ? 0 : w === null ? Number.NaN : w.failing ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tandem_wal_last_archived_timestamp_seconds',
      help: 'WAL mode: Unix time of the last WAL file PostgreSQL archived into the filestore (NaN: none yet, or unknown)',
      registers,
      collect() {
        const t = live.wal?.()?.lastArchivedAt;
        this.set(t == null ? Number.NaN : Date.parse(t) / 1000);
      },
    });
    new Gauge({
      name: 'tandem_wal_pending_seconds',
      help: 'WAL mode: seconds written WAL has waited in the current WAL file (the daemon switches files within database.maxDelay)',
      registers,
      collect() {
        const w = live.wal?.();
        this.set(w == null ? 0 : w.pendingSeconds);
      },
    });
    this.filesDeltasTotal = new Counter({ name: 'tandem_files_deltas_total', help: 'Files deltas committed (new and changed files sent on between sets)', registers });
    this.nextBackupTimestamp = new Gauge({
      name: 'tandem_next_backup_timestamp_seconds',
      help: 'Unix time of the next scheduled backup (0: none, e.g. when fenced)',
      registers,
      collect() {
        const next = live.nextRunAt();
        this.set(next === null ? 0 : next.getTime() / 1000);
      },
    });
    new Gauge({
      name: 'tandem_primary_standbys_connected',
      help: "The primary's view: standbys connected to the push channel (/v1/stream)",
      registers,
      collect() {
        this.set(standbys().length);
      },
    });
    new Gauge({
      name: 'tandem_primary_standby_lag_seconds',
      help: "The primary's view, per standby connected to the push channel: 0 when it reported the set latest.json names applied, else seconds since that set was committed (the standby's own figures: tandem_standby_*)",
      labelNames: ['standby'],
      registers,
      collect() {
        this.reset();
        for (const s of standbys()) this.set({ standby: s.standbyId }, s.lagSeconds);
      },
    });
    this.filestoreErrorsTotal = new Counter({ name: 'tandem_filestore_errors_total', help: 'Filestore operations of the daemon that failed (heartbeat, epoch, latest.json, retention, backups)', registers });
    this.heartbeatTimestamp = new Gauge({ name: 'tandem_heartbeat_timestamp_seconds', help: 'Unix time of the last heartbeat.json written', registers });
    this.fenced = new Gauge({ name: 'tandem_fenced', help: '1 when this primary found a higher epoch in the filestore and stopped backing up', registers });
    this.fenced.set(0);
    this.switchoverHeld = new Gauge({ name: 'tandem_switchover_held', help: '1 while a planned switchover holds this primary (site writes stopped by onFenced, no backups)', registers });
    this.switchoverHeld.set(0);
    this.lastBackupSuccess.set(0);
    for (const outcome of BACKUP_OUTCOMES) this.backupsTotal.inc({ outcome }, 0);
    for (const kind of BACKUP_FAILURE_KINDS) this.backupFailuresTotal.inc({ kind }, 0);
    this.filestoreErrorsTotal.inc(0);
  }

  /**
   * Counts a failure of work that is more than filestore operations (a backup run) only when the
   * filestore raised it (isFilestoreError, the standby's rule too): a failed pg_dump is no filestore
   * error, whatever its kind.
   */
  countIfFilestoreError(err: unknown): void {
    if (isFilestoreError(err)) this.filestoreErrorsTotal.inc();
  }
}
