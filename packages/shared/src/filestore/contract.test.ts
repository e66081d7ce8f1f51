// One file on purpose (over 400 lines): the contract runs the same cases against both stores (a
// directory and a real S3 server process); the store-specific cases share its fixtures.
import { execFileSync } from 'node:child_process';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { S3RVER_CREDENTIALS, type S3rverHandle, s3rverFilestoreUrl, startS3rver } from '../../../../test/support/s3rver.js';
import { TandemError, isTandemError } from '../errors.js';
import { rejectedWith, rejection } from '../testing/helpers.js';
import { FILESTORE_CODE_PREFIX, isFilestoreError } from './common.js';
import { fsError } from './dir-errors.js';
import { DirFilestore } from './dir-filestore.js';
import type { Filestore } from './filestore.js';
import { describeFilestoreLocation, openFilestore, parseFilestoreUrl } from './open.js';
import { readCapped } from './small-doc.js';

const MiB = 1024 * 1024;

/** A deterministic pseudo-random stream of `size` bytes (AES-CTR keystream), with its SHA-256. */
function generated(size: number, seed = 'seed', chunk = 256 * 1024): { stream: Readable; sha256: Promise<string> } {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const hash = createHash('sha256');
  let sent = 0;
  let resolve!: (h: string) => void;
  const sha256 = new Promise<string>((r) => (resolve = r));
  const stream = new Readable({
    read() {
      if (sent >= size) {
        resolve(hash.digest('hex'));
        this.push(null);
        return;
      }
      const buf = cipher.update(Buffer.alloc(Math.min(chunk, size - sent)));
      hash.update(buf);
      sent += buf.length;
      this.push(buf);
    },
  });
  return { stream, sha256 };
}

/** Emits `okBytes` bytes, then fails with `err`. */
function failingAfter(okBytes: number, err: Error): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= okBytes) {
        setImmediate(() => this.destroy(err));
        return;
      }
      const n = Math.min(MiB, okBytes - sent);
      sent += n;
      this.push(randomBytes(n));
    },
  });
}

/** Never ends; reports how much has been read so the test can abort mid-stream. */
function endless(): Readable & { sent: number } {
  const s = new Readable({
    read() {
      setImmediate(() => {
        s.sent += 256 * 1024;
        this.push(Buffer.alloc(256 * 1024, 7));
      });
    },
  }) as Readable & { sent: number };
  s.sent = 0;
  return s;
}

async function sha256Of(stream: Readable): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of stream) h.update(chunk as Buffer);
  return h.digest('hex');
}

const expectKind = (p: Promise<unknown>, kind: TandemError['kind']): Promise<TandemError> => rejectedWith(p, { kind });

async function waitFor(cond: () => boolean): Promise<void> {
  while (!cond()) await sleep(5);
}

interface Backend {
  open(): Promise<Filestore>;
}

/** Stands in for `it` where a backend makes no such guarantee: the test is not registered. */
const notRegistered = (..._args: Parameters<typeof it>): void => undefined;

interface Capabilities {
  /** Of two concurrent conditional writers exactly one wins (false for emulated S3 conditions). */
  atomicConditionalWrites: boolean;
}

/**
 * The contract every Filestore implementation must meet; see filestore.ts. A guarantee a backend
 * does not make is not registered for it at all (rather than skipped), so a skip always means a
 * missing service, which the test run counts as a failure.
 */
