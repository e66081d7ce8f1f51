import { createReadStream, fstatSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Duplex, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  ChunkVerifier,
  ChunkVerifierThread,
  HashCounter,
  OPEN_NEW_FILE,
  TandemError,
  createAgeDecryptStream,
  describeError,
  faultByteTrigger,
  isNotFound,
  isTandemError,
  layout,
  meterStream,
  zstdDecompress,
  zstdDecompressSmall,
  SMALL_ZSTD_PLAIN_MAX,
  SMALL_ZSTD_STORED_MAX,
  type ArtifactEntry,
  type ChildStream,
  type ChunkMismatch,
  type Filestore,
  type Manifest,
  type ProgressMeter,
} from '@tandem/shared';

/**
 * One artifact, used only as far as the primary's signature vouches for its bytes: no byte of it is
 * decrypted, decompressed or parsed before the SHA-256 that covers it matched the signed one.
 *
 * - Streamed (`verifiedStream`, a set whose manifest lists chunk digests, chunks.ts): filestore
 *   object → the signed-size bound → ChunkVerifier (its hashing on a second thread for a large
 *   artifact: ChunkVerifierThread), which holds each 8 MiB piece until its SHA-256
 *   matched the signed digest and only then passes it on. The download overlaps the decoding, and
 *   nothing of the stored object is written to disk.
 * - Whole (`fetchVerified`, a set without chunk digests, or a stored copy the restore reads again):
 *   filestore object → SHA-256 and size → a new 0600 file in the (0700) staging dir, refused at the
 *   first byte past the signed stored size; the hash is compared when the download ends, and a
 *   mismatch deletes the file.
 *
 * Either way, whoever can write an object into the filestore but holds no signing key gets nothing
 * of theirs to age, zstd, the tar parser or pg_restore. Then `decodeStored`: those verified bytes →
 * age decryption (unless the set is unencrypted) → zstd decompression (unless the manifest says the
 * archive is stored uncompressed) → a sink (a file, an
 * extractor, a lister), the plain bytes bounded by the signed plain size: stopped at that byte,
 * whether they pass through this process or zstd writes them to a file itself (then by the file
 * size limit of the zstd process).
 *
 * Every failure is a TandemError that names the set and the artifact.
 */
export interface ArtifactSource {
  filestore: Filestore;
  manifest: Manifest;
  entry: ArtifactEntry;
  /** age identities; unused for unencrypted artifacts. */
  identities: string[];
  signal?: AbortSignal;
  /** Told the stored bytes as they arrive from the filestore (a terminal's progress line). */
  progress?: ProgressMeter;
}

/** A stored artifact on local disk whose bytes matched the signed manifest. */
export interface VerifiedArtifact {
  manifest: Manifest;
  entry: ArtifactEntry;
  /** The stored (still encrypted and compressed) bytes: 0600, in the staging dir, made by this process. */
  file: string;
  /** Seconds the download and the check took. */
  seconds: number;
}

export interface StreamedArtifact {
  storedBytes: number;
  seconds: number;
}

export const artifactLabel = (manifest: Manifest, entry: ArtifactEntry): string => `set ${manifest.setId}: ${entry.name} artifact (${entry.file})`;

/** Where fetchVerified keeps an artifact's stored bytes (never the manifest's `file`, which only the signature vouches for). */
export const storedCopyPath = (dir: string, entry: ArtifactEntry): string => join(dir, `${entry.name}.stored`);

/** The stored object's body, once its size matched the signed one (not a byte of it read yet). */
async function getStored(src: ArtifactSource): Promise<Readable> {
  const { filestore: fs, manifest, entry } = src;
  const label = artifactLabel(manifest, entry);
  const key = layout.artifact(manifest.site, manifest.setId, entry.file);
  try {
    const got = await fs.get(key, { signal: src.signal });
    if (got.info.size !== entry.storedSize) {
      got.body.destroy();
      throw new TandemError(
        'integrity',
        'ARTIFACT_SIZE',
        `${label}: stored object has ${got.info.size} bytes, the signed manifest says ${entry.storedSize} (truncated or replaced)`,
      );
    }
    return got.body;
  } catch (err) {
    if (isNotFound(err)) {
      throw new TandemError('integrity', 'ARTIFACT_MISSING', `${label} is missing from ${fs.description}: the manifest lists it, the filestore does not have it`, {
        cause: err,
      });
    }
    throw err;
  }
}

/** A counting stage for the progress line, when something draws it. */
const metered = (src: ArtifactSource): Transform[] => (src.progress ? [meterStream(src.progress)] : []);

