import { readFile, rm } from 'node:fs/promises';
import { acquireLock, onFencedEnv, writeFileAtomic, type Lock, type Logger, type PrimaryConfig } from '@tandem/shared';
import { HOOK_TIMEOUT_MS, runHook, type HookResult } from '../hooks.js';
import { stateFiles } from '../state-files.js';
import { Switchover } from './switchover-state.js';

/**
 * What a switchover holds while it runs (switchover.ts decides when):
 *
 * - the site's writes: stopped by onFenced (TANDEM_REASON=switchover), given back by onResume;
 * - backups: the daemon refuses them while the switchover is active, and once the final set is
 *   committed the backup lock is held, so not even `tandem-primary backup --local` commits a set
 *   after it;
 * - stateDir/switchover.json, written while the writes are stopped, so that a restarted daemon
 *   still holds and still ends the hold (resume or fenced) instead of forgetting the stopped writes;
 * - the deadline, after which the hold is called off.
 */

/** stateDir/switchover.json while the site's writes are stopped for a switchover. */
interface HoldRecord {
  format: 'tandem-switchover-hold';
  version: 1;
  requestId: string;
  standbyId: string;
  startedAt: string;
  setId: string | null;
  heldSince: string | null;
  holdUntil: string | null;
  /** null: the standby was not allowed to promote (a restart ends the hold at once); absent (an older record): it may have been. */
  promoteAllowedAt?: string | null;
}

export interface SwitchoverHoldOptions {
  config: PrimaryConfig;
  logger: Logger;
  /** This primary's epoch, for the hooks' environment. */
  epoch(): number | null;
  /** tandem_switchover_held. */
  setHeld(held: boolean): void;
  /** onFenced / onResume are killed after this long (a hung maintenance script must not hold forever). */
  hookTimeoutMs?: number;
}

export class SwitchoverHold {
  readonly recordFile: string;
  private lock: Lock | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: SwitchoverHoldOptions) {
    this.recordFile = stateFiles(opts.config.stateDir).switchover;
  }

  /**
   * The switchover a stopped daemon left held (switchover.json), or null. `neverAllowed`: the record,
   * written by this version, says the standby never got promote-ok; it cannot be promoting then, and
   * its connection is gone with the restart.
   */
  async recover(now: Date): Promise<{ switchover: Switchover; neverAllowed: boolean } | null> {
    let rec: HoldRecord;
    try {
      rec = JSON.parse(await readFile(this.recordFile, 'utf8')) as HoldRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.opts.logger.error({ err, file: this.recordFile }, 'switchover.json is unreadable: ignored');
      return null;
    }
    if (rec.format !== 'tandem-switchover-hold') return null;
    const holdUntil = rec.holdUntil ? new Date(rec.holdUntil) : null;
    const switchover = new Switchover(
      {
        requestId: rec.requestId,
        standbyId: rec.standbyId,
        peer: null,
        state: 'held',
        step: 'hold',
        startedAt: new Date(rec.startedAt),
        timeoutMs: 0,
        setId: rec.setId,
        heldSince: rec.heldSince ? new Date(rec.heldSince) : null,
        holdUntil,
        promoteAllowedAt: typeof rec.promoteAllowedAt === 'string' ? new Date(rec.promoteAllowedAt) : null,
        onFenced: 'ok',
        readySent: holdUntil !== null,
        recovered: true,
      },
      now,
    );
    return { switchover, neverAllowed: rec.promoteAllowedAt === null };
  }

  /** Write switchover.json; false when it could not be written (warned about). */
  async record(c: Switchover): Promise<boolean> {
    const rec: HoldRecord = {
      format: 'tandem-switchover-hold',
      version: 1,
      requestId: c.requestId,
      standbyId: c.standbyId,
      startedAt: c.startedAt.toISOString(),
      setId: c.setId,
      heldSince: c.heldSince?.toISOString() ?? null,
      holdUntil: c.holdUntil?.toISOString() ?? null,
      promoteAllowedAt: c.promoteAllowedAt?.toISOString() ?? null,
    };
    return writeFileAtomic(this.recordFile, `${JSON.stringify(rec, null, 2)}\n`).then(
      () => true,
      (err: unknown) => {
        this.opts.logger.warn({ err }, 'could not write switchover.json (a restart during the hold would forget it)');
        return false;
      },
    );
  }

  /** Take the backup lock, so that no backup, in the daemon or outside it, commits a set. Throws when it is held. */
  async lockBackups(): Promise<void> {
    const { config } = this.opts;
    this.lock = await acquireLock(stateFiles(config.stateDir).backupLock, 'switchover hold', `a backup of site "${config.site}"`);
  }

  /** onFenced: stop the site's writes. */
  stopWrites(c: Switchover): Promise<HookResult> {
    return runHook(this.opts.config.onFenced!, this.hookEnv(c), this.opts.hookTimeoutMs ?? HOOK_TIMEOUT_MS);
  }

  /** onResume: give the site its writes back (`why`: why the switchover was called off). */
  resumeWrites(c: Switchover, why: string): Promise<HookResult> {
    return runHook(this.opts.config.onResume!, this.hookEnv(c, why), this.opts.hookTimeoutMs ?? HOOK_TIMEOUT_MS);
  }

  /** The site's writes are stopped (tandem_switchover_held 1). */
  held(): void {
    this.opts.setHeld(true);
  }

  /** Call `fn` after `ms`, instead of anything armed before. */
  arm(ms: number, fn: () => void): void {
    this.disarm();
    this.timer = setTimeout(() => {
      this.timer = null;
      fn();
    }, ms);
    this.timer.unref();
  }

  disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** The hold is over: writes given back or this primary fenced. Lock released, switchover.json removed. */
  async release(): Promise<void> {
    this.opts.setHeld(false);
    await this.unlock();
    await rm(this.recordFile, { force: true }).catch((err: unknown) => this.opts.logger.warn({ err }, 'could not remove switchover.json'));
  }

  /** Daemon shutdown: the timer stops and the lock goes; switchover.json stays, so the next start ends the hold. */
  async stop(): Promise<void> {
    this.disarm();
    await this.unlock();
  }

  private async unlock(): Promise<void> {
    await this.lock?.release().catch(() => undefined);
    this.lock = null;
  }

  private hookEnv(c: Switchover, calledOff?: string): Record<string, string> {
    return onFencedEnv({ reason: 'switchover', site: this.opts.config.site, epoch: this.opts.epoch(), switchoverId: c.requestId, standbyId: c.standbyId, calledOff });
  }
}
