/**
 * WAL mode's recovery-point promise on the primary: a commit is in the filestore within
 * `database.maxDelay`, idle or busy. PostgreSQL archives a WAL file when it is full; on a quiet site
 * that can take hours. So the daemon watches the current WAL position (every tenth of maxDelay, at
 * least every 250 ms): once WAL has been written into the current file and has waited half of
 * maxDelay, it asks PostgreSQL to switch to the next file (`pg_switch_wal()`), which PostgreSQL then
 * archives through `tandem-primary wal-push`. The other half is for the archiving itself. A quiet
 * cluster writes nothing, so nothing is switched (no empty files), unlike archive_timeout alone.
 *
 * It also reads pg_stat_archiver for /status and the metrics: the last file archived, and whether
 * archiving is failing (the filestore down, this primary fenced: wal-archive.json says which).
 */
import pg from 'pg';
import { TandemError, describeError, formatDuration, parseSegmentSize, pgEnv, segmentDistance, type Logger, type PrimaryConfig } from '@tandem/shared';

export interface ArchiverStatus {
  /** When the daemon last read it. */
  at: string;
  lastArchivedWal: string | null;
  lastArchivedAt: string | null;
  failedCount: number;
  lastFailedWal: string | null;
  lastFailedAt: string | null;
  /** Archiving fails now: the last failure is newer than the last success. */
  failing: boolean;
  /** WAL switches the daemon asked for (maxDelay). */
  switches: number;
  /** Current WAL file and how long WAL has been waiting in it, seconds (0: nothing written since the last switch). */
  currentWal: string | null;
  pendingSeconds: number;
}

export class WalTimer {
  private timer: NodeJS.Timeout | null = null;
  private client: pg.Client | null = null;
  private pendingWal: string | null = null;
  private pendingSince = 0;
  private switches = 0;
  /** The next transaction id at the last switch: a file whose WAL no transaction wrote is not switched. */
  private xidAtSwitch: string | null = null;
  private busy = false;
  private lastError: string | null = null;
  status: ArchiverStatus | null = null;
  /** This primary is fenced: its WAL must not go anywhere, so no file is switched (the state is still read). */
  fenced = false;

  constructor(private readonly o: { config: PrimaryConfig; logger: Logger; now?: () => number }) {}

  start(): void {
    const every = Math.max(250, Math.floor(this.o.config.database.maxDelay / 10));
    this.timer = setInterval(() => void this.tick(), every);
    this.timer.unref();
    void this.tick();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const c = this.client;
    this.client = null;
    await c?.end().catch(() => undefined);
  }

  private async connect(): Promise<pg.Client> {
    if (this.client) return this.client;
    const env = pgEnv(this.o.config.database);
    const c = new pg.Client({ connectionString: this.o.config.database.url, password: env.PGPASSWORD, connectionTimeoutMillis: 10_000, application_name: 'tandem-primary wal' });
    c.on('error', () => {
      if (this.client === c) this.client = null;
    });
    await c.connect();
    this.client = c;
    return c;
  }

