/**
 * Acceptance tests of issue 2 (the backup side): `tandem-primary init / backup / list`, run as the
 * built CLI against a real PostgreSQL database, real directory trees, a directory filestore and a
 * real S3 server (s3rver over HTTP). Every artifact is read back with the standard tools an
 * operator would use in an emergency: `age -d`, `zstd -d`, `pg_restore`, `tar`.
 *
 * Needs: `npx tsc -b` first (the CLI runs from packages/primary-agent/dist), PostgreSQL on
 * 127.0.0.1:5432 (or TANDEM_TEST_PG), and age, zstd, tar, pg_restore, pg_dump on PATH.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { chmod, mkdir, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, relative, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  parseDbMeta,
  isNotFound,
  loadToken,
  loadVerifyKeyFile,
  openFilestore,
  verifyLatest,
  verifyManifest,
  type Filestore,
  type Manifest,
} from '@tandem/shared';
import { startS3rver, s3rverEnv, s3rverFilestoreUrl, S3RVER_CREDENTIALS, type S3rverHandle } from './support/s3rver.js';
import {
  PRIMARY_MAIN,
  closedPort,
  createDemoDatabase,
  createEmptyDatabase,
  createSiteTree,
  dbUrl,
  dropDatabase,
  dumpDatabaseState,
  ensurePostgres,
  makeKeys,
  messageLines,
  mustRun,
  mutateDemoDatabase,
  mutateSiteTree,
  requireCommands,
  runCommand,
  runPrimary,
  sha256,
  sleep,
  snapshotTree,
  startPrimary,
  tmpDir,
  waitFor,
  withDb,
  writePrimaryConfig,
  type DatabaseState,
  type KeyFiles,
  type RunResult,
  type SitePaths,
} from './support/site.js';

const SITE = 'demo';
const DB = `tandem_bk_${process.pid}`;
const ARTIFACT_FILES = ['config.tar.zst.age', 'db.dump.zst.age', 'dbmeta.json.zst.age', 'files.tar.zst.age', 'security.tar.zst.age'];
const SET_ID = /^\d{8}T\d{6}Z-e1-\d{6}$/;
const AGE_MAGIC = 'age-encryption.org/v1\n';
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

let work: string;
let keys: KeyFiles;
let site: SitePaths;
let siteRoot: string;
/** A files tree holding one 2 GiB sparse file: its upload takes seconds, long enough to interrupt. */
let slowFiles: string;
let s3: S3rverHandle;
const restoredDbs: string[] = [];
let counter = 0;

beforeAll(async () => {
  requireCommands(['age', 'age-keygen', 'zstd', 'tar', 'pg_restore', 'pg_dump']);
  if (!existsSync(PRIMARY_MAIN)) throw new Error(`${PRIMARY_MAIN} is missing: build first with \`npx tsc -b\``);
  await ensurePostgres();
  work = await tmpDir('tandem-backup-test-');
  siteRoot = join(work, 'site');
  slowFiles = join(work, 'slow-files');
  await mkdir(slowFiles);
  const fh = await open(join(slowFiles, 'sparse.bin'), 'w');
  await fh.truncate(2 * 1024 ** 3);
  await fh.close();
  [, keys, site, s3] = await Promise.all([
    createDemoDatabase(DB),
    makeKeys(join(work, 'keys')),
    createSiteTree(siteRoot),
    startS3rver({ buckets: ['tandem'] }),
  ]);
});

