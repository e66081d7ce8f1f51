import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFilestore, type Filestore } from '@tandem/shared';
import { stateFiles } from '../state-files.js';
import { listStoredObjects, runningBackup } from './objects-gc.js';

let dir: string;
let fs: Filestore;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-objects-gc-'));
  await mkdir(join(dir, 'store'));
  fs = openFilestore(pathToFileURL(join(dir, 'store')).href);
});
afterAll(async () => {
  await fs?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('runningBackup (nothing is collected while a backup of the site runs here)', () => {
  const lock = (info: object | string) => writeFile(stateFiles(dir).backupLock, typeof info === 'string' ? info : JSON.stringify(info));
  const startedAt = new Date().toISOString();

  it('no lock file: none', async () => {
    await rm(stateFiles(dir).backupLock, { force: true });
    expect(await runningBackup(dir)).toBeNull();
  });

  it('held by a live process of this host, or by another host: running, named', async () => {
    await lock({ pid: process.pid, host: hostname(), startedAt, purpose: 'backup' });
    expect(await runningBackup(dir)).toBe(`a backup of the site holds ${stateFiles(dir).backupLock} (pid ${process.pid} on ${hostname()}, since ${startedAt})`);
    await lock({ pid: 1, host: `not-${hostname()}`, startedAt, purpose: 'switchover hold' });
    expect(await runningBackup(dir)).toMatch(/^a switchover hold of the site holds /);
  });

  it('left by a process that is gone: stale, none', async () => {
    const gone = spawnSync(process.execPath, ['-e', '0']).pid;
    await lock({ pid: gone, host: hostname(), startedAt, purpose: 'backup' });
    expect(await runningBackup(dir)).toBeNull();
  });

  it('a lock file not yet written (or cut short): counted as held', async () => {
    await lock('');
    expect(await runningBackup(dir)).toMatch(/is being written$/);
    await rm(stateFiles(dir).backupLock, { force: true });
  });
});

describe('listStoredObjects', () => {
  it('objects are <xx>/<id> with xx the first two hex digits of the id; every other key is a stray', async () => {
    const id = `ab${'0'.repeat(62)}`;
    const other = `cd${'1'.repeat(62)}`;
    for (const key of [`demo/objects/ab/${id}`, `demo/objects/ab/${other}`, 'demo/objects/notes.txt', `demo/objects/ab/cd/${id}`, `demo/objects/ab/${id.toUpperCase()}`]) {
      await fs.putBuffer(key, Buffer.from('x'));
    }
    await fs.putBuffer(`demo2/objects/cd/${other}`, Buffer.from('y'));
    const { objects, strays } = await listStoredObjects(fs, 'demo');
    expect(objects.map((o) => [o.key, o.id])).toEqual([[`demo/objects/ab/${id}`, id]]);
    expect(strays.map((o) => o.key).sort()).toEqual([`demo/objects/ab/${other}`, `demo/objects/ab/${id.toUpperCase()}`, `demo/objects/ab/cd/${id}`, 'demo/objects/notes.txt'].sort());
  });
});
