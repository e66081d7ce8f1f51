import type { Readable } from 'node:stream';
import { TandemError } from '../errors.js';
import { textLines } from '../streams.js';
import { OBJECT_ID_PATTERN } from './object-id.js';
import { MAX_PACK_PLAIN, type PackInfo } from './pack.js';
import type { ChunkSizes } from './chunker.js';

/**
 * The files index: the `files` artifact of a set whose files are content objects (manifest version
 * 2, artifact kind `files-index`). Newline-delimited JSON, compressed and encrypted like every
 * artifact (and also to the files key's recipient, files-key.ts), covered by the signed manifest.
 *
 *   {"t":"h","format":"tandem-files-index","version":2,"site":..,"setId":..,"chunking":{min,avg,max}}
 *   {"t":"o","id":..,"size":..,"sha256":..,"plain":..,"c":"none"|"deflate"}     a pack (pack.ts)
 *   {"t":"d","p":"media","m":493,"mt":1700000000000.5}                           a directory
 *   {"t":"f","p":"media/a.jpg","m":420,"mt":..,"s":1234,"b":[[0,0,1234,"<blob id>"]]}  a file: its
 *        blobs in order, each [pack ordinal, offset, length, blob id]
 *   {"t":"l","p":"media/cover.jpg","m":511,"mt":..,"l":"/mnt/shared/cover.jpg"}  a symlink, carried
 *        as a link whatever its target
 *   {"t":"p","b":[0,0,4711,"<blob id>"]}                                         a page (version 2)
 *   {"t":"e","entries":..,"objects":..,"bytes":..}                               the end
 *
 * Version 2 (paged): the root (this artifact) holds the header, the lines of the packs its pages
 * are in, a line per page and the end; the entries are in the pages, each a blob stored in packs of
 * pages (pages.ts) like file content: its own pack lines (ordinals from 0 within the page) and its
 * entries. A page unchanged since an earlier set is the same bytes, so the same blob, and is not
 * uploaded again: a set costs the pages that changed and a root of a line per page, not the whole
 * index. Version 1 (every pack and entry in the root) is still read: sets made before, and files
 * deltas, which are small.
 *
 * A pack's line comes before the first entry that uses it (ordinals count "o" lines from 0). Entries
 * are in depth-first order with the names of a directory sorted (comparePaths), each directory
 * before what it holds: a reader checks every entry against the ones before it with memory in
 * proportion to the depth of the tree, the number of packs and one page, not the number of files.
 */
export const FILES_INDEX_FORMAT = 'tandem-files-index';
export const FILES_INDEX_VERSION = 2;
/** Files deltas (and sets made before pages) use version 1: entries and packs in one artifact. */
export const FILES_INDEX_V1 = 1;
/** The largest page: it is a blob, so it fits a pack (a file's line is bounded below this, files-objects.ts). */
export const MAX_PAGE = MAX_PACK_PLAIN;
/** Names a set's files tree may not use: what tandem itself keeps beside or inside it. */
export const RESERVED_NAME = /^\.tandem-/;
/**
 * The longest line: a file's line lists its blobs (~90 bytes each, one per 1 MiB chunk above 1 GiB),
 * and its page the lines of its packs too, so this bounds one file at ~125 GiB (the primary refuses
 * a larger one by name).
 */
export const MAX_INDEX_LINE = 16 * 1024 * 1024;
const MAX_LINE = MAX_INDEX_LINE;

export interface IndexHeader {
  t: 'h';
  format: typeof FILES_INDEX_FORMAT;
  version: number;
  site: string;
  setId: string;
  chunking: ChunkSizes;
}
export type IndexObject = { t: 'o' } & PackInfo;
export type BlobRef = [pack: number, offset: number, length: number, id: string];
export interface DirEntry { t: 'd'; p: string; m: number; mt: number }
export interface FileEntry { t: 'f'; p: string; m: number; mt: number; s: number; b: BlobRef[] }
export interface LinkEntry { t: 'l'; p: string; m: number; mt: number; l: string }
export type TreeEntry = DirEntry | FileEntry | LinkEntry;
export interface IndexEnd { t: 'e'; entries: number; objects: number; bytes: number }
export interface IndexPage { t: 'p'; b: BlobRef }
export type IndexLine = IndexHeader | IndexObject | TreeEntry | IndexPage | IndexEnd;

