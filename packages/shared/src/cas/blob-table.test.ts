import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BlobTable } from './blob-table.js';

describe('BlobTable', () => {
  it('finds every id it was given, with its place, through several growths, and no other', () => {
    const t = new BlobTable(16);
    const ids: Buffer[] = [];
    for (let i = 0; i < 5000; i++) {
      const id = randomBytes(32);
      ids.push(id);
      expect(t.add(id, i % 97, i * 3, i + 1)).toBe(i);
    }
    expect(t.size).toBe(5000);
    ids.forEach((id, i) => {
      const e = t.find(id);
      expect(e).toBe(i);
      expect([t.pack(e), t.offset(e), t.length(e)]).toEqual([i % 97, i * 3, i + 1]);
      expect(t.idHex(e)).toBe(id.toString('hex'));
    });
    for (let i = 0; i < 1000; i++) expect(t.find(randomBytes(32))).toBe(-1);
  });

  it('keeps the first place of an id added twice; ids that share their first bytes stay apart', () => {
    const t = new BlobTable();
    const a = Buffer.alloc(32, 1);
    const b = Buffer.alloc(32, 1);
    b[31] = 2;
    expect(t.add(a, 1, 2, 3)).toBe(0);
    expect(t.add(b, 4, 5, 6)).toBe(1);
    expect(t.add(Buffer.from(a), 7, 8, 9)).toBe(0);
    expect(t.size).toBe(2);
    expect([t.pack(t.find(a)), t.pack(t.find(b))]).toEqual([1, 4]);
    expect(() => t.add(Buffer.alloc(31), 0, 0, 0)).toThrow(RangeError);
  });
});
