import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_CHUNK_SIZES,
  FILES_INDEX_FORMAT,
  chunksOf,
  createAgeEncryptStream,
  createLogger,
  filesKeyFromIdentity,
  generateAgeKeyPair,
  indexLine,
  layout,
  objectId,
  objectKey,
  openFilestore,
  sealPack,
  zstdCompress,
  type ArtifactEntry,
  type Filestore,
  type IndexLine,
  type Manifest,
  type PackInfo,
  type TreeEntry,
} from '@tandem/shared';
import { checkFilesIndex, type FilesIndexOptions } from './files-index.js';

/**
 * The drill of a files index and its packs against a real directory filestore, with packs and an
 * index made as the primary makes them: 1,200 files in three packs, ten more that share blobs with
 * the first ten (more blob references than the reference table starts with).
 */
const SITE = 'demo';
const SET = '20260101T000000Z-e1-000001';
const site = generateAgeKeyPair();
const filesKey = filesKeyFromIdentity(generateAgeKeyPair().identity, 'files.agekey');
const logger = createLogger({ name: 'verify-test', level: 'silent' });
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let dir: string;
let fs: Filestore;
let packs: PackInfo[];
let src: { filestore: Filestore; manifest: Manifest; entry: ArtifactEntry; identities: string[] };
let opts: FilesIndexOptions;
const FILES_PER_PACK = 400;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-verify-index-'));
  await mkdir(join(dir, 'store'));
  fs = openFilestore(`file://${dir}/store`);
  const files: TreeEntry[] = [];
  packs = [];
  for (let p = 0; p < 3; p++) {
    const blobs = Array.from({ length: FILES_PER_PACK }, (_, i) => {
      const data = Buffer.from(`file ${p * FILES_PER_PACK + i}\n`.repeat(20 + i));
      return { id: objectId(filesKey.hmacKey, data), data };
    });
    const sealed = await sealPack(blobs, { hmacKey: filesKey.hmacKey, recipients: [site.recipient] });
    await fs.putBuffer(objectKey(SITE, sealed.info.id), sealed.stored);
    packs.push(sealed.info);
    sealed.blobs.forEach((b, i) => {
      const n = String(p * FILES_PER_PACK + i).padStart(4, '0');
      files.push({ t: 'f', p: `media/f${n}`, m: 0o644, mt: 1_700_000_000_000, s: b.length, b: [[p, b.offset, b.length, b.id]] });
      if (p === 0 && i < 10) files.push({ t: 'f', p: `media/copy-${n}`, m: 0o644, mt: 1_700_000_000_000, s: b.length, b: [[p, b.offset, b.length, b.id]] });
    });
  }
  files.sort((a, b) => (a.p < b.p ? -1 : 1));
  const lines: IndexLine[] = [
    { t: 'h', format: FILES_INDEX_FORMAT, version: 1, site: SITE, setId: SET, chunking: DEFAULT_CHUNK_SIZES },
    ...packs.map((p): IndexLine => ({ t: 'o', ...p })),
    { t: 'd', p: 'media', m: 0o755, mt: 1_700_000_000_000 },
    ...files,
    { t: 'e', entries: files.length + 1, objects: 3, bytes: files.reduce((n, f) => n + (f.t === 'f' ? f.s : 0), 0) },
  ];
  const plain = Buffer.concat(lines.map(indexLine));
  const out: Buffer[] = [];
  await pipeline(Readable.from([plain]), zstdCompress(), createAgeEncryptStream([site.recipient]), async function* (s: AsyncIterable<Buffer>) {
    for await (const c of s) out.push(c);
  });
  const stored = Buffer.concat(out);
  const entry: ArtifactEntry = {
    name: 'files',
    kind: 'files-index',
    file: 'files.index.zst.age',
    storedSize: stored.length,
    storedSha256: sha256(stored),
    plainSize: plain.length,
    compression: 'zstd',
    encryption: 'age',
    chunks: chunksOf(stored),
  };
  await fs.putBuffer(layout.artifact(SITE, SET, entry.file), stored);
  src = { filestore: fs, manifest: { site: SITE, setId: SET, artifacts: [entry] } as unknown as Manifest, entry, identities: [site.identity] };
  opts = { scratch: dir, maxEntries: 10_000, readData: false, filesKey, configFile: 'standby.yml', logger };
});

