import { describeError, isTandemError, type Logger } from '@tandem/shared';
import type { BackupResult } from '../backup/run-backup.js';
import type { SwitchoverHold } from './switchover-hold.js';
import type { Switchover, SwitchoverHost, SwitchoverState } from './switchover-state.js';

/**
 * The steps of an accepted switchover (switchover.ts has the protocol around them): wait for a
 * running backup, stop the site's writes (onFenced), the final backup, the hold with the set
 * offered; and calling it off (onResume, unless epoch.json was raised meanwhile).
 */

/** How long an unreadable epoch.json keeps a hold that may be ending in a promote before it is read again. */
const EPOCH_RETRY_MS = 5_000;
/** How long the final backup waits before it tries again when a backup outside the daemon holds the lock. */
const BUSY_RETRY_MS = 2_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

export interface SwitchoverStepsOptions {
  host: SwitchoverHost;
  hold: SwitchoverHold;
  logger: Logger;
  /** Whether `c` is still the coordinator's switchover (a later request replaces an ended one). */
  isCurrent(c: Switchover): boolean;
}

export class SwitchoverSteps {
  private readonly host: SwitchoverHost;
  private readonly hold: SwitchoverHold;
  private readonly log: Logger;

  constructor(private readonly opts: SwitchoverStepsOptions) {
    ({ host: this.host, hold: this.hold, logger: this.log } = opts);
  }

