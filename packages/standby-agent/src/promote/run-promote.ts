import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  TandemError,
  acquireLock,
  agentId,
  agentName,
  compareSets,
  describeError,
  fsyncDir,
  loadVerifyKeyFile,
  raiseEpoch,
  readEpochDoc,
  isFilestoreMarkerRefusal,
  readVerifiedLatest,
  requireFilestoreMarker,
  type AgentIdentity,
  type EpochDoc,
  type Filestore,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { runRestart } from '../apply/restart.js';
import { readApplied, readJsonFile, readPromoted, removeStateFile, stateFiles, writeJsonFile, writePromoted, type AppliedState, type PromotedState } from '../apply/state.js';
import { askDaemonStatus } from '../daemon/daemon-info.js';
import { pendingDeltas } from '../apply/files-delta.js';
import { promoteCluster, walReplayedCheck } from './wal.js';
import { faultPoint } from '../apply/fault.js';
import { checkPrimarySilent, checkUnapplied, type Check, type KnownNewest, type SetRef, type Unapplied } from './preflight.js';

export interface PromoteResult {
  status: 'promoted' | 'already-promoted';
  promoted: PromotedState;
  checks: Check[];
  /** Checks that failed and were overridden by --force. */
  overridden: Check[];
  epoch: EpochDoc | null;
  restartError?: unknown;
}

/**
 * A planned switchover (`tandem-standby switchover`): the primary told this standby, over the
 * authenticated channel, that it stopped the site's writes (onFenced), committed `setId` and holds.
 */
export interface SwitchoverContext {
  requestId: string;
  setId: string;
  heldSince: string;
  /** The primary resumes (unless the epoch was raised) at its hold deadline: do not raise the epoch this close to it. */
  deadline: Date;
  /** How close to the deadline is too close (default 5 s). */
  marginMs?: number;
}

/**
 * The name this server goes by in epoch.json once promoted, for people (agentName): its standbyId,
 * else the host name as the standby reports itself.
 */
export const promotedName = (config: StandbyConfig): string => agentName(config);

/**
 * Who this server is in epoch.json once promoted: the agent id in its state directory (created on
 * first use), which the tandem-primary that runs here next must share (same stateDir, the default,
 * or a copy of the agent-id file), and its name.
 */
export const promotedIdentity = (config: StandbyConfig): AgentIdentity => ({ id: agentId(config.stateDir), host: promotedName(config) });

/**
 * Turns this standby into the primary.
 *
 * 1. Preflight, each check reported: the last apply is complete (never overridable: the site may be
 *    between two sets); the newest committed set is applied (else how many sets and seconds would be
 *    lost); the primary's heartbeat is stale (a fresh one means it may be alive).
 * 2. Fence the old primary: raise epoch.json with a conditional write naming this server's agent id.
 *    Of two servers racing to promote exactly one wins; the loser changes nothing. A promote that
 *    would name the agent epoch.json already names (a state directory copied from the primary) is
 *    refused, --force or not: it would fence nobody.
 * 3. Remove the sentinel, record the promotion, run restartCommand with TANDEM_MODE=primary.
 */
