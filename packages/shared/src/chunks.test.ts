import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { ChunkHasher, ChunkVerifier, MAX_STORED_CHUNKS, chunksOf, chunksProblem, type ChunkMismatch, type StoredChunks } from './chunks.js';
import { ChunkVerifierThread } from './chunk-verifier-thread.js';
import { giveAway } from './given-away.js';

const SIZE = 64 << 10;

type Verifier = typeof ChunkVerifier | typeof ChunkVerifierThread;

/**
 * Feeds `data` in pieces of `step` bytes through a verifier; returns what came out, and the error.
 * With `own`, each piece is a buffer of its own, given away (as the directory filestore's reads
 * are), else a slice of `data` (as an HTTP body gives), which the hashing thread must copy.
 */
async function verify(
  data: Buffer,
  chunks: StoredChunks,
  signed = data.length,
  step = 10_000,
  V: Verifier = ChunkVerifier,
  own = false,
): Promise<{ out: Buffer; err?: Error; mismatch?: ChunkMismatch }> {
  const parts: Buffer[] = [];
  let mismatch: ChunkMismatch | undefined;
  const v = new V(
    chunks,
    signed,
    (m) => {
      mismatch = m;
      return new Error(`chunk ${m.index + 1} of ${m.count}`);
    },
    (pieces, count) => new Error(`short: ${pieces} of ${count}`),
  );
  const pieces = function* () {
    for (let i = 0; i < data.length; i += step) {
      const slice = data.subarray(i, i + step);
      if (!own) yield slice;
      else {
        const b = Buffer.allocUnsafeSlow(slice.length);
        slice.copy(b);
        yield giveAway(b);
      }
    }
  };
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      parts.push(chunk);
      cb();
    },
  });
  try {
    await pipeline(Readable.from(pieces()), v, sink);
    return { out: Buffer.concat(parts) };
  } catch (err) {
    return { out: Buffer.concat(parts), err: err as Error, mismatch };
  }
}

describe('chunk digests', () => {
  it('digests each piece: the last one shorter, an empty object none', () => {
    const data = randomBytes(2 * SIZE + 123);
    const c = chunksOf(data, SIZE)!;
    const digests = Buffer.from(c.sha256, 'base64');
    expect(c.size).toBe(SIZE);
    expect(digests.length).toBe(3 * 32);
    expect(digests.subarray(64).toString('hex')).toBe(createHash('sha256').update(data.subarray(2 * SIZE)).digest('hex'));
    expect(chunksProblem(c, data.length)).toBeUndefined();
    expect(chunksProblem(c, data.length + SIZE)).toMatch(/has 3 chunk digests for .* \(4 expected\)/);
    expect(chunksOf(Buffer.alloc(0), SIZE)).toEqual({ size: SIZE, sha256: '' });
  });

  it('gives none for an object with more than the listed maximum of pieces, streamed or whole', async () => {
    const size = 64 << 10;
    const big = Buffer.alloc((MAX_STORED_CHUNKS + 1) * size);
    expect(chunksOf(big, size)).toBeUndefined();
    expect(chunksOf(big.subarray(0, MAX_STORED_CHUNKS * size), size)).toBeDefined();
    const h = new ChunkHasher(size);
    await pipeline(Readable.from([big]), h, new Writable({ write: (_c, _e, cb) => cb() }));
    expect(h.result()).toBeUndefined();
    const ok = new ChunkHasher(size);
    const data = randomBytes(5 * size + 9);
    await pipeline(Readable.from([data.subarray(0, 1000), data.subarray(1000)]), ok, new Writable({ write: (_c, _e, cb) => cb() }));
    expect(ok.result()).toEqual(chunksOf(data, size));
  });
});

describe.each([
  ['in this thread (ChunkVerifier)', ChunkVerifier, false],
  ['on a hashing thread, from slices (ChunkVerifierThread)', ChunkVerifierThread, false],
  ['on a hashing thread, from buffers of their own (ChunkVerifierThread)', ChunkVerifierThread, true],
] as Array<[string, Verifier, boolean]>)('chunk verifier %s', (_name, V, own) => {
  it('passes an intact stream through unchanged, whatever the read sizes', async () => {
    const data = randomBytes(3 * SIZE + 1);
    for (const step of [1000, SIZE, SIZE + 1, 5 * SIZE]) {
      const r = await verify(data, chunksOf(data, SIZE)!, data.length, step, V, own);
      expect(r.err).toBeUndefined();
      expect(r.out.equals(data)).toBe(true);
      expect(data.length).toBe(3 * SIZE + 1); // nothing the writer holds was taken from it
    }
  });

  it('passes on nothing of a piece whose digest does not match: only the pieces before it', async () => {
    const data = randomBytes(4 * SIZE);
    const chunks = chunksOf(data, SIZE)!;
    const bad = Buffer.from(data);
    bad[2 * SIZE + 17]! ^= 1;
    const r = await verify(bad, chunks, bad.length, 10_000, V, own);
    expect(r.err?.message).toBe('chunk 3 of 4');
    expect(r.mismatch).toMatchObject({ index: 2, count: 4, start: 2 * SIZE, end: 3 * SIZE });
    expect(r.out.equals(data.subarray(0, 2 * SIZE))).toBe(true);
  });

  it('refuses a stream that ends early, and bytes past the signed pieces', async () => {
    const data = randomBytes(3 * SIZE);
    const chunks = chunksOf(data, SIZE)!;
    const short = await verify(data.subarray(0, 2 * SIZE), chunks, data.length, 10_000, V, own);
    expect(short.err?.message).toBe('short: 2 of 3');
    const cut = await verify(data.subarray(0, 2 * SIZE + 5), chunks, data.length, 10_000, V, own);
    expect(cut.err?.message).toBe('chunk 3 of 3');
    const longer = await verify(Buffer.concat([data, Buffer.from('x')]), chunks, data.length, 10_000, V, own);
    expect(longer.err?.message).toBe('chunk 4 of 3');
    expect(longer.out.equals(data)).toBe(true);
  });
});
