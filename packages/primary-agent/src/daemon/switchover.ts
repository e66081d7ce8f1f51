import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  acquireLock,
  describeError,
  formatDuration,
  isTandemError,
  writeFileAtomic,
  type Lock,
  type Logger,
  type PrimaryConfig,
  type SwitchoverAbort,
  type SwitchoverDone,
  type SwitchoverPromoting,
  type SwitchoverPrimaryMessage,
  type SwitchoverRequest,
} from '@tandem/shared';
import type { BackupResult } from '../backup/run-backup.js';
import { HOOK_TIMEOUT_MS, runHook } from '../hooks.js';
import type { Clock } from './scheduler.js';

/**
 * The primary's half of a planned switchover (`tandem-standby switchover`; the standby's half is
 * packages/standby-agent/src/switchover/). One switchover at a time:
 *
 * 1. request     only from a standby listed in `standbys:`, on a connection its own token opened
 *                (server.ts, standbys.ts). Refused (switchover-failed, nothing changed) when this
 *                primary is fenced or shutting down, another switchover is under way, or
 *                onFenced/onResume are not configured.
 *                From here on no scheduled, retried or requested backup starts (skipped, 409).
 * 2. wait        for a backup that is running to finish.
 * 3. stop-writes onFenced runs with TANDEM_REASON=switchover; a failure ends it there (nothing else
 *                changed; onResume is not run, since onFenced did not complete).
 * 4. final-backup a backup; when it fails, onResume runs and the primary goes on as before.
 * 5. hold        switchover-ready {setId, epoch, holdSeconds}: the standby applies that set, asks
 *                (switchover-promoting) and, after switchover-promote-ok, promotes. The backup lock is
 *                held, so not even `tandem-primary backup --local` runs.
 *                stateDir/switchover.json records the hold, so that a restarted daemon still holds
 *                and still ends it (resume or fenced) instead of forgetting the stopped writes.
 * 6. the end     switchover-done → epoch.json is read at once: raised → fenced (onFenced already ran
 *                and is not run again). switchover-abort, or the hold timeout (the standby's timeout,
 *                capped) → epoch.json is read first (raised → fenced, as usual); otherwise onResume
 *                runs, the schedule resumes and this server stays the primary. A lost connection
 *                before promote-ok (nobody can be promoting) calls it off at once; after it, the hold
 *                lasts until its deadline (the standby may be raising the epoch). A requester that
 *                vanishes therefore stops the site's writes only for as long as it stayed connected.
 */

/** The longest hold a standby may ask for. */
export const MAX_HOLD_SECONDS = 3_600;
/** onFenced / onResume are killed after this long (a hung maintenance script must not hold forever). */
const EPOCH_RETRY_MS = 5_000;
const BUSY_RETRY_MS = 2_000;
const HISTORY = 40;

export type SwitchoverState = 'preparing' | 'held' | 'resuming' | 'completed' | 'called-off' | 'refused';
type HookState = 'not-run' | 'running' | 'ok' | 'failed';

/** The connection a switchover came in on (standbys.ts makes it). */
export interface SwitchoverPeer {
  readonly remote: string;
  /** The listed standby whose token opened the connection. */
  readonly standbyId: string;
  send(msg: SwitchoverPrimaryMessage): void;
  isOpen(): boolean;
}

export interface SwitchoverHost {
  config: PrimaryConfig;
  logger: Logger;
  clock: Clock;
  epoch(): number | null;
  isFenced(): boolean;
  isStopping(): boolean;
  /** The backup running now, if any. */
  runningBackup(): { trigger: string; startedAt: Date; promise: Promise<unknown> } | null;
  /** The final backup (allowed while the switchover holds). */
  finalBackup(): Promise<BackupResult>;
  /** Read epoch.json now; a raised epoch fences this primary (fence() calls fenced() below). True when fenced. Throws when it cannot be read. */
  recheckEpoch(): Promise<boolean>;
  /** The primary goes on as before: run what the schedule skipped meanwhile. */
  resumed(): void;
  setHeld(held: boolean): void;
  hookTimeoutMs?: number;
}

interface HistoryEntry {
  at: string;
  step: string;
  detail: string;
}

