/**
 * Extracting: node-tar's strict Parser reads the stream; the file system work is done here, in
 * archive order, and every entry is checked before anything is written for it (small files are
 * written with direct system calls as they arrive, larger ones stream through the libuv pool). The
 * extractor never follows a symlink: it only walks through directories it made itself in this
 * extraction.
 * - no absolute paths and no `..` segments; an entry may neither pass through nor replace a symlink
 *   (one of this archive: the target starts empty, and 0700);
 * - a symlink is carried as a symlink, whatever its target (absolute links to shared mounts are
 *   normal in media directories): since nothing is ever written or opened through it, where it
 *   points is the site's business, not the extractor's;
 * - hardlinks must point at a regular file extracted earlier, by a clean path;
 * - devices, fifos and unknown types are refused;
 * - files are created with O_EXCL|O_NOFOLLOW, directory modes and times set through an
 *   O_NOFOLLOW descriptor, so nothing existing is ever replaced or followed.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { ReadEntry } from 'tar';
import { TandemError, describeError } from '../errors.js';
import { OPEN_NEW_FILE, mkdirp, writeAllSync } from '../fsutil.js';
import { DIRECT_OPEN, WriteBehind, openNewAsync } from '../write-behind.js';
import { EntryRules, normalize, unsafe } from './entry-rules.js';
import { guardEarlyErrors, limitError, runParser } from './parse.js';

export interface ExtractOptions {
  /** Names the archive in errors, e.g. "files of set 20261122T030000Z-e1-000042". */
  label: string;
  /** Force this mode on every regular file (e.g. 0o600 for secrets). Default: archived mode & 0o777. */
  fileMode?: number;
  /** Force this mode on every directory (e.g. 0o700). Default: archived mode & 0o777. */
  dirMode?: number;
  /** Refuse archives with more entries than this (all types count). */
  maxEntries?: number;
  /** Refuse archives whose regular files hold more bytes than this in total. */
  maxBytes?: number;
}

/**
 * Extract a tar stream into `targetDir`, which must not exist or be an empty directory (it is
 * created with mode 0700, and stays 0700 until the end, when the archive's own "./" entry, or
 * `dirMode`, sets its final mode). Modes lose setuid/setgid/sticky bits; owners are not restored
 * (everything belongs to the extracting user); mtimes are restored, to the millisecond, for files,
 * dirs and symlinks. Parent directories the archive does not list get 0700 (or `dirMode`).
 *
 * Throws TandemError: `integrity`/ARCHIVE_UNSAFE_ENTRY for an entry that could escape the target
 * (see the module comment), `integrity`/ARCHIVE_CORRUPT for a malformed or truncated archive,
 * `permanent`/ARCHIVE_LIMIT_EXCEEDED for maxEntries/maxBytes, `permanent`/EXTRACT_FAILED for file
 * system errors, or the source stream's own error.
 *
 * On error, whatever was already extracted stays in `targetDir` for the caller to delete; nothing
 * outside `targetDir` has been created, written or followed.
 * Memory: bounded by the stream buffers plus one small record per directory and per symlink.
 */
export async function extractTarSafe(
  source: Readable,
  targetDir: string,
  opts: ExtractOptions,
): Promise<{ entries: number; bytes: number }> {
  const root = path.resolve(targetDir);
  guardEarlyErrors(source);
  // The target is made when the first entry arrives, not before: an archive that streams in as it
  // is verified (artifact-stream.ts) and fails its first check leaves nothing behind.
  let prepared: Promise<void> | undefined;
  const prepare = (): Promise<void> => (prepared ??= prepareTarget(root, opts.label));
  const x = new Extractor(root, opts);
  try {
    await runParser(source, opts.label, async (entry) => {
      await prepare();
      await x.entry(entry);
    });
    await prepare(); // an archive without entries still makes its (empty) target
    await x.finish();
  } finally {
    await x.settle();
  }
  return { entries: x.entries, bytes: x.bytes };
}

async function prepareTarget(root: string, label: string): Promise<void> {
  const invalid = (why: string, cause?: unknown): TandemError =>
    new TandemError('permanent', 'EXTRACT_TARGET_INVALID', `${label}: cannot extract into ${root}: ${why}`, {
      hint: 'the extraction target must not exist yet or be an empty directory',
      cause,
    });
  let refusal: string | undefined;
  try {
    await mkdirp(root, 0o700);
    if (!(await fsp.lstat(root)).isDirectory()) refusal = 'not a directory';
    else if ((await fsp.readdir(root)).length > 0) refusal = 'directory is not empty';
    else await fsp.chmod(root, 0o700);
  } catch (err) {
    throw invalid(describeError(err), err);
  }
  if (refusal !== undefined) throw invalid(refusal);
}


