import { randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DIRECT_OPEN, WriteBehind, openNewAsync, probeDirectAsync } from './write-behind.js';

const NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
const isClosed = (fd: number): boolean => {
  try {
    fstatSync(fd);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EBADF';
  }
};

/** Each test's temp dir, removed after it. */
let dir: string;
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('WriteBehind', () => {
  it('writes large files on the thread pool and small ones at once, finishing files in the order begun', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    const w = new WriteBehind(64 << 20);
    const finished: string[] = [];
    const big = [randomBytes(300_000), randomBytes(200_000), randomBytes(100)];
    const a = openSync(join(dir, 'a'), NEW, 0o600);
    const sa = w.begin(a, 500_100, () => finished.push(`a ${fstatSync(a).size}`));
    // Out of order: the file's end first.
    w.write(sa, [big[2]!], 500_000);
    w.write(sa, [big[1]!.subarray(0, 50_000), big[1]!.subarray(50_000)], 300_000);
    w.write(sa, [big[0]!], 0);
    expect(w.inFlight).toBe(500_100);
    w.end(sa);
    const b = openSync(join(dir, 'b'), NEW, 0o600);
    const sb = w.begin(b, 5, () => finished.push(`b ${fstatSync(b).size}`));
    w.write(sb, [Buffer.from('small')], 0);
    // A small file is written at once; it is finished only after the file begun before it.
    expect(readFileSync(join(dir, 'b'), 'utf8')).toBe('small');
    w.end(sb);
    expect(finished).toEqual([]);
    await w.flush();
    expect(finished).toEqual(['a 500100', 'b 5']);
    expect(readFileSync(join(dir, 'a')).equals(Buffer.concat(big))).toBe(true);
    expect(isClosed(a) && isClosed(b)).toBe(true);
    expect(w.inFlight).toBe(0);
  });

  it('keeps the bytes in flight near its bound when the caller waits for room', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    const w = new WriteBehind(512 << 10);
    const fd = openSync(join(dir, 'f'), NEW, 0o600);
    const s = w.begin(fd, 40 * 131_072, () => undefined);
    const blobs = Array.from({ length: 40 }, () => randomBytes(131_072));
    let most = 0;
    let waited = 0;
    for (const [i, blob] of blobs.entries()) {
      w.write(s, [blob], i * blob.length);
      most = Math.max(most, w.inFlight);
      if (w.full) {
        waited++;
        await w.room();
      }
    }
    w.end(s);
    await w.flush();
    expect(waited).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual((512 << 10) + 131_072);
    expect(readFileSync(join(dir, 'f')).equals(Buffer.concat(blobs))).toBe(true);
  });

  it('a write that fails (no space) fails the next call and flush; settle closes every file not finished', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    const w = new WriteBehind();
    const finished: string[] = [];
    const ok = openSync(join(dir, 'ok'), NEW, 0o600);
    const s1 = w.begin(ok, 200_000, () => finished.push('ok'));
    w.write(s1, [randomBytes(200_000)], 0);
    const full = openSync('/dev/full', constants.O_WRONLY);
    const s2 = w.begin(full, 200_000, () => finished.push('full'));
    w.write(s2, [randomBytes(200_000)], 0);
    w.end(s2);
    const later = openSync(join(dir, 'later'), NEW, 0o600);
    await expect(w.flush()).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(() => w.begin(later, 10, () => undefined)).toThrow(/ENOSPC|no space/i);
    expect(finished).toEqual([]);
    await w.settle();
    expect(isClosed(ok) && isClosed(full)).toBe(true);
    closeSync(later);
  });

  it('openNewAsync creates a new file 0600 and refuses one that exists or a symlink', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    const fd = await openNewAsync(join(dir, 'n'));
    expect(fstatSync(fd).mode & 0o777).toBe(0o600);
    closeSync(fd);
    await expect(openNewAsync(join(dir, 'n'))).rejects.toMatchObject({ code: 'EEXIST' });
    writeFileSync(join(dir, 'elsewhere'), 'not to be written through a link');
    symlinkSync(join(dir, 'elsewhere'), join(dir, 'l'));
    await expect(openNewAsync(join(dir, 'l'))).rejects.toMatchObject({ code: 'EEXIST' });
    expect(readFileSync(join(dir, 'elsewhere'), 'utf8')).toBe('not to be written through a link');
  });
});

