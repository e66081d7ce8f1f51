// One file on purpose (over 400 lines): creation and safe extraction are tested against each other
// (what the primary makes, the standby must take; what the standby refuses, the primary must not make).
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTarCheck, createTarStream, extractTarSafe, listTar } from './index.js';
import { zstdCompress, zstdDecompress } from '../compress.js';
import { TandemError } from '../errors.js';
import { HashCounter } from '../streams.js';
import { rejectedWith } from '../testing/helpers.js';

// ---- a tiny tar writer, so hostile archives can hold exactly what we want -------------------

interface RawEntry {
  path: string;
  /** typeflag: '0' file, '1' hardlink, '2' symlink, '3' char dev, '4' block dev, '5' dir, '6' fifo */
  type?: string;
  data?: Buffer | string;
  linkpath?: string;
  mode?: number;
  mtime?: number;
}

function header(path: string, type: string, size: number, mode: number, mtime: number, linkpath = ''): Buffer {
  const b = Buffer.alloc(512);
  const oct = (n: number, off: number, len: number) => b.write(n.toString(8).padStart(len - 1, '0') + '\0', off, len, 'ascii');
  b.write(path, 0, 100, 'utf8');
  oct(mode, 100, 8);
  oct(0, 108, 8);
  oct(0, 116, 8);
  oct(size, 124, 12);
  oct(mtime, 136, 12);
  b.fill(0x20, 148, 156);
  b.write(type, 156, 1, 'ascii');
  b.write(linkpath, 157, 100, 'utf8');
  b.write('ustar\0', 257, 'ascii');
  b.write('00', 263, 'ascii');
  let sum = 0;
  for (const x of b) sum += x;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return b;
}

const pad = (data: Buffer): Buffer => Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const n = Buffer.byteLength(body);
  let len = n + String(n).length;
  if (String(len).length !== String(n).length) len = n + String(len).length;
  return `${len}${body}`;
}

