import { HEARTBEAT_STOPPED, formatDuration } from '@tandem/shared';
import type { AppliedState } from '../apply/state.js';
import { WARN_FRACTION, committedAtOf, computeLag, judgeLag, type LagFigures, type LagVerdict, type LatestInfo } from './lag.js';
import type { PushStatus } from './push-client.js';
import type { WalReplayRecord } from '../wal/replay-state.js';
import { walFigures, type WalFigures } from '../wal/wal-lag.js';

/**
 * What `tandem-standby status --json` prints and GET /status serves: the lag figures (lag.ts) and
 * what stands behind them. The status command computes the figures itself from the state dir and the
 * filestore, with or without a daemon; when a daemon runs, its runtime parts (push channel, polling,
 * last error, apply in progress) are added from its /status.
 */
export interface ErrorInfo {
  at: string;
  /** What failed: poll, apply, restart, report, recovery, websocket, heartbeat, pending, latest. */
  what: string;
  kind: string;
  code: string;
  message: string;
}

export interface HeartbeatInfo {
  at: string;
  /** Where it was seen: the push channel or heartbeat.json. */
  source: 'push' | 'filestore';
  primaryHost: string | null;
  epoch: number | null;
  lastBackup: { setId: string | null; at: string; outcome: 'ok' | 'failed' } | null;
  nextBackupAt: string | null;
  /** The newest set the primary committed, as its signed heartbeat names it (null: none; absent: not known). */
  latest?: LatestInfo | null;
  /** "stopped": the primary's daemon shut down cleanly and this was its last heartbeat (absent: running). */
  state?: string;
  /** WAL mode: the primary's archiving, as its signed heartbeat says it. */
  wal?: { lastArchived: string | null; current?: string | null; pendingSeconds: number; failing: boolean };
}

export interface PollInfo {
  intervalSeconds: number;
  lastAt: string | null;
  lastResult: 'unchanged' | 'changed' | 'missing' | 'error' | null;
  consecutiveErrors: number;
  nextAt: string | null;
}

export interface StandbyStatusDoc extends LagFigures {
  site: string;
  standbyId: string;
  now: string;
  appliedSetId: string | null;
  appliedCreatedAt: string | null;
  appliedAt: string | null;
  appliedCommittedAt: string | null;
  latestSetId: string | null;
  latestCreatedAt: string | null;
  latestCommittedAt: string | null;
  primaryHeartbeat: HeartbeatInfo | null;
  /** An apply the daemon is running now. */
  applying: { setId: string | null; since: string } | null;
  /** journal.json: an apply that was interrupted (the next apply or daemon start finishes or rolls it back). */
  unfinishedApply: { setId: string; phase: string; startedAt: string } | null;
  promoted: { promotedAt: string } | null;
  daemon: { running: boolean; pid: number | null; listen: string | null; startedAt: string | null; reachable: boolean };
  /** null when no primary.url is configured (polling only), or the daemon could not be asked. */
  push: PushStatus | null;
  poll: PollInfo | null;
  lastError: ErrorInfo | null;
  /** Problems met while gathering this status (e.g. the filestore could not be read). */
  problems: string[];
  /**
   * Files as content objects, with the primary watching them (files deltas between sets): the delta
   * applied and the newest latest.json names for the applied set, and the files lag: 0 when none is
   * pending, else the seconds since what this standby has was current (the commit of its newest
   * applied delta, or of the set): what a failover now would lose of the files.
   */
  files?: { appliedDelta: number; newestDelta: number; pendingDeltas: number; lagSeconds: number | null };
  /**
   * WAL mode: the replay (wal-lag.ts). recoveryPointAgeSeconds is then the WAL's: what a failover
   * now would lose of the database.
   */
  wal?: WalFigures;
  /**
   * `status --max-lag` (a Nagios check): the thresholds, the verdict (the check's state: the
   * recovery point's, made UNKNOWN or worse by what could not be read, see nagios.ts) and the
   * reasons for it, worst first.
   */
  maxLag?: { seconds: number; warnAboveSeconds: number; verdict: LagVerdict | 'unknown'; reasons?: string[] };
}

/**
 * What the lag figures are computed from: the daemon passes what it observed (its caches), the
 * status command what it just read from the state dir and the filestore.
 */
