import { hostname } from 'node:os';
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { TandemError } from './errors.js';
import { pidAlive } from './net.js';

/**
 * A per-host exclusive lock file (pid, host, start time). A lock whose process is gone on this host
 * is stale and taken over, so a crashed run never blocks forever.
 */
export interface LockInfo {
  pid: number;
  host: string;
  startedAt: string;
  purpose: string;
}

export interface Lock {
  file: string;
  release(): Promise<void>;
}

export async function acquireLock(file: string, purpose: string, what: string): Promise<Lock> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const info: LockInfo = { pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), purpose };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(file, 'wx', 0o600);
      await fh.writeFile(JSON.stringify(info));
      await fh.sync();
      await fh.close();
      return { file, release: () => rm(file, { force: true }) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder: Partial<LockInfo> = {};
    try {
      holder = JSON.parse(await readFile(file, 'utf8')) as LockInfo;
    } catch {
      // Unreadable or half-written lock: the writer died between open and write.
    }
    const stale = holder.pid === undefined || (holder.host === info.host && !pidAlive(holder.pid));
    if (!stale) {
      throw new TandemError(
        'busy',
        'LOCKED',
        `${what} is already running (pid ${holder.pid} on ${holder.host}, since ${holder.startedAt}); lock file ${file}`,
        { hint: 'wait for it to finish; if that process is gone, the lock is taken over automatically' },
      );
    }
    await rm(file, { force: true });
  }
  throw new TandemError('busy', 'LOCKED', `${what}: could not take the lock ${file}`);
}
