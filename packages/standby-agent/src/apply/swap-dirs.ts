import { lstat, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { TandemError, fsyncDir } from '@tandem/shared';
import type { Names } from './targets.js';

export type DirSwapOutcome = 'swapped' | 'first' | 'already';

export async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/**
 * Puts the staged directory in place of the live one: live → old, next → live, both renames inside
 * the same parent directory (so the same file system), the parent fsynced after. The journal covers
 * the moment between the two renames.
 *
 * `prepare` runs just before the live dir moves away (config: copy the standby's own files into next).
 * Idempotent, for roll-forward after a crash:
 *   next missing, live present        → already done
 *   live missing, next present        → the first rename happened (or first apply): finish
 */
export async function swapDir(
  names: Names,
  prepare?: (live: string, next: string) => Promise<void>,
  /** Called between the two renames (the crash tests' fault point). */
  between?: () => void,
): Promise<DirSwapOutcome> {
  if (!(await exists(names.next))) {
    if (await exists(names.live)) return 'already';
    throw new TandemError('internal', 'DIR_SWAP_LOST', `neither ${names.live} nor the staged ${names.next} exists`, {
      hint: 'apply the set again with --force',
    });
  }
  let outcome: DirSwapOutcome = 'first';
  if (await exists(names.live)) {
    await rm(names.old, { recursive: true, force: true }); // a leftover of an earlier apply's cleanup
    await prepare?.(names.live, names.next);
    await rename(names.live, names.old);
    between?.();
    outcome = 'swapped';
  }
  await rename(names.next, names.live);
  await fsyncDir(dirname(names.live));
  return outcome;
}