export async function runPromote(
  config: StandbyConfig,
  opts: { filestore: Filestore; logger: Logger; force: boolean; reason?: string; switchover?: SwitchoverContext },
): Promise<PromoteResult> {
  const { logger, filestore: fs } = opts;
  const lock = await acquireLock(stateFiles(config.stateDir).lock, 'promote', `an apply or promote of site "${config.site}"`);
  try {
    const journal = await readJournal(config.stateDir);
    if (journal !== null) {
      throw new TandemError(
        'precondition',
        'APPLY_UNFINISHED',
        `an apply of set ${journal.setId} is unfinished (phase ${journal.phase}): the site may be between two sets; refusing to promote`,
        { hint: 'run `tandem-standby apply` to finish or roll it back first' },
      );
    }
    const already = await readPromoted(config.stateDir);
    if (already !== null) return { status: 'already-promoted', promoted: already, checks: [], overridden: [], epoch: null };

    // The filestore must be tandem's (its marker), for the promote writes epoch.json there (a
    // switchover checked it at its start). With --force, a filestore without it is overridden: the
    // epoch is not raised, nothing is written to it. One that cannot be read is left to the
    // preflight and the epoch's raise, as before: they fail, and --force overrides that too.
    const storeProblem =
      opts.switchover === undefined
        ? await requireFilestoreMarker(fs, { url: config.filestore.url }).then(
            () => null,
            (err: unknown) => (isFilestoreMarkerRefusal(err) ? err : null),
          )
        : null;
    if (storeProblem !== null && !opts.force) throw storeProblem;

    const applied = await readApplied(config.stateDir);
    // Before anything is checked or changed: an unusable state directory stops the promote here.
    const self = promotedIdentity(config);
    // The epoch this standby follows: its applied set's, else the newest committed set's, else the
    // filestore's. A promote elsewhere that moved the epoch past it makes this promote lose, even
    // when the two were not simultaneous.
    const follows = applied?.epoch ?? (await followedEpoch(fs, config));
    // A promote of this server that raised the epoch and then failed (pg_promote, say) is finished,
    // neither checked again (the decision was taken: the old primary is fenced) nor refused as a
    // copy of the primary's state: its record says it raised the epoch, to which number.
    const promoting = await readJsonFile<{ from: number | null; to: number }>(stateFiles(config.stateDir).promoting, 'promote record');
    const current = promoting === null ? null : await readEpochDoc(fs, config.site).catch(() => null);
    const resumed = promoting !== null && current != null && current.doc.primaryId === self.id && current.doc.epoch === promoting.to ? current.doc : null;
    const { checks, unapplied } = resumed !== null ? { checks: [] as Check[], unapplied: null } : await preflight(config, opts, applied);
    if (storeProblem !== null) checks.splice(1, 0, { name: 'filestore', ok: false, detail: `the filestore is not usable: ${describeError(storeProblem)}` });
    for (const c of checks) logger.info({ check: c.name, ok: c.ok }, `preflight: ${c.detail}`);
    const failed = checks.filter((c) => !c.ok);
    if (failed.length > 0 && !opts.force) {
      throw new TandemError(
        'precondition',
        'PREFLIGHT_REFUSED',
        `refusing to promote site "${config.site}":\n${checks.map((c) => `  ${c.ok ? 'ok  ' : 'FAIL'}  ${c.detail}`).join('\n')}`,
        { hint: 'fix what failed (apply the newest set; make sure the old primary is down), or pass --force to override' },
      );
    }
    for (const c of failed) logger.warn({ check: c.name }, `--force overrides: ${c.detail}`);

    const sw = opts.switchover;
    if (sw !== undefined && Date.now() + (sw.marginMs ?? 5_000) >= sw.deadline.getTime()) {
      throw new TandemError(
        'precondition',
        'SWITCHOVER_HOLD_ENDING',
        `the primary's hold for switchover ${sw.requestId} ends at ${sw.deadline.toISOString()}: too close to raise the epoch safely (the primary resumes then); nothing changed`,
        { hint: 'run the switchover again with a longer --timeout' },
      );
    }

    // Fencing (must): from here on the old primary's uploads are refused, and standbys ignore its sets.
    let epoch: EpochDoc | null = null;
    if (resumed !== null) {
      epoch = resumed;
      logger.warn({ epoch: epoch.epoch }, 'an earlier promote of this server raised the epoch and did not finish: finishing it');
    } else if (storeProblem !== null) {
      logger.error({ err: storeProblem }, 'NOT raising the epoch: the filestore is not a usable tandem filestore; the old primary is not fenced; promoting anyway (--force)');
    } else {
      try {
        epoch = await raiseEpoch(fs, config.site, self, opts.reason ?? (opts.force ? 'promote --force' : 'promote'), {
          expect: follows,
        });
        await writeJsonFile(stateFiles(config.stateDir).promoting, { from: follows ?? null, to: epoch.epoch });
        faultPoint('promote-epoch-raised');
        logger.info({ epoch: epoch.epoch, primary: epoch.primaryHost, agentId: self.id }, 'epoch raised: the old primary is fenced');
      } catch (err) {
        if ((err as TandemError).kind === 'precondition' || !opts.force) throw err;
        logger.error({ err }, 'could NOT raise the epoch (filestore unreachable?): the old primary is not fenced; promoting anyway (--force)');
      }
    }

    // WAL mode: the cluster leaves recovery (the old primary is fenced now: it stores no more WAL).
    if (config.database.mode === 'wal') await promoteCluster(config, logger);
    await rm(config.paths.sentinel, { force: true });
    await fsyncDir(dirname(config.paths.sentinel)).catch(() => undefined);
    logger.info({ sentinel: config.paths.sentinel }, 'sentinel removed: the site leaves backup mode');
    const promoted: PromotedState = {
      site: config.site,
      promotedAt: new Date().toISOString(),
      appliedSetId: applied?.setId ?? null,
      forced: opts.force && failed.length > 0,
      unapplied: unapplied === null ? null : { sets: unapplied.sets, seconds: unapplied.seconds },
      restart: config.restartCommand ? 'pending' : 'none',
      epoch: epoch?.epoch ?? null,
      primaryName: self.host,
      primaryId: self.id,
      overridden: failed.map((c) => c.detail),
    };
    await writePromoted(config.stateDir, promoted);
    await removeStateFile(stateFiles(config.stateDir).promoting);
    let restartError: unknown;
    if (config.restartCommand) {
      try {
        await runRestart(config.restartCommand, { mode: 'primary', site: config.site, setId: applied?.setId ?? null }, logger);
        promoted.restart = 'ok';
      } catch (err) {
        promoted.restart = 'failed';
        restartError = err;
      }
      await writePromoted(config.stateDir, promoted);
    }
    return { status: 'promoted', promoted, checks, overridden: failed, epoch, restartError };
  } finally {
    await lock.release();
  }
}

