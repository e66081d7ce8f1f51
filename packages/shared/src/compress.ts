/**
 * zstd through the `zstd` CLI: node:zlib has no zstd on Node 20, and the CLI is fast, streams,
 * and runs on another core than the event loop.
 *
 * Default level 1, measured on this machine kind (300 MB of synthetic SQL COPY data, zstd 1.5.4):
 *   -1 -T1: 165 MB/s, 38% of input     -1 -T2: 278 MB/s
 *   -3 -T1: 114 MB/s, 30% of input     -3 -T2: 141 MB/s
 * and on incompressible media (random bytes) -1: ~600 MB/s, -3: ~400 MB/s.
 * Level 3 saves ~20% of the bytes of a dump but would be slower than `pg_dump -Z0` (~175 MB/s)
 * and than the file-backup target (~160 MB/s), so it would set the pace of a backup. Callers with
 * slow uplinks can ask for a higher level.
 */
import { Readable, Transform, Writable, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Decompress } from 'fzstd';
import { TandemError, asError } from './errors.js';
import { spawnFilter, type ChildStream } from './streams.js';

export const DEFAULT_ZSTD_LEVEL = 1;

export function zstdCompress(opts: { level?: number; threads?: number } = {}): Duplex {
  const level = opts.level ?? DEFAULT_ZSTD_LEVEL;
  // The config allows only 1 to 19: anything else is a caller's bug.
  if (!Number.isInteger(level) || level < 1 || level > 19) {
    throw new TandemError('internal', 'ZSTD_LEVEL', `zstd level must be an integer from 1 to 19, got ${level}`);
  }
  const args = ['-q', '-c', '--no-progress', `-${level}`];
  if (opts.threads !== undefined && opts.threads > 1) args.push(`-T${Math.floor(opts.threads)}`);
  return spawnFilter('zstd', args, { label: 'zstd compression', package: 'zstd' });
}

/**
 * A corrupt, truncated or non-zstd input makes the stream error with zstd's own diagnosis.
 * With `toFd`, zstd writes the plain data to that open file itself (no pass through this process,
 * which saves a copy of every byte on the event loop) and the readable side ends empty on success.
 * With `toFd` and `maxBytes`, zstd runs under a file size limit of `maxBytes` (RLIMIT_FSIZE, set by
 * util-linux's `prlimit`): output that would grow the file past it kills zstd with SIGXFSZ
 * (`exitStatus.signal` of the returned stream) at that byte, so even a decompression bomb that
 * bypasses this process writes no more than the caller allowed.
 */
export function zstdDecompress(opts: { toFd?: number; maxBytes?: number } = {}): ChildStream {
  const args = ['-d', '-q', '-c', '--no-progress'];
  const spawnOpts = {
    label: 'zstd decompression',
    package: 'zstd',
    hint: 'the compressed data is corrupt, truncated, or not zstd at all; check the artifact checksum',
    stdoutFd: opts.toFd,
  };
  if (opts.toFd !== undefined && opts.maxBytes !== undefined) {
    if (!Number.isSafeInteger(opts.maxBytes) || opts.maxBytes < 0) {
      throw new TandemError('internal', 'ZSTD_MAX_BYTES', `zstd maxBytes must be a non-negative integer, got ${opts.maxBytes}`);
    }
    return spawnFilter('prlimit', [`--fsize=${opts.maxBytes}`, '--', 'zstd', ...args], { ...spawnOpts, package: 'util-linux' });
  }
  return spawnFilter('zstd', args, spawnOpts);
}

/**
 * A small zstd artifact (the files index's root, the config and security archives, dbmeta) is
 * decoded in this process rather than by a zstd process: starting one is a fork of the agent (~100
 * MB mapped), ~50 ms of the apply of a small change each time. Only below these sizes, and only
 * when every frame's header says the decoder needs at most SMALL_WINDOW_MAX of memory and no more
 * than the signed plain size in all; any other input (a window a higher level chose, not zstd at
 * all, damaged) goes to the zstd process as before, which says what is wrong with it.
 */
export const SMALL_ZSTD_STORED_MAX = 4 << 20;
export const SMALL_ZSTD_PLAIN_MAX = 16 << 20;
const SMALL_WINDOW_MAX = 8 << 20;

/**
 * The largest window the in-process decoder (fzstd, which allocates a frame's window whole) needs
 * for a frame of `data`, and the plain sizes the frames declare, from the frame headers and the
 * blocks walked by their headers alone; null when `data` is not a sequence of whole zstd frames
 * (and skippable frames). With `narrowTo`, windows larger than needed for that much output are
 * narrowed in `data` (see below).
 */
