import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { isTandemError } from '../errors.js';
import { DEFAULT_CHUNK_SIZES } from './chunker.js';
import { FILES_INDEX_FORMAT, comparePaths, indexPathProblem, readFilesIndex, type FileEntry, type IndexEnd, type IndexLine, type ReadIndexOptions, type TreeEntry } from './files-index.js';
import { MAX_PACK_PLAIN, type PackInfo } from './pack.js';

const SITE = 'demo';
const SET = '20250101T000000Z-e1-000007';
const hex = (s: string) => createHash('sha256').update(s).digest('hex');
const OPTS: ReadIndexOptions = { label: 'set X: files artifact', site: SITE, setId: SET, maxEntries: 1000 };

const header = (o: Partial<{ site: string; setId: string; version: number }> = {}): IndexLine => ({
  t: 'h',
  format: FILES_INDEX_FORMAT,
  version: o.version ?? 1,
  site: o.site ?? SITE,
  setId: o.setId ?? SET,
  chunking: DEFAULT_CHUNK_SIZES,
});
const pack = (n: number, plain = 100): IndexLine => ({ t: 'o', id: hex(`pack ${n}`), size: plain + 200, sha256: hex(`stored ${n}`), plain, c: 'none' });
const dir = (p: string): TreeEntry => ({ t: 'd', p, m: 0o755, mt: 1_700_000_000_000 });
const file = (p: string, blobs: Array<[number, number, number]>, s?: number): FileEntry => ({
  t: 'f',
  p,
  m: 0o644,
  mt: 1_700_000_000_000.5,
  s: s ?? blobs.reduce((n, b) => n + b[2], 0),
  b: blobs.map(([pk, off, len]) => [pk, off, len, hex(`blob ${pk} ${off} ${len}`)]),
});
const link = (p: string, l = '../target'): TreeEntry => ({ t: 'l', p, m: 0o777, mt: 1_700_000_000_000, l });

/** A good index's lines, without its header and end. */
const body = (): IndexLine[] => [
  pack(0),
  dir('media'),
  file('media/a.jpg', [[0, 0, 60]]),
  file('media/b.txt', [[0, 60, 40]]),
  link('media/latest.jpg', 'a.jpg'),
  dir('media/sub'),
  pack(1, 1000),
  file('media/sub/big.bin', [
    [1, 0, 500],
    [1, 500, 500],
  ]),
  dir('other'),
  file('top.txt', [[0, 0, 60]]),
];

/** The end line that counts `lines` truly. */
function endOf(lines: IndexLine[]): IndexEnd {
  let entries = 0;
  let objects = 0;
  let bytes = 0;
  for (const l of lines) {
    if (l.t === 'o') objects++;
    else if (l.t === 'd' || l.t === 'l') entries++;
    else if (l.t === 'f') {
      entries++;
      bytes += l.s;
    }
  }
  return { t: 'e', entries, objects, bytes };
}

/** An index's text: the header, `lines` (JSON, or raw text), the true end line unless `end` says otherwise. */
function indexText(lines: Array<IndexLine | string>, o: { head?: IndexLine | null; end?: IndexEnd | null } = {}): string {
  const all: Array<IndexLine | string> = [];
  if (o.head !== null) all.push(o.head ?? header());
  all.push(...lines);
  if (o.end !== null) all.push(o.end ?? endOf(lines.filter((l): l is IndexLine => typeof l !== 'string')));
  return all.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n';
}

/** Reads an index given as text (in pieces of `piece` bytes); the entries, end and packs. */
async function read(text: string | Buffer, o: Partial<ReadIndexOptions> = {}, piece = 64 * 1024): Promise<{ entries: TreeEntry[]; end: IndexEnd; packs: PackInfo[] }> {
  const buf = Buffer.isBuffer(text) ? text : Buffer.from(text);
  const pieces: Buffer[] = [];
  for (let i = 0; i < buf.length; i += piece) pieces.push(buf.subarray(i, i + piece));
  const packs: PackInfo[] = [];
  const entries: TreeEntry[] = [];
  const gen = readFilesIndex(Readable.from(pieces), { ...OPTS, ...o }, packs);
  for (;;) {
    const r = await gen.next();
    if (r.done) return { entries, end: r.value, packs };
    entries.push(r.value);
  }
}

