import { randomUUID } from 'node:crypto';
import {
  TandemError,
  describeError,
  formatDuration,
  isTandemError,
  loadClientTls,
  loadToken,
  loadVerifyKeyFile,
  recipientFromIdentity,
  tlsOptions,
  type Filestore,
  type Logger,
  type StandbyConfig,
  type SwitchoverFailed,
  type SwitchoverPrimaryMessage,
  type SwitchoverReady,
} from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { identitiesFor } from '../apply/keys.js';
import { checkMaintenanceDb } from '../apply/pg.js';
import { resolveSet } from '../apply/resolve-set.js';
import { runApply, type ApplyResult } from '../apply/run-apply.js';
import { readWalSeed } from '../apply/cluster.js';
import { readApplied, readPromoted, stateFiles } from '../apply/state.js';
import { targetsFor } from '../apply/targets.js';
import { promotedName, runPromote, type PromoteResult } from '../promote/run-promote.js';
import { readWalReplay } from '../wal/replay-state.js';
import { SwitchoverChannel, type ChannelEvent } from './channel.js';

/**
 * `tandem-standby switchover`: a planned, zero-data-loss change of primary.
 * (Over 400 lines on purpose: the steps below read top to bottom in one place, each failure next to
 * the step it undoes; the channel and the apply/promote it drives live in their own modules.)
 *
 * 1. preflight (here, before the primary is asked for anything): not promoted, no unfinished apply,
 *    primary.url and a token, the keys fit the primary's sets (the identity is a recipient of the
 *    newest set), the site's database is not the maintenance one.
 * 2. request    over the primary's /v1/stream: the primary stops the site's writes (onFenced), takes
 *               a final backup and holds (no more backups), reporting each step.
 * 3. apply      exactly the final set (already applied by the standby daemon: fine).
 * 4. promote    asks first (switchover-promoting) and raises the epoch only after the primary's
 *               switchover-promote-ok: until then the primary ends its hold as soon as this connection
 *               is lost. Then the promote with the switchover context: preflight as usual, except that
 *               a fresh heartbeat is expected (the primary is alive, holding); never --force.
 * 5. done       the primary reads epoch.json at once and is fenced.
 * A failure of 3 or 4 sends `switchover-abort`: the primary runs onResume and goes on as primary.
 */

export type PrimaryAfter = 'fenced' | 'resumed' | 'resume-failed' | 'unchanged' | 'calling-off' | 'holding-until-timeout' | 'unknown';
type Phase = 'before-writes-stopped' | 'writes-stopped' | 'held' | 'promote-allowed';

export interface SwitchoverEvent {
  at: string;
  side: 'primary' | 'standby';
  step: string;
  detail: string;
}

export interface SwitchoverOutcome {
  status: 'done' | 'failed';
  site: string;
  standbyId: string;
  requestId: string;
  primaryUrl: string;
  /** The final set (null when the primary never committed one). */
  setId: string | null;
  /** WAL mode: the WAL file holding the primary's last write, replayed here before the promote. */
  walFile: string | null;
  /** The epoch this standby raised (done). */
  epoch: number | null;
  failedStep: string | null;
  error: string | null;
  /** What became of the old primary. */
  primary: PrimaryAfter;
  /** When the primary's hold ends (it resumes by itself then unless the epoch was raised). */
  holdUntil: string | null;
  steps: SwitchoverEvent[];
  apply: { status: ApplyResult['status']; setId: string; seconds: number | null } | null;
  promote: { checks: PromoteResult['checks']; restart: string } | null;
  restartError: string | null;
  startedAt: string;
  seconds: number;
}

