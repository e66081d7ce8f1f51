import { chmod, mkdir, open, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import {
  ARTIFACT_NAMES,
  MAX_DB_META_BYTES,
  OPEN_NEW_FILE,
  OPTIONAL_ARTIFACTS,
  TandemError,
  extractTarSafe,
  formatBytes,
  freeBytes,
  type ArtifactEntry,
  type ArtifactName,
  type FilesKey,
  type Filestore,
  type Logger,
  type Manifest,
  type ProgressMeter,
  type ProgressSink,
} from '@tandem/shared';
import { artifactLabel, decodeStored, fetchVerified, fromVerifiedFile, streamsWhenStaged, verifiedStream, type StoredInput, type VerifiedArtifact } from './artifact-stream.js';
import { faultPoint } from './fault.js';
import { stageFilesObjects, type StagedFiles } from './files-objects.js';
import type { Targets } from './targets.js';

/**
 * Staging: every artifact is checked against the signed manifest and decrypted and decompressed
 * into a place beside the live site, before anything live changes (ordering rule 3). No byte of an
 * artifact reaches age, zstd, the tar parser or pg_restore before the SHA-256 that covers it (of its
 * 8 MiB piece, or of the whole stored object) matched the signed one (artifact-stream.ts).
 *
 * - db: `pg_restore -j` needs a seekable file, so with restoreJobs > 1 the verified stored bytes are
 *   decrypted and decompressed into <staging>/db.dump (0600 in a 0700 dir; zstd writes it, limited
 *   to the signed plain size). With one job the verified stored (encrypted) copy is kept instead
 *   and decrypted again on the way into pg_restore: no plaintext dump on disk; the staging pass
 *   still decrypts and decompresses it once, to refuse a bad dump before anything live.
 * - dbmeta: decoded into memory (MAX_DB_META_BYTES at most).
 * - config/security/files: extracted into `<live>.tandem-new` (security: files 0600, dirs 0700).
 *   The files archive streams from the filestore into its extraction when its manifest entry lists
 *   chunk digests: no stored copy of it is written (a site's media can be most of its size).
 */
export type StagedDb =
  | { form: 'plain'; file: string }
  | { form: 'stored'; file: string; entry: ArtifactEntry };

export interface StagedSet {
  /** A dump (dump mode); in WAL mode the base backup is unpacked into `cluster` instead. */
  db: StagedDb;
  /** WAL mode: the base backup unpacked into the data directory's "next" name (cluster.ts). */
  cluster?: string;
  /** The dbmeta artifact's plain bytes (small JSON, bounded by its signed plainSize), if the set has one. */
  dbMeta?: Buffer;
  /** Seconds per artifact. */
  durations: Record<ArtifactName, number>;
  /** The files are content objects: staged as changed files and a plan (files-objects.ts), switched in place. */
  filesObjects?: StagedFiles;
}

export interface StageOptions {
  filestore: Filestore;
  manifest: Manifest;
  identities: string[];
  targets: Targets;
  stagingDir: string;
  restoreJobs: number;
  /** keys.filesKeyFile: needed for a set whose files are content objects. */
  filesKey?: FilesKey | null;
  /** The standby's state dir (its record of the files it wrote). */
  stateDir?: string;
  /** Per archive: entries of any type, and bytes of file data (default: no byte bound beyond free space). */
  limits?: { maxEntries: number; maxBytes?: number };
  logger: Logger;
  signal?: AbortSignal;
  /** Told each artifact's stored bytes as they download (a terminal's progress line). */
  progress?: ProgressSink;
  /** WAL mode, the cluster seeded already and replaying: the base backup is not needed. */
  skipDb?: boolean;
  /** Files as content objects: look at every live file, none skipped with a page the last apply had (apply --force). */
  checkAllFiles?: boolean;
}

export type ArtifactEntries = Record<Exclude<ArtifactName, 'dbmeta'>, ArtifactEntry> & { dbmeta?: ArtifactEntry };

export function artifactEntries(manifest: Manifest): ArtifactEntries {
  const out: Partial<Record<ArtifactName, ArtifactEntry>> = {};
  for (const e of manifest.artifacts) {
    if (out[e.name]) throw new TandemError('integrity', 'MANIFEST_INVALID', `set ${manifest.setId}: manifest lists the ${e.name} artifact twice`);
    out[e.name] = e;
  }
  const missing = ARTIFACT_NAMES.filter((n) => out[n] === undefined && !OPTIONAL_ARTIFACTS.includes(n));
  if (missing.length > 0) {
    throw new TandemError('integrity', 'MANIFEST_INVALID', `set ${manifest.setId}: manifest has no ${missing.join(', ')} artifact`);
  }
  return out as ArtifactEntries;
}

const discard = async (plain: Readable): Promise<void> => {
  for await (const _ of plain);
};

/**
 * The plain dump from the verified stored copy: zstd writes it straight into the staged file (0600,
 * created here, never an existing file; 750 MB of dump crossing the event loop cost ~2 s of an apply
 * on this machine kind), under a file size limit of the signed plain size.
 */
async function decodeDumpFile(input: StoredInput, identities: string[], file: string, signal?: AbortSignal) {
  const fh = await open(file, OPEN_NEW_FILE, 0o600);
  try {
    return await decodeStored(input, identities, discard, { plainFd: fh.fd, signal });
  } finally {
    await fh.close();
  }
}

/**
 * Refuses before a download when the staging file system cannot hold what it puts there: the
 * plain dump (with more than one restore job), the stored copy when the artifact is not streamed,
 * and what the dump being decompressed meanwhile still has to write (`reserved`).
 */
async function checkStagingSpace(
  manifest: Manifest,
  entry: ArtifactEntry,
  stagingDir: string,
  o: { withPlain: boolean; storedCopy: boolean; reserved: number },
): Promise<void> {
  const free = await freeBytes(stagingDir);
  const need = (o.storedCopy ? entry.storedSize : 0) + (o.withPlain ? entry.plainSize : 0) + o.reserved;
  if (free === undefined || free >= need) return;
  const detail = o.withPlain
    ? `the dump needs ${formatBytes(entry.plainSize)}, ${formatBytes(free)} are free${o.storedCopy ? `, and its stored copy needs ${formatBytes(entry.storedSize)} more until it is decompressed` : ''}`
    : `its stored copy needs ${formatBytes(entry.storedSize)}, ${formatBytes(free)} are free${o.reserved > 0 ? `, and ${formatBytes(o.reserved)} of them are the rest of the dump being decompressed` : ''}`;
  throw diskFullError(manifest, entry, stagingDir, { detail });
}

/**
 * The dump and the files archive stream: with chunk digests in its manifest entry, an artifact's
 * download overlaps its own decoding (artifact-stream.ts), and the files archive is unpacked as it
 * arrives, with no stored copy in the staging dir (one write and read less of every byte of it,
 * and room for it not needed). The small documents (dbmeta, config, security), and an artifact
 * without chunk digests (sets of an older primary) or the dump kept stored for a one-job restore,
 * are downloaded and verified whole ahead of their use, one after another in set order, from the
 * end of the dump's download on, while zstd decompresses the dump. Each is used only once
 * verified, in set order. The first failure stops everything, and nothing is left running when
 * this returns or throws.
 * Seconds per artifact are wall time from the end of the previous one, so they add up to the
 * staging's wall time; the download seconds of each downloaded whole are logged.
 */
export async function stageSet(opts: StageOptions): Promise<StagedSet> {
  const { manifest, targets, stagingDir, logger, identities } = opts;
  const entries = artifactEntries(manifest);
  await mkdir(dirname(stagingDir), { recursive: true, mode: 0o700 });
  await rm(stagingDir, { recursive: true, force: true });
  await mkdir(stagingDir, { mode: 0o700 });
  await chmod(stagingDir, 0o700);

  const names = ARTIFACT_NAMES.filter((n) => entries[n] !== undefined && !(n === 'db' && opts.skipDb === true)); // an optional one an earlier tandem's set lacks
  const base = entries.db.kind === 'postgres-base';
  if (base && targets.cluster === undefined) {
    throw new TandemError('config', 'WAL_MODE_OFF', `set ${manifest.setId} carries a base backup (WAL mode), and this standby is in dump mode; nothing was downloaded or changed`, {
      hint: 'set database.mode: wal with database.dataDir, startCommand and stopCommand on this standby',
    });
  }
  const streamed = (name: ArtifactName) => streamsWhenStaged(entries[name]!, opts.restoreJobs);
  const ac = new AbortController();
  const onAbort = () => ac.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const signal = ac.signal;
  let failure: unknown;
  const fail = (err: unknown): never => {
    failure ??= err;
    ac.abort(err);
    throw err;
  };
  // The dump being decompressed while later artifacts download: the bytes it still has to write.
  let dumpInProgress: { file: string; size: number } | undefined;
  const reserved = async () => (dumpInProgress ? dumpInProgress.size - ((await stat(dumpInProgress.file).catch(() => undefined))?.size ?? 0) : 0);
  const checkOwn = (name: ArtifactName, entry: ArtifactEntry) => {
    if (name === 'dbmeta' && entry.plainSize > MAX_DB_META_BYTES) {
      const label = artifactLabel(manifest, entry);
      throw new TandemError('integrity', 'ARTIFACT_PLAIN_SIZE', `${label}: says it is ${entry.plainSize} bytes, more than the ${MAX_DB_META_BYTES} a database description can be`);
    }
  };

  // What is fetched whole starts downloading once the streamed dump's own download has ended (zstd
  // still decompressing it): before that it would compete with it for the node thread and the disk.
  let dumpDownloaded!: () => void;
  const afterDumpDownload = new Promise<void>((resolve) => (dumpDownloaded = resolve));
  if (!names.includes('db') || !streamed('db')) dumpDownloaded();

  const fetched = new Map<ArtifactName, Promise<VerifiedArtifact>>();
  let previous: Promise<unknown> = afterDumpDownload;
  for (const name of names.filter((n) => !streamed(n))) {
    const entry = entries[name]!;
    const download = previous.then(async () => {
      signal.throwIfAborted();
      const progress = opts.progress?.begin(name, entry.storedSize);
      try {
        checkOwn(name, entry);
        await checkStagingSpace(manifest, entry, stagingDir, { withPlain: name === 'db' && opts.restoreJobs > 1, storedCopy: true, reserved: await reserved() });
        return await fetchVerified({ filestore: opts.filestore, manifest, entry, identities, signal, progress }, stagingDir);
      } catch (err) {
        return fail(diskFull(err, manifest, entry, stagingDir) ?? err);
      } finally {
        progress?.end();
      }
    });
    download.catch(() => undefined); // awaited below; a failure is also recorded by fail()
    fetched.set(name, download);
    previous = download;
  }

  const durations = {} as Record<ArtifactName, number>;
  let db: StagedDb | undefined;
  let dbMeta: Buffer | undefined;
  let filesObjects: StagedFiles | undefined;
  let cluster: string | undefined;
  let t = performance.now();
  try {
    for (const name of names) {
      const entry = entries[name]!;
      let download: number | undefined;
      let progress: ProgressMeter | undefined;
      try {
        let input: StoredInput;
        let file: string | undefined;
        const pending = fetched.get(name);
        if (pending) {
          const v = await pending;
          download = v.seconds;
          file = v.file;
          input = fromVerifiedFile(v);
        } else {
          signal.throwIfAborted();
          checkOwn(name, entry);
          // A streamed archive puts nothing into the staging dir (its extraction is bounded by the free space where it goes).
          if (name === 'db') await checkStagingSpace(manifest, entry, stagingDir, { withPlain: true, storedCopy: false, reserved: 0 });
          progress = opts.progress?.begin(name, entry.storedSize);
          input = await verifiedStream({ filestore: opts.filestore, manifest, entry, identities, signal, progress });
          if (name === 'db') {
            const source = input.stages[0]!;
            source.once('end', dumpDownloaded);
            source.once('close', dumpDownloaded);
          }
        }
        await use(name, input, file);
      } catch (err) {
        if (failure !== undefined) throw failure;
        fail(diskFull(err, manifest, entry, name === 'db' || name === 'dbmeta' ? stagingDir : targets.dirs[name].next) ?? err);
      } finally {
        progress?.end();
      }
      const now = performance.now();
      durations[name] = Math.round(now - t) / 1000;
      t = now;
      logger.info(
        { artifact: name, storedBytes: entry.storedSize, seconds: durations[name], streamed: download === undefined, ...(download !== undefined ? { downloadSeconds: download } : {}) },
        'artifact verified and staged',
      );
      faultPoint(`staged-${name}`);
    }
  } catch (err) {
    ac.abort(err);
    dumpDownloaded();
    // No download may still be writing when the caller removes the staging.
    await Promise.allSettled(fetched.values());
    throw failure ?? err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
  return { db: db!, dbMeta, durations, ...(filesObjects ? { filesObjects } : {}), ...(cluster !== undefined ? { cluster } : {}) };

  /** Decodes one artifact into its place; `file` is its verified stored copy, if it has one (removed after). */
  async function use(name: ArtifactName, input: StoredInput, file: string | undefined): Promise<void> {
    const { entry } = input;
    if (name === 'db' && entry.kind === 'postgres-base') {
      // The base backup unpacked beside the live data directory, by the safe extractor, bounded by
      // the signed plain size and the free space there.
      const dir = targets.cluster!.next;
      await rm(dir, { recursive: true, force: true });
      const free = await freeBytes(dirname(dir));
      const maxBytes = Math.min(entry.plainSize, free ?? Number.MAX_SAFE_INTEGER);
      const label = artifactLabel(manifest, entry);
      await decodeStored(input, identities, (plain) => extractTarSafe(plain, dir, { label, maxEntries: opts.limits?.maxEntries ?? 1_000_000, maxBytes }), { signal });
      cluster = dir;
    } else if (name === 'db') {
      if (opts.restoreJobs <= 1 && file !== undefined) {
        // Decoded once to refuse a bad dump before anything live; the restore decodes it again.
        await decodeStored(input, identities, discard, { signal });
        db = { form: 'stored', file, entry };
        return;
      }
      const dump = join(stagingDir, 'db.dump');
      dumpInProgress = { file: dump, size: entry.plainSize };
      try {
        await decodeDumpFile(input, identities, dump, signal);
      } finally {
        dumpInProgress = undefined;
      }
      db = { form: 'plain', file: dump };
    } else if (name === 'dbmeta') {
      const chunks: Buffer[] = [];
      await decodeStored(
        input,
        identities,
        async (plain) => {
          for await (const c of plain) chunks.push(c as Buffer);
        },
        { signal },
      );
      dbMeta = Buffer.concat(chunks);
    } else if (name === 'files' && entry.kind === 'files-index') {
      filesObjects = await stageFilesObjects({
        input,
        filestore: opts.filestore,
        manifest,
        entry,
        identities,
        filesKey: opts.filesKey ?? null,
        names: targets.dirs.files,
        stateDir: opts.stateDir ?? stagingDir,
        limits: { maxEntries: opts.limits?.maxEntries ?? 1_000_000, ...(opts.limits?.maxBytes !== undefined ? { maxBytes: opts.limits.maxBytes } : {}) },
        logger,
        signal,
        checkAll: opts.checkAllFiles === true,
      });
    } else {
      const dir = targets.dirs[name].next;
      await mkdir(dirname(dir), { recursive: true });
      await rm(dir, { recursive: true, force: true });
      const modes = name === 'security' ? { fileMode: 0o600, dirMode: 0o700 } : {};
      // An archive may not unpack more file data than its file system has room for: an entry
      // claiming more is refused at its header, before a byte of it is written. (Measured after
      // the download, so the stored copy counts when both share a file system.)
      const free = await freeBytes(dirname(dir));
      const maxBytes = Math.min(opts.limits?.maxBytes ?? Number.MAX_SAFE_INTEGER, free ?? Number.MAX_SAFE_INTEGER);
      const limits = { maxEntries: opts.limits?.maxEntries ?? 1_000_000, maxBytes };
      const label = artifactLabel(manifest, entry);
      await decodeStored(input, identities, (plain) => extractTarSafe(plain, dir, { label, ...modes, ...limits }), { signal });
    }
    if (file !== undefined) await rm(file, { force: true });
  }
}

/** ENOSPC anywhere in the cause chain becomes one clear message (the caller removes the staging). */
function diskFull(err: unknown, manifest: Manifest, entry: ArtifactEntry, where: string): TandemError | undefined {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 10; e = (e as Error).cause, depth++) {
    // ENOSPC of our own writes, or of zstd writing the staged dump (its message, exit code 70).
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC' || /No space left on device/.test((e as Error).message ?? '')) {
      return diskFullError(manifest, entry, where, { cause: err });
    }
  }
  return undefined;
}

function diskFullError(manifest: Manifest, entry: ArtifactEntry, where: string, o: { detail?: string; cause?: unknown }): TandemError {
  return new TandemError(
    'permanent',
    'DISK_FULL',
    `disk full while staging set ${manifest.setId} (${entry.name} artifact) in ${where}${o.detail ? ` (${o.detail})` : ''}: the staging was removed and the live site is untouched`,
    { hint: `free space on the file system of ${where} (the apply needs room for one more copy of the site beside the live one)`, cause: o.cause },
  );
}
