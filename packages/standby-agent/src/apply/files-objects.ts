import * as nodeCrypto from 'node:crypto';
import { chmodSync, closeSync, constants as fsConstants, copyFileSync, createReadStream, existsSync, fchmodSync, fstatSync, ftruncateSync, futimesSync, linkSync, lstatSync, lutimesSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, renameSync, rmSync, symlinkSync, utimesSync, writeFileSync, type BigIntStats, type Stats } from 'node:fs';
import { appendFile, chmod, lstat, lutimes, mkdir, open, readlink, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  OPEN_NEW_FILE,
  GatherWriter,
  writeAllSync,
  PAGE_CACHE_FILE,
  PageCache,
  TandemError,
  blobSlices,
  formatBytes,
  freeBytes,
  objectMatches,
  openPackLocal,
  openPackPieces,
  pageLoader,
  type PackPlain,
  readFilesIndex,
  isS3Url,
  openFilestore,
  comparePaths,
  type FileEntry,
  type FilesKey,
  type Filestore,
  type Logger,
  type Manifest,
  type PackInfo,
  type PageShape,
  tightenHeapGrowth,
  type ArtifactEntry,
  fetchPackStored,
  fetchPackLocal,
  PackReadThread,
  DIRECT_OPEN,
  type FileSlot,
  WriteBehind,
  openNewAsync,
  probeDirectAsync,
} from '@tandem/shared';
import { artifactLabel, decodeStored, type StoredInput } from './artifact-stream.js';
import { faultPoint } from './fault.js';
import type { Names } from './targets.js';

/**
 * Applying a set whose files are content objects (cas/), at the cost of what changed.
 *
 * Staging (nothing live changes): the verified index is read once; a file is unchanged when the
 * standby's record (`files-record.ndjson` in the state dir, written by the last apply of this kind)
 * says this apply's predecessor wrote these very blobs at that path, and the live file still has the
 * inode, ctime and size it had then (ctime cannot be set back: any later change to the file shows).
 * Pages of the index the last apply had, and entries it left as they are, are not looked at on disk
 * (PAGES_FILE, stageFilesObjects): every file is, with --force and at least once a day.
 * Every other file is built in full in `<files>.tandem-new/data/` from the packs it needs: each pack
 * downloaded, checked against the size and SHA-256 of the signed index before a byte is decrypted,
 * inflated to exactly its signed plain size, each blob checked against its id, one pack fetched
 * ahead from a remote filestore. The plan (`plan.ndjson` beside) lists, in index order after the
 * removals, what the switch does.
 *
 * Switching (journaled like every part; run again from the start by a roll-forward, every step
 * idempotent): paths the set does not have are removed; directories made (a non-directory in their
 * place removed first, so no later step goes through a symlink it did not just check); each new or
 * changed file renamed into place, so a reader sees the old file or the new one, never a part;
 * symlinks made beside and renamed over; modes and mtimes set, directories' last, deepest first; the
 * record rewritten. Time and bytes are in proportion to the files that changed, not to the tree
 * (a readdir of each directory, and the record and page shapes read and written again, aside). A
 * first apply into an empty dir stages the tree whole under `tree/` and the switch renames only its
 * top-level entries.
 *
 * Why update in place rather than build a whole new tree and swap it (as for the tar format): a
 * new tree costs a copy or a hard link of every unchanged file and a removal of the old tree, in
 * proportion to the tree; with 50 GB of media that is most of an apply, for a 1% change. The price:
 * during the switch some files are the new set's and some the old's, which the site in backup mode
 * (the sentinel is written before) does not serve from, and a kill is finished by the roll-forward.
 */
export const FILES_RECORD = 'files-record.ndjson';
/**
 * Packs fetched ahead of the one being written, from a remote filestore (its latency then overlaps
 * the writes). From a directory none: reading a pack when it is needed measured as fast, and the
 * pack ahead cost 15-20 MiB of a full apply's peak (170-192 MiB against 182-208, three pairs).
 */
const prefetchFrom = (fs: Filestore): number => (fs.description.startsWith('file:') ? 0 : 1);
const HELD_PACKS = 3;
/** A kept file this large or larger is copied with direct reads and writes (WriteBehind.copyDirect) when those are on. */
const COPY_DIRECT_MIN = 1 << 20;
/** Files opened on the thread pool ahead of the one being written (WriteBehind, openNewAsync). */
const OPEN_AHEAD = 8;
/**
 * Whether packs are read from a directory filestore on a second thread (PackReadThread): for 8
 * packs or more (a change of a few packs does not pay for starting it), when the files to write
 * average 64 KiB or more. A tree of small files is bound by its file system calls, not by reading
 * and hashing packs, and there the thread's buffers cost 20-25 MiB of peak for no time (the first
 * apply of 100,000 small files: 190-197 MiB against 167-169 MiB, 8.9-10.2 s against 8.9-9.1 s).
 * TANDEM_PACK_THREAD_MIN=N alone decides when set: from N packs on (0 or 1: always; a large
 * number: never).
 */
const useReader = (packs: number, files: number, bytes: number): boolean => {
  const v = process.env.TANDEM_PACK_THREAD_MIN;
  if (v !== undefined && /^\d+$/.test(v)) return packs > 0 && packs >= Number(v);
  return packs >= 8 && bytes >= files * 64 * 1024;
};
/** An index of this many files makes the agent collect its heap sooner (tightenHeapGrowth). */
const MANY_FILES = 20_000;

interface RecordLine {
  p: string;
  /** Digest of the file's blob ids. */
  d: string;
  s: number;
  ino: string;
  ct: string;
  /**
   * A file of several blobs: each blob's length and id, in file order. When the set changes such
   * a file (an edited or appended video), the blobs it still has are read from the live file (at
   * these offsets, each checked against its id) instead of downloaded again.
   */
  b?: Array<[number, string]>;
}

type PlanOp =
  | { o: 'x'; p: string }
  | { o: 'd'; p: string; m: number; mt: number }
  /** k: the kept files' lines (kept.ndjson) before this file's in the record (none in a plan staged before k). */
  /** r: a regular file was at the path when the plan was made (the switch links it aside: REPLACED_DIR). */
  /** pt: the live file is patched in place with the staged bytes (PatchStep), not replaced by a staged copy. */
  | { o: 'f'; p: string; n: number; m: number; mt: number; d: string; s: number; k?: number; b?: Array<[number, string]>; r?: 1; pt?: PatchStep }
  /** k: this kept file's line in kept.ndjson (counted from 0), which the switch writes again. */
  | { o: 'm'; p: string; m: number; mt: number; k?: number }
  | { o: 'l'; p: string; n: number; l: string; mt: number }
  /** A first apply into an empty dir: a top-level entry staged whole in tree/ (m, mt: a directory's). */
  | { o: 't'; p: string; m?: number; mt?: number };

/**
 * A changed file patched in place (PlanOp pt): the live file as staging found it (the recorded
 * inode, ctime and size, one link), and the ranges of the new file, [offset, length] in order,
 * whose bytes the staged file holds end to end; every other byte is already in place.
 */
interface PatchStep {
  ino: string;
  ct: string;
  s: number;
  r: Array<[number, number]>;
}

/**
 * A changed file this large or larger, whose live copy is the one this standby wrote and keeps at
 * least half of the new bytes in place, is patched in place by the switch: only the bytes that
 * changed are written (to the staging, then into the live file), not a copy of the whole file.
 * Below it the copy costs a few ms and the file is replaced whole (see design.md).
 */
const PATCH_MIN = 4 << 20;

/**
 * Seconds for utimes from the index's milliseconds (µs precision): rounded to the nearest
 * nanosecond rather than cut, or half the files would come out 1 µs early and differ from the
 * index at every later apply.
 */
export const utimeOf = (mt: number): number => mt / 1000 + 5e-7;

/** The record's digest of a file's blob ids (files deltas record theirs the same way). */
export const blobsDigest = (e: Pick<FileEntry, 'b'>): string => sha256Hex(e.b.length === 1 ? e.b[0]![3] : e.b.map((b) => b[3]).join(',')).slice(0, 32);
/** One-shot crypto.hash where Node has it (20.12 on): a Hash object per file of the tree cost more than the hashing. */
const sha256Hex: (s: string | Buffer) => string =
  typeof nodeCrypto.hash === 'function' ? (s) => nodeCrypto.hash('sha256', s, 'hex') : (s) => nodeCrypto.createHash('sha256').update(s).digest('hex');
const recordFile = (stateDir: string) => join(stateDir, FILES_RECORD);
/** In the staging dir of a first apply into an empty dir: the record lines of the files staged in tree/. */
const TREE_RECORD = 'tree-record.ndjson';
/** In the staging dir: when an apply last looked at every file (for the record's first line). */
const CHECKED_FILE = 'checked.json';

/** The record's blob list of a file (RecordLine.b): only for a file of several blobs. */
export const recordBlobs = (e: Pick<FileEntry, 'b'>): Array<[number, string]> | undefined =>
  e.b.length > 1 ? e.b.map((x) => [x[2], x[3]] as [number, string]) : undefined;

/** Where each blob of a recorded file lies in it: id → offset (the first, for a blob it holds twice). */
function blobOffsets(b: Array<[number, string]>): Map<string, { offset: number; length: number }> {
  const out = new Map<string, { offset: number; length: number }>();
  let at = 0;
  for (const [length, id] of b) {
    if (!out.has(id)) out.set(id, { offset: at, length });
    at += length;
  }
  return out;
}

export async function lstatOrNull(p: string): Promise<Stats | null> {
  return lstat(p).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return null;
    throw err;
  });
}

/** Whether `st` is the regular file a record line (or a patch step) names: the same inode, ctime and size. */
function isRecorded(st: BigIntStats, r: { ino: string; ct: string; s: number }): boolean {
  return st.isFile() && String(st.ino) === r.ino && String(st.ctimeNs) === r.ct && Number(st.size) === r.s;
}

