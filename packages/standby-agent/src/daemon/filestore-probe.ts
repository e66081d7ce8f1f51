import { readdir, stat } from 'node:fs/promises';
import type { FilestoreLocation } from '@tandem/shared';

/**
 * Whether `status` can read the filestore at all, before it reads documents from it. A directory
 * store reads a missing object as "not there", so a missing filestore directory (a file system that
 * is not mounted, a mistyped file:// URL) would read as a site with no sets and no heartbeat, which
 * looks healthy: `status` must say it does not know instead.
 *
 * Returns why the filestore cannot be read, in words naming the path, or null when it can (an S3
 * store says so itself on the first request: a missing bucket, denied access, no answer).
 */
export async function probeFilestore(location: FilestoreLocation): Promise<string | null> {
  if (location.scheme !== 'file') return null;
  const root = location.root;
  try {
    const st = await stat(root);
    if (!st.isDirectory()) return `${root} is not a directory`;
    await readdir(root);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return `the filestore directory ${root} does not exist (a file system that is not mounted, or a mistyped filestore.url)`;
    if (code === 'ENOTDIR') return `a parent of ${root} is a file, not a directory`;
    if (code === 'EACCES' || code === 'EPERM') return `${root} cannot be read: permission denied (${code})`;
    return `${root} cannot be read: ${(err as Error).message}`;
  }
}

/**
 * A filestore that answers but has lost the site: latest.json is not there although this standby
 * applied a set from it, which only an empty mount point, another filestore or site than the one
 * the set came from, or sets removed by hand explain. Null when that is not the case.
 */
export function siteMissing(site: string, description: string, appliedSetId: string | null, latestFound: boolean): string | null {
  if (latestFound || appliedSetId === null) return null;
  return (
    `${description} has no latest.json for site "${site}", though this standby applied set ${appliedSetId} from it: ` +
    'a file system that is not mounted, a mistyped filestore.url or site, or the sets were removed'
  );
}
