import { describe, expect, it } from 'vitest';
import { Scheduler, missedRun, scheduledAfter, type Clock, type DueReason } from './scheduler.js';

/** A clock and timers under the test's control: nothing sleeps. */
class FakeClock implements Clock {
  private t: number;
  private timers: Array<{ id: number; at: number; fn: () => void }> = [];
  private ids = 0;
  constructor(start: string) {
    this.t = Date.parse(start);
  }
  now = () => new Date(this.t);
  setTimer = (fn: () => void, ms: number) => {
    const id = ++this.ids;
    this.timers.push({ id, at: this.t + ms, fn });
    return id;
  };
  clearTimer = (h: unknown) => {
    this.timers = this.timers.filter((x) => x.id !== h);
  };
  /** Move time forward, firing due timers in order (as a running process would). */
  advanceTo(iso: string): void {
    const target = Date.parse(iso);
    for (;;) {
      const next = this.timers.filter((x) => x.at <= target).sort((a, b) => a.at - b.at)[0];
      if (!next) break;
      this.timers = this.timers.filter((x) => x !== next);
      this.t = Math.max(this.t, next.at);
      next.fn();
    }
    this.t = target;
  }
  /** A suspended machine: the clock jumps, then the pending timers fire late. */
  jumpTo(iso: string): void {
    this.t = Date.parse(iso);
    const due = this.timers.filter((x) => x.at <= this.t);
    this.timers = this.timers.filter((x) => x.at > this.t);
    for (const x of due) x.fn();
  }
  get pending(): number {
    return this.timers.length;
  }
}

const AMS = 'Europe/Amsterdam';

function start(clockAt: string, lastSuccessAt: string | null, schedule = '0 3 * * *', tz = AMS) {
  const clock = new FakeClock(clockAt);
  const due: Array<[DueReason, string, string]> = [];
  const s = new Scheduler({ schedule, timeZone: tz, clock, onDue: (r, at) => due.push([r, at.toISOString(), clock.now().toISOString()]) });
  const m = s.start(lastSuccessAt === null ? null : new Date(lastSuccessAt));
  return { clock, due, s, m };
}

describe('missed-run rule', () => {
  it('runs at start-up when the last success is older than the last scheduled time, in the configured zone', () => {
    // 03:00 Amsterdam is 02:00Z in winter.
    expect(missedRun({ schedule: '0 3 * * *', timeZone: AMS, lastSuccessAt: new Date('2026-03-09T02:00:40Z'), now: new Date('2026-03-10T09:00:00Z') })).toEqual({
      missed: true,
      scheduledAt: new Date('2026-03-10T02:00:00Z'),
    });
    expect(missedRun({ schedule: '0 3 * * *', timeZone: AMS, lastSuccessAt: new Date('2026-03-10T02:00:41Z'), now: new Date('2026-03-10T09:00:00Z') }).missed).toBe(false);
    expect(missedRun({ schedule: '0 3 * * *', timeZone: AMS, lastSuccessAt: null, now: new Date('2026-03-10T09:00:00Z') }).missed).toBe(true);
    // 01:30Z is 02:30 in Amsterdam: today's 03:00 has not come yet there, but has in UTC.
    const input = { schedule: '0 3 * * *', lastSuccessAt: new Date('2026-03-09T02:00:41Z'), now: new Date('2026-03-10T01:30:00Z') };
    expect(missedRun({ ...input, timeZone: AMS }).missed).toBe(false);
    expect(missedRun({ ...input, timeZone: 'UTC' }).missed).toBe(true);
    // Exactly at the scheduled instant, that run counts as due.
    expect(missedRun({ schedule: '0 3 * * *', timeZone: AMS, lastSuccessAt: new Date('2026-03-09T02:00:41Z'), now: new Date('2026-03-10T02:00:00Z') }).missed).toBe(true);
  });

  it('the scheduler runs a missed backup at start, once, then keeps to the schedule', () => {
    const { clock, due, s, m } = start('2026-03-10T09:00:00Z', '2026-03-09T02:00:40Z');
    expect(m.missed).toBe(true);
    expect(due).toEqual([['missed', '2026-03-10T02:00:00.000Z', '2026-03-10T09:00:00.000Z']]);
    expect(s.nextRunAt?.toISOString()).toBe('2026-03-11T02:00:00.000Z');
    clock.advanceTo('2026-03-11T01:59:59Z');
    expect(due).toHaveLength(1);
    clock.advanceTo('2026-03-12T12:00:00Z');
    expect(due.slice(1)).toEqual([
      ['schedule', '2026-03-11T02:00:00.000Z', '2026-03-11T02:00:00.000Z'],
      ['schedule', '2026-03-12T02:00:00.000Z', '2026-03-12T02:00:00.000Z'],
    ]);
    s.stop();
    expect(clock.pending).toBe(0);
  });

  it('does not run at start when the last backup is recent; follows DST in the zone', () => {
    const { clock, due, s, m } = start('2026-03-28T12:00:00Z', '2026-03-28T02:00:30Z');
    expect(m.missed).toBe(false);
    expect(due).toEqual([]);
    // 03:00 on the spring-forward day is 01:00Z (CEST).
    expect(s.nextRunAt?.toISOString()).toBe('2026-03-29T01:00:00.000Z');
    clock.advanceTo('2026-03-29T06:00:00Z');
    expect(due).toEqual([['schedule', '2026-03-29T01:00:00.000Z', '2026-03-29T01:00:00.000Z']]);
    s.stop();
  });

  it('after a suspend, runs what is due once, not once per missed day', () => {
    const { clock, due, s } = start('2026-03-10T09:00:00Z', '2026-03-10T02:00:40Z');
    clock.jumpTo('2026-03-14T08:00:00Z');
    expect(due).toEqual([['schedule', '2026-03-11T02:00:00.000Z', '2026-03-14T08:00:00.000Z']]);
    expect(s.nextRunAt?.toISOString()).toBe('2026-03-15T02:00:00.000Z');
    s.stop();
  });

  it('retries a failed run before the next scheduled one, never after it', () => {
    const { clock, due, s } = start('2026-03-10T09:00:00Z', '2026-03-10T02:00:40Z');
    expect(s.retryAfter(60_000)?.toISOString()).toBe('2026-03-10T09:01:00.000Z');
    expect(s.nextRunAt?.toISOString()).toBe('2026-03-10T09:01:00.000Z');
    clock.advanceTo('2026-03-10T09:05:00Z');
    expect(due).toEqual([['retry', '2026-03-10T09:01:00.000Z', '2026-03-10T09:01:00.000Z']]);
    expect(s.retryAfter(24 * 3_600_000)).toBeNull();
    expect(s.nextRunAt?.toISOString()).toBe('2026-03-11T02:00:00.000Z');
    s.stop();
  });

  it('works for other schedules', () => {
    expect(scheduledAfter('*/15 * * * *', 'UTC', new Date('2026-03-10T09:00:00Z')).toISOString()).toBe('2026-03-10T09:15:00.000Z');
    expect(scheduledAfter('0 3 * * 0', AMS, new Date('2026-03-10T09:00:00Z')).toISOString()).toBe('2026-03-15T02:00:00.000Z');
  });
});