interface Current {
  requestId: string;
  standbyId: string;
  peer: SwitchoverPeer | null;
  state: SwitchoverState;
  step: string;
  since: Date;
  startedAt: Date;
  finishedAt: Date | null;
  timeoutMs: number;
  setId: string | null;
  heldSince: Date | null;
  holdUntil: Date | null;
  /** When switchover-promote-ok was sent: from then on the standby may raise the epoch. */
  promoteAllowedAt: Date | null;
  onFenced: HookState;
  onResume: HookState;
  error: string | null;
  /** Set by an abort or a lost connection before the hold: call off at the next step. */
  callOff: { why: string; step: string } | null;
  readySent: boolean;
  doneEpoch: number | null;
  recovered: boolean;
  history: HistoryEntry[];
}

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

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
const ACTIVE: ReadonlySet<SwitchoverState> = new Set(['preparing', 'held', 'resuming']);

export class SwitchoverCoordinator {
  private cur: Current | null = null;
  private holdTimer: NodeJS.Timeout | null = null;
  private lock: Lock | null = null;
  private readonly log: Logger;
  private readonly recordFile: string;

  constructor(private readonly host: SwitchoverHost) {
    this.log = host.logger.child({ component: 'switchover' });
    this.recordFile = join(host.config.stateDir, 'switchover.json');
  }

  // -------------------------------------------------------------------------------------------
  // What the daemon asks
  // -------------------------------------------------------------------------------------------

  /** True from the accepted request until the switchover ended: no backups but the final one. */
  holding(): boolean {
    return this.cur !== null && ACTIVE.has(this.cur.state);
  }

  /** A description for "backup refused / skipped" messages. */
  describeHold(): string {
    const c = this.cur;
    if (c === null) return 'no switchover';
    return `switchover ${c.requestId} to ${c.standbyId} is under way (${c.state}, step ${c.step}, since ${c.startedAt.toISOString()})`;
  }

  /** fence() asks: onFenced ran (or runs) for this switchover, so it must not run twice. */
  onFencedRanForSwitchover(): boolean {
    const c = this.cur;
    return c !== null && (c.onFenced === 'ok' || c.onFenced === 'running') && c.onResume !== 'ok';
  }

  /**
   * fence() tells: this primary is fenced now (called before every connection is closed). If the
   * epoch now names the standby that asked, after the final set was offered, the switchover is done.
   */
  fenced(newPrimary: string | null, why: string): void {
    const c = this.cur;
    if (c === null || !ACTIVE.has(c.state)) return;
    this.clearHoldTimer();
    const planned = c.readySent && newPrimary === c.standbyId;
    if (planned) {
      this.step(c, 'fenced', `epoch.json names ${c.standbyId}: this primary is fenced; the switchover is complete`);
      this.finish(c, 'completed', null);
      this.send(c, { type: 'switchover-progress', requestId: c.requestId, step: 'fenced', detail: `fenced: ${why}`, setId: c.setId, at: this.now().toISOString() });
      this.log.info({ requestId: c.requestId, standbyId: c.standbyId, setId: c.setId }, 'switchover complete: this primary is fenced');
    } else {
      const error = `this primary was fenced during the switchover: ${why}`;
      this.step(c, 'fenced', error);
      this.finish(c, 'called-off', error);
      this.send(c, { type: 'switchover-failed', requestId: c.requestId, step: 'fenced', error, primary: 'fenced' });
      this.log.error({ requestId: c.requestId, why }, 'switchover ended: this primary was fenced (not by the standby that asked)');
    }
    void this.releaseHold();
  }

  status(): Record<string, unknown> | null {
    const c = this.cur;
    if (c === null) return null;
    return {
      state: c.state,
      requestId: c.requestId,
      standbyId: c.standbyId,
      step: c.step,
      since: c.since.toISOString(),
      startedAt: c.startedAt.toISOString(),
      finishedAt: c.finishedAt?.toISOString() ?? null,
      setId: c.setId,
      heldSince: c.heldSince?.toISOString() ?? null,
      holdUntil: c.holdUntil?.toISOString() ?? null,
      promoteAllowedAt: c.promoteAllowedAt?.toISOString() ?? null,
      connected: c.peer?.isOpen() ?? false,
      onFenced: c.onFenced,
      onResume: c.onResume,
      error: c.error,
      recovered: c.recovered,
      history: c.history,
    };
  }

