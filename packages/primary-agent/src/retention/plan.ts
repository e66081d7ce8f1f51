import { compareSetIds } from '@tandem/shared';

/**
 * Retention: which sets to keep and which to delete, and why. Pure: the clock, the time zone and
 * everything known about the filestore come in as arguments, so the rules are tested over months of
 * simulated sets without sleeping.
 *
 * Rules (Zotonic's 7 daily and 4 weekly generations, made safe):
 * - keep the newest committed set of each of the last `daily` calendar days (today included) and of
 *   each of the last `weekly` ISO weeks (this week included), days and weeks in the configured zone;
 * - never delete the set latest.json names, nor a set a standby reported applied within the last 24 h;
 * - never delete a set created in the future (clock skew) or a directory that is not a set id;
 * - never delete a set whose manifest does not verify: report it (its times cannot be trusted, and
 *   a person should look at what happened to it); it does not count as any day's or week's newest;
 * - delete uncommitted leftovers (no manifest) once they are older than 24 h (younger: maybe a backup
 *   in progress);
 * - delete every other committed set.
 */
export interface RetentionPolicy {
  daily: number;
  weekly: number;
}

export interface SetInfo {
  setId: string;
  /** The manifest's createdAt, else the time in the set id; null when neither is known. */
  createdAt: Date | null;
  /** Whether the set has its manifest. */
  committed: boolean;
  /** Newest object of the set in the filestore (for leftovers: is anything still writing?). */
  lastModified?: Date | null;
  /** Why its manifest does not verify (signature, set id, site); absent when it does. */
  unverified?: string;
}

export interface AppliedRecord {
  standbyId: string;
  setId: string;
  appliedAt: Date;
}

export interface RetentionInput {
  sets: SetInfo[];
  now: Date;
  policy: RetentionPolicy;
  /** IANA zone for calendar days and ISO weeks. */
  timeZone: string;
  latestSetId: string | null;
  applied: AppliedRecord[];
  /** Default 24 h. */
  protectAppliedMs?: number;
  /** Default 24 h. */
  leftoverAgeMs?: number;
}

export interface RetentionDecision {
  setId: string;
  committed: boolean;
  createdAt: string | null;
  reasons: string[];
  /** Kept because its manifest does not verify: to be looked at, not only kept. */
  unverified?: true;
}

export interface RetentionPlan {
  keep: RetentionDecision[];
  delete: RetentionDecision[];
}

const DAY_MS = 86_400_000;
export const PROTECT_APPLIED_MS = DAY_MS;
export const LEFTOVER_AGE_MS = DAY_MS;

const formatters = new Map<string, Intl.DateTimeFormat>();