  /** Steps 2 to 5: from the accepted request to the final set offered (or called off on the way). */
  async run(c: Switchover): Promise<void> {
    const { config } = this.host;
    const running = this.host.runningBackup();
    if (running) {
      this.progress(c, 'wait-for-backup', `waiting for the running backup (${running.trigger}, started ${running.startedAt.toISOString()}) to finish`);
      await running.promise.catch(() => undefined);
    }
    if (!this.active(c)) return;
    let off = this.pendingCallOff(c);
    if (off) {
      const why = off.why;
      this.finish(c, 'refused', why);
      c.send({ type: 'switchover-failed', requestId: c.requestId, step: off.step, error: why, primary: 'unchanged' });
      this.log.warn({ requestId: c.requestId, why }, 'switchover called off before anything changed');
      this.host.resumed();
      return;
    }

    // Stop the site's writes.
    this.progress(c, 'stop-writes', 'running onFenced to stop the site\'s writes');
    c.onFenced = 'running';
    const stopped = await this.hold.stopWrites(c);
    if (!stopped.ok) {
      c.onFenced = 'failed';
      const error = `onFenced \`${config.onFenced}\` ${stopped.error}`;
      this.log.error({ requestId: c.requestId, onFenced: config.onFenced, error: stopped.error }, 'switchover failed: onFenced failed; nothing else changed (onResume is not run)');
      if (!this.active(c)) return;
      this.step(c, 'stop-writes', `FAILED: ${error}`);
      this.finish(c, 'refused', error);
      c.send({ type: 'switchover-failed', requestId: c.requestId, step: 'stop-writes', error, primary: 'unchanged' });
      this.host.resumed();
      return;
    }
    c.onFenced = 'ok';
    this.hold.held();
    await this.hold.record(c);
    if (!this.active(c)) return; // fenced meanwhile: fenced() ended it
    this.progress(c, 'writes-stopped', 'writes stopped (onFenced ran)');
    off = this.pendingCallOff(c);
    if (off) {
      await this.callOff(c, off.why, off.step, 'best-effort');
      return;
    }

    // The final set. In WAL mode the newest committed set serves: the standby keeps the cluster it
    // replays, and the last WAL file (below) brings everything written up to the stop, so the
    // writes are not held stopped for a base backup whose length grows with the database.
    let result: Pick<BackupResult, 'setId' | 'epoch'>;
    const newest = this.host.finalWal ? (this.host.newestSet?.() ?? null) : null;
    if (newest !== null) {
      result = newest;
      c.setId = result.setId;
      this.progress(c, 'final-backup-committed', `final set ${newest.setId}: the newest set (WAL mode: no new base backup; the last WAL file follows)`);
    } else {
      this.progress(c, 'final-backup', 'final backup started');
      try {
        // A backup outside the daemon (`backup --local`) may hold the lock: wait for it, within the timeout.
        const until = this.now().getTime() + c.timeoutMs;
        for (;;) {
          try {
            result = await this.host.finalBackup();
            break;
          } catch (err) {
            if (!isTandemError(err, 'busy') || this.now().getTime() + BUSY_RETRY_MS >= until || !this.active(c) || c.callOff) throw err;
            this.step(c, 'final-backup', `waiting: ${describeError(err)}`);
            await sleep(BUSY_RETRY_MS);
          }
        }
      } catch (err) {
        await this.stepFailed(c, 'final-backup', 'the final backup failed', err);
        return;
      }
      if (!this.active(c)) return;
      c.setId = result.setId;
      this.progress(c, 'final-backup-committed', `final backup ${result.setId} committed`);
    }
    // Not even `tandem-primary backup --local` may commit a set after the final one.
    await this.hold.lockBackups().catch((err: unknown) => {
      this.log.warn({ err }, 'could not take the backup lock for the hold (a backup outside the daemon runs?): the standby\'s promote refuses if it commits a newer set');
    });
    // WAL mode: what was written up to the stop is in the WAL, not in the set. The file that holds
    // the last write is closed and archived now, while this primary may still store
    // WAL (once the standby promotes, it is fenced and stores none): the standby replays up to it.
    let walFile: string | undefined;
    if (this.host.finalWal) {
      this.progress(c, 'final-wal', 'closing and archiving the WAL file that holds the last write');
      try {
        walFile = await this.host.finalWal(c.timeoutMs);
      } catch (err) {
        await this.stepFailed(c, 'final-wal', 'the last WAL file could not be archived', err);
        return;
      }
      if (!this.active(c)) return;
      this.progress(c, 'final-wal-archived', `WAL file ${walFile} archived: the standby replays up to it`);
    }
    off = this.pendingCallOff(c) ?? (c.peer?.isOpen() ? null : { why: 'the standby disconnected before the final set was offered', step: 'connection' });
    if (off) {
      await this.callOff(c, off.why, off.step, 'best-effort');
      return;
    }

    // Hold, and offer the set.
    const now = this.now();
    c.state = 'held';
    c.heldSince = now;
    c.holdUntil = new Date(now.getTime() + c.timeoutMs);
    await this.hold.record(c);
    if (!this.active(c)) return;
    this.armDeadline(c, c.timeoutMs);
    c.readySent = true;
    c.send({
      type: 'switchover-ready',
      requestId: c.requestId,
      setId: result.setId,
      epoch: result.epoch,
      ...(walFile !== undefined ? { walFile } : {}),
      heldSince: now.toISOString(),
      holdSeconds: Math.round(c.timeoutMs / 1000),
    });
    this.step(c, 'hold', `holding until ${c.holdUntil.toISOString()}: set ${result.setId} offered to ${c.standbyId} (apply, then promote)`);
    this.log.info({ requestId: c.requestId, setId: result.setId, holdUntil: c.holdUntil.toISOString() }, `switchover: final set ${result.setId} offered; holding (writes stopped, no backups) until the standby promotes`);
  }

  /**
   * Call the switchover off: unless epoch.json was raised (then this primary is fenced, as usual),
   * run onResume and go on as the primary. With 'must-check-epoch' (the standby may have promoted)
   * an unreadable epoch.json keeps the hold and is retried: resuming while another server may be
   * the primary would make two.
   */
  /**
   * A step before the hold failed (the final backup, the last WAL file): unless the switchover
   * ended meanwhile or this primary is fenced (fence() → fenced() ends it), call it off.
   */
  private async stepFailed(c: Switchover, step: string, what: string, err: unknown): Promise<void> {
    if (!this.active(c)) return;
    if (this.host.isFenced() || isTandemError(err, 'fenced')) return;
    this.log.error({ requestId: c.requestId, err }, `switchover: ${what}; putting the primary back`);
    this.step(c, step, `FAILED: ${describeError(err)}`);
    await this.callOff(c, `${what}: ${describeError(err)}`, step, 'best-effort');
  }

