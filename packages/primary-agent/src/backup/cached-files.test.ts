import { describe, expect, it } from 'vitest';
import { CachedFiles } from './cached-files.js';

const one = (e: number) => Uint32Array.of(e);

describe('CachedFiles', () => {
  it('says a file is unchanged only with the same size, mtime and inode', () => {
    const c = new CachedFiles();
    c.set('a/b.jpg', 4096, '1796423996676123456', '131', one(7));
    expect(c.unchanged('a/b.jpg', 4096, 1796423996676123456n, 131n)).toBe(7);
    expect(c.unchanged('a/b.jpg', 4096, '1796423996676123456', '131')).toBe(7);
    expect(c.unchanged('a/b.jpg', 4097, 1796423996676123456n, 131n)).toBeUndefined();
    expect(c.unchanged('a/b.jpg', 4096, 1796423996676123457n, 131n)).toBeUndefined();
    expect(c.unchanged('a/b.jpg', 4096, 1796423996676123456n, 132n)).toBeUndefined();
    expect(c.unchanged('a/c.jpg', 4096, 1796423996676123456n, 131n)).toBeUndefined();
  });

  it('keeps 64-bit stamps exactly (past what a double holds), and times before 1970', () => {
    const c = new CachedFiles();
    const ino = 2n ** 63n + 12345n; // XFS and btrfs inode numbers can be this large
    c.set('x', 1, '-1000000001', String(ino), one(1));
    expect(c.unchanged('x', 1, -1000000001n, ino)).toBe(1);
    expect(c.unchanged('x', 1, -1000000001n, ino + 1n)).toBeUndefined();
    expect(c.unchanged('x', 1, -1000000000n, ino)).toBeUndefined();
  });

  it('compares stamps that are not numbers as text (a bucket object, a line without a stamp)', () => {
    const c = new CachedFiles();
    c.set('media/v.mp4', 10, 'etag:"abc"', 's3', one(3));
    c.set('old.txt', 5, '', '', one(4));
    expect(c.unchanged('media/v.mp4', 10, 'etag:"abc"', 's3')).toBe(3);
    expect(c.unchanged('media/v.mp4', 10, 'etag:"abd"', 's3')).toBeUndefined();
    // A line of an older cache without a stamp never matches a file on disk: the file is read again.
    expect(c.unchanged('old.txt', 5, 1n, 2n)).toBeUndefined();
  });

  it('gives every blob of a file of many, none of an empty file; a later line of a path wins', () => {
    const c = new CachedFiles(16);
    c.set('big', 300, '9', '9', Uint32Array.of(1, 2, 3));
    c.set('empty', 0, '9', '8', new Uint32Array(0));
    expect(Array.from(c.unchanged('big', 300, 9n, 9n) as Uint32Array)).toEqual([1, 2, 3]);
    expect(Array.from(c.unchanged('empty', 0, 9n, 8n) as Uint32Array)).toEqual([]);
    c.set('big', 100, '10', '9', one(5));
    expect(c.unchanged('big', 300, 9n, 9n)).toBeUndefined();
    expect(c.unchanged('big', 100, 10n, 9n)).toBe(5);
    c.set('big', 100, 'etag:x', 's3', Uint32Array.of(6, 7));
    expect(c.unchanged('big', 100, 10n, 9n)).toBeUndefined();
    expect(Array.from(c.unchanged('big', 100, 'etag:x', 's3') as Uint32Array)).toEqual([6, 7]);
    expect(c.size).toBe(2);
  });

  it('grows past its first capacity and keeps what it holds; clear forgets all', () => {
    const c = new CachedFiles(16);
    for (let i = 0; i < 5000; i++) c.set(`d/${i}`, i, String(1_700_000_000_000_000_000n + BigInt(i)), String(i + 1), one(i));
    expect(c.size).toBe(5000);
    for (const i of [0, 15, 16, 17, 4095, 4999]) expect(c.unchanged(`d/${i}`, i, 1_700_000_000_000_000_000n + BigInt(i), BigInt(i + 1))).toBe(i);
    c.clear();
    expect(c.size).toBe(0);
    expect(c.unchanged('d/1', 1, 1_700_000_000_000_000_001n, 2n)).toBeUndefined();
  });
});