/** Whether the artifact can be used as it downloads: its manifest entry lists chunk digests. */
export const canStream = (entry: ArtifactEntry): boolean => entry.chunks !== undefined;

/**
 * Whether an apply streams the artifact rather than downloading it whole into staging first: the
 * dump (unless its stored copy is kept for a one-job restore) and the files archive, when they can
 * stream. The small documents are fetched whole (dbmeta is read into memory, config and security
 * are a few KB). The staging (stage.ts) and the preflight's space check both follow this.
 */
export const streamsWhenStaged = (entry: ArtifactEntry, restoreJobs: number): boolean =>
  canStream(entry) && (entry.name === 'files' || (entry.name === 'db' && (restoreJobs > 1 || entry.kind === 'postgres-base')));

/**
 * The stored bytes straight from the filestore, as pipeline stages that pass on only pieces whose
 * signed chunk digest matched (see the top of this file). Only for an entry with chunk digests.
 */
export async function verifiedStream(src: ArtifactSource): Promise<StoredInput> {
  const { manifest, entry } = src;
  const chunks = entry.chunks;
  if (!chunks) throw new TandemError('internal', 'NO_CHUNKS', `${artifactLabel(manifest, entry)}: has no chunk digests to stream by`);
  const label = artifactLabel(manifest, entry);
  const body = await getStored(src);
  return {
    manifest,
    entry,
    stages: [
      body,
      ...metered(src),
      new Bounded(entry.storedSize, (n) => storedTooLong(label, n, entry.storedSize)),
      // A large artifact is hashed on a second thread while this one decodes what was verified.
      new (entry.storedSize >= HASH_THREAD_MIN ? ChunkVerifierThread : ChunkVerifier)(
        chunks,
        entry.storedSize,
        (m) => chunkChecksumError(label, m),
        (pieces, count) =>
          new TandemError('integrity', 'ARTIFACT_SIZE', `${label}: the stored object ended after ${pieces} of its ${count} signed chunks (truncated while it was read?)`),
      ),
      // Crash tests only: TANDEM_FAULT_KILL_AT=download:<artifact>:<bytes> kills once that many stored bytes arrived.
      ...faultByteTrigger(`download:${entry.name}`),
    ],
  };
}

/**
 * From this stored size on, a streamed artifact's pieces are hashed on a second thread
 * (ChunkVerifierThread): the files archive's stage took 1.52-1.81 s against 1.82-2.04 s for 500 MB.
 * Below it a worker thread (~20 ms to start, a few MB) is not worth it (the files index, the small
 * documents).
 */
const HASH_THREAD_MIN = 16 << 20;

/** Verified stored bytes ready to decode: a verified local copy, or a verified stream. */
export interface StoredInput {
  manifest: Manifest;
  entry: ArtifactEntry;
  stages: Array<Readable | Duplex>;
}

/** A verified stored copy on disk as decoder input. */
export const fromVerifiedFile = (v: VerifiedArtifact): StoredInput => ({
  manifest: v.manifest,
  entry: v.entry,
  stages: [createReadStream(v.file, { highWaterMark: 1 << 20 })],
});

/**
 * Downloads the artifact into `dir` (which must exist, and be this process's own: the staging dir)
 * and checks it against the signed manifest. On any failure the partial file is removed.
 */
export async function fetchVerified(src: ArtifactSource, dir: string): Promise<VerifiedArtifact> {
  const { manifest, entry } = src;
  const label = artifactLabel(manifest, entry);
  const t0 = performance.now();
  const body = await getStored(src);
  const file = storedCopyPath(dir, entry);
  const hash = new HashCounter();
  try {
    const fh = await open(file, OPEN_NEW_FILE, 0o600).catch((err: unknown) => {
      body.destroy();
      throw err;
    });
    // Crash tests only: TANDEM_FAULT_KILL_AT=download:<artifact>:<bytes> kills once that many stored bytes arrived.
    await pipeline([body, ...metered(src), new Bounded(entry.storedSize, (n) => storedTooLong(label, n, entry.storedSize)), hash, ...faultByteTrigger(`download:${entry.name}`), fh.createWriteStream({ highWaterMark: 4 << 20 })], {
      signal: src.signal,
    });
  } catch (err) {
    await rm(file, { force: true });
    throw explain(err, manifest, entry);
  }
  const stored = { sha256: hash.digest(), bytes: hash.bytes };
  if (!matches(stored, entry)) {
    await rm(file, { force: true });
    throw checksumError(label, stored, entry);
  }
  return { manifest, entry, file, seconds: Math.round(performance.now() - t0) / 1000 };
}