function tarOf(entries: RawEntry[], opts: { eof?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = Buffer.from(e.data ?? '');
    const type = e.type ?? '0';
    let name = e.path;
    if (Buffer.byteLength(name) > 100) {
      const pax = Buffer.from(paxRecord('path', name));
      parts.push(header('PaxHeader', 'x', pax.length, 0o644, 0), pad(pax));
      name = 'long';
    }
    parts.push(header(name, type, data.length, e.mode ?? (type === '5' ? 0o755 : 0o644), e.mtime ?? 1_700_000_000, e.linkpath));
    parts.push(pad(data));
  }
  if (opts.eof !== false) parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

// ---- helpers --------------------------------------------------------------------------------

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'tandem-archive-test-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

let caseNo = 0;
function freshDir(): string {
  const d = join(tmp, `case-${++caseNo}`);
  fs.mkdirSync(d);
  return d;
}

interface Node {
  type: string;
  mode: number;
  mtime: number;
  size?: number;
  sha?: string;
  target?: string;
}

/** Everything we promise to preserve, per relative path ('' is the root). */
function walk(root: string): Map<string, Node> {
  const out = new Map<string, Node>();
  const visit = (rel: string) => {
    const abs = rel === '' ? root : join(root, rel);
    const st = fs.lstatSync(abs);
    const node: Node = { type: '?', mode: st.mode & 0o7777, mtime: Math.floor(st.mtimeMs) };
    if (st.isSymbolicLink()) {
      Object.assign(node, { type: 'symlink', mode: 0, target: fs.readlinkSync(abs) });
    } else if (st.isFile()) {
      const sha = createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
      Object.assign(node, { type: 'file', size: st.size, sha });
    } else if (st.isDirectory()) {
      node.type = 'dir';
      for (const name of fs.readdirSync(abs)) visit(rel === '' ? name : `${rel}/${name}`);
    }
    out.set(rel, node);
  };
  visit('');
  return out;
}

const LONG_DIR = `${'d'.repeat(120)}/${'é'.repeat(100)}`; // > 255 bytes once the file name is added
const LONG_FILE = `${LONG_DIR}/${'f'.repeat(150)}.txt`;

/** A tree with everything a site directory may hold. Returns the number of file bytes (hardlink once). */
function buildTree(src: string): number {
  const w = (rel: string, data: string | Buffer, mode: number) => {
    fs.mkdirSync(join(src, rel, '..'), { recursive: true });
    fs.writeFileSync(join(src, rel), data);
    fs.chmodSync(join(src, rel), mode);
    return Buffer.byteLength(data);
  };
  let bytes = 0;
  bytes += w('bin/run.sh', '#!/bin/sh\necho hi\n', 0o755);
  bytes += w('config/site.conf', 'secret = 1\n', 0o640);
  bytes += w('config/shared.txt', 'group writable: survives any umask\n', 0o664);
  bytes += w('config/readonly.txt', 'ro\n', 0o444);
  bytes += w('nested/a/b/c/deep.txt', 'deep\n', 0o644);
  bytes += w('ro-dir/inside.txt', 'inside a read-only dir\n', 0o644);
  bytes += w('ünïcødé 文件 with spaces.txt', 'unicode\n', 0o644);
  bytes += w('new\nline.txt', 'newline in name\n', 0o644);
  bytes += w(LONG_FILE, 'long\n', 0o600);
  bytes += w('media/big.bin', randomBytes(3 * 1024 * 1024), 0o644);
  // Written behind (64 KiB or more: the thread pool, O_DIRECT where the file system takes it): sizes
  // off the 4 KiB alignment, an odd mode, and a hard link to one that may still be being written.
  bytes += w('media/mid.bin', randomBytes(70_001), 0o640);
  bytes += w('media/edge.bin', randomBytes(65_536), 0o600);
  bytes += w('media/odd.bin', randomBytes(1_000_003), 0o755);
  bytes += w('media/empty.bin', '', 0o644);
  fs.mkdirSync(join(src, 'empty'));
  fs.chmodSync(join(src, 'empty'), 0o700);
  fs.mkdirSync(join(src, 'hard'));
  fs.linkSync(join(src, 'bin/run.sh'), join(src, 'hard/hl'));
  fs.linkSync(join(src, 'media/odd.bin'), join(src, 'hard/odd-link'));
  fs.mkdirSync(join(src, 'links'));
  fs.symlinkSync('../config/site.conf', join(src, 'links/to-conf'));
  fs.symlinkSync('nowhere', join(src, 'links/dangling'));
  fs.symlinkSync('../../x', join(src, 'nested/a/b/up-two'));
  // Carried as links whatever they point at: a shared mount, and a climb out of the tree.
  fs.symlinkSync('/srv/shared/media', join(src, 'links/absolute'));
  fs.symlinkSync('../../../elsewhere/x', join(src, 'links/climbs-out'));
  fs.symlinkSync('../links/../..', join(src, 'links/dotdot-after-name'));
  // mtimes: distinct, with milliseconds; directories last, deepest first, as children touch them.
  const all = [...walk(src).entries()];
  let t = 1_600_000_000_000;
  for (const [rel, n] of all) {
    if (n.type === 'dir') continue;
    const d = new Date((t += 1_001));
    if (n.type === 'symlink') fs.lutimesSync(join(src, rel), d, d);
    else fs.utimesSync(join(src, rel), d, d);
  }
  for (const [rel] of all.filter(([, n]) => n.type === 'dir').sort((a, b) => b[0].length - a[0].length)) {
    const d = new Date((t += 1_001));
    fs.utimesSync(rel === '' ? src : join(src, rel), d, d);
  }
  fs.chmodSync(join(src, 'ro-dir'), 0o555);
  fs.chmodSync(src, 0o750);
  return bytes;
}

// ---- round trip -----------------------------------------------------------------------------

describe('createTarStream + extractTarSafe', () => {
  let src: string;
  let fileBytes: number;
  beforeAll(() => {
    src = join(tmp, 'src');
    fs.mkdirSync(src);
    fileBytes = buildTree(src);
  });

  it('round-trips a site tree through tar → zstd → unzstd → extract', async () => {
    const dst = join(freshDir(), 'restored');
    const unz = zstdDecompress();
    const [, result] = await Promise.all([
      pipeline(createTarStream(src), zstdCompress(), unz),
      extractTarSafe(unz, dst, { label: 'files' }),
    ]);
    const before = walk(src);
    const after = walk(dst);
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    for (const [rel, node] of before) expect({ rel, ...after.get(rel) }).toEqual({ rel, ...node });
    expect(after.get(LONG_FILE)?.type).toBe('file');
    expect(fs.statSync(join(dst, 'hard/hl')).ino).toBe(fs.statSync(join(dst, 'bin/run.sh')).ino);
    expect(result.bytes).toBe(fileBytes);
    expect(result.entries).toBe(before.size); // one entry per path, the root "./" included
  });

  it('is deterministic and lists what extract sees', async () => {
    const h1 = new HashCounter();
    const h2 = new HashCounter();
    await pipeline(createTarStream(src), h1, async function* (s) {
      for await (const _ of s);
    });
    const list = await listTar(createTarStream(src).pipe(h2));
    expect(h2.digest()).toBe(h1.digest());
    expect(list.length).toBe(walk(src).size);
    expect(list.find((e) => e.path === './bin/run.sh')).toMatchObject({ type: 'File', mode: 0o755, size: 18 });
    expect(list.find((e) => e.path === './links/to-conf')?.type).toBe('SymbolicLink');
    expect(list.some((e) => e.path === `./${LONG_FILE}`)).toBe(true);
    const names = list.map((e) => e.path);
    expect(names.filter((p) => p.startsWith('./config/'))).toEqual(['./config/', './config/readonly.txt', './config/shared.txt', './config/site.conf']);
    await expect(listTar(createTarStream(src), { maxEntries: 5 })).rejects.toMatchObject({ code: 'ARCHIVE_LIMIT_EXCEEDED' });
  });

  it('forces fileMode/dirMode (the secrets archive), root included', async () => {
    const dst = join(freshDir(), 'secrets');
    await extractTarSafe(createTarStream(src), dst, { label: 'security', fileMode: 0o600, dirMode: 0o700 });
    for (const [rel, n] of walk(dst)) {
      if (n.type === 'file') expect({ rel, mode: n.mode }).toEqual({ rel, mode: 0o600 });
      if (n.type === 'dir') expect({ rel, mode: n.mode }).toEqual({ rel, mode: 0o700 });
    }
  });

  it('fails naming the path when the directory does not exist', async () => {
    const missing = join(tmp, 'no-such-dir');
    const err = await rejectedWith(listTar(createTarStream(missing)));
    expect(err.code).toBe('CHILD_FAILED');
    expect(err.message).toContain(missing);
  });

  it('fails naming the path of an unreadable file', async () => {
    const d = freshDir();
    fs.writeFileSync(join(d, 'locked'), 'x', { mode: 0o000 });
    if (process.getuid?.() !== 0) {
      const err = await rejectedWith(listTar(createTarStream(d)));
      expect(err.message).toContain('locked');
      return;
    }
    // Root reads anything: run the archiver as nobody, from the built module.
    fs.chmodSync(d, 0o755);
    fs.chmodSync(join(d, '..'), 0o755);
    const mod = new URL('../../dist/archive/index.js', import.meta.url).pathname;
    const script = `import(${JSON.stringify(mod)}).then(async ({ createTarStream, listTar }) => {
      try { await listTar(createTarStream(${JSON.stringify(d)})); console.log('OK'); }
      catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
    });`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { uid: 65534, gid: 65534, encoding: 'utf8' });
    const err = JSON.parse(r.stdout.trim()) as { code: string; message: string };
    expect(err.code).toBe('CHILD_FAILED');
    expect(err.message).toMatch(/locked: Cannot open: Permission denied/);
  });

  it('treats a file changing while archived as a warning, not a failed archive', async () => {
    const d = freshDir();
    fs.writeFileSync(join(d, 'growing.log'), Buffer.alloc(8 << 20, 1));
    const stream = createTarStream(d);
    const warnings: string[] = [];
    stream.on('child-warning', (w: string) => warnings.push(w));
    // Append while tar reads: GNU tar notices the size change and exits 1.
    const writer = setInterval(() => fs.appendFileSync(join(d, 'growing.log'), Buffer.alloc(1 << 20, 2)), 1);
    let entries;
    try {
      stream.pause();
      await new Promise((r) => setTimeout(r, 50));
      entries = await listTar(stream);
    } finally {
      clearInterval(writer);
    }
    expect(entries.map((e) => e.path)).toContain('./growing.log');
    expect(warnings.join('\n')).toMatch(/growing\.log: file changed as we read it/);
  });

  it('refuses a target that is not empty, or a symlink', async () => {
    const d = freshDir();
    fs.mkdirSync(join(d, 'full'));
    fs.writeFileSync(join(d, 'full/x'), '');
    fs.mkdirSync(join(d, 'real'));
    fs.symlinkSync('real', join(d, 'link'));
    for (const t of ['full', 'link']) {
      const src = Readable.from([tarOf([{ path: 'a' }])]);
      const err = await rejectedWith(extractTarSafe(src, join(d, t), { label: 'x' }));
      expect(err.code).toBe('EXTRACT_TARGET_INVALID');
      expect(src.destroyed).toBe(true); // so whatever feeds it does not wait forever
    }
    expect(fs.readdirSync(join(d, 'real'))).toEqual([]);
  });

  it('makes the target (0700) at the first entry: a source that fails before one leaves nothing', async () => {
    const d = freshDir();
    const failing = new Readable({ read() {} });
    const pending = extractTarSafe(failing, join(d, 'never'), { label: 'x' });
    await new Promise((r) => setTimeout(r, 20));
    expect(fs.existsSync(join(d, 'never'))).toBe(false); // nothing before a byte arrived
    failing.destroy(new Error('chunk 1 of 3 did not match'));
    await expect(pending).rejects.toThrow('chunk 1 of 3 did not match');
    expect(fs.readdirSync(d)).toEqual([]);

    await extractTarSafe(Readable.from([tarOf([{ path: 'a' }])]), join(d, 'made'), { label: 'x' });
    expect(fs.readdirSync(join(d, 'made'))).toEqual(['a']);
    expect(fs.statSync(join(d, 'made')).mode & 0o777).toBe(0o700);
  });
});