afterAll(async () => {
  await s3?.destroy();
  for (const db of [DB, ...restoredDbs]) await dropDatabase(db).catch(() => undefined);
  if (work) await rm(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// A filestore as the tests see it: raw reads that do not go through the agent's own code for the
// directory store (the files on disk are the truth), the shared S3 client for S3.
// ---------------------------------------------------------------------------------------------

type Kind = 'dir' | 's3';

interface Store {
  kind: Kind;
  url: string;
  /** Environment for CLI runs against this store (S3 credentials). */
  env: Record<string, string>;
  /** The object's bytes, or null when it does not exist. */
  read(key: string): Promise<Buffer | null>;
  /** Every object key under `prefix`; for the directory store every file on disk, temporaries included. */
  keys(prefix: string): Promise<string[]>;
}

const openStores: Filestore[] = [];
afterAll(async () => {
  for (const fs of openStores) await fs.close().catch(() => undefined);
});

async function newStore(kind: Kind): Promise<Store> {
  const n = ++counter;
  if (kind === 'dir') {
    const root = join(work, `store-${n}`);
    return {
      kind,
      url: pathToFileURL(root).href,
      env: {},
      read: async (key) => readFile(join(root, key)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return null;
        throw err;
      }),
      keys: async (prefix) => {
        const base = join(root, prefix);
        if (!existsSync(base)) return [];
        const entries = await readdir(base, { recursive: true, withFileTypes: true });
        return entries
          .filter((e) => !e.isDirectory())
          .map((e) => relative(root, join(e.parentPath, e.name)).split(sep).join('/'))
          .sort();
      },
    };
  }
  const url = s3rverFilestoreUrl(s3, { prefix: `run${process.pid}-${n}/` });
  const fs = openFilestore(url, { s3: { credentials: S3RVER_CREDENTIALS } });
  openStores.push(fs);
  return {
    kind,
    url,
    env: s3rverEnv(),
    read: async (key) => {
      try {
        return (await fs.getBuffer(key, { maxBytes: Infinity })).body; // artifacts too, not only small documents
      } catch (err) {
        if (isNotFound(err)) return null;
        throw err;
      }
    },
    keys: async (prefix) => (await fs.list(prefix)).map((o) => o.key).sort(),
  };
}

interface ConfigOptions {
  files?: string;
  stateDir?: string;
  encryption?: 'age' | 'none';
  recipientFile?: string | null;
  databaseUrl?: string;
  filestoreUrl?: string;
  paths?: Partial<SitePaths>;
}

/** Write a config for `store`; each call gets its own file and (unless given) its own state dir. */
async function configFor(store: Store, o: ConfigOptions = {}): Promise<{ file: string; stateDir: string }> {
  const n = ++counter;
  const stateDir = o.stateDir ?? join(work, `state-${n}`);
  const file = await writePrimaryConfig(join(work, `config-${n}.yml`), {
    site: SITE,
    databaseUrl: o.databaseUrl ?? dbUrl(DB),
    paths: { ...site, ...(o.files ? { files: o.files } : {}), ...o.paths },
    filestoreUrl: o.filestoreUrl ?? store.url,
    keys: {
      signingKeyFile: keys.signingKeyFile,
      ...(o.recipientFile === null ? {} : { recipientFile: o.recipientFile ?? keys.recipientFile }),
    },
    encryption: o.encryption,
    stateDir,
  });
  return { file, stateDir };
}

async function backup(store: Store, config: string, extra: string[] = []): Promise<RunResult> {
  return runPrimary(['backup', '--config', config, ...extra], { env: store.env, timeoutMs: 90_000 });
}

/** Run a backup that must succeed; returns its set id. */
async function backupOk(store: Store, config: string): Promise<string> {
  const r = await backup(store, config);
  expect(r.code, r.stderr).toBe(0);
  const id = r.stdout.trim();
  expect(id).toMatch(SET_ID);
  return id;
}

interface Listed {
  setId: string;
  committed: boolean;
  latest: boolean;
  objects: number;
  bytes: number;
  createdAt: string | null;
}

async function listJson(store: Store, config: string): Promise<Listed[]> {
  const r = await runPrimary(['list', '--config', config, '--json'], { env: store.env });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Listed[];
}

const setKey = (id: string, file: string) => `${SITE}/sets/${id}/${file}`;
const latestKey = `${SITE}/latest.json`;

/** Exactly one "tandem-primary: error: ..." line (plus optional hint lines), and no other noise. */
function expectOneErrorLine(r: RunResult, wording: RegExp): void {
  const lines = messageLines(r.stderr);
  const errors = lines.filter((l) => l.startsWith('tandem-primary: error: '));
  expect(errors, r.stderr).toHaveLength(1);
  expect(errors[0]).toMatch(wording);
  const other = lines.filter((l) => !l.startsWith('tandem-primary: error: ') && !l.startsWith('  hint: '));
  expect(other, 'stderr lines besides the error, its hint and JSON logs').toEqual([]);
}

/** Nothing committed and nothing left in a store that was empty before the run. */
async function expectStoreHasNoSets(store: Store): Promise<void> {
  expect(await store.keys(`${SITE}/sets/`)).toEqual([]);
  expect(await store.read(latestKey)).toBeNull();
}

// ---------------------------------------------------------------------------------------------
// Reading a set back with the real tools
// ---------------------------------------------------------------------------------------------

const normalizeTarPath = (p: string) => p.replace(/^\.\//, '').replace(/^\.$/, '').replace(/\/$/, '');

/** Decrypt with the real `age` CLI and the identity file made by `init`. */
async function ageDecrypt(ciphertext: Buffer): Promise<Buffer> {
  return mustRun('age', ['-d', '-i', keys.identityFile], { input: ciphertext });
}

const zstdDecompress = (data: Buffer): Promise<Buffer> => mustRun('zstd', ['-d', '-q', '-c'], { input: data });

async function checkTar(tarBytes: Buffer, tree: string, label: string): Promise<void> {
  const expected = await snapshotTree(tree, { mtimes: true });
  // The listing: every path of the tree (and the "./" root entry), nothing else.
  const listing = (await mustRun('tar', ['-t', '--quoting-style=literal', '-f', '-'], { input: tarBytes, env: { ...process.env, LC_ALL: 'C' } }))
    .toString('utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map(normalizeTarPath);
  expect(new Set(listing), `${label}: tar -t`).toEqual(new Set(['', ...expected.map((e) => e.path)]));
  expect(listing.length, `${label}: no duplicate entries`).toBe(expected.length + 1);
  // Extracted by GNU tar, the tree is the same: contents, modes, symlinks, empty dirs, file mtimes.
  const out = join(work, `untar-${++counter}`);
  await mkdir(out);
  await mustRun('tar', ['-x', '-f', '-', '-C', out], { input: tarBytes });
  expect(await snapshotTree(out, { mtimes: true }), `${label}: extracted tree`).toEqual(expected);
  await rm(out, { recursive: true, force: true });
}

async function checkDump(dump: Buffer, expected: DatabaseState): Promise<void> {
  const file = join(work, `dump-${++counter}.pgdump`);
  await writeFile(file, dump);
  const toc = (await mustRun('pg_restore', ['-l', file])).toString('utf8');
  for (const entry of [
    /SCHEMA - shop /,
    /TABLE public rsc /,
    /TABLE public medium /,
    /TABLE shop product /,
    /TABLE shop orders /,
    /TABLE DATA public rsc /,
    /TABLE DATA shop orders /,
    /SEQUENCE shop invoice_no /,
    /SEQUENCE SET shop invoice_no /,
    /SEQUENCE SET public rsc_id_seq /,
    /VIEW shop order_totals /,
    /INDEX public rsc_created_idx /,
    /FUNCTION public rsc_label\(bigint\) /,
    /BLOBS - BLOBS/,
  ]) {
    expect(toc, 'pg_restore -l').toMatch(entry);
  }
  const blobs = toc.split('\n').filter((l) => /\bBLOB - \d+ /.test(l));
  expect(blobs.length, 'one BLOB entry per large object').toBe(Object.keys(expected.largeObjects).length);
  // And it restores into a database equal to the source: rows, sequence values, large objects.
  const name = `${DB}_r${++counter}`;
  restoredDbs.push(name);
  await createEmptyDatabase(name);
  await mustRun('pg_restore', ['--no-owner', '--exit-on-error', '-j', '2', '-d', dbUrl(name), file]);
  expect(await dumpDatabaseState(name)).toEqual(expected);
  await dropDatabase(name);
  await rm(file);
}

/**
 * Everything a standby (or an operator with only the standard tools) will rely on: the set holds
 * exactly its artifacts and manifest, the signed manifest's sizes and SHA-256 match the stored
 * bytes, every artifact is age → zstd → pg_dump/tar, and the contents equal the source.
 */
async function verifySet(store: Store, setId: string, expected: { db: DatabaseState; trees: SitePaths }): Promise<Manifest> {
  expect(await store.keys(`${SITE}/sets/${setId}/`)).toEqual([...ARTIFACT_FILES, 'manifest.json'].sort().map((f) => setKey(setId, f)));
  const manifestBytes = await store.read(setKey(setId, 'manifest.json'));
  expect(manifestBytes).not.toBeNull();
  const verifyKey = loadVerifyKeyFile(keys.verifyKeyFile);
  const manifest = verifyManifest(manifestBytes!, verifyKey, `${setId}/manifest.json`);
  expect(manifest).toMatchObject({ setId, site: SITE, epoch: 1, encryption: { scheme: 'age-x25519' } });
  expect(manifest.database.name).toBe(DB);
  expect(manifest.artifacts.map((a) => a.name)).toEqual(['db', 'dbmeta', 'config', 'security', 'files']);

  const recipient = (await readFile(keys.recipientFile, 'utf8')).trim();
  expect(manifest.encryption.recipients).toEqual([recipient]);
  for (const a of manifest.artifacts) {
    const stored = await store.read(setKey(setId, a.file));
    expect(stored, a.file).not.toBeNull();
    expect(stored!.length, `${a.file}: storedSize`).toBe(a.storedSize);
    expect(sha256(stored!), `${a.file}: storedSha256`).toBe(a.storedSha256);
    expect(stored!.subarray(0, AGE_MAGIC.length).toString('latin1'), `${a.file}: an age v1 file`).toBe(AGE_MAGIC);
    const plain = await zstdDecompress(await ageDecrypt(stored!));
    expect(plain.length, `${a.file}: plainSize`).toBe(a.plainSize);
    if (a.name === 'db') {
      expect(plain.subarray(0, 5).toString('latin1'), 'pg_dump custom format').toBe('PGDMP');
      await checkDump(plain, expected.db);
    } else if (a.name === 'dbmeta') {
      // The database's own description: owner, settings, and the roles it needs (at least its owner).
      const meta = parseDbMeta(plain, a.file);
      expect(meta.database.owner).toBeTruthy();
      expect(meta.roles.map((r) => r.name)).toContain(meta.database.owner);
    } else {
      await checkTar(plain, expected.trees[a.name], a.name);
    }
  }
  // Encrypted, not merely compressed: zstd keeps literals readable, age does not.
  const config = await store.read(setKey(setId, 'config.tar.zst.age'));
  expect(config!.includes('demo.example.com')).toBe(false);

  // latest.json is signed and names this set by the hash of its manifest.
  const latest = verifyLatest((await store.read(latestKey))!, verifyKey, 'latest.json');
  expect(latest).toMatchObject({ site: SITE, setId, epoch: 1, manifestSha256: sha256(manifestBytes!) });
  expect(JSON.parse((await store.read(`${SITE}/epoch.json`))!.toString('utf8'))).toMatchObject({ epoch: 1 });
  return manifest;
}

// ---------------------------------------------------------------------------------------------

describe.each(['dir', 's3'] as const)('backup into a %s filestore', (kind) => {
  it('commits a set that the real age, zstd, pg_restore and tar read back whole', async () => {
    const store = await newStore(kind);
    const { file } = await configFor(store);
    const dbBefore = await dumpDatabaseState(DB);

    const r = await backup(store, file, ['--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { setId: string; artifacts: Manifest['artifacts']; durations: Record<string, number> };
    expect(out.setId).toMatch(SET_ID);
    expect(Object.keys(out.durations)).toEqual(expect.arrayContaining(['db', 'config', 'security', 'files', 'total']));

    const manifest = await verifySet(store, out.setId, { db: dbBefore, trees: site });
    expect(out.artifacts).toEqual(manifest.artifacts);

    const listed = await listJson(store, file);
    expect(listed).toEqual([expect.objectContaining({ setId: out.setId, committed: true, latest: true, objects: 6 })]);
    const text = await runPrimary(['list', '--config', file], { env: store.env });
    expect(text.stdout).toMatch(new RegExp(`^${out.setId} .*committed, latest$`, 'm'));

    if (kind === 'dir') {
      // A second set after the site changed: it holds the new state, and latest.json moves to it.
      await mutateDemoDatabase(DB);
      await mutateSiteTree(siteRoot);
      const dbAfter = await dumpDatabaseState(DB);
      expect(dbAfter).not.toEqual(dbBefore);
      const second = await backupOk(store, file);
      expect(second > out.setId, 'set ids sort by time').toBe(true);
      await verifySet(store, second, { db: dbAfter, trees: site });
      const both = await listJson(store, file);
      expect(both.map((s) => [s.setId, s.committed, s.latest])).toEqual([
        [out.setId, true, false],
        [second, true, true],
      ]);
    }
  });

  it('a backup killed (SIGKILL) while uploading commits nothing; the next backup removes the leftover', async () => {
    const store = await newStore(kind);
    const normal = await configFor(store);
    const slow = await configFor(store, { files: slowFiles, stateDir: normal.stateDir });
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
    const store = await newStore('dir');
    const { file } = await configFor(store);
    const first = await backupOk(store, file);
    const verifyKey = loadVerifyKeyFile(keys.verifyKeyFile);
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
    const file = join(work, 'bad-config.yml');
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
    const file = join(work, 'bad-config-2.yml');
    await writeFile(file, `site: "Bad Site!"\ndatabase: { url: "${dbUrl(DB)}" }\npaths: { config: /a, security: /b, files: /c }\nfilestore: { url: "file:///tmp/x" }\nkeys: { signingKeyFile: ./k }\n`);
    const r = await runPrimary(['backup', '--config', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^\s+- site: /m);
    expect(r.stderr).toMatch(/^\s+- keys\.recipientFile: /m);
  });

  it('a wrong database URL gives one clear line, a non-zero exit, and commits nothing', async () => {
    const store = await newStore('dir');
    const noDb = await configFor(store, { databaseUrl: dbUrl('tandem_no_such_database') });
    let r = await backup(store, noDb.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, /database postgres:\/\/postgres@127\.0\.0\.1:5432\/tandem_no_such_database: database "tandem_no_such_database" does not exist/);
    await expectStoreHasNoSets(store);

    const port = await closedPort();
    const noServer = await configFor(store, { databaseUrl: `postgres://postgres@127.0.0.1:${port}/${DB}` });
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
      const store = await newStore('dir');
      const { file } = await configFor(store, { databaseUrl: `postgres://${role}@127.0.0.1:5432/${DB}` });
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
    const store = await newStore('dir');
    const missing = join(work, 'no-such-files-dir');
    const { file } = await configFor(store, { files: missing });
    const r = await backup(store, file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`paths\\.files: ${missing}: no such directory`));
    await expectStoreHasNoSets(store);
  });

  it('an unreachable filestore gives one clear line and a non-zero exit', async () => {
    // S3 endpoint on a closed port.
    const port = await closedPort();
    const dead = await newStore('s3');
    const url = s3rverFilestoreUrl(`http://127.0.0.1:${port}`, { prefix: 'unreachable/' });
    const s3cfg = await configFor(dead, { filestoreUrl: url });
    const t0 = Date.now();
    let r = await backup(dead, s3cfg.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, /s3:\/\/tandem\/unreachable\/.*(ECONNREFUSED|connection refused)/i);
    expect(Date.now() - t0, 'gives up in reasonable time').toBeLessThan(60_000);
    expect(existsSync(join(s3cfg.stateDir, 'backup.lock')), 'lock released').toBe(false);

    // A bucket that does not exist on a reachable server.
    const noBucket = await configFor(dead, { filestoreUrl: s3rverFilestoreUrl(s3, { bucket: 'no-such-bucket', prefix: 'x/' }) });
    r = await backup(dead, noBucket.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, /s3:\/\/no-such-bucket\/.*bucket does not exist/);

    // A directory filestore below a regular file.
    const blocker = join(work, 'a-regular-file');
    await writeFile(blocker, 'not a directory');
    const dir = await newStore('dir');
    const dirCfg = await configFor(dir, { filestoreUrl: pathToFileURL(join(blocker, 'store')).href });
    r = await backup(dir, dirCfg.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`${blocker}/store/.*not a directory`));
  });

  it('a second backup of the same site is refused while one runs; SIGTERM aborts the first cleanly', async () => {
    const store = await newStore('dir');
    const slow = await configFor(store, { files: slowFiles });
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
    const store = await newStore('dir');
    const { file, stateDir } = await configFor(store);
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
    const store = await newStore('s3');
    const normal = await configFor(store);
    const slow = await configFor(store, { files: slowFiles, stateDir: normal.stateDir });
    const first = await backupOk(store, normal.file);
    const latestBefore = await store.read(latestKey);
    const run = startPrimary(['backup', '--config', slow.file], { env: store.env, timeoutMs: 90_000 });
    const setId = await waitFor(async () => {
      const k = (await store.keys(`${SITE}/sets/`)).find((x) => x.endsWith('/security.tar.zst.age') && !x.includes(first));
      return k?.split('/')[2];
    }, 'the security artifact');
    await s3.stop();
    let r: RunResult;
    try {
      r = await run.result;
    } finally {
      await s3.restart();
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
    const store = await newStore('dir');
    const { file } = await configFor(store, { encryption: 'none', recipientFile: null });
    const r = await backup(store, file, ['--json']);
    expect(r.code, r.stderr).toBe(0);
    const { setId } = JSON.parse(r.stdout) as { setId: string };
    expect(r.stderr).toMatch(/unencrypted/);
    expect(await store.keys(`${SITE}/sets/${setId}/`)).toEqual(
      ['config.tar.zst', 'db.dump.zst', 'dbmeta.json.zst', 'files.tar.zst', 'manifest.json', 'security.tar.zst'].map((f) => setKey(setId, f)),
    );
    const manifest = verifyManifest((await store.read(setKey(setId, 'manifest.json')))!, loadVerifyKeyFile(keys.verifyKeyFile), 'manifest');
    expect(manifest.encryption).toEqual({ scheme: 'none', recipients: [] });
    for (const a of manifest.artifacts) {
      expect(a.encryption).toBe('none');
      const stored = (await store.read(setKey(setId, a.file)))!;
      expect(sha256(stored)).toBe(a.storedSha256);
      expect(stored.subarray(0, 4)).toEqual(ZSTD_MAGIC);
    }
    const dump = await zstdDecompress((await store.read(setKey(setId, 'db.dump.zst')))!);
    const f = join(work, 'plain.pgdump');
    await writeFile(f, dump);
    expect((await mustRun('pg_restore', ['-l', f])).toString()).toMatch(/SEQUENCE SET shop invoice_no/);
  });

  it('without "encryption: none", a missing or unusable recipient is an error, never a plaintext upload', async () => {
    const store = await newStore('dir');
    // No recipientFile, no encryption key: encryption is on by default, so this is a config error.
    const noRecipient = await configFor(store, { recipientFile: null });
    let r = await backup(store, noRecipient.file);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/keys\.recipientFile: required while encryption is "age"/);
    await expectStoreHasNoSets(store);

    // Anything but the exact words is not "none".
    const sloppy = join(work, 'sloppy-encryption.yml');
    await writeFile(sloppy, (await readFile(noRecipient.file, 'utf8')) + 'encryption: false\n');
    r = await backup(store, sloppy);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^\s+- encryption: /m);
    await expectStoreHasNoSets(store);

    // encryption: age with a recipient file that does not exist.
    const missing = join(work, 'no-such.agepub');
    const gone = await configFor(store, { encryption: 'age', recipientFile: missing });
    r = await backup(store, gone.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`age recipient file ${missing}: no such file`));
    await expectStoreHasNoSets(store);

    // A recipient file holding something else (here: the identity, i.e. the wrong half of the pair).
    const wrong = await configFor(store, { recipientFile: keys.identityFile });
    r = await backup(store, wrong.file);
    expect(r.code).not.toBe(0);
    expectOneErrorLine(r, new RegExp(`${keys.identityFile}: .*an age recipient \\(age1\\.\\.\\.\\) was expected`));
    await expectStoreHasNoSets(store);
  });
});

describe('init', () => {
  it('writes the key files and the daemon tokens 0600, refuses to overwrite without --force, and the keys work with age', async () => {
    const dir = join(work, 'init-keys');
    // Even with a permissive umask the private keys end up 0600.
    const first = await runCommand('sh', ['-c', `umask 000 && exec "${process.execPath}" "${PRIMARY_MAIN}" init --keys-dir "${dir}"`]);
    expect(first.code, first.stderr).toBe(0);
    const out = first.stdout.toString('utf8');
    const names = ['backup.agekey', 'backup.agepub', 'signing.key', 'signing.pub', 'control.token', 'read.token', 'standby.token'];
    for (const n of names) {
      expect(statSync(join(dir, n)).mode & 0o777, n).toBe(0o600);
      expect(out).toContain(join(dir, n));
    }
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect(out).toMatch(/losing it means losing the backups/);
    expect(out).toMatch(/standby.*backup\.agekey/);

    const identity = await readFile(join(dir, 'backup.agekey'), 'utf8');
    const recipient = (await readFile(join(dir, 'backup.agepub'), 'utf8')).trim();
    expect(identity).toMatch(/^AGE-SECRET-KEY-1[0-9A-Z]+$/m);
    expect(recipient).toMatch(/^age1[0-9a-z]+$/);
    expect((await mustRun('age-keygen', ['-y', join(dir, 'backup.agekey')])).toString().trim()).toBe(recipient);
    expect(await readFile(join(dir, 'signing.key'), 'utf8')).toMatch(/-----BEGIN PRIVATE KEY-----/);
    expect(await readFile(join(dir, 'signing.pub'), 'utf8')).toMatch(/-----BEGIN PUBLIC KEY-----/);
    // The tokens load as the daemons load them (a 32-byte secret, no whitespace).
    for (const t of ['control.token', 'read.token', 'standby.token']) expect(loadToken({ tokenFile: join(dir, t) })).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const ct = await mustRun('age', ['-r', recipient], { input: 'secret' });
    expect((await mustRun('age', ['-d', '-i', join(dir, 'backup.agekey')], { input: ct })).toString()).toBe('secret');

    const before = await Promise.all(names.map((n) => readFile(join(dir, n))));
    const again = await runPrimary(['init', '--keys-dir', dir]);
    expect(again.code).toBe(2);
    expectOneErrorLine(again, /refusing to overwrite/);
    expect(await Promise.all(names.map((n) => readFile(join(dir, n))))).toEqual(before);

    // One existing key file is enough to refuse.
    await rm(join(dir, 'signing.pub'));
    await chmod(join(dir, 'backup.agekey'), 0o600);
    expect((await runPrimary(['init', '--keys-dir', dir])).code).toBe(2);
    expect(await readFile(join(dir, 'backup.agekey'))).toEqual(before[0]);

    const forced = await runPrimary(['init', '--keys-dir', dir, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    const after = await Promise.all(names.map((n) => readFile(join(dir, n))));
    for (let i = 0; i < names.length; i++) {
      expect(after[i]!.equals(before[i]!), `${names[i]} replaced`).toBe(false);
      expect(statSync(join(dir, names[i]!)).mode & 0o777).toBe(0o600);
    }
  });
});

describe('--help', () => {
  it.each([
    [['--help'], ['init', 'backup', 'list']],
    [['help'], ['init', 'backup', 'list']],
    [['init', '--help'], ['Usage: tandem-primary init', '--keys-dir', '--force']],
    [['backup', '--help'], ['Usage: tandem-primary backup', '--config', '--json']],
    [['list', '--help'], ['Usage: tandem-primary list', '--config', '--json']],
    [['backup', '-h'], ['Usage: tandem-primary backup']],
  ])('tandem-primary %j prints help and exits 0', async (args, wants) => {
    const r = await runPrimary(args);
    expect(r.code).toBe(0);
    for (const w of wants) expect(r.stdout).toContain(w);
    expect(r.stderr).toBe('');
  });

  it('usage errors exit 2 and point at --help', async () => {
    const none = await runPrimary([]);
    expect(none.code).toBe(2);
    expect(none.stdout).toContain('Usage: tandem-primary <command>');
    const unknown = await runPrimary(['bakcup']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "bakcup"/);
    const noConfig = await runPrimary(['backup']);
    expect(noConfig.code).toBe(2);
    expectOneErrorLine(noConfig, /--config is required/);
    const badFlag = await runPrimary(['backup', '--confg', 'x']);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toMatch(/confg/);
  });
});
