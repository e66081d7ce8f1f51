/**
 * The packing of filesObjects: files are read straight into the open pack's arena, and what comes
 * out must be what the stream chunker would cut (so that blobs stored by earlier versions are found
 * again), every blob's bytes in its pack must be the file's, and a changed file must cost only its
 * new chunks: across pack boundaries (a file's window moved to a new pack's arena), after known
 * chunks (a new chunk moved down to the end of the pack), and when every file is read again. The
 * index is paged: an unchanged page is found stored, so a small change uploads a page or two.
 */
import { createReadStream, statSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ChunkerStream,
  blobAt,
  chunkSizesFor,
  createLogger,
  filesKeyFromIdentity,
  generateAgeKeyPair,
  objectKey,
  openFilestore,
  openPack,
  pageLoader,
  readFilesIndex,
  type FileEntry,
  type Filestore,
  type PackInfo,
} from '@tandem/shared';
import { filesObjects, type FilesObjectsStats } from './files-objects.js';

const SITE = 'arena';
const pair = generateAgeKeyPair();
const filesKey = filesKeyFromIdentity(pair.identity, 'files.agekey');
const logger = createLogger({ name: 'test', level: 'silent' });

async function streamCuts(file: string): Promise<number[]> {
  const out: number[] = [];
  for await (const c of createReadStream(file).pipe(new ChunkerStream(chunkSizesFor(statSync(file).size))) as AsyncIterable<Buffer>) out.push(c.length);
  return out;
}

/** The SHA-256 of each of the file's chunks, as the stream chunker cuts them. */
async function chunkDigests(file: string): Promise<Set<string>> {
  const out = new Set<string>();
  for await (const c of createReadStream(file).pipe(new ChunkerStream(chunkSizesFor(statSync(file).size))) as AsyncIterable<Buffer>) out.add(createHash('sha256').update(c).digest('hex'));
  return out;
}

async function drain(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts);
}