  async callOff(c: Switchover, why: string, step: string, mode: 'must-check-epoch' | 'best-effort'): Promise<void> {
    if (c.state === 'resuming' || !this.active(c)) return;
    this.hold.disarm();
    c.state = 'resuming';
    this.step(c, 'resume', `calling the switchover off: ${why}`);
    for (;;) {
      try {
        if (await this.host.recheckEpoch()) return; // fenced() has ended it
        break;
      } catch (err) {
        if (mode === 'best-effort') {
          this.log.warn({ err }, 'cannot read epoch.json; resuming anyway (the standby cannot have promoted)');
          break;
        }
        this.log.error({ err, requestId: c.requestId }, `cannot read epoch.json to tell whether ${c.standbyId} promoted: still holding (writes stopped); retrying in ${EPOCH_RETRY_MS / 1000} s`);
        await sleep(EPOCH_RETRY_MS);
        if (!this.active(c)) return;
      }
    }
    if (!this.active(c)) return;
    const { config } = this.host;
    let resumeError: string | null = null;
    if (c.onFenced === 'ok') {
      c.onResume = 'running';
      const r = await this.hold.resumeWrites(c, why);
      c.onResume = r.ok ? 'ok' : 'failed';
      if (!r.ok) resumeError = `onResume \`${config.onResume}\` ${r.error}`;
    }
    if (!this.active(c)) return;
    const error = `${why}${resumeError ? `; and ${resumeError}: the site's writes may still be stopped` : ''}`;
    // The hold's lock and record go first: once the status says "called-off", nothing of the hold is left.
    await this.hold.release();
    this.finish(c, 'called-off', error);
    if (resumeError) {
      this.log.error({ requestId: c.requestId, why, onResume: config.onResume, error: resumeError }, 'switchover called off, but onResume FAILED: the site\'s writes may still be stopped; this server stays the primary and backs up again');
    } else {
      this.log.warn({ requestId: c.requestId, why }, 'switchover called off: onResume ran; this server stays the primary and backs up again');
    }
    const detail = c.onFenced === 'ok' ? (resumeError ? 'onResume FAILED' : 'onResume ran') : 'nothing to undo';
    this.step(c, 'resumed', `primary put back (${detail}); schedule resumed`);
    if (step === 'final-backup' || step === 'internal') {
      c.send({ type: 'switchover-failed', requestId: c.requestId, step, error, primary: resumeError ? 'resume-failed' : c.onFenced === 'ok' ? 'resumed' : 'unchanged' });
    } else {
      c.send({ type: 'switchover-resumed', requestId: c.requestId, reason: why, onResume: resumeError ? 'failed' : 'ok', error: resumeError });
    }
    this.host.resumed();
  }

  /** End the hold after `ms` (why: the reason given; default: the hold timed out). */
  armDeadline(c: Switchover, ms: number, why?: string): void {
    this.hold.arm(ms, () => {
      if (!this.opts.isCurrent(c) || c.state !== 'held') return;
      if (why === undefined) this.log.warn({ requestId: c.requestId, holdUntil: c.holdUntil?.toISOString() }, 'switchover hold timed out: the standby did not promote in time');
      void this.callOff(c, why ?? `the hold timed out (${c.holdUntil ? `at ${c.holdUntil.toISOString()}` : 'after a restart'}) before ${c.standbyId} promoted`, 'hold', 'must-check-epoch');
    });
  }

  /** A step the standby hears about (and the log and /status show). */
  progress(c: Switchover, step: string, detail: string): void {
    this.step(c, step, detail);
    this.log.info({ requestId: c.requestId, step, setId: c.setId }, `switchover: ${detail}`);
    c.send({ type: 'switchover-progress', requestId: c.requestId, step, detail, setId: c.setId, at: c.since.toISOString() });
  }

  step(c: Switchover, step: string, detail: string): void {
    c.recordStep(step, detail, this.now());
  }

  finish(c: Switchover, state: SwitchoverState, error: string | null): void {
    c.finish(state, error, this.now());
  }

  /** An abort or lost connection noted meanwhile, or a shutdown. */
  private pendingCallOff(c: Switchover): { why: string; step: string } | null {
    if (c.callOff) return c.callOff;
    if (this.host.isStopping()) return { why: 'the primary is shutting down', step: 'request' };
    return null;
  }

  private active(c: Switchover): boolean {
    return this.opts.isCurrent(c) && c.active;
  }

  private now(): Date {
    return this.host.clock.now();
  }
}
