/**
 * The fast subset of the fault suites (test/faults/, `npm run test:faults`), for `npm test`: four
 * SIGKILL points of a backup, four of an apply, and three filestore faults injected by the proxy.
 * Same harnesses and invariants as the full suites (test/faults/support/); see docs/reliability.md.
 */
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFilestore, type Filestore } from '@tandem/shared';
import { S3RVER_CREDENTIALS, s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from './support/s3rver.js';
import { dumpDatabaseState, ensurePostgres, requireCommands, runPrimary, tmpDir } from './support/site.js';
import { apply, backup, createStandbySite, dropSiteDatabases, show, type StandbySite } from './support/standby-helpers.js';
import {
  downloadKills,
  killPrimaryAt,
  killStandbyAt,
  named,
  prepareStandbyCrashSite,
  readManifest,
  sizesOf,
  uploadKills,
  type StandbyImage,
} from './faults/support/crash.js';
import { startFaultProxy, type FaultProxy } from './faults/support/fault-proxy.js';
import { checkStore, type VerifiedSets } from './faults/support/store-check.js';

const tools = () => {
  requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
  return ensurePostgres();
};

describe('fast crash subset: primary', () => {
  let root: string;
  let s: StandbySite;

  beforeAll(async () => {
    await tools();
    root = await tmpDir('tandem-fast-crash-p-');
    s = await createStandbySite(root);
  });
  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('killed mid-dump, mid-upload of files, after the last artifact and between manifest and latest.json: nothing partial committed; the next backup finishes', async () => {
    const sizes = sizesOf(await readManifest(s, await backup(s)));
    const verified: VerifiedSets = new Map();
    for (const k of [
      ...uploadKills(sizes, { db: [0.5], files: [0.5] }),
      { label: 'after-artifact:files', point: 'after-artifact:files' },
      { label: 'manifest-written', point: 'manifest-written' },
    ]) {
      await killPrimaryAt(s, k, verified);
    }
  });
});

describe('fast crash subset: standby', () => {
  let root: string;
  let s: StandbySite;
  let sets: { a: StandbyImage; b: StandbyImage; jobs1Config: string };

  beforeAll(async () => {
    await tools();
    root = await tmpDir('tandem-fast-crash-s-');
    s = await createStandbySite(root);
    sets = await prepareStandbyCrashSite(s, { grow: false });
  });
  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('killed mid-download, after the database swap, between the renames of the config swap, and after the record: each part old or new; the next apply finishes', async () => {
    for (const k of [...downloadKills({ files: [0.5] }), named('db-swapped'), named('config-moved-aside'), named('recorded')]) {
      await killStandbyAt(s, sets, k);
    }
  });
});

describe('fast filestore-fault subset (s3rver behind the fault proxy)', () => {
  let root: string;
  let s3: S3rverHandle;
  let proxy: FaultProxy;
  let s: StandbySite;
  let direct: Filestore;

  beforeAll(async () => {
    await tools();
    root = await tmpDir('tandem-fast-faults-');
    s3 = await startS3rver();
    proxy = await startFaultProxy({ upstream: s3.endpoint, seed: 1 });
    const prefix = `fast${process.pid}/`;
    direct = openFilestore(s3rverFilestoreUrl(s3, { prefix }), { s3: { credentials: S3RVER_CREDENTIALS } });
    s = await createStandbySite(root, { filestoreUrl: `${s3rverFilestoreUrl(proxy.endpoint, { prefix })}&idleTimeoutMs=1000`, env: s3rverEnv() });
  });
  afterAll(async () => {
    await direct?.close();
    await proxy?.close();
    if (s) await dropSiteDatabases(s);
    if (s3) await s3.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('a 503 on the manifest, a reset on latest.json, a download cut at half: retried or resumed, the set committed whole and applied', async () => {
    proxy.configure({
      rules: [
        { match: /^PUT manifest\.json$/, kinds: ['error-503'], rate: 1, maxInARow: 1 },
        { match: /^GET latest\.json$/, kinds: ['reset'], rate: 1, maxInARow: 1 },
        { match: /^GET files\.tar\.age$/, kinds: ['cut-response'], rate: 1, maxInARow: 1 },
      ],
    });
    const b = await runPrimary(['backup', '--config', s.primary.configFile], { env: s.env });
    expect(b.code, b.stderr).toBe(0);
    const store = await checkStore(direct, s.site, s.keys.verifyKeyFile);
    expect(store.problems).toEqual([]);
    expect(store.latest).toBe(b.stdout.trim());
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(await dumpDatabaseState(s.standby.db)).toEqual(await dumpDatabaseState(s.primary.db));
    const faulted = proxy.records.filter((r) => r.fault !== null).map((r) => `${r.cls}: ${r.fault}`);
    expect(faulted).toEqual(expect.arrayContaining(['PUT manifest.json: error-503', 'GET latest.json: reset', 'GET files.tar.age: cut-response']));
    expect(proxy.records.find((r) => r.cls === 'GET files.tar.age' && r.range !== undefined)?.range).toMatch(/^bytes=\d+-$/);
  });
});