// ---- hostile archives ------------------------------------------------------------------------

describe('extractTarSafe refuses unsafe entries', () => {
  let base: string;
  let outside: string;
  let target: string;
  beforeEach(() => {
    base = freshDir();
    outside = join(base, 'outside');
    target = join(base, 'target');
    fs.mkdirSync(outside);
    fs.writeFileSync(join(outside, 'secret'), 'orig');
  });
  afterEach(() => {
    // Nothing beside the target (made at the first entry the parser hands on), nothing new or changed outside it.
    expect(fs.readdirSync(base).filter((n) => n !== 'target')).toEqual(['outside']);
    expect(fs.readdirSync(outside)).toEqual(['secret']);
    expect(fs.readFileSync(join(outside, 'secret'), 'utf8')).toBe('orig');
    expect(fs.statSync(join(outside, 'secret')).nlink).toBe(1);
  });

  const abs = () => join(outside, 'abs');
  const cases: Array<{ name: string; entries: () => RawEntry[]; bad: string | (() => string); why: RegExp }> = [
    { name: '.. path', entries: () => [{ path: '../outside/evil', data: 'x' }], bad: '../outside/evil', why: /contains '\.\.'/ },
    { name: '.. in the middle', entries: () => [{ path: 'a/../../evil', data: 'x' }], bad: 'a/../../evil', why: /contains '\.\.'/ },
    { name: '.. in a long pax path', entries: () => [{ path: `${'x'.repeat(150)}/../../../evil`, data: 'x' }], bad: `${'x'.repeat(150)}/../../../evil`, why: /'\.\.'/ },
    { name: 'absolute path', entries: () => [{ path: abs(), data: 'x' }], bad: abs, why: /is absolute/ },
    {
      name: 'symlink out, then write through it',
      entries: () => [{ path: 'l', type: '2', linkpath: '../outside' }, { path: 'l/pwned', data: 'x' }],
      bad: 'l/pwned',
      why: /passes through the symlink "l"/,
    },
    {
      name: 'absolute symlink out, then a directory and a file through it',
      entries: () => [{ path: 'l', type: '2', linkpath: outside }, { path: 'l/sub/', type: '5' }, { path: 'l/sub/pwned', data: 'x' }],
      bad: 'l/sub/',
      why: /passes through the symlink "l"/,
    },
    {
      name: 'absolute symlink out, then a hardlink to a file behind it',
      entries: () => [{ path: 'l', type: '2', linkpath: outside }, { path: 'h', type: '1', linkpath: 'l/secret' }],
      bad: 'h',
      why: /hardlink target "l\/secret" passes through the symlink "l"/,
    },
    {
      name: 'absolute symlink to the file it would then replace',
      entries: () => [{ path: 'l', type: '2', linkpath: join(outside, 'secret') }, { path: 'l', data: 'pwned' }],
      bad: 'l',
      why: /is the symlink "l"/,
    },
    {
      name: 'write through an inside symlink',
      entries: () => [{ path: 'd/', type: '5' }, { path: 'l', type: '2', linkpath: 'd' }, { path: 'l/x', data: 'x' }],
      bad: 'l/x',
      why: /passes through the symlink "l"/,
    },
    {
      // lexically "a/.." is ".", but on disk a -> . so b -> <target>/.. = outside: b is carried, never entered
      name: 'a write through a symlink chain that climbs out (a -> ., b -> a/..)',
      entries: () => [{ path: 'a', type: '2', linkpath: '.' }, { path: 'b', type: '2', linkpath: 'a/..' }, { path: 'b/outside/pwned', data: 'x' }],
      bad: 'b/outside/pwned',
      why: /passes through the symlink "b"/,
    },
    {
      name: 'symlink below a symlink',
      entries: () => [{ path: 'l', type: '2', linkpath: '.' }, { path: 'l/m', type: '2', linkpath: '..' }],
      bad: 'l/m',
      why: /passes through the symlink/,
    },
    {
      name: 'file replacing a symlink',
      entries: () => [{ path: 'l', type: '2', linkpath: 'x' }, { path: 'l', data: 'x' }],
      bad: 'l',
      why: /is the symlink/,
    },
    { name: 'root replaced by a symlink', entries: () => [{ path: './', type: '2', linkpath: '..' }], bad: './', why: /cannot replace the target/ },
    { name: 'hardlink out', entries: () => [{ path: 'h', type: '1', linkpath: '../outside/secret' }], bad: 'h', why: /hardlink target .*'\.\.'/ },
    { name: 'hardlink to an absolute path', entries: () => [{ path: 'h', type: '1', linkpath: join(outside, 'secret') }], bad: 'h', why: /hardlink target .*absolute/ },
    { name: 'hardlink to a missing file', entries: () => [{ path: 'h', type: '1', linkpath: 'nope' }], bad: 'h', why: /missing/ },
    {
      name: 'hardlink through a symlink',
      entries: () => [{ path: 'f', data: 'x' }, { path: 'l', type: '2', linkpath: '.' }, { path: 'h', type: '1', linkpath: 'l/f' }],
      bad: 'h',
      why: /passes through the symlink/,
    },
    {
      name: 'hardlink to a directory',
      entries: () => [{ path: 'd/', type: '5' }, { path: 'h', type: '1', linkpath: 'd' }],
      bad: 'h',
      why: /not a regular file/,
    },
    { name: 'character device', entries: () => [{ path: 'tty', type: '3' }], bad: 'tty', why: /CharacterDevice entries are not allowed/ },
    { name: 'block device', entries: () => [{ path: 'sda', type: '4' }], bad: 'sda', why: /BlockDevice entries are not allowed/ },
    { name: 'fifo', entries: () => [{ path: 'fifo', type: '6' }], bad: 'fifo', why: /FIFO entries are not allowed/ },
    { name: 'unknown type', entries: () => [{ path: 'odd', type: 'Z', data: 'zz' }], bad: 'odd', why: /unsupported entry type/ },
    { name: 'duplicate file', entries: () => [{ path: 'f', data: 'a' }, { path: 'f', data: 'b' }], bad: 'f', why: /already exists/ },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const err = await rejectedWith(extractTarSafe(Readable.from([tarOf(c.entries())]), target, { label: 'config of set S' }));
      expect(err.code).toBe('ARCHIVE_UNSAFE_ENTRY');
      expect(err.kind).toBe('integrity');
      expect(err.message).toContain('config of set S');
      expect(err.message).toContain(JSON.stringify(typeof c.bad === 'string' ? c.bad : c.bad()));
      expect(err.message).toMatch(c.why);
    });
  }

  it('stops at the refused entry', async () => {
    const entries = [{ path: 'a', type: '2', linkpath: '.' }, { path: 'a/x', data: 'x' }, { path: 'c', data: 'x' }];
    await rejectedWith(extractTarSafe(Readable.from([tarOf(entries)]), target, { label: 'x' }));
    expect(fs.readdirSync(target)).toEqual(['a']);
  });

  it('carries symlinks as symlinks whatever their target, and strips setuid/setgid/sticky bits', async () => {
    const entries: RawEntry[] = [
      { path: 'a/b/up', type: '2', linkpath: '../../c' },
      { path: 'a/b/here', type: '2', linkpath: './x' },
      { path: 'abs', type: '2', linkpath: outside },
      { path: 'abs-file', type: '2', linkpath: join(outside, 'secret') },
      { path: 'a/climbs-out', type: '2', linkpath: '../../outside/secret' },
      { path: 'dot', type: '2', linkpath: '.' },
      { path: 'chain', type: '2', linkpath: 'dot/..' },
      { path: 'suid', data: '#!/bin/sh\n', mode: 0o4755 },
      { path: 'sticky/', type: '5', mode: 0o3777 },
    ];
    const r = await extractTarSafe(Readable.from([tarOf(entries)]), target, { label: 'x' });
    expect(r.entries).toBe(entries.length);
    for (const e of entries.filter((x) => x.type === '2')) expect(fs.readlinkSync(join(target, e.path))).toBe(e.linkpath);
    expect(fs.readlinkSync(join(target, 'a/b/up'))).toBe('../../c');
    expect(fs.statSync(join(target, 'suid')).mode & 0o7777).toBe(0o755);
    expect(fs.statSync(join(target, 'sticky')).mode & 0o7777).toBe(0o777);
  });
});

