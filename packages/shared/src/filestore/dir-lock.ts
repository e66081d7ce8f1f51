import { randomInt } from 'node:crypto';
import { mkdir, open, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TandemError } from '../errors.js';
import { RESERVED_MARK, throwIfAborted } from './common.js';
import { fsError, rootMissingError } from './dir-errors.js';

/**
 * Creates `file` exclusively, making the directories between the store's `root` and it; retries if
 * a concurrent delete removes them. The root itself is never made: a filestore directory that is
 * missing (a file system that is not mounted, a mistyped URL) is refused here, not created on
 * whatever disk is underneath (only `DirFilestore.createRoot`, for `init --filestore`, makes it).
 */
export async function createExclusive(root: string, file: string): Promise<FileHandle> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await open(file, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 5) throw err;
    }
    await makeParents(root, path.dirname(file));
  }
}

/** The directories from below `root` down to `dir`, one by one (0700); `root` must exist. */
async function makeParents(root: string, dir: string): Promise<void> {
  const st = await stat(root).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw rootMissingError(root);
    throw err;
  });
  if (!st.isDirectory()) throw Object.assign(new Error(`${root} is not a directory`), { code: 'ENOTDIR' });
  const rel = path.relative(root, dir);
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) return;
  let p = root;
  for (const segment of rel.split(path.sep)) {
    p = path.join(p, segment);
    try {
      await mkdir(p, { mode: 0o700 });
    } catch (err) {
      // ENOENT: a concurrent delete removed a parent just made; the caller tries again.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
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
export async function lockBeside(root: string, final: string, timing: DirLockTiming, signal?: AbortSignal): Promise<() => Promise<void>> {
  const lockPath = `${final}${RESERVED_MARK}lock`;
  const deadline = Date.now() + timing.waitMs;
  for (let delay = 5; ; delay = Math.min(delay * 2, 250)) {
    throwIfAborted(signal);
    try {
      const fh = await createExclusive(root, lockPath);
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