  /**
   * At start-up: a switchover.json left by a daemon that stopped while the site's writes were
   * stopped. Hold again until its deadline (or end it at once if the final set was never offered);
   * the start-up epoch check that follows fences this primary if the standby promoted.
   */
  async recover(): Promise<void> {
    let rec: HoldRecord;
    try {
      rec = JSON.parse(await readFile(this.recordFile, 'utf8')) as HoldRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.log.error({ err: describeError(err), file: this.recordFile }, 'switchover.json is unreadable: ignored');
      return;
    }
    if (rec.format !== 'tandem-switchover-hold') return;
    const now = this.now();
    const holdUntil = rec.holdUntil ? new Date(rec.holdUntil) : null;
    // Written by this version with promoteAllowedAt null: the standby never got promote-ok, so it
    // cannot be promoting, and its connection is gone with the restart: end the hold now.
    const neverAllowed = rec.promoteAllowedAt === null;
    const c: Current = {
      requestId: rec.requestId,
      standbyId: rec.standbyId,
      peer: null,
      state: 'held',
      step: 'hold',
      since: now,
      startedAt: new Date(rec.startedAt),
      finishedAt: null,
      timeoutMs: 0,
      setId: rec.setId,
      heldSince: rec.heldSince ? new Date(rec.heldSince) : null,
      holdUntil,
      promoteAllowedAt: typeof rec.promoteAllowedAt === 'string' ? new Date(rec.promoteAllowedAt) : null,
      onFenced: 'ok',
      onResume: 'not-run',
      error: null,
      callOff: null,
      readySent: holdUntil !== null,
      doneEpoch: null,
      recovered: true,
      history: [],
    };
    this.cur = c;
    this.host.setHeld(true);
    this.lock = await acquireLock(join(this.host.config.stateDir, 'backup.lock'), 'switchover hold', `a backup of site "${this.host.config.site}"`).catch(() => null);
    if (neverAllowed) {
      this.step(c, 'hold', `recovered a switchover hold from ${this.recordFile}: the site's writes were stopped by onFenced, and ${c.standbyId} was never allowed to promote: ending it now`);
      this.log.warn({ requestId: c.requestId, standbyId: c.standbyId }, 'the daemon was restarted during a switchover before the standby was allowed to promote: ending the hold now');
      this.armHoldTimer(c, 0, `the daemon was restarted before ${c.standbyId} was allowed to promote`);
      return;
    }
    const wait = holdUntil === null ? 0 : Math.max(0, holdUntil.getTime() - now.getTime());
    this.step(c, 'hold', `recovered a switchover hold from ${this.recordFile}: the site's writes were stopped by onFenced; holding until ${holdUntil?.toISOString() ?? 'now'}`);
    this.log.warn({ requestId: c.requestId, standbyId: c.standbyId, holdUntil: holdUntil?.toISOString() ?? null }, 'the daemon was restarted during a switchover: still holding (writes stopped) until the hold ends');
    this.armHoldTimer(c, wait);
  }

  /** Daemon shutdown: timers stop; switchover.json stays, so the next start ends the hold. */
  async stop(): Promise<void> {
    this.clearHoldTimer();
    const c = this.cur;
    if (c !== null && ACTIVE.has(c.state) && c.onFenced === 'ok') {
      this.log.warn({ requestId: c.requestId }, 'shutting down while a switchover holds (the site\'s writes stopped): the next start resumes it or finds this primary fenced');
    }
    await this.lock?.release().catch(() => undefined);
    this.lock = null;
  }

  // -------------------------------------------------------------------------------------------
  // Messages from the standby (standbys.ts routes them here)
  // -------------------------------------------------------------------------------------------