/**
 * Seconds for utimes(). Node passes times as a double number of seconds and libuv truncates the
 * fraction to nanoseconds, which lands a few hundred ns below the exact millisecond about half of
 * the time (so the restored mtime would read 1 ms early). Half a microsecond on top keeps the
 * millisecond exact without ever reaching the next one.
 */
const utime = (d: Date): number => d.getTime() / 1000 + 5e-7;

/** Opens a directory for fchmod/futimes; fails (ELOOP, ENOTDIR) rather than follow a symlink. */
const OPEN_DIR_NOFOLLOW = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW;

/**
 * Files of this size or more are written behind (WriteBehind: on the thread pool, with O_DIRECT
 * where the target's file system takes it), while the archive is decrypted and parsed further;
 * smaller ones are gathered and written at once on this thread.
 */
const BEHIND_MIN = 64 * 1024;

/** The data of a file under BEHIND_MIN bytes, gathered from its entry. */
async function readSmallFile(e: ReadEntry): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of e as AsyncIterable<Buffer>) chunks.push(chunk);
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}

/**
 * Create `abs` (never an existing file, never through a symlink) with `data`, `mode` and times:
 * open, write, fchmod, futimes, close, called directly on this thread. On the libuv pool each of
 * those five calls is a hand-off to a pool thread and back; for the many small files of a media
 * tree (2,805 in the bench tree) the hand-offs cost this thread more than the calls themselves
 * (about 0.3 s against 0.19 s per 500 MB on a 2-core VM) and let the pool threads compete with it
 * for the cores.
 */
function writeNewFile(abs: string, data: Buffer, mode: number, times: [number, number] | undefined): void {
  const fd = fs.openSync(abs, OPEN_NEW_FILE, 0o600);
  try {
    writeAllSync(fd, data);
    fs.fchmodSync(fd, mode);
    if (times) fs.futimesSync(fd, times[0], times[1]);
  } finally {
    fs.closeSync(fd);
  }
}

interface DirAttrs {
  abs: string;
  depth: number;
  mode: number;
  mtime: Date | undefined;
}

/** The file system side of extractTarSafe. Entries arrive one at a time, in archive order. */
class Extractor {
  entries = 0;
  bytes = 0;
  readonly #root: string;
  readonly #opts: ExtractOptions;
  readonly #rules = new EntryRules();
  /** Directory modes and mtimes, applied at the end: children change a dir's mtime, and a
   * read-only dir mode would stop us creating its children. */
  readonly #dirs: DirAttrs[] = [];
  #lastParent = '';
  /** The larger files' writes, finished (mode, times, closed) in archive order as they complete. */
  readonly #behind = new WriteBehind(4 << 20);
  #directTried = false;

  constructor(root: string, opts: ExtractOptions) {
    this.#root = root;
    this.#opts = opts;
  }

  async entry(e: ReadEntry): Promise<void> {
    const { label, maxEntries } = this.#opts;
    this.entries++;
    if (maxEntries !== undefined && this.entries > maxEntries) {
      throw limitError(label, `more than ${maxEntries} entries (maxEntries) at ${JSON.stringify(e.path)}`);
    }
    const why = this.#rules.check(e);
    if (why !== undefined) throw unsafe(label, e.path, why);
    const rel = normalize(e.path);
    const abs = rel === '' ? this.#root : path.join(this.#root, rel);
    try {
      // Every entry is complete on disk before the next one starts (links depend on what exists).
      switch (e.type) {
        case 'File':
        case 'OldFile':
        case 'ContiguousFile':
          return await this.#file(e, abs);
        case 'Directory':
          return await this.#dir(e, rel, abs);
        case 'SymbolicLink':
          return await this.#symlink(e, abs);
        case 'Link':
          return await this.#hardlink(e, abs);
        default:
          throw unsafe(label, e.path, `${e.type} entries are not allowed`); // EntryRules refused it already
      }
    } catch (err) {
      throw this.#explain(e.path, err);
    }
  }

