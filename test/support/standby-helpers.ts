/**
 * Fixtures for the standby scenario tests: a primary site with a committed set, a standby config
 * beside it, the real `tandem-standby` CLI, snapshots of "everything live" on the standby, and a
 * forger that publishes hand-made (damaged, malicious, re-signed) sets with the site's real keys.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  artifactFileName,
  chunksOf,
  createAgeDecryptStream,
  createAgeEncryptStream,
  layout,
  loadIdentities,
  loadRecipients,
  loadSigningKeyFile,
  makeSetId,
  openFilestore,
  parseSetId,
  signLatest,
  signManifest,
  withPg,
  zstdCompress,
  zstdDecompress,
  type ArtifactName,
  type Filestore,
  type Manifest,
} from '@tandem/shared';
import { stringify as toYaml } from 'yaml';
import { S3RVER_CREDENTIALS } from './s3rver.js';
import {
  PG_BASE_URL,
  STANDBY_MAIN,
  createDemoDatabase,
  createSiteTree,
  dbUrl,
  dropDatabase,
  dumpDatabaseState,
  initFilestore,
  makeKeys,
  runAgent,
  runPrimary,
  snapshotTree,
  type DatabaseState,
  type KeyFiles,
  type RunOptions,
  type RunResult,
  type SitePaths,
  type TreeEntry,
  writePrimaryConfig,
} from './site.js';

export { STANDBY_MAIN } from './site.js';

/** Run `tandem-standby ...args` (the built CLI); never rejects on a non-zero exit or a signal. */
export function runStandby(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return runAgent(STANDBY_MAIN, args, opts);
}

/** A readable summary of a CLI run, for assertion messages. */
export const show = (r: RunResult): string => `exit ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

export const uid = (): string => randomBytes(4).toString('hex');

export interface StandbySite {
  site: string;
  root: string;
  keys: KeyFiles;
  filestoreUrl: string;
  /** Environment for CLI children (s3 credentials). */
  env: NodeJS.ProcessEnv;
  primary: { db: string; paths: SitePaths; configFile: string; stateDir: string };
  standby: { db: string; paths: SitePaths & { sentinel: string }; configFile: string; stateDir: string; restartLog: string };
  /** Opens the filestore as the agents see it (close it after use). */
  openStore(): Filestore;
  /** Both agents have keys.filesKeyFile: the files are content objects and a files index. */
  filesObjects: boolean;
}

export interface StandbyConfigInput {
  identityFile?: string;
  verifyKeyFile?: string;
  restoreJobs?: number;
  stateDir?: string;
  preserve?: string[];
  encryption?: 'age' | 'none';
  restartCommand?: string | null;
  /** database.create (default true: the fixtures' standby database does not exist before its first apply). */
  createDatabase?: boolean;
  /** keys.filesKeyFile (default: the site's, when its files are content objects; null: none). */
  filesKeyFile?: string | null;
}

/**
 * A primary site (demo database, trees, keys, config) and a standby config for it. The standby's
 * config dir starts with its own config.d/db.yml (preserved) and nothing else; its database does
 * not exist yet. Nothing is backed up yet.
 */
export async function createStandbySite(root: string, opts: { filestoreUrl?: string; env?: NodeJS.ProcessEnv; restoreJobs?: number; filesObjects?: boolean } = {}): Promise<StandbySite> {
  const id = uid();
  const site = `s${id}`;
  const keys = await makeKeys(join(root, 'keys'));
  const primaryDb = `tandem_sb_p_${id}`;
  const standbyDb = `tandem_sb_s_${id}`;
  await createDemoDatabase(primaryDb);
  const primaryPaths = await createSiteTree(join(root, 'primary'));
  const filestoreUrl = opts.filestoreUrl ?? `file://${join(root, 'store')}`;
  const sroot = join(root, 'standby');
  const standbyPaths = {
    config: join(sroot, 'priv'),
    security: join(sroot, 'security'),
    files: join(sroot, 'files'),
    sentinel: join(sroot, 'priv', 'BACKUP'),
  };
  await mkdir(join(standbyPaths.config, 'config.d'), { recursive: true });
  await writeFile(join(standbyPaths.config, 'config.d', 'db.yml'), 'dbhost: standby-db.local\ndbdatabase: standby\n');
  const s: StandbySite = {
    site,
    root,
    keys,
    filestoreUrl,
    env: opts.env ?? {},
    primary: { db: primaryDb, paths: primaryPaths, configFile: join(root, 'primary.yml'), stateDir: join(root, 'primary-state') },
    standby: {
      db: standbyDb,
      paths: standbyPaths,
      configFile: join(root, 'standby.yml'),
      stateDir: join(root, 'standby-state'),
      restartLog: join(root, 'restart.log'),
    },
    openStore: () => openFilestore(filestoreUrl, filestoreUrl.startsWith('s3:') ? { s3: { credentials: S3RVER_CREDENTIALS } } : {}),
    filesObjects: opts.filesObjects === true,
  };
  await writeSitePrimaryConfig(s, s.primary.configFile);
  await writeStandbyConfig(s, s.standby.configFile, { restoreJobs: opts.restoreJobs });
  await initFilestore(s.primary.configFile, s.env);
  return s;
}

