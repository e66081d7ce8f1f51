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
import type { Duplex } from 'node:stream';
import { TandemError } from './errors.js';
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