/** The calendar date of `t` in `timeZone` as [year, month (1-12), day]. */
export function localDate(t: Date, timeZone: string): [number, number, number] {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric', month: 'numeric', day: 'numeric' });
    formatters.set(timeZone, f);
  }
  const parts = f.formatToParts(t);
  const get = (type: string) => Number(parts.find((p) => p.type === type)?.value);
  return [get('year'), get('month'), get('day')];
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** "2026-11-22" for a calendar date (arithmetic on days is done in UTC, where every day is 24 h). */
function dayKey(utcMidnight: number): string {
  const d = new Date(utcMidnight);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

/** ISO 8601 week of a calendar date: "2026-W47" (weeks start on Monday; week 1 holds the first Thursday). */
function weekKey(utcMidnight: number): string {
  const d = new Date(utcMidnight);
  const weekday = d.getUTCDay() || 7;
  d.setUTCDate(d.getUTCDate() + 4 - weekday); // the Thursday of this week decides the year
  const yearStart = Date.UTC(d.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((d.getTime() - yearStart) / DAY_MS + 1) / 7);
  return `${d.getUTCFullYear()}-W${pad(week)}`;
}

function calendarDay(t: Date, timeZone: string): number {
  const [y, m, d] = localDate(t, timeZone);
  return Date.UTC(y, m - 1, d);
}

export function planRetention(input: RetentionInput): RetentionPlan {
  const { now, policy, timeZone } = input;
  const protectMs = input.protectAppliedMs ?? PROTECT_APPLIED_MS;
  const leftoverMs = input.leftoverAgeMs ?? LEFTOVER_AGE_MS;
  const today = calendarDay(now, timeZone);

  // The windows: the last N calendar days and the last M ISO weeks, today and this week included.
  const days = new Set<string>();
  for (let i = 0; i < policy.daily; i++) days.add(dayKey(today - i * DAY_MS));
  const weeks = new Set<string>();
  for (let i = 0; i < policy.weekly; i++) weeks.add(weekKey(today - i * 7 * DAY_MS));

  // The newest committed set (not from the future) of every day and week.
  const newestOfDay = new Map<string, SetInfo>();
  const newestOfWeek = new Map<string, SetInfo>();
  const newer = (a: SetInfo, b: SetInfo | undefined) =>
    b === undefined || a.createdAt!.getTime() > b.createdAt!.getTime() || (a.createdAt!.getTime() === b.createdAt!.getTime() && compareSetIds(a.setId, b.setId) > 0);
  for (const s of input.sets) {
    if (!s.committed || s.unverified !== undefined || s.createdAt === null || s.createdAt.getTime() > now.getTime()) continue;
    const day = calendarDay(s.createdAt, timeZone);
    const dk = dayKey(day);
    const wk = weekKey(day);
    if (newer(s, newestOfDay.get(dk))) newestOfDay.set(dk, s);
    if (newer(s, newestOfWeek.get(wk))) newestOfWeek.set(wk, s);
  }

  const appliedBy = new Map<string, AppliedRecord[]>();
  for (const a of input.applied) {
    if (now.getTime() - a.appliedAt.getTime() > protectMs) continue;
    appliedBy.set(a.setId, [...(appliedBy.get(a.setId) ?? []), a]);
  }

  const plan: RetentionPlan = { keep: [], delete: [] };
  const sets = [...input.sets].sort((a, b) => compareSetIds(a.setId, b.setId));
  for (const s of sets) {
    const decision = (reasons: string[]): RetentionDecision => ({
      setId: s.setId,
      committed: s.committed,
      createdAt: s.createdAt?.toISOString() ?? null,
      reasons,
    });
    const protect: string[] = [];
    if (s.setId === input.latestSetId) protect.push('latest.json names it');
    for (const a of appliedBy.get(s.setId) ?? []) protect.push(`standby ${a.standbyId} applied it at ${a.appliedAt.toISOString()} (within 24 h)`);

    if (s.createdAt === null) {
      plan.keep.push(decision([...protect, 'not a tandem set id: left alone']));
      continue;
    }
    if (s.unverified !== undefined) {
      plan.keep.push({ ...decision([...protect, `UNVERIFIED: its manifest does not verify (${s.unverified}): not deleted; look at it`]), unverified: true });
      continue;
    }
    if (s.createdAt.getTime() > now.getTime()) {
      plan.keep.push(decision([...protect, 'created in the future (clock skew?): left alone']));
      continue;
    }
    if (!s.committed) {
      const newest = Math.max(s.createdAt.getTime(), s.lastModified?.getTime() ?? 0);
      if (protect.length > 0) plan.keep.push(decision(protect));
      else if (now.getTime() - newest < leftoverMs) plan.keep.push(decision(['uncommitted, younger than 24 h: possibly a backup in progress']));
      else plan.delete.push(decision(['uncommitted leftover of an interrupted backup, older than 24 h']));
      continue;
    }
    const day = calendarDay(s.createdAt, timeZone);
    const dk = dayKey(day);
    const wk = weekKey(day);
    const keep = [...protect];
    if (days.has(dk) && newestOfDay.get(dk) === s) keep.push(`daily: newest of ${dk}`);
    if (weeks.has(wk) && newestOfWeek.get(wk) === s) keep.push(`weekly: newest of ${wk}`);
    if (keep.length > 0) {
      plan.keep.push(decision(keep));
    } else if (days.has(dk)) {
      plan.delete.push(decision([`superseded: ${newestOfDay.get(dk)!.setId} is the newest of ${dk}`]));
    } else if (weeks.has(wk)) {
      plan.delete.push(decision([`superseded: ${newestOfWeek.get(wk)!.setId} is the newest of ${wk}`]));
    } else {
      plan.delete.push(decision([`older than the last ${policy.daily} day(s) and ${policy.weekly} week(s)`]));
    }
  }
  return plan;
}
