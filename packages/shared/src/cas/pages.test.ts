/**
 * Paged files indexes (version 2): pages cut where their entries say, found again when unchanged,
 * loaded from a real directory filestore through pageLoader (the pack's SHA-256, then the page's
 * id), and read with the same checks as a version-1 index, across page boundaries; a hostile root
 * or page is refused naming the page and its line.
 */
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { generateAgeKeyPair } from '../crypto/age/index.js';
import { isTandemError } from '../errors.js';
import { openFilestore } from '../filestore/open.js';
import { removeTempDirs, tempDirSync } from '../testing/helpers.js';
import { SMALL_CHUNK_SIZES } from './chunker.js';
import { filesKeyFromIdentity } from './files-key.js';
import { FILES_INDEX_FORMAT, readFilesIndex, type IndexLine, type PageLoader, type PageShape, type ReadIndexOptions, type TreeEntry } from './files-index.js';
import { objectId, objectKey } from './object-id.js';
import { sealPack, type PackInfo } from './pack.js';
import { PAGE_MAX, PageBuilder, pageLoader, type PageBlob } from './pages.js';
import { comparePaths as cmpPaths } from './files-index.js';

const SITE = 'paged';
const SET = '20260101T000000Z-e1-000001';
const pair = generateAgeKeyPair();
const filesKey = filesKeyFromIdentity(pair.identity, 'files.agekey');
const hex = (s: string) => createHash('sha256').update(s).digest('hex');
const store = openFilestore(`file://${tempDirSync('tandem-pages-')}`, {});
const OPTS = (pages?: PageLoader): ReadIndexOptions => ({ label: 'set X', site: SITE, setId: SET, maxEntries: 100_000, ...(pages ? { pages } : {}) });
const loader = () => pageLoader(store, SITE, { identities: [pair.identity], hmacKey: filesKey.hmacKey, label: 'set X' });

afterAll(async () => {
  await store.close();
  removeTempDirs();
});

/** A data pack's info (never fetched: the tests read entries, not content). */
const dataPack = (n: number): PackInfo => ({ id: hex(`data ${n}`), size: 1_100_000, sha256: hex(`stored ${n}`), plain: 1_000_000, c: 'none' });

/** A tree of `n` files in a few directories, each with two blobs in data packs. */
function tree(n: number, edit?: (p: string) => boolean): Array<{ e: TreeEntry; blobs: PageBlob[] }> {
  const out: Array<{ e: TreeEntry; blobs: PageBlob[] }> = [];
  for (let d = 0; d < 10; d++) {
    const dir = `media/d${d}`;
    if (d === 0) out.push({ e: { t: 'd', p: 'media', m: 0o755, mt: 1 }, blobs: [] });
    out.push({ e: { t: 'd', p: dir, m: 0o755, mt: 2 }, blobs: [] });
    for (let i = 0; i < n / 10; i++) {
      const p = `${dir}/file-${String(i).padStart(5, '0')}.jpg`;
      const salt = edit?.(p) ? 'edited' : '';
      const blobs = [0, 1].map((k) => ({ info: dataPack((i + k) % 7), offset: k * 500, length: 500, id: hex(`${p} ${k} ${salt}`) }));
      out.push({ e: { t: 'f', p, m: 0o644, mt: 3, s: 1000, b: [] }, blobs });
    }
  }
  return out;
}