export interface SwitchoverOptions {
  filestore: Filestore;
  logger: Logger;
  /** How long the primary may hold (writes stopped); also bounds waiting for its final backup. */
  timeoutMs: number;
  /** The token (default: primary.tokenFile, else TANDEM_TOKEN). */
  token?: string;
  /** Each step as it happens (the command prints them). */
  onEvent?: (e: SwitchoverEvent) => void;
  /** Ctrl-C: call the switchover off (the primary resumes), unless the promote has begun. */
  signal?: AbortSignal;
  /** Safety margin before the primary's hold deadline for raising the epoch (default 5 s). */
  promoteMarginMs?: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** How long to wait for the primary to confirm that it called the switchover off (onResume may be slow). */
const RESUME_WAIT_MS = 6 * 60_000;
const FENCED_WAIT_MS = 10_000;
/** How long to wait for the primary's switchover-promote-ok (it writes its hold record first). */
const PROMOTE_OK_WAIT_MS = 30_000;
const clip = (s: string, n = 3_900) => (s.length <= n ? s : `${s.slice(0, n - 3)}...`);

/** Checks that change nothing: a failure here means the primary is never asked. */
async function preflight(config: StandbyConfig, fs: Filestore, logger: Logger): Promise<string> {
  const promoted = await readPromoted(config.stateDir);
  if (promoted !== null) {
    throw new TandemError('precondition', 'PROMOTED', `site "${config.site}" on this server was promoted to primary at ${promoted.promotedAt}: there is nothing to switch over to`, {
      hint: `${stateFiles(config.stateDir).promoted} records the promotion`,
    });
  }
  const journal = await readJournal(config.stateDir);
  if (journal !== null) {
    throw new TandemError('precondition', 'APPLY_UNFINISHED', `an apply of set ${journal.setId} is unfinished (phase ${journal.phase}): refusing to start a switchover`, {
      hint: 'run `tandem-standby apply` to finish or roll it back first',
    });
  }
  if (config.database.mode === 'wal') {
    // WAL mode: the whole cluster is the standby's; it must be seeded, replaying the primary's WAL.
    if ((await readWalSeed(config.stateDir)) === null) {
      throw new TandemError('precondition', 'WAL_NOT_SEEDED', `site "${config.site}": this standby's cluster (${config.database.dataDir}) was never seeded from a base backup: it has nothing to replay the primary's WAL into`, {
        hint: 'run `tandem-standby apply` first (it seeds the cluster), then the switchover',
      });
    }
  } else {
    const targets = await targetsFor(config);
    checkMaintenanceDb(config, targets.db.live);
  }
  // The keys must fit the primary's sets: a standby that cannot decrypt the final set would only
  // find out after the primary stopped the site's writes.
  const verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
  const { manifest } = await resolveSet(fs, config.site, verifyKey);
  const identities = identitiesFor(config, manifest, logger);
  if (identities.length > 0) {
    const mine = new Set(identities.map(recipientFromIdentity));
    if (!manifest.encryption.recipients.some((r) => mine.has(r))) {
      throw new TandemError(
        'integrity',
        'IDENTITY_NOT_RECIPIENT',
        `keys.identityFile ${config.keys.identityFile} cannot decrypt the primary's sets: set ${manifest.setId} is encrypted to ${manifest.encryption.recipients.join(', ')}, and this identity's recipient is ${[...mine].join(', ')}; nothing changed`,
        { hint: "copy the site's backup.agekey (made by `tandem-primary init`) to this standby" },
      );
    }
  }
  const applied = await readApplied(config.stateDir);
  return applied === null
    ? `preflight ok: not promoted, no unfinished apply, keys fit; nothing applied yet (the newest set is ${manifest.setId})`
    : `preflight ok: not promoted, no unfinished apply, keys fit; applied ${applied.setId} (the newest set is ${manifest.setId})`;
}

export async function runSwitchover(config: StandbyConfig, opts: SwitchoverOptions): Promise<SwitchoverOutcome> {
  const { logger, filestore: fs } = opts;
  const t0 = Date.now();
  if (config.primary === undefined) {
    throw new TandemError('config', 'NO_PRIMARY_URL', `${config.configFile}: primary.url is not set: a switchover asks the primary over its WebSocket`, {
      hint: "set primary.url (ws://host:port of the primary's server.listen) and primary.tokenFile",
    });
  }
  const token = opts.token ?? loadToken({ tokenFile: config.primary.tokenFile, key: 'primary.tokenFile', logger });
  // primary.tls read now: a bad file stops the switchover before anything is asked.
  const tls = config.primary.tls === undefined ? undefined : tlsOptions(loadClientTls(config.primary.tls, logger));
  const standbyId = promotedName(config);
  const requestId = randomUUID();
  const log = logger.child({ switchover: requestId });
  const outcome: SwitchoverOutcome = {
    status: 'failed',
    site: config.site,
    standbyId,
    requestId,
    primaryUrl: config.primary.url,
    setId: null,
    walFile: null,
    epoch: null,
    failedStep: null,
    error: null,
    primary: 'unchanged',
    holdUntil: null,
    steps: [],
    apply: null,
    promote: null,
    restartError: null,
    startedAt: new Date(t0).toISOString(),
    seconds: 0,
  };
  const event = (side: SwitchoverEvent['side'], step: string, detail: string) => {
    const e: SwitchoverEvent = { at: new Date().toISOString(), side, step, detail };
    outcome.steps.push(e);
    log.info({ side, step }, `${side}: ${detail}`);
    opts.onEvent?.(e);
  };
  const end = (o: Partial<SwitchoverOutcome>): SwitchoverOutcome => {
    Object.assign(outcome, o);
    outcome.seconds = Math.round((Date.now() - t0) / 100) / 10;
    return outcome;
  };

  event('standby', 'preflight', await preflight(config, fs, log));
  const request = { type: 'switchover-request', requestId, site: config.site, standbyId, timeoutSeconds: Math.max(1, Math.round(opts.timeoutMs / 1000)) } as const;
  const channel = await SwitchoverChannel.open(config.primary.url, token, { site: config.site, logger: log, tls, first: request });
  try {
    const hello = channel.hello!;
    log.info({ primary: channel.url, epoch: hello.epoch, latestSetId: hello.latestSetId }, 'connected to the primary');
    event('standby', 'request', `asked the primary at ${channel.url} (epoch ${hello.epoch ?? '?'}) for a switchover to ${standbyId} (request ${requestId}, timeout ${formatDuration(opts.timeoutMs)})`);

    // Until the primary holds with its final set.
    let writesStopped = false;
    let ready: SwitchoverReady | null = null;
    const waitDeadline = t0 + opts.timeoutMs;
    while (ready === null) {
      const e = await channel.next(waitDeadline, opts.signal);
      if (e === null) {
        const why = opts.signal?.aborted ? 'interrupted' : `no final set from the primary within ${formatDuration(opts.timeoutMs)}`;
        return end(await abort(channel, requestId, 'wait-for-ready', why, event, writesStopped ? 'writes-stopped' : 'before-writes-stopped'));
      }
      if (e.kind === 'closed') return end(lost(e, 'wait-for-ready', writesStopped ? 'writes-stopped' : 'before-writes-stopped'));
      const m = e.msg;
      if (m.requestId !== requestId) continue;
      if (m.type === 'switchover-progress') {
        if (m.step === 'writes-stopped') writesStopped = true;
        if (m.setId) outcome.setId = m.setId;
        event('primary', m.step, m.detail);
      } else if (m.type === 'switchover-failed') {
        event('primary', m.step, `FAILED: ${m.error}`);
        return end(failedByPrimary(m));
      } else if (m.type === 'switchover-resumed') {
        event('primary', 'resumed', `called off: ${m.reason}`);
        return end({ failedStep: 'wait-for-ready', error: m.reason, primary: m.onResume === 'ok' ? 'resumed' : 'resume-failed' });
      } else if (m.type === 'switchover-ready') {
        ready = m;
      }
    }
    const deadline = new Date(Date.now() + ready.holdSeconds * 1000);
    outcome.setId = ready.setId;
    outcome.walFile = ready.walFile ?? null;
    outcome.holdUntil = deadline.toISOString();
    event('primary', 'hold', `holding (writes stopped, no backups) for up to ${formatDuration(ready.holdSeconds * 1000)}, until ${deadline.toISOString()}: final set ${ready.setId}`);

    // Apply exactly the final set.
    event('standby', 'apply', `applying ${ready.setId}`);
    let applied: ApplyResult;
    try {
      applied = await retryWhileBusy(() => runApply(config, { filestore: fs, logger: log, setId: ready.setId, signal: opts.signal }), deadline, log);
    } catch (err) {
      event('standby', 'apply', `apply of ${ready.setId} FAILED: ${describeError(err)}`);
      return end(await abort(channel, requestId, 'apply', describeError(err), event, 'held'));
    }
    outcome.apply = { status: applied.status, setId: applied.applied.setId, seconds: applied.applied.durations.total ?? null };
    event(
      'standby',
      'applied',
      applied.status === 'applied'
        ? `applied ${ready.setId}${applied.applied.durations.total !== undefined ? ` (${applied.applied.durations.total} s)` : ''}`
        : `applied ${ready.setId} (it was applied already, by the standby daemon)`,
    );
    if (applied.restartError !== undefined) log.warn({ err: applied.restartError }, 'restartCommand (backup mode) failed after the apply; the promote restarts the site again');

    if (opts.signal?.aborted) return end(await abort(channel, requestId, 'apply', 'interrupted', event, 'held'));

    // WAL mode: what the site wrote up to the stop is in the WAL, not in the set. Promote only once
    // the file that holds the primary's last write (archived by the primary before it offered the
    // set) has reached PostgreSQL here: a promote ends the replay, and the old primary, fenced,
    // stores no more WAL.
    if (config.database.mode === 'wal') {
      if (ready.walFile === undefined) {
        event('standby', 'replay', 'the primary named no last WAL file (an older tandem-primary?): the promote checks that every WAL file in the filestore is replayed');
      } else {
        event('standby', 'replay', `waiting until WAL file ${ready.walFile} (the primary's last write) is replayed`);
        const replayed = await waitReplayed(config.stateDir, ready.walFile, deadline.getTime() - (opts.promoteMarginMs ?? 5_000) - 2_000, opts.signal);
        if (replayed !== null) return end(await abort(channel, requestId, 'replay', replayed, event, 'held'));
        event('standby', 'replayed', `WAL file ${ready.walFile} replayed`);
      }
    }
    if (!channel.isOpen()) {
      // The primary may be restarting or cut off: without it hearing "done" there is no clean end, so do not promote.
      return end(lost(channel.closed, 'promote', 'held'));
    }

    // Ask first: until the primary answers, it ends the hold as soon as this connection is lost.
    channel.send({ type: 'switchover-promoting', requestId });
    const allowed = await promoteAllowed(channel, requestId, Math.min(deadline.getTime(), Date.now() + PROMOTE_OK_WAIT_MS), event);
    if (allowed.kind === 'ended') return end(allowed.outcome);
    if (allowed.kind === 'timeout') {
      return end(await abort(channel, requestId, 'promote', `the primary did not allow the promote within ${formatDuration(PROMOTE_OK_WAIT_MS)}`, event, 'held'));
    }
    event('primary', 'promote-allowed', `may promote: holding until ${allowed.holdUntil} whatever becomes of the connection`);

    // Promote (never --force: every check but the heartbeat's still applies).
    event('standby', 'promote', 'promoting');
    let promoted: PromoteResult;
    try {
      promoted = await retryWhileBusy(
        () =>
          runPromote(config, {
            filestore: fs,
            logger: log,
            force: false,
            reason: 'switchover',
            switchover: { requestId, setId: ready.setId, heldSince: ready.heldSince, deadline, marginMs: opts.promoteMarginMs },
          }),
        deadline,
        log,
      );
      if (promoted.status !== 'promoted' || promoted.epoch === null) {
        throw new TandemError('precondition', 'ALREADY_PROMOTED', `site "${config.site}" was promoted here meanwhile (at ${promoted.promoted.promotedAt}), not by this switchover`);
      }
    } catch (err) {
      event('standby', 'promote', `promote FAILED: ${describeError(err)}`);
      return end(await abort(channel, requestId, 'promote', describeError(err), event, 'promote-allowed'));
    }
    const epoch = promoted.epoch.epoch;
    outcome.promote = { checks: promoted.checks, restart: promoted.promoted.restart };
    event('standby', 'promoted', `promoted, epoch ${epoch}`);

    // Tell the primary; it reads epoch.json at once and is fenced.
    channel.send({ type: 'switchover-done', requestId, epoch });
    const fenced = await waitFenced(channel, requestId);
    if (fenced) event('primary', 'fenced', `fenced (epoch.json names ${standbyId} in epoch ${epoch})`);
    else event('primary', 'fenced', `did not confirm it is fenced; it finds epoch ${epoch} in epoch.json at its next heartbeat (or at the end of its hold) and stops then`);
    return end({
      status: 'done',
      epoch,
      primary: fenced ? 'fenced' : 'unknown',
      restartError: promoted.restartError === undefined ? null : describeError(promoted.restartError),
    });
  } finally {
    await channel.close();
  }
}

/**
 * Waits until PostgreSQL's restore_command has handed over `walFile` (or a later file of its
 * timeline) on this standby (wal-replay.json); PostgreSQL replays a file it has before a promote
 * ends the recovery. Null when it has, else why not.
 */
async function waitReplayed(stateDir: string, walFile: string, until: number, signal?: AbortSignal): Promise<string | null> {
  for (;;) {
    const replay = await readWalReplay(stateDir);
    const last = replay.last?.name.slice(0, 24);
    if (last !== undefined && last.slice(0, 8) === walFile.slice(0, 8) && last >= walFile) return null;
    if (signal?.aborted) return 'interrupted';
    if (Date.now() >= until) {
      const refused = replay.refused ? `; WAL file ${replay.refused.name} was refused (${replay.refused.code})` : '';
      return `WAL file ${walFile} (the primary's last write) was not replayed in time (last replayed: ${replay.last?.name ?? 'none'}${refused})`;
    }
    await sleep(250);
  }
}

/** runApply/runPromote wait while the standby daemon's apply holds the lock. */
async function retryWhileBusy<T>(fn: () => Promise<T>, deadline: Date, log: Logger): Promise<T> {
  let told = false;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!isTandemError(err, 'busy') || Date.now() + 1_000 >= deadline.getTime()) throw err;
      if (!told) log.info({ err }, 'an apply runs here (the standby daemon?): waiting for it');
      told = true;
      await sleep(500);
    }
  }
}