  /**
   * For a switchover (the site's writes stopped): the WAL file that holds the last write is closed
   * (pg_switch_wal) and waited for, up to `timeoutMs`, until PostgreSQL's archiver has stored it
   * (pg_stat_archiver); its name. With nothing written since the last switch it is the file before
   * the current position, stored already.
   */
  async closeAndArchive(timeoutMs: number): Promise<string> {
    if (this.fenced) throw new TandemError('fenced', 'FENCED', 'this primary is fenced: it stores no WAL');
    const c = await this.connect();
    const name = (await c.query<{ name: string }>('select pg_walfile_name(pg_current_wal_lsn()) as name')).rows[0]!.name;
    await c.query('select pg_switch_wal()');
    const until = Date.now() + timeoutMs;
    for (;;) {
      const a = (await c.query<{ lw: string | null; fw: string | null }>('select last_archived_wal as lw, last_failed_wal as fw from pg_stat_archiver')).rows[0]!;
      // A backup history file (NAME.xxxxxxxx.backup) is not the segment itself.
      if (a.lw !== null && (a.lw === name || a.lw.slice(0, 24) > name)) return name;
      if (Date.now() >= until) {
        throw new TandemError('transient', 'WAL_ARCHIVE_TIMEOUT', `WAL file ${name} was not archived within ${formatDuration(timeoutMs)} (last archived: ${a.lw ?? 'none'}${a.fw ? `; last failed: ${a.fw}` : ''})`, {
          hint: "archive_command (tandem-primary wal-push) fails or is slow: see PostgreSQL's log and `tandem-primary status`",
        });
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    const now = this.o.now?.() ?? Date.now();
    try {
      const c = await this.connect();
      const r = await c.query<{ rec: boolean; name: string | null; off: number | null; seg: string; nx: string }>(
        `select pg_is_in_recovery() as rec,
                pg_snapshot_xmax(pg_current_snapshot())::text as nx,
                case when pg_is_in_recovery() then null else (pg_walfile_name_offset(pg_current_wal_lsn())).file_name end as name,
                case when pg_is_in_recovery() then null else (pg_walfile_name_offset(pg_current_wal_lsn())).file_offset end as off,
                current_setting('wal_segment_size') as seg`,
      );
      const row = r.rows[0]!;
      const a = (await c.query<{ lw: string | null; lt: Date | null; fc: string; fw: string | null; ft: Date | null }>(
        'select last_archived_wal as lw, last_archived_time as lt, failed_count::text as fc, last_failed_wal as fw, last_failed_time as ft from pg_stat_archiver',
      )).rows[0]!;
      // A position at a file boundary (offset 0, or the end of the previous file) has nothing waiting.
      // Nor has a file holding only what PostgreSQL writes on its own when idle (a running-transactions
      // record every 15 s after any WAL, the switch's own included): no transaction id was assigned
      // since the last switch, so no commit waits (switching for those would never let a quiet
      // primary rest: one file per maxDelay forever).
      const wroteXact = this.xidAtSwitch === null || row.nx !== this.xidAtSwitch;
      const written = !row.rec && row.off !== null && row.off > 0 && row.off < parseSegmentSize(row.seg) && wroteXact;
      if (!written) {
        this.pendingWal = null;
      } else if (this.pendingWal !== row.name) {
        this.pendingWal = row.name;
        this.pendingSince = now;
      } else if (!this.fenced && now - this.pendingSince >= this.o.config.database.maxDelay / 2 && !archiverBehind(a.lw, row.name)) {
        await c.query('select pg_switch_wal()');
        this.xidAtSwitch = row.nx;
        this.switches++;
        this.o.logger.debug({ wal: row.name, waitedSeconds: (now - this.pendingSince) / 1000 }, 'switched WAL file (maxDelay)');
        this.pendingWal = null;
      }
      this.status = {
        at: new Date(now).toISOString(),
        lastArchivedWal: a.lw,
        lastArchivedAt: a.lt?.toISOString() ?? null,
        failedCount: Number(a.fc),
        lastFailedWal: a.fw,
        lastFailedAt: a.ft?.toISOString() ?? null,
        failing: a.ft !== null && (a.lt === null || a.ft > a.lt),
        switches: this.switches,
        currentWal: row.name,
        pendingSeconds: this.pendingWal === null ? 0 : Math.round((now - this.pendingSince) / 100) / 10,
      };
      if (this.lastError !== null) this.o.logger.info('the database answers again: WAL switching resumes');
      this.lastError = null;
    } catch (err) {
      const msg = describeError(err);
      if (msg !== this.lastError) this.o.logger.warn({ err }, 'cannot read the WAL position (maxDelay is not enforced until the database answers)');
      this.lastError = msg;
      const c = this.client;
      this.client = null;
      await c?.end().catch(() => undefined);
    } finally {
      this.busy = false;
    }
  }
}

/**
 * Finished files wait for the archiver (the last archived is more than one file behind the one being
 * written): a switch would not store a commit sooner, only add a file to the queue (and a process
 * start on each side), so the lag would grow without bound under load. The switch waits for the queue.
 */
export function archiverBehind(lastArchived: string | null, current: string | null): boolean {
  if (lastArchived === null || current === null) return false;
  const d = segmentDistance(lastArchived, current);
  return d !== null && d > 1;
}