/** Pages stored as a primary stores them (only those not stored before); the root's lines. */
async function storeIndex(entries: Array<{ e: TreeEntry; blobs: PageBlob[] }>, stored: Map<string, { info: PackInfo; offset: number; length: number }>) {
  const b = new PageBuilder();
  const pages: Buffer[] = [];
  for (const x of entries) {
    const p = b.add(x.e, x.blobs);
    if (p) pages.push(Buffer.from(p));
  }
  const last = b.take();
  if (last) pages.push(Buffer.from(last));
  const fresh = pages.map((data) => ({ id: objectId(filesKey.hmacKey, data), data })).filter((p, i, all) => !stored.has(p.id) && all.findIndex((q) => q.id === p.id) === i);
  let uploaded = 0;
  if (fresh.length > 0) {
    const sealed = await sealPack(fresh, { hmacKey: filesKey.hmacKey, recipients: [pair.recipient] });
    await store.putBuffer(objectKey(SITE, sealed.info.id), sealed.stored);
    for (const bl of sealed.blobs) stored.set(bl.id, { info: sealed.info, offset: bl.offset, length: bl.length });
    uploaded = fresh.length;
  }
  const root: IndexLine[] = [{ t: 'h', format: FILES_INDEX_FORMAT, version: 2, site: SITE, setId: SET, chunking: SMALL_CHUNK_SIZES }];
  const ords = new Map<string, number>();
  const packIds = new Set(entries.flatMap((x) => x.blobs.map((bl) => bl.info.id)));
  for (const data of pages) {
    const at = stored.get(objectId(filesKey.hmacKey, data))!;
    if (!ords.has(at.info.id)) {
      ords.set(at.info.id, ords.size);
      root.push({ t: 'o', ...at.info });
      packIds.add(at.info.id);
    }
    root.push({ t: 'p', b: [ords.get(at.info.id)!, at.offset, at.length, objectId(filesKey.hmacKey, data)] });
  }
  root.push({ t: 'e', entries: entries.length, objects: packIds.size, bytes: entries.filter((x) => x.e.t === 'f').length * 1000 });
  return { pages, uploaded, root };
}

const text = (lines: IndexLine[]) => lines.map((l) => `${JSON.stringify(l)}\n`).join('');

async function readAll(root: string, pages: PageLoader | null = loader(), packs: PackInfo[] = []): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  for await (const e of readFilesIndex(Readable.from([Buffer.from(root)]), OPTS(pages ?? undefined), packs)) out.push(e);
  return out;
}

async function refusal(root: string, pages: PageLoader | null = loader()): Promise<string> {
  try {
    await readAll(root, pages);
  } catch (err) {
    expect(isTandemError(err)).toBe(true);
    return (err as Error).message;
  }
  throw new Error('the index was accepted');
}

