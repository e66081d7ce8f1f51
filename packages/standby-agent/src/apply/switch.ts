import { rm } from 'node:fs/promises';
import type { Logger, StandbyConfig } from '@tandem/shared';
import { faultPoint } from './fault.js';
import { forgetFilesRecord, switchFilesObjects } from './files-objects.js';
import { writeJournal, type Journal } from './journal.js';
import { carryOver, relativeInside } from './preserve.js';
import type { AgentRole } from './db-prereqs.js';
import { switchSchema } from './schema.js';
import { swapDatabase } from './swap-db.js';
import { swapDir } from './swap-dirs.js';
import { swapCluster } from './cluster.js';
import { PART_ORDER, type PartName } from './targets.js';

/**
 * Switches every staged part not switched yet, in PART_ORDER, recording each in the journal.
 * Used by a normal apply and by roll-forward after a crash alike.
 */
export async function switchParts(config: StandbyConfig, journal: Journal, logger: Logger, agent?: AgentRole): Promise<void> {
  const now: string[] = [];
  for (const part of PART_ORDER) {
    if (journal.switched.includes(part)) continue;
    const t0 = performance.now();
    const outcome = await switchPart(config, journal, part, logger, agent);
    faultPoint(`${part}-swapped`);
    journal.switched.push(part);
    journal.durations[`switch_${part}`] = Math.round(performance.now() - t0) / 1000;
    await writeJournal(config.stateDir, journal);
    logger.debug({ part, outcome }, 'switched');
    now.push(part);
  }
  if (now.length > 0) logger.info({ parts: now }, 'the live site is switched to the set');
}

function switchPart(config: StandbyConfig, journal: Journal, part: PartName, logger: Logger, agent?: AgentRole) {
  if (part === 'db' && journal.dbKept === true) return Promise.resolve('kept');
  if (part === 'db' && journal.walSeed !== undefined) return swapCluster(config, journal.targets.cluster!, journal.walSeed, logger, () => faultPoint('cluster-moved-aside'));
  if (part === 'db') return journal.targets.db.schemaOf === undefined ? swapDatabase(config, journal.targets.db, logger) : switchSchema(config, journal, { agent, logger });
  const names = journal.targets.dirs[part];
  const between = () => faultPoint(`${part}-moved-aside`);
  if (part === 'files') {
    if (journal.filesObjects) return switchFilesObjects(names, config.stateDir, logger);
    return forgetFilesRecord(config.stateDir).then(() => swapDir(names, undefined, between));
  }
  if (part !== 'config') return swapDir(names, undefined, between);
  const sentinel = relativeInside(config.paths.config, config.paths.sentinel);
  return swapDir(names, async (live, next) => {
    const kept = await carryOver(live, next, { globs: config.config.preserve, paths: sentinel ? [sentinel] : [] });
    if (kept.length > 0) logger.debug({ kept }, "kept the standby's own config files");
  }, between);
}

/** Removes what an apply made beside the live site; best effort, each failure logged. */
export async function removeAll(paths: string[], logger: Logger): Promise<void> {
  for (const p of paths) {
    await rm(p, { recursive: true, force: true }).catch((err: unknown) => logger.warn({ err, path: p }, 'could not remove; remove it by hand'));
  }
}
