import { PassThrough, Transform, type Readable, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ChunkHasher, HashCounter, faultByteTrigger, type Filestore, type ProgressMeter, type StoredChunks } from '@tandem/shared';

export interface UploadedArtifact {
  storedSize: number;
  storedSha256: string;
  /** Digests of the stored bytes piece by piece, for a standby that uses them as they download; none for a very large artifact. */
  chunks?: StoredChunks;
  plainSize: number;
}

/** Counts bytes flowing through without touching them (and tells a progress meter, if any). */
class ByteCounter extends Transform {
  bytes = 0;

  constructor(private readonly meter?: ProgressMeter) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.bytes += chunk.length;
    this.meter?.add(chunk.length);
    cb(null, chunk);
  }
}

/**
 * producer → (count) → compression → encryption → SHA-256 (whole and per chunk) → filestore, streamed end to end:
 * nothing is held whole in memory or written unencrypted to disk. If either side fails, the
 * other is aborted, and the filestore's put leaves nothing visible.
 */
export async function uploadArtifact(opts: {
  filestore: Filestore;
  key: string;
  /** The artifact's name, for the crash tests' byte trigger (TANDEM_FAULT_KILL_AT=upload:<name>:<bytes>). */
  name: string;
  source: Readable;
  stages: Duplex[];
  signal?: AbortSignal;
  /** Told the producer's bytes as they are read; ended when the upload ends, either way. */
  progress?: ProgressMeter;
}): Promise<UploadedArtifact> {
  if (opts.signal?.aborted) {
    // Interrupted between two artifacts: start nothing (and stop the producer already created).
    for (const s of [opts.source, ...opts.stages]) s.destroy();
    opts.progress?.end();
    opts.signal.throwIfAborted();
  }
  const plain = new ByteCounter(opts.progress);
  const stored = new HashCounter();
  const chunks = new ChunkHasher();
  const body = new PassThrough({ highWaterMark: 1 << 20 });
  const ac = new AbortController();
  const onOuterAbort = () => ac.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
  try {
    // Crash tests only: a pass-through that kills the process once the filestore has taken N bytes.
    const trigger = faultByteTrigger(`upload:${opts.name}`);
    const produce = pipeline([opts.source, plain, ...opts.stages, stored, chunks, body, ...trigger], { signal: ac.signal });
    const consume = opts.filestore.put(opts.key, trigger[0] ?? body, { signal: ac.signal });
    // Whichever side fails first stops the other, so a dead filestore does not leave pg_dump running.
    // Both sides are awaited to the end so that cleanup (tmp files, aborted uploads) is finished
    // before the caller reports; the first failure is the one reported.
    let first: unknown;
    const settle = (p: Promise<unknown>) =>
      p.catch((err: unknown) => {
        first ??= err;
        ac.abort(err);
      });
    await Promise.all([settle(produce), settle(consume)]);
    if (first !== undefined) throw first;
  } finally {
    opts.signal?.removeEventListener('abort', onOuterAbort);
    opts.progress?.end();
  }
  const digests = chunks.result();
  return { storedSize: stored.bytes, storedSha256: stored.digest(), ...(digests ? { chunks: digests } : {}), plainSize: plain.bytes };
}
