import { writeFileAtomic } from '@tandem/shared';
import { exists } from './swap-dirs.js';

/**
 * The BACKUP sentinel marks the site as a standby in backup mode. It is written before the first live
 * change of the first apply and only promote removes it (ordering rule 4).
 */
export interface Sentinel {
  mode: 'backup';
  site: string;
  /** The set being applied when the sentinel was written; null when `tandem-standby run` wrote it at start. */
  setId: string | null;
  since: string;
}

/** Writes the sentinel unless one is there already; returns whether it wrote one. */
export async function ensureSentinel(file: string, site: string, setId: string | null, now = new Date()): Promise<boolean> {
  if (await exists(file)) return false;
  const doc: Sentinel = { mode: 'backup', site, setId, since: now.toISOString() };
  // Readable by the site (it only has to see that the file exists), written like every state file.
  await writeFileAtomic(file, `${JSON.stringify(doc, null, 2)}\n`, 0o644);
  return true;
}