export interface Observed {
  applied: AppliedState | null;
  latest: LatestInfo | null;
  /** The primary's newest heartbeat (heartbeat.json and the push channel merged). */
  heartbeat: HeartbeatInfo | null;
  pendingSets: number | null;
  /** When `latest` was read: see heartbeatNewerSet (lag.ts). */
  latestReadAt?: Date | null;
  /** WAL mode: what wal-fetch recorded (wal-replay.json). */
  walReplay?: WalReplayRecord;
}

/** WAL mode: the replay figures (undefined in dump mode). */
export function walOf(o: Observed, now: Date): WalFigures | undefined {
  if (o.walReplay === undefined) return undefined;
  return walFigures(o.walReplay, o.heartbeat, o.applied?.createdAt ?? null, now);
}

export function lagOf(o: Observed, now: Date): LagFigures {
  const lag = computeLag({
    now,
    applied: o.applied,
    latest: o.latest,
    heartbeatAt: o.heartbeat?.at ?? null,
    pendingSets: o.pendingSets,
    heartbeatLatest: o.heartbeat?.latest,
    latestReadAt: o.latestReadAt,
  });
  const wal = walOf(o, now);
  if (wal?.recoveryPointAt != null) lag.recoveryPointAgeSeconds = Math.max(0, Math.round(now.getTime() - Date.parse(wal.recoveryPointAt)) / 1000);
  return lag;
}

export interface StatusInputs extends Observed {
  site: string;
  standbyId: string;
  now: Date;
  applying: StandbyStatusDoc['applying'];
  /** journal.json, if any. */
  journal: { setId: string; phase: string; startedAt: string } | null;
  /** promoted.json, if any. */
  promoted: { promotedAt: string } | null;
  daemon: StandbyStatusDoc['daemon'];
  push: PushStatus | null;
  poll: PollInfo | null;
  lastError: ErrorInfo | null;
  problems: string[];
  /** files-delta.json (the newest files delta applied) and latest.json's newest delta, when known. */
  filesDelta?: { applied: { setId: string; n: number; committedAt: string } | null; newest: { delta: number; committedAt: string } | null };
}

/** The files figures of the status (see StandbyStatusDoc.files); undefined when there are no deltas. */
export function filesFigures(i: Pick<StatusInputs, 'applied' | 'latest' | 'filesDelta' | 'now'>): StandbyStatusDoc['files'] {
  const a = i.applied;
  const f = i.filesDelta;
  if (!f || a === null || (f.newest === null && f.applied === null)) return undefined;
  const newestDelta = i.latest?.setId === a.setId ? (f.newest?.delta ?? 0) : 0;
  const appliedDelta = f.applied?.setId === a.setId ? f.applied.n : 0;
  const pendingDeltas = Math.max(0, newestDelta - appliedDelta);
  const currentAt = appliedDelta > 0 ? f.applied!.committedAt : committedAtOf(a, i.latest);
  const lagSeconds = pendingDeltas === 0 ? 0 : currentAt === null ? null : Math.max(0, Math.round(i.now.getTime() - Date.parse(currentAt)) / 1000);
  return { appliedDelta, newestDelta, pendingDeltas, lagSeconds };
}

/**
 * The status document, the one builder for GET /status and `tandem-standby status`. The field order
 * is the JSON's: monitoring parses it, people read it.
 */
export function buildStatusDoc(i: StatusInputs): StandbyStatusDoc {
  const a = i.applied;
  const p = i.latest;
  return {
    site: i.site,
    standbyId: i.standbyId,
    now: i.now.toISOString(),
    appliedSetId: a?.setId ?? null,
    appliedCreatedAt: a?.createdAt ?? null,
    appliedAt: a?.appliedAt ?? null,
    appliedCommittedAt: a === null ? null : committedAtOf(a, p),
    latestSetId: p?.setId ?? null,
    latestCreatedAt: p?.createdAt ?? null,
    latestCommittedAt: p?.committedAt ?? null,
    ...lagOf(i, i.now),
    primaryHeartbeat: i.heartbeat,
    applying: i.applying,
    unfinishedApply: i.journal === null ? null : { setId: i.journal.setId, phase: i.journal.phase, startedAt: i.journal.startedAt },
    promoted: i.promoted === null ? null : { promotedAt: i.promoted.promotedAt },
    daemon: i.daemon,
    push: i.push,
    poll: i.poll,
    lastError: i.lastError,
    problems: i.problems,
    ...(filesFigures(i) ? { files: filesFigures(i) } : {}),
    ...(walOf(i, i.now) ? { wal: walOf(i, i.now) } : {}),
  };
}