async function followedEpoch(fs: Filestore, config: StandbyConfig): Promise<number | undefined> {
  try {
    const found = await readVerifiedLatest(fs, config.site, loadVerifyKeyFile(config.keys.verifyKeyFile));
    if (found !== null) return found.latest.epoch;
  } catch {
    // Not readable or not verified: the filestore's epoch instead.
  }
  return (await readEpochDoc(fs, config.site).catch(() => null))?.doc.epoch;
}

async function preflight(
  config: StandbyConfig,
  opts: { filestore: Filestore; logger: Logger; force: boolean; switchover?: SwitchoverContext },
  applied: AppliedState | null,
): Promise<{ checks: Check[]; unapplied: Unapplied | null }> {
  const checks: Check[] = [{ name: 'apply-complete', ok: true, detail: 'the last apply is complete (no unfinished journal)' }];
  const verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
  let unapplied: Unapplied | null = null;
  if (config.database.mode === 'wal') {
    // WAL mode: the database is as new as the WAL replayed, not as the set applied (files and
    // config still follow the sets and deltas, below).
    checks.push(await walReplayedCheck(config, opts.filestore));
    if (applied === null) checks.push({ name: 'newest-applied', ok: false, detail: 'this standby has never been seeded from a set' });
  } else try {
    unapplied = await checkUnapplied(opts.filestore, config.site, verifyKey, applied);
    if (applied === null) {
      checks.push({ name: 'newest-applied', ok: false, detail: `this standby has never applied a set: promoting it would start an empty site (newest is ${unapplied.newestSetId})` });
    } else if (unapplied.sets > 0 || unapplied.seconds > 0) {
      checks.push({
        name: 'newest-applied',
        ok: false,
        detail:
          `${unapplied.sets} committed set(s), ${unapplied.seconds} seconds of primary history are not applied ` +
          `(applied ${applied.setId}; newest ${unapplied.newestSetId}, created ${unapplied.newestCreatedAt})`,
      });
    } else {
      checks.push({ name: 'newest-applied', ok: true, detail: `the newest committed set ${applied.setId} is applied` });
    }
  } catch (err) {
    checks.push({ name: 'newest-applied', ok: false, detail: `cannot tell how much primary history is unapplied: ${describeError(err)}` });
  }
  if (config.keys.filesKeyFile !== undefined && applied !== null) {
    // Files deltas on top of the applied set: files the primary had that this standby does not.
    try {
      const latest = (await readVerifiedLatest(opts.filestore, config.site, verifyKey))?.latest ?? null;
      const pending = await pendingDeltas(config, latest);
      checks.push(
        pending === 0
          ? { name: 'files-deltas-applied', ok: true, detail: 'every files delta on top of the applied set is applied' }
          : { name: 'files-deltas-applied', ok: false, detail: `${pending} files delta(s) on top of set ${applied.setId} are not applied: files the primary had would be lost (\`tandem-standby apply\` applies them)` },
      );
    } catch (err) {
      checks.push({ name: 'files-deltas-applied', ok: false, detail: `cannot tell whether files deltas are pending: ${describeError(err)}` });
    }
  }
  try {
    // The newest set known committed, to tell a heartbeat that is the primary's last word from an old one.
    let newest: KnownNewest | SetRef | null = unapplied?.newest ?? null;
    if (applied !== null && (newest === null || compareSets(applied, newest) > 0)) newest = { setId: applied.setId, epoch: applied.epoch, seq: applied.seq };
    // The standby daemon, if it runs, has seen the push channel's heartbeats.
    const pushed = (await askDaemonStatus(config, opts.logger)).live?.primaryHeartbeat ?? null;
    const silent = await checkPrimarySilent(opts.filestore, config.site, verifyKey, config.heartbeatStaleAfter, new Date(), { newest, pushed });
    const sw = opts.switchover;
    if (!silent.ok && sw !== undefined) {
      // Alive, but holding for this very switchover: its writes are stopped and this promote fences it.
      silent.ok = true;
      silent.detail =
        `${silent.detail.split(';')[0]}; as expected: for switchover ${sw.requestId} the primary stopped the site's writes ` +
        `(onFenced) and holds since ${sw.heldSince} with set ${sw.setId} as its last, and this promote fences it`;
    }
    checks.push(silent);
  } catch (err) {
    checks.push({ name: 'primary-silent', ok: false, detail: `cannot read the primary's heartbeat: ${describeError(err)}` });
  }
  return { checks, unapplied };
}