export function zstdFrameBounds(data: Uint8Array, narrowTo?: number): { window: number; declared: number } | null {
  let pos = 0;
  let window = 0;
  let declared = 0;
  const u32 = (at: number) => (data[at]! | (data[at + 1]! << 8) | (data[at + 2]! << 16)) + data[at + 3]! * 0x1000000;
  while (pos < data.length) {
    if (pos + 8 > data.length) return null;
    const magic = u32(pos);
    if (magic >= 0x184d2a50 && magic <= 0x184d2a5f) {
      pos += 8 + u32(pos + 4);
      continue;
    }
    if (magic !== 0xfd2fb528) return null;
    const fhd = data[pos + 4]!;
    if (fhd & 8) return null;
    const single = (fhd >> 5) & 1;
    const fcsFlag = fhd >> 6;
    let p = pos + 5;
    let ws = 0;
    if (!single) {
      let wd = data[p]!;
      // The window a frame declares is what its compressor was allowed to look back, not what its
      // data can use: no match reaches before the frame's start, so a window of the frame's whole
      // output is enough. With `narrowTo` (the most the output may be), a larger window is written
      // down to the least power of two from 128 KiB (a block's most) that holds it: the decoder
      // allocates, and shifts for every block, the window (2 MiB at level 3, 8 MiB at level 19),
      // ~7-40 ms for a document of a few KB.
      if (narrowTo !== undefined) {
        const e = Math.max(7, Math.ceil(Math.log2(Math.max(narrowTo, 1) / 1024)));
        if (e < wd >> 3 || (e === wd >> 3 && (wd & 7) > 0)) data[p] = wd = e << 3;
      }
      p++;
      const wb = 2 ** (10 + (wd >> 3));
      ws = wb + (wb / 8) * (wd & 7);
    }
    p += [0, 1, 2, 4][fhd & 3]!;
    const fcsBytes = fcsFlag === 0 ? single : 1 << fcsFlag;
    if (p + fcsBytes > data.length) return null;
    let fcs = 0;
    for (let i = fcsBytes - 1; i >= 0; i--) fcs = fcs * 256 + data[p + i]!;
    if (fcsFlag === 1) fcs += 256;
    p += fcsBytes;
    if (single) ws = fcs;
    window = Math.max(window, ws);
    declared += fcs;
    for (;;) {
      if (p + 3 > data.length) return null;
      const bh = data[p]! | (data[p + 1]! << 8) | (data[p + 2]! << 16);
      p += 3;
      const type = (bh >> 1) & 3;
      if (type === 3) return null;
      p += type === 1 ? 1 : bh >>> 3;
      if (bh & 1) break;
    }
    if ((fhd >> 2) & 1) p += 4;
    if (p > data.length) return null;
    pos = p;
  }
  return { window, declared };
}

/**
 * zstd decoding of a small artifact's whole stored (decrypted) bytes, as a stream stage: the bytes
 * are gathered (at most SMALL_ZSTD_STORED_MAX: the caller checks the signed stored size), then
 * decoded here when zstdFrameBounds allows it, else by the zstd process. Either way no more than
 * `maxBytes` come out: past it the stage fails with `tooLong(bytes)`.
 */
export function zstdDecompressSmall(maxBytes: number, tooLong: (bytes: number) => Error): Duplex {
  const chunks: Buffer[] = [];
  let stored = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      stored += chunk.length;
      if (stored > SMALL_ZSTD_STORED_MAX) {
        cb(new TandemError('integrity', 'ZSTD_SMALL_TOO_LONG', `more than ${SMALL_ZSTD_STORED_MAX} compressed bytes where a small artifact was expected`));
        return;
      }
      chunks.push(chunk);
      cb();
    },
    flush(cb) {
      const data = Buffer.concat(chunks, stored);
      chunks.length = 0;
      let out = 0;
      /** A piece of the plain bytes passed on, or the error once they run past maxBytes. */
      const emit = (piece: Buffer): Error | undefined => {
        out += piece.length;
        if (out > maxBytes) return tooLong(out);
        if (piece.length > 0) this.push(piece);
        return undefined;
      };
      // Windows narrowed in a copy: the zstd process, if it comes to that, gets the bytes as stored.
      const narrowed = Buffer.from(data);
      const bounds = zstdFrameBounds(narrowed, maxBytes);
      if (bounds !== null && bounds.window <= SMALL_WINDOW_MAX && bounds.declared <= maxBytes) {
        try {
          // Synchronous: the count stops the decoder itself, before a later stage could.
          new Decompress((piece) => {
            const err = emit(Buffer.from(piece));
            if (err) throw err;
          }).push(narrowed, true);
          cb();
        } catch (err) {
          cb(asError(err));
        }
        return;
      }
      const sink = new Writable({ write: (piece: Buffer, _enc, next) => next(emit(piece)) });
      pipeline(Readable.from([data]), zstdDecompress(), sink).then(() => cb(), (err: unknown) => cb(asError(err)));
    },
  });
}
