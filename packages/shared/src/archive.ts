/**
 * Tar archives of site directories, and an extractor that treats every archive as hostile.
 *
 * Creating: GNU tar (POSIX pax format), because it was 2-15x faster than node-tar on this machine
 * kind (~200 MB of random files, warm cache): GNU tar 820-1000 MB/s for 850 files of 1 KB-10 MB and
 * 310-430 MB/s for 20,000 files of 0.1-8 KB; node-tar 412 MB/s and 25 MB/s (its per-file overhead
 * dominates). Entries are "./"-prefixed, sorted by name, with numeric owners and no atime/ctime.
 *
 * Extracting: node-tar's strict Parser reads the stream; the file system work is done here, in
 * archive order, and every entry is checked before anything is written for it (small files are
 * written a few at a time on the libuv pool, and links wait for those writes). The extractor never
 * follows a symlink: it only walks through directories it made itself in this extraction.
 * - no absolute paths and no `..` segments; an entry may neither pass through nor replace a symlink
 *   (one of this archive: the target starts empty, and 0700);
 * - a symlink is carried as a symlink, whatever its target (absolute links to shared mounts are
 *   normal in media directories): since nothing is ever written or opened through it, where it
 *   points is the site's business, not the extractor's;
 * - hardlinks must point at a regular file extracted earlier, by a clean path;
 * - devices, fifos and unknown types are refused;
 * - files are created with O_EXCL|O_NOFOLLOW, directory modes and times set through an
 *   O_NOFOLLOW descriptor, so nothing existing is ever replaced or followed.
 *
 * The same rules (EntryRules) check the primary's own archives as they are made (createTarCheck):
 * whatever a standby would refuse fails the backup there, naming the entry, and is never committed.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { PassThrough, Transform, type TransformCallback } from 'node:stream';
import { Parser, type ReadEntry } from 'tar';
import { TandemError, describeError } from './errors.js';
import { OPEN_NEW_FILE, mkdirp } from './fsutil.js';
import { spawnSource } from './streams.js';

/**
 * A tar (pax) stream of the contents of `dir`: modes, mtimes (sub-second), symlinks as symlinks,
 * empty dirs, any file names. Streamed by GNU tar with bounded memory. A missing or unreadable
 * path makes the stream error (CHILD_FAILED) with tar's message, which names the path. A file that
 * changed or vanished while it was read (tar exit 1) is normal on a live site: the archive is still
 * complete and well-formed, so the stream ends normally and emits 'child-warning' naming the files.
 */
export function createTarStream(dir: string, opts: { label?: string } = {}): Readable {
  const abs = path.resolve(dir);
  const args = [
    '--create',
    '--file=-',
    '--format=pax',
    '--pax-option=delete=atime,delete=ctime',
    '--sort=name',
    '--numeric-owner',
    `--directory=${abs}`,
    '.',
  ];
  return spawnSource('tar', args, {
    label: opts.label ?? `tar of ${abs}`,
    package: 'tar',
    // C locale: raw byte names in, raw bytes out, and untranslated messages.
    env: { ...process.env, LC_ALL: 'C' },
    hint: `check that ${abs} exists and is readable by this user`,
    warningExitCodes: [1],
  });
}

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

const UNSAFE = 'ARCHIVE_UNSAFE_ENTRY';

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
  try {
    await prepareTarget(root, opts.label);
  } catch (err) {
    source.destroy(err as Error); // or whatever feeds it would wait forever
    throw err;
  }
  const x = new Extractor(root, opts);
  try {
    await runParser(source, opts.label, (entry) => x.entry(entry));
  } catch (err) {
    // No write may still be running when the caller removes what was extracted.
    await x.settle().catch(() => {});
    throw err;
  }
  await x.finish();
  return { entries: x.entries, bytes: x.bytes };
}

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

/**
 * For the primary: a pass-through for the tar stream of `dir` (createTarStream) that applies the
 * standby's rules (EntryRules) to every entry as it passes, so that an archive a standby would
 * refuse fails the backup, naming the entry and the file in `dir`, instead of being committed.
 * It also refuses a name that is not valid UTF-8 (a standby would restore it under another name,
 * and two of them as one). The stream errors with `permanent`/ARCHIVE_UNSUPPORTED_ENTRY, or
 * ARCHIVE_CORRUPT if the archive cannot be read back.
 */
export function createTarCheck(dir: string, opts: { label: string }): Transform {
  return new TarCheck(path.resolve(dir), opts.label);
}

