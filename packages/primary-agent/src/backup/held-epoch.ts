import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '@tandem/shared';
import { readLastBackup } from '../state-files.js';

/**
 * stateDir/held-epoch.json: per site, the newest epoch epoch.json named this agent in, and the
 * agent id it named. epoch.json keeps only the current primary and the one before, so an agent
 * fenced twice over (epoch 1 → 2 → 3) cannot find its own epoch there; this record can, and it
 * tells a replaced primary ("this primary (web1, epoch 1) has been fenced ...") from a server that
 * was never the primary (a standby's host running `tandem-primary backup`).
 *
 * A record is a help for messages only: fencing itself compares epoch.json with this agent's id.
 */
const recordSchema = z.record(z.string(), z.object({ epoch: z.number().int().positive(), agentId: z.string(), at: z.string() }).loose());
type Record_ = z.infer<typeof recordSchema>;

export const heldEpochFile = (stateDir: string): string => join(stateDir, 'held-epoch.json');

async function readRecord(stateDir: string): Promise<Record_> {
  try {
    const r = recordSchema.safeParse(JSON.parse(await readFile(heldEpochFile(stateDir), 'utf8')));
    return r.success ? r.data : {};
  } catch {
    return {};
  }
}

/**
 * The epoch this agent held as the primary of `site`: its own record, else the epoch of the last
 * set it committed (last-backup.json, from before the record existed); null when neither says.
 */
export async function heldEpoch(stateDir: string, site: string, agentId: string): Promise<number | null> {
  const own = (await readRecord(stateDir))[site];
  // A record of another id: agent-id was replaced since, and last-backup.json is the old agent's.
  if (own !== undefined) return own.agentId === agentId ? own.epoch : null;
  const last = await readLastBackup(stateDir);
  if (last?.outcome === 'ok' && last.site === site) return last.epoch;
  return null;
}

/** Records that epoch.json names this agent in `epoch` (written only when it changes). */
export async function recordHeldEpoch(stateDir: string, site: string, agentId: string, epoch: number, now = new Date()): Promise<void> {
  const rec = await readRecord(stateDir);
  const own = rec[site];
  if (own !== undefined && own.agentId === agentId && own.epoch === epoch) return;
  rec[site] = { epoch, agentId, at: now.toISOString() };
  await writeFileAtomic(heldEpochFile(stateDir), `${JSON.stringify(rec, null, 2)}\n`, 0o600);
}