const ago = (s: number | null): string => (s === null ? 'unknown' : `${formatDuration(s * 1000)}`);
const when = (iso: string | null | undefined): string => (iso ? iso.replace(/\.\d{3}Z$/, 'Z') : '?');

/** A few aligned lines an operator can read at 3 AM. */
export function formatStatus(d: StandbyStatusDoc): string[] {
  const rows: Array<[string, string]> = [];
  const daemon = d.daemon.running
    ? `running (pid ${d.daemon.pid}${d.daemon.listen ? `, ${d.daemon.listen}` : ''}${d.daemon.startedAt ? `, since ${when(d.daemon.startedAt)}` : ''})${d.daemon.reachable ? '' : ', its /status could not be read'}`
    : 'NOT RUNNING (figures below are from the state dir and the filestore)';
  rows.push(['daemon', daemon]);
  if (d.push !== null) {
    rows.push([
      'push channel',
      d.push.connected
        ? `connected to ${d.push.url} since ${when(d.push.since)}`
        : `DOWN since ${when(d.push.since)}: ${d.push.lastError?.message ?? d.push.url}; polling covers it`,
    ]);
  }
  if (d.poll !== null) {
    const last = d.poll.lastAt ? `last ${when(d.poll.lastAt)} ${d.poll.lastResult ?? ''}` : 'not yet';
    rows.push(['polling', `every ${formatDuration(d.poll.intervalSeconds * 1000)}, ${last}${d.poll.consecutiveErrors > 0 ? `, ${d.poll.consecutiveErrors} failed in a row` : ''}`]);
  }
  rows.push([
    'applied',
    d.appliedSetId === null ? 'NOTHING (no set applied yet)' : `${d.appliedSetId} (created ${when(d.appliedCreatedAt)}, applied ${when(d.appliedAt)})`,
  ]);
  rows.push(['latest', d.latestSetId === null ? 'unknown' : `${d.latestSetId} (committed ${when(d.latestCommittedAt)})`]);
  if (d.heartbeatNewerSetId !== null) {
    rows.push([
      'STALE latest',
      `the primary's signed heartbeat names set ${d.heartbeatNewerSetId}, newer than latest.json's ${d.latestSetId ?? '(none)'}: ` +
        'latest.json is an old copy put back (replayed) or was rolled back, and this standby does not see the new sets',
    ]);
  }
  if (d.applying !== null) {
    const phase = d.unfinishedApply !== null && d.unfinishedApply.setId === d.applying.setId ? ` (${d.unfinishedApply.phase})` : '';
    rows.push(['applying', `${d.applying.setId ?? 'the newest set'} since ${when(d.applying.since)}${phase}`]);
  }
  const w = d.wal;
  rows.push([
    'recovery point',
    d.recoveryPointAgeSeconds === null
      ? 'NONE: a failover now would lose everything'
      : `${ago(d.recoveryPointAgeSeconds)} old (a failover now loses what the primary did since ${when(w?.recoveryPointAt ?? d.appliedCreatedAt)})`,
  ]);
  if (w !== undefined) {
    rows.push([
      'WAL replay',
      `${w.lastReplayed === null ? 'nothing replayed from the filestore yet' : `replayed ${w.lastReplayed} (stored ${when(w.lastReplayedArchivedAt)})`}` +
        `; ${w.pendingFiles === null ? 'pending unknown (no WAL heartbeat from the primary)' : `${w.pendingFiles} file(s) pending`}` +
        `${w.replayLagSeconds === null ? '' : `, replay lag ${ago(w.replayLagSeconds)}`}`,
    ]);
    if (w.refused !== null) rows.push(['WAL REFUSED', `${w.refused.name} at ${when(w.refused.at)} (${w.refused.code}): not handed to PostgreSQL; the replay waits before it`]);
    if (w.primaryArchiveFailing === true) rows.push(['WAL ARCHIVING', 'the primary says archiving fails (filestore down, or the primary fenced): its WAL waits there']);
  }
  rows.push(['apply lag', ago(d.applyLagSeconds)]);
  rows.push(['pending sets', d.pendingSets === null ? 'unknown' : `${d.pendingSets}${d.pendingSets > 0 ? ' (committed, not applied yet)' : ''}`]);
  const hb = d.primaryHeartbeat;
  rows.push([
    'primary',
    hb === null
      ? 'no heartbeat seen (is `tandem-primary run` running?)'
      : hb.state === HEARTBEAT_STOPPED
        ? `stopped cleanly at ${when(hb.at)} (${ago(d.primaryHeartbeatAgeSeconds)} ago${hb.primaryHost ? `, ${hb.primaryHost}` : ''}${hb.epoch !== null ? `, epoch ${hb.epoch}` : ''}: its daemon's last heartbeat)` +
          (hb.lastBackup ? `; last backup ${hb.lastBackup.outcome} at ${when(hb.lastBackup.at)}` : '') +
          (hb.latest ? `; newest set ${hb.latest.setId}` : '')
        : `heartbeat ${ago(d.primaryHeartbeatAgeSeconds)} ago${hb.primaryHost ? ` from ${hb.primaryHost}` : ''}${hb.epoch !== null ? ` (epoch ${hb.epoch})` : ''}` +
        (hb.lastBackup ? `; last backup ${hb.lastBackup.outcome} at ${when(hb.lastBackup.at)}` : '') +
        (hb.latest ? `; newest set ${hb.latest.setId}` : '') +
        (hb.nextBackupAt ? `; next ${when(hb.nextBackupAt)}` : ''),
  ]);
  // The daemon's own apply in progress has a journal too: only a journal nobody works on is news.
  if (d.unfinishedApply !== null && d.applying?.setId !== d.unfinishedApply.setId) {
    rows.push(['UNFINISHED', `apply of ${d.unfinishedApply.setId} (phase ${d.unfinishedApply.phase}, started ${when(d.unfinishedApply.startedAt)}): the next apply finishes or rolls it back`]);
  }
  if (d.promoted !== null) rows.push(['PROMOTED', `this server was promoted to primary at ${when(d.promoted.promotedAt)}`]);
  rows.push(['last error', d.lastError === null ? 'none' : `${when(d.lastError.at)} ${d.lastError.what}: ${d.lastError.message}`]);
  for (const p of d.problems) rows.push(['problem', p]);
  if (d.maxLag) {
    const m = d.maxLag;
    const age = d.recoveryPointAgeSeconds === null ? 'none (nothing applied)' : ago(d.recoveryPointAgeSeconds);
    const defaultWarn = Math.abs(m.warnAboveSeconds - WARN_FRACTION * m.seconds) < 0.001;
    const within = defaultWarn ? `within 80% of ${ago(m.seconds)}` : `within ${ago(m.warnAboveSeconds)} (warning) of ${ago(m.seconds)}`;
    const above = defaultWarn ? `above 80% of ${ago(m.seconds)} (${ago(m.warnAboveSeconds)})` : `above ${ago(m.warnAboveSeconds)} (warning; critical beyond ${ago(m.seconds)})`;
    const lag = judgeLag(d.recoveryPointAgeSeconds, m.seconds, d.heartbeatNewerSetId, m.warnAboveSeconds);
    const lagText =
      d.heartbeatNewerSetId !== null
        ? `CRITICAL: latest.json hides set ${d.heartbeatNewerSetId} and newer (recovery point age ${age})`
        : lag === 'ok'
          ? `OK: recovery point age ${age} is ${within}`
          : lag === 'warning'
            ? `WARNING: recovery point age ${age} is ${above}`
            : `CRITICAL: recovery point age ${age} is beyond ${ago(m.seconds)}`;
    // Something else decided the verdict (a part that could not be read): it comes first.
    const text = m.verdict === lag || !m.reasons?.length ? lagText : `${m.verdict.toUpperCase()}: ${m.reasons[0]}; ${lagText.replace(/^[A-Z]+: /, '')}`;
    rows.push([`max-lag ${ago(m.seconds)}`, text]);
  }
  const width = Math.max(...rows.map(([k]) => k.length));
  return [`site ${d.site}, standby ${d.standbyId}, at ${when(d.now)}`, ...rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`)];
}