// ---- the primary's check of its own archives ---------------------------------------------------

describe('createTarCheck: what a standby would refuse fails the backup, naming the entry', () => {
  /** The tar of `dir` through the check: its bytes, or the error. */
  async function checked(dir: string): Promise<{ bytes?: Buffer; err?: TandemError }> {
    const out: Buffer[] = [];
    try {
      await pipeline(createTarStream(dir), createTarCheck(dir, { label: `paths.files (${dir})` }), async function* (src: AsyncIterable<Buffer>) {
        for await (const c of src) out.push(c);
      });
      return { bytes: Buffer.concat(out) };
    } catch (e) {
      expect(e).toBeInstanceOf(TandemError);
      return { err: e as TandemError };
    }
  }
  const tarBytes = async (dir: string): Promise<Buffer> => {
    const out: Buffer[] = [];
    for await (const c of createTarStream(dir)) out.push(c as Buffer);
    return Buffer.concat(out);
  };

  it('passes a site tree through unchanged, symlinks to anywhere included', async () => {
    const d = freshDir();
    fs.mkdirSync(join(d, 'media/2026'), { recursive: true });
    fs.writeFileSync(join(d, 'media/2026/a.jpg'), randomBytes(2 * 1024 * 1024 + 5));
    fs.writeFileSync(join(d, 'media/small.txt'), 'small\n');
    fs.linkSync(join(d, 'media/small.txt'), join(d, 'media/hard.txt'));
    fs.symlinkSync('/mnt/shared/archive', join(d, 'media/archive'));
    fs.symlinkSync('../../outside', join(d, 'media/2026/up'));
    fs.writeFileSync(join(d, 'real \uFFFD name.txt'), 'a name that really holds U+FFFD\n');
    const r = await checked(d);
    expect(r.err).toBeUndefined();
    expect(r.bytes!.equals(await tarBytes(d))).toBe(true);
    // ... and a standby extracts it.
    const dst = join(freshDir(), 't');
    await extractTarSafe(Readable.from([r.bytes!]), dst, { label: 'files' });
    expect(fs.readlinkSync(join(dst, 'media/archive'))).toBe('/mnt/shared/archive');
    expect(fs.readlinkSync(join(dst, 'media/2026/up'))).toBe('../../outside');
  });

  const refusals: Array<[what: string, make: (d: string) => void, entry: string, why: RegExp]> = [
    ['a FIFO', (d) => spawnSync('mkfifo', [join(d, 'sub/queue')]), './sub/queue', /FIFO entries are not allowed/],
    [
      'a hard-linked symlink (tar archives the second name as a hardlink to a symlink)',
      (d) => {
        fs.symlinkSync('/srv/elsewhere', join(d, 'sub/l1'));
        spawnSync('ln', ['-P', join(d, 'sub/l1'), join(d, 'sub/l2')]);
      },
      './sub/l2',
      /hardlink target "\.\/sub\/l1" is the symlink/,
    ],
    ['a name that is not UTF-8', (d) => fs.writeFileSync(Buffer.from(`${join(d, 'sub')}/bad-\xff.txt`, 'latin1'), 'x'), './sub/bad-\uFFFD.txt', /not valid UTF-8/],
    [
      'a symlink target that is not UTF-8',
      (d) => fs.symlinkSync(Buffer.from('/srv/\xfe', 'latin1'), join(d, 'sub/odd-link')),
      './sub/odd-link',
      /symlink target is not valid UTF-8/,
    ],
  ];

  for (const [what, make, entry, why] of refusals) {
    it(`${what}: the backup fails naming it, as the standby would refuse it`, async () => {
      const d = freshDir();
      fs.mkdirSync(join(d, 'sub'));
      fs.writeFileSync(join(d, 'sub/ok.txt'), 'ok\n');
      make(d);
      const r = await checked(d);
      expect(r.err?.code, r.err?.message).toBe('ARCHIVE_UNSUPPORTED_ENTRY');
      expect(r.err!.message).toContain(`paths.files (${d}): ${JSON.stringify(entry)}`);
      expect(r.err!.message).toMatch(why);
      expect(r.err!.message).toContain('nothing was committed');
      expect(r.err!.hint).toMatch(/remove it or move it out/);
      // Parity: the standby refuses the same archive (the UTF-8 cases: restores another name, or refuses a duplicate).
      if (!/UTF-8/.test(what)) {
        const e = await rejectedWith(extractTarSafe(Readable.from([await tarBytes(d)]), join(freshDir(), 't'), { label: 'files' }));
        expect(e.code).toBe('ARCHIVE_UNSAFE_ENTRY');
        expect(e.message).toContain(JSON.stringify(entry));
      }
    });
  }

  it('two names that are not UTF-8 would collide on a standby: the primary names the first', async () => {
    const d = freshDir();
    fs.writeFileSync(Buffer.from(`${d}/a\xfe`, 'latin1'), '1');
    fs.writeFileSync(Buffer.from(`${d}/a\xff`, 'latin1'), '2');
    const e = await rejectedWith(extractTarSafe(Readable.from([await tarBytes(d)]), join(freshDir(), 't'), { label: 'files' }));
    expect(e.message).toMatch(/already exists \(duplicate entry\)/);
    const r = await checked(d);
    expect(r.err?.code).toBe('ARCHIVE_UNSUPPORTED_ENTRY');
    expect(r.err!.message).toMatch(/"\.\/a\uFFFD".*not valid UTF-8/);
  });
});

