import { spawnSync } from 'node:child_process';
import { writeFileSync, existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { TandemError } from './errors.js';
import { acquireLock } from './lock.js';
import { removeTempDirs, tempDirSync } from './testing/helpers.js';

/** A lock file in a temp dir of its own (removed at the end). */
const lockFile = (): string => join(tempDirSync('tandem-lock-'), 'backup.lock');
afterAll(removeTempDirs);

describe('acquireLock', () => {
  it('refuses a second holder while the first lives, and frees on release', async () => {
    const file = lockFile();
    const first = await acquireLock(file, 'backup', 'a backup of site "demo"');
    const err = await acquireLock(file, 'backup', 'a backup of site "demo"').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TandemError);
    expect((err as TandemError).kind).toBe('busy');
    expect((err as TandemError).message).toMatch(new RegExp(`a backup of site "demo" is already running \\(pid ${process.pid}`));
    await first.release();
    expect(existsSync(file)).toBe(false);
    const again = await acquireLock(file, 'backup', 'x');
    await again.release();
  });

  it('takes over a lock whose process is gone', async () => {
    const file = lockFile();
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
    writeFileSync(file, JSON.stringify({ pid: Number(dead), host: hostname(), startedAt: '2026-01-01T00:00:00Z', purpose: 'backup' }));
    const lock = await acquireLock(file, 'backup', 'x');
    await lock.release();
  });
});
