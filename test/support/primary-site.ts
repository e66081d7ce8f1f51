/**
 * Fixtures for the primary's CLI tests (`tandem-primary backup / list`, and the error lines of every
 * command): one primary site (a demo database, its trees, keys made by the real `init`, a 2 GiB
 * sparse files tree for interrupting uploads, an s3rver), filestores as the tests see them, configs
 * written per test, and `verifySet`, which reads a committed set back with the standard tools an
 * operator would use in an emergency: `age -d`, `zstd -d`, `pg_restore`, `tar`.
 *
 * Overview:
 * - Site:        createPrimarySite(), removePrimarySite()
 * - Filestores:  newStore() (a directory store read from disk, or an s3rver prefix), setKey, latestKey
 * - CLI runs:    configFor(), backup(), backupOk(), listJson()
 * - Assertions:  expectOneErrorLine(), expectStoreHasNoSets(), verifySet()
 *
 * Needs: `npm run build` first (the CLI runs from packages/primary-agent/dist/bundle), PostgreSQL on
 * 127.0.0.1:5432 (or TANDEM_TEST_PG), and age, zstd, tar, pg_restore, pg_dump on PATH.
 */
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { expect } from 'vitest';
import { parseDbMeta, isNotFound, loadVerifyKeyFile, openFilestore, verifyLatest, verifyManifest, writeFilestoreMarker, type Filestore, type Manifest } from '@tandem/shared';
import { startS3rver, s3rverEnv, s3rverFilestoreUrl, S3RVER_CREDENTIALS, type S3rverHandle } from './s3rver.js';
import {
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
  requireBuilt,
  requireCommands,
  runPrimary,
  sha256,
  snapshotTree,
  tmpDir,
  writePrimaryConfig,
  type DatabaseState,
  type KeyFiles,
  type RunResult,
  type SitePaths,
} from './site.js';

/** The site name in every config and filestore key (the trees of createSiteTree say `site: demo` too). */
export const SITE = 'demo';
/** The stored files of an encrypted set, besides its manifest (the files of createSiteTree are mostly random bytes, as media is: stored uncompressed). */
export const ARTIFACT_FILES = ['config.tar.zst.age', 'db.dump.zst.age', 'dbmeta.json.zst.age', 'files.tar.age', 'security.tar.zst.age'];
export const SET_ID = /^\d{8}T\d{6}Z-e1-\d{6}$/;
export const AGE_MAGIC = 'age-encryption.org/v1\n';
export const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

export const setKey = (id: string, file: string): string => `${SITE}/sets/${id}/${file}`;
export const latestKey = `${SITE}/latest.json`;

// ---------------------------------------------------------------------------------------------
// The site
// ---------------------------------------------------------------------------------------------

export interface PrimarySite {
  /** The temporary directory holding everything below (removed by removePrimarySite). */
  work: string;
  /** The demo database the configs back up. */
  db: string;
  keys: KeyFiles;
  /** The site's three trees, all under `root`. */
  paths: SitePaths;
  root: string;
  /** A files tree holding one 2 GiB sparse file: its upload takes seconds, long enough to interrupt. */
  slowFiles: string;
  s3: S3rverHandle;
  /** Databases restored by verifySet that a failed check may have left behind. */
  restoredDbs: string[];
  /** S3 filestores opened by newStore, closed by removePrimarySite. */
  openStores: Filestore[];
  /** A number not handed out before, for names of files, dirs and databases under this site. */
  next(): number;
}

/**
 * Create the site: checks the tools and the build first, so a missing one fails the suite (never
 * skips it). Whatever was made before a failure is removed again.
 */
export async function createPrimarySite(db: string): Promise<PrimarySite> {
  requireCommands(['age', 'age-keygen', 'zstd', 'tar', 'pg_restore', 'pg_dump']);
  requireBuilt();
  await ensurePostgres();
  const work = await tmpDir('tandem-backup-test-');
  try {
    const root = join(work, 'site');
    const slowFiles = join(work, 'slow-files');
    await mkdir(slowFiles);
    const fh = await open(join(slowFiles, 'sparse.bin'), 'w');
    await fh.truncate(2 * 1024 ** 3);
    await fh.close();
    const [, keys, paths, s3] = await Promise.all([
      createDemoDatabase(db),
      makeKeys(join(work, 'keys')),
      createSiteTree(root),
      startS3rver({ buckets: ['tandem'] }),
    ]);
    let counter = 0;
    return { work, db, keys, paths, root, slowFiles, s3, restoredDbs: [], openStores: [], next: () => ++counter };
  } catch (err) {
    await removePrimarySite({ work, db });
    throw err;
  }
}

