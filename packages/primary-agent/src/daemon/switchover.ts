import { describeError, formatDuration, type Logger, type SwitchoverAbort, type SwitchoverDone, type SwitchoverPromoting, type SwitchoverRequest } from '@tandem/shared';
import { SwitchoverHold } from './switchover-hold.js';
import { MAX_HOLD_SECONDS, Switchover, type SwitchoverHost, type SwitchoverPeer } from './switchover-state.js';
import { SwitchoverSteps } from './switchover-steps.js';

export { MAX_HOLD_SECONDS, type SwitchoverHost, type SwitchoverPeer, type SwitchoverState } from './switchover-state.js';

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
 *
 * This file is the protocol: what the daemon asks, and the standby's messages. The steps 2 to 5 and
 * calling off are switchover-steps.ts; what the hold holds (writes, backup lock, switchover.json,
 * deadline) is switchover-hold.ts.
 */
export class SwitchoverCoordinator {
  private cur: Switchover | null = null;
  private readonly log: Logger;
  private readonly hold: SwitchoverHold;
  private readonly steps: SwitchoverSteps;

  constructor(private readonly host: SwitchoverHost) {
    this.log = host.logger.child({ component: 'switchover' });
    this.hold = new SwitchoverHold({ config: host.config, logger: this.log, epoch: () => host.epoch(), setHeld: (held) => host.setHeld(held), hookTimeoutMs: host.hookTimeoutMs });
    this.steps = new SwitchoverSteps({ host, hold: this.hold, logger: this.log, isCurrent: (c) => c === this.cur });
  }

  // -------------------------------------------------------------------------------------------
  // What the daemon asks
  // -------------------------------------------------------------------------------------------

  /** True from the accepted request until the switchover ended: no backups but the final one. */
  holding(): boolean {
    return this.cur !== null && this.cur.active;
  }

  /** A description for "backup refused / skipped" messages. */
  describeHold(): string {
    return this.cur === null ? 'no switchover' : this.cur.describe();
  }

  /** fence() asks: onFenced ran (or runs) for this switchover, so it must not run twice. */
  onFencedRanForSwitchover(): boolean {
    return this.cur !== null && this.cur.onFencedRan;
  }

  /**
   * fence() tells: this primary is fenced now (called before every connection is closed). If the
   * epoch now names the standby that asked, after the final set was offered, the switchover is done.
   */
  fenced(newPrimary: string | null, why: string): void {
    const c = this.cur;
    if (c === null || !c.active) return;
    this.hold.disarm();
    const planned = c.readySent && newPrimary === c.standbyId;
    if (planned) {
      this.steps.step(c, 'fenced', `epoch.json names ${c.standbyId}: this primary is fenced; the switchover is complete`);
      this.steps.finish(c, 'completed', null);
      c.send({ type: 'switchover-progress', requestId: c.requestId, step: 'fenced', detail: `fenced: ${why}`, setId: c.setId, at: this.now().toISOString() });
      this.log.info({ requestId: c.requestId, standbyId: c.standbyId, setId: c.setId }, 'switchover complete: this primary is fenced');
    } else {
      const error = `this primary was fenced during the switchover: ${why}`;
      this.steps.step(c, 'fenced', error);
      this.steps.finish(c, 'called-off', error);
      c.send({ type: 'switchover-failed', requestId: c.requestId, step: 'fenced', error, primary: 'fenced' });
      this.log.error({ requestId: c.requestId, why }, 'switchover ended: this primary was fenced (not by the standby that asked)');
    }
    void this.hold.release();
  }

  status(): Record<string, unknown> | null {
    return this.cur?.status() ?? null;
  }

  /**
   * At start-up: a switchover.json left by a daemon that stopped while the site's writes were
   * stopped. Hold again until its deadline (or end it at once if the final set was never offered);
   * the start-up epoch check that follows fences this primary if the standby promoted.
   */
  async recover(): Promise<void> {
    const now = this.now();
    const found = await this.hold.recover(now);
    if (found === null) return;
    const c = found.switchover;
    const file = this.hold.recordFile;
    this.cur = c;
    this.hold.held();
    await this.hold.lockBackups().catch(() => undefined);
    if (found.neverAllowed) {
      this.steps.step(c, 'hold', `recovered a switchover hold from ${file}: the site's writes were stopped by onFenced, and ${c.standbyId} was never allowed to promote: ending it now`);
      this.log.warn({ requestId: c.requestId, standbyId: c.standbyId }, 'the daemon was restarted during a switchover before the standby was allowed to promote: ending the hold now');
      this.steps.armDeadline(c, 0, `the daemon was restarted before ${c.standbyId} was allowed to promote`);
      return;
    }
    const holdUntil = c.holdUntil;
    const wait = holdUntil === null ? 0 : Math.max(0, holdUntil.getTime() - now.getTime());
    this.steps.step(c, 'hold', `recovered a switchover hold from ${file}: the site's writes were stopped by onFenced; holding until ${holdUntil?.toISOString() ?? 'now'}`);
    this.log.warn({ requestId: c.requestId, standbyId: c.standbyId, holdUntil: holdUntil?.toISOString() ?? null }, 'the daemon was restarted during a switchover: still holding (writes stopped) until the hold ends');
    this.steps.armDeadline(c, wait);
  }

