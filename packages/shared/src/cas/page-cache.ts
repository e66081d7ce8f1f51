import { closeSync, fstatSync, openSync, readSync, renameSync, rmSync, constants } from 'node:fs';
import { GatherWriter, OPEN_NEW_FILE, writeAllSync } from '../fsutil.js';
import { objectMatches } from './object-id.js';

/**
 * The pages of the last files index a standby read, kept in its state directory
 * (`index-pages.bin`, 0600): a set after a small change shares all but a few pages with the set
 * before, and fetching, checking and opening the packs those pages are in again cost an apply of a
 * 1% change more than the change. A page is taken from here only by its id, and only when its
 * bytes still match that id (the keyed hash under the files key, as for a page from the
 * filestore): a damaged, stale or foreign file costs a fetch, never a wrong entry.
 *
 * Layout: the pages' bytes one after the other, then a JSON table `[[id, offset, length], ...]`,
 * then the table's length (4 bytes, big-endian). Written whole beside (`.new`) and renamed.
 */
export const PAGE_CACHE_FILE = 'index-pages.bin';
/** A table larger than this is not read (a tree of millions of files has ~150 bytes per page of ~30 entries). */
const MAX_TABLE = 64 * 1024 * 1024;
/** Bytes read from the old cache, and written to the new one, per call. */
const WINDOW = 1024 * 1024;

export class PageCache {
  #fd: number | null = null;
  #table = new Map<string, { offset: number; length: number }>();
  #out: number | null = null;
  #outTable: Array<[string, number, number]> = [];
  #outAt = 0;
  #outIds = new Set<string>();
  /** The new cache's pages, gathered up to WINDOW bytes per write. */
  #pending: GatherWriter | null = null;
  /** The part of the old cache read last: pages are asked for mostly in the order they were written. */
  #window: Buffer | null = null;
  #windowAt = 0;
  #windowLen = 0;
  readonly #path: string;
  readonly #hmacKey: Buffer;
  /** Pages taken from the cache. */
  hits = 0;

  /** The cache at `path` (none, or unreadable: empty); `write` starts a new one beside, for commit(). */
  constructor(path: string, hmacKey: Buffer, o: { write: boolean }) {
    this.#path = path;
    this.#hmacKey = hmacKey;
    try {
      const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
      this.#fd = fd;
      const size = fstatSync(fd).size;
      const tail = Buffer.alloc(4);
      if (size < 4 || readSync(fd, tail, 0, 4, size - 4) !== 4) throw new Error('short');
      const len = tail.readUInt32BE(0);
      if (len > MAX_TABLE || len > size - 4) throw new Error('bad table');
      const buf = Buffer.allocUnsafe(len);
      if (readSync(fd, buf, 0, len, size - 4 - len) !== len) throw new Error('short');
      const rows = JSON.parse(buf.toString('utf8')) as unknown;
      if (!Array.isArray(rows)) throw new Error('bad table');
      for (const r of rows as unknown[]) {
        if (!Array.isArray(r) || typeof r[0] !== 'string' || !Number.isSafeInteger(r[1]) || !Number.isSafeInteger(r[2]) || r[1] < 0 || r[2] < 0 || r[1] + r[2] > size - 4 - len) continue;
        this.#table.set(r[0], { offset: r[1], length: r[2] });
      }
    } catch {
      // No cache yet, or one this reader cannot use: every page is fetched.
      this.#table.clear();
    }
    if (o.write) {
      rmSync(`${path}.new`, { force: true });
      this.#out = openSync(`${path}.new`, OPEN_NEW_FILE, 0o600);
      this.#pending = new GatherWriter(this.#out, WINDOW);
    }
  }

  /** The page `id` of `length` bytes, when the cache has it and it still matches its id; else null. */
  get(id: string, length: number): Buffer | null {
    const at = this.#table.get(id);
    if (this.#fd === null || at === undefined || at.length !== length) return null;
    if (at.offset < this.#windowAt || at.offset + length > this.#windowAt + this.#windowLen) {
      // Read from this page on, a window at a time (one read for a run of pages, not one each).
      const size = Math.max(WINDOW, length);
      if (this.#window === null || this.#window.length < size) this.#window = Buffer.allocUnsafe(size);
      let got = 0;
      while (got < size) {
        const n = readSync(this.#fd, this.#window, got, size - got, at.offset + got);
        if (n === 0) break;
        got += n;
      }
      this.#windowAt = at.offset;
      this.#windowLen = got;
      if (got < length) return null;
    }
    const start = at.offset - this.#windowAt;
    const page = Buffer.allocUnsafe(length);
    this.#window!.copy(page, 0, start, start + length);
    if (!objectMatches(this.#hmacKey, id, page)) return null;
    this.hits++;
    return page;
  }

  /** A page of the index being read, for the next reader (once per id). */
  add(id: string, page: Buffer): void {
    if (this.#out === null || this.#outIds.has(id)) return;
    this.#pending!.bytes(page);
    this.#outTable.push([id, this.#outAt, page.length]);
    this.#outIds.add(id);
    this.#outAt += page.length;
  }

  /** The new cache replaces the old one (call once the whole index was read). */
  commit(): void {
    if (this.#out === null) return;
    this.#pending!.flush();
    const table = Buffer.from(JSON.stringify(this.#outTable));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(table.length, 0);
    writeAllSync(this.#out, table);
    writeAllSync(this.#out, len);
    closeSync(this.#out);
    this.#out = null;
    renameSync(`${this.#path}.new`, this.#path);
  }

  /** Closes the old cache; a new one not committed is removed. */
  close(): void {
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
    if (this.#out !== null) {
      closeSync(this.#out);
      this.#out = null;
      rmSync(`${this.#path}.new`, { force: true });
    }
  }
}
