import { TandemError, describeError, encodeStandbyReport, layout, withPg, type Filestore, type Logger, type StandbyConfig, type StandbyWalNeed } from '@tandem/shared';
import type { AppliedState } from '../apply/state.js';
import { isFilestoreError, type LastError } from './last-error.js';
import type { StandbyMetrics } from './metrics.js';
import type { PushClient } from './push-client.js';

/** WAL mode: how often the report is written again, between applies, with the WAL need measured anew. */
export const WAL_REPORT_INTERVAL_MS = 5 * 60_000;

const WAL_FILE_NAME = /^[0-9A-F]{24}$/;

export interface ReporterOptions {
  fs: Filestore;
  site: string;
  standbyId: string;
  logger: Logger;
  metrics: StandbyMetrics;
  errors: LastError;
  /** The push channel, if there is one (it may be down: the next hello carries the applied set). */
  push(): PushClient | null;
  /** Aborted by the stop. */
  signal: AbortSignal;
  stopping(): boolean;
  /** The site's database: in WAL mode (mode "wal") the report carries the WAL its cluster needs. */
  database?: StandbyConfig['database'];
  /** An apply or recovery runs (the cluster may be being replaced): the periodic refresh waits. */
  busy?(): boolean;
}

/**
 * The WAL file of the cluster's last restartpoint redo: the oldest WAL file a standby in recovery
 * needs to go on replaying (a restart begins there). On a cluster not in recovery, its last
 * checkpoint's.
 */
export async function walNeededFrom(database: StandbyConfig['database']): Promise<string> {
  const row = await withPg(database, async (c) => (await c.query<{ redo_wal_file: string | null }>('select redo_wal_file from pg_control_checkpoint()')).rows[0]);
  const name = row?.redo_wal_file ?? null;
  if (name === null || !WAL_FILE_NAME.test(name)) {
    throw new TandemError('external', 'WAL_NEED_UNKNOWN', `pg_control_checkpoint() on the standby's cluster gave redo_wal_file ${JSON.stringify(name)}, not a WAL file name`);
  }
  return name;
}

/**
 * Tells the primary which set is live here: `<site>/standbys/<standbyId>.json` in the filestore
 * (retention keeps the set it names) and `applied` on the push channel.
 *
 * In WAL mode the report also says from which WAL file on the standby's cluster needs the site's
 * WAL (`wal.neededFrom`, its last restartpoint; retention keeps that WAL), and is written again
 * every WAL_REPORT_INTERVAL_MS (not while an apply runs), so the need stays recent and moves on as
 * the cluster replays. A measurement that fails (the cluster is down) leaves the last one standing:
 * its time says how old it is, and the primary stops honouring it after a day.
 */
export class Reporter {
  #reportedSetId: string | null = null;
  /** The applied set last seen: what a refresh reports. */
  #applied: AppliedState | null = null;
  #walNeed: StandbyWalNeed | undefined;
  #measureFailing = false;
  #timer: NodeJS.Timeout | null = null;
  /** One write at a time: a refresh never lands after, and over, a newer report. */
  #writing: Promise<void> = Promise.resolve();

  constructor(private readonly o: ReporterOptions) {}

  get #walMode(): boolean {
    return this.o.database?.mode === 'wal';
  }

  /**
   * After a set became live (by the daemon, a recovery, or an `apply` by hand): the report, once per
   * set. A failed report is retried at the next call (the next cycle).
   */
  async reportIfNeeded(a: AppliedState | null): Promise<void> {
    if (a === null || a.setId === this.#reportedSetId) return;
    this.#applied = a;
    const announced = this.o.push()?.sendApplied({ standbyId: this.o.standbyId, setId: a.setId, createdAt: a.createdAt, appliedAt: a.appliedAt }) ?? false;
    await this.#serialized(() => this.#write(a, { announced }));
    this.#startRefreshing();
  }

  /** WAL mode: the report written again with the WAL need measured now (also what the timer does). */
  async refresh(): Promise<void> {
    const a = this.#applied;
    if (!this.#walMode || a === null || this.o.stopping()) return;
    await this.#serialized(() => this.#write(a, { refresh: true }));
  }

  #startRefreshing(): void {
    if (!this.#walMode || this.#timer !== null || this.o.signal.aborted) return;
    this.#timer = setInterval(() => {
      if (this.o.busy?.() === true) return;
      void this.refresh();
    }, WAL_REPORT_INTERVAL_MS);
    this.#timer.unref();
    this.o.signal.addEventListener('abort', () => clearInterval(this.#timer!), { once: true });
  }

  #serialized(fn: () => Promise<void>): Promise<void> {
    const run = this.#writing.then(fn);
    this.#writing = run.catch(() => undefined);
    return run;
  }

  async #write(a: AppliedState, how: { announced?: boolean; refresh?: boolean }): Promise<void> {
    const { fs, standbyId, metrics, errors } = this.o;
    const key = layout.standby(this.o.site, standbyId);
    const wal = await this.#measureWal();
    try {
      const body = encodeStandbyReport({ standbyId, setId: a.setId, createdAt: a.createdAt, appliedAt: a.appliedAt, ...(wal === undefined ? {} : { wal }) });
      await fs.putBuffer(key, body, { contentType: 'application/json', contentLength: body.length, signal: this.o.signal });
      this.#reportedSetId = a.setId;
      errors.clear('report');
      if (how.refresh) this.o.logger.debug({ setId: a.setId, key, walNeededFrom: wal?.neededFrom }, 'report refreshed');
      else this.o.logger.info({ setId: a.setId, key, announced: how.announced, walNeededFrom: wal?.neededFrom }, 'reported the applied set');
    } catch (err) {
      if (this.o.stopping()) return;
      metrics.failuresTotal.inc({ kind: 'report' });
      if (isFilestoreError(err)) metrics.filestoreErrorsTotal.inc();
      errors.note('report', err);
    }
  }

  /** WAL mode: the cluster's WAL need now, else the last one measured; undefined outside WAL mode or never measured. */
  async #measureWal(): Promise<StandbyWalNeed | undefined> {
    const database = this.o.database;
    if (database === undefined || !this.#walMode) return undefined;
    try {
      this.#walNeed = { neededFrom: await walNeededFrom(database), at: new Date().toISOString() };
      this.#measureFailing = false;
    } catch (err) {
      // Once per failing stretch: an apply stops the cluster for a while, and that is no news.
      const level = this.#measureFailing ? 'debug' : 'warn';
      this.#measureFailing = true;
      this.o.logger[level](
        { err: describeError(err), last: this.#walNeed ?? null },
        this.#walNeed === undefined ? 'cannot read the WAL this cluster needs; the report says none' : 'cannot read the WAL this cluster needs; the report keeps the last measurement',
      );
    }
    return this.#walNeed;
  }
}