  request(peer: SwitchoverPeer, msg: SwitchoverRequest): void {
    const { config } = this.host;
    const refuse = (error: string, hint?: string) => {
      this.log.warn({ requestId: msg.requestId, standbyId: msg.standbyId, peer: peer.remote, error }, 'switchover request refused');
      peer.send({ type: 'switchover-failed', requestId: msg.requestId, step: 'request', error: hint ? `${error} (${hint})` : error, primary: 'unchanged' });
    };
    this.log.info({ requestId: msg.requestId, standbyId: msg.standbyId, peer: peer.remote, timeoutSeconds: msg.timeoutSeconds }, 'switchover requested');
    if (msg.site !== config.site) return refuse(`this primary serves site "${config.site}", not "${msg.site}"`);
    // standbys.ts already closed a connection whose request names another standby than its token's.
    if (msg.standbyId !== peer.standbyId || !config.standbys.some((sb) => sb.id === msg.standbyId)) {
      return refuse(`standby "${msg.standbyId}" is not listed in this primary's standbys:`, 'list it there with its own tokenFile');
    }
    if (this.host.isFenced()) return refuse('this primary is fenced: a higher epoch exists, so it is not the primary to switch over from');
    if (this.host.isStopping()) return refuse('this primary is shutting down');
    if (this.holding()) return refuse(`another switchover is in progress: ${this.describeHold()}`);
    if (!config.onFenced) {
      return refuse('onFenced is not configured on the primary: it cannot stop the site\'s writes, and writes after the final backup would be lost', 'set onFenced (e.g. maintenance mode) and onResume in the primary config');
    }
    if (!config.onResume) {
      return refuse('onResume is not configured on the primary: a switchover that fails after onFenced could not put the site back', 'set onResume to undo onFenced in the primary config');
    }
    if (this.host.epoch() === null) return refuse('this primary has not read epoch.json yet (filestore unreachable?); try again');
    const now = this.now();
    const timeoutMs = Math.min(msg.timeoutSeconds, MAX_HOLD_SECONDS) * 1000;
    const c: Current = {
      requestId: msg.requestId,
      standbyId: msg.standbyId,
      peer,
      state: 'preparing',
      step: 'request',
      since: now,
      startedAt: now,
      finishedAt: null,
      timeoutMs,
      setId: null,
      heldSince: null,
      holdUntil: null,
      promoteAllowedAt: null,
      onFenced: 'not-run',
      onResume: 'not-run',
      error: null,
      callOff: null,
      readySent: false,
      doneEpoch: null,
      recovered: false,
      history: [],
    };
    this.cur = c;
    const capped = msg.timeoutSeconds * 1000 > timeoutMs ? ` (asked for ${formatDuration(msg.timeoutSeconds * 1000)}, capped)` : '';
    this.progress(c, 'accepted', `switchover to ${msg.standbyId} accepted; the hold lasts at most ${formatDuration(timeoutMs)}${capped}; no backups but the final one from now on`);
    void this.run(c).catch((err: unknown) => {
      this.log.error({ err, requestId: c.requestId }, 'switchover failed unexpectedly');
      void this.callOffNow(c, `unexpected failure: ${describeError(err)}`, 'internal', 'best-effort');
    });
  }

  abort(peer: SwitchoverPeer, msg: SwitchoverAbort): void {
    const c = this.matching(peer, msg.requestId);
    if (c === null) return;
    this.log.warn({ requestId: c.requestId, step: msg.step, error: msg.error }, `the standby calls off the switchover: its step "${msg.step}" failed`);
    this.step(c, 'abort', `the standby calls it off: ${msg.step} failed: ${msg.error}`);
    const why = `the standby's step "${msg.step}" failed: ${msg.error}`;
    if (c.state === 'preparing') {
      c.callOff = { why, step: msg.step };
      return;
    }
    // Before "promote" the standby cannot have raised the epoch: resume even if epoch.json is unreadable.
    void this.callOffNow(c, why, msg.step, msg.step === 'promote' ? 'must-check-epoch' : 'best-effort');
  }

  /**
   * The standby applied the final set and asks to promote. From the answer on, the hold lasts until
   * its deadline whatever becomes of the connection; the record says so first, for a restart.
   */
  promoting(peer: SwitchoverPeer, msg: SwitchoverPromoting): void {
    const c = this.matching(peer, msg.requestId);
    if (c === null) return;
    if (c.state !== 'held' || c.holdUntil === null) {
      this.log.warn({ requestId: c.requestId, state: c.state }, 'switchover-promoting while not holding: ignored (the standby hears how it ends)');
      return;
    }
    const holdUntil = c.holdUntil;
    c.promoteAllowedAt ??= this.now();
    void (async () => {
      // Unrecorded, a restart would end the hold while the standby may be raising the epoch: no go-ahead then.
      if (!(await this.writeRecord(c))) {
        this.log.error({ requestId: c.requestId, file: this.recordFile }, 'not allowing the promote: the hold could not be recorded; the standby calls the switchover off');
        c.promoteAllowedAt = null;
        return;
      }
      if (!this.active(c) || c.state !== 'held') return;
      this.step(c, 'promote-allowed', `${c.standbyId} applied ${c.setId} and may promote now; holding until ${holdUntil.toISOString()} whatever becomes of the connection`);
      this.log.info({ requestId: c.requestId, holdUntil: holdUntil.toISOString() }, 'switchover: the standby may promote now');
      this.send(c, { type: 'switchover-promote-ok', requestId: c.requestId, holdUntil: holdUntil.toISOString() });
    })();
  }

