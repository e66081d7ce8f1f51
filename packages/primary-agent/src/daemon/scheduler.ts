import { CronExpressionParser } from 'cron-parser';

/**
 * The backup schedule: a 5-field cron expression evaluated in the configured time zone (cron-parser
 * handles DST: a 02:30 run on the spring-forward day runs at 03:30, once).
 *
 * Missed-run rule: at start-up, when the last successful backup is older than the most recent
 * scheduled time (or there is none at all), the run that was missed (machine off, daemon down)
 * happens at once; the schedule then goes on as usual. Timers are capped (`maxTimerMs`) and the
 * clock is re-read on every wake-up, so a suspended machine or a stepped clock runs what is due,
 * once, instead of trusting a timer armed days ago.
 */
export interface Clock {
  now(): Date;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => new Date(),
  setTimer: (fn, ms) => setTimeout(fn, ms),
  clearTimer: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** The latest scheduled time at or before `now`. */
export function scheduledAtOrBefore(schedule: string, timeZone: string, now: Date): Date {
  return CronExpressionParser.parse(schedule, { tz: timeZone, currentDate: new Date(now.getTime() + 1) }).prev().toDate();
}

/** The first scheduled time strictly after `after`. */
export function scheduledAfter(schedule: string, timeZone: string, after: Date): Date {
  return CronExpressionParser.parse(schedule, { tz: timeZone, currentDate: after }).next().toDate();
}

export interface MissedRunInput {
  schedule: string;
  timeZone: string;
  /** When the last successful backup finished (or was committed); null when there never was one. */
  lastSuccessAt: Date | null;
  now: Date;
}

export function missedRun(input: MissedRunInput): { missed: boolean; scheduledAt: Date } {
  const scheduledAt = scheduledAtOrBefore(input.schedule, input.timeZone, input.now);
  const missed = input.lastSuccessAt === null || input.lastSuccessAt.getTime() < scheduledAt.getTime();
  return { missed, scheduledAt };
}

export type DueReason = 'schedule' | 'missed' | 'retry';

export interface SchedulerOptions {
  schedule: string;
  timeZone: string;
  clock?: Clock;
  /** Called when a run is due; the scheduler does not wait for it. */
  onDue(reason: DueReason, scheduledAt: Date): void;
  /** Longest single timer (default 1 h): the clock is re-read at least this often. */
  maxTimerMs?: number;
}

export class Scheduler {
  private readonly clock: Clock;
  private timer: unknown = null;
  private next: Date | null = null;
  private retryAt: Date | null = null;
  private stopped = true;

  constructor(private readonly opts: SchedulerOptions) {
    this.clock = opts.clock ?? systemClock;
  }

  /** Start; runs a missed run at once (returns whether it did). */
  start(lastSuccessAt: Date | null): { missed: boolean; scheduledAt: Date } {
    this.stopped = false;
    const now = this.clock.now();
    const m = missedRun({ schedule: this.opts.schedule, timeZone: this.opts.timeZone, lastSuccessAt, now });
    this.next = scheduledAfter(this.opts.schedule, this.opts.timeZone, now);
    this.arm();
    if (m.missed) this.opts.onDue('missed', m.scheduledAt);
    return m;
  }

  /** The next run: a pending retry or the next scheduled time, whichever is first. */
  get nextRunAt(): Date | null {
    if (this.stopped || this.next === null) return null;
    return this.retryAt !== null && this.retryAt < this.next ? this.retryAt : this.next;
  }

  /** Try again after `ms`, unless the next scheduled run comes first. */
  retryAfter(ms: number): Date | null {
    if (this.stopped || this.next === null) return null;
    const at = new Date(this.clock.now().getTime() + ms);
    if (at >= this.next) return null;
    this.retryAt = at;
    this.arm();
    return at;
  }

  cancelRetry(): void {
    this.retryAt = null;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    this.timer = null;
  }

  private arm(): void {
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    this.timer = null;
    if (this.stopped || this.next === null) return;
    const due = this.nextRunAt!;
    const delay = Math.max(0, due.getTime() - this.clock.now().getTime());
    this.timer = this.clock.setTimer(() => this.tick(), Math.min(delay, this.opts.maxTimerMs ?? 3_600_000));
  }

  private tick(): void {
    this.timer = null;
    if (this.stopped || this.next === null) return;
    const now = this.clock.now();
    if (now >= this.next) {
      const at = this.next;
      this.next = scheduledAfter(this.opts.schedule, this.opts.timeZone, now);
      this.retryAt = null; // the scheduled run is the retry
      this.arm();
      this.opts.onDue('schedule', at);
      return;
    }
    if (this.retryAt !== null && now >= this.retryAt) {
      const at = this.retryAt;
      this.retryAt = null;
      this.arm();
      this.opts.onDue('retry', at);
      return;
    }
    this.arm();
  }
}
