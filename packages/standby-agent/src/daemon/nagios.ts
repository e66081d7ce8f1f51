import { TandemError, describeError, formatDuration } from '@tandem/shared';
import type { StatusGap } from './gather-status.js';
import { judgeLag } from './lag.js';
import type { StandbyStatusDoc } from './status-doc.js';

/**
 * `tandem-standby status --max-lag` as a Nagios plugin, per the Monitoring Plugins development
 * guidelines (also what Icinga, Naemon, Sensu and Zabbix's Nagios checks read):
 *
 * - exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; UNKNOWN for what keeps the check from
 *   answering: a bad option or duration, a missing or bad config, a state dir or filestore it
 *   cannot read;
 * - the first line is what the monitoring system shows and alerts with: `TANDEM <STATE> - <text>`,
 *   then ` | ` and the performance data, `label=value[UOM];warn;crit;min;max` separated by spaces
 *   (`U` for a value that could not be determined); the lines after it are the long output;
 * - one line of text: what is wrong first, then the figures.
 *
 * The state is the worst of the parts, in the order OK < UNKNOWN < WARNING < CRITICAL (the
 * guidelines' max_state_alt): a recovery point known to be beyond --max-lag is CRITICAL even when
 * the filestore cannot be read, and a filestore that cannot be read turns OK into UNKNOWN.
 */
export type NagiosState = 'ok' | 'warning' | 'critical' | 'unknown';

export const NAGIOS_EXIT: Record<NagiosState, number> = { ok: 0, warning: 1, critical: 2, unknown: 3 };
const RANK: Record<NagiosState, number> = { ok: 0, unknown: 1, warning: 2, critical: 3 };
export const worstState = (a: NagiosState, b: NagiosState): NagiosState => (RANK[a] >= RANK[b] ? a : b);

/** The plugin's name on the first line. */
export const NAGIOS_NAME = 'TANDEM';

export interface LagThresholds {
  /** WARNING above this recovery point age (--warn-lag, default 80% of --max-lag). */
  warnSeconds: number;
  /** CRITICAL above this (--max-lag). */
  critSeconds: number;
}

export interface NagiosCheck {
  state: NagiosState;
  /** What made it so, worst first (empty when OK). */
  reasons: string[];
  /** The first line's text after "TANDEM <STATE> - ", without the performance data. */
  text: string;
  /** The performance data (after the "|"). */
  perfdata: string;
}

/** A time without milliseconds, as the status lines show it. */
const when = (iso: string): string => iso.replace(/\.\d{3}Z$/, 'Z');
const dur = (seconds: number): string => formatDuration(seconds * 1000);
/** A perfdata number: whole seconds for times that are whole, at most 3 decimals otherwise. */
const num = (n: number): string => String(Math.round(n * 1000) / 1000);

/**
 * First-line text must stay one line and must not hold the "|" that starts the performance data
 * (the guidelines reserve it).
 */
export const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, ' ').replace(/\|/g, '/');

/** The check: state, reasons and the first line's parts, from the status and what could not be read. */
export function nagiosCheck(d: StandbyStatusDoc, gaps: StatusGap[], t: LagThresholds): NagiosCheck {
  const found: Array<{ state: NagiosState; reason: string }> = [];
  const appliedUnknown = gaps.some((g) => g.part === 'applied');
  const age = d.recoveryPointAgeSeconds;

  // The recovery point: what a failover now would lose (the one rule, judgeLag).
  const lag = appliedUnknown ? null : judgeLag(age, t.critSeconds, null, t.warnSeconds);
  let figures: string;
  if (lag === null) figures = 'recovery point unknown';
  else if (age === null) {
    figures = 'no set applied';
    found.push({ state: 'critical', reason: 'no set applied: a failover now would lose everything' });
  } else if (lag === 'critical') {
    figures = `recovery point ${dur(age)} old (critical above ${dur(t.critSeconds)})`;
    found.push({ state: 'critical', reason: '' });
  } else if (lag === 'warning') {
    figures = `recovery point ${dur(age)} old (warning above ${dur(t.warnSeconds)})`;
    found.push({ state: 'warning', reason: '' });
  } else figures = `recovery point ${dur(age)} old`;
  figures += `, ${d.pendingSets === null ? 'pending unknown' : `${d.pendingSets} pending`}`;

  // Files deltas pending for longer than the recovery point may be: the files are behind.
  const fl = d.files?.lagSeconds ?? null;
  if (d.files && d.files.pendingDeltas > 0) {
    const v = fl === null ? 'critical' : judgeLag(fl, t.critSeconds, null, t.warnSeconds);
    if (v !== 'ok') found.push({ state: v, reason: `${d.files.pendingDeltas} files delta(s) not applied, the files ${fl === null ? 'of unknown age' : `${dur(fl)} behind`}` });
    figures += `, ${d.files.pendingDeltas} files delta(s) pending`;
  }
  if (d.heartbeatNewerSetId !== null) {
    found.push({
      state: 'critical',
      reason: `latest.json hides set ${d.heartbeatNewerSetId} and newer (an old latest.json put back?): this standby does not see new sets`,
    });
  }
  for (const g of gaps) found.push({ state: g.integrity ? 'critical' : 'unknown', reason: g.message });

  const state = found.reduce<NagiosState>((s, f) => worstState(s, f.state), 'ok');
  const reasons = found
    .filter((f) => f.reason !== '')
    .sort((a, b) => RANK[b.state] - RANK[a.state])
    .map((f) => oneLine(f.reason));
  const hb = d.primaryHeartbeat;
  const stopped = hb !== null && hb.state === 'stopped' ? `; primary stopped cleanly at ${when(hb.at)}` : '';
  const text = oneLine([...reasons, figures].join('; ') + stopped);
  return { state, reasons, text, perfdata: nagiosPerfdata(d, t, appliedUnknown) };
}

/**
 * rpo (the recovery point age, with the thresholds and min 0), pending, and when known the apply
 * lag and the primary heartbeat's age. A figure that cannot be determined is `U`.
 */
export function nagiosPerfdata(d: StandbyStatusDoc, t: LagThresholds, appliedUnknown = false): string {
  const v = (n: number | null, uom = ''): string => (n === null ? 'U' : `${num(n)}${uom}`);
  const rpo = appliedUnknown ? null : d.recoveryPointAgeSeconds;
  const parts = [`rpo=${v(rpo === null ? null : Math.round(rpo), 's')};${num(t.warnSeconds)};${num(t.critSeconds)}`, `pending=${v(d.pendingSets)}`];
  if (d.applyLagSeconds !== null) parts.push(`apply_lag=${num(Math.round(d.applyLagSeconds))}s`);
  if (d.primaryHeartbeatAgeSeconds !== null) parts.push(`heartbeat_age=${num(Math.round(d.primaryHeartbeatAgeSeconds))}s`);
  return parts.join(' ');
}

/** The first line: `TANDEM OK - recovery point 3h12m old, 0 pending | rpo=11520s;74880;93600 pending=0`. */
export const nagiosFirstLine = (c: NagiosCheck): string => `${NAGIOS_NAME} ${c.state.toUpperCase()} - ${c.text} | ${c.perfdata}`;

/**
 * An error that kept the check from answering (a bad option, a missing config): UNKNOWN, the
 * message on the first line, the hint on the next.
 */
export function nagiosUnknown(err: unknown): string[] {
  const lines = [`${NAGIOS_NAME} UNKNOWN - ${oneLine(describeError(err))}`];
  if (err instanceof TandemError && err.hint) lines.push(`hint: ${err.hint}`);
  return lines;
}