/**
 * Writes a primary config for the site's primary: its database, trees, filestore, keys and state
 * dir, plus `extra` top-level keys (the daemon's schedule, server, standbys ...) as given.
 */
export function writeSitePrimaryConfig(s: StandbySite, file: string, extra?: Record<string, unknown>): Promise<string> {
  return writePrimaryConfig(file, {
    site: s.site,
    databaseUrl: dbUrl(s.primary.db),
    paths: s.primary.paths,
    filestoreUrl: s.filestoreUrl,
    keys: s.keys,
    stateDir: s.primary.stateDir,
    ...(s.filesObjects ? { filesKeyFile: s.keys.filesKeyFile } : {}),
    extra,
  });
}

/** Writes a standby config for the site (defaults: the site's keys, preserve config.d/db.yml, a restart command that logs). */
export async function writeStandbyConfig(s: StandbySite, file: string, c: StandbyConfigInput = {}): Promise<string> {
  const doc: Record<string, unknown> = {
    site: s.site,
    database: {
      url: dbUrl(s.standby.db),
      ...(c.restoreJobs === undefined ? {} : { restoreJobs: c.restoreJobs }),
      ...(c.createDatabase === false ? {} : { create: true }),
    },
    paths: { config: s.standby.paths.config, security: s.standby.paths.security, files: s.standby.paths.files },
    config: { preserve: c.preserve ?? ['config.d/db.yml'] },
    filestore: { url: s.filestoreUrl },
    ...(c.encryption === undefined ? {} : { encryption: c.encryption }),
    keys: {
      identityFile: c.identityFile ?? s.keys.identityFile,
      verifyKeyFile: c.verifyKeyFile ?? s.keys.verifyKeyFile,
      ...(c.filesKeyFile === null ? {} : c.filesKeyFile !== undefined ? { filesKeyFile: c.filesKeyFile } : s.filesObjects ? { filesKeyFile: s.keys.filesKeyFile } : {}),
    },
    stateDir: c.stateDir ?? s.standby.stateDir,
  };
  if (c.restartCommand !== null) {
    doc.restartCommand = c.restartCommand ?? `echo "$TANDEM_MODE $TANDEM_SET_ID" >> '${s.standby.restartLog}'`;
  }
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, toYaml(doc));
  return file;
}

/** `tandem-primary backup --config ...`; returns the new set id. */
export async function backup(s: StandbySite): Promise<string> {
  const r = await runPrimary(['backup', '--config', s.primary.configFile], { env: s.env });
  if (r.code !== 0) throw new Error(`backup failed: ${r.stderr}`);
  return r.stdout.trim();
}

export const apply = (s: StandbySite, args: string[] = [], env: NodeJS.ProcessEnv = {}, configFile = s.standby.configFile): Promise<RunResult> =>
  runStandby(['apply', '--config', configFile, ...args], { env: { ...s.env, ...env } });

/** The lines the restart command logged ("backup <set id>", "primary <set id>"). */
export async function restartLog(s: StandbySite): Promise<string[]> {
  try {
    return (await readFile(s.standby.restartLog, 'utf8')).split('\n').filter((l) => l !== '');
  } catch {
    return [];
  }
}

export async function dropSiteDatabases(s: StandbySite): Promise<void> {
  for (const db of [s.primary.db, s.standby.db, `${s.standby.db}__tandem_new`, `${s.standby.db}__tandem_old`]) {
    await dropDatabase(db).catch(() => undefined);
  }
}

