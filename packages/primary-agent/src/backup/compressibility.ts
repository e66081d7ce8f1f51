import { constants } from 'node:fs';
import { open, opendir } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateRawSync, constants as zlib } from 'node:zlib';

/**
 * Whether a directory's files are worth compressing, judged from a sample before the archive is
 * made: media (JPEG, PNG, video, PDF, zip) is already compressed, and zstd over it only costs
 * time at both ends (the primary compresses ~500 MB/s for nothing; a standby pipes every byte
 * through a zstd process and back), while text, SVG, CSS, JSON or raw images shrink a lot.
 *
 * The sample: up to SAMPLE_BYTES from the start of up to SAMPLE_FILES regular files, in the walk
 * order of the archive (sorted names, depth first), at most MAX_SAMPLE_FROM_ONE from one file, so
 * that a directory of large videos and one of text both count. Compressed with deflate at level 1
 * (a close proxy for zstd -1 on this question, and in process): when it saves less than
 * MIN_SAVING of the sample, the archive is stored uncompressed. A wrong guess costs speed or
 * space, never correctness: the manifest names the compression of every artifact.
 */
const SAMPLE_FILES = 256;
const SAMPLE_BYTES = 8 << 20;
const MAX_SAMPLE_FROM_ONE = 64 << 10;
/** Compress when deflate -1 saves at least this share of the sample. */
const MIN_SAVING = 0.1;
/** Directories visited at most, so that a tree of empty directories cannot make the probe slow. */
const MAX_DIRS = 2_000;

export interface CompressibilityVerdict {
  compress: boolean;
  /** Plain bytes sampled, and what deflate made of them. */
  sampled: number;
  deflated: number;
  files: number;
}

export async function probeCompressibility(root: string): Promise<CompressibilityVerdict> {
  const pieces: Buffer[] = [];
  let sampled = 0;
  let files = 0;
  let dirs = 0;
  const walk = async (dir: string): Promise<void> => {
    if (files >= SAMPLE_FILES || sampled >= SAMPLE_BYTES || ++dirs > MAX_DIRS) return;
    let entries;
    try {
      const d = await opendir(dir);
      entries = [];
      for await (const e of d) entries.push(e);
    } catch {
      return; // unreadable: the archive itself will name it
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (files >= SAMPLE_FILES || sampled >= SAMPLE_BYTES) return;
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) {
        const got = await readHead(p, Math.min(MAX_SAMPLE_FROM_ONE, SAMPLE_BYTES - sampled));
        if (got.length === 0) continue;
        pieces.push(got);
        sampled += got.length;
        files++;
      }
    }
  };
  await walk(root);
  if (sampled === 0) return { compress: true, sampled: 0, deflated: 0, files: 0 };
  const deflated = deflateRawSync(Buffer.concat(pieces, sampled), { level: 1, strategy: zlib.Z_DEFAULT_STRATEGY }).length;
  return { compress: deflated <= sampled * (1 - MIN_SAVING), sampled, deflated, files };
}

/** The first `max` bytes of a file (fewer if it is shorter); nothing if it cannot be read. */
async function readHead(file: string, max: number): Promise<Buffer> {
  let fh;
  try {
    // Never through a symlink, and never blocking on a FIFO swapped in since the listing.
    fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    const buf = Buffer.allocUnsafe(max);
    let n = 0;
    while (n < max) {
      const { bytesRead } = await fh.read(buf, n, max - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return buf.subarray(0, n);
  } catch {
    return Buffer.alloc(0);
  } finally {
    await fh?.close();
  }
}
