import { randomInt } from 'node:crypto';
import { open, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TandemError } from '../errors.js';
import { mkdirp } from '../fsutil.js';
import { RESERVED_MARK, throwIfAborted } from './common.js';
import { fsError } from './dir-errors.js';

/** Creates `file` exclusively, making parent directories; retries if a concurrent delete removes them. */
export async function createExclusive(file: string): Promise<FileHandle> {
  for (let attempt = 0; ; attempt++) {
    try {
      await mkdirp(path.dirname(file), 0o700);
      return await open(file, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && attempt < 5) continue;
      throw err;
    }
  }
}

export interface DirLockTiming {
  /** A lock older than this is presumed left by a crashed writer and taken over. */
  staleMs: number;
  /** How long to wait for the lock before failing with a transient error. */
  waitMs: number;
}

/**
 * The directory store's conditional-write lock: an exclusive lock file beside the object
 * (`<object>.tmp-lock`, hidden from `list` like every reserved name). Returns its release function.
 */
export async function lockBeside(final: string, timing: DirLockTiming, signal?: AbortSignal): Promise<() => Promise<void>> {
  const lockPath = `${final}${RESERVED_MARK}lock`;
  const deadline = Date.now() + timing.waitMs;
  for (let delay = 5; ; delay = Math.min(delay * 2, 250)) {
    throwIfAborted(signal);
    try {
      const fh = await createExclusive(lockPath);
      const { ino } = await fh.stat();
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return async () => {
        // After a stale takeover the file may be someone else's by now; leave theirs alone.
        const now = await stat(lockPath).catch(() => null);
        if (now?.ino === ino) await unlink(lockPath).catch(() => {});
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError(err, 'lock', lockPath);
    }
    const held = await stat(lockPath).catch(() => null);
    if (held && Date.now() - held.mtimeMs > timing.staleMs) {
      // Presumed crashed holder. Two writers taking over at the same instant can still race;
      // that needs a crash plus a tie, and costs a precondition error at worst for one of them.
      await unlink(lockPath).catch(() => {});
      continue;
    }
    if (Date.now() > deadline) {
      throw new TandemError('transient', 'FILESTORE_LOCKED', `timed out waiting for lock ${lockPath}`, {
        hint: `another writer holds it; a lock older than ${timing.staleMs} ms is taken over`,
      });
    }
    await sleep(delay + randomInt(delay), undefined, { signal }).catch(() => {});
  }
}