afterAll(async () => {
  await fs?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Runs `fn` with the stored bytes of pack `ord` damaged by `damage` (null: removed), then puts them back. */
async function withDamaged(ord: number, damage: ((b: Buffer) => Buffer) | null, fn: () => Promise<void>): Promise<void> {
  const key = objectKey(SITE, packs[ord]!.id);
  const original = (await fs.getBuffer(key, { maxBytes: 64 << 20 })).body;
  if (damage === null) await fs.delete(key);
  else await fs.putBuffer(key, damage(Buffer.from(original)));
  try {
    await fn();
  } finally {
    await fs.putBuffer(key, original);
  }
}

const flip = (b: Buffer) => {
  b[b.length >> 1]! ^= 1;
  return b;
};

describe('verify: a files index and its packs', () => {
  it('a good set: the index summed up, the packs listed, or read with every blob checked once', async () => {
    const listed = await checkFilesIndex(src, opts);
    expect(listed.firstError).toBeUndefined();
    expect(listed.entries).toBe(1211);
    expect(listed.index).toEqual({ files: 1210, directories: 1, symlinks: 0, packs: 3, packBytes: packs.reduce((n, p) => n + p.size, 0) });
    expect(listed.objects).toMatchObject({ mode: 'listed', packs: 3, bytes: listed.index.packBytes, problems: [] });
    expect(listed.objects.blobs).toBeUndefined();

    const read = await checkFilesIndex(src, { ...opts, readData: true });
    expect(read.firstError).toBeUndefined();
    // 1,210 references, 1,200 distinct blobs: a blob two files share is checked once.
    expect(read.objects).toMatchObject({ mode: 'read', packs: 3, bytes: listed.index.packBytes, blobs: 1200, problems: [] });
    expect(read.fileBytes).toBe(listed.fileBytes);
  });

  it('every failed pack is named with the files that use it; a listing sees only what changes presence or size', async () => {
    await withDamaged(1, flip, () =>
      withDamaged(2, null, async () => {
        const read = await checkFilesIndex(src, { ...opts, readData: true });
        expect(read.objects.problems.map((p) => [p.id, p.code])).toEqual([
          [packs[1]!.id, 'OBJECT_CHECKSUM'],
          [packs[2]!.id, 'OBJECT_MISSING'],
        ]);
        const [altered, missing] = read.objects.problems;
        expect(altered!.key).toBe(`${SITE}/objects/${packs[1]!.id.slice(0, 2)}/${packs[1]!.id}`);
        expect(altered!.files).toEqual(['media/f0400', 'media/f0401', 'media/f0402', 'media/f0403', 'media/f0404']);
        expect(altered!.moreFiles).toBe(FILES_PER_PACK - 5);
        expect(missing!.error).toMatch(new RegExp(`object ${packs[2]!.id} is missing from file://`));
        expect(read.firstError).toMatchObject({ code: 'OBJECT_CHECKSUM' });
        // The good pack was still read and counted.
        expect(read.objects.bytes).toBe(packs[0]!.size);

        const listed = await checkFilesIndex(src, opts);
        expect(listed.objects.problems.map((p) => [p.id, p.code])).toEqual([[packs[2]!.id, 'OBJECT_MISSING']]);
        expect(listed.objects.problems[0]!.files[0]).toBe('media/f0800');
      }),
    );
    await withDamaged(0, (b) => b.subarray(0, b.length - 1), async () => {
      const listed = await checkFilesIndex(src, opts);
      expect(listed.objects.problems.map((p) => [p.id, p.code, p.files.length + p.moreFiles])).toEqual([[packs[0]!.id, 'OBJECT_SIZE', FILES_PER_PACK + 10]]);
      expect(listed.objects.problems[0]!.files).toEqual(['media/copy-0000', 'media/copy-0001', 'media/copy-0002', 'media/copy-0003', 'media/copy-0004']);
    });
  });

  it("another files key than the primary's: every pack decrypts and every blob is refused", async () => {
    const other = filesKeyFromIdentity(generateAgeKeyPair().identity, 'other.agekey');
    const r = await checkFilesIndex(src, { ...opts, readData: true, filesKey: other });
    expect(r.objects.problems.map((p) => p.code)).toEqual(['OBJECT_BLOB_MISMATCH', 'OBJECT_BLOB_MISMATCH', 'OBJECT_BLOB_MISMATCH']);
    expect(r.objects.problems[0]!.hint).toContain('check that keys.filesKeyFile is the same files.agekey on the primary and on this standby');
    // A listing cannot tell.
    expect((await checkFilesIndex(src, { ...opts, filesKey: other })).objects.problems).toEqual([]);
  });

  it('no files key, or an index over the limits: refused before a pack is looked at', async () => {
    await expect(checkFilesIndex(src, { ...opts, filesKey: null })).rejects.toMatchObject({ kind: 'config', code: 'FILES_KEY_MISSING', message: expect.stringContaining('keys.filesKeyFile in standby.yml') });
    await expect(checkFilesIndex(src, { ...opts, maxEntries: 1000 })).rejects.toMatchObject({ kind: 'integrity', code: 'INDEX_INVALID', message: expect.stringContaining('more than 1000 entries (limits.maxEntries)') });
    await expect(checkFilesIndex(src, { ...opts, maxBytes: 1000 })).rejects.toMatchObject({ code: 'INDEX_INVALID', message: expect.stringContaining('more than 1000 bytes of file data') });
  });
});
