import { fstatSync } from 'node:fs';
import { PassThrough, Transform, Writable, type Duplex, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  HashCounter,
  TandemError,
  createAgeDecryptStream,
  describeError,
  faultByteTrigger,
  isNotFound,
  isTandemError,
  layout,
  zstdDecompress,
  type ArtifactEntry,
  type Filestore,
  type Manifest,
} from '@tandem/shared';

/**
 * One artifact in one pass: filestore object → SHA-256 and size of the stored bytes → age decryption
 * (unless the set is unencrypted) → zstd decompression → a sink (a file, an extractor, a lister).
 *
 * Every failure is a TandemError that names the set and the artifact. The stored bytes are compared
 * with the signed manifest when the stream ends: a sink's work is only trustworthy once this returns.
 */
export interface ArtifactSource {
  filestore: Filestore;
  manifest: Manifest;
  entry: ArtifactEntry;
  /** age identities; unused for unencrypted artifacts. */
  identities: string[];
  signal?: AbortSignal;
}

export interface StreamedArtifact {
  storedBytes: number;
  seconds: number;
}

export const artifactLabel = (manifest: Manifest, entry: ArtifactEntry): string => `set ${manifest.setId}: ${entry.name} artifact (${entry.file})`;

export interface StreamOptions {
  /** Receives the stored (still encrypted) bytes as they pass, e.g. to keep them on disk. */
  tee?: Writable;
  /**
   * An open file that zstd writes the plain data to directly (the sink then sees an empty stream).
   * The file is complete and trustworthy only once this returns; the caller closes it.
   */
  plainFd?: number;
}

/** Streams the artifact into `sink`, which must consume its input to the end (or fail). */
export async function streamArtifact(
  src: ArtifactSource,
  sink: (plain: Readable) => Promise<unknown>,
  opts: StreamOptions = {},
): Promise<StreamedArtifact> {
  const { filestore: fs, manifest, entry } = src;
  const { tee } = opts;
  const label = artifactLabel(manifest, entry);
  const t0 = performance.now();
  const key = layout.artifact(manifest.site, manifest.setId, entry.file);
  let body: Readable;
  let size: number;
  try {
    const got = await fs.get(key, { signal: src.signal });
    body = got.body;
    size = got.info.size;
  } catch (err) {
    tee?.destroy();
    if (isNotFound(err)) {
      throw new TandemError('integrity', 'ARTIFACT_MISSING', `${label} is missing from ${fs.description}: the manifest lists it, the filestore does not have it`, {
        cause: err,
      });
    }
    throw err;
  }
  if (size !== entry.storedSize) {
    body.destroy();
    tee?.destroy();
    throw new TandemError(
      'integrity',
      'ARTIFACT_SIZE',
      `${label}: stored object has ${size} bytes, the signed manifest says ${entry.storedSize} (truncated or replaced)`,
    );
  }
  const hash = new HashCounter();
  // Crash tests only: TANDEM_FAULT_KILL_AT=download:<artifact>:<bytes> kills once that many stored bytes arrived.
  const stages: Duplex[] = [hash, ...faultByteTrigger(`download:${entry.name}`)];
  if (tee) stages.push(teeTo(tee));
  if (entry.encryption === 'age') stages.push(createAgeDecryptStream(src.identities, { label }));
  stages.push(zstdDecompress({ toFd: opts.plainFd }));
  const plain = new PlainBound(entry.plainSize, label);

  const ac = new AbortController();
  const onAbort = () => ac.abort(src.signal?.reason);
  src.signal?.addEventListener('abort', onAbort, { once: true });
  let first: unknown;
  const settle = (p: Promise<unknown>) =>
    p.catch((err: unknown) => {
      first ??= err;
      ac.abort(err);
      plain.destroy(err as Error);
    });
  try {
    // resume(): whatever a sink leaves unread is still read, so that the checksum covers every byte.
    await Promise.all([settle(pipeline([body, ...stages, plain], { signal: ac.signal })), settle(sink(plain).then(() => plain.resume()))]);
  } finally {
    if (first !== undefined) tee?.destroy();
    src.signal?.removeEventListener('abort', onAbort);
  }
  if (first !== undefined) {
    const err = explain(first, manifest, entry);
    // A decryption, decompression or archive error may just be damaged bytes: when the stored object
    // does not match the signed checksum, that is the diagnosis (not "wrong key", "not zstd" ...).
    if (isTandemError(err) && (err.kind === 'integrity' || err.kind === 'external')) {
      const stored = await hashObject(fs, key, src.signal).catch(() => undefined);
      if (stored !== undefined && !matches(stored, entry)) throw checksumError(label, stored, entry, err);
    }
    throw err;
  }
  const stored = { sha256: hash.digest(), bytes: hash.bytes };
  if (!matches(stored, entry)) throw checksumError(label, stored, entry);
  const plainBytes = opts.plainFd === undefined ? plain.bytes : fstatSync(opts.plainFd).size;
  if (plainBytes !== entry.plainSize) throw plainSizeError(label, plainBytes, entry.plainSize);
  return { storedBytes: hash.bytes, seconds: Math.round(performance.now() - t0) / 1000 };
}

/**
 * The decompressed stream, counted and bounded by the signed plainSize: a set whose data would
 * unpack to more than it says is stopped at that point, not when the disk is full.
 */
class PlainBound extends Transform {
  bytes = 0;
  readonly #limit: number;
  readonly #label: string;

  constructor(limit: number, label: string) {
    super({ highWaterMark: 1 << 20 });
    this.#limit = limit;
    this.#label = label;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.#limit) return cb(plainSizeError(this.#label, this.bytes, this.#limit, true));
    cb(null, chunk);
  }
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

function checksumError(label: string, h: StoredHash, entry: ArtifactEntry, symptom?: TandemError): TandemError {
  return new TandemError(
    'integrity',
    'ARTIFACT_CHECKSUM',
    `${label}: SHA-256 of the stored bytes is ${h.sha256} (${h.bytes} bytes), the signed manifest says ${entry.storedSha256} (${entry.storedSize} bytes): corrupt or tampered with`,
    { cause: symptom },
  );
}

async function hashObject(fs: Filestore, key: string, signal?: AbortSignal): Promise<StoredHash> {
  const { body } = await fs.get(key, { signal });
  const hash = new HashCounter();
  await pipeline(body, hash, new Writable({ write: (_c, _e, cb) => cb() }));
  return { sha256: hash.digest(), bytes: hash.bytes };
}

/** Passes chunks on only once `out` has taken them, so its backpressure and errors count. */
function teeTo(out: Writable): Duplex {
  return new (class extends PassThrough {
    override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
      out.write(chunk, (err) => cb(err ?? null, chunk));
    }
    override _flush(cb: (err?: Error | null) => void): void {
      out.end((err?: Error | null) => cb(err ?? null));
    }
  })();
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