/** A suite's teardown: drops the site's databases and removes its work dir (either may be unset if the set-up failed early). */
export async function removeStandbySite(s: StandbySite | undefined, root: string | undefined): Promise<void> {
  if (s) await dropSiteDatabases(s);
  if (root) await rm(root, { recursive: true, force: true });
}

export async function databaseExists(name: string): Promise<boolean> {
  return withPg({ url: `${PG_BASE_URL}/postgres` }, async (c) => ((await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount ?? 0) > 0);
}

// ---------------------------------------------------------------------------------------------
// "Nothing live changed"
// ---------------------------------------------------------------------------------------------

export interface LiveState {
  db: DatabaseState | null;
  config: TreeEntry[];
  security: TreeEntry[];
  files: TreeEntry[];
  applied: string | null;
  /** Entries beside the live dirs (…tandem-new/-old) and in the state dir, which must stay as they were. */
  siblings: string[];
  state: string[];
}

async function listOrEmpty(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** Everything live on the standby, plus what lies beside it: compare two of these with toEqual. */
export async function liveState(s: StandbySite): Promise<LiveState> {
  const snap = async (dir: string) => snapshotTree(dir).catch(() => []);
  let applied: string | null = null;
  try {
    applied = await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8');
  } catch {
    /* none yet */
  }
  return {
    db: (await databaseExists(s.standby.db)) ? await dumpDatabaseState(s.standby.db) : null,
    config: await snap(s.standby.paths.config),
    security: await snap(s.standby.paths.security),
    files: await snap(s.standby.paths.files),
    applied,
    siblings: await listOrEmpty(join(s.root, 'standby')),
    state: (await listOrEmpty(s.standby.stateDir)).filter((n) => n !== 'staging'),
  };
}

/** No staging, no journal, no next/old database left behind by a refused apply. */
export async function expectNoLeftovers(s: StandbySite): Promise<string[]> {
  const problems: string[] = [];
  const staging = await listOrEmpty(join(s.standby.stateDir, 'staging'));
  if (staging.length > 0) problems.push(`staging holds ${staging.join(', ')}`);
  if ((await listOrEmpty(s.standby.stateDir)).includes('journal.json')) problems.push('journal.json left');
  for (const suffix of ['__tandem_new', '__tandem_old']) {
    if (await databaseExists(`${s.standby.db}${suffix}`)) problems.push(`database ${s.standby.db}${suffix} left`);
  }
  for (const n of await listOrEmpty(join(s.root, 'standby'))) if (n.includes('.tandem-')) problems.push(`${n} left`);
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Forged sets
// ---------------------------------------------------------------------------------------------

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** The plaintext (decrypted, decompressed) of a stored artifact. */
export async function readPlain(s: StandbySite, setId: string, name: ArtifactName): Promise<Buffer> {
  const fs = s.openStore();
  try {
    const m = JSON.parse((await fs.getBuffer(layout.manifest(s.site, setId))).body.toString('utf8')) as Manifest;
    const entry = m.artifacts.find((a) => a.name === name)!;
    const { body } = await fs.get(layout.artifact(s.site, setId, entry.file));
    const decrypted = entry.encryption === 'age' ? body.pipe(createAgeDecryptStream(loadIdentities(s.keys.identityFile))) : body;
    return await collect(entry.compression === 'zstd' ? decrypted.pipe(zstdDecompress()) : decrypted);
  } finally {
    await fs.close();
  }
}

/** zstd + age (to the site's recipient), as the primary stores an artifact. */
export async function sealArtifact(s: StandbySite, plain: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(
    Readable.from([plain]),
    zstdCompress(),
    createAgeEncryptStream(loadRecipients(s.keys.recipientFile)),
    async function* (src: AsyncIterable<Buffer>) {
      for await (const c of src) chunks.push(c);
    },
  );
  return Buffer.concat(chunks);
}

export interface ForgeOptions {
  /** Replace an artifact's plaintext (re-sealed, and the manifest says its true hash). */
  plain?: Partial<Record<ArtifactName, Buffer>>;
  /** Change stored bytes AFTER the manifest was computed (corruption in transit or at rest). */
  damage?: Partial<Record<ArtifactName, (stored: Buffer) => Buffer>>;
  /** Do not upload this artifact at all. */
  omit?: ArtifactName[];
  /** Edit the signed manifest bytes after signing. */
  editManifest?: (raw: Buffer) => Buffer;
  /** Sign the manifest with this key file instead of the site's (latest.json stays properly signed). */
  manifestKeyFile?: string;
  /** Manifest encryption "none": store artifacts unencrypted. */
  unencrypted?: boolean;
  /** Do not move latest.json. */
  keepLatest?: boolean;
  /** Sign this plainSize instead of the true one (a faulty or hostile primary). */
  claimPlainSize?: Partial<Record<ArtifactName, number>>;
  /** No chunk digests in the manifest, as a primary made sets before they existed: every artifact is verified whole before use. */
  wholeOnly?: boolean;
}

export interface ForgedSetStart {
  /** The open filestore (the caller closes it). */
  fs: Filestore;
  /** The base set's manifest, signature removed. */
  base: Manifest;
  setId: string;
  seq: number;
  created: Date;
}

/**
 * The start of a forged set: opens the store, reads the manifest of `baseSetId` (signature removed)
 * and names the next set (sequence number after the highest stored, created one second from now).
 * The caller closes `fs`; it is closed here only if this fails.
 */
export async function nextForgedSet(s: StandbySite, baseSetId: string): Promise<ForgedSetStart> {
  const fs = s.openStore();
  try {
    const base = JSON.parse((await fs.getBuffer(layout.manifest(s.site, baseSetId))).body.toString('utf8')) as Manifest & { signature?: unknown };
    delete base.signature;
    let maxSeq = 0;
    for (const obj of await fs.list(layout.sets(s.site))) {
      const p = parseSetId(obj.key.slice(layout.sets(s.site).length).split('/')[0] ?? '');
      if (p && p.seq > maxSeq) maxSeq = p.seq;
    }
    const created = new Date(Date.now() + 1000);
    const seq = maxSeq + 1;
    return { fs, base, setId: makeSetId(created, base.epoch, seq), seq, created };
  } catch (e) {
    await fs.close();
    throw e;
  }
}

/**
 * Publish a new set (next sequence number) made from the stored artifacts of `baseSetId`, changed as
 * asked, with a manifest and latest.json signed like the primary does. Returns the new set id.
 */
export async function forgeSet(s: StandbySite, baseSetId: string, o: ForgeOptions = {}): Promise<string> {
  const { fs, base, setId, seq, created } = await nextForgedSet(s, baseSetId);
  try {
    const artifacts = [];
    for (const a of base.artifacts) {
      let stored = await collect((await fs.get(layout.artifact(s.site, baseSetId, a.file))).body);
      let entry = { ...a };
      const plain = o.plain?.[a.name];
      if (o.unencrypted) {
        stored = await collect(Readable.from([stored]).pipe(createAgeDecryptStream(loadIdentities(s.keys.identityFile))));
        entry = { ...entry, encryption: 'none', file: artifactFileName(a.name, false, a.compression === 'zstd') };
      }
      if (plain !== undefined) {
        stored = o.unencrypted ? await collect(Readable.from([plain]).pipe(zstdCompress())) : await sealArtifact(s, plain);
        // Sealed as zstd whatever the base set stored: the entry says so.
        entry = { ...entry, plainSize: plain.length, compression: 'zstd', file: artifactFileName(a.name, entry.encryption === 'age', true) };
      }
      // Chunk digests as a primary makes them, or none (a set made before they existed).
      const { chunks: _old, ...whole } = entry;
      const chunks = o.wholeOnly ? undefined : chunksOf(stored);
      entry = { ...whole, storedSize: stored.length, storedSha256: sha256(stored), ...(chunks ? { chunks } : {}) };
      const claimed = o.claimPlainSize?.[a.name];
      if (claimed !== undefined) entry = { ...entry, plainSize: claimed };
      const damaged = o.damage?.[a.name]?.(stored) ?? stored;
      if (!o.omit?.includes(a.name)) await fs.putBuffer(layout.artifact(s.site, setId, entry.file), damaged);
      artifacts.push(entry);
    }
    const manifest: Manifest = {
      ...base,
      setId,
      seq,
      createdAt: created.toISOString(),
      completedAt: created.toISOString(),
      artifacts,
      encryption: o.unencrypted ? { scheme: 'none', recipients: [] } : base.encryption,
    };
    const key = loadSigningKeyFile(s.keys.signingKeyFile);
    let raw = signManifest(manifest, o.manifestKeyFile ? loadSigningKeyFile(o.manifestKeyFile) : key);
    const manifestSha = sha256(raw);
    if (o.editManifest) raw = o.editManifest(raw);
    await fs.putBuffer(layout.manifest(s.site, setId), raw);
    if (!o.keepLatest) {
      await fs.putBuffer(
        layout.latest(s.site),
        signLatest(
          {
            format: 'tandem-latest',
            version: 1,
            site: s.site,
            setId,
            epoch: manifest.epoch,
            seq,
            createdAt: manifest.createdAt,
            committedAt: new Date().toISOString(),
            manifestSha256: manifestSha,
          },
          key,
        ),
      );
    }
    return setId;
  } finally {
    await fs.close();
  }
}

/** Points latest.json back at an existing set (signed with the site's key). */
export async function pointLatestAt(s: StandbySite, setId: string): Promise<void> {
  const fs = s.openStore();
  try {
    const raw = (await fs.getBuffer(layout.manifest(s.site, setId))).body;
    const m = JSON.parse(raw.toString('utf8')) as Manifest;
    await fs.putBuffer(
      layout.latest(s.site),
      signLatest(
        { format: 'tandem-latest', version: 1, site: s.site, setId, epoch: m.epoch, seq: m.seq, createdAt: m.createdAt, committedAt: new Date().toISOString(), manifestSha256: sha256(raw) },
        loadSigningKeyFile(s.keys.signingKeyFile),
      ),
    );
  } finally {
    await fs.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Hand-made tar archives (the kind no honest tar writes)
// ---------------------------------------------------------------------------------------------

export interface RawTarEntry {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'hardlink' | 'chardev' | 'fifo';
  data?: Buffer | string;
  linkname?: string;
  mode?: number;
}

const TYPEFLAG: Record<RawTarEntry['type'], string> = { file: '0', hardlink: '1', symlink: '2', chardev: '3', dir: '5', fifo: '6' };

function octal(n: number, width: number): string {
  return `${n.toString(8).padStart(width - 1, '0')}\0`;
}

/** A ustar archive built byte by byte, so entries can be anything (absolute, "..", devices ...). */
export function rawTar(entries: RawTarEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const data = e.type === 'file' ? Buffer.from(e.data ?? '') : Buffer.alloc(0);
    const h = Buffer.alloc(512);
    h.write(e.name, 0, 100, 'utf8');
    h.write(octal(e.mode ?? (e.type === 'dir' ? 0o755 : 0o644), 8), 100, 'latin1');
    h.write(octal(0, 8), 108, 'latin1');
    h.write(octal(0, 8), 116, 'latin1');
    h.write(octal(data.length, 12), 124, 'latin1');
    h.write(octal(1_700_000_000, 12), 136, 'latin1');
    h.write('        ', 148, 'latin1');
    h.write(TYPEFLAG[e.type], 156, 'latin1');
    if (e.linkname) h.write(e.linkname, 157, 100, 'utf8');
    h.write('ustar\0', 257, 'latin1');
    h.write('00', 263, 'latin1');
    if (e.type === 'chardev') {
      h.write(octal(1, 8), 329, 'latin1');
      h.write(octal(3, 8), 337, 'latin1');
    }
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    blocks.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

/** The apply's "files staged" log line (JSON logs: stderr is not a terminal): what it wrote, kept, copied and fetched. */
export function stagedLine(stderr: string): {
  changed: number;
  removed: number;
  bytesWritten: number;
  bytesReused: number;
  bytesCopied: number;
  copiedDirect: number;
  bytesDirect: number;
  packs: number;
  /** Packs read and opened on the reading thread, their plaintext kept in its buffers. */
  packsOpenedInPlace: number;
  pagesCached: number;
  pagesSkipped: number;
  /** Files the switch patches in place, and the bytes staged for them (only those not in place). */
  filesPatched: number;
  bytesPatched: number;
} {
  for (const l of stderr.split('\n')) {
    if (!l.startsWith('{')) continue;
    const o = JSON.parse(l) as { msg?: string };
    if (o.msg === 'files staged: only what changed') return o as never;
  }
  throw new Error(`no "files staged" line in the apply's log:\n${stderr}`);
}
