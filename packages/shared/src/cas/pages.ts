import type { Filestore } from '../filestore/filestore.js';
import type { FileEntry, PageLoader, TreeEntry } from './files-index.js';
import { fetchPackStored } from './pack-fetch.js';
import type { PageCache } from './page-cache.js';
import { blobSlices, openPackPieces, type PackInfo, type PackPlain } from './pack.js';

/**
 * The pages of a version-2 files index (files-index.ts): the index's entries cut into pages at
 * content-defined entry boundaries, each page a blob stored like file content.
 *
 * Where a page ends depends only on the entries in it: after an entry whose path hashes below a
 * threshold proportional to the entry's line length (so pages average PAGE_AVG bytes whatever the
 * lines are like), never before PAGE_MIN bytes, always after PAGE_MAX. A change to one entry (a file
 * edited, added or removed) changes its own page, and the cut points come back after it: every
 * other page keeps its bytes, so its blob id, and is found stored. Within a page, packs are listed
 * before their first use with ordinals from 0: a page's bytes do not depend on what came before it.
 *
 * Sizes: a page is the unit re-uploaded when one of its entries changes, and each page costs a line
 * in the root (~150 bytes, uploaded every set). 4 KiB pages make a 1% change to the bench tree
 * (~40 entries changed, scattered over its directories) cost ~100-200 KB of pages where the whole
 * index was ~1 MB; a tree of 100,000 small files has ~4,000 pages, a root of ~0.5 MB.
 */
export const PAGE_MIN = 512;
export const PAGE_AVG = 4096;
export const PAGE_MAX = 64 * 1024;

/** FNV-1a (32 bits) of a string's UTF-16 code units: cheap, and the same in every version. */
function pathHash(p: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < p.length; i++) {
    h ^= p.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A blob of a file being written to a page: its pack (by info) and place. */
export interface PageBlob {
  info: PackInfo;
  offset: number;
  length: number;
  id: string;
}

/** Entries in, pages out (each the text of one page: the writer encodes it where it stores it). */
export class PageBuilder {
  #lines: string[] = [];
  #bytes = 0;
  #entries = 0;
  #local = new Map<string, number>();

  /**
   * The bytes a page holding only this file would have at most (its pack lines and its line): the
   * writer refuses a file whose page could not be stored (files-index.ts, MAX_PAGE).
   */
  static fileBound(path: string, blobs: number, packs: number): number {
    return blobs * 100 + packs * 260 + path.length * 6 + 200;
  }

  /** Adds an entry (a file's blobs given by pack); returns a page when this entry ends one. */
  add(entry: TreeEntry, blobs: readonly PageBlob[] = []): string | null {
    let line: string;
    if (entry.t === 'f') {
      const b = blobs.map((x) => {
        let n = this.#local.get(x.info.id);
        if (n === undefined) {
          n = this.#local.size;
          this.#local.set(x.info.id, n);
          this.#push(`${JSON.stringify({ t: 'o', ...x.info })}\n`);
        }
        return [n, x.offset, x.length, x.id];
      });
      line = `${JSON.stringify({ ...(entry as FileEntry), b })}\n`;
    } else line = `${JSON.stringify(entry)}\n`;
    this.#push(line);
    this.#entries++;
    if (this.#bytes >= PAGE_MAX) return this.take();
    if (this.#bytes >= PAGE_MIN && pathHash(entry.p) < Math.min(1, line.length / PAGE_AVG) * 0x1_0000_0000) return this.take();
    return null;
  }

  /** The page being filled, if it holds an entry (the last page of an index). */
  take(): string | null {
    if (this.#entries === 0) return null;
    const page = this.#lines.join('');
    this.#lines = [];
    this.#bytes = 0;
    this.#entries = 0;
    this.#local.clear();
    return page;
  }

  #push(s: string): void {
    this.#lines.push(s);
    this.#bytes += s.length;
  }
}

/**
 * The plain bytes of opened packs a page loader keeps: the pages of a set after a small change lie
 * in the pack of the first set and in the packs of the sets since, in root order alternately, and
 * fetching and opening the first set's pack again for every changed page cost a 1% change's apply
 * more than the change (40 times 1 MB). Packs of pages are ~1 MiB: this keeps several.
 */
export const PAGE_PACKS_KEPT_BYTES = 8 * 1024 * 1024;

/**
 * Loads pages from the filestore: each pack's stored bytes bounded by its signed size and checked
 * against its SHA-256 before a byte is decrypted (openPackPieces), each page against its id before
 * it is parsed (blobSlices). Opened packs are kept, the least recently used dropped first, up to
 * PAGE_PACKS_KEPT_BYTES (and always the one in use). With a cache (page-cache.ts: a standby's pages
 * of the index it read last), a page it has and that still matches its id is not fetched, and every
 * page read goes into the cache's next version.
 */
export function pageLoader(fs: Filestore, site: string, o: { identities: string[] | null; hmacKey: Buffer; label: string; signal?: AbortSignal; cache?: PageCache }): PageLoader {
  const kept = new Map<string, PackPlain>();
  let bytes = 0;
  return async (info, offset, length, id) => {
    const cached = o.cache?.get(id, length);
    if (cached) {
      o.cache!.add(id, cached);
      return cached;
    }
    let plain = kept.get(info.id);
    if (plain !== undefined) {
      kept.delete(info.id);
      kept.set(info.id, plain);
    } else {
      const stored = await fetchPackStored(fs, site, info, { label: `${o.label}: a page`, signal: o.signal });
      plain = await openPackPieces(stored, info, { identities: o.identities, label: `${o.label}: a page` });
      kept.set(info.id, plain);
      bytes += plain.length;
      for (const [k, v] of kept) {
        if (bytes <= PAGE_PACKS_KEPT_BYTES || k === info.id) break;
        kept.delete(k);
        bytes -= v.length;
      }
    }
    const slices = blobSlices(plain, { id, offset, length }, o.hmacKey, `${o.label}: a page`);
    const page = slices.length === 1 ? slices[0]! : Buffer.concat(slices, length);
    o.cache?.add(id, page);
    return page;
  };
}
