import { encodeStandbyReport, layout, type Filestore, type Logger } from '@tandem/shared';
import type { AppliedState } from '../apply/state.js';
import { isFilestoreError, type LastError } from './last-error.js';
import type { StandbyMetrics } from './metrics.js';
import type { PushClient } from './push-client.js';

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
}

/**
 * Tells the primary which set is live here: `<site>/standbys/<standbyId>.json` in the filestore
 * (retention keeps the set it names) and `applied` on the push channel.
 */
export class Reporter {
  #reportedSetId: string | null = null;

  constructor(private readonly o: ReporterOptions) {}

  /**
   * After a set became live (by the daemon, a recovery, or an `apply` by hand): the report, once per
   * set. A failed report is retried at the next call (the next cycle).
   */
  async reportIfNeeded(a: AppliedState | null): Promise<void> {
    if (a === null || a.setId === this.#reportedSetId) return;
    const { fs, standbyId, metrics, errors } = this.o;
    const announced = this.o.push()?.sendApplied({ standbyId, setId: a.setId, createdAt: a.createdAt, appliedAt: a.appliedAt }) ?? false;
    const key = layout.standby(this.o.site, standbyId);
    try {
      const body = encodeStandbyReport({ standbyId, setId: a.setId, createdAt: a.createdAt, appliedAt: a.appliedAt });
      await fs.putBuffer(key, body, { contentType: 'application/json', contentLength: body.length, signal: this.o.signal });
      this.#reportedSetId = a.setId;
      errors.clear('report');
      this.o.logger.info({ setId: a.setId, key, announced }, 'reported the applied set');
    } catch (err) {
      if (this.o.stopping()) return;
      metrics.failuresTotal.inc({ kind: 'report' });
      if (isFilestoreError(err)) metrics.filestoreErrorsTotal.inc();
      errors.note('report', err);
    }
  }
}
