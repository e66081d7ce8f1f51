import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTarStream, listTar, type PrimaryConfig } from '@tandem/shared';
import { backupModeRefusal, configArchiveExcludes } from './sentinel.js';

/** The parts of a primary config these functions read. */
const configWith = (config: string, sentinel: string): PrimaryConfig =>
  ({ site: 'demo', paths: { config, security: '/srv/demo/security', files: '/srv/demo/files', sentinel } }) as unknown as PrimaryConfig;

describe('the BACKUP sentinel and the config archive', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'tandem-sentinel-'));
  });
  afterAll(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('leaves out the sentinel inside the config dir, and nothing when it lies elsewhere', () => {
    expect(configArchiveExcludes(configWith('/srv/demo/priv', '/srv/demo/priv/BACKUP'))).toEqual(['BACKUP']);
    expect(configArchiveExcludes(configWith('/srv/demo/priv', '/srv/demo/priv/flags/BACKUP'))).toEqual(['flags/BACKUP']);
    expect(configArchiveExcludes(configWith('/srv/demo/priv', '/srv/demo/BACKUP'))).toEqual([]);
    expect(configArchiveExcludes(configWith('/srv/demo/priv', '/srv/demo/private/BACKUP'))).toEqual([]);
  });

  it('the config archive as a backup makes it has no sentinel, and keeps files of that name elsewhere in the tree', async () => {
    const dir = join(root, 'priv');
    await mkdir(join(dir, 'config.d'), { recursive: true });
    await writeFile(join(dir, 'config.d', 'site.yml'), 'site: demo\n');
    await writeFile(join(dir, 'BACKUP'), '{"mode":"backup"}\n');
    await writeFile(join(dir, 'config.d', 'BACKUP'), 'a file of the site that happens to have this name\n');
    await writeFile(join(dir, 'BACKUP.txt'), 'not the sentinel\n');
    const config = configWith(dir, join(dir, 'BACKUP'));
    const names = (await listTar(createTarStream(dir, { exclude: configArchiveExcludes(config) }))).map((e) => e.path);
    expect(names).not.toContain('./BACKUP');
    expect(names).toEqual(expect.arrayContaining(['./config.d/site.yml', './config.d/BACKUP', './BACKUP.txt']));
    // Without the exclusion the same tree carries it: the filter is what keeps it out.
    expect((await listTar(createTarStream(dir))).map((e) => e.path)).toContain('./BACKUP');
  });

  it('refuses a backup while the sentinel exists, naming the file, what it means and what to do', async () => {
    const dir = join(root, 'refuse');
    await mkdir(dir, { recursive: true });
    const config = configWith(dir, join(dir, 'BACKUP'));
    expect(await backupModeRefusal(config, 'backup')).toBeNull();
    await writeFile(join(dir, 'BACKUP'), `${JSON.stringify({ mode: 'backup', site: 'demo', setId: '20261122T030000Z-e1-000042', since: '2026-11-22T03:01:00.000Z' })}\n`);
    const err = await backupModeRefusal(config, 'backup');
    expect(err).toMatchObject({ code: 'BACKUP_MODE', kind: 'precondition', exitCode: 1 });
    expect(err!.message).toContain(`the sentinel ${join(dir, 'BACKUP')} exists (written by tandem-standby at 2026-11-22T03:01:00.000Z, applying set 20261122T030000Z-e1-000042)`);
    expect(err!.message).toContain('site "demo" on this server is a standby in backup mode');
    expect(err!.hint).toMatch(/run tandem-primary on the primary server.*tandem-standby promote/);
    expect(await backupModeRefusal(config, 'daemon')).toMatchObject({ code: 'BACKUP_MODE', exitCode: 2 });
  });
});
