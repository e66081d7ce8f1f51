import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ChunkerStream, DEFAULT_CHUNK_SIZES, SMALL_CHUNK_SIZES, checkChunkSizes, cutPoint, cutPointJs, type ChunkSizes } from './chunker.js';

async function chunks(data: Buffer, pieceSize: number, sizes?: ChunkSizes): Promise<Buffer[]> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < data.length; i += pieceSize) pieces.push(data.subarray(i, i + pieceSize));
  const out: Buffer[] = [];
  for await (const c of Readable.from(pieces).pipe(new ChunkerStream(sizes))) out.push(c as Buffer);
  return out;
}

const key = (b: Buffer) => b.toString('base64').slice(0, 40) + b.length;

/**
 * Random-looking bytes, the same in every run (an AES-256-CTR keystream under a fixed key): how many
 * chunks an insertion changes depends on where the cut points fall around it, and with fresh random
 * data each run the suite failed now and then on the same code.
 */
const seeded = (n: number, seed: string): Buffer =>
  createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16)).update(Buffer.alloc(n));

describe('content-defined chunking', () => {
  const data = seeded(24 * 1024 * 1024, 'tandem-chunker-data');

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
    const edited = Buffer.concat([data.subarray(0, 10_000_000), seeded(777, 'tandem-chunker-insert'), data.subarray(10_000_000)]);
    const after = await chunks(edited, 256 * 1024);
    const had = new Set(before.map(key));
    const fresh = after.filter((c) => !had.has(key(c)));
    expect(fresh.length).toBeLessThanOrEqual(2);
    // Appending leaves every chunk but the last as it was.
    const appended = await chunks(Buffer.concat([data, seeded(300_000, 'tandem-chunker-append')]), 256 * 1024);
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

  /** Every cut of `buf` by `cut`, from its start. */
  const allCuts = (cut: typeof cutPoint, buf: Buffer, sizes: ChunkSizes): number[] => {
    const out: number[] = [];
    for (let s = 0; s < buf.length; ) {
      const l = cut(buf, s, buf.length, sizes);
      out.push(l);
      s += l;
    }
    return out;
  };

  it('cuts where every earlier version cut: chunks stored before are found again', () => {
    // 8 MiB of SHA-256 counter bytes: cut points as the first version of the chunker (JavaScript) made them.
    const v = Buffer.alloc(8 << 20);
    for (let i = 0; i * 32 < v.length; i++) createHash('sha256').update(`tandem-chunker-vector:${i}`).digest().copy(v, i * 32);
    const small = allCuts(cutPoint, v, SMALL_CHUNK_SIZES);
    expect(small.length).toBe(111);
    expect(small.slice(0, 16)).toEqual([87422, 80156, 84971, 116380, 115118, 101212, 82368, 83302, 67411, 71473, 51510, 84137, 109320, 67596, 71442, 74552]);
    expect(small.slice(-4)).toEqual([79793, 83394, 73579, 6869]);
    expect(allCuts(cutPoint, v, DEFAULT_CHUNK_SIZES)).toEqual([941323, 788875, 1094932, 1075252, 1589388, 1094209, 1804629]);
    expect(allCuts(cutPointJs, v, SMALL_CHUNK_SIZES)).toEqual(small);
  });

  it('the WebAssembly loop cuts exactly where the JavaScript one does, across its windows', () => {
    // Sizes whose scans span many of the module's 64 KiB windows, a cut on a window's last byte
    // among them, and sizes smaller than a window; offsets that are not aligned.
    const sizes: ChunkSizes[] = [SMALL_CHUNK_SIZES, DEFAULT_CHUNK_SIZES, { min: 64, avg: 256, max: 1024 }, { min: 1000, avg: 131072, max: 1 << 20 }, { min: 65536, avg: 131072, max: 1 << 21 }];
    const buf = randomBytes(12 << 20);
    for (const z of sizes) {
      expect(allCuts(cutPoint, buf.subarray(3), z), JSON.stringify(z)).toEqual(allCuts(cutPointJs, buf.subarray(3), z));
    }
    // Content that never cuts (zeros after the first bytes) runs every window to max.
    const flat = Buffer.concat([randomBytes(10), Buffer.alloc(5 << 20)]);
    expect(allCuts(cutPoint, flat, DEFAULT_CHUNK_SIZES)).toEqual(allCuts(cutPointJs, flat, DEFAULT_CHUNK_SIZES));
    // A cut on the last byte of a window. The hash's top bits depend only on the last 32 bytes, so
    // the first cut after 64 is also the first after any later min: with min 64 KiB before it, the
    // module's first window ends on it.
    const wide = { min: 64, avg: 1 << 22, max: 1 << 23 };
    let at = 0;
    let first = cutPointJs(buf, at, buf.length, wide);
    while (first < 65536 + 100) {
      at += first;
      first = cutPointJs(buf, at, buf.length, wide);
    }
    const onEdge = { min: first - 65536, avg: 1 << 22, max: 1 << 23 };
    expect(cutPointJs(buf, at, buf.length, onEdge)).toBe(first);
    expect(cutPoint(buf, at, buf.length, onEdge)).toBe(first);
    expect(cutPoint(buf, at, buf.length, { ...onEdge, min: onEdge.min + 1 })).toBe(first);
    expect(cutPoint(buf, at, buf.length, { ...onEdge, min: onEdge.min - 1 })).toBe(first);
  });

  it('refuses sizes that do not make sense', () => {
    expect(() => checkChunkSizes({ min: 1024, avg: 1000, max: 4096 })).toThrow(/power of two/);
    expect(() => checkChunkSizes({ min: 4096, avg: 2048, max: 8192 })).toThrow(/below the average/);
    expect(() => checkChunkSizes({ min: 512, avg: 2048, max: 2048 })).toThrow(/above the average/);
  });
});