/** The refusal of an index: INDEX_INVALID, naming the line. */
async function refusal(text: string | Buffer, o: Partial<ReadIndexOptions> = {}, piece?: number): Promise<string> {
  try {
    await read(text, o, piece);
  } catch (err) {
    if (!isTandemError(err) || err.code !== 'INDEX_INVALID') throw err;
    expect(err.kind).toBe('integrity');
    expect(err.message.startsWith(`${OPTS.label}: line `)).toBe(true);
    return err.message;
  }
  throw new Error('the index was accepted');
}

/** The good body with entry `at` replaced (or, with `insert`, a line put before it). */
const edited = (at: number, l: IndexLine, insert = false): IndexLine[] => {
  const b = body();
  b.splice(at, insert ? 0 : 1, l);
  return b;
};

describe('the files index reader', () => {
  it('reads a good index: every entry in order, the packs, the end line', async () => {
    const r = await read(indexText(body()));
    expect(r.entries.map((e) => `${e.t} ${e.p}`)).toEqual(['d media', 'f media/a.jpg', 'f media/b.txt', 'l media/latest.jpg', 'd media/sub', 'f media/sub/big.bin', 'd other', 'f top.txt']);
    expect(r.packs.map((p) => p.plain)).toEqual([100, 1000]);
    expect(r.end).toEqual({ t: 'e', entries: 8, objects: 2, bytes: 1160 });
    expect((r.entries[5] as { b: unknown[] }).b).toHaveLength(2);
  });

  it('orders paths component by component, as a depth-first walk with sorted names', () => {
    expect(['a.b', 'a/b', 'a', 'a-b', 'b'].sort(comparePaths)).toEqual(['a', 'a/b', 'a-b', 'a.b', 'b']);
    expect(comparePaths('x', 'x')).toBe(0);
    // The same order as comparing the split names one by one, on paths made to differ where it
    // matters ('/' against characters below and above it, prefixes, non-ASCII), 20,000 pairs.
    const bySplit = (a: string, b: string): number => {
      const pa = a.split('/');
      const pb = b.split('/');
      for (let i = 0; i < Math.min(pa.length, pb.length); i++) if (pa[i] !== pb[i]) return pa[i]! < pb[i]! ? -1 : 1;
      return pa.length - pb.length;
    };
    const chars = ['a', 'b', '.', '-', ' ', '0', 'A', '_', 'é', '~', '\u{1F600}'];
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
    const name = () => Array.from({ length: 1 + rnd(3) }, () => chars[rnd(chars.length)]).join('');
    const path = () => Array.from({ length: 1 + rnd(3) }, name).join('/');
    for (let i = 0; i < 20_000; i++) {
      const a = path();
      const b = rnd(4) === 0 ? `${a}/${name()}` : path();
      expect(Math.sign(comparePaths(a, b)), `${a} vs ${b}`).toBe(Math.sign(bySplit(a, b)));
      expect(Math.sign(comparePaths(b, a))).toBe(Math.sign(bySplit(b, a)));
    }
    expect(indexPathProblem('media/a.jpg')).toBeUndefined();
    expect(indexPathProblem('')).toBe('is empty');
  });

  describe('refuses a hostile index, naming the line', () => {
    const cases: Array<[string, IndexLine[], RegExp]> = [
      ['an absolute path', edited(2, file('/etc/passwd', [[0, 0, 60]])), /line 4 .*"\/etc\/passwd" is absolute/],
      ["a '..' segment", edited(2, file('media/../../etc/passwd', [[0, 0, 60]])), /contains '\.\.'/],
      ["a '.' segment", edited(2, file('media/./a.jpg', [[0, 0, 60]])), /contains '\.'/],
      ['a NUL byte', edited(2, file('media/a\0.jpg', [[0, 0, 60]])), /contains a NUL byte/],
      ['an empty segment', edited(2, file('media//a.jpg', [[0, 0, 60]])), /has an empty segment/],
      ['a trailing slash', edited(2, file('media/a.jpg/', [[0, 0, 60]])), /has an empty segment/],
      ['a name tandem reserves', edited(2, file('media/.tandem-new', [[0, 0, 60]])), /uses a name tandem reserves \(\.tandem-new\)/],
      ['a reserved directory at the top', edited(1, dir('.tandem-old')), /uses a name tandem reserves/],
      ['paths out of order', edited(3, file('media/0-first.txt', [[0, 60, 40]])), /"media\/0-first.txt" is out of order or repeated \(after "media\/a.jpg"\)/],
      ['a repeated path', edited(3, file('media/a.jpg', [[0, 60, 40]])), /"media\/a.jpg" is out of order or repeated/],
      ['a directory repeated as a file', edited(2, file('media', [[0, 0, 60]]), true), /"media" is out of order or repeated/],
      ['a parent that is no directory entry before it', edited(8, dir('other/inner')), /"other\/inner": its directory "other" is not a directory entry before it/],
      ['a file whose directory never came', [pack(0), file('nodir/a', [[0, 0, 10]])], /"nodir\/a": its directory "nodir" is not a directory entry before it/],
      ['an entry under a symlink', edited(5, file('media/latest.jpg/x', [[0, 0, 10]])), /"media\/latest.jpg\/x": its directory "media\/latest.jpg" is not a directory entry/],
      ['an entry under a file', edited(3, file('media/a.jpg/x', [[0, 60, 40]])), /"media\/a.jpg\/x": its directory "media\/a.jpg" is not a directory entry/],
      ['a directory entry after its contents', [pack(0), file('b/x', [[0, 0, 10]]), dir('b')], /its directory "b" is not a directory entry before it/],
      ['a blob of a pack not yet described', edited(6, file('media/sub/big.bin', [[1, 0, 500]]), true), /"media\/sub\/big.bin": refers to pack 1, which no line before it describes/],
      ['a blob of a pack never described', edited(2, file('media/a.jpg', [[7, 0, 60]])), /refers to pack 7, which no line before it describes/],
      ['a blob outside its pack', edited(3, file('media/b.txt', [[0, 60, 41]])), /"media\/b.txt": a blob outside its pack \(60\+41 of 100 bytes\)/],
      ['an empty blob', edited(3, file('media/b.txt', [[0, 60, 0]])), /a blob outside its pack/],
      ['a negative offset', edited(3, file('media/b.txt', [[0, -1, 40]])), /a blob outside its pack/],
      ['a size its blobs do not add up to', edited(2, file('media/a.jpg', [[0, 0, 60]], 61)), /"media\/a.jpg": its blobs hold 60 bytes, its size says 61/],
      ['a blob id that is not one', edited(2, { ...file('media/a.jpg', [[0, 0, 60]]), b: [[0, 0, 60, '../x']] }), /a blob id that is not one/],
      ['a blob reference of the wrong shape', edited(2, { ...file('media/a.jpg', [[0, 0, 60]]), b: [[0, 0, 60]] } as unknown as TreeEntry), /not \[pack, offset, length, id\]/],
      ['a mode that is not one', edited(2, { ...file('media/a.jpg', [[0, 0, 60]]), m: 0o170644 }), /mode 61860 is not a permission mode/],
      ['no mtime', edited(2, { ...file('media/a.jpg', [[0, 0, 60]]), mt: Number.NaN }), /no valid mtime/],
      ['a symlink without a target', edited(4, link('media/latest.jpg', '')), /a symlink without a valid target/],
      ['a pack over the largest plain size', edited(0, { ...(pack(0) as object), plain: MAX_PACK_PLAIN + 1 } as IndexLine), /a pack line with missing or invalid fields/],
      ['a pack whose id is a path', edited(0, { ...(pack(0) as object), id: '../../latest.json' } as IndexLine), /a pack line with missing or invalid fields/],
      ['an unknown line type', edited(1, { t: 'x', p: 'media' } as unknown as IndexLine, true), /unknown line type "x"/],
    ];
    it.each(cases)('%s', async (_what, lines, why) => {
      expect(await refusal(indexText(lines))).toMatch(why);
    });

    it('the index of another site, or of another set (unless any set is asked for)', async () => {
      expect(await refusal(indexText(body(), { head: header({ site: 'other' }) }))).toMatch(/line 1 .*it says site "other", set "20250101T000000Z-e1-000007"; the manifest is of site "demo"/);
      expect(await refusal(indexText(body(), { head: header({ setId: 'older-set' }) }))).toMatch(/set "older-set"; the manifest is of site "demo", set 20250101T000000Z-e1-000007/);
      expect((await read(indexText(body(), { head: header({ setId: 'older-set' }) }), { anySet: true })).end.entries).toBe(8);
      await expect(read(indexText(body(), { head: header({ site: 'other' }) }), { anySet: true })).rejects.toThrow(/it says site "other"/);
    });

    it('no header, a newer version, an empty index', async () => {
      expect(await refusal(indexText(body(), { head: null }))).toMatch(/line 1 .*no header line/);
      expect(await refusal(indexText(body(), { head: header({ version: 3 }) }))).toMatch(/version 3, this tandem reads versions 1 and 2: upgrade this agent/);
      expect(await refusal('')).toMatch(/line 0 .*: empty/);
      expect(await refusal('null\n')).toMatch(/not an object/);
      expect(await refusal(`${JSON.stringify(header())}\n{"t":"d",`)).toMatch(/line 2 .*not JSON/);
    });

    it('end lines that do not count what came before', async () => {
      const good = endOf(body());
      expect(await refusal(indexText(body(), { end: { ...good, entries: good.entries + 1 } }))).toMatch(/the end line counts 9 entries, 2 packs, 1160 bytes; the index holds 8, 2, 1160/);
      expect(await refusal(indexText(body(), { end: { ...good, objects: 1 } }))).toMatch(/counts 8 entries, 1 packs/);
      expect(await refusal(indexText(body(), { end: { ...good, bytes: 1 } }))).toMatch(/1 bytes; the index holds 8, 2, 1160/);
    });

    it('a missing end line (truncated), at any byte', async () => {
      expect(await refusal(indexText(body(), { end: null }))).toMatch(/line 12 .*no end line \(truncated\)/);
      // Cut anywhere: refused, but for the final newline alone (the end line is whole without it).
      const text = Buffer.from(indexText(body()));
      let refused = 0;
      for (let at = 0; at < text.length - 1; at++) {
        await refusal(text.subarray(0, at));
        refused++;
      }
      expect(refused).toBe(text.length - 1);
      expect((await read(text.subarray(0, text.length - 1))).end.entries).toBe(8);
    });

    it('a line after the end line', async () => {
      expect(await refusal(indexText(body()) + JSON.stringify(file('zz', [[0, 0, 1]])) + '\n')).toMatch(/line 13 .*a line after the end line/);
      expect(await refusal(indexText(body()) + JSON.stringify(endOf(body())) + '\n')).toMatch(/a line after the end line/);
    });

    it('more entries than limits.maxEntries, more bytes than maxBytes', async () => {
      expect((await read(indexText(body()), { maxEntries: 8, maxBytes: 1160 })).end.bytes).toBe(1160);
      expect(await refusal(indexText(body()), { maxEntries: 7 })).toMatch(/line 11 .*more than 7 entries \(limits.maxEntries\)/);
      expect(await refusal(indexText(body()), { maxBytes: 1159 })).toMatch(/line 11 .*more than 1159 bytes of file data/);
    });

    it('a line over MAX_INDEX_LINE (16 MiB), without holding more of it', async () => {
      // The bound is checked as the pieces arrive (a line a little over it may pass whole in its last piece).
      const long = `${JSON.stringify(header())}\n{"t":"d","p":"${'x'.repeat(17 * 1024 * 1024)}"}\n`;
      expect(await refusal(long, {}, 1024 * 1024)).toMatch(/^[^"]*line 2 of the files index: a line longer than 16777216 bytes$/);
      // No newline ever: refused as soon as the pending line is over the limit, not at the end.
      async function* endless(): AsyncGenerator<Buffer> {
        yield Buffer.from(`${JSON.stringify(header())}\n`);
        for (let i = 0; i < 1000; i++) yield Buffer.alloc(1024 * 1024, 0x61);
        throw new Error('read on to the end: the line was not refused at its limit');
      }
      await expect(readFilesIndex(endless(), OPTS).next()).rejects.toThrow(/a line longer than 16777216 bytes/);
    });
  });

  it('multi-byte UTF-8 split across the pieces of the stream reads as a whole', async () => {
    const names = [dir('docs'), dir('docs/über'), file('docs/über/日本語ファイル.txt', [[0, 0, 10]]), file('docs/emoji-🦄.txt', [[0, 10, 10]]), file('docs/éclair-cafe\u0301.txt', [[0, 20, 10]])];
    const text = indexText([pack(0), ...names.sort((a, b) => comparePaths(a.p, b.p))]);
    const whole = await read(text, {}, 1 << 20);
    expect(whole.entries.map((e) => e.p)).toEqual(['docs', 'docs/emoji-🦄.txt', 'docs/éclair-cafe\u0301.txt', 'docs/über', 'docs/über/日本語ファイル.txt']);
    // Every piece size from 1 byte: each splits some multi-byte character somewhere.
    for (const piece of [1, 2, 3, 5, 7, 13]) expect((await read(text, {}, piece)).entries).toEqual(whole.entries);
  });
});