export const indexLine = (l: IndexLine): Buffer => Buffer.from(`${JSON.stringify(l)}\n`);

/**
 * Component-wise order of '/'-separated paths: the order of a depth-first walk with sorted names.
 * The same as comparing the strings with '/' below every other character (no name holds one), so
 * it is done in place, without splitting (a reader compares every entry with the one before it).
 */
export function comparePaths(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    if (x === 0x2f) return -1;
    if (y === 0x2f) return 1;
    return x - y;
  }
  return a.length - b.length;
}

/** Why a path may not be in an index, or undefined. */
export function indexPathProblem(p: string): string | undefined {
  if (typeof p !== 'string' || p === '') return 'is empty';
  if (p.length > 4096) return `is longer than 4096 characters (PATH_MAX)`;
  if (p.startsWith('/')) return 'is absolute';
  if (p.includes('\0')) return 'contains a NUL byte';
  for (const seg of p.split('/')) {
    if (seg === '') return 'has an empty segment';
    if (seg === '.' || seg === '..') return `contains '${seg}'`;
    if (RESERVED_NAME.test(seg)) return `uses a name tandem reserves (${seg})`;
  }
  return undefined;
}

/**
 * A page of a version-2 index, as its root names it: the blob's pack, place and id. The loader
 * returns the page's plain bytes only after they matched the id (the HMAC under the files key),
 * and the pack's stored bytes the signed SHA-256 before that (pages.ts, pageLoader).
 */
export type PageLoader = (pack: PackInfo, offset: number, length: number, id: string) => Promise<Buffer>;

export interface ReadIndexOptions {
  label: string;
  site: string;
  setId: string;
  maxEntries: number;
  maxBytes?: number;
  /** Accept the index of any set of the site (the primary rebuilding its cache from the newest one). */
  anySet?: boolean;
  /** Loads a page of a version-2 index; without it such an index is refused. */
  pages?: PageLoader;
  /** Each page as it is read: its pack (an ordinal of `packs`), place and id (the primary's cache learns where pages are). */
  onPage?: (pack: number, offset: number, length: number, id: string) => void;
  /**
   * A page the caller has read before in full (the standby's last applied index): its shape, or
   * undefined to read it. A page given is not loaded or parsed; its shape stands in for it in every
   * check against the rest of the index (order, directories, packs, counts, limits).
   */
  skipPage?: (id: string, length: number) => PageShape | undefined;
  /** After each page of a version-2 index: its shape (as read, or as skipPage gave it). */
  pageDone?: (shape: PageShape, skipped: boolean) => void;
}

/**
 * What the rest of an index needs to know of one page to check it: everything here follows from
 * the page's bytes alone, so it holds for the same page (the same id) in any index. `x1` is the
 * directory of the page's first entry, `xk` that of its last entry whose directory is not in the
 * page; in depth-first order every entry's directory outside the page is an ancestor of (or is)
 * `x1`, so the page fits where it is when `x1` encloses the entry before it, and after it the
 * enclosing directories are those up to `xk`, then `open` (the page's own, still open).
 */
export interface PageShape {
  id: string;
  /** Entries, and bytes of file data. */
  n: number;
  by: number;
  /** The first and last paths. */
  f: string;
  z: string;
  x1: string;
  xk: string;
  open: string[];
  /** Its pack lines, in order. */
  o: PackInfo[];
}

export interface IndexItem {
  entry: TreeEntry;
}

/**
 * The entries of an index from its plain bytes, every line checked against the ones before it: a
 * hostile index (paths that escape or repeat, an entry under a symlink or a file, blobs outside
 * their packs, a pack referenced before its line, a missing end) is refused naming the line.
 * `packs` grows as the pack lines pass; the entries' blob references are ordinals of it, whatever
 * the version (a version-2 page's own ordinals are mapped to it, and its root's packs are in it
 * too: every object a set needs is in `packs`).
 */
