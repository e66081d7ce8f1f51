import type { Logger, PrimaryConfig, SwitchoverPrimaryMessage } from '@tandem/shared';
import type { BackupResult } from '../backup/run-backup.js';
import type { Clock } from './scheduler.js';

/**
 * What a switchover is made of (switchover.ts runs it): its states, the connection it came in on,
 * what the daemon lends it, and the record of one switchover with its history, as /status shows it.
 */

/** The longest hold a standby may ask for. */
export const MAX_HOLD_SECONDS = 3_600;
const HISTORY = 40;

export type SwitchoverState = 'preparing' | 'held' | 'resuming' | 'completed' | 'called-off' | 'refused';
export type HookState = 'not-run' | 'running' | 'ok' | 'failed';

const ACTIVE: ReadonlySet<SwitchoverState> = new Set(['preparing', 'held', 'resuming']);

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
  /**
   * WAL mode only: closes the WAL file that holds the last write (pg_switch_wal) and waits, up to
   * `timeoutMs`, until PostgreSQL's archiver has stored it; returns its name.
   */
  finalWal?(timeoutMs: number): Promise<string>;
  /**
   * WAL mode only: the newest committed set, offered as the final set instead of a new base backup
   * (the standby keeps its replaying cluster; the last WAL file brings the rest). Null when there is none.
   */
  newestSet?(): { setId: string; epoch: number } | null;
  /** Read epoch.json now; a raised epoch fences this primary (fence() calls fenced() on the coordinator). True when fenced. Throws when it cannot be read. */
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

/** How a switchover starts: from a request, or from the record a stopped daemon left. */
export interface SwitchoverStart {
  requestId: string;
  standbyId: string;
  peer: SwitchoverPeer | null;
  state: SwitchoverState;
  step: string;
  startedAt: Date;
  timeoutMs: number;
  setId?: string | null;
  heldSince?: Date | null;
  holdUntil?: Date | null;
  promoteAllowedAt?: Date | null;
  onFenced?: HookState;
  readySent?: boolean;
  recovered?: boolean;
}

/** One switchover, from its request (or a recovered hold) to its end. */
export class Switchover {
  readonly requestId: string;
  readonly standbyId: string;
  readonly peer: SwitchoverPeer | null;
  state: SwitchoverState;
  step: string;
  since: Date;
  readonly startedAt: Date;
  finishedAt: Date | null = null;
  readonly timeoutMs: number;
  setId: string | null;
  heldSince: Date | null;
  holdUntil: Date | null;
  /** When switchover-promote-ok was sent: from then on the standby may raise the epoch. */
  promoteAllowedAt: Date | null;
  onFenced: HookState;
  onResume: HookState = 'not-run';
  error: string | null = null;
  /** Set by an abort or a lost connection before the hold: call off at the next step. */
  callOff: { why: string; step: string } | null = null;
  readySent: boolean;
  doneEpoch: number | null = null;
  readonly recovered: boolean;
  readonly history: HistoryEntry[] = [];

  constructor(s: SwitchoverStart, now: Date) {
    this.requestId = s.requestId;
    this.standbyId = s.standbyId;
    this.peer = s.peer;
    this.state = s.state;
    this.step = s.step;
    this.since = now;
    this.startedAt = s.startedAt;
    this.timeoutMs = s.timeoutMs;
    this.setId = s.setId ?? null;
    this.heldSince = s.heldSince ?? null;
    this.holdUntil = s.holdUntil ?? null;
    this.promoteAllowedAt = s.promoteAllowedAt ?? null;
    this.onFenced = s.onFenced ?? 'not-run';
    this.readySent = s.readySent ?? false;
    this.recovered = s.recovered ?? false;
  }

  /** From the accepted request until it ended: no backups but the final one. */
  get active(): boolean {
    return ACTIVE.has(this.state);
  }

  /** onFenced ran (or runs) for it and was not undone, so it must not run twice. */
  get onFencedRan(): boolean {
    return (this.onFenced === 'ok' || this.onFenced === 'running') && this.onResume !== 'ok';
  }

  /** For "backup refused / skipped" messages. */
  describe(): string {
    return `switchover ${this.requestId} to ${this.standbyId} is under way (${this.state}, step ${this.step}, since ${this.startedAt.toISOString()})`;
  }

  recordStep(step: string, detail: string, now: Date): void {
    this.step = step;
    this.since = now;
    this.history.push({ at: now.toISOString(), step, detail });
    if (this.history.length > HISTORY) this.history.shift();
  }

  finish(state: SwitchoverState, error: string | null, now: Date): void {
    this.state = state;
    this.error = error;
    this.finishedAt = now;
  }

  /** To the standby that asked, while its connection is open. */
  send(msg: SwitchoverPrimaryMessage): void {
    if (this.peer?.isOpen()) this.peer.send(msg);
  }

  status(): Record<string, unknown> {
    return {
      state: this.state,
      requestId: this.requestId,
      standbyId: this.standbyId,
      step: this.step,
      since: this.since.toISOString(),
      startedAt: this.startedAt.toISOString(),
      finishedAt: this.finishedAt?.toISOString() ?? null,
      setId: this.setId,
      heldSince: this.heldSince?.toISOString() ?? null,
      holdUntil: this.holdUntil?.toISOString() ?? null,
      promoteAllowedAt: this.promoteAllowedAt?.toISOString() ?? null,
      connected: this.peer?.isOpen() ?? false,
      onFenced: this.onFenced,
      onResume: this.onResume,
      error: this.error,
      recovered: this.recovered,
      history: this.history,
    };
  }
}