/**
 * The zstd stage of an artifact: a small one (the files index's root, config, security, dbmeta) is
 * decoded in this process (zstdDecompressSmall: no zstd process to start, ~50 ms each), bounded by
 * the signed plain size; any other by the zstd process.
 */
function zstdFor(entry: ArtifactEntry, label: string): Duplex {
  if (entry.storedSize <= SMALL_ZSTD_STORED_MAX && entry.plainSize <= SMALL_ZSTD_PLAIN_MAX) {
    return zstdDecompressSmall(entry.plainSize, (n) => plainSizeError(label, n, entry.plainSize, true));
  }
  return zstdDecompress();
}

/**
 * The plain bytes of a verified stored file as pipeline stages: read → age → zstd → the plain-size
 * bound (which also refuses a stream that ends short of the signed size).
 */
export function plainStages(file: string, entry: ArtifactEntry, identities: string[], label: string): Array<Readable | Duplex> {
  const stages: Array<Readable | Duplex> = [createReadStream(file, { highWaterMark: 1 << 20 })];
  if (entry.encryption === 'age') stages.push(createAgeDecryptStream(identities, { label }));
  if (entry.compression === 'zstd') stages.push(zstdFor(entry, label));
  stages.push(new Bounded(entry.plainSize, (n) => plainSizeError(label, n, entry.plainSize, true), (n) => plainSizeError(label, n, entry.plainSize)));
  return stages;
}

export interface DecodeOptions {
  /**
   * An open, empty file that zstd writes the plain data to directly (the sink then sees an empty
   * stream), limited to the signed plain size by the zstd process's file size limit. The file is
   * complete and trustworthy only once this returns; the caller closes it.
   */
  plainFd?: number;
  signal?: AbortSignal;
}

