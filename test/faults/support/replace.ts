/**
 * The attacker who can write one object into the filestore but holds no signing key: they replace an
 * artifact of a committed set with bytes of their own, of exactly the signed stored size, encrypted
 * to the recipient the manifest lists. Helpers to build such objects (a zstd bomb, any zstd stream
 * padded to size) and to watch what an apply writes to disk while it refuses them.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createAgeEncryptStream, loadRecipients, zstdCompress } from '@tandem/shared';
import type { StandbySite } from '../../support/standby-helpers.js';

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const BLOCK = 128 * 1024;

/**
 * A zstd frame that decompresses to `bytes` zero bytes (a multiple of 128 KiB), made of RLE blocks:
 * 4 bytes per 128 KiB, so 1 GiB fits in 32 KiB. No content size in the header, no checksum.
 */
export function zstdBomb(bytes: number): Buffer {
  const blocks = Math.max(1, Math.floor(bytes / BLOCK));
  // Frame header descriptor 0x00 (no content size, not single-segment, no checksum), then a window
  // descriptor of 128 KiB (exponent 7: 2^(10+7)).
  const out = [ZSTD_MAGIC, Buffer.from([0x00, 7 << 3])];
  for (let i = 0; i < blocks; i++) {
    const last = i === blocks - 1 ? 1 : 0;
    const h = (BLOCK << 3) | (1 << 1) | last; // Block_Size | Block_Type RLE | Last_Block
    out.push(Buffer.from([h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, 0x00]));
  }
  return Buffer.concat(out);
}

export const bombBytes = (frame: Buffer): number => ((frame.length - 6) / 4) * BLOCK;

/** A skippable zstd frame of `total` bytes (8 of header): `zstd -d` reads past it and outputs nothing. */
function skippable(total: number): Buffer {
  if (total < 8) throw new Error(`a skippable frame needs at least 8 bytes, not ${total}`);
  const h = Buffer.alloc(8);
  h.writeUInt32LE(0x184d2a50, 0);
  h.writeUInt32LE(total - 8, 4);
  return Buffer.concat([h, Buffer.alloc(total - 8, 0x41)]);
}

async function seal(s: StandbySite, plain: Buffer): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from([plain]), createAgeEncryptStream(loadRecipients(s.keys.recipientFile)), async function* (src: AsyncIterable<Buffer>) {
    for await (const c of src) out.push(c);
  });
  return Buffer.concat(out);
}

/**
 * `zst` (one or more zstd frames), padded with a skippable frame and age-encrypted to the site's
 * recipient so that the object is exactly `storedSize` bytes, as the signed manifest says.
 */
export async function sealToSize(s: StandbySite, zst: Buffer, storedSize: number): Promise<Buffer> {
  let plainLen = storedSize - 300;
  for (let i = 0; i < 6; i++) {
    const sealed = await seal(s, Buffer.concat([zst, skippable(plainLen - zst.length)]));
    if (sealed.length === storedSize) return sealed;
    plainLen += storedSize - sealed.length; // the age overhead only moves at 64 KiB chunk boundaries
  }
  throw new Error(`cannot seal ${zst.length} bytes of zstd into exactly ${storedSize} stored bytes`);
}

export interface DiskWatch<T> {
  result: T;
  /** The most bytes of regular files seen under `bytesUnder` at one time. */
  maxBytes: number;
  /** Every path (relative to its watched dir's parent) seen under `pathsUnder` whose name matches `names`. */
  paths: Set<string>;
  samples: number;
}

function fileBytes(dir: string): number {
  let n = 0;
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0; // gone meanwhile
  }
  for (const e of entries) {
    const abs = join(dir, e.name);
    if (e.isDirectory()) n += fileBytes(abs);
    else if (e.isFile()) {
      try {
        n += lstatSync(abs).size;
      } catch {
        /* removed meanwhile */
      }
    }
  }
  return n;
}

function collect(dir: string, base: string, names: RegExp, into: Set<string>, depth = 0): void {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const abs = join(dir, e.name);
    if (names.test(e.name)) into.add(relative(base, abs));
    if (e.isDirectory() && depth < 6) collect(abs, base, names, into, depth + 1);
  }
}

/**
 * Samples the disk as fast as it can while `run` (a child process: the apply) is under way: the
 * regular-file bytes under `bytesUnder`, and the paths under `pathsUnder` whose name matches `names`.
 * Sampling is synchronous and takes well under a millisecond for these small trees, so a file that
 * exists for more than a few milliseconds is seen.
 */
export async function watchDisk<T>(o: { bytesUnder: string; pathsUnder: string; names: RegExp }, run: Promise<T>): Promise<DiskWatch<T>> {
  let done = false;
  const settled = run.finally(() => {
    done = true;
  });
  let maxBytes = 0;
  let samples = 0;
  const paths = new Set<string>();
  const sample = () => {
    maxBytes = Math.max(maxBytes, fileBytes(o.bytesUnder));
    collect(o.pathsUnder, o.pathsUnder, o.names, paths);
    samples++;
  };
  while (!done) {
    sample();
    await new Promise((r) => setImmediate(r));
  }
  sample();
  return { result: await settled, maxBytes, paths, samples };
}

/** Regular-file bytes under `dir`, recursively (0 if it does not exist). */
export const bytesUnder = (dir: string): number => fileBytes(dir);

/** zstd of `plain` (the CLI, as the primary compresses). */
export async function zstdOf(plain: Buffer): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from([plain]), zstdCompress(), async function* (src: AsyncIterable<Buffer>) {
    for await (const c of src) out.push(c);
  });
  return Buffer.concat(out);
}
