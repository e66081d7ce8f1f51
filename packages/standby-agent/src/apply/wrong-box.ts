import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { TandemError, agentIdPath, pidAlive, readAgentId, type EpochDoc, type StandbyConfig } from '@tandem/shared';

/**
 * The wrong box: the standby agent run on the site's primary. Applying a set there would replace the
 * primary's live data with an older copy of itself, and the daemon would also write the BACKUP
 * sentinel into the primary's config dir. What can be told reliably, without guessing from host
 * names (which collide by accident):
 *
 * - this state directory's agent id (`<stateDir>/agent-id`, shared by both agents of a server by
 *   default) is the one epoch.json names as the primary: this is the primary, or a copy of its
 *   state directory (a cloned image);
 * - a tandem-primary process runs with this state directory: its daemon (daemon.json naming
 *   tandem-primary and a live pid) or a backup (backup.lock held by a live process on this host).
 *
 * Checked before anything is read from or written to the live site, by apply (`--force` or not)
 * and by the daemon; nothing overrides it.
 */
export type WrongBoxRefuser = 'apply' | 'daemon';

const CONSEQUENCE: Record<WrongBoxRefuser, { text: string; exitCode: number }> = {
  apply: { text: "applying a set here would overwrite the primary's live site with a copy of it; nothing was changed", exitCode: 1 },
  // Exit 2, as for a bad config and a promoted server: a supervisor must not restart it here.
  daemon: { text: 'the standby daemon must not run here (it would apply sets over the primary and mark its site as a standby)', exitCode: 2 },
};

/** What was found that makes this server the primary, in words, and what to do about it. */
export interface WrongBoxFinding {
  what: string;
  hint: string;
}

/** epoch.json names this state directory's agent id as the primary. */
export function epochNamesThisAgent(config: StandbyConfig, epoch: EpochDoc | null): WrongBoxFinding | null {
  if (epoch === null || epoch.primaryId === undefined) return null;
  const id = readAgentId(config.stateDir);
  if (id === null || id !== epoch.primaryId) return null;
  return {
    what: `epoch.json of site "${config.site}" names agent ${id} (${epoch.primaryHost}) as the primary in epoch ${epoch.epoch} since ${epoch.since}, and that is this server's own agent id (${agentIdPath(config.stateDir)}): this server is the site's primary`,
    hint: `run tandem-standby on the standby server. If this server's state directory was copied from the primary's (a cloned image), remove ${agentIdPath(config.stateDir)} here (a new id is generated) and run again`,
  };
}

interface PrimaryProcess {
  pid: number;
  host?: string;
  startedAt?: string;
}

async function readJson(file: string): Promise<Record<string, unknown> | null> {
  try {
    const v: unknown = JSON.parse(await readFile(file, 'utf8'));
    return v !== null && typeof v === 'object' ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** A tandem-primary daemon or backup that runs with this state directory, now. */
export async function primaryRunningHere(config: StandbyConfig): Promise<WrongBoxFinding | null> {
  const daemonFile = join(config.stateDir, 'daemon.json');
  const daemon = await readJson(daemonFile);
  if (daemon?.agent === 'tandem-primary' && typeof daemon.pid === 'number' && daemon.pid !== process.pid && pidAlive(daemon.pid)) {
    const p = daemon as unknown as PrimaryProcess;
    return {
      what: `a tandem-primary daemon (pid ${p.pid}${typeof p.startedAt === 'string' ? `, since ${p.startedAt}` : ''}) runs with this state directory (${daemonFile}): this server is the site's primary`,
      hint: 'run tandem-standby on the standby server; a primary and a standby of one site never share a server',
    };
  }
  const lockFile = join(config.stateDir, 'backup.lock');
  const lock = await readJson(lockFile);
  if (lock !== null && typeof lock.pid === 'number' && lock.host === hostname() && lock.pid !== process.pid && pidAlive(lock.pid)) {
    const p = lock as unknown as PrimaryProcess;
    return {
      what: `a tandem-primary backup (pid ${p.pid}${typeof p.startedAt === 'string' ? `, since ${p.startedAt}` : ''}) holds ${lockFile}: this server is the site's primary`,
      hint: 'run tandem-standby on the standby server; a primary and a standby of one site never share a server',
    };
  }
  return null;
}

/** The refusal when this server is the site's primary (see above), else null. */
export async function wrongBoxRefusal(config: StandbyConfig, epoch: EpochDoc | null, by: WrongBoxRefuser): Promise<TandemError | null> {
  const found = epochNamesThisAgent(config, epoch) ?? (await primaryRunningHere(config));
  if (found === null) return null;
  const c = CONSEQUENCE[by];
  return new TandemError('precondition', 'THIS_IS_THE_PRIMARY', `${found.what}; ${c.text}`, { hint: found.hint, exitCode: c.exitCode });
}