/** Close its filestores, stop its s3rver, drop its databases and remove its directory. */
export async function removePrimarySite(p: (Pick<PrimarySite, 'work' | 'db'> & Partial<PrimarySite>) | undefined): Promise<void> {
  if (!p) return;
  for (const fs of p.openStores ?? []) await fs.close().catch(() => undefined);
  await p.s3?.destroy();
  for (const db of [p.db, ...(p.restoredDbs ?? [])]) await dropDatabase(db).catch(() => undefined);
  await rm(p.work, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// A filestore as the tests see it: raw reads that do not go through the agent's own code for the
// directory store (the files on disk are the truth), the shared S3 client for S3.
// ---------------------------------------------------------------------------------------------

export type Kind = 'dir' | 's3';

export interface Store {
  kind: Kind;
  url: string;
  /** Environment for CLI runs against this store (S3 credentials). */
  env: Record<string, string>;
  /** The object's bytes, or null when it does not exist. */
  read(key: string): Promise<Buffer | null>;
  /** Every object key under `prefix`; for the directory store every file on disk, temporaries included. */
  keys(prefix: string): Promise<string[]>;
}

/** A new, empty filestore of `kind` (its marker written): a directory under the site's work dir, or its own prefix on the s3rver. */
export async function newStore(p: PrimarySite, kind: Kind): Promise<Store> {
  const n = p.next();
  if (kind === 'dir') {
    const root = join(p.work, `store-${n}`);
    // Created the supported way: the marker (and so the directory) as `init --filestore` writes it.
    await writeFilestoreMarker(openFilestore(pathToFileURL(root).href));
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
  const url = s3rverFilestoreUrl(p.s3, { prefix: `run${process.pid}-${n}/` });
  const fs = openFilestore(url, { s3: { credentials: S3RVER_CREDENTIALS } });
  p.openStores.push(fs);
  await writeFilestoreMarker(fs);
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

// ---------------------------------------------------------------------------------------------
// Configs and CLI runs
// ---------------------------------------------------------------------------------------------

export interface ConfigOptions {
  files?: string;
  stateDir?: string;
  encryption?: 'age' | 'none';
  recipientFile?: string | null;
  databaseUrl?: string;
  filestoreUrl?: string;
  paths?: Partial<SitePaths>;
}

/** Write a config for `store`; each call gets its own file and (unless given) its own state dir. */
export async function configFor(p: PrimarySite, store: Store, o: ConfigOptions = {}): Promise<{ file: string; stateDir: string }> {
  const n = p.next();
  const stateDir = o.stateDir ?? join(p.work, `state-${n}`);
  const file = await writePrimaryConfig(join(p.work, `config-${n}.yml`), {
    site: SITE,
    databaseUrl: o.databaseUrl ?? dbUrl(p.db),
    paths: { ...p.paths, ...(o.files ? { files: o.files } : {}), ...o.paths },
    filestoreUrl: o.filestoreUrl ?? store.url,
    keys: {
      signingKeyFile: p.keys.signingKeyFile,
      ...(o.recipientFile === null ? {} : { recipientFile: o.recipientFile ?? p.keys.recipientFile }),
    },
    encryption: o.encryption,
    stateDir,
  });
  return { file, stateDir };
}

export async function backup(store: Store, config: string, extra: string[] = []): Promise<RunResult> {
  return runPrimary(['backup', '--config', config, ...extra], { env: store.env, timeoutMs: 90_000 });
}

/** Run a backup that must succeed; returns its set id. */
export async function backupOk(store: Store, config: string): Promise<string> {
  const r = await backup(store, config);
  expect(r.code, r.stderr).toBe(0);
  const id = r.stdout.trim();
  expect(id).toMatch(SET_ID);
  return id;
}

/** One entry of `tandem-primary list --json`. */
export interface Listed {
  setId: string;
  committed: boolean;
  latest: boolean;
  objects: number;
  bytes: number;
  createdAt: string | null;
}

export async function listJson(store: Store, config: string): Promise<Listed[]> {
  const r = await runPrimary(['list', '--config', config, '--json'], { env: store.env });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Listed[];
}

/** Exactly one "tandem-primary: error: ..." line (plus optional hint lines), and no other noise. */
export function expectOneErrorLine(r: RunResult, wording: RegExp): void {
  const lines = messageLines(r.stderr);
  const errors = lines.filter((l) => l.startsWith('tandem-primary: error: '));
  expect(errors, r.stderr).toHaveLength(1);
  expect(errors[0]).toMatch(wording);
  const other = lines.filter((l) => !l.startsWith('tandem-primary: error: ') && !l.startsWith('  hint: '));
  expect(other, 'stderr lines besides the error, its hint and JSON logs').toEqual([]);
}

/** Nothing committed and nothing left in a store that was empty before the run. */
export async function expectStoreHasNoSets(store: Store): Promise<void> {
  expect(await store.keys(`${SITE}/sets/`)).toEqual([]);
  expect(await store.read(latestKey)).toBeNull();
}

// ---------------------------------------------------------------------------------------------
// Reading a set back with the real tools
// ---------------------------------------------------------------------------------------------

const normalizeTarPath = (p: string) => p.replace(/^\.\//, '').replace(/^\.$/, '').replace(/\/$/, '');

/** Decrypt with the real `age` CLI and the identity file made by `init`. */
async function ageDecrypt(p: PrimarySite, ciphertext: Buffer): Promise<Buffer> {
  return mustRun('age', ['-d', '-i', p.keys.identityFile], { input: ciphertext });
}

/** Decompress with the real `zstd` CLI. */
export const zstdDecompress = (data: Buffer): Promise<Buffer> => mustRun('zstd', ['-d', '-q', '-c'], { input: data });

async function checkTar(p: PrimarySite, tarBytes: Buffer, tree: string, label: string): Promise<void> {
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
  const out = join(p.work, `untar-${p.next()}`);
  await mkdir(out);
  await mustRun('tar', ['-x', '-f', '-', '-C', out], { input: tarBytes });
  expect(await snapshotTree(out, { mtimes: true }), `${label}: extracted tree`).toEqual(expected);
  await rm(out, { recursive: true, force: true });
}

async function checkDump(p: PrimarySite, dump: Buffer, expected: DatabaseState): Promise<void> {
  const file = join(p.work, `dump-${p.next()}.pgdump`);
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
  const name = `${p.db}_r${p.next()}`;
  p.restoredDbs.push(name);
  await createEmptyDatabase(name);
  await mustRun('pg_restore', ['--no-owner', '--exit-on-error', '-j', '2', '-d', dbUrl(name), file]);
  expect(await dumpDatabaseState(name)).toEqual(expected);
  await dropDatabase(name);
  await rm(file);
}

/**
 * Everything a standby (or an operator with only the standard tools) will rely on: the set holds
 * exactly its artifacts and manifest, the signed manifest's sizes and SHA-256 match the stored
 * bytes, every artifact is age → zstd (but the files archive of random media) → pg_dump/tar, and the
 * contents equal the source.
 */
export async function verifySet(p: PrimarySite, store: Store, setId: string, expected: { db: DatabaseState; trees: SitePaths }): Promise<Manifest> {
  expect(await store.keys(`${SITE}/sets/${setId}/`)).toEqual([...ARTIFACT_FILES, 'manifest.json'].sort().map((f) => setKey(setId, f)));
  const manifestBytes = await store.read(setKey(setId, 'manifest.json'));
  expect(manifestBytes).not.toBeNull();
  const verifyKey = loadVerifyKeyFile(p.keys.verifyKeyFile);
  const manifest = verifyManifest(manifestBytes!, verifyKey, `${setId}/manifest.json`);
  expect(manifest).toMatchObject({ setId, site: SITE, epoch: 1, encryption: { scheme: 'age-x25519' } });
  expect(manifest.database.name).toBe(p.db);
  expect(manifest.artifacts.map((a) => a.name)).toEqual(['db', 'dbmeta', 'config', 'security', 'files']);

  const recipient = (await readFile(p.keys.recipientFile, 'utf8')).trim();
  expect(manifest.encryption.recipients).toEqual([recipient]);
  for (const a of manifest.artifacts) {
    const stored = await store.read(setKey(setId, a.file));
    expect(stored, a.file).not.toBeNull();
    expect(stored!.length, `${a.file}: storedSize`).toBe(a.storedSize);
    expect(sha256(stored!), `${a.file}: storedSha256`).toBe(a.storedSha256);
    expect(stored!.subarray(0, AGE_MAGIC.length).toString('latin1'), `${a.file}: an age v1 file`).toBe(AGE_MAGIC);
    // Media does not compress: the files archive of createSiteTree is stored uncompressed, the rest as zstd.
    expect(a.compression, `${a.file}: compression`).toBe(a.name === 'files' ? 'none' : 'zstd');
    const decrypted = await ageDecrypt(p, stored!);
    const plain = a.compression === 'zstd' ? await zstdDecompress(decrypted) : decrypted;
    expect(plain.length, `${a.file}: plainSize`).toBe(a.plainSize);
    if (a.name === 'db') {
      expect(plain.subarray(0, 5).toString('latin1'), 'pg_dump custom format').toBe('PGDMP');
      await checkDump(p, plain, expected.db);
    } else if (a.name === 'dbmeta') {
      // The database's own description: owner, settings, and the roles it needs (at least its owner).
      const meta = parseDbMeta(plain, a.file);
      expect(meta.database.owner).toBeTruthy();
      expect(meta.roles.map((r) => r.name)).toContain(meta.database.owner);
    } else {
      await checkTar(p, plain, expected.trees[a.name], a.name);
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
