import { TandemError } from '../errors.js';

/**
 * The directory store's error classification: errno to the kinds every filestore uses
 * ('not-found', 'transient', 'permanent'), with a message naming the path and what is wrong.
 */

const TRANSIENT_ERRNO = new Set(['EIO', 'EAGAIN', 'EMFILE', 'ENFILE', 'EBUSY', 'ETIMEDOUT', 'ESTALE', 'EINTR', 'ENOMEM']);
const PERMANENT_ERRNO: Record<string, string> = {
  ENOSPC: 'disk full',
  EDQUOT: 'disk quota exceeded',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOTDIR: 'a parent of the path is a file, not a directory',
  EISDIR: 'is a directory',
  ENAMETOOLONG: 'name too long',
  ELOOP: 'too many symbolic links',
  EXDEV: 'crosses file systems',
};

/** Classifies a file-system error; the message names the path and says what is wrong. */
export function fsError(err: unknown, action: string, p: string): unknown {
  if (err instanceof TandemError || (err instanceof Error && err.name === 'AbortError')) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code ?? 'UNKNOWN';
  const cause = { cause: err };
  if (code === 'ENOENT') return new TandemError('not-found', 'FILESTORE_NOT_FOUND', `${p} does not exist`, cause);
  if (TRANSIENT_ERRNO.has(code)) {
    return new TandemError('transient', `FILESTORE_${code}`, `cannot ${action} ${p}: ${code} (${(err as Error).message})`, cause);
  }
  const what = PERMANENT_ERRNO[code] ?? (err instanceof Error ? err.message : String(err));
  const hint =
    code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
      ? 'check that the filestore directory is writable by the agent user'
      : code === 'ENOSPC' || code === 'EDQUOT'
        ? 'free space on the filestore volume or lower retention'
        : undefined;
  return new TandemError('permanent', `FILESTORE_${code}`, `cannot ${action} ${p}: ${what} (${code})`, { ...cause, hint });
}

/**
 * A write into a filestore directory that does not exist: refused, never created (a file system
 * that is not mounted would otherwise be filled on the local disk underneath).
 */
export function rootMissingError(root: string): TandemError {
  return new TandemError(
    'permanent',
    'FILESTORE_ROOT_MISSING',
    `the filestore directory ${root} does not exist: not creating it (a filestore is created once, by \`tandem-primary init --filestore\`; a missing directory may be a file system that is not mounted)`,
    { hint: 'mount the file system the filestore lives on, or create the filestore with `tandem-primary init --filestore --config FILE`' },
  );
}

/** A path in the filestore's directory that is not a regular file where an object should be. */
export const notAFile = (p: string, key?: string): TandemError =>
  new TandemError('not-found', 'FILESTORE_NOT_FOUND', key === undefined ? `${p} is not a file` : `${p} is not a file (key ${key})`);