  #explain(entryPath: string, err: unknown): unknown {
    const { label } = this.#opts;
    if (err instanceof TandemError) return err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return unsafe(label, entryPath, 'it already exists (duplicate entry)');
    if (code === 'ELOOP') return unsafe(label, entryPath, 'it is a symlink (O_NOFOLLOW)');
    return new TandemError('permanent', 'EXTRACT_FAILED', `${label}: cannot extract ${JSON.stringify(entryPath)}: ${describeError(err)}`, {
      cause: err,
    });
  }

  /**
   * Apply the deferred directory modes and mtimes, deepest first, through a descriptor opened with
   * O_NOFOLLOW: a path that is not (or no longer) a directory fails here instead of being followed.
   */
  async finish(): Promise<void> {
    try {
      await this.#behind.flush();
    } catch (err) {
      throw new TandemError('permanent', 'EXTRACT_FAILED', `${this.#opts.label}: cannot write the extracted files: ${describeError(err)}`, { cause: err });
    }
    this.#dirs.sort((a, b) => b.depth - a.depth);
    for (const d of this.#dirs) {
      const fh = await fsp.open(d.abs, OPEN_DIR_NOFOLLOW);
      try {
        await fh.chmod(d.mode);
        if (d.mtime) await fh.utimes(utime(d.mtime), utime(d.mtime));
      } finally {
        await fh.close();
      }
    }
  }

  /** Waits for the writes in flight and closes the files not finished (after a failure). */
  async settle(): Promise<void> {
    await this.#behind.settle();
  }

  /** A file of BEHIND_MIN bytes or more: its chunks handed to the writer as they come. */
  async #fileBehind(e: ReadEntry, abs: string, mode: number, times: [number, number] | undefined): Promise<number> {
    if (!this.#directTried) {
      this.#directTried = true;
      await this.#behind.enableDirect(this.#root);
    }
    const fd = await openNewAsync(abs, this.#behind.direct ? DIRECT_OPEN : OPEN_NEW_FILE);
    const slot = this.#behind.begin(
      fd,
      e.size,
      () => {
        fs.fchmodSync(fd, mode);
        if (times) fs.futimesSync(fd, times[0], times[1]);
      },
      { direct: true },
    );
    let written = 0;
    try {
      for await (const chunk of e as AsyncIterable<Buffer>) {
        this.#behind.write(slot, [chunk], written);
        written += chunk.length;
        if (this.#behind.full) await this.#behind.room();
      }
    } finally {
      this.#behind.end(slot);
    }
    return written;
  }

  async #parent(abs: string): Promise<void> {
    const parent = path.dirname(abs);
    if (parent === this.#lastParent || abs === this.#root) return;
    // Safe: EntryRules guarantees that no component of the path is a symlink, and the target
    // (empty, 0700, ours) holds nothing this extraction did not make.
    await mkdirp(parent, this.#opts.dirMode ?? 0o700);
    this.#lastParent = parent;
  }

  async #file(e: ReadEntry, abs: string): Promise<void> {
    const { label, maxBytes, fileMode } = this.#opts;
    if (maxBytes !== undefined && this.bytes + e.size > maxBytes) {
      throw limitError(label, `more than ${maxBytes} bytes of file data (maxBytes) at ${JSON.stringify(e.path)}`);
    }
    await this.#parent(abs);
    // fchmod, not the open() mode: the umask must not change the archived mode.
    const mode = fileMode ?? (e.mode ?? 0o644) & 0o777;
    const truncated = (written: number) =>
      new TandemError('integrity', 'ARCHIVE_CORRUPT', `${label}: ${JSON.stringify(e.path)} is truncated (${written} of ${e.size} bytes)`);
    const times = e.mtime ? ([utime(e.atime ?? e.mtime), utime(e.mtime)] as [number, number]) : undefined;
    if (e.size >= BEHIND_MIN) {
      const written = await this.#fileBehind(e, abs, mode, times);
      if (written !== e.size) throw truncated(written);
      this.bytes += written;
      return;
    }
    const data = await readSmallFile(e);
    if (data.length !== e.size) throw truncated(data.length);
    this.bytes += data.length;
    writeNewFile(abs, data, mode, times);
  }

  async #dir(e: ReadEntry, rel: string, abs: string): Promise<void> {
    e.resume();
    if (rel !== '') {
      await this.#parent(abs);
      try {
        await fsp.mkdir(abs, { mode: 0o700 });
      } catch (err) {
        // Fine if an earlier entry created it implicitly as a parent; lstat: never a symlink.
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !(await fsp.lstat(abs)).isDirectory()) throw err;
      }
    }
    const mode = this.#opts.dirMode ?? (e.mode ?? 0o755) & 0o777;
    this.#dirs.push({ abs, depth: rel === '' ? 0 : rel.split('/').length, mode, mtime: e.mtime });
  }

  /** The link itself, target as archived (EntryRules checked it is a valid one); never followed. */
  async #symlink(e: ReadEntry, abs: string): Promise<void> {
    e.resume();
    await this.#parent(abs);
    await fsp.symlink(e.linkpath!, abs);
    if (e.mtime) await fsp.lutimes(abs, utime(e.atime ?? e.mtime), utime(e.mtime));
  }

  async #hardlink(e: ReadEntry, abs: string): Promise<void> {
    e.resume();
    const { label } = this.#opts;
    const linkpath = e.linkpath ?? '';
    const targetRel = normalize(linkpath);
    const targetAbs = path.join(this.#root, targetRel);
    const st = targetRel === '' ? undefined : await fsp.lstat(targetAbs).catch(() => undefined);
    if (!st?.isFile()) {
      throw unsafe(label, e.path, `hardlink target ${JSON.stringify(linkpath)} is missing or not a regular file from this archive`);
    }
    await this.#parent(abs);
    await fsp.link(targetAbs, abs);
  }
}