/** Synchronous: one call per file of the tree, where a promise costs several times the call. */
function lstatBig(p: string) {
  try {
    return lstatSync(p, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw err;
  }
}

/**
 * A line of the record as read: its fields but the blob list, which stays text until a changed
 * file needs it (blob lists are most of the record's bytes, and an apply of a small change needs a
 * few), and the line itself (a kept file's line is written back as it is).
 */
interface ReadRecordLine extends Omit<RecordLine, 'b'> {
  line: string;
  bText?: string;
}

/** The record writes `b` last, and no other field can hold `,"b":[` (a quote in the path is escaped). */
function parseRecordLine(line: string): ReadRecordLine {
  const i = line.lastIndexOf(',"b":[');
  const r = JSON.parse(i < 0 ? line : `${line.slice(0, i)}}`) as ReadRecordLine;
  r.line = line;
  if (i >= 0) r.bText = line.slice(i + 5, -1);
  return r;
}

/**
 * The path of a record line, without parsing the rest (each line is parsed when its file comes up,
 * and dropped). The path is the first field, and `","d":"` cannot be inside it (its quotes are
 * escaped); a path without a backslash in its JSON is that text as it is.
 */
function recordPath(line: string): string {
  const end = line.indexOf('","d":"');
  if (!line.startsWith('{"p":"') || end < 0) throw new Error(`not a record line: ${line.slice(0, 80)}`);
  const text = line.slice(6, end);
  return text.includes('\\') ? (JSON.parse(`"${text}"`) as string) : text;
}

/**
 * Whether a record line says exactly this: blobs of digest `d`, `s` bytes, the inode and ctime
 * given. The line is compared as text with what the record writes for them (JSON.stringify of
 * RecordLine, fields in that order): a line that says anything else, or says it otherwise, is not a
 * match, and the file is then looked at as any changed one (parseRecordLine). Parsing every line of
 * an unchanged tree cost most of what reading the record costs.
 */
function recordSays(line: string, d: string, s: number, ino: bigint, ctimeNs: bigint): boolean {
  const at = line.indexOf('","d":"');
  if (at < 0 || !line.startsWith('{"p":"')) return false;
  const head = `","d":"${d}","s":${s},"ino":"${ino}","ct":"${ctimeNs}"`;
  if (!line.startsWith(head, at)) return false;
  const next = line.charCodeAt(at + head.length);
  return next === 0x7d /* } */ || next === 0x2c; /* , */
}

/** A recorded file's blob list (RecordLine.b); undefined when it has none or it cannot be read (nothing is then taken from the live file). */
function recordedBlobs(r: ReadRecordLine): Array<[number, string]> | undefined {
  if (r.bText === undefined) return undefined;
  try {
    const b = JSON.parse(r.bText) as unknown;
    return Array.isArray(b) && b.every((x) => Array.isArray(x) && Number.isSafeInteger(x[0]) && typeof x[1] === 'string') ? (b as Array<[number, string]>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The record's first line: the live dir; the SHA-256 of the page shapes written with it
 * (PAGES_FILE); when (ms) an apply last looked at every live file (none skipped by page).
 */
interface RecordHead {
  live: string;
  /** The SHA-256 of PAGES_FILE as the switch wrote it: a damaged or stale copy is not used. */
  pagesSha256?: string;
  checked?: number;
  /**
   * The live dir's device and inode when the switch wrote the record: a files dir copied or restored
   * into place (or a standby cloned from another's image, state dir and all) is another dir, and
   * nothing of it is taken as recorded without a look.
   */
  dir?: string;
  /**
   * Set by every switch: the lines after this one are in index order (comparePaths), each path
   * once, and files deltas applied since record theirs in RECORD_DELTA under the same `gen`. A
   * record without it (written before) is read whole and put in order once.
   */
  gen?: string;
}

/**
 * Beside the record: the lines of the files that files deltas wrote since the record was written
 * (its first line `{"gen":...}`: the record's RecordHead.gen; a stale file is not used). Read
 * first, into a map: each wins over the record's line of its path.
 */
const RECORD_DELTA = 'files-record-delta.ndjson';

/** A directory's identity for RecordHead.dir. */
const dirId = (st: BigIntStats): string => `${st.dev}:${st.ino}`;

/**
 * The record's lines, taken by path in index order as the index is read (take), with a look
 * ahead over a page's files that takes nothing (peek, after mark): the record is read through, a
 * page's worth held at a time, not the tree's (a tree of 100,000 files held as a map of lines was
 * ~30 MiB of a stage's heap). A line out of order, or one that cannot be read, ends the record
 * there, with a warning: the files after it are looked at as files it does not have.
 *
 * A page skipped whole (skipRun, then takeRun) has its files' lines copied as bytes, not parsed:
 * see skipRun.
 */
class RecordCursor {
  #src: Iterator<string> | null;
  /** The record as bytes (a record in index order): where #src reads its lines, and runs are taken whole. */
  #bytes: ByteLines | null;
  readonly #delta: Map<string, string>;
  readonly #logger: Logger;
  readonly #file: string;
  /** [path, line], from the first not taken (#at) on. */
  #buf: Array<[string, string]> = [];
  #at = 0;
  #peek = 0;
  #last: string | undefined;
  /** A run skipRun found: the first line's place in #buf, and where its bytes end in #bytes. */
  #run: { k: number; end: number; last: string; lines: number } | null = null;

  constructor(src: Iterator<string> | ByteLines | null, delta: Map<string, string>, file: string, logger: Logger) {
    this.#bytes = src instanceof ByteLines ? src : null;
    this.#src = src instanceof ByteLines ? src.iterator() : src;
    this.#delta = delta;
    this.#file = file;
    this.#logger = logger;
  }

  static empty(logger: Logger): RecordCursor {
    return new RecordCursor(null, new Map(), '', logger);
  }

  /** One more line into the buffer; false at the end. */
  #fill(): boolean {
    if (this.#src === null) return false;
    let why: string;
    try {
      const r = this.#src.next();
      if (r.done === true) {
        this.#src = null;
        return false;
      }
      const p = recordPath(r.value);
      if (this.#last === undefined || comparePaths(this.#last, p) < 0) {
        this.#last = p;
        this.#buf.push([p, r.value]);
        return true;
      }
      why = `${JSON.stringify(p)} is out of order (after ${JSON.stringify(this.#last)})`;
    } catch (err) {
      why = (err as Error).message;
    }
    this.#logger.warn({ record: this.#file, why }, 'the files record cannot be read past this point: the files after it are looked at as new');
    this.close();
    return false;
  }

  /** The first place from `k` on whose path is `p` or after it. */
  #find(k: number, p: string): number {
    for (;;) {
      if (k === this.#buf.length && !this.#fill()) return k;
      if (comparePaths(this.#buf[k]![0], p) >= 0) return k;
      k++;
    }
  }

  /** The line of `p`, the lines before it dropped: asked in index order. */
  take(p: string): string | undefined {
    const k = this.#find(this.#at, p);
    const hit = k < this.#buf.length && this.#buf[k]![0] === p;
    this.#at = hit ? k + 1 : k;
    const line = hit ? this.#buf[k]![1] : undefined;
    if (this.#at >= 1024) {
      this.#buf.splice(0, this.#at);
      this.#at = 0;
    }
    this.#peek = this.#at;
    if (this.#delta.size > 0) {
      const d = this.#delta.get(p);
      if (d !== undefined) {
        this.#delta.delete(p);
        return d;
      }
    }
    return line;
  }

  /** A look ahead from where take is starts here. */
  mark(): void {
    this.#peek = this.#at;
    this.#run = null;
  }

  /** The line of `p`, nothing taken: asked in index order since mark. */
  peek(p: string): string | undefined {
    const d = this.#delta.size > 0 ? this.#delta.get(p) : undefined;
    const k = (this.#peek = this.#find(this.#peek, p));
    if (d !== undefined) return d;
    return k < this.#buf.length && this.#buf[k]![0] === p ? this.#buf[k]![1] : undefined;
  }

  /**
   * Whether the lines of a skipped page's files (`files`: path, blobs digest, size, in index order)
   * are the next lines of the record, to be taken whole by takeRun (after mark, and nothing else
   * asked before takeRun). The first and the last line are read and must say their file's blobs
   * and size; the lines between are counted, not parsed. That is enough: the switch that wrote the
   * record wrote the page shapes beside it (the record names their SHA-256), one line per file of
   * that index, in index order and saying its blobs (a kept file's line said them when it was kept),
   * so the lines from the page's first file to its last are that page's files. Not for a page with a
   * file a files delta wrote since (its line is in the delta, not here), nor for a record not kept
   * in order (read whole, before RecordHead.gen): each file is then peeked at as before.
   */
  skipRun(files: ReadonlyArray<readonly [string, string, number]>): boolean {
    const bytes = this.#bytes;
    const n = files.length;
    if (bytes === null || n < 2) return false;
    if (this.#delta.size > 0) for (const f of files) if (this.#delta.has(f[0])) return false;
    const first = files[0]!;
    const last = files[n - 1]!;
    const k = this.#find(this.#at, first[0]);
    if (k >= this.#buf.length || this.#buf[k]![0] !== first[0] || !recordHas(this.#buf[k]![1], first[1], first[2])) return false;
    // Lines already read (a look ahead that found a page not to skip): each as take would see it.
    let i = 1;
    for (let j = k + 1; j < this.#buf.length; j++, i++) {
      if (i >= n) return false;
      const [p, line] = this.#buf[j]!;
      if (p !== files[i]![0] || !recordHas(line, files[i]![1], files[i]![2])) return false;
    }
    if (this.#src === null) return false;
    const left = n - i;
    if (left === 0) {
      this.#run = { k, end: -1, last: last[0], lines: n };
      return true;
    }
    const span = bytes.span(left);
    if (span === null) return false;
    let p: string;
    try {
      p = recordPath(span.last);
    } catch {
      return false;
    }
    if (p !== last[0] || !recordHas(span.last, last[1], last[2])) return false;
    this.#run = { k, end: span.end, last: last[0], lines: n };
    return true;
  }

  /** Whether skipRun found a run since mark. */
  hasRun(): boolean {
    return this.#run !== null;
  }

  /** The run skipRun found, its lines written to `out` (those read as text, then the bytes); how many lines. */
  takeRun(out: LineSink): number {
    const run = this.#run!;
    this.#run = null;
    for (let j = run.k; j < this.#buf.length; j++) out.write(this.#buf[j]![1]);
    this.#buf.length = 0;
    this.#at = 0;
    this.#peek = 0;
    if (run.end >= 0) out.writeRaw(this.#bytes!.consume(run.end));
    this.#last = run.last;
    return run.lines;
  }

  close(): void {
    const src = this.#src;
    this.#src = null;
    this.#run = null;
    src?.return?.();
    this.#bytes?.close();
    this.#bytes = null;
  }
}

/**
 * The lines of a file read as bytes a MiB at a time (or more, for a span longer than that): each
 * line decoded only when asked for (next); a span of lines found by counting newlines and taken as
 * bytes (span, consume). Empty lines are skipped by next and end a span (none is written).
 */
export class ByteLines {
  readonly #fd: number;
  #buf: Buffer;
  /** The bytes read and not yet taken: #buf[#pos, #end). */
  #pos = 0;
  #end = 0;
  /** #buf up to #end: what indexOf looks in. */
  #view: Buffer;
  #eof = false;
  #closed = false;

  readonly #hash: nodeCrypto.Hash | undefined;

  /** `bufferBytes`: the buffer to begin with (grown for a span longer than it); `hash`: given every byte read. */
  constructor(fd: number, bufferBytes = 1 << 20, hash?: nodeCrypto.Hash) {
    this.#fd = fd;
    this.#buf = Buffer.allocUnsafe(bufferBytes);
    this.#view = this.#buf.subarray(0, 0);
    this.#hash = hash;
  }

  /**
   * The next `n` lines written to `out` as bytes, a buffer's worth at a time (not held whole: a
   * switch copies most of a large tree's record this way); how many there were (fewer at the end).
   */
  copyLines(n: number, out: LineSink): number {
    let left = n;
    while (left > 0) {
      let q = this.#pos;
      while (left > 0) {
        const nl = this.#view.indexOf(10, q);
        if (nl < 0) break;
        q = nl + 1;
        left--;
      }
      if (q > this.#pos) {
        out.writeRaw(this.#buf.subarray(this.#pos, q));
        this.#pos = q;
      }
      if (left > 0 && !this.#more()) break;
    }
    return n - left;
  }

  /** What is left, written to `out` as bytes (a last line without a newline gets one). */
  copyRest(out: LineSink): void {
    do {
      if (this.#end > this.#pos) out.writeRaw(this.#buf.subarray(this.#pos, this.#end));
      const lastByte = this.#end > this.#pos ? this.#buf[this.#end - 1] : 10;
      this.#pos = this.#end;
      if (!this.#more()) {
        if (lastByte !== 10) out.writeRaw(Buffer.from('\n'));
        return;
      }
    } while (true);
  }

  /** More bytes after #end (what was taken dropped first, the buffer grown when full); false at the end of the file. */
  #more(): boolean {
    if (this.#eof || this.#closed) return false;
    if (this.#pos > 0) {
      this.#buf.copy(this.#buf, 0, this.#pos, this.#end);
      this.#end -= this.#pos;
      this.#pos = 0;
    }
    if (this.#end === this.#buf.length) {
      const bigger = Buffer.allocUnsafe(this.#buf.length * 2);
      this.#buf.copy(bigger, 0, 0, this.#end);
      this.#buf = bigger;
    }
    const n = readSync(this.#fd, this.#buf, this.#end, this.#buf.length - this.#end, null);
    if (n === 0) {
      this.#eof = true;
      this.#view = this.#buf.subarray(0, this.#end);
      return false;
    }
    this.#hash?.update(this.#buf.subarray(this.#end, this.#end + n));
    this.#end += n;
    this.#view = this.#buf.subarray(0, this.#end);
    return true;
  }

  /** Where the newline ending the line at `from` is; -1 when the file ends first (`from` may move: what was taken is dropped). */
  #newline(rel: number): number {
    for (;;) {
      const nl = this.#view.indexOf(10, this.#pos + rel);
      if (nl >= 0) return nl - this.#pos;
      if (!this.#more()) return -1;
    }
  }

  /** The next line, decoded; undefined at the end. */
  next(): string | undefined {
    for (;;) {
      const nl = this.#newline(0);
      if (nl < 0) {
        if (this.#pos === this.#end) return undefined;
        const rest = this.#buf.toString('utf8', this.#pos, this.#end);
        this.#pos = this.#end;
        return rest;
      }
      const start = this.#pos;
      this.#pos += nl + 1;
      if (nl > 0) return this.#buf.toString('utf8', start, start + nl);
    }
  }

  *iterator(): Generator<string> {
    for (let l = this.next(); l !== undefined; l = this.next()) yield l;
  }

  /**
   * The next `n` lines, nothing taken: the last of them decoded, and where their bytes end (for
   * consume); null when the file has fewer whole lines, or an empty one among them.
   */
  span(n: number): { last: string; end: number } | null {
    let rel = 0;
    let lastAt = 0;
    for (let i = 0; i < n; i++) {
      const nl = this.#newline(rel);
      if (nl <= rel) return null;
      lastAt = rel;
      rel = nl + 1;
    }
    return { last: this.#buf.toString('utf8', this.#pos + lastAt, this.#pos + rel - 1), end: rel };
  }

  /** The bytes of the lines a span found (valid until the next call), taken. */
  consume(end: number): Buffer {
    const out = this.#buf.subarray(this.#pos, this.#pos + end);
    this.#pos += end;
    return out;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeSync(this.#fd);
  }
}

/** The standby's record of the files it wrote, for the live dir it wrote them to; empty when there is none (or for another dir). */
function openRecord(stateDir: string, live: string, logger: Logger): { record: RecordCursor; head: RecordHead | null } {
  const file = recordFile(stateDir);
  let src: ByteLines | undefined;
  try {
    src = new ByteLines(openSync(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW));
    const first = src.next();
    const head = first === undefined ? null : (JSON.parse(first) as RecordHead);
    if (head === null || head.live !== live) {
      src.close();
      return { record: RecordCursor.empty(logger), head: null };
    }
    const delta = new Map<string, string>();
    if (typeof head.gen === 'string') {
      const deltaFile = join(stateDir, RECORD_DELTA);
      if (existsSync(deltaFile)) {
        let ours = false;
        for (const line of lines(deltaFile)) {
          if (!ours) {
            if ((JSON.parse(line) as { gen?: unknown }).gen !== head.gen) break;
            ours = true;
            continue;
          }
          delta.set(recordPath(line), line);
        }
      }
      return { record: new RecordCursor(src, delta, file, logger), head };
    }
    // Written before the record was kept in order: read whole (the last line of a path wins, as
    // files deltas appended theirs), and put in order.
    const all = new Map<string, string>();
    for (const line of src.iterator()) all.set(recordPath(line), line);
    src.close();
    const sorted = [...all].sort((a, b) => comparePaths(a[0], b[0])).map((x) => x[1]);
    all.clear();
    return { record: new RecordCursor(sorted.values(), delta, file, logger), head };
  } catch (err) {
    src?.close();
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { record: RecordCursor.empty(logger), head: null };
    logger.warn({ err, record: file }, 'the files record cannot be read: every file of the set is written again');
    return { record: RecordCursor.empty(logger), head: null };
  }
}

/**
 * Lines a files delta wrote (the files it put in place) for the next stage to read with the
 * record (RECORD_DELTA); into the record itself when the record was written before RecordHead.gen.
 * Nothing when there is no record (the next apply looks at every file anyway).
 */
export async function recordDeltaLines(stateDir: string, add: string[]): Promise<void> {
  if (add.length === 0) return;
  const file = recordFile(stateDir);
  const head = firstLine(file) as RecordHead | undefined;
  if (head === undefined) return;
  const text = `${add.join('\n')}\n`;
  if (typeof head.gen !== 'string') {
    await appendFile(file, text);
    return;
  }
  const deltaFile = join(stateDir, RECORD_DELTA);
  if ((firstLine(deltaFile) as { gen?: unknown } | undefined)?.gen === head.gen) {
    await appendFile(deltaFile, text);
    return;
  }
  await writeFile(`${deltaFile}.new`, `${JSON.stringify({ gen: head.gen })}\n${text}`, { mode: 0o600 });
  await rename(`${deltaFile}.new`, deltaFile);
}

/** A file's first line, parsed; undefined when there is no such file (or it is empty). */
function firstLine(file: string): unknown {
  const src = lines(file);
  try {
    const first = src.next();
    return first.done === true ? undefined : (JSON.parse(first.value) as unknown);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  } finally {
    src.return(undefined);
  }
}

/**
 * The shapes of the pages of the index last applied (files-pages.ndjson in the state dir, written
 * by the switch with the record, which names their SHA-256): each page's PageShape and its entries, for
 * the next apply to skip the pages it finds again (see stageFilesObjects). An entry: a directory
 * [path, 'd', mode, mtime], a file [path, 'f', blobs digest, size, mode, mtime], a symlink [path, 'l'].
 */
export const PAGES_FILE = 'files-pages.ndjson';
type ShapeEntry = [string, 'd', number, number] | [string, 'f', string, number, number, number] | [string, 'l'];
interface PageLine extends PageShape {
  e: ShapeEntry[];
  /** As read from PAGES_FILE (written again as it is when the page is skipped); not in the file. */
  raw?: string;
}
/**
 * An apply looks at every live file (none skipped with its page) when the last that did is older
 * than this, and with --force: a file altered on the standby behind tandem's back, on a page the
 * sets since have not changed, is written again within a day.
 */
export const FULL_CHECK_MS = 24 * 3600 * 1000;

/**
 * The page shapes of the last apply, each line read from the file only when asked for, and parsed
 * then (a tree of 100,000 files has ~4,000 pages and 100,000 entries: held parsed, they cost ~40
 * MiB, held as text ~15): by page id (skipPage), and entry by path in index order (a cursor that
 * only moves forward, one page parsed at a time). Only where each line lies is held, and the file
 * stays open from the read that checked its SHA-256.
 */
class LastShapes {
  readonly #byId = new Map<string, { at: number; length: number }>();
  readonly #order: string[] = [];
  #fd: number | null = null;
  #at = 0;
  #page: PageLine | null = null;
  #entry = 0;
  #buf = Buffer.allocUnsafe(64 << 10);

  get size(): number {
    return this.#byId.size;
  }

  /** The file the lines are read from (open: the one hashed). */
  open(fd: number): void {
    this.#fd = fd;
  }

  /** A line of PAGES_FILE but its first (a line starts with its page's id), at byte `at`, `length` bytes. */
  add(line: string, at: number, length: number): void {
    const id = line.startsWith('{"id":"') ? line.slice(7, 7 + 64) : '';
    if (!/^[0-9a-f]{64}$/.test(id) || line.charCodeAt(71) !== 0x22) throw new Error(`not a page line: ${line.slice(0, 80)}`);
    this.#byId.set(id, { at, length });
    this.#order.push(id);
  }

  clear(): void {
    this.#byId.clear();
    this.#order.length = 0;
  }

  close(): void {
    this.clear();
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
  }

  /** The page `id` of the last apply, parsed (its line kept as `raw`), or undefined. */
  page(id: string): PageLine | undefined {
    const where = this.#byId.get(id);
    if (where === undefined || this.#fd === null) return undefined;
    // One buffer for every line read (the line is kept as a string), not one each (two a page):
    // buffers outside the heap are collected late (see PageCache.add), the peak RSS grows by them.
    if (this.#buf.length < where.length) this.#buf = Buffer.allocUnsafe(Math.max(where.length, this.#buf.length * 2));
    const buf = this.#buf;
    if (readSync(this.#fd, buf, 0, where.length, where.at) !== where.length) return undefined;
    const raw = buf.toString('utf8', 0, where.length);
    try {
      const pl = JSON.parse(raw) as PageLine;
      if (pl.id !== id || !Array.isArray(pl.e) || !Array.isArray(pl.open) || !Array.isArray(pl.o) || typeof pl.f !== 'string' || typeof pl.z !== 'string') return undefined;
      pl.raw = raw;
      return pl;
    } catch {
      return undefined;
    }
  }

  /** The last apply's entry at `p`; asked in index order (each path after the one asked before). */
  entry(p: string): ShapeEntry | undefined {
    for (;;) {
      if (this.#page === null) {
        if (this.#at >= this.#order.length) return undefined;
        this.#page = this.page(this.#order[this.#at++]!) ?? null;
        this.#entry = 0;
        continue;
      }
      if (comparePaths(this.#page.z, p) >= 0) break;
      this.#page = null;
    }
    const e = this.#page.e;
    while (this.#entry < e.length && comparePaths(e[this.#entry]![0], p) < 0) this.#entry++;
    return this.#entry < e.length && e[this.#entry]![0] === p ? e[this.#entry] : undefined;
  }
}

function readPageShapes(stateDir: string, head: RecordHead, logger: Logger): LastShapes {
  const out = new LastShapes();
  if (head.pagesSha256 === undefined) return out;
  const file = join(stateDir, PAGES_FILE);
  let fd: number | null = null;
  try {
    fd = openSync(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    // A MiB at a time (no Buffer the size of the file), hashed as read: no line is used before the
    // whole file matched. The lines are read again from this descriptor when asked for.
    const hash = nodeCrypto.createHash('sha256');
    let at = 0;
    let first = true;
    for (const line of lines(fd, hash)) {
      const length = Buffer.byteLength(line);
      if (first) {
        first = false;
        if ((JSON.parse(line) as { live?: string }).live !== head.live) return out;
      } else out.add(line, at, length);
      at += length + 1;
    }
    if (hash.digest('hex') !== head.pagesSha256) {
      logger.warn({ file }, 'the page shapes of the last apply do not match the SHA-256 the record has for them: every page of the index is read');
      out.clear();
      return out;
    }
    out.open(fd);
    fd = null;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') logger.warn({ err, file }, 'the page shapes of the last apply cannot be read: every page of the index is read');
    out.clear();
  } finally {
    // Kept open only by the shapes that use it.
    if (fd !== null) closeSync(fd);
  }
  return out;
}

/**
 * Whether a record line says blobs of digest `d`, `s` bytes (a file a files delta wrote since says
 * its own): compared in place, without a string made per line (once per file of every page skipped).
 */
function recordHas(line: string, d: string, s: number): boolean {
  const at = line.indexOf('","d":"');
  if (at < 0 || !line.startsWith(d, at + 7) || !line.startsWith('","s":', at + 7 + d.length)) return false;
  let i = at + 13 + d.length;
  let n = 0;
  for (let c = line.charCodeAt(i); c >= 0x30 && c <= 0x39; c = line.charCodeAt(++i)) n = n * 10 + (c - 0x30);
  return n === s && i > at + 13 + d.length && line.startsWith(',"ino":"', i);
}

/**
 * What the live dir holds that the index does not, found as the index is read: a directory of the
 * index is listed when its entry comes (if the live dir has a directory there: a symlink is not
 * followed), each entry of the index in it is crossed off, and what is left when the index moves
 * past the directory is to be removed. In depth-first order (each directory before what it holds)
 * only the directories open on the way down are held, not every path of the tree. Synchronous, as
 * the lstat calls beside it: one readdir per directory.
 */
class RemovalWalk {
  /** The open directories, the root first: each with what the live dir holds in it not yet crossed off (name → a directory). */
  readonly #open: Array<{ p: string; left: Map<string, boolean> | null }>;
  readonly #live: string;
  readonly #out: PlanOp[];

  constructor(live: string, out: PlanOp[]) {
    this.#live = live;
    this.#out = out;
    this.#open = [{ p: '', left: this.#list(live) }];
  }

  #list(dir: string): Map<string, boolean> {
    const left = new Map<string, boolean>();
    for (const d of readdirSync(dir, { withFileTypes: true })) left.set(d.name, d.isDirectory());
    return left;
  }

  /** An entry of the index, in index order. */
  see(p: string, dir: boolean): void {
    let top = this.#open.at(-1)!;
    while (this.#open.length > 1 && !(p.startsWith(top.p) && p.charCodeAt(top.p.length) === 0x2f)) {
      this.#close(this.#open.pop()!);
      top = this.#open.at(-1)!;
    }
    const name = top.p === '' ? p : p.slice(top.p.length + 1);
    const isDir = top.left?.get(name);
    top.left?.delete(name);
    if (dir) this.#open.push({ p, left: isDir === true ? this.#list(`${this.#live}/${p}`) : null });
  }

  #close(d: { p: string; left: Map<string, boolean> | null }): void {
    if (d.left === null) return;
    for (const name of d.left.keys()) this.#out.push({ o: 'x', p: d.p === '' ? name : `${d.p}/${name}` });
  }

  /** The end of the index: what is left in every directory still open. */
  end(): void {
    while (this.#open.length > 0) this.#close(this.#open.pop()!);
  }
}

export interface StageFilesOptions {
  input: StoredInput;
  filestore: Filestore;
  manifest: Manifest;
  entry: ArtifactEntry;
  identities: string[];
  filesKey: FilesKey | null;
  names: Names;
  stateDir: string;
  limits: { maxEntries: number; maxBytes?: number };
  logger: Logger;
  signal?: AbortSignal;
  /** Look at every live file, none skipped with its page (apply --force). */
  checkAll?: boolean;
}

export interface StagedFiles {
  files: number;
  changed: number;
  removed: number;
  bytesWritten: number;
  /** The bytes changed files kept from their live copies rather than fetched: read, copied, or left in place by a patch. */
  bytesReused: number;
  /** Of bytesReused, the bytes the kernel copied (blobs a changed file kept at the same place: copyKept). */
  bytesCopied: number;
  /** Files the switch patches in place (PlanOp pt): their kept bytes are in bytesReused, not in bytesWritten. */
  patched: number;
  packs: number;
  /** Pages of the index taken from the standby's copy of the last index's pages rather than fetched. */
  pagesCached: number;
  /** Pages the last apply applied as they are: not read, their files not looked at. */
  pagesSkipped: number;
}

export async function stageFilesObjects(o: StageFilesOptions): Promise<StagedFiles> {
  const { manifest, entry, names, logger } = o;
  const label = artifactLabel(manifest, entry);
  if (o.filesKey === null) {
    throw new TandemError('config', 'FILES_KEY_MISSING', `set ${manifest.setId} stores its files as content objects, and this standby has no files key (keys.filesKeyFile)`, {
      hint: "copy files.agekey from the primary's keys directory (mode 0600) and name it as keys.filesKeyFile in this standby's config",
    });
  }
  const filesKey = o.filesKey;
  await rm(names.next, { recursive: true, force: true });
  await mkdir(join(names.next, 'data'), { recursive: true, mode: 0o700 });
  // Whether the staged files can be written directly (WriteBehind.enableDirect), asked of the file
  // system on the thread pool while the plan is made.
  const directProbe = probeDirectAsync(names.next);
  const startedAt = Date.now();
  const t0 = performance.now();
  const { record, head } = openRecord(o.stateDir, names.live, logger);
  // paths.files may be a bucket (s3://): what it holds is one LIST; a file is unchanged when the
  // record says this standby put these blobs there and the object still has the ETag it got then.
  const bucket = isS3Url(names.live) ? openFilestore(names.live) : null;
  const listing = bucket ? new Map((await bucket.list('', { signal: o.signal }).finally(() => bucket.close())).map((x) => [x.key, x])) : null;
  const liveDir = listing === null ? lstatBig(names.live) : null;
  const liveExists = listing !== null || liveDir?.isDirectory() === true;
  // The index's paths are checked relative paths (no '.', '..' or empty part): joined by hand, not by path.join's normalizing, once per entry.
  const liveSlash = names.live.endsWith('/') ? names.live : `${names.live}/`;
  // A first apply into an empty (or absent) dir: the tree is staged as it will be, under tree/, and
  // the switch renames its top-level entries into place, not each file (renaming 100,000 files one by
  // one was ~2.5-3 s of such an apply). Nothing is there to keep, compare or remove.
  const fresh = listing === null && (!liveExists || readdirSync(names.live).length === 0);
  const treeSlash = `${join(names.next, 'tree')}/`;
  /** fresh: the directories staged under tree/, in index order (their modes and mtimes are set last). */
  const treeDirs: Array<{ p: string; m: number; mt: number }> = [];
  if (fresh) await mkdir(treeSlash, { mode: 0o700 });
  // Pages of the index last applied that this one has again (the same id: the same bytes) are
  // skipped whole: not loaded or parsed, their files not looked at on disk but kept as recorded, their
  // shape standing in for them in the reader's checks (PageShape). Each file's record line must still
  // say the page's blobs (a files delta since wrote its own), or the page is read. Only in place into
  // a directory, never with --force, and only while the last apply that looked at every file is less
  // than FULL_CHECK_MS old: an apply of a small change then costs what changed, not the tree.
  const skipping =
    !fresh && listing === null && liveExists && o.checkAll !== true && head?.checked !== undefined && head.checked <= startedAt && startedAt - head.checked < FULL_CHECK_MS &&
    head.dir === dirId(liveDir!);
  // And on a page that changed, an entry the last apply left as this index has it (the same type,
  // mode and mtime; for a file the same blobs and size, and a record line saying so) is taken as it
  // is, without looking at it on disk: the same trust, entry by entry (pages do not line up once a
  // cut point moved).
  const shapes = skipping ? readPageShapes(o.stateDir, head!, logger) : new LastShapes();
  let pagesSkipped = 0;
  // This index's page shapes, for the next apply (the switch puts them beside the record).
  const pagesOut = listing === null ? new LineSink(join(names.next, PAGES_FILE)) : null;
  pagesOut?.write(JSON.stringify({ live: names.live }));
  let pageEntries: ShapeEntry[] = [];

  // Pass 1: the plan, from the index and what the live tree has. What it decides goes to files in
  // the staging dir as it is decided (the steps in index order, the files to write, the kept
  // record lines), not into memory: a tree of 100,000 files held as parsed entries and steps took
  // the agent to ~280 MiB. In memory: the index's paths (for the removals), directories, packs.
  const opsOut = new LineSink(join(names.next, 'ops.ndjson'));
  const workOut = new LineSink(join(names.next, 'work.ndjson'));
  const keptOut = new LineSink(join(names.next, 'kept.ndjson'));
  /** Lines in keptOut: a file's step in the plan says how many come before its line (PlanOp k). */
  let keptLines = 0;
  const keep = (line: string): void => {
    keptOut.write(line);
    keptLines++;
  };
  const sinks = pagesOut === null ? [opsOut, workOut, keptOut] : [opsOut, workOut, keptOut, pagesOut];
  let toWrite = 0;
  let need = 0;
  // `reuse`: the live file is the one this standby wrote (record, inode, ctime, size), and these
  // of its blobs are still in the new content: read from it rather than downloaded (few files: held).
  const reuseOf = new Map<number, Reused>();
  // Blobs each pack gives to the files written (a pack is dropped once its last one is written), in
  // the order of first use.
  const uses = new Map<number, number>();
  const order: number[] = [];
  const write = (e: FileEntry, k: number, reused?: Omit<Reused, 'e'>): void => {
    toWrite++;
    need += e.s;
    if (reused) reuseOf.set(k, { ...reused, e: { p: e.p, s: e.s, b: e.b } });
    workOut.write(JSON.stringify({ n: k, p: e.p, s: e.s, m: e.m, mt: e.mt, b: e.b } satisfies WorkLine));
    for (const b of e.b) {
      if (reused?.reuse.has(b[3])) continue;
      if (!uses.has(b[0])) order.push(b[0]);
      uses.set(b[0], (uses.get(b[0]) ?? 0) + 1);
    }
  };
  // A directory step is needed where the directory is made or differs, and on every directory
  // above a path that changes (an entry made, replaced or removed in a directory moves its mtime,
  // which the step sets back; and the switch checks each directory on the way before it writes
  // through it). An unchanged directory of an unchanged subtree is left alone: a 1% change does
  // not cost a chmod and a utimes of every directory of the tree.
  const touched = new Set<string>();
  const above = (p: string) => {
    for (let i = p.lastIndexOf('/'); i > 0; i = p.lastIndexOf('/', i - 1)) {
      const dir = p.slice(0, i);
      if (touched.has(dir)) break;
      touched.add(dir);
    }
  };
  const op = (x: PlanOp): void => {
    if (x.o === 'f' || x.o === 'l') above(x.p);
    opsOut.write(JSON.stringify(x));
  };
  // What the live tree has that the set does not (removed first in the switch): from a bucket's
  // listing, the keys the index does not have; from a directory, what each directory holds that the
  // index does not, found as the index is read (RemovalWalk).
  const removals: PlanOp[] = [];
  const indexKeys = listing !== null ? new Set<string>() : null;
  const walk = listing === null && liveExists && !fresh ? new RemovalWalk(names.live, removals) : null;
  const seen = (p: string, dir: boolean): void => {
    indexKeys?.add(p);
    walk?.see(p, dir);
  };
  // Directories: made (missing, or something else in their place), and those already as the set has them.
  const created = new Set<string>();
  const asIs = new Set<string>();
  const packs: PackInfo[] = [];
  let files = 0;
  let n = 0;
  const free = await freeBytes(dirname(names.next));
  const maxBytes = Math.min(o.limits.maxBytes ?? Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
  // The pages of the index read last (pages a small change left as they were are not fetched
  // again), and those of this one for the next apply.
  let pagesCached = 0;
  const pageCache = new PageCache(join(o.stateDir, PAGE_CACHE_FILE), filesKey.hmacKey, { write: true });
  const skipPage = (id: string): PageShape | undefined => {
    const pl = shapes.page(id);
    if (pl === undefined) return undefined;
    record.mark();
    // Its files' record lines taken whole (RecordCursor.skipRun), or each looked at.
    const files: Array<[string, string, number]> = [];
    for (const x of pl.e) if (x[1] === 'f') files.push([x[0], x[2], x[3]]);
    if (record.skipRun(files)) return pl;
    for (const x of pl.e) {
      if (x[1] !== 'f') continue;
      const line = record.peek(x[0]);
      if (line === undefined || !recordHas(line, x[2], x[3])) return undefined;
    }
    return pl;
  };
  const pageDone = (shape: PageShape, skipped: boolean): void => {
    if (!skipped) {
      pagesOut?.write(JSON.stringify({ ...shape, e: pageEntries } satisfies PageLine));
      pageEntries = [];
      return;
    }
    // As the entries would have gone below, for files kept and directories as they are.
    const pl = shape as PageLine;
    pagesSkipped++;
    const run = record.hasRun();
    for (const x of pl.e) {
      seen(x[0], x[1] === 'd');
      if (x[1] === 'd') {
        op({ o: 'd', p: x[0], m: x[2], mt: x[3] });
        asIs.add(x[0]);
      } else if (x[1] === 'f') {
        if (++files === MANY_FILES) tightenHeapGrowth();
        if (!run) keep(record.take(x[0])!);
      }
    }
    if (run) keptLines += record.takeRun(keptOut);
    pagesOut?.write(pl.raw!);
  };
  let passed = false;
  const tPlan = performance.now();
  try {
    await decodeStored(
      o.input,
      o.identities,
      async (plain) => {
        const pages = pageLoader(o.filestore, manifest.site, { identities: entry.encryption === 'age' ? o.identities : null, hmacKey: filesKey.hmacKey, label, signal: o.signal, cache: pageCache });
        const entries = readFilesIndex(plain, { label, site: manifest.site, setId: manifest.setId, maxEntries: o.limits.maxEntries, maxBytes, pages, pageDone, ...(skipping ? { skipPage } : {}) }, packs);
        for await (const e of entries) {
          const d = e.t === 'f' ? blobsDigest(e) : '';
          if (pagesOut !== null) pageEntries.push(e.t === 'f' ? [e.p, 'f', d, e.s, e.m, e.mt] : e.t === 'd' ? [e.p, 'd', e.m, e.mt] : [e.p, 'l']);
          if (fresh) {
            // Each entry's directory is a directory entry before it (the index reader checks it), made
            // here: nothing is written through a symlink. Directories stay 0700 until staged whole.
            const top = !e.p.includes('/');
            if (e.t === 'd') {
              mkdirSync(treeSlash + e.p, { mode: 0o700 });
              treeDirs.push({ p: e.p, m: e.m, mt: e.mt });
              if (top) opsOut.write(JSON.stringify({ o: 't', p: e.p, m: e.m, mt: e.mt } satisfies PlanOp));
              continue;
            }
            if (e.t === 'l') {
              symlinkSync(e.l, treeSlash + e.p);
              lutimesSync(treeSlash + e.p, utimeOf(e.mt), utimeOf(e.mt));
            } else {
              if (++files === MANY_FILES) tightenHeapGrowth();
              write(e, n++);
            }
            if (top) opsOut.write(JSON.stringify({ o: 't', p: e.p } satisfies PlanOp));
            continue;
          }
          seen(e.p, e.t === 'd');
          const last = shapes.size === 0 ? undefined : shapes.entry(e.p);
          if (e.t === 'd') {
            op({ o: 'd', p: e.p, m: e.m, mt: e.mt });
            if (last !== undefined && last[1] === 'd' && last[2] === e.m && last[3] === e.mt) {
              asIs.add(e.p);
              continue;
            }
            // A directory as the set has it (type, mode, mtime) needs no step, unless something
            // changes inside it (decided below, once every change is known).
            const st = listing === null && liveExists ? lstatBig(liveSlash + e.p) : null;
            if (st === null || !st.isDirectory()) {
              created.add(e.p);
              above(e.p);
            }
            else if (Number(st.mode & 0o7777n) === e.m && Number(st.mtimeNs / 1000n) === Math.round(e.mt * 1000)) asIs.add(e.p);
          }
          else if (e.t === 'l') {
            if (listing !== null) {
              throw new TandemError('config', 'FILES_BUCKET_SYMLINK', `${label}: ${JSON.stringify(e.p)} is a symlink, and this standby's paths.files is a bucket, which cannot hold one`, {
                hint: 'give this standby a directory as paths.files, or remove the symlink on the primary',
              });
            }
            op({ o: 'l', p: e.p, n: n++, l: e.l, mt: e.mt });
          } else {
            if (++files === MANY_FILES) tightenHeapGrowth();
            const recLine = record.take(e.p);
            if (last !== undefined && recLine !== undefined && last[1] === 'f' && last[2] === d && last[3] === e.s && last[4] === e.m && last[5] === e.mt && recordHas(recLine, d, e.s)) {
              keep(recLine);
              continue;
            }
            let seen: BigIntStats | null | undefined;
            if (listing === null && recLine !== undefined && liveExists) {
              // The common case, without parsing the line: the file as recorded, unchanged since.
              const st = (seen = lstatBig(liveSlash + e.p));
              if (st !== null && st.isFile() && Number(st.size) === e.s && recordSays(recLine, d, e.s, st.ino, st.ctimeNs)) {
                keep(recLine);
                if (Number(st.mode & 0o7777n) !== e.m || Number(st.mtimeNs / 1000n) !== Math.round(e.mt * 1000)) op({ o: 'm', p: e.p, m: e.m, mt: e.mt, k: keptLines - 1 });
                continue;
              }
            }
            const rec = recLine === undefined ? undefined : parseRecordLine(recLine);
            if (listing !== null) {
              const x = listing.get(e.p);
              if (rec && x && rec.d === d && rec.ino === x.version && x.size === e.s) keep(rec.line);
              else {
                const k = n++;
                write(e, k);
                op({ o: 'f', p: e.p, n: k, m: e.m, mt: e.mt, d, s: e.s, k: keptLines });
              }
              continue;
            }
            const st = rec && liveExists ? (seen === undefined ? lstatBig(liveSlash + e.p) : seen) : null;
            if (rec && st && st.isFile() && rec.d === d && String(st.ino) === rec.ino && String(st.ctimeNs) === rec.ct && Number(st.size) === e.s) {
              keep(rec.line);
              if (Number(st.mode & 0o7777n) !== e.m || Number(st.mtimeNs / 1000n) !== Math.round(e.mt * 1000)) op({ o: 'm', p: e.p, m: e.m, mt: e.mt, k: keptLines - 1 });
            } else {
              const k = n++;
              const same = rec?.bText !== undefined && st !== null && isRecorded(st, rec);
              const old = same ? recordedBlobs(rec!) : undefined;
              write(e, k, old ? { reuse: blobOffsets(old), rec: rec!, old } : undefined);
              op({ o: 'f', p: e.p, n: k, m: e.m, mt: e.mt, d, s: e.s, k: keptLines, b: recordBlobs(e), ...(st?.isFile() === true ? { r: 1 as const } : {}) });
            }
          }
        }
      },
      { signal: o.signal },
    );
    walk?.end();
    pageCache.commit();
    pagesCached = pageCache.hits;
    passed = true;
  } finally {
    pageCache.close();
    record.close();
    shapes.close();
    closeSinks(sinks, !passed);
    // The probe's file gone before the staging is removed.
    if (!passed) await directProbe;
  }
  // And before anything below can fail.
  const directWhy = await directProbe;
  // When the last apply looked at every file: this one, unless it skipped a page.
  writeFileSync(join(names.next, CHECKED_FILE), JSON.stringify({ checked: pagesSkipped > 0 ? head!.checked : startedAt }), { mode: 0o600 });

  if (listing !== null) {
    // Only objects the primary's listing (the index) does not have.
    for (const key of listing.keys()) if (!indexKeys!.has(key)) removals.push({ o: 'x', p: key });
    indexKeys!.clear();
  }
  for (const x of removals) above(x.p);
  created.clear();

  if (free !== undefined && need > free) {
    throw new TandemError('permanent', 'DISK_FULL', `disk full while staging set ${manifest.setId} (files): ${toWrite} new or changed files need ${formatBytes(need)}, ${formatBytes(free)} are free in ${dirname(names.next)}: the staging was removed and the live site is untouched`, {
      hint: `free space on the file system of ${names.live}`,
    });
  }

  // Pass 2: the new and changed files, built in full from their packs, read back one at a time.
  const tWrite = performance.now();
  const held = new Map<number, Promise<PackPlain>>();
  let next = 0;
  let fetched = 0;
  const identities = entry.encryption === 'age' ? o.identities : null;
  // From a directory filestore, packs are read and hashed on a second thread (PackReadThread) where
  // that pays (useReader).
  const fs = o.filestore;
  // An encrypted pack's plaintext stays in the reader's buffer (openPackLocal) while the pack is
  // held: one buffer a held pack, one more for the read ahead.
  const reader = fs.localPath !== undefined && useReader(order.length, toWrite, need) ? new PackReadThread(HELD_PACKS + 1) : null;
  /** Plaintexts that are a buffer of the reader's, and how each is given back when its pack is no longer held. */
  const releaseOf = new WeakMap<PackPlain, () => void>();
  let openedInPlace = 0;
  const fetchPack = (ordinal: number): Promise<PackPlain> => {
    const info = packs[ordinal]!;
    const p = (async () => {
      if (reader !== null) {
        const got = await fetchPackLocal(fs, reader, manifest.site, info, { label });
        fetched++;
        if (identities !== null) {
          const opened = await openPackLocal(got, info, { identities, label, reader });
          openedInPlace++;
          releaseOf.set(opened.plain, opened.release);
          return opened.plain;
        }
        try {
          // The plaintext must not be the pool's buffer: a pack stored as it is (no encryption, no
          // compression) is copied out of it.
          const stored = identities === null && info.c === 'none' ? Buffer.from(got.bytes) : got.bytes;
          return await openPackPieces([stored], info, { identities, label, sha256: got.sha256 });
        } finally {
          reader.release(got.bytes);
        }
      }
      const pieces = await fetchPackStored(fs, manifest.site, info, { label });
      fetched++;
      return openPackPieces(pieces, info, { identities, label });
    })();
    p.catch(() => undefined);
    return p;
  };
  const ahead = reader !== null ? 1 : prefetchFrom(o.filestore);
  const prefetch = () => {
    while (next < order.length && held.size <= ahead) {
      const ord = order[next++]!;
      if (!held.has(ord)) held.set(ord, fetchPack(ord));
    }
  };
  /**
   * A pack no longer held: its reader's buffer, if its plaintext is one, goes back once the fetch
   * has settled. Nothing refers to its bytes by then: each blob was written from it before control
   * came back here (the writer copies into its blocks, or writes at once, or is given copies).
   */
  const drop = (ord: number): void => {
    const p = held.get(ord);
    if (p === undefined) return;
    held.delete(ord);
    void p.then(
      (plain) => {
        releaseOf.get(plain)?.();
        releaseOf.delete(plain);
      },
      () => undefined,
    );
  };
  const packPlain = async (ord: number): Promise<PackPlain> => {
    let p = held.get(ord);
    if (!p) {
      if (held.size >= HELD_PACKS) drop(held.keys().next().value!);
      p = fetchPack(ord);
      held.set(ord, p);
    }
    return p;
  };
  let bytesWritten = 0;
  let bytesReused = 0;
  let bytesCopied = 0;
  /** Kept files copied with direct reads and writes (copyKept). */
  let copiedDirect = 0;
  /** Files the switch patches in place (copyKept's `patch`), and the bytes staged for them. */
  const patches = new Map<number, PatchStep>();
  let bytesPatched = 0;
  // The large writes go to the thread pool, the files finished in order as their writes complete.
  const writer = new WriteBehind(4 << 20);
  /** A blob from its pack, written at `at` of the slot's file. */
  const writeFromPack = async (slot: FileSlot, w: { e: WorkLine }, ord: number, off: number, len: number, id: string, at: number): Promise<void> => {
    const plain = await packPlain(ord);
    const slices = blobSlices(plain, { id, offset: off, length: len }, filesKey.hmacKey, `${label}: ${JSON.stringify(w.e.p)}`);
    // The thread pool's writes through the page cache hold their buffers until done: a reader's
    // buffer goes back to its pool before that, so they get copies.
    writer.write(slot, slot.async && !slot.direct && releaseOf.has(plain) ? slices.map((b) => Buffer.from(b)) : slices, at);
    bytesWritten += len;
    const left = (uses.get(ord) ?? 1) - 1;
    uses.set(ord, left);
    if (left === 0) drop(ord);
    // Bounded after each blob, not each file: a file of 25 MB would otherwise be in flight whole.
    if (writer.full) await writer.room();
  };
  // fresh: the record's lines, written as each file is staged (the switch renames only the top-level
  // entries; a file's inode and ctime stay as they are when its directory is renamed).
  const treeRecord = fresh ? new LineSink(join(names.next, TREE_RECORD)) : null;
  let staged2 = false;
  // When the files average 64 KiB or more, each new file is opened on the thread pool too,
  // OPEN_AHEAD ahead of its writes: its creation no longer holds up this thread (for a tree of media,
  // ~40% of this thread's time on a file system where creating a file is slow). Not for a tree of
  // small files: there a promise and a thread switch per file cost more than they free (100,000
  // files: ~2 s more CPU in all, no sooner done).
  const openAhead = need >= toWrite * writer.asyncMin;
  // And those files of asyncMin bytes or more are written with O_DIRECT where the file system takes
  // it: from aligned blocks straight to the disk, not copied into the page cache (on the machines
  // measured, the cache's pages cost ~2 ms per MiB to copy into the first time: a second of CPU for
  // 500 MB, against a tenth of that direct). The standby does not serve these files until promoted.
  const noDirect = openAhead ? writer.enableDirectProbed(directWhy) : undefined;
  if (noDirect !== undefined) logger.debug({ dir: names.next, why: noDirect }, 'files written through the page cache: this file system takes no direct writes');
  const work = lines(join(names.next, 'work.ndjson'));
  const stagedAt = (e: Pick<WorkLine, 'p' | 'n'>): string => (fresh ? treeSlash + e.p : join(names.next, 'data', String(e.n)));
  // The copy of a live file that a changed file keeps most of (copyKept) is begun ahead of its turn
  // (KEPT_AHEAD at a time), once the first packs are asked for (the thread pool takes those reads
  // first), and while it runs the files after it are written (among those opened ahead): the copy
  // of an edited video (the disk's time: 35-50 ms for 24 MB here) runs while this thread decrypts
  // and writes the new files, not before or after them.
  const keptQueue = [...reuseOf.keys()];
  const keptEarly = new Map<number, Promise<KeptCopy>>();
  const keptDone = new Set<number>();
  const copyKeptOf = (k: number): Promise<KeptCopy> => {
    const r = reuseOf.get(k)!;
    const p = (async (): Promise<KeptCopy> => {
      const liveFd = openLiveOrNull(liveSlash + r.e.p);
      if (liveFd === null) return { liveFd, copy: null };
      try {
        return { liveFd, copy: await copyKept(liveFd, r.rec, r.old, r.e, stagedAt({ p: r.e.p, n: k }), writer) };
      } catch (err) {
        closeSync(liveFd);
        throw err;
      }
    })();
    p.then(
      () => keptDone.add(k),
      () => keptDone.add(k),
    );
    return p;
  };
  const copyAhead = (): void => {
    while (keptEarly.size < KEPT_AHEAD && keptQueue.length > 0) {
      const k = keptQueue.shift()!;
      if (reuseOf.has(k)) keptEarly.set(k, copyKeptOf(k));
    }
  };
  const opened: Array<{ e: WorkLine; staged: string; opening?: Promise<number>; direct: boolean }> = [];
  /** The next file to write: the first of those opened ahead whose copy, if it has one begun, is done. */
  const nextItem = (): (typeof opened)[number] | undefined => {
    fill();
    const i = opened.findIndex((x) => !keptEarly.has(x.e.n) || keptDone.has(x.e.n));
    return opened.splice(Math.max(i, 0), 1)[0];
  };
  const fill = (): void => {
    while (opened.length < OPEN_AHEAD) {
      const r = work.next();
      if (r.done === true) return;
      const e = JSON.parse(r.value) as WorkLine;
      const staged = stagedAt(e);
      const ahead = openAhead && !reuseOf.has(e.n);
      const direct = ahead && writer.direct && e.s >= writer.asyncMin;
      opened.push({ e, staged, opening: ahead ? openNewAsync(staged, direct ? DIRECT_OPEN : OPEN_NEW_FILE) : undefined, direct });
    }
  };
  try {
    prefetch();
    copyAhead();
    for (let item = nextItem(); item !== undefined; item = nextItem()) {
      const { e, staged, opening, direct } = item;
      o.signal?.throwIfAborted();
      prefetch();
      // Synchronous file calls but for the large writes (WriteBehind): a promise per open/chmod/
      // utimes/close cost more than the calls themselves, thousands of times over for small files.
      const kept = keptEarly.get(e.n) ?? (reuseOf.has(e.n) ? copyKeptOf(e.n) : undefined);
      const w = { ...reuseOf.get(e.n), e, n: e.n };
      keptEarly.delete(e.n);
      reuseOf.delete(e.n);
      copyAhead();
      const { liveFd, copy } = kept === undefined ? NOT_KEPT : await kept;
      try {
        // With a copy of the live file (copyKept), the blobs it holds at the same places stay, every
        // other blob is written over it at its place, and the end is cut at the new size; without,
        // the file is written from its start.
        // Patched in place (copy.patch): the staged file holds only the bytes not in place, end to end.
        const patch = copy?.patch !== undefined;
        const ranges: Array<[number, number]> = [];
        let patchAt = 0;
        const place = (here: number, len: number): number => {
          if (!patch) return here;
          const last = ranges.at(-1);
          if (last !== undefined && last[0] + last[1] === here) last[1] += len;
          else ranges.push([here, len]);
          patchAt += len;
          return patchAt - len;
        };
        const fd = opening !== undefined ? await opening : copy === null || patch ? openSync(staged, OPEN_NEW_FILE, 0o600) : openSync(staged, fsConstants.O_WRONLY | fsConstants.O_NOFOLLOW);
        // Mode and mtime through the descriptor once its writes are done (the switch only renames);
        // the descriptor is the writer's from here.
        const slot = writer.begin(fd, patch ? e.s - copy!.bytes : e.s, () => {
          if (patch) return;
          if (copy !== null) ftruncateSync(fd, e.s);
          fchmodSync(fd, e.m);
          futimesSync(fd, utimeOf(e.mt), utimeOf(e.mt));
          if (treeRecord !== null) {
            const st = fstatSync(fd, { bigint: true });
            treeRecord.write(JSON.stringify({ p: e.p, d: blobsDigest(e), s: e.s, ino: String(st.ino), ct: String(st.ctimeNs), b: recordBlobs(e) } satisfies RecordLine));
          }
        }, { direct });
        if (copy !== null) {
          bytesReused += copy.bytes;
          if (!patch) {
            bytesWritten += copy.bytes;
            bytesCopied += copy.bytes;
          }
          if (copy.direct) copiedDirect++;
        }
        let at = 0;
        for (const [ord, off, len, id] of w.e.b) {
          const here = at;
          at += len;
          if (copy?.inPlace.has(here)) continue;
          const old = liveFd === null ? undefined : w.reuse!.get(id);
          if (old !== undefined && old.length === len) {
            const data = readBlobIfSame(liveFd!, old.offset, len, id, filesKey.hmacKey);
            if (data !== null) {
              writer.write(slot, [data], place(here, len));
              bytesWritten += len;
              bytesReused += len;
              if (writer.full) await writer.room();
              continue;
            }
            logger.warn({ file: w.e.p, blob: id }, 'a blob of the live file does not match its id any more: fetched from the filestore instead');
          }
          await writeFromPack(slot, w, ord, off, len, id, place(here, len));
        }
        writer.end(slot);
        if (patch) {
          patches.set(e.n, { ...copy!.patch!, r: ranges });
          bytesPatched += patchAt;
        }
      } finally {
        if (liveFd !== null) closeSync(liveFd);
      }
      if (writer.full) await writer.room();
    }
    await writer.flush();
    staged2 = true;
  } finally {
    work.return(undefined);
    if (!staged2) {
      // Files opened ahead and not reached: closed (the staging dir goes with them).
      for (const a of opened.splice(0)) await a.opening?.then(closeSync, () => undefined);
      await writer.settle();
    }
    await Promise.allSettled(held.values());
    // Copies begun ahead and not reached: their live files' descriptors closed (the copies go with the staging).
    for (const r of await Promise.allSettled(keptEarly.values())) if (r.status === 'fulfilled' && r.value.liveFd !== null) closeSync(r.value.liveFd);
    await reader?.close();
    treeRecord?.close(!staged2);
  }
  // fresh: the directories' modes and mtimes, deepest first, now that nothing more is made in them;
  // the top-level ones in the switch, after their rename (moving a directory updates its '..').
  for (let i = treeDirs.length - 1; i >= 0; i--) {
    const d = treeDirs[i]!;
    if (!d.p.includes('/')) continue;
    chmodSync(treeSlash + d.p, d.m);
    utimesSync(treeSlash + d.p, utimeOf(d.mt), utimeOf(d.mt));
  }
  treeDirs.length = 0;
  faultPoint('files-staged');
  const tFinish = performance.now();

  // The plan: removals first, then the steps in index order, but the directories that need none.
  const plan = new LineSink(join(names.next, 'plan.ndjson'));
  let planned = false;
  try {
    for (const x of removals) plan.write(JSON.stringify(x));
    for (const line of lines(join(names.next, 'ops.ndjson'))) {
      if (line.startsWith('{"o":"d"')) {
        const d = JSON.parse(line) as PlanOp;
        if (asIs.has(d.p) && !touched.has(d.p)) continue;
      } else if (patches.size > 0 && line.startsWith('{"o":"f"')) {
        const f = JSON.parse(line) as Extract<PlanOp, { o: 'f' }>;
        const pt = patches.get(f.n);
        if (pt !== undefined) {
          plan.write(JSON.stringify({ ...f, pt } satisfies PlanOp));
          continue;
        }
      }
      plan.write(line);
    }
    planned = true;
  } finally {
    plan.close(!planned);
  }
  asIs.clear();
  rmSync(join(names.next, 'ops.ndjson'), { force: true });
  rmSync(join(names.next, 'work.ndjson'), { force: true });
  const ms = (a: number, b: number) => Math.round(b - a);
  const tEnd = performance.now();
  // Where the time went: the record and last shapes opened, pass 1 (the plan), pass 2 (the writes), the plan's file.
  const stepsMs = { open: ms(t0, tPlan), plan: ms(tPlan, tWrite), write: ms(tWrite, tFinish), finish: ms(tFinish, tEnd) };
  logger.info({ files, changed: toWrite, removed: removals.length, bytesWritten, bytesReused, bytesCopied, copiedDirect, filesPatched: patches.size, bytesPatched, bytesDirect: writer.directBytes, packs: fetched, packsOpenedInPlace: openedInPlace, pagesCached, pagesSkipped, stepsMs }, 'files staged: only what changed');
  return { files, changed: toWrite, removed: removals.length, bytesWritten, bytesReused, bytesCopied, patched: patches.size, packs: fetched, pagesCached, pagesSkipped };
}

/** A file to write, as pass 1 leaves it for pass 2 (work.ndjson): the entry's fields pass 2 uses. */
type WorkLine = Pick<FileEntry, 'p' | 's' | 'm' | 'mt' | 'b'> & { n: number };

/**
 * A changed file whose live copy is the one this standby wrote: its blobs still in the new content
 * (`reuse`: read from it rather than downloaded), its record line, its recorded blobs, and the new
 * entry's path, size and blobs (for copyKept, begun ahead of its turn). Few files: held.
 */
interface Reused {
  reuse: Map<string, { offset: number; length: number }>;
  rec: ReadRecordLine;
  old: Array<[number, string]>;
  e: Pick<FileEntry, 'p' | 's' | 'b'>;
}

/** A kept copy (copyKept's result) and the descriptor of the live file it was made from (null: gone). */
interface KeptCopy {
  liveFd: number | null;
  copy: KeptBytes | null;
}
/**
 * What a changed file keeps of its live copy: the offsets in the new file whose blob is already
 * there and their bytes; copied whole to the staged file (`direct`: with direct reads and writes),
 * or, with `patch` (the live file as found), left where they are for the switch to patch it.
 */
interface KeptBytes {
  inPlace: Set<number>;
  bytes: number;
  direct: boolean;
  patch?: Omit<PatchStep, 'r'>;
}
const NOT_KEPT: KeptCopy = { liveFd: null, copy: null };

/** Kept copies (copyKept) begun ahead of the file being written (each holds up to 4 MiB of direct blocks while it runs). */
const KEPT_AHEAD = 1;

/** In the staging dir, while the switch runs: the record lines of the files it put in place. */
const WRITTEN_FILE = 'written.ndjson';
/** In the staging dir: what the switch removed or replaced, until the staging is removed after it. */
const REPLACED_DIR = 'replaced';
/**
 * A plan made before its steps said whether they replace a file (PlanOp r): a file of this size or
 * more that replaces one of this size or more keeps the old one linked in REPLACED_DIR during the
 * switch, as then.
 */
const LINK_ASIDE_MIN = 1 << 20;

/** A new RecordHead.gen. */
const newGen = (): string => nodeCrypto.randomBytes(8).toString('hex');

/**
 * Record lines from two sources, each in index order, merged in index order (a path in both: the
 * first source's line, the file this switch wrote).
 */
function* mergeRecordLines(a: Iterator<string>, b: Iterator<string>): Generator<string> {
  let x = a.next();
  let y = b.next();
  let px = x.done === true ? '' : recordPath(x.value);
  let py = y.done === true ? '' : recordPath(y.value);
  while (x.done !== true || y.done !== true) {
    const c = x.done === true ? 1 : y.done === true ? -1 : comparePaths(px, py);
    if (c <= 0) {
      yield x.value as string;
      if (c === 0) {
        y = b.next();
        if (y.done !== true) py = recordPath(y.value);
      }
      x = a.next();
      if (x.done !== true) px = recordPath(x.value);
    } else {
      yield y.value as string;
      y = b.next();
      if (y.done !== true) py = recordPath(y.value);
    }
  }
}

/** Closes each sink (abandon: without writing what it holds), each whatever the others did. */
function closeSinks(sinks: LineSink[], abandon: boolean): void {
  let first: unknown;
  for (const x of sinks) {
    try {
      x.close(abandon);
    } catch (err) {
      first ??= err;
    }
  }
  if (first !== undefined && !abandon) throw first;
}

/**
 * A changed file whose blobs mostly stay where they were (a video edited in the middle, or
 * appended to): when it is PATCH_MIN or more and the live file is the one this standby wrote (the
 * same inode, ctime and size as recorded) with one link, nothing is copied (`patch`: the staged
 * file gets the other bytes alone, and the switch writes them into the live file); else the live
 * file, when it still is the one this standby wrote (before and after), copied whole by the kernel to `staged`
 * (copy_file_range, or a reflink where the file system has them): `inPlace` are the offsets in the
 * new file whose blob is already there, `bytes` their total. Those bytes are trusted as every
 * unchanged file of the tree is, by the record (a write to the file moves its ctime, which cannot
 * be set back); they are not read into the process or hashed again. Null when not worth it (less
 * than half of the new file stays in place), when the live file is not the recorded one any more,
 * or where /proc/self/fd is not there: the blobs are then read and checked one by one.
 */
async function copyKept(liveFd: number, rec: ReadRecordLine, oldBlobs: Array<[number, string]>, e: Pick<FileEntry, 'b' | 's'>, staged: string, writer: WriteBehind): Promise<KeptBytes | null> {
  const old = new Map<number, { id: string; length: number }>();
  let at = 0;
  for (const [length, id] of oldBlobs) {
    old.set(at, { id, length });
    at += length;
  }
  const inPlace = new Set<number>();
  let bytes = 0;
  at = 0;
  for (const [, , len, id] of e.b) {
    const was = old.get(at);
    if (was !== undefined && was.id === id && was.length === len) {
      inPlace.add(at);
      bytes += len;
    }
    at += len;
  }
  if (bytes * 2 < e.s) return null;
  const same = (): boolean => isRecorded(fstatSync(liveFd, { bigint: true }), rec);
  const found = fstatSync(liveFd, { bigint: true });
  if (!isRecorded(found, rec)) return null;
  // Large, and its only link (a patch in place would change what another name shows too): the
  // switch patches it, nothing is copied.
  if (e.s >= PATCH_MIN && found.nlink === 1n) return { inPlace, bytes, direct: false, patch: { ino: rec.ino, ct: rec.ct, s: rec.s } };
  // The descriptor's own file (opened without following a link), not whatever the path names now.
  const own = `/proc/self/fd/${liveFd}`;
  let direct = false;
  try {
    copyFileSync(own, staged, fsConstants.COPYFILE_EXCL | fsConstants.COPYFILE_FICLONE_FORCE);
  } catch {
    // No reflink here (ext4, or another file system): a copy. With direct writes on (a large
    // apply), read and written directly in parallel blocks: the live file may be one a direct
    // write put on the disk and the page cache does not hold (copying it through the cache read
    // it first: 60-70 ms for 24 MB, 7-8 ms when cached).
    rmSync(staged, { force: true });
    if (writer.direct && rec.s >= COPY_DIRECT_MIN) {
      try {
        await writer.copyDirect(own, staged, rec.s);
        direct = true;
      } catch {
        rmSync(staged, { force: true }); // the copy below says what is wrong, if anything is
      }
    }
    if (!direct) {
      try {
        copyFileSync(own, staged, fsConstants.COPYFILE_EXCL);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' && existsSync(staged) === false) return null;
        throw err;
      }
    }
  }
  if (!same()) {
    rmSync(staged, { force: true });
    return null;
  }
  return { inPlace, bytes, direct };
}

/** The live file, read-only and not following a symlink; null when it is not there any more. */
function openLiveOrNull(path: string): number | null {
  try {
    return openSync(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch {
    return null;
  }
}

/** `length` bytes of the live file at `offset`, when they still are the blob `id` (checked by its keyed hash); else null. */
function readBlobIfSame(fd: number, offset: number, length: number, id: string, hmacKey: Buffer): Buffer | null {
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, offset + got);
    if (n === 0) return null;
    got += n;
  }
  return objectMatches(hmacKey, id, buf) ? buf : null;
}

/** `from` copied to `to` (0600, written beside and renamed), 1 MiB at a time; its SHA-256. */
function copyHashed(from: string, to: string): string {
  const hash = nodeCrypto.createHash('sha256');
  const src = openSync(from, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    rmSync(`${to}.new`, { force: true });
    const dst = openSync(`${to}.new`, OPEN_NEW_FILE, 0o600);
    try {
      const buf = Buffer.allocUnsafe(1 << 20);
      for (;;) {
        const n = readSync(src, buf, 0, buf.length, null);
        if (n === 0) break;
        hash.update(buf.subarray(0, n));
        writeAllSync(dst, buf.subarray(0, n));
      }
    } finally {
      closeSync(dst);
    }
  } finally {
    closeSync(src);
  }
  renameSync(`${to}.new`, to);
  return hash.digest('hex');
}

/**
 * The lines of a plan or record file (or of an open descriptor, from where it is, left open), read
 * 1 MiB at a time (memory bounded by the longest line):
 * synchronous, as the other per-file calls here (a stream and a promise per line cost more than
 * the line's own work, thousands of times over).
 */
function* lines(file: string | number, hash?: nodeCrypto.Hash): Generator<string> {
  const own = typeof file !== 'number';
  const src = new ByteLines(own ? openSync(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW) : file, 1 << 20, hash);
  try {
    yield* src.iterator();
  } finally {
    if (own) src.close();
  }
}

/** Lines written to a new file (0600), gathered up to 1 MiB per write: see lines(). */
export class LineSink {
  readonly #fd: number;
  #lines: string[] = [];
  /** Text of #lines, counted in UTF-16 units. */
  #size = 0;
  /** What is gathered before #lines, in order: lines joined, and bytes from writeRaw. */
  readonly #out: GatherWriter;
  #closed = false;

  constructor(file: string) {
    this.#fd = openSync(file, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW, 0o600);
    this.#out = new GatherWriter(this.#fd, LINE_SINK_BUFFER);
  }

  write(line: string): void {
    this.#lines.push(line);
    this.#size += line.length + 1;
    // A quarter of the buffer in UTF-16 units: at 3 bytes a unit at most, the joined text is
    // encoded straight into the buffer (no buffer of its own to join and drop).
    if (this.#size >= LINE_SINK_BUFFER / 4) this.#flush();
  }

  /**
   * Whole lines as bytes (each ending in a newline), after the lines written before: copied (the
   * caller's buffer is reused), and written with them (a skipped page's lines are a few KB: a write
   * each was ~50 us, ~10 ms for the pages of a 2,800-file tree).
   */
  writeRaw(bytes: Buffer): void {
    this.#joinLines();
    this.#out.bytes(bytes);
  }

  /** The lines written so far, into the buffer. */
  #joinLines(): void {
    if (this.#lines.length === 0) return;
    this.#lines.push('');
    this.#out.text(this.#lines.join('\n'));
    this.#lines = [];
    this.#size = 0;
  }

  #flush(): void {
    this.#joinLines();
    this.#out.flush();
  }

  /** Writes what is left and closes; `abandon` only closes (the file is left as it is). Once. */
  close(abandon = false): void {
    if (this.#closed) return;
    try {
      if (!abandon) this.#flush();
    } finally {
      this.#closed = true;
      closeSync(this.#fd);
    }
  }
}

/** LineSink's buffer, and the text it gathers before it writes. */
const LINE_SINK_BUFFER = 1 << 20;

/**
 * Whatever is at `p` that is not a directory goes, then a directory is there (mode m).
 * Synchronous, as the other per-entry calls of the switch (a promise each cost more than the call).
 */
function ensureDir(p: string, m: number): void {
  const st = lstatBig(p);
  if (st && !st.isDirectory()) rmSync(p, { recursive: true, force: true });
  if (!st || !st.isDirectory()) mkdirSync(p, { mode: m });
  chmodSync(p, m);
}

/**
 * A staged file renamed over `target` (a directory there is removed first); false when the staged
 * copy is gone (an earlier run of this switch renamed it: the caller checks the target). The rename
 * is tried first and the two paths looked at only when it fails: for a full apply of a tree, two
 * lstat calls per file were a third of the switch.
 */
async function renameInto(staged: string, target: string): Promise<boolean> {
  try {
    renameSync(staged, target);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if ((code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST') && lstatBig(target)?.isDirectory() && lstatBig(staged)?.isFile()) {
      await rm(target, { recursive: true, force: true });
      renameSync(staged, target);
      return true;
    }
    if (code === 'ENOENT' && lstatBig(staged) === null) return false;
    throw err;
  }
}

/**
 * A top-level entry staged whole (a first apply into an empty dir) renamed to `target`, whatever is
 * there removed first (the dir was empty when staged); false when the staged entry is gone (an
 * earlier run of this switch moved it).
 */
function moveWhole(staged: string, target: string): boolean {
  try {
    renameSync(staged, target);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && lstatBig(staged) === null) return false;
    if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') {
      rmSync(target, { recursive: true, force: true });
      renameSync(staged, target);
      return true;
    }
    throw err;
  }
}

type PatchOp = Extract<PlanOp, { o: 'f' }> & { pt: PatchStep };

/**
 * A patch step of the switch (PlanOp pt): the staged bytes written into the live file at their
 * ranges, the file cut to its size, its mode and mtime set. Run again by a roll-forward, it does
 * the same again: the staged file is renamed to `<n>.patching` before the first write and removed
 * after the last, so a switch killed in between writes every range again (the same bytes at the
 * same places), and one killed after finds neither and takes the file as patched. The live file
 * must still be the one staging found (inode, ctime, size, one link) before the first write; if
 * something changed it since, it is left as it is and not recorded (`<n>.skipped` says so to a
 * roll-forward), so the next apply writes it whole. Returns whether the file is the set's.
 */
function patchLive(target: string, staged: string, op: PatchOp, logger: Logger): boolean {
  const begun = `${staged}.patching`;
  const skipped = `${staged}.skipped`;
  const leave = (from: string, why: string): false => {
    logger.warn({ file: target, why }, 'a file this apply was to patch in place was changed on this standby after staging: it is left as it is, and the next apply writes it whole (tandem-standby apply --force does so now)');
    renameSync(from, skipped);
    return false;
  };
  if (lstatBig(skipped) !== null) return false;
  if (lstatBig(staged) !== null) {
    const st = lstatBig(target);
    if (st === null || !st.isFile()) return leave(staged, 'not a file any more');
    if (!isRecorded(st, op.pt) || st.nlink !== 1n) {
      return leave(staged, `inode ${st.ino}, ctime ${st.ctimeNs}, ${st.size} bytes, ${st.nlink} links; staging found inode ${op.pt.ino}, ctime ${op.pt.ct}, ${op.pt.s} bytes, one link`);
    }
    renameSync(staged, begun);
  }
  if (lstatBig(begun) === null) {
    if (lstatBig(target) === null) throw new TandemError('internal', 'FILES_SWITCH_LOST', `neither ${target} nor the bytes staged to patch it (${staged}) exist`, { hint: 'apply the set again with --force' });
    return true;
  }
  // O_NONBLOCK: a FIFO put in its place since does not block this (ENXIO without a reader).
  let fd: number;
  try {
    fd = openSync(target, fsConstants.O_WRONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ELOOP' || code === 'EISDIR' || code === 'ENXIO') return leave(begun, `it cannot be opened to be written (${code})`);
    throw err;
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile() || String(st.ino) !== op.pt.ino) return leave(begun, `inode ${st.ino}, staging found ${op.pt.ino}`);
    const src = openSync(begun, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    try {
      const buf = Buffer.allocUnsafe(Math.min(1 << 20, op.s));
      let from = 0;
      for (const [at, len] of op.pt.r) {
        for (let done = 0; done < len; ) {
          const n = readSync(src, buf, 0, Math.min(buf.length, len - done), from + done);
          if (n === 0) throw new TandemError('internal', 'FILES_PATCH_SHORT', `${begun} holds ${from + done} bytes; the plan patches ${target} with more`, { hint: 'apply the set again with --force' });
          writeAllSync(fd, buf.subarray(0, n), at + done);
          done += n;
        }
        from += len;
        faultPoint('files-patched-part');
      }
    } finally {
      closeSync(src);
    }
    ftruncateSync(fd, op.s);
    fchmodSync(fd, op.m);
    futimesSync(fd, utimeOf(op.mt), utimeOf(op.mt));
  } finally {
    closeSync(fd);
  }
  rmSync(begun);
  return true;
}

/**
 * The switch of the files part (see the top of this file): idempotent, so that a roll-forward after
 * a kill runs it again from the start.
 */
export async function switchFilesObjects(names: Names, stateDir: string, logger: Logger): Promise<'updated'> {
  if (isS3Url(names.live)) return switchIntoBucket(names, stateDir, logger);
  const live = names.live;
  await mkdir(live, { recursive: true });
  const dirs: Array<{ p: string; mt: number }> = [];
  const recNew = `${recordFile(stateDir)}.new`;
  // The page shapes staged go beside the record first, the record names their SHA-256: a kill
  // between the two renames leaves them not matching, and nothing is skipped by them.
  const shapesStaged = join(names.next, PAGES_FILE);
  const checked = existsSync(shapesStaged) ? (JSON.parse(readFileSync(join(names.next, CHECKED_FILE), 'utf8')) as { checked: number; pagesSha256?: string }) : null;
  if (checked !== null) checked.pagesSha256 = copyHashed(shapesStaged, join(stateDir, PAGES_FILE));
  const rec = new LineSink(recNew);
  // The lines of the files this switch puts in place, in index order as the plan has them: merged
  // with the kept files' lines (in index order too) into the record at the end.
  const written = new LineSink(join(names.next, WRITTEN_FILE));
  let renamed = 0;
  let patched = 0;
  // What the switch removes or replaces is moved (a removed entry) or linked (a large file replaced)
  // into the staging dir, and its blocks are freed when the staging is removed after the switch,
  // not inside it: ext4 freed the 24 MB of an edited video in ~18 ms of a 45 ms switch. Where that
  // fails (another file system), as before: removed, or renamed over.
  const aside = join(names.next, REPLACED_DIR);
  const tag = nodeCrypto.randomBytes(4).toString('hex'); // a switch run again after a kill does not meet its own names
  let asideN = 0;
  const moveAside = (target: string, how: 'link' | 'rename'): boolean => {
    try {
      if (asideN === 0) mkdirSync(aside, { recursive: true, mode: 0o700 });
      (how === 'link' ? linkSync : renameSync)(target, join(aside, `${tag}-${asideN++}`));
      return true;
    } catch {
      return false;
    }
  };
  // The record in index order as the steps go: the kept files' lines copied as bytes from
  // kept.ndjson up to each file this switch writes or restamps (its step says how many come before:
  // PlanOp k), no line parsed or compared. A plan staged before k: the lines written merged with the
  // kept ones at the end, as before.
  let kept: ByteLines | null = null;
  let keptAt = 0;
  let ordered: boolean | undefined;
  const keptUpTo = (k: number): void => {
    kept ??= new ByteLines(openSync(join(names.next, 'kept.ndjson'), fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW));
    if (k > keptAt && kept.copyLines(k - keptAt, rec) !== k - keptAt) {
      throw new TandemError('internal', 'FILES_PLAN_KEPT', `the staged plan in ${names.next} names kept line ${k}, and kept.ndjson has fewer`, { hint: 'apply the set again with --force' });
    }
    keptAt = Math.max(keptAt, k);
  };
  const inOrder = (op: { k?: number }): boolean => {
    const has = op.k !== undefined;
    if (ordered !== undefined && ordered !== has) throw new TandemError('internal', 'FILES_PLAN_KEPT', `the staged plan in ${names.next} has steps with and without kept-line places`, { hint: 'apply the set again with --force' });
    ordered = has;
    return has;
  };
  try {
    rec.write(`${JSON.stringify({ live, ...(checked ?? {}), ...(checked !== null ? { dir: dirId(lstatBig(live)!) } : {}), gen: newGen() } satisfies RecordHead)}`);
    /** Kept files whose mode or mtime this switch set. */
    const restamped = new Set<string>();
    for (const line of lines(join(names.next, 'plan.ndjson'))) {
      const op = JSON.parse(line) as PlanOp;
      const target = join(live, op.p);
      switch (op.o) {
        case 'x':
          if (!moveAside(target, 'rename')) await rm(target, { recursive: true, force: true });
          break;
        case 'd':
          ensureDir(target, op.m);
          dirs.push({ p: target, mt: op.mt });
          break;
        case 'f': {
          const staged = join(names.next, 'data', String(op.n));
          if (op.pt !== undefined) {
            if (!patchLive(target, staged, op as PatchOp, logger)) {
              // Left as it is: no record line, so the next apply writes it whole.
              if (inOrder(op)) keptUpTo(op.k!);
              break;
            }
            patched++;
          } else {
            // A file the plan saw replacing one (PlanOp r), only while the staged copy is there to
            // replace it: a link made to (and later removed from) the file a switch before a kill
            // already put in place would move that file's ctime. Whatever its size: freeing even a
            // small file inside the rename cost ~140 us on ext4 (no journal, discard), against ~25 us
            // to link it aside and rename over it (tmpfs: 9 against 12), so the 1,000 files of a 1%
            // change of 100,000 small files were ~0.2 s of their switch. A new file costs nothing here.
            if (op.r === 1) {
              if (lstatBig(staged) !== null) moveAside(target, 'link');
            } else if (op.s >= LINK_ASIDE_MIN) {
              const replaced = lstatBig(target);
              if (replaced?.isFile() === true && Number(replaced.size) >= LINK_ASIDE_MIN && lstatBig(staged) !== null) moveAside(target, 'link');
            }
            if (await renameInto(staged, target)) {
              renamed++;
              faultPoint('files-renamed-one');
            }
          }
          const now = lstatBig(target);
          if (now === null) {
            throw new TandemError('internal', 'FILES_SWITCH_LOST', `neither ${target} nor its staged copy ${staged} exists`, { hint: 'apply the set again with --force' });
          }
          const line = `${JSON.stringify({ p: op.p, d: op.d, s: op.s, ino: String(now.ino), ct: String(now.ctimeNs), b: op.b } satisfies RecordLine)}`;
          if (inOrder(op)) {
            keptUpTo(op.k!);
            rec.write(line);
          } else written.write(line);
          break;
        }
        case 'm':
          chmodSync(target, op.m);
          utimesSync(target, utimeOf(op.mt), utimeOf(op.mt));
          if (!inOrder(op)) {
            restamped.add(op.p);
            break;
          }
          keptUpTo(op.k!);
          {
            const was = kept!.next();
            keptAt++;
            const r = was === undefined ? undefined : (JSON.parse(was) as RecordLine);
            if (r?.p !== op.p) throw new TandemError('internal', 'FILES_PLAN_KEPT', `the staged plan in ${names.next} has kept line ${op.k} for ${JSON.stringify(op.p)}, and kept.ndjson has ${JSON.stringify(r?.p)} there`, { hint: 'apply the set again with --force' });
            const now = lstatBig(target);
            if (now) rec.write(JSON.stringify({ ...r, ino: String(now.ino), ct: String(now.ctimeNs) }));
          }
          break;
        case 't': {
          if (moveWhole(join(names.next, 'tree', op.p), target)) {
            renamed++;
            faultPoint('files-renamed-one');
          } else if (lstatBig(target) === null) {
            throw new TandemError('internal', 'FILES_SWITCH_LOST', `neither ${target} nor its staged copy in ${join(names.next, 'tree')} exists`, { hint: 'apply the set again with --force' });
          }
          if (op.m !== undefined && op.mt !== undefined) {
            await chmod(target, op.m);
            await utimes(target, utimeOf(op.mt), utimeOf(op.mt));
          }
          break;
        }
        case 'l': {
          const there = await lstatOrNull(target);
          if (there?.isSymbolicLink() && (await readlink(target)) === op.l) break;
          if (there?.isDirectory()) await rm(target, { recursive: true, force: true });
          const tmp = join(names.next, 'data', `l${op.n}`);
          await rm(tmp, { force: true });
          await symlink(op.l, tmp);
          await lutimes(tmp, utimeOf(op.mt), utimeOf(op.mt));
          await rename(tmp, target);
          break;
        }
      }
    }
    written.close();
    // Kept files: as recorded (staging found them with the inode and ctime the record has), but
    // those whose mode or mtime was set above (their ctime moved).
    const keptMerged = function* (): Generator<string> {
      for (const line of lines(join(names.next, 'kept.ndjson'))) {
        if (restamped.size === 0 || !restamped.has(recordPath(line))) {
          yield line;
          continue;
        }
        const r = JSON.parse(line) as RecordLine;
        const now = lstatBig(join(live, r.p));
        if (now) yield JSON.stringify({ ...r, ino: String(now.ino), ct: String(now.ctimeNs) });
      }
    };
    if (ordered === false) for (const line of mergeRecordLines(lines(join(names.next, WRITTEN_FILE)), keptMerged())) rec.write(line);
    else {
      keptUpTo(0);
      kept!.copyRest(rec);
    }
    for (const d of dirs.reverse()) utimesSync(d.p, utimeOf(d.mt), utimeOf(d.mt));
    // A first apply into an empty dir: the lines written as the files were staged; a top-level
    // file's ctime moved with its rename.
    const treeRecord = join(names.next, TREE_RECORD);
    if (existsSync(treeRecord)) {
      for (const line of lines(treeRecord)) {
        const p = recordPath(line);
        if (p.includes('/')) {
          rec.write(line);
          continue;
        }
        const now = lstatBig(join(live, p));
        if (now) rec.write(`${JSON.stringify({ ...(JSON.parse(line) as RecordLine), ino: String(now.ino), ct: String(now.ctimeNs) })}`);
      }
    }
  } catch (err) {
    closeSinks([written, rec], true);
    throw err;
  } finally {
    (kept as ByteLines | null)?.close();
  }
  rec.close();
  await rename(recNew, recordFile(stateDir));
  await rm(join(stateDir, RECORD_DELTA), { force: true });
  logger.debug({ renamed, patched }, 'files switched in place');
  return 'updated';
}

/**
 * The switch into a bucket (paths.files s3://): removals, then each new or changed file PUT (an
 * object is replaced whole or not at all), its staged copy removed once stored, the record learning
 * its ETag. Run again from the start by a roll-forward: a file whose staged copy is gone was stored.
 */
async function switchIntoBucket(names: Names, stateDir: string, logger: Logger): Promise<'updated'> {
  const bucket = openFilestore(names.live);
  try {
    const recNew = `${recordFile(stateDir)}.new`;
    const rec = new LineSink(recNew);
    const written = new LineSink(join(names.next, WRITTEN_FILE));
    let put = 0;
    try {
      rec.write(`${JSON.stringify({ live: names.live, gen: newGen() } satisfies RecordHead)}`);
      for (const line of lines(join(names.next, 'plan.ndjson'))) {
        const op = JSON.parse(line) as PlanOp;
        if (op.o === 'x') await bucket.delete(op.p);
        else if (op.o === 'f') {
          const staged = join(names.next, 'data', String(op.n));
          let info;
          if (await lstatOrNull(staged)) {
            info = await bucket.put(op.p, createReadStream(staged), { contentLength: op.s });
            await rm(staged, { force: true });
            put++;
            faultPoint('files-renamed-one');
          } else {
            info = await bucket.stat(op.p);
            if (info === null) throw new TandemError('internal', 'FILES_SWITCH_LOST', `neither ${names.live}/${op.p} nor its staged copy exists`, { hint: 'apply the set again with --force' });
          }
          written.write(`${JSON.stringify({ p: op.p, d: op.d, s: op.s, ino: info.version, ct: 's3' } satisfies RecordLine)}`);
        }
      }
      written.close();
      for (const line of mergeRecordLines(lines(join(names.next, WRITTEN_FILE)), lines(join(names.next, 'kept.ndjson')))) rec.write(line);
    } catch (err) {
      closeSinks([written, rec], true);
      throw err;
    }
    rec.close();
    await rename(recNew, recordFile(stateDir));
    await rm(join(stateDir, RECORD_DELTA), { force: true });
    logger.debug({ put }, 'files switched into the bucket');
    return 'updated';
  } finally {
    await bucket.close();
  }
}

/** After an apply of the tar format the record no longer describes the live files. */
export const forgetFilesRecord = async (stateDir: string): Promise<void> => {
  await rm(recordFile(stateDir), { force: true });
  await rm(join(stateDir, RECORD_DELTA), { force: true });
  await rm(join(stateDir, PAGES_FILE), { force: true });
};