  /** Daemon shutdown: timers stop; switchover.json stays, so the next start ends the hold. */
  async stop(): Promise<void> {
    this.hold.disarm();
    const c = this.cur;
    if (c !== null && c.active && c.onFenced === 'ok') {
      this.log.warn({ requestId: c.requestId }, 'shutting down while a switchover holds (the site\'s writes stopped): the next start resumes it or finds this primary fenced');
    }
    await this.hold.stop();
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
    const c = new Switchover({ requestId: msg.requestId, standbyId: msg.standbyId, peer, state: 'preparing', step: 'request', startedAt: now, timeoutMs }, now);
    this.cur = c;
    const capped = msg.timeoutSeconds * 1000 > timeoutMs ? ` (asked for ${formatDuration(msg.timeoutSeconds * 1000)}, capped)` : '';
    this.steps.progress(c, 'accepted', `switchover to ${msg.standbyId} accepted; the hold lasts at most ${formatDuration(timeoutMs)}${capped}; no backups but the final one from now on`);
    void this.steps.run(c).catch((err: unknown) => {
      this.log.error({ err, requestId: c.requestId }, 'switchover failed unexpectedly');
      void this.steps.callOff(c, `unexpected failure: ${describeError(err)}`, 'internal', 'best-effort');
    });
  }

  abort(peer: SwitchoverPeer, msg: SwitchoverAbort): void {
    const c = this.matching(peer, msg.requestId);
    if (c === null) return;
    this.log.warn({ requestId: c.requestId, step: msg.step, error: msg.error }, `the standby calls off the switchover: its step "${msg.step}" failed`);
    this.steps.step(c, 'abort', `the standby calls it off: ${msg.step} failed: ${msg.error}`);
    const why = `the standby's step "${msg.step}" failed: ${msg.error}`;
    if (c.state === 'preparing') {
      c.callOff = { why, step: msg.step };
      return;
    }
    // Before "promote" the standby cannot have raised the epoch: resume even if epoch.json is unreadable.
    void this.steps.callOff(c, why, msg.step, msg.step === 'promote' ? 'must-check-epoch' : 'best-effort');
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
      if (!(await this.hold.record(c))) {
        this.log.error({ requestId: c.requestId, file: this.hold.recordFile }, 'not allowing the promote: the hold could not be recorded; the standby calls the switchover off');
        c.promoteAllowedAt = null;
        return;
      }
      if (this.cur !== c || c.state !== 'held') return;
      this.steps.step(c, 'promote-allowed', `${c.standbyId} applied ${c.setId} and may promote now; holding until ${holdUntil.toISOString()} whatever becomes of the connection`);
      this.log.info({ requestId: c.requestId, holdUntil: holdUntil.toISOString() }, 'switchover: the standby may promote now');
      c.send({ type: 'switchover-promote-ok', requestId: c.requestId, holdUntil: holdUntil.toISOString() });
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
    this.steps.step(c, 'done', `the standby reports it promoted (epoch ${msg.epoch}): reading epoch.json`);
    this.log.info({ requestId: c.requestId, epoch: msg.epoch }, 'the standby reports it promoted: checking epoch.json now');
    void (async () => {
      try {
        if (await this.host.recheckEpoch()) return; // fenced() has finished it
        this.log.error(
          { requestId: c.requestId, epoch: msg.epoch, ownEpoch: this.host.epoch() },
          `the standby says it raised the epoch to ${msg.epoch}, but epoch.json still names this primary: still holding until ${c.holdUntil?.toISOString()}, then resuming unless it is raised`,
        );
      } catch (err) {
        this.log.error({ err, requestId: c.requestId }, 'cannot read epoch.json after switchover-done: the heartbeat tries again (still holding)');
      }
    })();
  }

  /** The switchover connection closed. */
  closed(peer: SwitchoverPeer): void {
    const c = this.cur;
    if (c === null || c.peer !== peer || !c.active) return;
    if (c.state === 'preparing') {
      this.log.warn({ requestId: c.requestId }, 'the standby disconnected before the final set was offered: calling the switchover off after the current step');
      c.callOff = { why: 'the standby disconnected before the final set was offered', step: 'connection' };
      return;
    }
    if (c.state === 'held' && c.promoteAllowedAt === null) {
      // It never got promote-ok, so it is not promoting: the site's writes stay stopped no longer.
      this.log.warn({ requestId: c.requestId }, 'the standby disconnected before it was allowed to promote: calling the switchover off now');
      void this.steps.callOff(c, `${c.standbyId} disconnected before it was allowed to promote`, 'connection', 'best-effort');
      return;
    }
    if (c.state === 'held') {
      this.steps.step(c, 'hold', `the standby disconnected after it was allowed to promote; holding until ${c.holdUntil?.toISOString()} (it may be promoting), then resuming unless epoch.json was raised`);
      this.log.warn({ requestId: c.requestId, holdUntil: c.holdUntil?.toISOString() }, 'the standby disconnected while the primary holds: waiting for the hold timeout (or a raised epoch)');
    }
  }

  // -------------------------------------------------------------------------------------------
  // Helpers
  // -------------------------------------------------------------------------------------------

  private matching(peer: SwitchoverPeer, requestId: string): Switchover | null {
    const c = this.cur;
    if (c === null || c.requestId !== requestId || !c.active) {
      this.log.warn({ requestId, peer: peer.remote }, 'a switchover message for no switchover under way: ignored');
      return null;
    }
    if (c.peer !== null && c.peer !== peer) {
      this.log.warn({ requestId, peer: peer.remote }, 'a switchover message from another connection than the one that asked: ignored');
      return null;
    }
    return c;
  }

  private now(): Date {
    return this.host.clock.now();
  }
}
