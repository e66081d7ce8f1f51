import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { AGENT_ID_FILE, artifactEntrySchema, writeFileAtomic } from '@tandem/shared';

/**
 * The primary's own records in its state dir:
 *   backup.lock       held while a backup runs (and while a switchover holds): one backup per site at a time
 *   last-backup.json  the outcome of the last backup run here (the daemon's /status and metrics start from it)
 *   daemon.json       while `tandem-primary run` runs: how `tandem-primary backup` finds the daemon
 *   switchover.json   while a switchover holds: what a restarted daemon must finish
 *   agent-id          this agent's id in epoch.json (agent-id.ts)
 */
export const stateFiles = (stateDir: string) => ({
  backupLock: join(stateDir, 'backup.lock'),
  lastBackup: join(stateDir, 'last-backup.json'),
  daemonInfo: join(stateDir, 'daemon.json'),
  switchover: join(stateDir, 'switchover.json'),
  agentId: join(stateDir, AGENT_ID_FILE),
});

/**
 * last-backup.json. Unknown members are stripped rather than refused: the record may have been
 * written by another version of this agent (before an upgrade), and all it costs then is a member.
 */
export const lastBackupSchema = z.discriminatedUnion('outcome', [
  z.object({
    outcome: z.literal('ok'),
    /** When the run ended. */
    at: z.string(),
    setId: z.string(),
    site: z.string(),
    epoch: z.number(),
    createdAt: z.string(),
    artifacts: z.array(artifactEntrySchema),
    /** Seconds per stage: db, config, security, files, commit, total. */
    durations: z.record(z.string(), z.number()),
    storedBytes: z.number(),
  }),
  z.object({
    outcome: z.literal('failed'),
    at: z.string(),
    /** Empty when the run failed before it had a set id. */
    setId: z.string(),
    error: z.string(),
  }),
]);
export type LastBackup = z.infer<typeof lastBackupSchema>;

/** The last run's record; null when there is none, or it is not a valid record (it is only a status). */
export async function readLastBackup(stateDir: string): Promise<LastBackup | null> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(stateFiles(stateDir).lastBackup, 'utf8'));
  } catch {
    return null;
  }
  const r = lastBackupSchema.safeParse(value);
  return r.success ? r.data : null;
}

export const writeLastBackup = (stateDir: string, doc: LastBackup): Promise<void> =>
  writeFileAtomic(stateFiles(stateDir).lastBackup, JSON.stringify(doc, null, 2));
