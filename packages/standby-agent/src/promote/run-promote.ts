import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  TandemError,
  acquireLock,
  describeError,
  fsyncDir,
  loadVerifyKeyFile,
  type Filestore,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { runRestart } from '../apply/restart.js';
import { readApplied, readPromoted, stateFiles, writePromoted, type PromotedState } from '../apply/state.js';
import { checkUnapplied, type Unapplied } from './preflight.js';

export interface PromoteResult {
  status: 'promoted' | 'already-promoted';
  promoted: PromotedState;
  restartError?: unknown;
}

/**
 * Turns this standby into the primary: preflight (no unfinished apply; no committed history left
 * unapplied unless forced), remove the sentinel, restart the site with TANDEM_MODE=primary, record it.
 *
 * Fencing the old primary (raising epoch.json, checking its heartbeat) belongs between the preflight
 * and the removal of the sentinel; it is the failover issue's.
 */
export async function runPromote(config: StandbyConfig, opts: { filestore: Filestore; logger: Logger; force: boolean }): Promise<PromoteResult> {
  const { logger } = opts;
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
    if (already !== null) return { status: 'already-promoted', promoted: already };

    const applied = await readApplied(config.stateDir);
    const unapplied = await preflight(config, opts, applied);
    if (!opts.force) {
      if (applied === null) {
        throw new TandemError('precondition', 'NOTHING_APPLIED', `this standby has never applied a set of site "${config.site}": promoting it would start an empty site`, {
          hint: 'run `tandem-standby apply` first, or pass --force',
        });
      }
      if (unapplied !== null && (unapplied.sets > 0 || unapplied.seconds > 0)) {
        throw new TandemError(
          'precondition',
          'UNAPPLIED_HISTORY',
          `this standby has not applied ${unapplied.sets} committed set(s), ${unapplied.seconds} seconds of primary history ` +
            `(applied ${applied.setId}, created ${applied.createdAt}; newest ${unapplied.newestSetId}, created ${unapplied.newestCreatedAt}); refusing to promote`,
          { hint: 'run `tandem-standby apply` first, or pass --force to promote and lose that history' },
        );
      }
    }

    await rm(config.paths.sentinel, { force: true });
    await fsyncDir(dirname(config.paths.sentinel)).catch(() => undefined);
    logger.info({ sentinel: config.paths.sentinel }, 'sentinel removed: the site leaves backup mode');
    const promoted: PromotedState = {
      site: config.site,
      promotedAt: new Date().toISOString(),
      appliedSetId: applied?.setId ?? null,
      forced: opts.force,
      unapplied: unapplied === null ? null : { sets: unapplied.sets, seconds: unapplied.seconds },
      restart: config.restartCommand ? 'pending' : 'none',
    };
    await writePromoted(config.stateDir, promoted);
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
    return { status: 'promoted', promoted, restartError };
  } finally {
    await lock.release();
  }
}

/** The unapplied history; with --force an unreachable filestore is a warning, not a stop. */
async function preflight(
  config: StandbyConfig,
  opts: { filestore: Filestore; logger: Logger; force: boolean },
  applied: Awaited<ReturnType<typeof readApplied>>,
): Promise<Unapplied | null> {
  try {
    return await checkUnapplied(opts.filestore, config.site, loadVerifyKeyFile(config.keys.verifyKeyFile), applied);
  } catch (err) {
    if (!opts.force) {
      throw new TandemError('external', 'PREFLIGHT_FAILED', `cannot tell how much primary history this standby lacks: ${describeError(err)}`, {
        cause: err,
        hint: 'fix the filestore access, or pass --force to promote without knowing',
      });
    }
    opts.logger.warn({ err }, 'could not check for unapplied sets; promoting anyway (--force)');
    return null;
  }
}