function filestoreContract(name: string, backend: () => Backend, caps: Capabilities): void {
  describe(`Filestore contract: ${name}`, () => {
    let fs: Filestore;
    beforeEach(async () => {
      fs = await backend().open();
    });
    afterEach(async () => {
      await fs.close();
    });

    it('streams a 20 MiB body up and down intact (multipart on S3)', async () => {
      const size = 20 * MiB;
      const src = generated(size);
      const put = await fs.put('sets/s1/db.dump.zst.age', src.stream);
      expect(put.size).toBe(size);
      const { body, info } = await fs.get('sets/s1/db.dump.zst.age');
      expect(info.size).toBe(size);
      expect(info.version).toBe(put.version);
      expect(await sha256Of(body)).toBe(await src.sha256);
      expect((await fs.stat('sets/s1/db.dump.zst.age'))?.size).toBe(size);
    });

    it('round-trips small and empty buffers', async () => {
      const data = randomBytes(1000);
      const put = await fs.putBuffer('site/latest.json', data, { contentType: 'application/json' });
      expect(put).toMatchObject({ key: 'site/latest.json', size: 1000 });
      const got = await fs.getBuffer('site/latest.json');
      expect(got.body.equals(data)).toBe(true);
      expect(got.info.version).toBe(put.version);
      expect(await sha256Of((await fs.get('site/latest.json')).body)).toBe(createHash('sha256').update(data).digest('hex'));

      await fs.putBuffer('site/empty', Buffer.alloc(0));
      expect((await fs.getBuffer('site/empty')).body.length).toBe(0);
      expect((await fs.stat('site/empty'))?.size).toBe(0);
    });

    it('reports a missing object as not-found (get) or null (stat)', async () => {
      await expectKind(fs.get('nope/missing'), 'not-found');
      await expectKind(fs.getBuffer('nope/missing'), 'not-found');
      await expectKind(fs.getIfChanged('nope/missing', undefined), 'not-found');
      expect(await fs.stat('nope/missing')).toBeNull();
    });

    it('lists by prefix in key order, excluding other prefixes', async () => {
      const keys = ['a/2', 'a/10', 'a/1', 'a/b/c', 'ab', 'b/1', 'a-x'];
      for (const k of keys) await fs.putBuffer(k, Buffer.from(k));
      const listed = await fs.list('a/');
      expect(listed.map((o) => o.key)).toEqual(['a/1', 'a/10', 'a/2', 'a/b/c']);
      expect((await fs.list('a')).map((o) => o.key)).toEqual(['a-x', 'a/1', 'a/10', 'a/2', 'a/b/c', 'ab']);
      expect((await fs.list('')).map((o) => o.key)).toEqual(['a-x', 'a/1', 'a/10', 'a/2', 'a/b/c', 'ab', 'b/1']);
      expect(await fs.list('zzz/')).toEqual([]);
      expect(await fs.list('a/1/')).toEqual([]);
      const one = listed.find((o) => o.key === 'a/b/c')!;
      const st = await fs.stat('a/b/c');
      expect(one).toMatchObject({ size: 5, version: st!.version });
      expect(one.modified).toBeInstanceOf(Date);
    });

    it('deletes idempotently', async () => {
      await fs.putBuffer('d/x', Buffer.from('x'));
      await fs.delete('d/x');
      await expectKind(fs.get('d/x'), 'not-found');
      expect(await fs.list('d/')).toEqual([]);
      await fs.delete('d/x');
      await fs.delete('never/was/here');
      // The emptied "directory" must not get in the way of writing there again.
      await fs.putBuffer('d/y', Buffer.from('y'));
      expect((await fs.getBuffer('d/y')).body.toString()).toBe('y');
    });

    it('changes the version when an object is replaced', async () => {
      const v1 = await fs.putBuffer('v/obj', Buffer.from('one'));
      const v2 = await fs.putBuffer('v/obj', Buffer.from('two'));
      expect(v2.version).not.toBe(v1.version);
      const v3 = await fs.put('v/obj', Readable.from([Buffer.from('three')]));
      expect(v3.version).not.toBe(v2.version);
      expect((await fs.stat('v/obj'))?.version).toBe(v3.version);
      expect((await fs.getBuffer('v/obj')).body.toString()).toBe('three');
    });

    it('getIfChanged skips the body while unchanged and returns it after a change', async () => {
      const first = await fs.putBuffer('p/latest.json', Buffer.from('{"n":1}'));
      const initial = await fs.getIfChanged('p/latest.json', undefined);
      expect(initial.changed && initial.body.toString()).toBe('{"n":1}');
      expect(await fs.getIfChanged('p/latest.json', first.version)).toEqual({ changed: false });
      const second = await fs.putBuffer('p/latest.json', Buffer.from('{"n":2}'));
      const after = await fs.getIfChanged('p/latest.json', first.version);
      expect(after.changed).toBe(true);
      if (!after.changed) return;
      expect(after.body.toString()).toBe('{"n":2}');
      expect(after.info.version).toBe(second.version);
      expect(await fs.getIfChanged('p/latest.json', after.info.version)).toEqual({ changed: false });
    });

    it('refuses to read a small document past its cap, from the size before reading', async () => {
      const big = Buffer.alloc(3 * MiB, 0x20);
      const put = await fs.putBuffer('site/latest.json', big);
      const refused = await expectKind(fs.getBuffer('site/latest.json'), 'integrity');
      expect(refused.code).toBe('FILESTORE_DOC_TOO_LARGE');
      expect(refused.message).toMatch(/latest\.json is 3145728 bytes, more than the 1048576 bytes a tandem document may have/);
      expect((await expectKind(fs.getIfChanged('site/latest.json', undefined), 'integrity')).code).toBe('FILESTORE_DOC_TOO_LARGE');
      expect((await expectKind(fs.getIfChanged('site/latest.json', 'some-older-version'), 'integrity')).code).toBe('FILESTORE_DOC_TOO_LARGE');
      expect(await fs.getIfChanged('site/latest.json', put.version)).toEqual({ changed: false });
      expect((await fs.getBuffer('site/latest.json', { maxBytes: 4 * MiB })).body.equals(big)).toBe(true);
      expect((await fs.getBuffer('site/latest.json', { maxBytes: Infinity })).body.equals(big)).toBe(true); // no cap at all
      await fs.putBuffer('site/exact', Buffer.alloc(1000, 1));
      expect((await fs.getBuffer('site/exact', { maxBytes: 1000 })).body.length).toBe(1000);
      await expectKind(fs.getBuffer('site/exact', { maxBytes: 999 }), 'integrity');
    });

    it('writeConditional ifAbsent creates once, then loses with precondition', async () => {
      const created = await fs.writeConditional('e/epoch.json', Buffer.from('1'), { ifAbsent: true });
      expect(created.size).toBe(1);
      await expectKind(fs.writeConditional('e/epoch.json', Buffer.from('2'), { ifAbsent: true }), 'precondition');
      expect((await fs.getBuffer('e/epoch.json')).body.toString()).toBe('1');
      expect((await fs.stat('e/epoch.json'))?.version).toBe(created.version);
      expect((await fs.list('e/')).map((o) => o.key)).toEqual(['e/epoch.json']); // no locks or temporaries
    });

    it('writeConditional ifVersion replaces only the expected version', async () => {
      const v1 = await fs.writeConditional('e/epoch.json', Buffer.from('1'), { ifAbsent: true });
      const v2 = await fs.writeConditional('e/epoch.json', Buffer.from('2'), { ifVersion: v1.version });
      expect(v2.version).not.toBe(v1.version);
      expect((await fs.stat('e/epoch.json'))?.version).toBe(v2.version);
      await expectKind(fs.writeConditional('e/epoch.json', Buffer.from('3'), { ifVersion: v1.version }), 'precondition');
      expect((await fs.getBuffer('e/epoch.json')).body.toString()).toBe('2');
      await expectKind(fs.writeConditional('e/none.json', Buffer.from('x'), { ifVersion: v1.version }), 'precondition');
      await expectKind(fs.get('e/none.json'), 'not-found');
    });

    (caps.atomicConditionalWrites ? it : notRegistered)('lets exactly one of several concurrent conditional writers win', async () => {
      const writers = Array.from({ length: 6 }, (_, i) =>
        fs.writeConditional('race/epoch.json', Buffer.from(`writer-${i}`), { ifAbsent: true }),
      );
      const results = await Promise.allSettled(writers);
      const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
      expect(won).toHaveLength(1);
      for (const r of results) if (r.status === 'rejected') expect(isTandemError(r.reason, 'precondition'), String(r.reason)).toBe(true);
      const current = await fs.getBuffer('race/epoch.json');
      expect(current.body.toString()).toBe(`writer-${won[0]}`);

      const base = current.info.version;
      const raisers = Array.from({ length: 6 }, (_, i) =>
        fs.writeConditional('race/epoch.json', Buffer.from(`raise-${i}`), { ifVersion: base }),
      );
      const raised = await Promise.allSettled(raisers);
      expect(raised.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    });

    it('leaves nothing visible when the source stream fails half-way', async () => {
      const boom = new Error('pg_dump died');
      const err = await rejection(fs.put('f/new', failingAfter(10 * MiB, boom)));
      expect(err).toBe(boom); // the caller's own error, unchanged
      await expectKind(fs.get('f/new'), 'not-found');
      expect(await fs.list('f/')).toEqual([]);

      // A failed replacement keeps the old object whole.
      await fs.putBuffer('f/old', Buffer.from('old'));
      await rejection(fs.put('f/old', failingAfter(3 * MiB, new Error('again'))));
      expect((await fs.getBuffer('f/old')).body.toString()).toBe('old');
      expect((await fs.list('f/')).map((o) => o.key)).toEqual(['f/old']);
    });

    it('leaves nothing visible when aborted mid-stream or before start', async () => {
      const ac = new AbortController();
      const src = endless();
      const pending = fs.put('ab/big', src, { signal: ac.signal });
      await waitFor(() => src.sent > 12 * MiB);
      ac.abort();
      const err = await rejection(pending);
      expect((err as Error).name).toBe('AbortError');
      expect(src.destroyed).toBe(true);
      await expectKind(fs.get('ab/big'), 'not-found');

      const aborted = AbortSignal.abort();
      expect(((await rejection(fs.putBuffer('ab/small', Buffer.from('x'), { signal: aborted }))) as Error).name).toBe('AbortError');
      expect(((await rejection(fs.writeConditional('ab/c', Buffer.from('x'), { ifAbsent: true }, { signal: aborted }))) as Error).name).toBe(
        'AbortError',
      );
      await expectKind(fs.get('ab/small'), 'not-found');
      expect(await fs.list('ab/')).toEqual([]);
    });

    it('aborts a get body stream through the signal', async () => {
      await fs.put('g/big', generated(4 * MiB).stream);
      const ac = new AbortController();
      const { body } = await fs.get('g/big', { signal: ac.signal });
      ac.abort();
      expect(((await rejection(sha256Of(body))) as Error).name).toBe('AbortError');
    });

    it('an abort before the body is piped anywhere is reported by the later pipeline, not thrown at the process', async () => {
      await fs.put('g/late', generated(2 * MiB).stream);
      const ac = new AbortController();
      const { body } = await fs.get('g/late', { signal: ac.signal });
      const uncaught: unknown[] = [];
      const onUncaught = (err: unknown) => uncaught.push(err);
      process.prependListener('uncaughtException', onUncaught);
      try {
        ac.abort(new Error('stopped'));
        await new Promise((r) => setTimeout(r, 50)); // the caller awaits something else first
        expect(((await rejection(sha256Of(body))) as Error).message).toBe('stopped');
        expect(uncaught).toEqual([]);
      } finally {
        process.off('uncaughtException', onUncaught);
      }
      const aborted = AbortSignal.abort();
      expect(((await rejection(fs.get('g/late', { signal: aborted }))) as Error).name).toBe('AbortError');
    });

    it('rejects unsafe keys as permanent errors naming the key', async () => {
      for (const key of ['/abs', 'a/../b', '..', 'a//b', 'a/', 'a\\b', '', 'a/./b', 'x.tmp-1']) {
        const err = await expectKind(fs.putBuffer(key, Buffer.from('x')), 'permanent');
        expect(err.message).toContain(JSON.stringify(key));
        await expectKind(fs.get(key), 'permanent');
      }
      await expectKind(fs.list('../'), 'permanent');
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Directory store

let dirRoot: string;
beforeAll(async () => {
  dirRoot = await mkdtemp(path.join(tmpdir(), 'tandem-dirstore-'));
});
afterAll(async () => {
  await rm(dirRoot, { recursive: true, force: true });
});
let dirCounter = 0;
/** A new filestore directory: made here (0700), as `init --filestore` makes one; the store never makes its own. */
const freshDir = () => {
  const dir = path.join(dirRoot, `store-${++dirCounter}`);
  mkdirSync(dir, { mode: 0o700 });
  return dir;
};

filestoreContract('directory', () => ({ open: async () => openFilestore(`file://${freshDir()}`) }), {
  atomicConditionalWrites: true,
});

describe('small documents: the counting limit', () => {
  it('stops a body that passes the cap while it is read, whatever length was declared, and stops the source', async () => {
    const src = endless();
    const err = await rejection(readCapped(src, MiB, 'site/latest.json'));
    expect(isTandemError(err, 'integrity') && err.code).toBe('FILESTORE_DOC_TOO_LARGE');
    expect((err as Error).message).toContain('site/latest.json is more than 1048576 bytes');
    expect(src.destroyed).toBe(true);
    expect(src.sent).toBeLessThanOrEqual(MiB + 512 * 1024);
    expect((await readCapped(Readable.from([Buffer.alloc(10), Buffer.alloc(20)]), 30, 'x')).length).toBe(30);
  });

  it('a directory store counts what it reads: a file whose size says 0 but whose read goes on is cut off at the cap', async () => {
    const root = freshDir();
    const fs = new DirFilestore(root);
    await fs.putBuffer('s/x', Buffer.from('x'));
    // /proc files stat as 0 bytes and read as many: what a file that grows after the stat looks like.
    await symlink('/proc/self/maps', path.join(root, 's', 'latest.json'));
    expect((await stat('/proc/self/maps')).size).toBe(0);
    const err = await rejection(fs.getBuffer('s/latest.json', { maxBytes: 100 }));
    expect(isTandemError(err, 'integrity') && err.code, String(err)).toBe('FILESTORE_DOC_TOO_LARGE');
    expect((err as Error).message).toMatch(/latest\.json is more than 100 bytes/);
    expect((await fs.getBuffer('s/latest.json', { maxBytes: MiB })).body.length).toBeGreaterThan(100);
  });
});

describe('DirFilestore specifics', () => {
  async function allFiles(dir: string): Promise<string[]> {
    return (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
  }

  it('writes files 0600 in directories 0700 and leaves no temporaries after failures', async () => {
    const root = freshDir();
    const fs = new DirFilestore(root);
    await fs.putBuffer('s/sets/1/manifest.json', Buffer.from('{}'));
    expect((await stat(path.join(root, 's/sets/1/manifest.json'))).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(root, 's/sets/1'))).mode & 0o777).toBe(0o700);
    expect((await stat(root)).mode & 0o777).toBe(0o700);
    await rejection(fs.put('s/sets/1/db', failingAfter(2 * MiB, new Error('x'))));
    const ac = new AbortController();
    const src = endless();
    const pending = fs.put('s/sets/1/files', src, { signal: ac.signal });
    await waitFor(() => src.sent > MiB);
    ac.abort();
    await rejection(pending);
    await fs.writeConditional('s/epoch.json', Buffer.from('1'), { ifAbsent: true });
    await rejection(fs.writeConditional('s/epoch.json', Buffer.from('2'), { ifAbsent: true }));
    await rejection(fs.writeConditional('s/epoch.json', Buffer.from('3'), { ifVersion: 'stale' }));
    expect((await allFiles(root)).sort()).toEqual(['epoch.json', 'manifest.json']);
  });

  it('refuses a FIFO where an object should be at once, as not a file, on every read (no thread blocked until someone writes to it)', async () => {
    const root = freshDir();
    const fs = new DirFilestore(root);
    await mkdir(path.join(root, 's/objects/ab'), { recursive: true });
    execFileSync('mkfifo', [path.join(root, 's/objects/ab/x')]);
    const t0 = performance.now();
    for (const read of [() => fs.get('s/objects/ab/x'), () => fs.getBuffer('s/objects/ab/x'), () => fs.getIfChanged('s/objects/ab/x', undefined)]) {
      const err = await rejectedWith(read(), { code: 'FILESTORE_NOT_FOUND' });
      expect(err.message).toContain('is not a file');
    }
    expect(performance.now() - t0).toBeLessThan(5_000);
  });

  it('changes the version even when a replacement has the same content', async () => {
    const fs = new DirFilestore(freshDir());
    const versions = new Set<string>();
    for (let i = 0; i < 20; i++) versions.add((await fs.putBuffer('k', Buffer.from('same'))).version);
    expect(versions.size).toBe(20);
  });

  it('ignores in-flight temporaries and lock files when listing', async () => {
    const root = freshDir();
    const fs = new DirFilestore(root);
    await fs.putBuffer('s/a', Buffer.from('a'));
    await writeFile(path.join(root, 's/b.tmp-123abc'), 'partial');
    await writeFile(path.join(root, 's/a.tmp-lock'), '1');
    expect((await fs.list('s/')).map((o) => o.key)).toEqual(['s/a']);
  });

  it('waits for a held conditional-write lock and takes over a stale one', async () => {
    const root = freshDir();
    const fs = new DirFilestore(root, { lockStaleMs: 2_000, lockWaitMs: 300 });
    const v1 = await fs.writeConditional('e/epoch.json', Buffer.from('1'), { ifAbsent: true });
    const lock = path.join(root, 'e/epoch.json.tmp-lock');
    await writeFile(lock, 'held by a live writer');
    const err = await expectKind(fs.writeConditional('e/epoch.json', Buffer.from('2'), { ifVersion: v1.version }), 'transient');
    expect(err.message).toContain(lock);
    const old = new Date(Date.now() - 10_000);
    await utimes(lock, old, old); // now it looks like a crashed writer's
    await fs.writeConditional('e/epoch.json', Buffer.from('2'), { ifVersion: v1.version });
    expect((await fs.getBuffer('e/epoch.json')).body.toString()).toBe('2');
    await expect(stat(lock)).rejects.toThrow(/ENOENT/);
  });

  it('classifies errors under an unusable root as permanent, naming the path', async () => {
    // Tests run as root, so a chmod 0500 directory would still be writable; a root path that
    // runs through a regular file fails the same way for every user (ENOTDIR).
    const file = path.join(freshDir(), 'plain-file');
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, 'not a directory');
    const fs = new DirFilestore(path.join(file, 'store'));
    const put = await expectKind(fs.putBuffer('x/y', Buffer.from('1')), 'permanent');
    expect(put.message).toContain(path.join(file, 'store', 'x', 'y'));
    expect(put.message).toMatch(/not a directory/);
    expect(put.code).toBe('FILESTORE_ENOTDIR');
    await expectKind(fs.put('x/y', Readable.from([Buffer.from('1')])), 'permanent');
    await expectKind(fs.get('x/y'), 'permanent');
    await expectKind(fs.list(''), 'permanent');
    await expectKind(fs.writeConditional('x/y', Buffer.from('1'), { ifAbsent: true }), 'permanent');
  });

  it('classifies permission errors as permanent', async () => {
    const root = freshDir();
    await mkdir(root, { recursive: true });
    await chmod(root, 0o500);
    if (process.getuid?.() !== 0) {
      const err = await expectKind(new DirFilestore(root).putBuffer('x', Buffer.from('1')), 'permanent');
      expect(err.message).toMatch(/permission denied/);
      return;
    }
    // Root ignores directory permissions: get the real EACCES from a child running as nobody.
    const { spawnSync } = await import('node:child_process');
    const r = spawnSync(
      process.execPath,
      ['-e', `require('fs').promises.writeFile(${JSON.stringify(path.join(root, 'x'))}, '1').catch((e) => { process.stdout.write(JSON.stringify({ code: e.code, message: e.message })); })`],
      { uid: 65534, gid: 65534, encoding: 'utf8' },
    );
    const real = Object.assign(new Error(JSON.parse(r.stdout).message), JSON.parse(r.stdout));
    expect(real.code).toBe('EACCES');
    const err = fsError(real, 'write', path.join(root, 'x'));
    expect(isTandemError(err, 'permanent')).toBe(true);
    expect((err as TandemError).message).toMatch(/permission denied/);
    expect((err as TandemError).hint).toMatch(/writable by the agent user/);
  });

});

// ---------------------------------------------------------------------------------------------
// S3 via a real s3rver process over HTTP

let s3: S3rverHandle;
beforeAll(async () => {
  s3 = await startS3rver({ buckets: ['tandem'] });
});
afterAll(async () => {
  await s3?.destroy();
});
const s3Store = (extra: Parameters<typeof s3rverFilestoreUrl>[1] = {}, s3opts = {}) =>
  openFilestore(s3rverFilestoreUrl(s3, { prefix: 'unique', ...extra }), { s3: { credentials: S3RVER_CREDENTIALS, ...s3opts } });

// s3rver ignores If-None-Match/If-Match on PUT; the emulation narrows the race but cannot close it.
filestoreContract('s3 (s3rver, emulated conditional writes)', () => ({ open: async () => s3Store() }), {
  atomicConditionalWrites: false,
});

describe('S3Filestore specifics', () => {
  it('s3rver ignores conditional PUT headers, so native mode must not be used against it', async () => {
    // This records a fact about the test server. If it starts failing, s3rver honours the headers
    // and the emulation is no longer needed for it.
    const fs = s3Store({ conditionalWrites: 'native' });
    try {
      const first = await fs.writeConditional('e/epoch.json', Buffer.from('1'), { ifAbsent: true });
      await fs.writeConditional('e/epoch.json', Buffer.from('2'), { ifAbsent: true });
      await fs.writeConditional('e/epoch.json', Buffer.from('3'), { ifVersion: first.version });
      expect((await fs.getBuffer('e/epoch.json')).body.toString()).toBe('3');
    } finally {
      await fs.close();
    }
  });

  it('does not put credentials in the description', async () => {
    const fs = s3Store({}, { credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'very-secret-key' } });
    expect(fs.description).toMatch(/^s3:\/\/tandem\/t\d+-\d+\/\?endpoint=http:\/\/127\.0\.0\.1:\d+&region=us-east-1&checksums=when-required&conditionalWrites=emulated$/);
    expect(parseFilestoreUrl(fs.description)).toEqual(parseFilestoreUrl(s3rverFilestoreUrl(s3, { prefix: fs.description.split('/')[3] })));
    expect(fs.description).not.toMatch(/AKIDEXAMPLE|very-secret-key/);
    await fs.close();
  });

  it('reports an unreachable server as transient, and works again after a restart', async () => {
    const fs = s3Store({}, { maxAttempts: 2, connectTimeoutMs: 2_000 });
    try {
      await fs.putBuffer('r/x', Buffer.from('kept'));
      await s3.stop();
      const started = Date.now();
      const err = await expectKind(fs.getBuffer('r/x'), 'transient');
      expect(err.message).toContain('s3://tandem/');
      expect((err.cause as { $metadata?: { attempts?: number } }).$metadata?.attempts).toBe(2); // retried, bounded
      await expectKind(fs.stat('r/x'), 'transient');
      await expectKind(fs.putBuffer('r/y', Buffer.from('y')), 'transient');
      await expectKind(fs.put('r/z', Readable.from([Buffer.from('z')])), 'transient');
      await expectKind(fs.list('r/'), 'transient');
      expect(Date.now() - started).toBeLessThan(15_000);
      await s3.restart();
      expect((await fs.getBuffer('r/x')).body.toString()).toBe('kept');
    } finally {
      await fs.close();
    }
  });

  it('fails a get whose body is cut short, as transient', async () => {
    // A server that promises 1000 bytes and hangs up after 400.
    const server = createServer((sock) => {
      sock.once('data', () => {
        sock.write(
          'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: "abc"\r\nLast-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n' +
            'Content-Type: application/octet-stream\r\n\r\n',
        );
        sock.end(Buffer.alloc(400, 1));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    const fs = openFilestore(s3rverFilestoreUrl(`http://127.0.0.1:${port}`), { s3: { credentials: S3RVER_CREDENTIALS, maxAttempts: 1 } });
    try {
      const { body, info } = await fs.get('x');
      expect(info.size).toBe(1000);
      const err = await rejection(sha256Of(body));
      expect(isTandemError(err, 'transient'), String(err)).toBe(true);
      expect((err as Error).message).toMatch(/400 of 1000 bytes/);
      await expectKind(fs.getBuffer('x'), 'transient');
    } finally {
      await fs.close();
      server.close();
    }
  });

  it('honours a live emulation lock object and takes over an expired one', async () => {
    const url = s3rverFilestoreUrl(s3, { prefix: 'unique' });
    const { prefix } = parseFilestoreUrl(url) as { prefix: string };
    const fs = openFilestore(url, { s3: { credentials: S3RVER_CREDENTIALS, lockWaitMs: 400 } });
    // Keys may not contain ".tmp-", so the rival's lock goes in through the SDK directly.
    const raw = new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: S3RVER_CREDENTIALS,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    const lockKey = `${prefix}e/epoch.json.tmp-lock`;
    const rivalLock = (expires: number) =>
      raw.send(new PutObjectCommand({ Bucket: 'tandem', Key: lockKey, Body: JSON.stringify({ token: 'rival', expires }) }));
    try {
      const v1 = await fs.writeConditional('e/epoch.json', Buffer.from('1'), { ifAbsent: true });
      await rivalLock(Date.now() + 60_000);
      const err = await expectKind(fs.writeConditional('e/epoch.json', Buffer.from('2'), { ifVersion: v1.version }), 'transient');
      expect(err.code).toBe('FILESTORE_LOCKED');
      expect((await fs.getBuffer('e/epoch.json')).body.toString()).toBe('1');
      expect((await fs.list('e/')).map((o) => o.key)).toEqual(['e/epoch.json']); // the lock is hidden

      await rivalLock(Date.now() - 1); // the rival crashed long ago
      await fs.writeConditional('e/epoch.json', Buffer.from('2'), { ifVersion: v1.version });
      expect((await fs.getBuffer('e/epoch.json')).body.toString()).toBe('2');
      await expect(raw.send(new HeadObjectCommand({ Bucket: 'tandem', Key: lockKey }))).rejects.toMatchObject({ name: 'NotFound' });
    } finally {
      raw.destroy();
      await fs.close();
    }
  });
});

describe('isFilestoreError', () => {
  it('is an error the filestore raised, whatever its kind, also wrapped; nothing else of the same kinds', () => {
    const notFound = new TandemError('not-found', 'FILESTORE_NOT_FOUND', 'x does not exist');
    expect(isFilestoreError(notFound)).toBe(true);
    expect(isFilestoreError(new TandemError('integrity', 'FILESTORE_DOC_TOO_LARGE', 'too large'))).toBe(true);
    expect(isFilestoreError(new TandemError('not-found', 'SET_NOT_FOUND', 'set x: missing', { cause: notFound }))).toBe(true);
    expect(isFilestoreError(new TandemError('external', 'PG_DUMP_FAILED', 'pg_dump failed'))).toBe(false);
    expect(isFilestoreError(new TandemError('transient', 'PUSH_UNREACHABLE', 'cannot reach the primary'))).toBe(false);
    expect(isFilestoreError(new DOMException('This operation was aborted', 'AbortError'))).toBe(false);
    expect(isFilestoreError(undefined)).toBe(false);
  });

  it('holds because every error made in the filestore has a FILESTORE_ code, and none made elsewhere has', async () => {
    const packages = fileURLToPath(new URL('../../../', import.meta.url));
    const sources: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory() && e.name !== 'node_modules' && e.name !== 'dist') await walk(p);
        else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) sources.push(p);
      }
    };
    for (const pkg of await readdir(packages)) await walk(path.join(packages, pkg, 'src')).catch(() => {});
    const here = path.dirname(fileURLToPath(import.meta.url));
    const wrong: string[] = [];
    let inFilestore = 0;
    for (const file of sources) {
      const text = await readFile(file, 'utf8');
      const ours = path.dirname(file) === here;
      for (const m of text.matchAll(/new TandemError\(\s*'[a-z-]+',\s*['`]([^'`]*)['`]/g)) {
        if (ours) inFilestore++;
        if (m[1]!.startsWith(FILESTORE_CODE_PREFIX) !== ours) wrong.push(`${path.relative(packages, file)}: ${m[1]}`);
      }
    }
    expect(inFilestore).toBeGreaterThan(10);
    expect(wrong).toEqual([]);
  });
});

describe('parseFilestoreUrl', () => {
  it('parses file and s3 URLs', () => {
    expect(parseFilestoreUrl('file:///var/backups/tandem/')).toEqual({ scheme: 'file', root: '/var/backups/tandem' });
    expect(parseFilestoreUrl('file:///srv/a%20b')).toEqual({ scheme: 'file', root: '/srv/a b' });
    expect(parseFilestoreUrl('s3://my-bucket/backups/site?region=eu-west-1')).toEqual({
      scheme: 's3',
      bucket: 'my-bucket',
      prefix: 'backups/site/',
      endpoint: undefined,
      region: 'eu-west-1',
      forcePathStyle: false,
      checksums: 'when-supported',
      conditionalWrites: 'native',
    });
    expect(
      parseFilestoreUrl('s3://b12/?endpoint=http://127.0.0.1:9000&checksums=when-required&conditionalWrites=emulated'),
    ).toMatchObject({ bucket: 'b12', prefix: '', endpoint: 'http://127.0.0.1:9000', forcePathStyle: true, checksums: 'when-required' });
  });

  it('takes request tuning (attempts, connect and idle timeouts) from the URL, and describes it back', () => {
    const url = 's3://b12/p/?endpoint=http://127.0.0.1:9000&maxAttempts=3&connectTimeoutMs=500&idleTimeoutMs=1500';
    const loc = parseFilestoreUrl(url);
    expect(loc).toMatchObject({ maxAttempts: 3, connectTimeoutMs: 500, idleTimeoutMs: 1500 });
    expect(parseFilestoreUrl(describeFilestoreLocation(loc))).toEqual(loc);
    expect(parseFilestoreUrl('s3://b12/p/')).not.toHaveProperty('idleTimeoutMs');
  });

  it.each([
    ['s3://bucket/x?idleTimeoutMs=fast', /idleTimeoutMs="fast" is not valid/],
    ['s3://bucket/x?idleTimeoutMs=10', /idleTimeoutMs="10" is not valid/],
    ['s3://bucket/x?maxAttempts=0', /maxAttempts="0" is not valid/],
    ['s3://bucket/x?connectTimeoutMs=1e3', /connectTimeoutMs="1e3" is not valid/],
  ])('rejects bad tuning %s', (url, message) => {
    expect(() => parseFilestoreUrl(url)).toThrow(message);
  });

  it.each([
    ['ftp://host/x', /unsupported scheme "ftp:"/],
    ['relative/dir', /not a URL/],
    ['/abs/dir', /not a URL/],
    ['file:relative/dir', /relative/],
    ['file://relative/dir', /names host "relative"/],
    ['file:///x?mode=1', /no options/],
    ['s3:///prefix', /missing bucket/],
    ['s3://Bad_Bucket!/x', /invalid bucket name/],
    ['s3://bucket/a//b', /invalid prefix segment/],
    ['s3://bucket/a/../b', /invalid prefix segment/],
    ['s3://bucket/x?colour=blue', /unknown option "colour"/],
    ['s3://bucket/x?checksums=sometimes', /checksums="sometimes" is not valid/],
    ['s3://bucket/x?forcePathStyle=yes', /forcePathStyle="yes"/],
    ['s3://bucket/x?endpoint=ftp://h', /not an http\(s\) URL/],
    ['s3://bucket/x?region=us-east-1&region=eu-west-1', /given twice/],
    ['s3://AKID:secret@bucket/x', /credentials do not belong/],
    ['file://[bad/x', /malformed URL/],
    ['file:///srv/a%2Fb', /not a usable path/],
    ['file:///srv/a%00b', /NUL byte/],
  ])('rejects %s as a config error', (url, message) => {
    let err: unknown;
    try {
      parseFilestoreUrl(url);
    } catch (e) {
      err = e;
    }
    expect(isTandemError(err, 'config'), String(err)).toBe(true);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).not.toContain('secret');
  });

  it('names the allowed values for a bad option', () => {
    try {
      parseFilestoreUrl('s3://bucket/x?conditionalWrites=maybe');
      expect.unreachable();
    } catch (err) {
      expect((err as TandemError).hint).toBe('allowed values for conditionalWrites: native, emulated');
    }
  });
});