  done(peer: SwitchoverPeer, msg: SwitchoverDone): void {
    const c = this.matching(peer, msg.requestId);
    if (c === null) return;
    if (c.state !== 'held') {
      this.log.warn({ requestId: c.requestId, state: c.state }, 'switchover-done while not holding: ignored');
      return;
    }
    c.doneEpoch = msg.epoch;
    this.step(c, 'done', `the standby reports it promoted (epoch ${msg.epoch}): reading epoch.json`);
    this.log.info({ requestId: c.requestId, epoch: msg.epoch }, 'the standby reports it promoted: checking epoch.json now');
    void (async () => {
      try {
        if (await this.host.recheckEpoch()) return; // fenced() has finished it
        this.log.error(
          { requestId: c.requestId, epoch: msg.epoch, ownEpoch: this.host.epoch() },
          `the standby says it raised the epoch to ${msg.epoch}, but epoch.json still names this primary: still holding until ${c.holdUntil?.toISOString()}, then resuming unless it is raised`,
        );
      } catch (err) {
        this.log.error({ err: describeError(err), requestId: c.requestId }, 'cannot read epoch.json after switchover-done: the heartbeat tries again (still holding)');
      }
    })();
  }

  /** The switchover connection closed. */
  closed(peer: SwitchoverPeer): void {
    const c = this.cur;
    if (c === null || c.peer !== peer || !ACTIVE.has(c.state)) return;
    if (c.state === 'preparing') {
      this.log.warn({ requestId: c.requestId }, 'the standby disconnected before the final set was offered: calling the switchover off after the current step');
      c.callOff = { why: 'the standby disconnected before the final set was offered', step: 'connection' };
      return;
    }
    if (c.state === 'held' && c.promoteAllowedAt === null) {
      // It never got promote-ok, so it is not promoting: the site's writes stay stopped no longer.
      this.log.warn({ requestId: c.requestId }, 'the standby disconnected before it was allowed to promote: calling the switchover off now');
      void this.callOffNow(c, `${c.standbyId} disconnected before it was allowed to promote`, 'connection', 'best-effort');
      return;
    }
    if (c.state === 'held') {
      this.step(c, 'hold', `the standby disconnected after it was allowed to promote; holding until ${c.holdUntil?.toISOString()} (it may be promoting), then resuming unless epoch.json was raised`);
      this.log.warn({ requestId: c.requestId, holdUntil: c.holdUntil?.toISOString() }, 'the standby disconnected while the primary holds: waiting for the hold timeout (or a raised epoch)');
    }
  }

  // -------------------------------------------------------------------------------------------
  // The steps
  // -------------------------------------------------------------------------------------------

  private async run(c: Current): Promise<void> {
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
      this.send(c, { type: 'switchover-failed', requestId: c.requestId, step: off.step, error: why, primary: 'unchanged' });
      this.log.warn({ requestId: c.requestId, why }, 'switchover called off before anything changed');
      this.host.resumed();
      return;
    }

    // Stop the site's writes.
    this.progress(c, 'stop-writes', 'running onFenced to stop the site\'s writes');
    c.onFenced = 'running';
    const stopped = await runHook(config.onFenced!, this.hookEnv(c), this.host.hookTimeoutMs ?? HOOK_TIMEOUT_MS);
    if (!stopped.ok) {
      c.onFenced = 'failed';
      const error = `onFenced \`${config.onFenced}\` ${stopped.error}`;
      this.log.error({ requestId: c.requestId, onFenced: config.onFenced, error: stopped.error }, 'switchover failed: onFenced failed; nothing else changed (onResume is not run)');
      if (!this.active(c)) return;
      this.step(c, 'stop-writes', `FAILED: ${error}`);
      this.finish(c, 'refused', error);
      this.send(c, { type: 'switchover-failed', requestId: c.requestId, step: 'stop-writes', error, primary: 'unchanged' });
      this.host.resumed();
      return;
    }
    c.onFenced = 'ok';
    this.host.setHeld(true);
    await this.writeRecord(c);
    if (!this.active(c)) return; // fenced meanwhile: fenced() ended it
    this.progress(c, 'writes-stopped', 'writes stopped (onFenced ran)');
    off = this.pendingCallOff(c);
    if (off) {
      await this.callOffNow(c, off.why, off.step, 'best-effort');
      return;
    }