/** The primary's answer to switchover-promoting: ok (with its hold deadline), an end, or nothing in time. */
async function promoteAllowed(
  channel: SwitchoverChannel,
  requestId: string,
  until: number,
  event: (side: SwitchoverEvent['side'], step: string, detail: string) => void,
): Promise<{ kind: 'ok'; holdUntil: string } | { kind: 'ended'; outcome: Partial<SwitchoverOutcome> } | { kind: 'timeout' }> {
  for (;;) {
    const e = await channel.next(until);
    if (e === null) return { kind: 'timeout' };
    if (e.kind === 'closed') return { kind: 'ended', outcome: lost(e, 'promote', 'held') };
    const m = e.msg;
    if (m.requestId !== requestId) continue;
    if (m.type === 'switchover-promote-ok') return { kind: 'ok', holdUntil: m.holdUntil };
    if (m.type === 'switchover-progress') event('primary', m.step, m.detail);
    else if (m.type === 'switchover-failed') {
      event('primary', m.step, `FAILED: ${m.error}`);
      return { kind: 'ended', outcome: failedByPrimary(m) };
    } else if (m.type === 'switchover-resumed') {
      event('primary', 'resumed', `called off: ${m.reason}`);
      return { kind: 'ended', outcome: { failedStep: 'promote', error: m.reason, primary: m.onResume === 'ok' ? 'resumed' : 'resume-failed' } };
    }
  }
}