class TarCheck extends Transform {
  readonly #copy = new PassThrough({ highWaterMark: 1 << 20 });
  readonly #done: Promise<void>;
  #failure: Error | undefined;

  constructor(root: string, label: string) {
    super({ highWaterMark: 1 << 20 });
    const rules = new EntryRules();
    const onEntry = async (e: ReadEntry): Promise<void> => {
      e.resume();
      const why = rules.check(e) ?? (await nameProblem(root, e));
      if (why !== undefined) throw unsupported(label, root, e.path, why);
    };
    guardEarlyErrors(this.#copy);
    this.#done = runParser(this.#copy, label, onEntry, true);
    this.#done.catch((err: unknown) => {
      this.#failure = err instanceof Error ? err : new Error(String(err));
      this.destroy(this.#failure);
    });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.#failure) return cb(this.#failure);
    if (this.#copy.write(chunk)) return cb(null, chunk);
    this.#copy.once('drain', () => cb(this.#failure ?? null, chunk));
  }

  override _flush(cb: TransformCallback): void {
    this.#copy.end();
    this.#done.then(() => cb(), (err: unknown) => cb(err as Error));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.#copy.destroyed) this.#copy.destroy();
    cb(err);
  }
}

function unsupported(label: string, root: string, entryPath: string, why: string): TandemError {
  const rel = normalize(entryPath);
  return new TandemError(
    'permanent',
    'ARCHIVE_UNSUPPORTED_ENTRY',
    `${label}: ${JSON.stringify(entryPath)} (${rel === '' ? root : path.join(root, rel)}) cannot be backed up: ${why}; a standby would refuse the whole set, so nothing was committed`,
    { hint: 'remove it or move it out of the directory (tandem carries regular files, directories, symlinks and hardlinks between regular files), then back up again' },
  );
}

/**
 * A name node-tar could only decode with U+FFFD in it is not valid UTF-8 on disk (unless the file's
 * real name holds U+FFFD, which the file system then confirms).
 */
async function nameProblem(root: string, e: ReadEntry): Promise<string | undefined> {
  const bad = (s: string | undefined) => s !== undefined && s.includes('\uFFFD');
  if (!bad(e.path) && !(e.type === 'SymbolicLink' && bad(e.linkpath))) return undefined;
  const abs = path.join(root, normalize(e.path));
  if (bad(e.path) && !(await fsp.lstat(abs).then(() => true, () => false))) return 'its name is not valid UTF-8 (a standby would restore it under another name)';
  const raw = e.type === 'SymbolicLink' && bad(e.linkpath) ? await fsp.readlink(abs, { encoding: 'buffer' }).catch(() => undefined) : undefined;
  if (raw !== undefined && !raw.equals(Buffer.from(e.linkpath!, 'utf8'))) {
    return 'its symlink target is not valid UTF-8 (a standby would restore another target)';
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------

/**
 * What the extractor refuses, decided from the archive alone (paths, types, link targets and the
 * entries before): shared by extractTarSafe and by the primary's check of its own archives, so the
 * two cannot disagree. `check` returns why an entry must be refused, or records it and returns
 * undefined. (The extractor also lets the file system refuse what already exists.)
 */
class EntryRules {
  /** Paths (relative, normalized) of the symlinks and directories so far. */
  readonly #symlinks = new Set<string>();
  readonly #dirs = new Set<string>();

  check(e: { path: string; type: string; linkpath?: string }): string | undefined {
    const why = this.#pathProblem(e.path);
    if (why !== undefined) return `path ${why}`;
    const rel = normalize(e.path);
    if (rel === '' && e.type !== 'Directory') return `a ${e.type} cannot replace the target directory`;
    switch (e.type) {
      case 'File':
      case 'OldFile':
      case 'ContiguousFile':
        return undefined;
      case 'Directory':
        this.#dirs.add(rel);
        return undefined;
      case 'SymbolicLink': {
        const target = e.linkpath ?? '';
        if (target === '' || target.includes('\0')) return 'symlink without a valid target';
        this.#symlinks.add(rel);
        return undefined;
      }
      case 'Link': {
        const linkpath = e.linkpath ?? '';
        const bad = this.#pathProblem(linkpath);
        if (bad !== undefined) return `hardlink target ${JSON.stringify(linkpath)} ${bad}`;
        const target = normalize(linkpath);
        if (target === '' || this.#dirs.has(target)) return `hardlink target ${JSON.stringify(linkpath)} is missing or not a regular file from this archive`;
        return undefined;
      }
      default:
        // CharacterDevice, BlockDevice, FIFO, GNUDumpDir: nothing a site backup needs.
        return `${e.type} entries are not allowed`;
    }
  }

  /** Why an archive path is unsafe, or undefined: absolute, `..`, NUL, or is/passes through a symlink. */
  #pathProblem(p: string): string | undefined {
    if (p.startsWith('/')) return 'is absolute';
    if (p.includes('\0')) return 'contains a NUL byte';
    const parts = split(p);
    if (parts.includes('..')) return "contains '..'";
    for (let i = 1; i <= parts.length; i++) {
      const prefix = parts.slice(0, i).join('/');
      if (this.#symlinks.has(prefix)) {
        return i < parts.length ? `passes through the symlink ${JSON.stringify(prefix)}` : `is the symlink ${JSON.stringify(prefix)}`;
      }
    }
    return undefined;
  }
}

function unsafe(label: string, entryPath: string, why: string): TandemError {
  return new TandemError('integrity', UNSAFE, `${label}: refusing archive entry ${JSON.stringify(entryPath)}: ${why}`, {
    hint: 'tandem does not restore such an entry, and a primary of this version refuses to back one up: the set was made by an older one; nothing outside the target was written',
  });
}

function limitError(label: string, what: string): TandemError {
  return new TandemError('permanent', 'ARCHIVE_LIMIT_EXCEEDED', `${label}: archive has ${what}`, {
    hint: 'raise the limit if the site really is this large',
  });
}

/**
 * A source that fails before we start reading it (zstd rejecting its input while we create the
 * target) would emit 'error' with no listener and crash the process. The error is not lost: the
 * async iterator reports a stream's stored error (`stream.errored`) when reading starts.
 */
function guardEarlyErrors(source: Readable): void {
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

async function prepareTarget(root: string, label: string): Promise<void> {
  try {
    await mkdirp(root, 0o700);
    const st = await fsp.lstat(root);
    if (!st.isDirectory()) throw new Error('not a directory');
    if ((await fsp.readdir(root)).length > 0) throw new Error('directory is not empty');
    await fsp.chmod(root, 0o700);
  } catch (err) {
    throw new TandemError('permanent', 'EXTRACT_TARGET_INVALID', `${label}: cannot extract into ${root}: ${describeError(err)}`, {
      hint: 'the extraction target must not exist yet or be an empty directory',
      cause: err,
    });
  }
}

/**
 * Feed `source` to a strict node-tar Parser and run `onEntry` for each entry, one at a time and in
 * order (an entry's data waits in its ReadEntry, with the parser held back by backpressure, until
 * the previous entry is done). Rejects with the first failure: the source's error, a parser error
 * (corrupt/truncated), or whatever onEntry throws. A stream without the end-of-archive marker is
 * treated as truncated even if it stops on an entry boundary.
 */
async function runParser(
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
    if (!source.destroyed) source.destroy(err instanceof Error ? err : new Error(String(err)));
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

  try {
    for await (const chunk of source) {
      if (failure !== undefined) break;
      if (!parser.write(chunk as Buffer)) {
        await Promise.race([new Promise((resolve) => parser.once('drain', resolve)), failed]);
      }
    }
  } catch (err) {
    fail(err); // the source's own error (e.g. zstd or decryption failure) is the root cause
  }
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
 * Seconds for utimes(). Node passes times as a double number of seconds and libuv truncates the
 * fraction to nanoseconds, which lands a few hundred ns below the exact millisecond about half of
 * the time (so the restored mtime would read 1 ms early). Half a microsecond on top keeps the
 * millisecond exact without ever reaching the next one.
 */
const utime = (d: Date): number => d.getTime() / 1000 + 5e-7;

/** Path segments without '' and '.': "./a//b/" -> ["a", "b"]. */
const split = (p: string): string[] => p.split('/').filter((s) => s !== '' && s !== '.');
const normalize = (p: string): string => split(p).join('/');

/** Opens a directory for fchmod/futimes; fails (ELOOP, ENOTDIR) rather than follow a symlink. */
const OPEN_DIR_NOFOLLOW = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW;

const SMALL_FILE = 1024 * 1024;
const WRITE_BATCH = 1024 * 1024;
/**
 * Small files written at once. Creating a file costs ~0.3 ms of kernel time on a typical VM disk;
 * done one after another on the event loop, those calls added to the decryption and the tar parsing
 * instead of overlapping them. With a few writes on the libuv pool, the next entries are parsed
 * meanwhile. Memory: at most this many small files' data (1 MiB each) is held.
 */
const WRITES_IN_FLIGHT = 6;

/** The data of a file up to SMALL_FILE bytes, gathered from its entry. */
async function readSmallFile(e: ReadEntry): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of e as AsyncIterable<Buffer>) chunks.push(chunk);
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}

/**
 * Create `abs` (never an existing file, never through a symlink) with `data`, `mode` and times, on
 * the libuv pool: open, write, fchmod, futimes, close.
 */
function writeNewFile(abs: string, data: Buffer, mode: number, times: [number, number] | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.open(abs, OPEN_NEW_FILE, 0o600, (openErr, fd) => {
      if (openErr) return reject(openErr);
      const done = (err?: Error | null): void => fs.close(fd, (closeErr) => (err || closeErr ? reject(err ?? closeErr) : resolve()));
      const attrs = (): void =>
        fs.fchmod(fd, mode, (err) => (err || !times ? done(err) : fs.futimes(fd, times[0], times[1], done)));
      const write = (off: number): void => {
        if (off >= data.length) return attrs();
        fs.write(fd, data, off, data.length - off, null, (err, n) => (err ? done(err) : write(off + n)));
      };
      write(0);
    });
  });
}

/** Larger files stream through, written in batches of about 1 MiB. */
async function writeLargeFile(e: ReadEntry, abs: string, mode: number): Promise<number> {
  const fh = await fsp.open(abs, OPEN_NEW_FILE, 0o600);
  try {
    let written = 0;
    let batch: Buffer[] = [];
    let batched = 0;
    const flush = async () => {
      const data = Buffer.concat(batch, batched);
      for (let off = 0; off < data.length; ) off += (await fh.write(data, off)).bytesWritten;
      written += data.length;
      batch = [];
      batched = 0;
    };
    for await (const chunk of e as AsyncIterable<Buffer>) {
      batch.push(chunk);
      batched += chunk.length;
      if (batched >= WRITE_BATCH) await flush();
    }
    if (batched > 0) await flush();
    await fh.chmod(mode);
    if (e.mtime) await fh.utimes(utime(e.atime ?? e.mtime), utime(e.mtime));
    return written;
  } finally {
    await fh.close();
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
  /** Small-file writes running on the libuv pool, and the first of them that failed. */
  readonly #writes = new Set<Promise<void>>();
  #writeFailure: unknown;

  constructor(root: string, opts: ExtractOptions) {
    this.#root = root;
    this.#opts = opts;
  }

  async entry(e: ReadEntry): Promise<void> {
    const { label, maxEntries } = this.#opts;
    if (this.#writeFailure !== undefined) throw this.#writeFailure;
    this.entries++;
    if (maxEntries !== undefined && this.entries > maxEntries) {
      throw limitError(label, `more than ${maxEntries} entries (maxEntries) at ${JSON.stringify(e.path)}`);
    }
    const why = this.#rules.check(e);
    if (why !== undefined) throw unsafe(label, e.path, why);
    const rel = normalize(e.path);
    const abs = rel === '' ? this.#root : path.join(this.#root, rel);
    try {
      // Links depend on what exists: the files written so far must be there first. (A directory
      // does not: its parents were made before any file under them was started, and a file in
      // flight at the same path fails one of the two with EEXIST either way.)
      if (e.type === 'SymbolicLink' || e.type === 'Link') await this.settle();
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

  /** Wait for every file write in flight; throws the first write failure. */
  async settle(): Promise<void> {
    while (this.#writes.size > 0) await Promise.all(this.#writes);
    if (this.#writeFailure !== undefined) throw this.#writeFailure;
  }

  /**
   * Apply the deferred directory modes and mtimes, deepest first, through a descriptor opened with
   * O_NOFOLLOW: a path that is not (or no longer) a directory fails here instead of being followed.
   */
  async finish(): Promise<void> {
    await this.settle();
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
    if (e.size > SMALL_FILE) {
      const written = await writeLargeFile(e, abs, mode);
      if (written !== e.size) throw truncated(written);
      this.bytes += written;
      return;
    }
    const data = await readSmallFile(e);
    if (data.length !== e.size) throw truncated(data.length);
    this.bytes += data.length;
    const times = e.mtime ? ([utime(e.atime ?? e.mtime), utime(e.mtime)] as [number, number]) : undefined;
    const write: Promise<void> = writeNewFile(abs, data, mode, times)
      .catch((err: unknown) => {
        this.#writeFailure ??= this.#explain(e.path, err);
      })
      .finally(() => this.#writes.delete(write));
    this.#writes.add(write);
    if (this.#writes.size >= WRITES_IN_FLIGHT) await Promise.race(this.#writes);
    if (this.#writeFailure !== undefined) throw this.#writeFailure;
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
