import type { KeyObject } from 'node:crypto';
import { HEARTBEAT_RUNNING, HEARTBEAT_STOPPED, describeError, isTandemError, layout, signHeartbeat, type Filestore, type Heartbeat, type Logger } from '@tandem/shared';
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
  /** "stopped": the last heartbeat of a clean shutdown (default "running"). */
  state?: typeof HEARTBEAT_RUNNING | typeof HEARTBEAT_STOPPED;
  /** WAL mode: the archiver's state (wal-timer.ts). */
  wal?: Heartbeat['wal'];
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
    state: i.state ?? HEARTBEAT_RUNNING,
    ...(i.wal ? { wal: i.wal } : {}),
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
  /** When the stopped heartbeat of the shutdown was written (absent while running). */
  stoppedAt?: string;
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
  /** WAL mode: what the heartbeat says of the archiving (undefined: nothing to say). */
  wal?(): Heartbeat['wal'];
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
  /** The tick running now, if any: the stopped heartbeat waits for it, so that it is the last one written. */
  private current: Promise<void> | null = null;
  private again = false;
  private written: HeartbeatState = { lastWrittenAt: null, lastError: null };
  /**
   * A running heartbeat.json was written by this loop, in this process. Only then may the shutdown
   * write "stopped": a daemon that never ran (its start failed: port taken, fenced, a sentinel,
   * another daemon running) must not tell the standbys that the primary, which may well be running
   * elsewhere, has stopped.
   */
  private wroteRunning = false;

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
    this.current = (async () => {
      try {
        await this.tickOnce();
      } catch (err) {
        this.opts.logger.error({ err }, 'heartbeat tick failed unexpectedly; the next one tries again');
      } finally {
        this.running = false;
        this.current = null;
      }
    })();
    await this.current;
  }

  /**
   * The shutdown's last heartbeat: heartbeat.json with state "stopped", so that a standby's promote
   * need not wait until it goes stale. Called once the timer is stopped and nothing else runs
   * (isStopping() is true): it waits for a tick in flight, reads epoch.json and latest.json again
   * (a fenced primary writes nothing; the set it names must be the newest committed), then writes.
   * At most `timeoutMs`: a filestore that does not answer does not hold up the shutdown (the
   * standbys then see the heartbeat go stale, as after a crash). Writes nothing, and says so, when
   * this loop has not written a running heartbeat itself (see wroteRunning). Never throws.
   */
  async writeStopped(timeoutMs = 10_000): Promise<boolean> {
    const { clock, fencing, logger } = this.opts;
    let timer: NodeJS.Timeout | undefined;
    const controller = new AbortController();
    let notOurs = false;
    const work = (async (): Promise<boolean> => {
      await this.current;
      if (!this.wroteRunning) {
        notOurs = true;
        return false;
      }
      await this.refresh('reading epoch.json and latest.json for the last heartbeat');
      if (fencing.fenced || fencing.epoch === null || controller.signal.aborted) return false;
      const epoch = fencing.epoch;
      let ok = false;
      await this.filestoreOp('writing heartbeat.json (stopped)', async () => {
        const last = this.opts.lastRun();
        await writeHeartbeat(
          this.opts.filestore,
          this.opts.signingKey,
          {
            site: this.opts.site,
            epoch,
            primaryHost: this.opts.primaryHost,
            at: clock.now(),
            lastBackup: last ? { setId: last.setId, at: last.at, outcome: last.outcome === 'ok' ? 'ok' : 'failed' } : null,
            nextBackupAt: null,
            latest: this.opts.latest.current,
            state: HEARTBEAT_STOPPED,
          },
          controller.signal,
        );
        const at = clock.now().toISOString();
        this.written = { lastWrittenAt: at, lastError: null, stoppedAt: at };
        this.opts.metrics.heartbeatTimestamp.set(clock.now().getTime() / 1000);
        ok = true;
      });
      return ok;
    })();
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => {
        controller.abort();
        resolve(false);
      }, timeoutMs);
    });
    try {
      const ok = await Promise.race([work, timeout]);
      if (ok) logger.info({ epoch: fencing.epoch }, 'heartbeat.json says stopped: a standby may promote without waiting for it to go stale');
      else if (notOurs) logger.info({}, 'heartbeat.json left as it is: this daemon wrote no heartbeat of its own, so it does not say "stopped"');
      else if (!fencing.fenced) logger.warn({ timeoutMs }, 'the stopped heartbeat was not written: standbys see this primary\'s heartbeat go stale instead');
      return ok;
    } finally {
      clearTimeout(timer);
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
          wal: this.opts.wal?.(),
        });
        this.wroteRunning = true;
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
      // Reading epoch.json failing keeps heartbeat.json from being written too (the epoch is not
      // known): either is the heartbeat's error until a heartbeat is written.
      this.written = { ...this.written, lastError: describeError(err) };
    }
  }
}
