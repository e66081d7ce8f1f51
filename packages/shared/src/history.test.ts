import { describe, expect, it } from 'vitest';
import { EventList, SampleRing } from './history.js';

describe('history', () => {
  it('samples on a change or when forced, and keeps only the window', () => {
    let now = 0;
    const ring = new SampleRing<{ v: number; set: string }>((s) => s.set, { windowMs: 10_000, now: () => now });
    expect(ring.offer({ v: 1, set: 'a' })).toBe(true); // the first
    now = 1_000;
    expect(ring.offer({ v: 2, set: 'a' })).toBe(false); // nothing changed
    expect(ring.offer({ v: 2, set: 'a' }, true)).toBe(true); // the minute timer
    now = 2_000;
    expect(ring.offer({ v: 3, set: 'b' })).toBe(true); // a new set
    expect(ring.list().map((s) => [s.t, s.v])).toEqual([
      [0, 1],
      [1_000, 2],
      [2_000, 3],
    ]);
    now = 10_500; // the first sample is now older than the window
    expect(ring.list().map((s) => s.t)).toEqual([1_000, 2_000]);
    now = 20_000;
    expect(ring.size).toBe(0);
  });

  it('is bounded: past its capacity the oldest sample goes', () => {
    let now = 0;
    const ring = new SampleRing<{ v: number }>((s) => String(s.v), { capacity: 16, now: () => now });
    for (let i = 0; i < 100; i++) {
      now = i;
      ring.offer({ v: i });
    }
    expect(ring.size).toBe(16);
    expect(ring.list().map((s) => s.v)).toEqual(Array.from({ length: 16 }, (_, i) => 84 + i));
    // The default: one a minute over 24 h, twice over.
    expect(new SampleRing<{ v: number }>((s) => String(s.v)).capacity).toBe(2880);
  });

  it('lists events newest first, one per key, at most max', () => {
    const events = new EventList<{ id: string; n: number }>(3, (e) => e.id);
    for (const [id, n] of [['a', 1], ['b', 2], ['a', 3], ['c', 4], ['d', 5]] as const) events.add({ id, n });
    expect(events.list()).toEqual([
      { id: 'd', n: 5 },
      { id: 'c', n: 4 },
      { id: 'a', n: 3 },
    ]);
    expect(events.has('b')).toBe(false);
    expect(events.has('a')).toBe(true);
  });
});
