import { randomBytes } from 'node:crypto';
import { constants, writeSync } from 'node:fs';
import { mkdir, open, rename, rm, statfs, type FileHandle } from 'node:fs/promises';
import { dirname, join, basename, resolve } from 'node:path';

/** open() flags for creating a file that must not exist yet, never through a symlink. */
export const OPEN_NEW_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** All of `data` written to `fd` (writeSync may write less than asked), at `position` or where the file is. */
export function writeAllSync(fd: number, data: Buffer, position?: number): void {
  for (let i = 0; i < data.length; ) i += writeSync(fd, data, i, data.length - i, position === undefined ? null : position + i);
}

/**
 * Bytes and text bound for `fd`, copied once into one buffer and written when it is full; a piece
 * as large as the buffer is written as it is. A buffer per piece, joined again to be written, was
 * two copies of everything and many buffers outside V8's heap, which it collects only tens of MB
 * later: a standby's peak RSS moved with them (the record's lines and the page cache of an apply
 * of 100,000 files, tens of MB).
 */
export class GatherWriter {
  readonly #fd: number;
  readonly #buf: Buffer;
  #used = 0;

  constructor(fd: number, size: number) {
    this.#fd = fd;
    this.#buf = Buffer.allocUnsafe(size);
  }

  /** `bytes` after what was given before (copied: the caller may reuse its buffer). */
  bytes(bytes: Buffer): void {
    if (bytes.length > this.#buf.length - this.#used) {
      this.flush();
      if (bytes.length >= this.#buf.length) {
        writeAllSync(this.#fd, bytes);
        return;
      }
    }
    bytes.copy(this.#buf, this.#used);
    this.#used += bytes.length;
  }

  /** `text` as UTF-8, encoded straight into the buffer when it fits (at 3 bytes a UTF-16 unit at most). */
  text(text: string): void {
    if (text.length * 3 > this.#buf.length - this.#used) {
      this.flush();
      if (text.length * 3 > this.#buf.length) {
        writeAllSync(this.#fd, Buffer.from(text));
        return;
      }
    }
    this.#used += this.#buf.write(text, this.#used);
  }

  /** What is gathered, written. */
  flush(): void {
    if (this.#used === 0) return;
    writeAllSync(this.#fd, this.#buf.subarray(0, this.#used));
    this.#used = 0;
  }
}

/**
 * `mkdir -p` that reports the real reason it failed. Node 20's recursive mkdir says ENOENT when a
 * component cannot be created on a read-only file system (EROFS), which callers then report as
 * "does not exist". On ENOENT this creates the missing components one by one, so the error that
 * surfaces is the real one (EROFS, EACCES, ENOTDIR ...).
 */
export async function mkdirp(dir: string, mode?: number): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    const missing: string[] = [];
    for (let p = resolve(dir); ; p = dirname(p)) {
      missing.unshift(p);
      if (dirname(p) === p) break;
    }
    for (const p of missing) {
      try {
        await mkdir(p, { mode });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
  }
}

/** fsync a directory so a rename inside it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Write a small file atomically: tmp beside it, fsync, rename, fsync the directory.
 * A crash leaves the old content or the new one; the tmp is removed on failure.
 */
export async function writeFileAtomic(path: string, data: string | Buffer, mode = 0o600): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.chmod(mode);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    await fsyncDir(dir);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Bytes available to this user on the file system holding `dir`, or undefined if unknown. */
export async function freeBytes(dir: string): Promise<number | undefined> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  } catch {
    return undefined;
  }
}

/**
 * Writes `bufs` whole, in order, from `position` (the file's current position when null): one
 * writev, again for what a short write left. The pieces are not joined first.
 */
export async function writevAll(fh: FileHandle, bufs: Buffer[], position: number | null = null): Promise<void> {
  let left = bufs;
  let at = position;
  while (left.length > 0) {
    const { bytesWritten: n } = await fh.writev(left, at ?? undefined);
    if (at !== null) at += n;
    left = piecesAfter(left, n);
  }
}

/** What is left of `bufs` (pieces written in order) after their first `n` bytes, without copying. */
export function piecesAfter(bufs: Buffer[], n: number): Buffer[] {
  const rest: Buffer[] = [];
  for (const b of bufs) {
    if (n >= b.length) n -= b.length;
    else {
      rest.push(n > 0 ? b.subarray(n) : b);
      n = 0;
    }
  }
  return rest;
}
