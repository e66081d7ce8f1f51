/**
 * Reading a tar stream with node-tar's strict Parser, one entry at a time: shared by the
 * extractor, the listing below and the primary's check of its own archives.
 */
import type { Readable } from 'node:stream';
import { Parser, type ReadEntry } from 'tar';
import { TandemError, asError } from '../errors.js';
import { unsafe } from './entry-rules.js';

export interface TarListEntry {
  path: string;
  type: string;
  size: number;
  mode: number;
}

/**
 * List a tar stream (for restore drills), reading it to the end, so a truncated or corrupt archive
 * throws ARCHIVE_CORRUPT. Returns every entry (meta entries excluded) with its path as archived;
 * more than `maxEntries` (default 100,000) is an ARCHIVE_LIMIT_EXCEEDED error rather than a silently
 * short list.
 */
export async function listTar(
  source: Readable,
  opts: { label?: string; maxEntries?: number } = {},
): Promise<TarListEntry[]> {
  const label = opts.label ?? 'tar listing';
  const max = opts.maxEntries ?? 100_000;
  const out: TarListEntry[] = [];
  guardEarlyErrors(source);
  await runParser(
    source,
    label,
    (e) => {
      if (out.length >= max) throw limitError(label, `more than ${max} entries (maxEntries)`);
      out.push({ path: e.path, type: e.type, size: e.size, mode: e.mode ?? 0 });
      e.resume();
    },
    true,
  );
  return out;
}

export function limitError(label: string, what: string): TandemError {
  return new TandemError('permanent', 'ARCHIVE_LIMIT_EXCEEDED', `${label}: archive has ${what}`, {
    hint: 'raise the limit if the site really is this large',
  });
}

/**
 * A source that fails before we start reading it (zstd rejecting its input while we create the
 * target) would emit 'error' with no listener and crash the process. The error is not lost: the
 * async iterator reports a stream's stored error (`stream.errored`) when reading starts.
 */
export function guardEarlyErrors(source: Readable): void {
  source.on('error', () => {});
}

/**
 * node-tar turns a pax mtime into `new Date(Number(v) * 1000)`, and the float product can fall
 * just below the exact millisecond (1600000021.02 -> ...21019.9998 -> 21019 ms). Take the
 * milliseconds from the decimal text instead, so mtimes survive exactly to the millisecond.
 */
function paxMtimeMs(meta: string): number | undefined {
  const m = /(?:^|\n)\d+ mtime=(\d+)(?:\.(\d+))?\n/.exec(meta);
  if (!m) return undefined;
  return Number(m[1]) * 1000 + Number(`${m[2] ?? ''}000`.slice(0, 3));
}


/**
 * Feed `source` to a strict node-tar Parser and run `onEntry` for each entry, one at a time and in
 * order (an entry's data waits in its ReadEntry, with the parser held back by backpressure, until
 * the previous entry is done). Rejects with the first failure: the source's error, a parser error
 * (corrupt/truncated), or whatever onEntry throws. A stream without the end-of-archive marker is
 * treated as truncated even if it stops on an entry boundary.
 */
export async function runParser(
  source: Readable,
  label: string,
  onEntry: (e: ReadEntry) => Promise<void> | void,
  listUnknown = false,
): Promise<void> {
  // zstd/brotli sniffing off: tandem decompresses outside, and Node 20's zlib has no zstd.
  const parser = new Parser({ strict: true, zstd: false, brotli: false });
  let failure: unknown;
  let signalFailure!: () => void;
  const failed = new Promise<void>((resolve) => (signalFailure = resolve));
  const fail = (err: unknown): void => {
    if (failure !== undefined) return;
    failure = err;
    // Destroy the source with this error, not a bare destroy(): a pipeline feeding the source then
    // rejects with the same error instead of "premature close". Also stops the loop below.
    if (!source.destroyed) source.destroy(asError(err));
    signalFailure();
  };

  let tail: Promise<void> = Promise.resolve();
  let current: ReadEntry | undefined;
  const enqueue = (e: ReadEntry, fn: () => Promise<void> | void): void => {
    tail = tail
      .then(() => {
        current = e;
        return failure === undefined ? fn() : undefined;
      })
      .catch(fail);
  };
  let sawEof = false;
  let metaMtime: number | undefined; // from the pax header just before the next entry
  parser.on('meta', (meta: string) => (metaMtime = paxMtimeMs(meta) ?? metaMtime));
  parser.on('entry', (e: ReadEntry) => {
    if (metaMtime !== undefined) e.mtime = new Date(metaMtime);
    metaMtime = undefined;
    enqueue(e, () => onEntry(e));
  });
  // ReadEntry marks unknown entry types (and oversized meta headers) as ignored: never extract them.
  parser.on('ignoredEntry', (e: ReadEntry) => {
    metaMtime = undefined;
    enqueue(e, () => (listUnknown ? onEntry(e) : fail(unsafe(label, e.path, `unsupported entry type ${e.type}`))));
  });
  parser.on('eof', () => (sawEof = true));
  parser.on('error', (err: Error) =>
    fail(new TandemError('integrity', 'ARCHIVE_CORRUPT', `${label}: corrupt or truncated tar archive: ${err.message}`, { cause: err })),
  );
  const parsed = new Promise<void>((resolve) => parser.on('end', resolve));

  // The source's own error (e.g. zstd or decryption failure) is the root cause.
  await feed(source, parser, failed).catch(fail);
  if (failure === undefined) {
    parser.end();
    await Promise.race([parsed, failed]);
    await tail; // never rejects (failures go to fail()), and every entry has all its data now
    if (failure === undefined && !sawEof) {
      fail(new TandemError('integrity', 'ARCHIVE_CORRUPT', `${label}: tar archive ends without its end-of-archive marker (truncated?)`));
    }
  }
  if (failure !== undefined) {
    // An entry may still wait for data that will never come: end it (end, not destroy: an
    // iterator that starts after a destroy would wait forever), so its file gets closed and the
    // extracted state is final when we throw.
    current?.end();
    await tail;
    throw failure;
  }
}

/**
 * Writes `source` into the parser chunk by chunk as the source hands them out ('data' events), so
 * that nothing is joined on the way (an async iterator's read() joins every buffered chunk into one
 * new buffer), pausing the source while the parser holds back. Resolves at the source's end, or
 * when `failed` settles; rejects with the source's error.
 */
function feed(source: Readable, parser: Parser, failed: Promise<void>): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const done = (err?: unknown): void => {
      source.off('data', onData);
      source.off('end', onEnd);
      source.off('error', onError);
      source.off('close', onClose);
      parser.off('drain', onDrain);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onData = (chunk: Buffer): void => {
      if (!parser.write(chunk)) source.pause();
    };
    const onDrain = (): void => void source.resume();
    const onEnd = (): void => done();
    const onError = (err: unknown): void => done(err);
    // Destroyed without an error before its end: as an async iterator would, fail with that.
    const onClose = (): void => done(source.readableEnded ? undefined : Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    source.on('data', onData);
    source.once('end', onEnd);
    source.once('error', onError);
    source.once('close', onClose);
    parser.on('drain', onDrain);
    source.resume(); // a 'data' listener alone does not start a source its owner paused
    void failed.then(() => done());
  });
}