function failedByPrimary(m: SwitchoverFailed): Partial<SwitchoverOutcome> {
  return { failedStep: m.step, error: m.error, primary: m.primary };
}

function lost(e: ChannelEvent | null, step: string, phase: Phase): Partial<SwitchoverOutcome> {
  const how = e && e.kind === 'closed' ? ` (${e.code}${e.reason ? `: ${e.reason}` : ''})` : '';
  if (e && e.kind === 'closed' && e.fenced) {
    return { failedStep: step, error: `the primary closed the connection: it is fenced${how}`, primary: 'fenced' };
  }
  return {
    failedStep: step,
    error: `the connection to the primary was lost${how}${phase === 'held' && step === 'promote' ? ': not promoting without it' : ''}`,
    // Until it allowed the promote, the primary calls off by itself (after its current step); once it
    // did, only at the end of the hold (this standby might have been promoting).
    primary: phase === 'promote-allowed' ? 'holding-until-timeout' : phase === 'writes-stopped' || phase === 'held' ? 'calling-off' : 'unknown',
  };
}

/** Tell the primary to call it off, and wait for it to confirm. */
async function abort(
  channel: SwitchoverChannel,
  requestId: string,
  step: string,
  error: string,
  event: (side: SwitchoverEvent['side'], step: string, detail: string) => void,
  phase: Phase,
): Promise<Partial<SwitchoverOutcome>> {
  if (!channel.send({ type: 'switchover-abort', requestId, step, error: clip(error) })) {
    return { ...lost(channel.closed, step, phase), error: `${error}; and the connection to the primary was lost, so it could not be told` };
  }
  event('standby', 'abort', `asked the primary to call the switchover off (${step} failed)`);
  const deadline = Date.now() + RESUME_WAIT_MS;
  for (;;) {
    const e = await channel.next(deadline);
    if (e === null) return { failedStep: step, error, primary: 'unknown' };
    if (e.kind === 'closed') {
      const l = lost(e, step, phase);
      return { failedStep: step, error, primary: l.primary };
    }
    const m: SwitchoverPrimaryMessage = e.msg;
    if (m.requestId !== requestId) continue;
    if (m.type === 'switchover-resumed') {
      event('primary', 'resumed', m.onResume === 'ok' ? 'put back: onResume ran; it keeps running as the primary and backs up again' : `put back, but onResume FAILED: ${m.error ?? '?'}`);
      return { failedStep: step, error, primary: m.onResume === 'ok' ? 'resumed' : 'resume-failed' };
    }
    if (m.type === 'switchover-failed') {
      event('primary', m.step, m.primary === 'fenced' ? `fenced: ${m.error}` : m.error);
      return { failedStep: step, error, primary: m.primary };
    }
    if (m.type === 'switchover-progress') event('primary', m.step, m.detail);
  }
}