describe('paged files index (version 2)', () => {
  it('reads every entry across its pages, each blob naming its pack in `packs`', async () => {
    const t = tree(2000);
    const { pages, root } = await storeIndex(t, new Map());
    expect(pages.length).toBeGreaterThan(20);
    for (const p of pages) expect(p.length).toBeLessThanOrEqual(PAGE_MAX + 1024);
    const packs: PackInfo[] = [];
    const got = await readAll(text(root), loader(), packs);
    expect(got.map((e) => e.p)).toEqual(t.map((x) => x.e.p));
    // Every data pack once, and the pack of pages: a pack several pages list is one pack.
    expect(new Set(packs.map((p) => p.id)).size).toBe(packs.length);
    expect(packs.length).toBe(8);
    for (const [i, e] of got.entries()) {
      if (e.t !== 'f') continue;
      expect(e.b.map((b) => packs[b[0]]!.id)).toEqual(t[i]!.blobs.map((bl) => bl.info.id));
      expect(e.b.map((b) => b[3])).toEqual(t[i]!.blobs.map((bl) => bl.id));
    }
  });

  it('a change to a few entries stores only their pages again', async () => {
    const stored = new Map<string, { info: PackInfo; offset: number; length: number }>();
    const first = await storeIndex(tree(2000), stored);
    const edited = new Set(['media/d3/file-00017.jpg', 'media/d7/file-00150.jpg']);
    const second = await storeIndex(tree(2000, (p) => edited.has(p)), stored);
    expect(first.uploaded).toBe(first.pages.length);
    expect(second.pages.length).toBeGreaterThanOrEqual(first.pages.length - 2);
    expect(second.uploaded).toBeGreaterThanOrEqual(1);
    expect(second.uploaded).toBeLessThanOrEqual(4);
    // A new file in the middle of a directory: its page, and perhaps the next (the cut moved).
    const added = tree(2000);
    added.splice(added.findIndex((x) => x.e.p === 'media/d2/file-00099.jpg') + 1, 0, { e: { t: 'f', p: 'media/d2/file-00099a.jpg', m: 0o644, mt: 3, s: 1000, b: [] }, blobs: [{ info: dataPack(1), offset: 0, length: 1000, id: hex('new') }] });
    const third = await storeIndex(added, stored);
    expect(third.uploaded).toBeGreaterThanOrEqual(1);
    expect(third.uploaded).toBeLessThanOrEqual(3);
    expect((await readAll(text(third.root))).length).toBe(added.length);
  });

  it('refuses a paged index without a page loader, and a page line in version 1', async () => {
    const { root } = await storeIndex(tree(100), new Map());
    const r = text(root);
    expect(await refusal(r, null)).toMatch(/line 1 of the files index: a paged index \(version 2\), and this reader was given no way to load its pages/);
    const v1 = text([{ ...(root[0] as IndexLine & { version: number }), version: 1 } as IndexLine, ...root.slice(1)]);
    expect(await refusal(v1)).toMatch(/line 3 of the files index: a page line in a version-1 index/);
  });

  it('refuses entries in the root, pages outside their pack, a page whose bytes are not its id', async () => {
    const { root } = await storeIndex(tree(100), new Map());
    const withEntry = [...root.slice(0, 2), { t: 'd', p: 'aaa', m: 0o755, mt: 1 } as IndexLine, ...root.slice(2)];
    expect(await refusal(text(withEntry))).toMatch(/line 3 of the files index: an entry in the root of a paged index/);
    const p = root[2] as IndexLine & { b: [number, number, number, string] };
    const outside = root.map((l) => (l === p ? { t: 'p', b: [0, 10_000_000, 10, p.b[3]] } : l)) as IndexLine[];
    expect(await refusal(text(outside))).toMatch(/a page: a blob outside its pack/);
    const wrongId = root.map((l) => (l === p ? { t: 'p', b: [p.b[0], p.b[1], p.b[2], hex('another page')] } : l)) as IndexLine[];
    expect(await refusal(text(wrongId))).toMatch(/a page: the bytes of blob [0-9a-f]{64} do not match its id/);
    const noPack = root.map((l) => (l === p ? { t: 'p', b: [5, 0, 10, p.b[3]] } : l)) as IndexLine[];
    expect(await refusal(text(noPack))).toMatch(/a page: refers to pack 5, which no line before it describes/);
  });

  /** A root over hand-made pages (stored as a primary stores them), for hostile page contents. */
  async function rootOver(pages: string[], entries: number, packs: number): Promise<string> {
    const blobs = pages.map((s) => ({ id: objectId(filesKey.hmacKey, Buffer.from(s)), data: Buffer.from(s) }));
    const sealed = await sealPack(blobs, { hmacKey: filesKey.hmacKey, recipients: [pair.recipient] });
    await store.putBuffer(objectKey(SITE, sealed.info.id), sealed.stored);
    return text([
      { t: 'h', format: FILES_INDEX_FORMAT, version: 2, site: SITE, setId: SET, chunking: SMALL_CHUNK_SIZES },
      { t: 'o', ...sealed.info },
      ...sealed.blobs.map((b): IndexLine => ({ t: 'p', b: [0, b.offset, b.length, b.id] })),
      { t: 'e', entries, objects: packs, bytes: 0 },
    ]);
  }
  const line = (l: object) => `${JSON.stringify(l)}\n`;
  const d = (p: string) => line({ t: 'd', p, m: 0o755, mt: 1 });

  it('refuses hostile pages, naming the page and its line', async () => {
    expect(await readAll(await rootOver([d('a') + d('a/b'), d('a/c')], 3, 1))).toHaveLength(3);
    const cases: Array<[string, string[], RegExp]> = [
      ['a header in a page', [d('a') + line({ t: 'h', format: FILES_INDEX_FORMAT, version: 2, site: SITE, setId: SET })], /page 1 \(root line 3\), line 2 .*a "h" line in a page/],
      ['an end line in a page', [d('a') + line({ t: 'e', entries: 1, objects: 1, bytes: 0 })], /page 1 .*line 2 .*a "e" line in a page/],
      ['a page line in a page', [d('a') + line({ t: 'p', b: [0, 0, 1, hex('x')] })], /page 1 .*line 2 .*a "p" line in a page/],
      ['order across pages', [d('b'), d('a')], /page 2 \(root line 4\), line 1 .*path "a" is out of order or repeated \(after "b"\)/],
      ['a directory missing across pages', [d('a'), d('b/c')], /page 2 .*line 1 .*"b\/c": its directory "b" is not a directory entry before it/],
      ['a page without entries', [d('a'), line({ t: 'o', ...dataPack(1) })], /page 2 .*a page without entries/],
      ['a page without its final newline', [d('a'), d('b').trimEnd()], /page 2 .*the page does not end with a newline/],
      ['a blob in a pack the page does not list', [d('a') + line({ t: 'f', p: 'a/x', m: 0o644, mt: 1, s: 10, b: [[0, 0, 10, hex('x')]] })], /page 1 .*line 2 .*"a\/x": refers to pack 0, which no line before it describes/],
      [
        'a pack listed again with other fields',
        [line({ t: 'o', ...dataPack(1) }) + d('a'), line({ t: 'o', ...dataPack(1), sha256: hex('other') }) + d('b')],
        /page 2 .*line 1 .*pack [0-9a-f]{64} is listed again with other fields/,
      ],
      ['not JSON', [d('a') + '{"t":\n'], /page 1 .*line 2 .*not JSON/],
    ];
    for (const [what, pages, why] of cases) expect(await refusal(await rootOver(pages, 9, 9)), what).toMatch(why);
    // The end line counts entries and packs across every page.
    expect(await refusal(await rootOver([d('a'), d('b')], 3, 1))).toMatch(/the end line counts 3 entries, 1 packs, 0 bytes; the index holds 2, 1, 0/);
  });

  it('a page read before is skipped by its shape: not loaded, and checked against the rest as its entries would be', async () => {
    const stored = new Map<string, { info: PackInfo; offset: number; length: number }>();
    // Deeper directories too, so that pages open and close them across their edges.
    const deep = (n: number, edit?: (p: string) => boolean) =>
      tree(n, edit).flatMap((x) => (x.e.t === 'd' && x.e.p !== 'media' ? [x, { e: { t: 'd' as const, p: `${x.e.p}/a`, m: 0o755, mt: 4 }, blobs: [] }] : x.e.t === 'f' && Number(x.e.p.slice(-9, -4)) % 3 === 0 ? [{ ...x, e: { ...x.e, p: x.e.p.replace(/\/file-/, '/a/file-') } }] : [x])).sort((a, b) => (a.e.p < b.e.p ? -1 : 1));
    const sortDepthFirst = (xs: ReturnType<typeof deep>) => xs.sort((a, b) => cmpPaths(a.e.p, b.e.p));
    const first = await storeIndex(sortDepthFirst(deep(2000)), stored);
    const shapes = new Map<string, PageShape>();
    const fullPacks: PackInfo[] = [];
    for await (const _ of readFilesIndex(Readable.from([Buffer.from(text(first.root))]), { ...OPTS(loader()), pageDone: (sh) => void shapes.set(sh.id, sh) }, fullPacks));
    expect(shapes.size).toBe(first.pages.length);
    // One file in media/d3, one in media/d7/a (a file whose number divides by 3 is moved there).
    const edited = new Set(['media/d3/file-00017.jpg', 'media/d7/file-00150.jpg']);
    const second = await storeIndex(sortDepthFirst(deep(2000, (p) => edited.has(p))), stored);
    let loaded = 0;
    const counting: PageLoader = (...a) => {
      loaded++;
      return loader()(...a);
    };
    const read = async (root: IndexLine[], skip: (id: string) => PageShape | undefined) => {
      const out: { entries: TreeEntry[]; skipped: PageShape[]; packs: PackInfo[] } = { entries: [], skipped: [], packs: [] };
      const o = { ...OPTS(counting), skipPage: skip, pageDone: (sh: PageShape, skipped: boolean) => void (skipped && out.skipped.push(sh)) };
      for await (const e of readFilesIndex(Readable.from([Buffer.from(text(root))]), o, out.packs)) out.entries.push(e);
      return out;
    };
    const got = await read(second.root, (id) => shapes.get(id));
    expect(got.skipped.length).toBeGreaterThan(first.pages.length - 5);
    expect(loaded).toBe(second.pages.length - got.skipped.length);
    expect(loaded).toBeGreaterThanOrEqual(2);
    // Every entry is either read or in a skipped page; the packs are those of a full read.
    expect(got.entries.length + got.skipped.reduce((n, sh) => n + sh.n, 0)).toBe(second.root.at(-1)!.t === 'e' ? (second.root.at(-1) as { entries: number }).entries : -1);
    expect(got.entries.map((e) => e.p)).toEqual(expect.arrayContaining(['media/d3/file-00017.jpg', 'media/d7/a/file-00150.jpg']));
    const again: PackInfo[] = [];
    for await (const _ of readFilesIndex(Readable.from([Buffer.from(text(second.root))]), OPTS(loader()), again));
    expect(got.packs.map((p) => p.id)).toEqual(again.map((p) => p.id));

    // A root that moves a skipped page, or drops the page that holds a skipped page's directory,
    // is refused as its entries would be.
    const pageLines = second.root.map((l, i) => [l, i] as const).filter(([l]) => l.t === 'p');
    const swapped = [...second.root];
    const [a, b] = [pageLines[3]![1], pageLines[4]![1]];
    [swapped[a], swapped[b]] = [swapped[b]!, swapped[a]!];
    await expect(read(swapped, (id) => shapes.get(id))).rejects.toThrow(/line \d+ of the files index: page 5 \(\d+ entries, as read before\): path "media\/[^"]+" is out of order or repeated \(after "media\/[^"]+"\)/);
    // The page whose entries open media/d5 (the first with an entry in it), dropped.
    const d5 = second.pages.findIndex((pg) => pg.toString().includes('"p":"media/d5"'));
    expect(d5).toBeGreaterThan(0);
    const dropped = second.root.filter((l) => l !== pageLines[d5]![0]);
    const after = shapes.get(objectId(filesKey.hmacKey, second.pages[d5 + 1]!));
    expect(after, 'the page after it is one the reader skips').toBeDefined();
    await expect(read(dropped, (id) => shapes.get(id))).rejects.toThrow(/as read before\): .*its directory "media\/d5(\/a)?" is not a directory entry before it/);
  });

  it('a small change reads each pack of pages once, though its pages alternate between packs', async () => {
    const stored = new Map<string, { info: PackInfo; offset: number; length: number }>();
    await storeIndex(tree(2000), stored);
    const edited = new Set(['media/d1/file-00010.jpg', 'media/d4/file-00100.jpg', 'media/d8/file-00150.jpg']);
    const second = await storeIndex(tree(2000, (p) => edited.has(p)), stored);
    const roots = second.root.filter((l) => l.t === 'o');
    expect(roots.length).toBe(2);
    // Counting what the loader asks the (real) filestore for.
    let gets = 0;
    const counting = new Proxy(store, {
      get(target, prop, recv) {
        if (prop === 'get') gets++;
        const v = Reflect.get(target, prop, recv) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const pages = pageLoader(counting, SITE, { identities: [pair.identity], hmacKey: filesKey.hmacKey, label: 'set X' });
    expect((await readAll(text(second.root), pages)).length).toBe(tree(2000).length);
    // The root alternates between the two packs at each changed page; each is fetched once.
    const order = second.root.filter((l) => l.t === 'p').map((l) => (l as IndexLine & { b: [number] }).b[0]);
    expect(order.filter((x, i) => i > 0 && x !== order[i - 1]).length).toBeGreaterThanOrEqual(4);
    expect(gets).toBe(2);
  });

  it('refuses a page pack altered in the filestore before decrypting a byte', async () => {
    const t = tree(50);
    const { root } = await storeIndex(t, new Map());
    const o = root[1] as PackInfo & { t: 'o' };
    const key = objectKey(SITE, o.id);
    const good = (await store.getBuffer(key)).body;
    const bad = Buffer.from(good);
    bad[bad.length >> 1]! ^= 1;
    await store.putBuffer(key, bad);
    try {
      expect(await refusal(text(root))).toMatch(/object [0-9a-f]{64} does not match the SHA-256 in the signed index/);
      await store.putBuffer(key, randomBytes(10));
      expect(await refusal(text(root))).toMatch(/has 10 bytes, the signed index says/);
    } finally {
      await store.putBuffer(key, good);
    }
    expect((await readAll(text(root))).length).toBe(t.length);
  });
});
