import { closeSync, createReadStream, createWriteStream, existsSync, lstatSync, openSync, readdirSync, readSync, type WriteStream } from 'node:fs';
import { appendFile, lstat, open, readFile, readlink, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { CachedFiles } from './cached-files.js';
import {
  ChunkerStream,
  FILES_INDEX_FORMAT,
  FILES_INDEX_VERSION,
  MAX_CHUNK,
  MAX_INDEX_LINE,
  MAX_PAGE,
  PACK_TARGET,
  PAGE_MAX,
  PageBuilder,
  SMALL_CHUNK_SIZES,
  chunkSizesFor,
  RESERVED_NAME,
  TandemError,
  comparePaths,
  cutPoint,
  indexPathProblem,
  isS3Url,
  openFilestore,
  type OpenFilestoreOptions,
  faultPoint,
  indexLine,
  objectIdBytes,
  BlobTable,
  objectKey,
  packId,
  readFilesIndex,
  sealPackStream,
  textLines,
  type FilesKey,
  type Filestore,
  type IndexLine,
  type Logger,
  type PackInfo,
  type PageLoader,
  type ProgressMeter,
  type TreeEntry,
} from '@tandem/shared';

/**
 * The files of a set as content objects (cas/): the tree at paths.files is walked depth first with
 * each directory's names sorted, every regular file cut into blobs (whole when small, content-defined
 * chunks when large), each blob named by its HMAC under the files key, and only blobs not stored
 * before are packed and uploaded. What this produces is the files index (cas/files-index.ts), as a
 * stream that run-backup.ts compresses, encrypts and uploads like any artifact.
 *
 * What is stored is known from the cache, `files-cache.ndjson` in the state dir: the index of the
 * last set this primary committed, with each file's inode and mtime in nanoseconds. A file whose
 * size, mtime and inode are those of the cache is not read again (restic's rule; `--reread` reads
 * every file), and a blob the cache lists is not uploaded again. The cache is trusted only while the
 * set it describes is committed in the filestore (so its packs are kept: retention never removes
 * the objects of a kept set); otherwise it is rebuilt from the newest set's index, which the primary
 * can read with the files key (every file read again, blobs stored before not uploaded).
 *
 * Order: a pack's line is written only when its upload has finished, and an entry only after the
 * lines of every pack it uses. The index, and so the set, never names an object that is not stored.
 */
export const FILES_CACHE = 'files-cache.ndjson';
/**
 * Packs uploading while the next fills: each is sealed as it uploads, from its arena, which it holds
 * until then. With the chunker's loop in WebAssembly the walk fills a pack of large files faster
 * than one is written and fsynced to a directory filestore: two in flight took a first backup of
 * the bench's 500 MB of media from 2.99-3.64 s to 2.57-3.13 s (three alternating pairs). A pack of
 * many small files (more than MANY_BLOBS) waits for the one before: with two of those in flight a
 * backup of 100,000 small files peaked at 204-209 MiB, against 174-177 with one, at the same speed.
 */
const UPLOADS_IN_FLIGHT = 2;
const MANY_BLOBS = 512;
/** A file up to this is read whole and cut in memory; a larger one is read a chunk window at a time. */
const READ_WHOLE = MAX_CHUNK;
/**
 * A file is read this much at a time (at least a largest chunk of its size class): 64 KiB chunks
 * read a window each would be ~16 reads per MiB. At most MAX_CHUNK, so that the pack's arena holds
 * what it holds (up to PACK_TARGET) and a window.
 */
const READ_AHEAD = 1024 * 1024;
/** Pages of the index are gathered into packs of about this much (one pack per set when few changed). */
const PAGES_PACK_TARGET = 1024 * 1024;
/** The arena pages are gathered in: a pack of pages and a largest ordinary page. */
const PAGES_ARENA = PAGES_PACK_TARGET + PAGE_MAX;
/**
 * The pack being filled lives in an arena: one buffer of PACK_TARGET plus a largest chunk, into
 * which files are read directly, so that their blobs are already end to end when the pack is sealed.
 * A pack never holds more than PACK_TARGET unless it is one chunk, so a file (≤ READ_WHOLE) or a
 * chunk window (≤ max) always fits after what it holds. Arenas are reused: a backup of 100,000 small
 * files allocates a few 12 MiB buffers, not a buffer per file (which the collector frees late:
 * they were most of the memory such a backup held).
 */
const ARENA = PACK_TARGET + MAX_CHUNK;
/** Entries waiting for the open pack at which it is sealed before it is full (see unblock). */
const QUEUE_SEAL = 20_000;
/** The open pack's, and one per upload in flight (a pack is sealed as it is uploaded, from its arena). */
const SPARE_ARENAS = UPLOADS_IN_FLIGHT + 1;

/** The pack being filled: its blobs lie end to end at arena[0, bytes). */
interface OpenPack {
  record: PackRecord;
  /** The ids of its blobs, in order. */
  blobs: string[];
  bytes: number;
  arena: Buffer;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** A pack as the walk knows it: stored before (from the cache), or being made by this run. */
interface PackRecord {
  /** Its place in Known.packs: what the blob table names it by. */
  no: number;
  info?: PackInfo;
  /** Resolved once the pack is in the filestore (at once for a pack of the cache). */
  stored: Promise<void>;
  done: boolean;
}

interface BlobLoc {
  pack: PackRecord;
  offset: number;
  length: number;
  id: string;
}

const NO_BLOBS: BlobLoc[] = [];

/** A page of the index in the cache: the blob's pack (a cache ordinal) and place. */
interface CachedPage {
  t: 'g';
  b: [pack: number, offset: number, length: number, id: string];
}

interface QueuedEntry {
  entry: TreeEntry;
  blobs: BlobLoc[];
  /**
   * A file as the cache has it: its blobs as entries of the blob table (all in stored packs), made
   * into BlobLocs only when the entry leaves the queue. Up to QUEUE_SEAL entries wait, long enough
   * to outlive the young generation: a BlobLoc and its hex id each were most of what they left to
   * the full collections of a backup of 100,000 small files.
   */
  cached?: Uint32Array | number;
  /** For the cache: the file's mtime (ns) and inode. */
  ns?: string | bigint;
  ino?: string | bigint;
}

export interface FilesObjectsStats {
  files: number;
  dirs: number;
  links: number;
  /** Files read this run (the others were unchanged by size, mtime and inode). */
  filesRead: number;
  bytesRead: number;
  /** Bytes of all regular files in the tree. */
  bytes: number;
  packsUploaded: number;
  blobsUploaded: number;
  /** Plain bytes of the blobs uploaded: what changed. */
  newBytes: number;
  /** Stored bytes uploaded (packs of content and of pages). */
  storedBytes: number;
  /** Pages of the index, and those of them uploaded (the others were stored before, unchanged). */
  pages: number;
  pagesUploaded: number;
  cache: 'used' | 'rebuilt' | 'none';
}

export interface FilesObjectsRun {
  /** The files index, plain: to be compressed, encrypted and uploaded as the files artifact. */
  source: Readable;
  stats: FilesObjectsStats;
  /** After the set is committed: the cache now describes it. */
  commitCache(): Promise<void>;
  /** After a failure: the cache stays what it was. */
  discardCache(): Promise<void>;
}

export interface FilesObjectsOptions {
  dir: string;
  label: string;
  site: string;
  setId: string;
  stateDir: string;
  filestore: Filestore;
  filesKey: FilesKey;
  recipients: string[] | null;
  logger: Logger;
  /** Read every file again, whatever the cache says. */
  reread?: boolean;
  /** Store every blob again in new packs, whatever is stored (after an object was lost or damaged). */
  repair?: boolean;
  /** S3 options (credentials) for an s3:// paths.files. */
  s3?: OpenFilestoreOptions;
  /** Committed sets (ids) in the filestore, to tell whether the cache still describes one of them. */
  committed: Set<string>;
  /** Rebuilds what is stored from the newest committed set's index, when the cache cannot be used. */
  rebuild?: () => Promise<{ plain: AsyncIterable<Buffer>; pages: PageLoader } | null>;
  signal?: AbortSignal;
  progress?: ProgressMeter;
}

/** Lines gathered into pieces of 64 KiB: one write to the compressor per piece, not per line. */
async function* batched(lines: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let n = 0;
  for await (const l of lines) {
    parts.push(l);
    n += l.length;
    if (n >= 1 << 16) {
      yield Buffer.concat(parts, n);
      parts = [];
      n = 0;
    }
  }
  if (n > 0) yield Buffer.concat(parts, n);
}

/** A small object whole (at most its listed size, which readBlobs then checks). */
async function collect(body: Readable, size: number): Promise<Buffer> {
  const pieces: Buffer[] = [];
  let n = 0;
  for await (const c of body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > size) {
      body.destroy();
      break;
    }
    pieces.push(c);
  }
  return Buffer.concat(pieces);
}

const storedPack = (info: PackInfo, no: number): PackRecord => ({ no, info, stored: Promise.resolve(), done: true });

/** What is stored, as the walk needs it: files by path, and every blob's place (the packs by number). */
interface Known {
  files: CachedFiles;
  blobs: BlobTable;
  /** The packs the table's entries name, by number; this run's packs are added as they open. */
  packs: PackRecord[];
  source: FilesObjectsStats['cache'];
}

/** The cache (or a rebuilt index) as what the walk needs. */
async function loadKnown(o: FilesObjectsOptions): Promise<Known> {
  const fresh = (): Known => ({ files: new CachedFiles(), blobs: new BlobTable(), packs: [], source: 'none' });
  let known = fresh();
  const file = join(o.stateDir, FILES_CACHE);
  const addBlob = (k: Known, pack: number, offset: number, length: number, id: string) => k.blobs.add(Buffer.from(id, 'hex'), pack, offset, length);
  if (existsSync(file)) {
    try {
      // A line at a time: the cache of 100,000 files is ~20 MB, not read into one string.
      const lines = textLines(createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>);
      const first = await lines.next();
      let head: { t?: string; setId?: string; site?: string };
      try {
        head = JSON.parse(first.done ? '' : first.value) as typeof head;
        if (head.t !== 'h' || head.site !== o.site || typeof head.setId !== 'string') throw new Error('no header');
      } catch (err) {
        await lines.return(undefined); // closes the file
        throw err;
      }
      if (o.committed.has(head.setId!)) {
        for await (const line of lines) {
          if (line === '') continue;
          const l = JSON.parse(line) as (IndexLine & { ns?: string; ino?: string }) | CachedPage;
          if (l.t === 'o') known.packs.push(storedPack({ id: l.id, size: l.size, sha256: l.sha256, plain: l.plain, c: l.c }, known.packs.length));
          else if (l.t === 'g') {
            const [p, offset, length, id] = l.b;
            if (!known.packs[p]) throw new Error(`pack ${p} unknown`);
            addBlob(known, p, offset, length, id);
          } else if (l.t === 'f') {
            const entries = new Uint32Array(l.b.length);
            l.b.forEach(([p, offset, length, id], i) => {
              if (!known.packs[p]) throw new Error(`pack ${p} unknown`);
              entries[i] = addBlob(known, p, offset, length, id);
            });
            known.files.set(l.p, l.s, l.ns ?? '', l.ino ?? '', entries);
          }
        }
        known.source = 'used';
        return known;
      }
      await lines.return(undefined);
      o.logger.info({ cache: file, cacheSet: head.setId }, 'the files cache describes a set that is no longer in the filestore: rebuilding it from the newest set');
    } catch (err) {
      o.logger.warn({ err, cache: file }, 'the files cache cannot be read: rebuilding it from the newest set');
    }
  }
  known = fresh();
  // Rebuilt, what is stored is known again (nothing stored before is uploaded again); every file is
  // read, as no inode was recorded. A rebuild that fails costs only that: every blob is uploaded.
  try {
    const got = o.rebuild ? await o.rebuild() : null;
    if (got === null) return known;
    const packs: PackInfo[] = [];
    const sync = () => {
      while (known.packs.length < packs.length) known.packs.push(storedPack(packs[known.packs.length]!, known.packs.length));
    };
    const gen = readFilesIndex(
      got.plain,
      {
        label: "the newest set's files index",
        site: o.site,
        setId: '*',
        maxEntries: Number.MAX_SAFE_INTEGER,
        anySet: true,
        pages: got.pages,
        // The pages are blobs too: unchanged, they are not uploaded again.
        onPage: (p, offset, length, id) => {
          sync();
          addBlob(known, p, offset, length, id);
        },
      },
      packs,
    );
    for await (const e of gen) {
      sync();
      if (e.t === 'f') for (const [p, offset, length, id] of e.b) addBlob(known, p, offset, length, id);
    }
    known.source = 'rebuilt';
    return known;
  } catch (err) {
    o.logger.warn({ err }, "the files cache could not be rebuilt from the newest set's index: every file is read and stored again");
    return fresh();
  }
}

/** Why an entry of the tree cannot be in a set (a standby would refuse it), or undefined. */
function entryProblem(name: string, type: string): string | undefined {
  if (RESERVED_NAME.test(name)) return 'its name starts with ".tandem-", which tandem reserves for its own files beside the tree';
  if (name.includes('\uFFFD')) return 'its name is not valid UTF-8 (a standby could not restore it under the same name)';
  if (type !== 'd' && type !== 'f' && type !== 'l') return `it is a ${type} (only directories, regular files and symlinks are backed up)`;
  return undefined;
}

/** What a files delta stored for one file: for the cache, so the next set neither reads nor uploads it again. */
export interface CachedDeltaFile {
  p: string;
  s: number;
  ns: string;
  ino: string;
  blobs: Array<{ info: PackInfo; offset: number; length: number; id: string }>;
}

/**
 * Appends what a files delta stored to the cache, when the cache describes the set the delta builds
 * on (a later line of a path wins when the cache is read). `memo` keeps the cache's pack ordinals
 * between deltas while the file is the one this wrote last (same inode and size).
 */
export async function appendDeltaToCache(
  stateDir: string,
  site: string,
  setId: string,
  files: CachedDeltaFile[],
  memo: { ino?: number; size?: number; ordinals?: Map<string, number> },
): Promise<void> {
  const file = join(stateDir, FILES_CACHE);
  const st = await lstat(file).catch(() => null);
  if (st === null || files.length === 0) return;
  if (memo.ino !== st.ino || memo.size !== st.size || memo.ordinals === undefined) {
    const text = await readFile(file, 'utf8');
    const lines = text.split('\n');
    const head = JSON.parse(lines[0] ?? '{}') as { t?: string; site?: string; setId?: string };
    if (head.t !== 'h' || head.site !== site || head.setId !== setId) return;
    const ordinals = new Map<string, number>();
    let n = 0;
    for (const l of lines) if (l.startsWith('{"t":"o"')) ordinals.set((JSON.parse(l) as { id: string }).id, n++);
    memo.ordinals = ordinals;
  }
  const ordinals = memo.ordinals;
  const out: string[] = [];
  for (const f of files) {
    for (const b of f.blobs) {
      if (!ordinals.has(b.info.id)) {
        ordinals.set(b.info.id, ordinals.size);
        out.push(JSON.stringify({ t: 'o', ...b.info }));
      }
    }
    out.push(JSON.stringify({ t: 'f', p: f.p, s: f.s, ns: f.ns, ino: f.ino, b: f.blobs.map((b) => [ordinals.get(b.info.id)!, b.offset, b.length, b.id]) }));
  }
  await appendFile(file, `${out.join('\n')}\n`);
  const after = await lstat(file);
  memo.ino = after.ino;
  memo.size = after.size;
}

export function filesObjects(o: FilesObjectsOptions): FilesObjectsRun {
  const stats: FilesObjectsStats = {
    files: 0,
    dirs: 0,
    links: 0,
    filesRead: 0,
    bytesRead: 0,
    bytes: 0,
    packsUploaded: 0,
    blobsUploaded: 0,
    newBytes: 0,
    storedBytes: 0,
    pages: 0,
    pagesUploaded: 0,
    cache: 'none',
  };
  const cacheFile = join(o.stateDir, FILES_CACHE);
  const cacheNew = `${cacheFile}.new`;
  let cacheOut: WriteStream | undefined;
  let cacheOrdinals = 0;
  const cachePack = new Map<PackRecord, number>();
  // Batched: a line per write() would be a system call per file.
  let cacheBuf = '';
  const writeCache = (l: object) => {
    cacheBuf += `${JSON.stringify(l)}\n`;
    if (cacheBuf.length >= 1 << 16) {
      cacheOut?.write(cacheBuf);
      cacheBuf = '';
    }
  };
  const endCache = () => {
    if (cacheBuf !== '') cacheOut?.write(cacheBuf);
    cacheBuf = '';
    cacheOut?.end();
  };

  async function* produce(): AsyncGenerator<Buffer> {
    let known = await loadKnown(o);
    stats.cache = known.source;
    if (o.reread || o.repair) known.files.clear();
    if (o.repair) known = { ...known, blobs: new BlobTable(), packs: [] };
    /** Every blob stored before and stored by this run (dedup within the tree too), by id. */
    const table = known.blobs;
    /** Where a file the cache lists has its blobs. */
    const locOf = (e: number): BlobLoc => ({ pack: known.packs[table.pack(e)]!, offset: table.offset(e), length: table.length(e), id: table.idHex(e) });
    const locsOf = (entries: Uint32Array | number): BlobLoc[] => (typeof entries === 'number' ? [locOf(entries)] : Array.from(entries, locOf));
    cacheOut = createWriteStream(cacheNew, { mode: 0o600 });
    writeCache({ t: 'h', site: o.site, setId: o.setId });
    let open_: OpenPack | null = null;
    const spare: Buffer[] = [];
    const take = () => spare.pop() ?? Buffer.allocUnsafeSlow(ARENA);
    const release = (arena: Buffer) => {
      if (spare.length < SPARE_ARENAS) spare.push(arena);
    };
    const inFlight: PackRecord[] = [];
    let failure: unknown;
    const queue: QueuedEntry[] = [];
    let qHead = 0;
    /**
     * Entries wait for the pack holding their new blobs; a pack still filling (few changes in a
     * large tree) is sealed early rather than holding up the whole tree behind it: when
     * QUEUE_SEAL entries wait. With 2,000 a 1% change spread over 100,000 small files sealed 139-149
     * packs for 4.6 MB (each a PUT, and a pack the standby fetches); with 20,000, 26 packs, the
     * backup 3.5-3.8 s instead of 4.2-4.4 s, its peak RSS the same (the queue holds ~8 MB then).
     */
    const unblock = async () => {
      if (queue.length - qHead > QUEUE_SEAL && open_ !== null && open_.blobs.length > 0) {
        await makeRoom(open_);
        sealOpen();
      }
      // The cache is written as the index is (~200 bytes a file): while the disk is busy with the
      // packs, what waits to be written must not pile up in memory.
      if (cacheOut?.writableNeedDrain) await new Promise<void>((resolve) => cacheOut!.once('drain', resolve));
    };
    /**
     * Stores a pack of these blobs (end to end in `plain`, kept unchanged until this returns), never
     * over an existing object (packId: one stat per new pack), sealed as it is uploaded: the stored
     * bytes are never held whole. Its info once stored.
     */
    const uploadPack = async (ids: string[], plain: Buffer, recipients: string[] | null): Promise<PackInfo> => {
      let attempt = 0;
      let key = objectKey(o.site, packId(o.filesKey.hmacKey, ids));
      while ((await o.filestore.stat(key, { signal: o.signal })) !== null) key = objectKey(o.site, packId(o.filesKey.hmacKey, ids, ++attempt));
      o.signal?.throwIfAborted();
      const sealing = sealPackStream(ids, plain, { hmacKey: o.filesKey.hmacKey, recipients, attempt });
      try {
        await o.filestore.put(key, sealing.stream, { signal: o.signal, contentType: 'application/octet-stream' });
      } finally {
        sealing.stream.destroy();
      }
      const info = sealing.info();
      stats.packsUploaded++;
      stats.storedBytes += info.size;
      faultPoint('files-pack-uploaded');
      return info;
    };
    let entries = 0;
    /** Every pack the index names (content and pages): the end line counts them. */
    const packIds = new Set<string>();
    const pager = new PageBuilder();
    /** The pages of the index, in order, where they are stored. */
    const pageLocs: BlobLoc[] = [];
    /**
     * The pack of pages being gathered: the pages end to end in an arena of its own, reused (a
     * buffer per page, kept until its pack was sealed, outlived the young generation and stayed
     * until a full collection: 20 MB more at the peak of a backup of 100,000 files).
     */
    let pagesArena: Buffer | null = null;
    let pagesPack: { record: PackRecord; ids: string[]; locs: BlobLoc[]; bytes: number } | null = null;
    /** Uploads the pack of pages gathered so far, sealed as it uploads, encrypted to the files key too. */
    const sealPages = async () => {
      const pp = pagesPack;
      if (pp === null) return;
      pagesPack = null;
      // The primary reads its pages back (its cache, garbage collection, `list`) with the files key.
      const recipients = o.recipients ? [...o.recipients, o.filesKey.recipient] : null;
      pp.record.info = await uploadPack(pp.ids, pagesArena!.subarray(0, pp.bytes), recipients);
      pp.record.done = true;
      // Found from now on (a page is added to the table only once its pack is stored).
      for (const g of pp.locs) table.add(Buffer.from(g.id, 'hex'), pp.record.no, g.offset, g.length);
      if (pagesArena!.length > PAGES_ARENA) pagesArena = null; // grown for one large page: not kept
    };
    /** A page of the index: found stored (unchanged since a set before), or added to the pack of pages. */
    const storePage = async (text: string) => {
      stats.pages++;
      const len = Buffer.byteLength(text);
      if (pagesPack !== null && pagesPack.bytes + len > PAGES_PACK_TARGET) await sealPages();
      const at = pagesPack?.bytes ?? 0;
      // Larger only for a page larger than the arena (a file of many chunks): nothing waits in it
      // then (at is 0), as a pack of pages is sealed before it would pass PAGES_PACK_TARGET.
      if (pagesArena === null || at + len > pagesArena.length) pagesArena = Buffer.allocUnsafeSlow(Math.max(PAGES_ARENA, at + len));
      pagesArena.write(text, at);
      const page = pagesArena.subarray(at, at + len);
      const idBytes = objectIdBytes(o.filesKey.hmacKey, page);
      const e = table.find(idBytes);
      if (e >= 0) {
        const pack = known.packs[table.pack(e)]!;
        await pack.stored;
        pageLocs.push({ pack, offset: table.offset(e), length: table.length(e), id: table.idHex(e) });
        return;
      }
      if (pagesPack === null) {
        const record: PackRecord = { no: known.packs.length, stored: Promise.resolve(), done: false };
        known.packs.push(record);
        pagesPack = { record, ids: [], locs: [], bytes: 0 };
      }
      const id = idBytes.toString('hex');
      const loc: BlobLoc = { pack: pagesPack.record, offset: at, length: len, id };
      pageLocs.push(loc);
      pagesPack.locs.push(loc);
      pagesPack.ids.push(id);
      pagesPack.bytes += len;
      stats.pagesUploaded++;
    };

    const sealOpen = () => {
      if (open_ === null) return;
      const p = open_;
      open_ = null;
      if (p.blobs.length === 0) {
        // Opened for a file whose blobs were all stored before: nothing to seal.
        release(p.arena);
        p.record.done = true;
        p.resolve();
        return;
      }
      inFlight.push(p.record);
      (async () => {
        p.record.info = await uploadPack(p.blobs, p.arena.subarray(0, p.bytes), o.recipients);
        release(p.arena);
      })().then(
        () => {
          p.record.done = true;
          p.resolve();
        },
        (err: unknown) => {
          failure ??= err;
          p.reject(err);
        },
      );
    };
    const newPack = () => {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      const stored = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      stored.catch(() => undefined);
      const record: PackRecord = { no: known.packs.length, stored, done: false };
      known.packs.push(record);
      open_ = { record, blobs: [], bytes: 0, arena: take(), resolve, reject };
      return open_;
    };
    /** Waits until fewer than UPLOADS_IN_FLIGHT packs are in flight (than one, before a pack of many blobs). */
    const makeRoom = async (sealing: OpenPack | null) => {
      const limit = sealing !== null && sealing.blobs.length > MANY_BLOBS ? 1 : UPLOADS_IN_FLIGHT;
      while (inFlight.length >= limit) {
        await inFlight[0]!.stored;
        inFlight.shift();
      }
      while (inFlight.length > 0 && inFlight[0]!.done) inFlight.shift();
    };
    /**
     * The blob at arena[at, at + len) of the open pack `p`, the file's bytes not yet cut lying after
     * it up to `end` (everything in [p.bytes, at) was consumed): known, it is only looked up; new, it
     * is moved down to the end of the pack (p.bytes) unless it is there already, or, when the pack
     * is full, the file's bytes from the blob on go to a new pack's arena and this pack is sealed.
     * Returns the blob, the pack now open, and where the file's bytes after the blob now lie.
     */
    const placeBlob = async (p: OpenPack, at: number, len: number, end: number): Promise<{ loc: BlobLoc; p: OpenPack; at: number; end: number }> => {
      const idBytes = objectIdBytes(o.filesKey.hmacKey, p.arena.subarray(at, at + len));
      const e = table.find(idBytes);
      if (e >= 0) return { loc: { pack: known.packs[table.pack(e)]!, offset: table.offset(e), length: table.length(e), id: table.idHex(e) }, p, at: at + len, end };
      if (p.bytes + len > PACK_TARGET && p.blobs.length > 0) {
        await makeRoom(p);
        const q = newPack();
        p.arena.copy(q.arena, 0, at, end);
        end -= at;
        at = 0;
        open_ = p;
        sealOpen();
        open_ = q;
        p = q;
      } else if (at > p.bytes) p.arena.copyWithin(p.bytes, at, at + len);
      const id = idBytes.toString('hex');
      const loc: BlobLoc = { pack: p.record, offset: p.bytes, length: len, id };
      p.blobs.push(id);
      p.bytes += len;
      table.add(idBytes, p.record.no, loc.offset, len);
      stats.blobsUploaded++;
      stats.newBytes += len;
      return { loc, p, at: at + len, end };
    };
    /** A blob from a buffer of its own (an object of an s3:// paths.files), copied into the arena. */
    const addBlob = async (data: Buffer): Promise<BlobLoc> => {
      const p = open_ ?? newPack();
      data.copy(p.arena, p.bytes);
      return (await placeBlob(p, p.bytes, data.length, p.bytes + data.length)).loc;
    };
    /** Reads into buf[at, at + want) until that is full or the file ends; returns the bytes read. */
    const readInto = (fd: number, buf: Buffer, at: number, want: number): number => {
      let n = 0;
      while (n < want) {
        const r = readSync(fd, buf, at + n, want - n, null);
        if (r === 0) break;
        n += r;
      }
      return n;
    };

    const readBlobs = async (path: string, size: number, open?: () => Promise<Readable>): Promise<BlobLoc[]> => {
      const out: BlobLoc[] = [];
      stats.filesRead++;
      if (open) {
        const sizes = chunkSizesFor(size);
        const whole = size <= READ_WHOLE ? await collect(await open(), size) : undefined;
        const pieces = whole ? [whole] : ((await open()).pipe(new ChunkerStream(sizes)) as AsyncIterable<Buffer>);
        for await (const piece of pieces) {
          stats.bytesRead += piece.length;
          o.progress?.add(piece.length);
          if (whole === undefined) out.push(await addBlob(piece));
          else for (let start = 0; start < whole.length; ) {
            const len = cutPoint(whole, start, whole.length, sizes);
            out.push(await addBlob(whole.subarray(start, start + len)));
            start += len;
          }
        }
        return out;
      }
      // Read straight into the open pack's arena, READ_AHEAD (or a largest chunk) at a time, cut
      // only from a window of at least `max` bytes or at the end of the file: the cuts of
      // ChunkerStream, byte for byte (a small file is one window). A new blob is moved down to the
      // end of the pack when known ones lay before it (often it is there already); the bytes not
      // yet cut move down only when the arena has no room for the next read.
      const sizes = chunkSizesFor(size);
      const { max } = sizes;
      const ahead = Math.max(max, READ_AHEAD);
      const fd = openSync(path, 'r');
      try {
        let p = open_ ?? newPack();
        let at = p.bytes;
        let end = at;
        let eof = false;
        for (;;) {
          if (!eof && end - at < max) {
            const want = ahead - (end - at);
            if (end + want > p.arena.length) {
              p.arena.copyWithin(p.bytes, at, end);
              end -= at - p.bytes;
              at = p.bytes;
            }
            const n = readInto(fd, p.arena, end, want);
            if (n < want) eof = true;
            end += n;
            stats.bytesRead += n;
            o.progress?.add(n);
          }
          if (end === at) break;
          const len = cutPoint(p.arena, at, end, sizes);
          const placed = await placeBlob(p, at, len, end);
          out.push(placed.loc);
          ({ p, at, end } = placed);
        }
        return out;
      } finally {
        closeSync(fd);
      }
    };

    /** Every queued entry whose packs are all stored, in order, into the pages (and the cache). */
    async function* flush(): AsyncGenerator<Buffer> {
      if (failure !== undefined) throw failure;
      while (qHead < queue.length) {
        const q = queue[qHead]!;
        if (q.cached !== undefined) q.blobs = locsOf(q.cached);
        else if (!q.blobs.every((b) => b.pack.done)) return;
        queue[qHead++] = undefined as unknown as QueuedEntry;
        if (qHead > 4096 && qHead * 2 > queue.length) {
          queue.splice(0, qHead); // drained from the front without shift(), which is linear
          qHead = 0;
        }
        for (const b of q.blobs) {
          packIds.add(b.pack.info!.id);
          if (!cachePack.has(b.pack)) {
            cachePack.set(b.pack, cacheOrdinals++);
            writeCache({ t: 'o', ...b.pack.info! });
          }
        }
        entries++;
        if (q.entry.t === 'f') writeCache({ t: 'f', p: q.entry.p, s: q.entry.s, ns: String(q.ns), ino: String(q.ino), b: q.blobs.map((b) => [cachePack.get(b.pack)!, b.offset, b.length, b.id]) });
        const page = pager.add(q.entry, q.blobs.map((b) => ({ info: b.pack.info!, offset: b.offset, length: b.length, id: b.id })));
        if (page !== null) await storePage(page);
      }
    }

    let bytes = 0;
    // Depth first, names sorted: the order readers check (comparePaths).
    const walk = async function* (rel: string): AsyncGenerator<Buffer> {
      const abs = rel === '' ? o.dir : join(o.dir, rel);
      // Synchronous calls for what is cheap per file: a promise per lstat costs several times the call.
      const names = readdirSync(abs).sort();
      for (const name of names) {
        o.signal?.throwIfAborted();
        const p = rel === '' ? name : `${rel}/${name}`;
        const full = join(o.dir, p);
        let st;
        try {
          st = lstatSync(full, { bigint: true });
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
            o.logger.warn({ path: full }, 'a file vanished while the files were backed up: left out of this set');
            continue;
          }
          throw err;
        }
        const type = st.isDirectory() ? 'd' : st.isFile() ? 'f' : st.isSymbolicLink() ? 'l' : st.isFIFO() ? 'FIFO' : st.isSocket() ? 'socket' : 'device';
        const why = entryProblem(name, type);
        if (why !== undefined) {
          throw new TandemError('permanent', 'ARCHIVE_UNSUPPORTED_ENTRY', `${o.label}: cannot back up ${full}: ${why}`, {
            hint: 'move or rename it out of the files directory (a standby would refuse the set): no set was committed',
          });
        }
        const m = Number(st.mode & 0o7777n);
        const mt = Number(st.mtimeNs / 1000n) / 1000;
        if (type === 'd') {
          stats.dirs++;
          queue.push({ entry: { t: 'd', p, m, mt }, blobs: [] });
          yield* flush();
          yield* walk(p);
        } else if (type === 'l') {
          stats.links++;
          queue.push({ entry: { t: 'l', p, m, mt, l: await readlink(full) }, blobs: [] });
          yield* flush();
        } else {
          stats.files++;
          const s = Number(st.size);
          const cached = known.files.unchanged(p, s, st.mtimeNs, st.ino);
          if (cached !== undefined) {
            // As the last set has it (its line fitted an index then): queued as blob-table entries.
            bytes += s;
            stats.bytes += s;
            queue.push({ entry: { t: 'f', p, m, mt, s, b: [] }, blobs: NO_BLOBS, cached, ns: st.mtimeNs, ino: st.ino });
            await unblock();
            yield* flush();
            continue;
          }
          const blobs = await readBlobs(full, s).catch((err: NodeJS.ErrnoException) => {
            if (err.code === 'ENOENT') return null;
            throw err;
          });
          if (blobs === null) {
            o.logger.warn({ path: full }, 'a file vanished while the files were backed up: left out of this set');
            stats.files--;
            continue;
          }
          const size = blobs.reduce((n, b) => n + b.length, 0);
          if (size !== s) o.logger.warn({ path: full, size: s, read: size }, 'a file changed while it was backed up: the set has what was read');
          // The packs counted only for a file that could be near the bound (never more packs than blobs).
          const bound = Math.min(MAX_INDEX_LINE, MAX_PAGE);
          if (PageBuilder.fileBound(p, blobs.length, blobs.length) > bound && PageBuilder.fileBound(p, blobs.length, new Set(blobs.map((b) => b.pack)).size) > bound) {
            throw new TandemError('permanent', 'FILE_TOO_LARGE', `${o.label}: ${full} is ${size} bytes in ${blobs.length} chunks, more than one index line holds (files up to ~125 GiB)`, {
              hint: 'split the file, or keep it outside paths.files: no set was committed',
            });
          }
          bytes += size;
          stats.bytes += size;
          queue.push({ entry: { t: 'f', p, m, mt, s: size, b: [] }, blobs, ns: st.mtimeNs, ino: st.ino });
          await unblock();
          yield* flush();
        }
      }
    };
    /**
     * paths.files is a bucket (s3://): one LIST; the keys in index order, each prefix a directory
     * (0755, no mtime), each object a file (0644, its last-modified); unchanged by size and ETag.
     */
    const walkBucket = async function* (): AsyncGenerator<Buffer> {
      const bucket = openFilestore(o.dir, o.s3 ?? {});
      try {
        const listed = await bucket.list('', { signal: o.signal });
        const objects = listed.filter((x) => !x.key.endsWith('/')); // folder markers of consoles
        for (const x of objects) {
          const why = indexPathProblem(x.key);
          if (why !== undefined) {
            throw new TandemError('permanent', 'ARCHIVE_UNSUPPORTED_ENTRY', `${o.label}: cannot back up object ${JSON.stringify(x.key)}: its key ${why}`, {
              hint: 'rename the object in the bucket (a standby could not restore it under that name): no set was committed',
            });
          }
        }
        const byPath = new Map(objects.map((x) => [x.key, x]));
        const dirs = new Set<string>();
        for (const x of objects) {
          const parts = x.key.split('/');
          for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
        }
        for (const d of dirs) if (byPath.has(d)) throw new TandemError('permanent', 'ARCHIVE_UNSUPPORTED_ENTRY', `${o.label}: object ${JSON.stringify(d)} is also the prefix of other objects: a tree cannot hold both`, { hint: 'rename one of them in the bucket' });
        for (const p of [...dirs, ...byPath.keys()].sort(comparePaths)) {
          o.signal?.throwIfAborted();
          const x = byPath.get(p);
          if (x === undefined) {
            stats.dirs++;
            queue.push({ entry: { t: 'd', p, m: 0o755, mt: 0 }, blobs: [] });
            yield* flush();
            continue;
          }
          stats.files++;
          const ns = `etag:${x.version}`;
          const cached = known.files.unchanged(p, x.size, ns, 's3');
          let blobs: BlobLoc[];
          if (cached !== undefined) blobs = locsOf(cached);
          else blobs = await readBlobs(p, x.size, async () => (await bucket.get(p, { signal: o.signal })).body);
          const size = blobs.reduce((n, b) => n + b.length, 0);
          if (size !== x.size) throw new TandemError('transient', 'FILES_CHANGED', `${o.label}: object ${JSON.stringify(p)} changed while it was read (${x.size} bytes listed, ${size} read)`, { hint: 'the next backup takes it as it is then' });
          bytes += size;
          stats.bytes += size;
          queue.push({ entry: { t: 'f', p, m: 0o644, mt: x.modified.getTime(), s: size, b: [] }, blobs, ns, ino: 's3' });
          yield* flush();
        }
      } finally {
        await bucket.close();
      }
    };
    try {
      yield* isS3Url(o.dir) ? walkBucket() : walk('');
      await makeRoom(open_);
      sealOpen();
      for (const r of inFlight) await r.stored;
      inFlight.length = 0;
      yield* flush();
      if (queue.length > qHead) throw new TandemError('internal', 'FILES_QUEUE', `${queue.length - qHead} entries of the files index were never written`);
      const last = pager.take();
      if (last !== null) await storePage(last);
      await sealPages();
      // The root, once every page is stored: its packs, a line per page, the end.
      yield indexLine({ t: 'h', format: FILES_INDEX_FORMAT, version: FILES_INDEX_VERSION, site: o.site, setId: o.setId, chunking: SMALL_CHUNK_SIZES });
      const rootOrdinals = new Map<PackRecord, number>();
      for (const g of pageLocs) {
        let n = rootOrdinals.get(g.pack);
        if (n === undefined) {
          n = rootOrdinals.size;
          rootOrdinals.set(g.pack, n);
          packIds.add(g.pack.info!.id);
          yield indexLine({ t: 'o', ...g.pack.info! });
          if (!cachePack.has(g.pack)) {
            cachePack.set(g.pack, cacheOrdinals++);
            writeCache({ t: 'o', ...g.pack.info! });
          }
        }
        writeCache({ t: 'g', b: [cachePack.get(g.pack)!, g.offset, g.length, g.id] });
        yield indexLine({ t: 'p', b: [n, g.offset, g.length, g.id] });
      }
      yield indexLine({ t: 'e', entries, objects: packIds.size, bytes });
    } finally {
      // Nothing may still be uploading when the caller cleans up.
      await Promise.allSettled(inFlight.map((r) => r.stored));
    }
  }

  const source = Readable.from(batched(produce()), { objectMode: false, highWaterMark: 1 << 16 });
  return {
    source,
    stats,
    async commitCache() {
      if (!cacheOut) return;
      endCache();
      await finished(cacheOut);
      const fh = await open(cacheNew, 'r');
      await fh.sync().finally(() => fh.close());
      await rename(cacheNew, cacheFile);
    },
    async discardCache() {
      if (cacheOut) {
        endCache();
        await finished(cacheOut).catch(() => undefined);
      }
      await rm(cacheNew, { force: true });
    },
  };
}
