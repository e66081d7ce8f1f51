import { createWriteStream } from 'node:fs';
import { chmod, mkdir, open, rm, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import {
  ARTIFACT_NAMES,
  MAX_DB_META_BYTES,
  OPEN_NEW_FILE,
  OPTIONAL_ARTIFACTS,
  TandemError,
  extractTarSafe,
  type ArtifactEntry,
  type ArtifactName,
  type Filestore,
  type Logger,
  type Manifest,
} from '@tandem/shared';
import { artifactLabel, streamArtifact, type ArtifactSource } from './artifact-stream.js';
import { faultPoint } from './fault.js';
import type { Targets } from './targets.js';

/**
 * Staging: every artifact is downloaded, checked against the signed manifest, decrypted and
 * decompressed into a place beside the live site, before anything live changes (ordering rule 3).
 *
 * - db: `pg_restore -j` needs a seekable file, so with restoreJobs > 1 the plain dump goes to
 *   <staging>/db.dump (0600 in a 0700 dir). With one job the stored (encrypted) bytes are kept
 *   instead and decrypted again on the way into pg_restore: no plaintext dump on disk; the
 *   verification pass still decrypts and decompresses everything once.
 * - config/security/files: extracted into `<live>.tandem-new` (security: files 0600, dirs 0700).
 */
export type StagedDb =
  | { form: 'plain'; file: string }
  | { form: 'stored'; file: string; entry: ArtifactEntry };

export interface StagedSet {
  db: StagedDb;
  /** The dbmeta artifact's plain bytes (small JSON, bounded by its signed plainSize), if the set has one. */
  dbMeta?: Buffer;
  /** Seconds per artifact. */
  durations: Record<ArtifactName, number>;
}

export interface StageOptions {
  filestore: Filestore;
  manifest: Manifest;
  identities: string[];
  targets: Targets;
  stagingDir: string;
  restoreJobs: number;
  /** Per archive: entries of any type, and bytes of file data (default: no byte bound beyond free space). */
  limits?: { maxEntries: number; maxBytes?: number };
  logger: Logger;
  signal?: AbortSignal;
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
 * The plain dump goes from zstd straight into the staged file (0600, created here, never an
 * existing file): 750 MB of dump crossing the event loop cost ~2 s of an apply on this machine kind.
 */
async function stageDumpFile(src: ArtifactSource, file: string) {
  // The signed plainSize is what zstd will write: refuse before the download if it cannot fit.
  const free = await freeBytes(dirname(file));
  if (free !== undefined && free < src.entry.plainSize) {
    throw diskFullError(src.manifest, src.entry, dirname(file), { detail: `the dump needs ${src.entry.plainSize} bytes, ${free} are free` });
  }
  const fh = await open(file, OPEN_NEW_FILE, 0o600);
  try {
    return await streamArtifact(src, discard, { plainFd: fh.fd });
  } finally {
    await fh.close();
  }
}

export async function stageSet(opts: StageOptions): Promise<StagedSet> {
  const { manifest, targets, stagingDir, logger } = opts;
  const entries = artifactEntries(manifest);
  await mkdir(dirname(stagingDir), { recursive: true, mode: 0o700 });
  await rm(stagingDir, { recursive: true, force: true });
  await mkdir(stagingDir, { mode: 0o700 });
  await chmod(stagingDir, 0o700);

  const durations = {} as Record<ArtifactName, number>;
  let db: StagedDb | undefined;
  let dbMeta: Buffer | undefined;
  for (const name of ARTIFACT_NAMES) {
    const entry = entries[name];
    if (entry === undefined) continue; // an optional artifact a set made by an earlier tandem lacks
    const src = { filestore: opts.filestore, manifest, entry, identities: opts.identities, signal: opts.signal };
    try {
      let r;
      if (name === 'db') {
        if (opts.restoreJobs > 1) {
          const file = join(stagingDir, 'db.dump');
          r = await stageDumpFile(src, file);
          db = { form: 'plain', file };
        } else {
          const file = join(stagingDir, entry.file);
          r = await streamArtifact(src, discard, { tee: createWriteStream(file, { flags: 'wx', mode: 0o600 }) });
          db = { form: 'stored', file, entry };
        }
      } else if (name === 'dbmeta') {
        if (entry.plainSize > MAX_DB_META_BYTES) {
          throw new TandemError('integrity', 'ARTIFACT_PLAIN_SIZE', `set ${manifest.setId}: the dbmeta artifact says it is ${entry.plainSize} bytes, more than the ${MAX_DB_META_BYTES} a database description can be`);
        }
        const chunks: Buffer[] = [];
        r = await streamArtifact(src, async (plain) => {
          for await (const c of plain) chunks.push(c as Buffer);
        });
        dbMeta = Buffer.concat(chunks);
      } else {
        const dir = targets.dirs[name].next;
        await mkdir(dirname(dir), { recursive: true });
        await rm(dir, { recursive: true, force: true });
        const modes = name === 'security' ? { fileMode: 0o600, dirMode: 0o700 } : {};
        // An archive may not unpack more file data than its file system has room for: an entry
        // claiming more is refused at its header, before a byte of it is written.
        const free = await freeBytes(dirname(dir));
        const maxBytes = Math.min(opts.limits?.maxBytes ?? Number.MAX_SAFE_INTEGER, free ?? Number.MAX_SAFE_INTEGER);
        const limits = { maxEntries: opts.limits?.maxEntries ?? 1_000_000, maxBytes };
        r = await streamArtifact(src, (plain) => extractTarSafe(plain, dir, { label: artifactLabel(manifest, entry), ...modes, ...limits }));
      }
      durations[name] = r.seconds;
      logger.info({ artifact: name, storedBytes: r.storedBytes, seconds: r.seconds }, 'artifact verified and staged');
    } catch (err) {
      throw diskFull(err, manifest, entry, name === 'db' || name === 'dbmeta' ? stagingDir : targets.dirs[name].next) ?? err;
    }
    faultPoint(`staged-${name}`);
  }
  return { db: db!, dbMeta, durations };
}

/** Bytes available to this user on the file system holding `dir`, or undefined if unknown. */
async function freeBytes(dir: string): Promise<number | undefined> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  } catch {
    return undefined;
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
