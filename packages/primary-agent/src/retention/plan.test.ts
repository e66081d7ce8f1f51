import { describe, expect, it } from 'vitest';
import { makeSetId } from '@tandem/shared';
import { planRetention, type AppliedRecord, type SetInfo } from './plan.js';

/**
 * Retention over simulated months: sets are made, applied and pruned on an injected clock; nothing
 * sleeps. The zone is Europe/Amsterdam and the 60 days cross the spring DST change (2026-03-29), with
 * sets at 00:30 and 23:30 local time, so that bucketing days in UTC instead of the configured zone
 * would keep different sets.
 */
const TZ = 'Europe/Amsterdam';
const H = 3_600_000;

/** Amsterdam wall-clock time → instant (CET until 2026-03-29 02:00, CEST after). */
function local(y: number, mo: number, d: number, h: number, mi = 0): Date {
  const naive = Date.UTC(y, mo - 1, d, h, mi);
  const offset = naive < Date.UTC(2026, 2, 29, 2, 0) ? 1 : 2;
  return new Date(naive - offset * H);
}

const POLICY = { daily: 7, weekly: 4 };

describe('retention plan: 60 simulated days', () => {
  it('keeps exactly the daily and weekly generations plus the protected sets, pruning after every backup', () => {
    type Ev = { at: Date; kind: 'commit' | 'leftover' | 'apply-B' };
    const end = local(2026, 4, 20, 11, 30);
    const events: Ev[] = [];
    for (let i = 0; i < 60; i++) {
      const day = new Date(Date.UTC(2026, 1, 20 + i)); // 2026-02-20 .. 2026-04-20
      const [y, mo, d] = [day.getUTCFullYear(), day.getUTCMonth() + 1, day.getUTCDate()];
      for (const [h, mi] of [[0, 30], [11, 0], [23, 30]] as const) events.push({ at: local(y, mo, d, h, mi), kind: 'commit' });
      events.push({ at: local(y, mo, d, 12, 0), kind: 'apply-B' });
      if ((mo === 3 && d === 1) || (mo === 4 && d === 20)) events.push({ at: local(y, mo, d, 5, 0), kind: 'leftover' });
    }
    events.sort((a, b) => a.at.getTime() - b.at.getTime());

    const store = new Map<string, SetInfo>(); // the filestore's sets
    const idAt = new Map<number, string>();
    const reports = new Map<string, AppliedRecord>(); // one report file per standby, overwritten
    let latest: string | null = null;
    let seq = 0;
    let retentionRuns = 0;
    const prune = (now: Date) => {
      const plan = planRetention({ sets: [...store.values()], now, policy: POLICY, timeZone: TZ, latestSetId: latest, applied: [...reports.values()] });
      // Never the protected ones, at any step.
      const doomed = new Set(plan.delete.map((d) => d.setId));
      expect(doomed.has(latest!)).toBe(false);
      for (const r of reports.values()) if (now.getTime() - r.appliedAt.getTime() <= 24 * H) expect(doomed.has(r.setId)).toBe(false);
      expect(plan.keep.length + plan.delete.length).toBe(store.size);
      for (const d of plan.delete) store.delete(d.setId);
      retentionRuns++;
      return plan;
    };

    for (const ev of events) {
      if (ev.at > end) break;
      const setId = makeSetId(ev.at, 1, ++seq);
      idAt.set(ev.at.getTime(), setId);
      if (ev.kind === 'leftover') {
        store.set(setId, { setId, createdAt: ev.at, committed: false, lastModified: ev.at });
      } else if (ev.kind === 'commit') {
        store.set(setId, { setId, createdAt: ev.at, committed: true, lastModified: ev.at });
        latest = setId;
        // Standby A follows the push: applies every set within minutes.
        reports.set('A', { standbyId: 'A', setId, appliedAt: new Date(ev.at.getTime() + 5 * 60_000) });
        prune(new Date(ev.at.getTime() + 60_000));
      } else {
        // Standby B applies once a day, at noon, whatever is newest then.
        reports.set('B', { standbyId: 'B', setId: latest!, appliedAt: ev.at });
      }
    }
    expect(retentionRuns).toBe(59 * 3 + 2);

    const final = prune(end);
    const id = (y: number, mo: number, d: number, h: number, mi: number) => idAt.get(local(y, mo, d, h, mi).getTime())!;
    const expected = [
      id(2026, 4, 5, 23, 30), // weekly: 2026-W14 (Mar 30 - Apr 5, after the DST change)
      id(2026, 4, 12, 23, 30), // weekly: 2026-W15
      id(2026, 4, 14, 23, 30), // daily
      id(2026, 4, 15, 23, 30),
      id(2026, 4, 16, 23, 30),
      id(2026, 4, 17, 23, 30),
      id(2026, 4, 18, 23, 30),
      id(2026, 4, 19, 11, 0), // standby B applied it yesterday at noon: protected, though superseded
      id(2026, 4, 19, 23, 30), // daily and weekly 2026-W16
      id(2026, 4, 20, 11, 0), // latest, daily and weekly 2026-W17
    ].sort();
    const committed = [...store.values()].filter((s) => s.committed).map((s) => s.setId).sort();
    expect(committed).toEqual(expected);
    // The young leftover of this morning stays (a backup may be running); the one of March 1 went.
    expect([...store.values()].filter((s) => !s.committed).map((s) => s.setId)).toEqual([id(2026, 4, 20, 5, 0)]);

    const why = new Map(final.keep.map((k) => [k.setId, k.reasons]));
    expect(why.get(id(2026, 4, 20, 11, 0))).toEqual([
      'latest.json names it',
      `standby A applied it at ${new Date(local(2026, 4, 20, 11, 0).getTime() + 5 * 60_000).toISOString()} (within 24 h)`,
      'daily: newest of 2026-04-20',
      'weekly: newest of 2026-W17',
    ]);
    expect(why.get(id(2026, 4, 19, 11, 0))).toEqual([`standby B applied it at ${local(2026, 4, 19, 12, 0).toISOString()} (within 24 h)`]);
    expect(why.get(id(2026, 4, 5, 23, 30))).toEqual(['weekly: newest of 2026-W14']);
    expect(why.get(id(2026, 4, 20, 5, 0))).toEqual(['uncommitted, younger than 24 h: possibly a backup in progress']);

    // Pruning the result once more changes nothing (the plan is a fixed point).
    expect(planRetention({ sets: [...store.values()], now: end, policy: POLICY, timeZone: TZ, latestSetId: latest, applied: [...reports.values()] }).delete).toEqual([]);
  });

  it('says why each set goes, and never touches the latest, recently applied, future or foreign sets', () => {
    const now = local(2026, 4, 20, 11, 30);
    const at = (mo: number, d: number, h: number, mi = 0) => local(2026, mo, d, h, mi);
    let seq = 0;
    const mk = (t: Date, committed = true): SetInfo => ({ setId: makeSetId(t, 1, ++seq), createdAt: t, committed, lastModified: t });
    const old = mk(at(2, 1, 3)); // far outside every window, but named by latest.json
    const applied2h = mk(at(3, 1, 3)); // outside the windows, applied by a standby 2 h ago
    const applied30h = mk(at(3, 2, 3)); // applied 30 h ago: no longer protected
    const superseded = mk(at(4, 20, 0, 30));
    const today = mk(at(4, 20, 11));
    const supersededInWeek = mk(at(4, 8, 3)); // week 2026-W15 (in the 3-week window) keeps only Apr 12's set
    const week15 = mk(at(4, 12, 3));
    const oldLeftover = mk(at(4, 18, 3), false);
    const future = mk(new Date(now.getTime() + 2 * H));
    const foreign: SetInfo = { setId: 'not-a-set', createdAt: null, committed: false };
    const plan = planRetention({
      sets: [old, applied2h, applied30h, superseded, today, supersededInWeek, week15, oldLeftover, future, foreign],
      now,
      policy: { daily: 3, weekly: 3 },
      timeZone: TZ,
      latestSetId: old.setId,
      applied: [
        { standbyId: 'web2', setId: applied2h.setId, appliedAt: new Date(now.getTime() - 2 * H) },
        { standbyId: 'web3', setId: applied30h.setId, appliedAt: new Date(now.getTime() - 30 * H) },
      ],
    });
    const keep = Object.fromEntries(plan.keep.map((k) => [k.setId, k.reasons.join('; ')]));
    const del = Object.fromEntries(plan.delete.map((k) => [k.setId, k.reasons.join('; ')]));
    expect(keep).toEqual({
      [old.setId]: 'latest.json names it',
      [applied2h.setId]: `standby web2 applied it at ${new Date(now.getTime() - 2 * H).toISOString()} (within 24 h)`,
      [today.setId]: 'daily: newest of 2026-04-20; weekly: newest of 2026-W17',
      [week15.setId]: 'weekly: newest of 2026-W15',
      [future.setId]: 'created in the future (clock skew?): left alone',
      'not-a-set': 'not a tandem set id: left alone',
    });
    expect(del).toEqual({
      [applied30h.setId]: 'older than the last 3 day(s) and 3 week(s)',
      [superseded.setId]: `superseded: ${today.setId} is the newest of 2026-04-20`,
      [supersededInWeek.setId]: `superseded: ${week15.setId} is the newest of 2026-W15`,
      [oldLeftover.setId]: 'uncommitted leftover of an interrupted backup, older than 24 h',
    });
  });
});