export async function* readFilesIndex(plain: AsyncIterable<Buffer | string> | Readable, o: ReadIndexOptions, packs: PackInfo[] = []): AsyncGenerator<TreeEntry, IndexEnd> {
  let lineNo = 0;
  /** Where the line being read is, for messages: the root, or a page of it. */
  let where = '';
  let header: IndexHeader | undefined;
  let end: IndexEnd | undefined;
  let entries = 0;
  let bytes = 0;
  let prev: string | undefined;
  let pages = 0;
  /** Every pack's place in `packs`, by id: a pack listed by several pages is one pack. */
  const byId = new Map<string, number>();
  /** The root's pack lines (its ordinals) as places in `packs`: the same numbers in version 1. */
  const rootPacks: number[] = [];
  /** The directories enclosing the current entry ('' is the root). */
  const stack: string[] = [''];
  const fail = (why: string): never => {
    throw new TandemError('integrity', 'INDEX_INVALID', `${o.label}: ${where}line ${lineNo} of the files index: ${why}`, {
      hint: 'the index is signed, so this set was made by a faulty primary: make a new set; nothing was written to the live files',
    });
  };
  const tooLong = (): never => {
    lineNo++;
    return fail(`a line longer than ${MAX_LINE} bytes`);
  };
  /** A pack line's fields checked; its place in `packs` (added once, whoever lists it). */
  const packLine = (l: IndexObject): number => {
    // Version 1 lists each pack once (its ordinals count the lines); version 2 may list a pack in
    // several pages, and it is one pack: the fields of a pack seen before must be the same.
    const seen = header!.version === FILES_INDEX_V1 ? undefined : byId.get(l.id);
    if (seen !== undefined) {
      const p = packs[seen]!;
      if (p.size !== l.size || p.sha256 !== l.sha256 || p.plain !== l.plain || p.c !== l.c) fail(`pack ${l.id} is listed again with other fields`);
      return seen;
    }
    const ok =
      typeof l.id === 'string' && OBJECT_ID_PATTERN.test(l.id) && isCount(l.size) && typeof l.sha256 === 'string' && /^[0-9a-f]{64}$/.test(l.sha256) &&
      isCount(l.plain) && l.plain <= MAX_PACK_PLAIN && (l.c === 'none' || l.c === 'deflate');
    if (!ok) fail('a pack line with missing or invalid fields');
    byId.set(l.id, packs.length);
    packs.push({ id: l.id, size: l.size, sha256: l.sha256, plain: l.plain, c: l.c });
    return packs.length - 1;
  };
  /** A blob reference checked against the packs `local` maps it through (the root's or a page's); returned with the ordinal in `packs`. */
  const blobRef = (ref: unknown, local: number[], what: string): BlobRef => {
    if (!Array.isArray(ref) || ref.length !== 4) fail(`${what}: a blob reference is not [pack, offset, length, id]`);
    const [pack, off, len, id] = ref as BlobRef;
    const g = Number.isInteger(pack) && pack >= 0 ? local[pack] : undefined;
    const info = g === undefined ? undefined : packs[g];
    if (info === undefined) fail(`${what}: refers to pack ${pack}, which no line before it describes`);
    if (!isCount(off) || !isCount(len) || len === 0 || off + len > info!.plain) fail(`${what}: a blob outside its pack (${off}+${len} of ${info!.plain} bytes)`);
    if (typeof id !== 'string' || !OBJECT_ID_PATTERN.test(id)) fail(`${what}: a blob id that is not one`);
    return [g!, off, len, id];
  };
  /** A tree entry checked against the ones before it; `local` maps its pack ordinals (the root's or a page's). */
  const treeEntry = (l: TreeEntry, local: number[]): TreeEntry => {
    const why = indexPathProblem(l.p);
    if (why !== undefined) fail(`path ${JSON.stringify(typeof l.p === 'string' && l.p.length > 200 ? `${l.p.slice(0, 200)}…` : l.p)} ${why}`);
    if (prev !== undefined && comparePaths(prev, l.p) >= 0) fail(`path ${JSON.stringify(l.p)} is out of order or repeated (after ${JSON.stringify(prev)})`);
    prev = l.p;
    if (!Number.isInteger(l.m) || l.m < 0 || l.m > 0o7777) fail(`${JSON.stringify(l.p)}: mode ${l.m} is not a permission mode`);
    if (typeof l.mt !== 'number' || !Number.isFinite(l.mt)) fail(`${JSON.stringify(l.p)}: no valid mtime`);
    const slash = l.p.lastIndexOf('/');
    const parent = slash < 0 ? '' : l.p.slice(0, slash);
    while (stack.length > 1 && stack.at(-1) !== parent) stack.pop();
    if (stack.at(-1) !== parent) fail(`${JSON.stringify(l.p)}: its directory ${JSON.stringify(parent)} is not a directory entry before it`);
    if (++entries > o.maxEntries) fail(`more than ${o.maxEntries} entries (limits.maxEntries)`);
    if (l.t === 'd') stack.push(l.p);
    else if (l.t === 'l') {
      if (typeof l.l !== 'string' || l.l === '' || l.l.includes('\0')) fail(`${JSON.stringify(l.p)}: a symlink without a valid target`);
    } else {
      if (!isCount(l.s) || !Array.isArray(l.b)) fail(`${JSON.stringify(l.p)}: a file without a valid size or blob list`);
      let sum = 0;
      const what = JSON.stringify(l.p);
      for (let i = 0; i < l.b.length; i++) {
        const ref = blobRef(l.b[i], local, what);
        l.b[i] = ref;
        sum += ref[2];
      }
      if (sum !== l.s) fail(`${JSON.stringify(l.p)}: its blobs hold ${sum} bytes, its size says ${l.s}`);
      bytes += l.s;
      if (o.maxBytes !== undefined && bytes > o.maxBytes) fail(`more than ${o.maxBytes} bytes of file data (limits.maxBytes, or the free space where they go)`);
    }
    return l;
  };
  const parse = (text: string): IndexLine => {
    let l: IndexLine;
    try {
      l = JSON.parse(text) as IndexLine;
    } catch {
      return fail('not JSON');
    }
    if (l === null || typeof l !== 'object' || Array.isArray(l)) fail('not an object');
    return l;
  };
  /** The entries of one page: its own pack lines (ordinals from 0) and entries, nothing else. */
  const readPage = function* (page: Buffer, n: number, id: string): Generator<TreeEntry> {
    const rootLine = lineNo;
    where = `page ${n} (root line ${rootLine}), `;
    lineNo = 0;
    const local: number[] = [];
    let inPage = 0;
    const entries0 = entries;
    const bytes0 = bytes;
    // The page's shape (PageShape), as its entries pass: stack[inPageFrom..] are its own directories.
    let inPageFrom = stack.length;
    let x1: string | undefined;
    let xk = '';
    let firstPath: string | undefined;
    if (page.length === 0 || page[page.length - 1] !== 0x0a) fail('the page does not end with a newline');
    // Decoded once (a newline byte is never inside a UTF-8 sequence): a decode per line cost more
    // than the parse.
    const text = page.toString('utf8');
    let at = 0;
    while (at < text.length) {
      const nl = text.indexOf('\n', at);
      lineNo++;
      // Characters, then bytes when they could be too many (a character is at most 3 bytes per UTF-16 unit).
      if (nl - at > MAX_LINE || ((nl - at) * 3 > MAX_LINE && Buffer.byteLength(text.slice(at, nl)) > MAX_LINE)) fail(`a line longer than ${MAX_LINE} bytes`);
      const l = parse(text.slice(at, nl));
      at = nl + 1;
      if (l.t === 'o') local.push(packLine(l));
      else if (l.t === 'd' || l.t === 'f' || l.t === 'l') {
        inPage++;
        const e = treeEntry(l, local);
        // treeEntry left the entry's directory on top (and pushed the entry, a directory).
        const depth = stack.length - (e.t === 'd' ? 1 : 0);
        if (depth <= inPageFrom) {
          inPageFrom = depth;
          xk = stack[depth - 1]!;
          x1 ??= xk;
        }
        firstPath ??= e.p;
        yield e;
      } else fail(`a ${JSON.stringify((l as { t?: unknown }).t)} line in a page (pages hold pack lines and entries only)`);
    }
    if (inPage === 0) fail('a page without entries');
    o.pageDone?.({ id, n: entries - entries0, by: bytes - bytes0, f: firstPath!, z: prev!, x1: x1!, xk, open: stack.slice(inPageFrom), o: local.map((g) => packs[g]!) }, false);
    where = '';
    lineNo = rootLine;
  };

  /** A page known by its shape (ReadIndexOptions.skipPage): checked against the rest as its entries would be. */
  const skipPage = (sh: PageShape, n: number): void => {
    const at = `page ${n} (${sh.n} entries, as read before)`;
    if (prev !== undefined && comparePaths(prev, sh.f) >= 0) fail(`${at}: path ${JSON.stringify(sh.f)} is out of order or repeated (after ${JSON.stringify(prev)})`);
    const toDir = (d: string): void => {
      while (stack.length > 1 && stack.at(-1) !== d) stack.pop();
      if (stack.at(-1) !== d) fail(`${at}: ${JSON.stringify(sh.f)}: its directory ${JSON.stringify(d)} is not a directory entry before it`);
    };
    toDir(sh.x1);
    toDir(sh.xk);
    stack.push(...sh.open);
    for (const p of sh.o) packLine({ t: 'o', ...p });
    entries += sh.n;
    if (entries > o.maxEntries) fail(`more than ${o.maxEntries} entries (limits.maxEntries)`);
    bytes += sh.by;
    if (o.maxBytes !== undefined && bytes > o.maxBytes) fail(`more than ${o.maxBytes} bytes of file data (limits.maxBytes, or the free space where they go)`);
    prev = sh.z;
    o.pageDone?.(sh, true);
  };

  for await (const text of textLines(plain as AsyncIterable<Buffer | string>, MAX_LINE, tooLong)) {
    lineNo++;
    if (end) fail('a line after the end line');
    const l = parse(text);
    if (header === undefined) {
      if (l.t !== 'h' || l.format !== FILES_INDEX_FORMAT) fail('no header line');
      const h = l as IndexHeader;
      if (h.version !== FILES_INDEX_V1 && h.version !== FILES_INDEX_VERSION) fail(`version ${h.version}, this tandem reads versions 1 and 2: ${h.version > FILES_INDEX_VERSION ? 'upgrade this agent' : 'unknown'}`);
      if (h.site !== o.site || (h.setId !== o.setId && !o.anySet)) fail(`it says site ${JSON.stringify(h.site)}, set ${JSON.stringify(h.setId)}; the manifest is of site ${JSON.stringify(o.site)}, set ${o.setId}`);
      if (h.version === FILES_INDEX_VERSION && o.pages === undefined) fail('a paged index (version 2), and this reader was given no way to load its pages');
      header = h;
      continue;
    }
    switch (l.t) {
      case 'o':
        rootPacks.push(packLine(l));
        break;
      case 'p': {
        if (header.version !== FILES_INDEX_VERSION) fail('a page line in a version-1 index');
        const [pack, off, len, id] = blobRef((l as IndexPage).b, rootPacks, 'a page');
        if (len > MAX_PAGE) fail(`a page of ${len} bytes, more than ${MAX_PAGE}`);
        o.onPage?.(pack, off, len, id);
        const shape = o.skipPage?.(id, len);
        if (shape !== undefined) {
          skipPage(shape, ++pages);
          break;
        }
        const page = await o.pages!(packs[pack]!, off, len, id);
        if (page.length !== len) fail(`page ${pages + 1}: ${page.length} bytes loaded, the root says ${len}`);
        yield* readPage(page, ++pages, id);
        break;
      }
      case 'd':
      case 'f':
      case 'l':
        if (header.version !== FILES_INDEX_V1) fail('an entry in the root of a paged index (entries are in its pages)');
        yield treeEntry(l, rootPacks);
        break;
      case 'e':
        if (l.entries !== entries || l.objects !== packs.length || l.bytes !== bytes) {
          fail(`the end line counts ${l.entries} entries, ${l.objects} packs, ${l.bytes} bytes; the index holds ${entries}, ${packs.length}, ${bytes}`);
        }
        end = l;
        break;
      default:
        fail(`unknown line type ${JSON.stringify((l as { t?: unknown }).t)}`);
    }
  }
  if (header === undefined) {
    lineNo = 0;
    fail('empty');
  }
  if (!end) {
    lineNo++;
    fail('no end line (truncated)');
  }
  return end!;
}

const isCount = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;
