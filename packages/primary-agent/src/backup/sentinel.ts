import { lstat, readFile } from 'node:fs/promises';
import { relative, sep } from 'node:path';
import { TandemError, type PrimaryConfig } from '@tandem/shared';

/**
 * The site's BACKUP sentinel (paths.sentinel, by default `BACKUP` in the config dir: the path the
 * standby agent writes, derived by the same rule, config.ts sentinelPath) marks the site on this
 * server as a standby in backup mode. A primary must not back it up: the set would become the
 * newest and every standby would apply the standby's copy. So backups (one-shot and the daemon's)
 * and the daemon's start refuse while it exists, and the sentinel never goes into a config archive
 * (it may appear while a backup runs).
 */
export type BackupModeRefuser = 'backup' | 'daemon';

const REFUSALS: Record<BackupModeRefuser, { consequence: string; exitCode: number }> = {
  backup: { consequence: "a backup from here would publish the standby's copy as the site's newest set; nothing was uploaded", exitCode: 1 },
  // Exit 2, as for a bad config: a supervisor must not restart the primary daemon on a standby.
  daemon: { consequence: "the primary daemon must not run here (its backups would publish the standby's copy as the site's newest set)", exitCode: 2 },
};

/** What the standby wrote into the sentinel, for the message: " (written by tandem-standby at …)". */
async function describeSentinel(file: string): Promise<string> {
  try {
    const doc = JSON.parse(await readFile(file, 'utf8')) as { mode?: unknown; since?: unknown; setId?: unknown };
    if (doc.mode !== 'backup' || typeof doc.since !== 'string') return '';
    return ` (written by tandem-standby at ${doc.since}${typeof doc.setId === 'string' ? `, applying set ${doc.setId}` : ''})`;
  } catch {
    return '';
  }
}

/** The refusal when the sentinel exists, else null. */
export async function backupModeRefusal(config: PrimaryConfig, by: BackupModeRefuser): Promise<TandemError | null> {
  const file = config.paths.sentinel;
  try {
    await lstat(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    return new TandemError('permanent', 'SENTINEL_UNREADABLE', `cannot tell whether the site is in backup mode: ${file}: ${(err as Error).message}`, {
      hint: 'the agent user must be able to see the site\'s config dir (paths.config, paths.sentinel)',
      cause: err,
      exitCode: REFUSALS[by].exitCode,
    });
  }
  const r = REFUSALS[by];
  return new TandemError(
    'precondition',
    'BACKUP_MODE',
    `the sentinel ${file} exists${await describeSentinel(file)}: site "${config.site}" on this server is a standby in backup mode; ${r.consequence}`,
    {
      hint: 'run tandem-primary on the primary server. To make this server the primary, promote it (`tandem-standby promote` removes the sentinel); if the file is a leftover and no tandem-standby runs here, remove it',
      exitCode: r.exitCode,
    },
  );
}

export async function refuseInBackupMode(config: PrimaryConfig, by: BackupModeRefuser): Promise<void> {
  const refusal = await backupModeRefusal(config, by);
  if (refusal !== null) throw refusal;
}

/** The sentinel's path relative to `dir` ("/"-separated) when it lies inside it, else null. */
export function insideDir(dir: string, file: string): string | null {
  const rel = relative(dir, file);
  if (rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || rel.startsWith(sep)) return null;
  return rel.split(sep).join('/');
}

/** What the config archive leaves out: the sentinel, when it lies inside the config dir. */
export function configArchiveExcludes(config: Pick<PrimaryConfig, 'paths'>): string[] {
  const rel = insideDir(config.paths.config, config.paths.sentinel);
  return rel === null ? [] : [rel];
}
