/**
 * Acceptance tests of issue 2 (the backup side): `tandem-primary backup / list`, run as the built
 * CLI against a real PostgreSQL database, real directory trees, a directory filestore and a real S3
 * server (s3rver over HTTP). Every artifact is read back with the standard tools an operator would
 * use in an emergency: `age -d`, `zstd -d`, `pg_restore`, `tar` (test/support/primary-site.ts).
 * `init` is tested in primary-init.test.ts, usage and --help in primary-cli.test.ts.
 *
 * Needs: `npm run build` first (the CLI runs from packages/primary-agent/dist/bundle), PostgreSQL on
 * 127.0.0.1:5432 (or TANDEM_TEST_PG), and age, zstd, tar, pg_restore, pg_dump on PATH.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadVerifyKeyFile, verifyLatest, verifyManifest, type Manifest } from '@tandem/shared';
import { s3rverFilestoreUrl } from './support/s3rver.js';
import {
  closedPort,
  dbUrl,
  dumpDatabaseState,
  messageLines,
  mustRun,
  mutateDemoDatabase,
  mutateSiteTree,
  runPrimary,
  sha256,
  sleep,
  startPrimary,
  waitFor,
  withDb,
  type RunResult,
} from './support/site.js';
import {
  SET_ID,
  SITE,
  ZSTD_MAGIC,
  backup,
  backupOk,
  configFor,
  createPrimarySite,
  expectOneErrorLine,
  expectStoreHasNoSets,
  latestKey,
  listJson,
  newStore,
  removePrimarySite,
  setKey,
  verifySet,
  zstdDecompress,
  type PrimarySite,
} from './support/primary-site.js';

const DB = `tandem_bk_${process.pid}`;

let p: PrimarySite;

beforeAll(async () => {
  p = await createPrimarySite(DB);
});

afterAll(async () => {
  await removePrimarySite(p);
});

// ---------------------------------------------------------------------------------------------

describe.each(['dir', 's3'] as const)('backup into a %s filestore', (kind) => {
  it('commits a set that the real age, zstd, pg_restore and tar read back whole', async () => {
    const store = await newStore(p, kind);
    const { file } = await configFor(p, store);
    const dbBefore = await dumpDatabaseState(DB);

    const r = await backup(store, file, ['--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { setId: string; artifacts: Manifest['artifacts']; durations: Record<string, number> };
    expect(out.setId).toMatch(SET_ID);
    expect(Object.keys(out.durations)).toEqual(expect.arrayContaining(['db', 'config', 'security', 'files', 'total']));

    const manifest = await verifySet(p, store, out.setId, { db: dbBefore, trees: p.paths });
    expect(out.artifacts).toEqual(manifest.artifacts);

    const listed = await listJson(store, file);
    expect(listed).toEqual([expect.objectContaining({ setId: out.setId, committed: true, latest: true, objects: 6 })]);
    const text = await runPrimary(['list', '--config', file], { env: store.env });
    expect(text.stdout).toMatch(new RegExp(`^${out.setId} .*committed, latest$`, 'm'));

    if (kind === 'dir') {
      // A second set after the site changed: it holds the new state, and latest.json moves to it.
      await mutateDemoDatabase(DB);
      await mutateSiteTree(p.root);
      const dbAfter = await dumpDatabaseState(DB);
      expect(dbAfter).not.toEqual(dbBefore);
      const second = await backupOk(store, file);
      expect(second > out.setId, 'set ids sort by time').toBe(true);
      await verifySet(p, store, second, { db: dbAfter, trees: p.paths });
      const both = await listJson(store, file);
      expect(both.map((s) => [s.setId, s.committed, s.latest])).toEqual([
        [out.setId, true, false],
        [second, true, true],
      ]);
    }
  });

  it('a backup killed (SIGKILL) while uploading commits nothing; the next backup removes the leftover', async () => {
    const store = await newStore(p, kind);
    const normal = await configFor(p, store);
    const slow = await configFor(p, store, { files: p.slowFiles, stateDir: normal.stateDir });
    const first = await backupOk(store, normal.file);
    const latestBefore = await store.read(latestKey);
    expect(latestBefore).not.toBeNull();

    const run = startPrimary(['backup', '--config', slow.file], { env: store.env, timeoutMs: 90_000 });
    // db, config and security are up: the files artifact (2 GiB) is now streaming to the store.
    const leftover = await waitFor(async () => {
      const keys = await store.keys(`${SITE}/sets/`);
      const k = keys.find((x) => x.endsWith('/security.tar.zst.age') && !x.includes(first));
      return k?.split('/')[2];
    }, 'the killed run to upload its security artifact');
    if (kind === 'dir') {
      await waitFor(async () => (await store.keys(`${SITE}/sets/${leftover}/`)).some((k) => k.includes('files.tar.zst.age.tmp-')), 'the files upload to start');
    }
    await sleep(300);
    expect(run.child.exitCode, 'still uploading when killed').toBeNull();
    run.child.kill('SIGKILL');
    const killed = await run.result;
    expect(killed.signal).toBe('SIGKILL');

    expect(await store.read(setKey(leftover, 'manifest.json'))).toBeNull();
    expect(await store.read(setKey(leftover, 'files.tar.zst.age'))).toBeNull();
    expect(await store.read(latestKey)).toEqual(latestBefore);
    expect(existsSync(join(normal.stateDir, 'backup.lock')), 'the dead run left its lock behind').toBe(true);
    const listed = await listJson(store, normal.file);
    expect(listed.map((s) => [s.setId, s.committed, s.latest])).toEqual([
      [first, true, true],
      [leftover, false, false],
    ]);
    const text = await runPrimary(['list', '--config', normal.file], { env: store.env });
    expect(text.stdout).toMatch(new RegExp(`^${leftover} .*UNCOMMITTED`, 'm'));

    // The next backup is not blocked by the dead run's lock, and removes its leftover.
    const next = await backupOk(store, normal.file);
    const after = await listJson(store, normal.file);
    expect(after.map((s) => [s.setId, s.committed, s.latest])).toEqual([
      [first, true, false],
      [next, true, true],
    ]);
    expect(await store.read(setKey(leftover, 'db.dump.zst.age'))).toBeNull();
    expect(existsSync(join(normal.stateDir, 'backup.lock'))).toBe(false);
    if (kind === 'dir') {
      // Not even the killed upload's partial temporary may stay behind (it can be gigabytes).
      expect(await store.keys(`${SITE}/sets/${leftover}/`), 'files left on disk for the removed set').toEqual([]);
    }
  });
});

describe('interrupted and failing backups (directory filestore unless named)', () => {
  it('killed at random points, a backup never leaves a half-committed set', async () => {
    const store = await newStore(p, 'dir');
    const { file } = await configFor(p, store);
    const first = await backupOk(store, file);
    const verifyKey = loadVerifyKeyFile(p.keys.verifyKeyFile);
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      const delay = 150 + Math.floor(Math.random() * 900);
      delays.push(delay);
      const run = startPrimary(['backup', '--config', file]);
      await sleep(delay);
      run.child.kill('SIGKILL');
      await run.result;
      // Invariants after any crash: latest.json names a complete, verifiable set; every set with
      // a manifest is complete; sets without one are listed as uncommitted.
      const latest = verifyLatest((await store.read(latestKey))!, verifyKey, 'latest.json');
      const listed = await listJson(store, file);
      expect(listed.filter((s) => s.latest).map((s) => s.setId), `delays ${delays}`).toEqual([latest.setId]);
      for (const s of listed) {
        const m = await store.read(setKey(s.setId, 'manifest.json'));
        expect(s.committed, `${s.setId} (delays ${delays})`).toBe(m !== null);
        if (m === null) continue;
        const manifest = verifyManifest(m, verifyKey, s.setId);
        for (const a of manifest.artifacts) {
          const stored = await store.read(setKey(s.setId, a.file));
          expect(stored && sha256(stored), `${s.setId}/${a.file} (delays ${delays})`).toBe(a.storedSha256);
        }
      }
    }
    const last = await backupOk(store, file);
    const listed = await listJson(store, file);
    expect(listed.filter((s) => !s.committed), `leftovers after a clean backup (delays ${delays})`).toEqual([]);
    expect(listed.find((s) => s.latest)?.setId).toBe(last);
    expect(listed[0]?.setId).toBe(first);
  });

  it('a config with several bad keys names every bad key path in one error and exits 2', async () => {
    const file = join(p.work, 'bad-config.yml');
    await writeFile(
      file,
      [
        'site: "Bad Site!"',
        'database:',
        '  url: mysql://root@localhost/demo',
        '  pasword: hunter2',
        'paths:',
        '  config: ""',
        '  files: 3',
        'filestore:',
        '  url: ftp://example.com/backups',
        'encryptoin: none',
        'compression:',
        '  level: 99',
        'keys:',
        '  signingKeyFile: ./signing.key',
        '',
      ].join('\n'),
    );
    const r = await runPrimary(['backup', '--config', file]);
    expect(r.code).toBe(2);
    expect(r.stderr.match(/tandem-primary: error:/g), 'one error').toHaveLength(1);
    for (const path of [
      'site',
      'database.url',
      'database.pasword',
      'paths.config',
      'paths.security',
      'paths.files',
      'filestore.url',
      'encryptoin',
      'compression.level',
    ]) {
      expect(r.stderr, path).toMatch(new RegExp(`^\\s+- ${path.replace('.', '\\.')}: `, 'm'));
    }
    expect(r.stderr).toContain(file);
  });

  it('a config problem outside the schema (no recipientFile while encrypting) is reported with the others', async () => {
    const file = join(p.work, 'bad-config-2.yml');
    await writeFile(file, `site: "Bad Site!"\ndatabase: { url: "${dbUrl(DB)}" }\npaths: { config: /a, security: /b, files: /c }\nfilestore: { url: "file:///tmp/x" }\nkeys: { signingKeyFile: ./k }\n`);
    const r = await runPrimary(['backup', '--config', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^\s+- site: /m);
    expect(r.stderr).toMatch(/^\s+- keys\.recipientFile: /m);
  });

  it('a wrong database URL gives one clear line, a non-zero exit, and commits nothing', async () => {
    const store = await newStore(p, 'dir');
    const noDb = await configFor(p, store, { databaseUrl: dbUrl('tandem_no_such_database') });
    let r = await backup(store, noDb.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, /database postgres:\/\/postgres@127\.0\.0\.1:5432\/tandem_no_such_database: database "tandem_no_such_database" does not exist/);
    await expectStoreHasNoSets(store);

    const port = await closedPort();
    const noServer = await configFor(p, store, { databaseUrl: `postgres://postgres@127.0.0.1:${port}/${DB}` });
    r = await backup(store, noServer.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`database postgres://postgres@127\\.0\\.0\\.1:${port}/${DB}: connection refused`));
    await expectStoreHasNoSets(store);
  });

  it('a failing pg_dump fails the backup with pg_dump\'s own message and commits nothing', async () => {
    // A role that may connect but not read the tables: the connection check passes, pg_dump fails.
    const role = `tandem_nopriv_${process.pid}`;
    await withDb('postgres', (c) => c.query(`DROP ROLE IF EXISTS ${role}; CREATE ROLE ${role} LOGIN`));
    try {
      const store = await newStore(p, 'dir');
      const { file } = await configFor(p, store, { databaseUrl: `postgres://${role}@127.0.0.1:5432/${DB}` });
      const r = await backup(store, file);
      expect(r.code).not.toBe(0);
      const errors = messageLines(r.stderr).filter((l) => l.startsWith('tandem-primary: error: '));
      expect(errors, r.stderr).toHaveLength(1);
      expect(errors[0]).toMatch(/pg_dump.*permission denied for (table|schema)/);
      await expectStoreHasNoSets(store);
    } finally {
      await withDb('postgres', (c) => c.query(`DROP ROLE IF EXISTS ${role}`));
    }
  });

  it('a missing directory gives one clear line naming the key and path, a non-zero exit, and commits nothing', async () => {
    const store = await newStore(p, 'dir');
    const missing = join(p.work, 'no-such-files-dir');
    const { file } = await configFor(p, store, { files: missing });
    const r = await backup(store, file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`paths\\.files: ${missing}: no such directory`));
    await expectStoreHasNoSets(store);
  });

  it('an unreachable filestore gives one clear line and a non-zero exit', async () => {
    // S3 endpoint on a closed port.
    const port = await closedPort();
    const dead = await newStore(p, 's3');
    const url = s3rverFilestoreUrl(`http://127.0.0.1:${port}`, { prefix: 'unreachable/' });
    const s3cfg = await configFor(p, dead, { filestoreUrl: url });
    const t0 = Date.now();
    let r = await backup(dead, s3cfg.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, /s3:\/\/tandem\/unreachable\/.*(ECONNREFUSED|connection refused)/i);
    expect(Date.now() - t0, 'gives up in reasonable time').toBeLessThan(60_000);
    expect(existsSync(join(s3cfg.stateDir, 'backup.lock')), 'lock released').toBe(false);

    // A bucket that does not exist on a reachable server.
    const noBucket = await configFor(p, dead, { filestoreUrl: s3rverFilestoreUrl(p.s3, { bucket: 'no-such-bucket', prefix: 'x/' }) });
    r = await backup(dead, noBucket.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, /s3:\/\/no-such-bucket\/.*bucket does not exist/);

    // A directory filestore below a regular file.
    const blocker = join(p.work, 'a-regular-file');
    await writeFile(blocker, 'not a directory');
    const dir = await newStore(p, 'dir');
    const dirCfg = await configFor(p, dir, { filestoreUrl: pathToFileURL(join(blocker, 'store')).href });
    r = await backup(dir, dirCfg.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`${blocker}/store/.*not a directory`));
  });

  it('a second backup of the same site is refused while one runs; SIGTERM aborts the first cleanly', async () => {
    const store = await newStore(p, 'dir');
    const slow = await configFor(p, store, { files: p.slowFiles });
    const lockFile = join(slow.stateDir, 'backup.lock');
    const run = startPrimary(['backup', '--config', slow.file], { timeoutMs: 90_000 });
    await waitFor(() => existsSync(lockFile), 'the first backup to take its lock');
    const second = await backup(store, slow.file);
    expect(second.code).toBe(75);
    expectOneErrorLine(second, new RegExp(`a backup of site "${SITE}" is already running \\(pid ${run.child.pid} on ${hostname()}`));
    expect(run.child.exitCode, 'the first one is unaffected').toBeNull();

    run.child.kill('SIGTERM');
    const first = await run.result;
    expect(first.code).not.toBe(0);
    expect(first.signal).toBeNull(); // handled: the agent cleaned up and exited by itself
    expect(first.stderr).toMatch(/interrupted/);
    await expectStoreHasNoSets(store);
    expect(await store.keys(`${SITE}/`), 'no partial uploads on disk').toEqual([`${SITE}/epoch.json`]);
    expect(existsSync(lockFile), 'lock released').toBe(false);
  });

  it('a stale lock (dead pid, or half-written) does not block; a live one does', async () => {
    const store = await newStore(p, 'dir');
    const { file, stateDir } = await configFor(p, store);
    const lockFile = join(stateDir, 'backup.lock');
    await mkdir(stateDir, { recursive: true });

    const live = { pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), purpose: 'backup' };
    await writeFile(lockFile, JSON.stringify(live));
    const blocked = await backup(store, file);
    expect(blocked.code).toBe(75);
    expectOneErrorLine(blocked, new RegExp(`already running \\(pid ${process.pid} `));
    await expectStoreHasNoSets(store);

    const deadPid = spawnSync('true').pid;
    expect(deadPid).toBeGreaterThan(0);
    await writeFile(lockFile, JSON.stringify({ ...live, pid: deadPid, startedAt: '2020-01-01T00:00:00.000Z' }));
    const id = await backupOk(store, file);
    expect(existsSync(lockFile)).toBe(false);

    await writeFile(lockFile, ''); // a writer that died between create and write
    const id2 = await backupOk(store, file);
    expect(id2 > id).toBe(true);
    expect(existsSync(lockFile)).toBe(false);
  });

  it('the filestore going away mid-upload (s3) fails the backup with one clear line and commits nothing', async () => {
    const store = await newStore(p, 's3');
    const normal = await configFor(p, store);
    const slow = await configFor(p, store, { files: p.slowFiles, stateDir: normal.stateDir });
    const first = await backupOk(store, normal.file);
    const latestBefore = await store.read(latestKey);
    const run = startPrimary(['backup', '--config', slow.file], { env: store.env, timeoutMs: 90_000 });
    const setId = await waitFor(async () => {
      const k = (await store.keys(`${SITE}/sets/`)).find((x) => x.endsWith('/security.tar.zst.age') && !x.includes(first));
      return k?.split('/')[2];
    }, 'the security artifact');
    await p.s3.stop();
    let r: RunResult;
    try {
      r = await run.result;
    } finally {
      await p.s3.restart();
    }
    expect(r.code).not.toBe(0);
    expect(r.timedOut).toBe(false);
    expectOneErrorLine(r, /s3:\/\/tandem\/.*(ECONNREFUSED|connection refused|socket hang up|ECONNRESET)/i);
    expect(await store.read(setKey(setId, 'manifest.json'))).toBeNull();
    expect(await store.read(latestKey)).toEqual(latestBefore);
  });
});

describe('encryption', () => {
  it('"encryption: none" uploads plain zstd artifacts, but only when the config says so', async () => {
    const store = await newStore(p, 'dir');
    const { file } = await configFor(p, store, { encryption: 'none', recipientFile: null });
    const r = await backup(store, file, ['--json']);
    expect(r.code, r.stderr).toBe(0);
    const { setId } = JSON.parse(r.stdout) as { setId: string };
    expect(r.stderr).toMatch(/unencrypted/);
    expect(await store.keys(`${SITE}/sets/${setId}/`)).toEqual(
      ['config.tar.zst', 'db.dump.zst', 'dbmeta.json.zst', 'files.tar', 'manifest.json', 'security.tar.zst'].map((f) => setKey(setId, f)),
    );
    const manifest = verifyManifest((await store.read(setKey(setId, 'manifest.json')))!, loadVerifyKeyFile(p.keys.verifyKeyFile), 'manifest');
    expect(manifest.encryption).toEqual({ scheme: 'none', recipients: [] });
    for (const a of manifest.artifacts) {
      expect(a.encryption).toBe('none');
      const stored = (await store.read(setKey(setId, a.file)))!;
      expect(sha256(stored)).toBe(a.storedSha256);
      // zstd, but the files archive (random media): a plain tar, whose first entry is "./".
      if (a.compression === 'zstd') expect(stored.subarray(0, 4)).toEqual(ZSTD_MAGIC);
      else expect([a.name, stored.subarray(0, 2).toString('latin1')]).toEqual(['files', './']);
    }
    const dump = await zstdDecompress((await store.read(setKey(setId, 'db.dump.zst')))!);
    const f = join(p.work, 'plain.pgdump');
    await writeFile(f, dump);
    expect((await mustRun('pg_restore', ['-l', f])).toString()).toMatch(/SEQUENCE SET shop invoice_no/);
  });

  it('without "encryption: none", a missing or unusable recipient is an error, never a plaintext upload', async () => {
    const store = await newStore(p, 'dir');
    // No recipientFile, no encryption key: encryption is on by default, so this is a config error.
    const noRecipient = await configFor(p, store, { recipientFile: null });
    let r = await backup(store, noRecipient.file);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/keys\.recipientFile: required while encryption is "age"/);
    await expectStoreHasNoSets(store);

    // Anything but the exact words is not "none".
    const sloppy = join(p.work, 'sloppy-encryption.yml');
    await writeFile(sloppy, (await readFile(noRecipient.file, 'utf8')) + 'encryption: false\n');
    r = await backup(store, sloppy);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^\s+- encryption: /m);
    await expectStoreHasNoSets(store);

    // encryption: age with a recipient file that does not exist.
    const missing = join(p.work, 'no-such.agepub');
    const gone = await configFor(p, store, { encryption: 'age', recipientFile: missing });
    r = await backup(store, gone.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`age recipient file ${missing}: no such file`));
    await expectStoreHasNoSets(store);

    // A recipient file holding something else (here: the identity, i.e. the wrong half of the pair).
    const wrong = await configFor(p, store, { recipientFile: p.keys.identityFile });
    r = await backup(store, wrong.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`${p.keys.identityFile}: .*an age recipient \\(age1\\.\\.\\.\\) was expected`));
    await expectStoreHasNoSets(store);
  });
});
