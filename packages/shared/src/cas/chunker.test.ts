import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ChunkerStream, DEFAULT_CHUNK_SIZES, checkChunkSizes, cutPoint, type ChunkSizes } from './chunker.js';

async function chunks(data: Buffer, pieceSize: number, sizes?: ChunkSizes): Promise<Buffer[]> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < data.length; i += pieceSize) pieces.push(data.subarray(i, i + pieceSize));
  const out: Buffer[] = [];
  for await (const c of Readable.from(pieces).pipe(new ChunkerStream(sizes))) out.push(c as Buffer);
  return out;
}

const key = (b: Buffer) => b.toString('base64').slice(0, 40) + b.length;

describe('content-defined chunking', () => {
  const data = randomBytes(24 * 1024 * 1024);

  it('cuts the same whatever the pieces the bytes arrive in, and the chunks are the bytes', async () => {
    const a = await chunks(data, 64 * 1024);
    const b = await chunks(data, 1_000_003);
    expect(a.map(key)).toEqual(b.map(key));
    expect(Buffer.concat(a).equals(data)).toBe(true);
    const sizes = a.map((c) => c.length);
    for (const s of sizes.slice(0, -1)) {
      expect(s).toBeGreaterThanOrEqual(DEFAULT_CHUNK_SIZES.min);
      expect(s).toBeLessThanOrEqual(DEFAULT_CHUNK_SIZES.max);
    }
    const avg = data.length / sizes.length;
    expect(avg).toBeGreaterThan(0.5 * DEFAULT_CHUNK_SIZES.avg);
    expect(avg).toBeLessThan(2 * DEFAULT_CHUNK_SIZES.avg);
  });

  it('an insertion in the middle changes only the chunks around it', async () => {
    const before = await chunks(data, 256 * 1024);
    const edited = Buffer.concat([data.subarray(0, 10_000_000), randomBytes(777), data.subarray(10_000_000)]);
    const after = await chunks(edited, 256 * 1024);
    const had = new Set(before.map(key));
    const fresh = after.filter((c) => !had.has(key(c)));
    expect(fresh.length).toBeLessThanOrEqual(2);
    // Appending leaves every chunk but the last as it was.
    const appended = await chunks(Buffer.concat([data, randomBytes(300_000)]), 256 * 1024);
    expect(appended.filter((c) => !had.has(key(c))).length).toBeLessThanOrEqual(2);
  });

  it('cuts at max when the content never says so, and keeps a short tail whole', async () => {
    const zeros = Buffer.alloc(9 * 1024 * 1024);
    const z = await chunks(zeros, 100_000);
    expect(z.map((c) => c.length)).toEqual([4 * 1024 * 1024, 4 * 1024 * 1024, 1024 * 1024].map((n) => n));
    expect(cutPoint(Buffer.alloc(100), 0, 100)).toBe(100);
    expect((await chunks(Buffer.from('small file'), 3)).map(String)).toEqual(['small file']);
    expect(await chunks(Buffer.alloc(0), 10)).toEqual([]);
  });

  it('refuses sizes that do not make sense', () => {
    expect(() => checkChunkSizes({ min: 1024, avg: 1000, max: 4096 })).toThrow(/power of two/);
    expect(() => checkChunkSizes({ min: 4096, avg: 2048, max: 8192 })).toThrow(/below the average/);
    expect(() => checkChunkSizes({ min: 512, avg: 2048, max: 2048 })).toThrow(/above the average/);
  });
});