describe('WriteBehind, direct writes', () => {
  it('writes files of any size from aligned blocks (O_DIRECT) and cuts each to its size', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    const w = new WriteBehind(1 << 20);
    // This machine's temp file system takes direct writes; elsewhere the test says so and stops.
    const why = await w.enableDirect(dir);
    expect(why, `direct writes are not possible in ${dir}`).toBeUndefined();
    expect(w.direct).toBe(true);
    const sizes = [70_000, 262_144, 1_000_003, 4 * 262_144 + 1];
    const datas = sizes.map((n) => randomBytes(n));
    for (const [i, data] of datas.entries()) {
      const fd = await openNewAsync(join(dir, `f${i}`), DIRECT_OPEN);
      const s = w.begin(fd, data.length, () => undefined, { direct: true });
      expect(s.direct).toBe(true);
      // Pieces of odd sizes, as blobs and age pieces come.
      for (let at = 0, k = 0; at < data.length; k++) {
        const n = Math.min(data.length - at, 1 + ((k * 40_009) % 300_000));
        w.write(s, [data.subarray(at, at + Math.floor(n / 2)), data.subarray(at + Math.floor(n / 2), at + n)], at);
        at += n;
        if (w.full) await w.room();
      }
      w.end(s);
    }
    await w.flush();
    for (const [i, data] of datas.entries()) expect(readFileSync(join(dir, `f${i}`)).equals(data), `f${i}`).toBe(true);
    expect(w.directBytes).toBe(sizes.reduce((a, b) => a + b, 0));
    expect(readdirSync(dir).sort()).toEqual(['f0', 'f1', 'f2', 'f3']);
  });

  it('the probe leaves the dir as it found it (an extraction target holds the archive\'s files)', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    writeFileSync(join(dir, '.direct-probe'), 'an entry of the archive');
    writeFileSync(join(dir, 'photo.jpg'), 'another');
    expect(await new WriteBehind().enableDirect(dir)).toBeUndefined();
    expect(readdirSync(dir).sort()).toEqual(['.direct-probe', 'photo.jpg']);
    expect(readFileSync(join(dir, '.direct-probe'), 'utf8')).toBe('an entry of the archive');
  });

  it('copies a file with direct reads and writes, exactly, whatever its size', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    const w = new WriteBehind();
    expect(await w.enableDirect(dir)).toBeUndefined();
    for (const size of [0, 4096, 262_144, 1_000_003, 5 * 262_144 + 17]) {
      const data = randomBytes(size);
      writeFileSync(join(dir, `src-${size}`), data);
      await w.copyDirect(join(dir, `src-${size}`), join(dir, `dst-${size}`), size);
      expect(readFileSync(join(dir, `dst-${size}`)).equals(data), `${size} bytes`).toBe(true);
      expect(fstatSync(openSync(join(dir, `dst-${size}`), 'r')).mode & 0o777).toBe(0o600);
    }
    // A source shorter than said (changed while copied) is an error, not a short copy.
    writeFileSync(join(dir, 'short'), randomBytes(300_000));
    await expect(w.copyDirect(join(dir, 'short'), join(dir, 'short-copy'), 400_000)).rejects.toThrow(/read 300000 of its 400000 bytes/);
    // An existing target is not written over.
    await expect(w.copyDirect(join(dir, 'short'), join(dir, 'dst-4096'), 300_000)).rejects.toMatchObject({ code: 'EEXIST' });
  });

  it('a direct file written out of order is refused', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    const w = new WriteBehind();
    expect(await w.enableDirect(dir)).toBeUndefined();
    const fd = await openNewAsync(join(dir, 'f'), DIRECT_OPEN);
    const s = w.begin(fd, 200_000, () => undefined, { direct: true });
    w.write(s, [randomBytes(100_000)], 0);
    expect(() => w.write(s, [randomBytes(50_000)], 150_000)).toThrow(/direct write at 150000 of a file written up to 100000/);
    await w.settle();
    expect(isClosed(fd)).toBe(true);
  });

  it('TANDEM_DIRECT_WRITES=0 turns direct writes off', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    process.env.TANDEM_DIRECT_WRITES = '0';
    try {
      const w = new WriteBehind();
      expect(await w.enableDirect(dir)).toBe('TANDEM_DIRECT_WRITES=0');
      expect(w.direct).toBe(false);
    } finally {
      delete process.env.TANDEM_DIRECT_WRITES;
    }
    expect(await new WriteBehind().enableDirect(dir)).toBeUndefined();
  });

  it('where a probe file cannot be written directly, files go through the page cache as before', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    const w = new WriteBehind();
    expect(await w.enableDirect(join(dir, 'missing'))).toMatch(/ENOENT/);
    expect(w.direct).toBe(false);
    const fd = openSync(join(dir, 'f'), NEW, 0o600);
    const s = w.begin(fd, 100_001, () => undefined, { direct: true });
    expect(s.direct).toBe(false);
    const data = randomBytes(100_001);
    w.write(s, [data], 0);
    w.end(s);
    await w.flush();
    expect(readFileSync(join(dir, 'f')).equals(data)).toBe(true);
    expect(w.directBytes).toBe(0);
  });
});

describe('probeDirectAsync', () => {
  it('answers as the probe on this thread does, on the thread pool, and leaves the dir as it found it', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-wb-'));
    writeFileSync(join(dir, 'photo.jpg'), 'an entry');
    expect(await probeDirectAsync(dir)).toBe(await new WriteBehind().enableDirect(dir));
    expect(await probeDirectAsync(dir)).toBeUndefined();
    expect(readdirSync(dir)).toEqual(['photo.jpg']);
    // A dir it cannot write in: the reason, not a rejection; and direct writes stay off.
    const why = await probeDirectAsync(join(dir, 'missing'));
    expect(why).toMatch(/ENOENT/);
    const w = new WriteBehind();
    expect(w.enableDirectProbed(why)).toBe(why);
    expect(w.direct).toBe(false);
    expect(w.enableDirectProbed(undefined)).toBeUndefined();
    expect(w.direct).toBe(true);
  });
});