/** Decrypts and decompresses verified stored bytes into `sink`, which must consume its input to the end (or fail). */
export async function decodeStored(
  input: StoredInput,
  identities: string[],
  sink: (plain: Readable) => Promise<unknown>,
  opts: DecodeOptions = {},
): Promise<{ seconds: number }> {
  const { manifest, entry } = input;
  const label = artifactLabel(manifest, entry);
  const t0 = performance.now();
  const stages: Array<Readable | Duplex> = [...input.stages];
  if (entry.encryption === 'age') stages.push(createAgeDecryptStream(identities, { label }));
  // An archive stored uncompressed (media, see the manifest's `compression`) goes straight on; the
  // manifest schema allows that for archives only, which are never written to a file by zstd.
  if (entry.compression === 'none' && opts.plainFd !== undefined) {
    throw new TandemError('internal', 'PLAIN_FD_UNCOMPRESSED', `${label}: an uncompressed artifact cannot be decoded to a file descriptor`);
  }
  const zstd = entry.compression !== 'zstd' ? undefined : opts.plainFd === undefined ? zstdFor(entry, label) : zstdDecompress({ toFd: opts.plainFd, maxBytes: entry.plainSize });
  if (zstd) stages.push(zstd);
  const plain = new Bounded(entry.plainSize, (n) => plainSizeError(label, n, entry.plainSize, true));

  const ac = new AbortController();
  const onAbort = () => ac.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let first: unknown;
  const settle = (p: Promise<unknown>) =>
    p.catch((err: unknown) => {
      first ??= err;
      ac.abort(err);
      plain.destroy(err as Error);
    });
  try {
    // resume(): whatever a sink leaves unread is still read, so that the plain size covers every byte.
    await Promise.all([settle(pipeline([...stages, plain], { signal: ac.signal })), settle(sink(plain).then(() => plain.resume()))]);
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
  if (first !== undefined) {
    // zstd stopped by its file size limit: the dump would have been larger than the signed size.
    if (opts.plainFd !== undefined && (zstd as ChildStream | undefined)?.exitStatus?.signal === 'SIGXFSZ') {
      throw plainSizeError(label, fstatSync(opts.plainFd).size, entry.plainSize, true);
    }
    throw explain(first, manifest, entry);
  }
  const plainBytes = opts.plainFd === undefined ? plain.bytes : fstatSync(opts.plainFd).size;
  if (plainBytes !== entry.plainSize) throw plainSizeError(label, plainBytes, entry.plainSize);
  return { seconds: Math.round(performance.now() - t0) / 1000 };
}

/**
 * For a reader of the plain stream (verify, the restore drill): streamed when the manifest lists
 * chunk digests, else downloaded into `dir`, verified, decoded into `sink`, and the stored copy
 * removed again.
 */
export async function streamArtifact(src: ArtifactSource, dir: string, sink: (plain: Readable) => Promise<unknown>): Promise<StreamedArtifact> {
  if (canStream(src.entry)) {
    const d = await decodeStored(await verifiedStream(src), src.identities, sink, { signal: src.signal });
    return { storedBytes: src.entry.storedSize, seconds: d.seconds };
  }
  const v = await fetchVerified(src, dir);
  try {
    const d = await decodeStored(fromVerifiedFile(v), src.identities, sink, { signal: src.signal });
    return { storedBytes: v.entry.storedSize, seconds: Math.round((v.seconds + d.seconds) * 1000) / 1000 };
  } finally {
    await rm(v.file, { force: true });
  }
}

/**
 * A counted pass-through that fails at the first byte past `limit` (and, with `short`, when it ends
 * before reaching it): the stored bytes as they arrive, the plain bytes as they are decompressed.
 */
class Bounded extends Transform {
  bytes = 0;
  readonly #limit: number;
  readonly #over: (bytes: number) => Error;
  readonly #short: ((bytes: number) => Error) | undefined;

  constructor(limit: number, over: (bytes: number) => Error, short?: (bytes: number) => Error) {
    super({ highWaterMark: 1 << 20 });
    this.#limit = limit;
    this.#over = over;
    this.#short = short;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.#limit) return cb(this.#over(this.bytes));
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    cb(this.#short !== undefined && this.bytes !== this.#limit ? this.#short(this.bytes) : null);
  }
}

function storedTooLong(label: string, bytes: number, signed: number): TandemError {
  return new TandemError('integrity', 'ARTIFACT_SIZE', `${label}: the filestore sent more than ${signed} bytes (${bytes} so far), the size the signed manifest says: replaced while it was read?`);
}

function plainSizeError(label: string, bytes: number, signed: number, atLeast = false): TandemError {
  return new TandemError(
    'integrity',
    'ARTIFACT_PLAIN_SIZE',
    `${label}: decompresses to ${atLeast ? `more than ${signed}` : bytes} bytes, the signed manifest says ${signed}`,
    { hint: 'the set was not made by a tandem primary or was made by a faulty one; apply another set' },
  );
}

interface StoredHash {
  sha256: string;
  bytes: number;
}

const matches = (h: StoredHash, entry: ArtifactEntry): boolean => h.bytes === entry.storedSize && h.sha256 === entry.storedSha256;

function checksumError(label: string, h: StoredHash, entry: ArtifactEntry): TandemError {
  return new TandemError(
    'integrity',
    'ARTIFACT_CHECKSUM',
    `${label}: SHA-256 of the stored bytes is ${h.sha256} (${h.bytes} bytes), the signed manifest says ${entry.storedSha256} (${entry.storedSize} bytes): corrupt or tampered with`,
    { hint: 'nothing of it was decrypted or unpacked; the next set (or a re-upload by the primary) replaces it' },
  );
}

function chunkChecksumError(label: string, m: ChunkMismatch): TandemError {
  return new TandemError(
    'integrity',
    'ARTIFACT_CHECKSUM',
    `${label}: SHA-256 of the stored bytes is ${m.got} in chunk ${m.index + 1} of ${m.count} (bytes ${m.start}-${m.end - 1}), the signed manifest says ${m.want || 'no such chunk'}: corrupt or tampered with`,
    { hint: 'nothing of that chunk was decrypted or unpacked, and what came before it is removed with the staging; the next set (or a re-upload by the primary) replaces it' },
  );
}

/** Makes every failure name the set and artifact; the wrong-key case gets the operator's wording. */
function explain(err: unknown, manifest: Manifest, entry: ArtifactEntry): unknown {
  const label = artifactLabel(manifest, entry);
  if (isTandemError(err)) {
    if (err.code === 'AGE_NO_IDENTITY_MATCH') {
      return new TandemError(
        'integrity',
        err.code,
        `this standby's key cannot decrypt set ${manifest.setId} (${entry.name} artifact, ${entry.file}): encrypted for another recipient?`,
        { hint: err.hint, cause: err },
      );
    }
    return err.message.includes(label) ? err : new TandemError(err.kind, err.code, `${label}: ${err.message}`, { hint: err.hint, cause: err });
  }
  if ((err as Error | undefined)?.name === 'AbortError') return err;
  // A file system error of a sink (ENOSPC, EACCES ...): the environment, not a bug.
  const kind = typeof (err as NodeJS.ErrnoException | undefined)?.code === 'string' ? 'permanent' : 'internal';
  return new TandemError(kind, 'ARTIFACT_STREAM', `${label}: ${describeError(err)}`, { cause: err });
}