async function waitFenced(channel: SwitchoverChannel, requestId: string): Promise<boolean> {
  const deadline = Date.now() + FENCED_WAIT_MS;
  for (;;) {
    const e = await channel.next(deadline);
    if (e === null) return false;
    if (e.kind === 'closed') return e.fenced;
    if (e.msg.requestId === requestId && e.msg.type === 'switchover-progress' && e.msg.step === 'fenced') return true;
  }
}

/** One line saying what became of the old primary. */
export function describePrimaryAfter(o: SwitchoverOutcome): string {
  switch (o.primary) {
    case 'fenced':
      return 'the primary is fenced (epoch.json was raised)';
    case 'resumed':
      return 'the primary was put back (onResume ran) and keeps running as primary';
    case 'resume-failed':
      return "the primary keeps running as primary, but its onResume FAILED: the site's writes may still be stopped (see the primary's log and /status)";
    case 'unchanged':
      return 'nothing changed on the primary';
    case 'calling-off':
      return 'the primary calls the switchover off by itself (onResume, after its current step), since the connection was lost before it allowed this standby to promote';
    case 'holding-until-timeout':
      return `the primary still holds (writes stopped) and calls the switchover off by itself${o.holdUntil ? ` at ${o.holdUntil}` : ' when its hold times out'} (onResume), unless the epoch is raised`;
    default:
      return "the primary's state is unknown: check its /status";
  }
}