    // The final backup.
    this.progress(c, 'final-backup', 'final backup started');
    let result: BackupResult;
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
      if (!this.active(c)) return;
      if (this.host.isFenced() || isTandemError(err, 'fenced')) return; // fence() → fenced() ends it
      const error = `the final backup failed: ${describeError(err)}`;
      this.log.error({ requestId: c.requestId, err: describeError(err) }, 'switchover: the final backup failed; putting the primary back');
      this.step(c, 'final-backup', `FAILED: ${describeError(err)}`);
      await this.callOffNow(c, error, 'final-backup', 'best-effort');
      return;
    }
    if (!this.active(c)) return;
    c.setId = result.setId;
    this.progress(c, 'final-backup-committed', `final backup ${result.setId} committed`);
    // Not even `tandem-primary backup --local` may commit a set after the final one.
    this.lock = await acquireLock(join(config.stateDir, 'backup.lock'), 'switchover hold', `a backup of site "${config.site}"`).catch((err: unknown) => {
      this.log.warn({ err: describeError(err) }, 'could not take the backup lock for the hold (a backup outside the daemon runs?): the standby\'s promote refuses if it commits a newer set');
      return null;
    });
    off = this.pendingCallOff(c) ?? (c.peer?.isOpen() ? null : { why: 'the standby disconnected before the final set was offered', step: 'connection' });
    if (off) {
      await this.callOffNow(c, off.why, off.step, 'best-effort');
      return;
    }

    // Hold, and offer the set.
    const now = this.now();
    c.state = 'held';
    c.heldSince = now;
    c.holdUntil = new Date(now.getTime() + c.timeoutMs);
    await this.writeRecord(c);
    if (!this.active(c)) return;
    this.armHoldTimer(c, c.timeoutMs);
    c.readySent = true;
    this.send(c, {
      type: 'switchover-ready',
      requestId: c.requestId,
      setId: result.setId,
      epoch: result.epoch,
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
  private async callOffNow(c: Current, why: string, step: string, mode: 'must-check-epoch' | 'best-effort'): Promise<void> {
    if (c.state === 'resuming' || !this.active(c)) return;
    this.clearHoldTimer();
    c.state = 'resuming';
    this.step(c, 'resume', `calling the switchover off: ${why}`);
    for (;;) {
      try {
        if (await this.host.recheckEpoch()) return; // fenced() has ended it
        break;
      } catch (err) {
        if (mode === 'best-effort') {
          this.log.warn({ err: describeError(err) }, 'cannot read epoch.json; resuming anyway (the standby cannot have promoted)');
          break;
        }
        this.log.error({ err: describeError(err), requestId: c.requestId }, `cannot read epoch.json to tell whether ${c.standbyId} promoted: still holding (writes stopped); retrying in ${EPOCH_RETRY_MS / 1000} s`);
        await sleep(EPOCH_RETRY_MS);
        if (!this.active(c)) return;
      }
    }
    if (!this.active(c)) return;
    let resumeError: string | null = null;
    if (c.onFenced === 'ok') {
      c.onResume = 'running';
      const r = await runHook(this.host.config.onResume!, this.hookEnv(c, why), this.host.hookTimeoutMs ?? HOOK_TIMEOUT_MS);
      c.onResume = r.ok ? 'ok' : 'failed';
      if (!r.ok) resumeError = `onResume \`${this.host.config.onResume}\` ${r.error}`;
    }
    if (!this.active(c)) return;
    const error = `${why}${resumeError ? `; and ${resumeError}: the site's writes may still be stopped` : ''}`;
    this.finish(c, 'called-off', error);
    if (resumeError) {
      this.log.error({ requestId: c.requestId, why, onResume: this.host.config.onResume, error: resumeError }, 'switchover called off, but onResume FAILED: the site\'s writes may still be stopped; this server stays the primary and backs up again');
    } else {
      this.log.warn({ requestId: c.requestId, why }, 'switchover called off: onResume ran; this server stays the primary and backs up again');
    }
    const detail = c.onFenced === 'ok' ? (resumeError ? 'onResume FAILED' : 'onResume ran') : 'nothing to undo';
    this.step(c, 'resumed', `primary put back (${detail}); schedule resumed`);
    if (step === 'final-backup' || step === 'internal') {
      this.send(c, { type: 'switchover-failed', requestId: c.requestId, step, error, primary: resumeError ? 'resume-failed' : c.onFenced === 'ok' ? 'resumed' : 'unchanged' });
    } else {
      this.send(c, { type: 'switchover-resumed', requestId: c.requestId, reason: why, onResume: resumeError ? 'failed' : 'ok', error: resumeError });
    }
    await this.releaseHold();
    this.host.resumed();
  }

  /** End the hold after `ms` (why: the reason given; default: the hold timed out). */
  private armHoldTimer(c: Current, ms: number, why?: string): void {
    this.clearHoldTimer();
    this.holdTimer = setTimeout(() => {
      this.holdTimer = null;
      if (c !== this.cur || c.state !== 'held') return;
      if (why === undefined) this.log.warn({ requestId: c.requestId, holdUntil: c.holdUntil?.toISOString() }, 'switchover hold timed out: the standby did not promote in time');
      void this.callOffNow(c, why ?? `the hold timed out (${c.holdUntil ? `at ${c.holdUntil.toISOString()}` : 'after a restart'}) before ${c.standbyId} promoted`, 'hold', 'must-check-epoch');
    }, ms);
    this.holdTimer.unref();
  }

  private clearHoldTimer(): void {
    if (this.holdTimer) clearTimeout(this.holdTimer);
    this.holdTimer = null;
  }

  private async releaseHold(): Promise<void> {
    this.host.setHeld(false);
    await this.lock?.release().catch(() => undefined);
    this.lock = null;
    await rm(this.recordFile, { force: true }).catch((err: unknown) => this.log.warn({ err: describeError(err) }, 'could not remove switchover.json'));
  }

  /** False when it could not be written (warned about). */
  private async writeRecord(c: Current): Promise<boolean> {
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
        this.log.warn({ err: describeError(err) }, 'could not write switchover.json (a restart during the hold would forget it)');
        return false;
      },
    );
  }

  // -------------------------------------------------------------------------------------------
  // Helpers
  // -------------------------------------------------------------------------------------------

  private hookEnv(c: Current, why?: string): Record<string, string> {
    return {
      TANDEM_SITE: this.host.config.site,
      TANDEM_EPOCH: String(this.host.epoch() ?? ''),
      TANDEM_REASON: 'switchover',
      TANDEM_SWITCHOVER_ID: c.requestId,
      TANDEM_STANDBY_ID: c.standbyId,
      ...(why === undefined ? {} : { TANDEM_SWITCHOVER_CALLED_OFF: why.slice(0, 2000) }),
    };
  }

  private matching(peer: SwitchoverPeer, requestId: string): Current | null {
    const c = this.cur;
    if (c === null || c.requestId !== requestId || !ACTIVE.has(c.state)) {
      this.log.warn({ requestId, peer: peer.remote }, 'a switchover message for no switchover under way: ignored');
      return null;
    }
    if (c.peer !== null && c.peer !== peer) {
      this.log.warn({ requestId, peer: peer.remote }, 'a switchover message from another connection than the one that asked: ignored');
      return null;
    }
    return c;
  }

  /** An abort or lost connection noted meanwhile, or a shutdown. */
  private pendingCallOff(c: Current): { why: string; step: string } | null {
    if (c.callOff) return c.callOff;
    if (this.host.isStopping()) return { why: 'the primary is shutting down', step: 'request' };
    return null;
  }

  private active(c: Current): boolean {
    return this.cur === c && ACTIVE.has(c.state);
  }

  private now(): Date {
    return this.host.clock.now();
  }

  private step(c: Current, step: string, detail: string): void {
    c.step = step;
    c.since = this.now();
    c.history.push({ at: c.since.toISOString(), step, detail });
    if (c.history.length > HISTORY) c.history.shift();
  }

  /** A step the standby hears about (and the log and /status show). */
  private progress(c: Current, step: string, detail: string): void {
    this.step(c, step, detail);
    this.log.info({ requestId: c.requestId, step, setId: c.setId }, `switchover: ${detail}`);
    this.send(c, { type: 'switchover-progress', requestId: c.requestId, step, detail, setId: c.setId, at: c.since.toISOString() });
  }

  private finish(c: Current, state: SwitchoverState, error: string | null): void {
    c.state = state;
    c.error = error;
    c.finishedAt = this.now();
  }

  private send(c: Current, msg: SwitchoverPrimaryMessage): void {
    if (c.peer?.isOpen()) c.peer.send(msg);
  }
}