describe('extractTarSafe limits and corrupt input', () => {
  const files = (n: number, size: number): RawEntry[] => Array.from({ length: n }, (_, i) => ({ path: `f${i}`, data: 'x'.repeat(size) }));
  const extract = (bytes: Buffer | Readable, opts: { maxEntries?: number; maxBytes?: number } = {}) =>
    extractTarSafe(bytes instanceof Readable ? bytes : Readable.from([bytes]), join(freshDir(), 't'), { label: 'files', ...opts });

  it('enforces maxEntries and maxBytes, naming the limit', async () => {
    const e = await rejectedWith(extract(tarOf(files(5, 10)), { maxEntries: 3 }));
    expect(e.code).toBe('ARCHIVE_LIMIT_EXCEEDED');
    expect(e.message).toMatch(/more than 3 entries \(maxEntries\)/);
    const b = await rejectedWith(extract(tarOf(files(2, 1000)), { maxBytes: 1500 }));
    expect(b.code).toBe('ARCHIVE_LIMIT_EXCEEDED');
    expect(b.message).toMatch(/more than 1500 bytes .*maxBytes/);
    await expect(extract(tarOf(files(3, 500)), { maxEntries: 3, maxBytes: 1500 })).resolves.toEqual({ entries: 3, bytes: 1500 });
  });

  it('writes many small files a few at a time: each one complete, with its mode and mtime; links see them', async () => {
    const entries: RawEntry[] = [];
    for (let i = 0; i < 300; i++) {
      entries.push({ path: `d${i % 7}/f${i}`, data: randomBytes((i * 7919) % 70_000), mode: i % 2 ? 0o640 : 0o604, mtime: 1_600_000_000 + i });
      // A hardlink right after its file: it must wait for that file's write.
      if (i % 50 === 49) entries.push({ path: `d${i % 7}/h${i}`, type: '1', linkpath: `d${i % 7}/f${i}` });
    }
    const target = join(freshDir(), 't');
    const r = await extractTarSafe(Readable.from([tarOf(entries)]), target, { label: 'x' });
    expect(r.entries).toBe(entries.length);
    for (const e of entries) {
      const st = fs.lstatSync(join(target, e.path));
      if (e.type === '1') {
        expect(st.nlink).toBe(2);
        continue;
      }
      expect(fs.readFileSync(join(target, e.path)).equals(e.data as Buffer)).toBe(true);
      expect(st.mode & 0o777).toBe(e.mode);
      expect(Math.round(st.mtimeMs / 1000)).toBe(e.mtime);
    }
  });

  it('a write failing in flight fails the extraction, and no write is still running when it rejects', async () => {
    // The duplicate comes right behind the original, so both are in flight together.
    const entries: RawEntry[] = [...files(20, 5000), { path: 'f19', data: 'again' }, ...files(200, 5000).map((e, i) => ({ ...e, path: `g${i}` }))];
    const target = join(freshDir(), 't');
    const err = await rejectedWith(extractTarSafe(Readable.from([tarOf(entries)]), target, { label: 'files of set S' }));
    expect(err.code).toBe('ARCHIVE_UNSAFE_ENTRY');
    expect(err.message).toContain('"f19"');
    const after = fs.readdirSync(target).sort();
    await new Promise((r) => setTimeout(r, 100));
    expect(fs.readdirSync(target).sort()).toEqual(after);
    expect(after.filter((n) => n.startsWith('g')).length).toBeLessThan(20);
    // Every other file that exists is complete (which of the two f19 writes lost is a race).
    for (const n of after.filter((x) => x !== 'f19')) expect(fs.statSync(join(target, n)).size).toBe(5000);
  });

  it('copes with a source that delivers tiny chunks', async () => {
    const big = randomBytes(1024 * 1024 + 777); // the streamed path
    const small = randomBytes(300_000); // the buffered path
    const bytes = tarOf([{ path: 'big', data: big }, { path: 'small', data: small }]);
    const chunks = Array.from({ length: Math.ceil(bytes.length / 100) }, (_, i) => bytes.subarray(i * 100, (i + 1) * 100));
    const target = join(freshDir(), 't');
    await expect(extractTarSafe(Readable.from(chunks), target, { label: 'x' })).resolves.toEqual({ entries: 2, bytes: big.length + small.length });
    expect(fs.readFileSync(join(target, 'big')).equals(big)).toBe(true);
    expect(fs.readFileSync(join(target, 'small')).equals(small)).toBe(true);
  });

  it('rejects a stream truncated inside a file', async () => {
    const full = tarOf([{ path: 'f', data: randomBytes(5000) }]);
    const e = await rejectedWith(extract(full.subarray(0, 512 + 2000)));
    expect(e.code).toBe('ARCHIVE_CORRUPT');
  });

  it('rejects a stream truncated on an entry boundary (no end-of-archive marker)', async () => {
    const e = await rejectedWith(extract(tarOf(files(2, 10), { eof: false })));
    expect(e.code).toBe('ARCHIVE_CORRUPT');
    expect(e.message).toMatch(/end-of-archive/);
  });

  it('rejects garbage, a bad header checksum and an empty stream', async () => {
    expect((await rejectedWith(extract(randomBytes(10_000)))).code).toBe('ARCHIVE_CORRUPT');
    const bad = tarOf(files(1, 10));
    bad.writeUInt8(bad.readUInt8(10) ^ 1, 10); // a name byte: the header checksum no longer matches
    expect((await rejectedWith(extract(bad))).code).toBe('ARCHIVE_CORRUPT');
    expect((await rejectedWith(extract(Buffer.alloc(0)))).code).toBe('ARCHIVE_CORRUPT');
  });

  it('fails a feeding pipeline with the same error, not "premature close"', async () => {
    // The bad entry comes first, so the feeding cannot finish: 32 MB cannot all sit in buffers.
    const bytes = tarOf([{ path: 'ok', data: 'x' }, { path: '../evil', data: 'x' }, { path: 'big', data: randomBytes(32 * 1024 * 1024) }]);
    const chunks = Array.from({ length: Math.ceil(bytes.length / 65536) }, (_, i) => bytes.subarray(i * 65536, (i + 1) * 65536));
    const unz = zstdDecompress();
    const feeding = pipeline(Readable.from(chunks), zstdCompress(), unz);
    const extracting = extract(unz);
    const [fed, got] = await Promise.allSettled([feeding, extracting]);
    expect(got.status === 'rejected' && (got.reason as TandemError).code).toBe('ARCHIVE_UNSAFE_ENTRY');
    expect(fed.status === 'rejected' && fed.reason).toBe(got.status === 'rejected' && got.reason);
  });

  it('a source failing inside a file rejects promptly and leaves no file open', async () => {
    const openUnder = (dir: string) =>
      fs.readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir);
        } catch {
          return false;
        }
      });
    for (const size of [100_000, 3 * 1024 * 1024]) {
      // small (buffered) and large (streamed) file paths
      const target = join(freshDir(), 't');
      const bytes = tarOf([{ path: 'f', data: randomBytes(size) }]);
      const src = new Readable({ read() {} });
      src.push(bytes.subarray(0, 512 + (size >> 1)));
      setTimeout(() => src.destroy(new Error('network reset')), 20);
      const e = await extractTarSafe(src, target, { label: 'x' }).catch((err: unknown) => err);
      expect((e as Error).message).toBe('network reset');
      expect(openUnder(target)).toEqual([]);
    }
  });

  it("reports the source's own error (e.g. a corrupt zstd stream)", async () => {
    const unz = zstdDecompress();
    Readable.from([randomBytes(50_000)]).pipe(unz);
    const e = await rejectedWith(extract(unz));
    expect(e.code).toBe('CHILD_FAILED');
    expect(e.message).toContain('zstd decompression');
  });
});
