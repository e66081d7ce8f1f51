import type { KeyObject } from 'node:crypto';
import { describeError, isTandemError, layout, signHeartbeat, type Filestore, type Heartbeat, type Logger } from '@tandem/shared';
import type { LastRun } from './backup-runner.js';
import type { Fencing } from './fencing.js';
import type { LatestSet } from './latest.js';
import type { DaemonMetrics } from './metrics.js';
import type { Clock, Scheduler } from './scheduler.js';
import type { StandbyHub } from './standbys.js';

/**
 * <site>/heartbeat.json: the primary's signed liveness record, rewritten every heartbeatInterval
 * (and after every backup), so that a standby can tell an idle primary from a dead one. It names
 * the newest set the primary committed: latest.json is signed but carries no freshness of its own,
 * so a replayed older latest.json (or an older heartbeat) shows against a current heartbeat.
 */
export interface HeartbeatInput {
  site: string;
  epoch: number;
  primaryHost: string;
  at: Date;
  lastBackup: { setId: string | null; at: string; outcome: 'ok' | 'failed' } | null;
  nextBackupAt: Date | null;
  /** The newest set this primary committed, as its latest.json names it; null before the first. */
  latest: { setId: string; epoch: number; seq: number; createdAt: string; committedAt: string } | null;
}

export function buildHeartbeat(i: HeartbeatInput): Heartbeat {
  return {
    format: 'tandem-heartbeat',
    version: 1,
    site: i.site,
    epoch: i.epoch,
    primaryHost: i.primaryHost,
    at: i.at.toISOString(),
    lastBackup: i.lastBackup,
    nextBackupAt: i.nextBackupAt?.toISOString() ?? null,
    latest: i.latest === null ? null : { setId: i.latest.setId, epoch: i.latest.epoch, seq: i.latest.seq, createdAt: i.latest.createdAt, committedAt: i.latest.committedAt },
  };
}

export async function writeHeartbeat(fs: Filestore, key: KeyObject, i: HeartbeatInput, signal?: AbortSignal): Promise<Heartbeat> {
  const hb = buildHeartbeat(i);
  await fs.putBuffer(layout.heartbeat(i.site), signHeartbeat(hb, key), { contentType: 'application/json', signal });
  return hb;
}

/**
 * A failed filestore operation of the daemon (heartbeat, epoch.json, latest.json, retention):
 * logged and counted (tandem_filestore_errors_total), never thrown; the next tick or run retries.
 */
export function countFilestoreError(metrics: Pick<DaemonMetrics, 'filestoreErrorsTotal'>, logger: Logger, what: string, err: unknown): void {
  metrics.filestoreErrorsTotal.inc();
  logger.warn({ err, kind: isTandemError(err) ? err.kind : undefined }, `filestore: ${what} failed; retried later`);
}

export interface HeartbeatState {
  lastWrittenAt: string | null;
  lastError: string | null;
}

export interface HeartbeatLoopOptions {
  site: string;
  filestore: Filestore;
  logger: Logger;
  clock: Clock;
  signingKey: KeyObject;
  primaryHost: string;
  metrics: Pick<DaemonMetrics, 'filestoreErrorsTotal' | 'heartbeatTimestamp'>;
  hub: Pick<StandbyHub, 'broadcast'>;
  fencing: Pick<Fencing, 'check' | 'epoch' | 'fenced'>;
  latest: Pick<LatestSet, 'refresh' | 'current'>;
  scheduler: Pick<Scheduler, 'nextRunAt'>;
  lastRun(): LastRun | null;
  isStopping(): boolean;
}

/**
 * Every heartbeatInterval (and after every backup): a `heartbeat` message to the standbys; epoch.json
 * (a higher epoch fences this primary: no more heartbeats) and latest.json are read; then
 * heartbeat.json is written. Ticks do not overlap: one asked for while another runs follows it.
 */
export class HeartbeatLoop {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private again = false;
  private written: HeartbeatState = { lastWrittenAt: null, lastError: null };

  constructor(private readonly opts: HeartbeatLoopOptions) {}

  get state(): HeartbeatState {
    return this.written;
  }

  start(intervalMs: number): void {
    this.timer = setInterval(() => void this.tick(), intervalMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Read epoch.json, then latest.json; a failure is logged and counted, never thrown. */
  refresh(what = 'reading epoch.json and latest.json'): Promise<void> {
    return this.filestoreOp(what, async () => {
      await this.opts.fencing.check();
      if (this.opts.fencing.fenced) return;
      await this.opts.latest.refresh();
    });
  }

  async tick(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      await this.tickOnce();
    } catch (err) {
      this.opts.logger.error({ err }, 'heartbeat tick failed unexpectedly; the next one tries again');
    } finally {
      this.running = false;
    }
  }

  private async tickOnce(): Promise<void> {
    const { clock, fencing } = this.opts;
    do {
      this.again = false;
      if (this.opts.isStopping()) return;
      const at = clock.now();
      this.opts.hub.broadcast({ type: 'heartbeat', at: at.toISOString() });
      if (fencing.fenced) return;
      await this.refresh();
      if (fencing.fenced || fencing.epoch === null || this.opts.isStopping()) return;
      const epoch = fencing.epoch;
      await this.filestoreOp('writing heartbeat.json', async () => {
        const last = this.opts.lastRun();
        await writeHeartbeat(this.opts.filestore, this.opts.signingKey, {
          site: this.opts.site,
          epoch,
          primaryHost: this.opts.primaryHost,
          at: clock.now(),
          lastBackup: last ? { setId: last.setId, at: last.at, outcome: last.outcome === 'ok' ? 'ok' : 'failed' } : null,
          nextBackupAt: this.opts.scheduler.nextRunAt,
          latest: this.opts.latest.current,
        });
        this.written = { lastWrittenAt: clock.now().toISOString(), lastError: null };
        this.opts.metrics.heartbeatTimestamp.set(clock.now().getTime() / 1000);
      });
    } while (this.again);
  }

  /** Runs `fn`; a failure is logged and counted, never thrown. */
  private async filestoreOp(what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      countFilestoreError(this.opts.metrics, this.opts.logger, what, err);
      if (what.startsWith('writing heartbeat')) this.written.lastError = describeError(err);
    }
  }
}