describe('filesObjects packing', () => {
  let root: string;
  let tree: string;
  let state: string;
  let store: Filestore;
  let setNo = 0;
  const committed = new Set<string>();

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'tandem-arena-'));
    tree = join(root, 'files');
    state = join(root, 'state');
    mkdirSync(state, { recursive: true });
    mkdirSync(join(root, 'store'));
    mkdirSync(join(tree, 'small'), { recursive: true });
    mkdirSync(join(tree, 'large'), { recursive: true });
    // 21 MiB: across two pack boundaries, most of it in full 4 MiB windows.
    writeFileSync(join(tree, 'large', 'video.bin'), randomBytes(21 * 1024 * 1024 + 12345));
    writeFileSync(join(tree, 'large', 'whole-3m.bin'), randomBytes(3 * 1024 * 1024 + 7));
    writeFileSync(join(tree, 'large', 'exactly-max.bin'), randomBytes(4 * 1024 * 1024));
    writeFileSync(join(tree, 'large', 'empty.bin'), Buffer.alloc(0));
    for (let i = 0; i < 400; i++) writeFileSync(join(tree, 'small', `f${String(i).padStart(3, '0')}.bin`), randomBytes(1 + ((i * 7919) % 65536)));
    // Two files with the same bytes: one blob.
    writeFileSync(join(tree, 'small', 'twin.bin'), readFileSync(join(tree, 'small', 'f001.bin')));
    store = openFilestore(`file://${join(root, 'store')}`, {});
  });

  afterAll(async () => {
    await store?.close();
    rmSync(root, { recursive: true, force: true });
  });

  /** A backup of the tree; checks the index against the tree and the packs, and commits the cache. */
  async function backupAndCheck(extra: { reread?: boolean } = {}): Promise<FilesObjectsStats> {
    const setId = `set-${++setNo}`;
    const run = filesObjects({ dir: tree, label: 'test', site: SITE, setId, stateDir: state, filestore: store, filesKey, recipients: [pair.recipient], logger, committed, ...extra });
    const plain = await drain(run.source);
    await run.commitCache();
    committed.add(setId);
    const packs: PackInfo[] = [];
    const opened = new Map<number, Buffer>();
    let files = 0;
    const ids = new Set<string>();
    const pages = pageLoader(store, SITE, { identities: [pair.identity], hmacKey: filesKey.hmacKey, label: 'test' });
    let pageCount = 0;
    const onPage = () => void pageCount++;
    for await (const e of readFilesIndex(Readable.from([plain]), { label: 'test', site: SITE, setId, maxEntries: 10_000, pages, onPage }, packs)) {
      if (e.t !== 'f') continue;
      files++;
      for (const b of e.b) ids.add(b[3]);
      const f = e as FileEntry;
      const full = join(tree, f.p);
      expect(f.b.map((b) => b[2]), f.p).toEqual(await streamCuts(full));
      const bytes = readFileSync(full);
      let at = 0;
      for (const [p, offset, length, id] of f.b) {
        let pack = opened.get(p);
        if (!pack) {
          const info = packs[p]!;
          pack = await openPack(await drain((await store.get(objectKey(SITE, info.id))).body), info, { identities: [pair.identity], label: 'test' });
          opened.set(p, pack);
        }
        expect(blobAt(pack, { id, offset, length }, filesKey.hmacKey, 'test').equals(bytes.subarray(at, at + length)), `${f.p} at ${at}`).toBe(true);
        at += length;
      }
      expect(at).toBe(bytes.length);
    }
    expect(files).toBe(405);
    expect(run.stats.pages).toBe(pageCount);
    expect(pageCount).toBeGreaterThan(1);
    if (setNo === 1) expect(run.stats.blobsUploaded).toBe(ids.size);
    return run.stats;
  }

  it('cuts as the stream chunker does, and every blob in its pack is the file\'s bytes', async () => {
    const st = await backupAndCheck();
    expect(st.filesRead).toBe(405);
    // Three packs of content at least for 31 MiB and one of pages; the twin is stored once (blobs
    // uploaded = distinct blob ids, checked above), every page is new.
    expect(st.packsUploaded).toBeGreaterThanOrEqual(4);
    expect(st.pagesUploaded).toBe(st.pages);
  }, 120_000);

  it('an edit in the middle of a large file and an appended small file cost only their new chunks', async () => {
    const video = join(tree, 'large', 'video.bin');
    const chunksBefore = await chunkDigests(video);
    const fd = openSync(video, 'r+');
    writeSync(fd, randomBytes(100_000), 0, 100_000, 11 * 1024 * 1024);
    closeSync(fd);
    writeFileSync(join(tree, 'small', 'f002.bin'), Buffer.concat([readFileSync(join(tree, 'small', 'f002.bin')), randomBytes(10)]));
    const newChunks = [...(await chunkDigests(video))].filter((d) => !chunksBefore.has(d)).length;
    const st = await backupAndCheck();
    expect(st.filesRead).toBe(2);
    // The edit's chunks and no other, and f002 as one blob. No chunk is under 16 KiB, so the
    // 100,000 edited bytes meet at most 8 chunks; after them the cuts may differ for a chunk or two
    // (a cut is looked for only 16 KiB past the one before) until they fall where they were: a few
    // of the file's ~340 (9 seen once with random data; 8 had been the bound).
    expect(newChunks).toBeGreaterThanOrEqual(1);
    expect(newChunks).toBeLessThanOrEqual(12);
    expect(st.blobsUploaded).toBe(newChunks + 1);
    expect(st.newBytes).toBeLessThan(1024 * 1024);
    // Two entries changed: their pages, and no other but where a line's new length moved a page's
    // cut to the next entry (the directory entries are unchanged).
    expect(st.pagesUploaded).toBeGreaterThanOrEqual(1);
    expect(st.pagesUploaded).toBeLessThanOrEqual(3);
    expect(st.pages).toBeGreaterThan(st.pagesUploaded * 4);
  }, 120_000);

  it('--reread reads every file again and uploads nothing', async () => {
    const st = await backupAndCheck({ reread: true });
    expect(st.filesRead).toBe(405);
    expect(st.blobsUploaded).toBe(0);
    expect(st.packsUploaded).toBe(0);
    expect(st.pagesUploaded).toBe(0);
  }, 120_000);
});
