import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { zstdCompress, zstdDecompress } from './compress.js';
import { TandemError } from './errors.js';
import { collector, rejectedWith } from './testing/helpers.js';

function sqlText(bytes: number): Buffer {
  const lines: string[] = [];
  let n = 0;
  for (let i = 0; n < bytes; i++) {
    const line = `${i}\tpage_${i % 977}\t2026-11-22 03:00:${String(i % 60).padStart(2, '0')}+00\t{"lang": ["en"], "author": ${i % 50}}\tsome body text ${i * 7919}\n`;
    lines.push(line);
    n += line.length;
  }
  return Buffer.from(lines.join(''));
}

async function roundTrip(data: Buffer, opts?: { level?: number; threads?: number }): Promise<{ out: Buffer; packed: number }> {
  const packed = collector();
  await pipeline(Readable.from([data]), zstdCompress(opts), packed);
  const out = collector();
  await pipeline(Readable.from([packed.data()]), zstdDecompress(), out);
  return { out: out.data(), packed: packed.data().length };
}

describe('zstd', () => {
  it('round-trips text (and compresses it) and random data', async () => {
    const text = sqlText(4 * 1024 * 1024);
    const t = await roundTrip(text);
    expect(t.out.equals(text)).toBe(true);
    expect(t.packed).toBeLessThan(text.length / 4);

    const rnd = randomBytes(3 * 1024 * 1024);
    const r = await roundTrip(rnd, { level: 3, threads: 2 });
    expect(r.out.equals(rnd)).toBe(true);
  });

  it('round-trips empty input', async () => {
    const e = await roundTrip(Buffer.alloc(0));
    expect(e.out.length).toBe(0);
    expect(e.packed).toBeGreaterThan(0); // a valid (empty) frame, not nothing
  });

  it('rejects corrupt input with a clear message', async () => {
    const err = await rejectedWith(pipeline(Readable.from([randomBytes(100_000)]), zstdDecompress(), collector()), { code: 'CHILD_FAILED' });
    expect(err.message).toMatch(/zstd decompression: zstd exited with code \d+: .*(unsupported format|unknown header|not in zstd format)/);
    expect(err.hint).toContain('corrupt');
  });

  it('rejects truncated input', async () => {
    const packed = collector();
    await pipeline(Readable.from([randomBytes(1024 * 1024)]), zstdCompress(), packed);
    const half = packed.data().subarray(0, packed.data().length >> 1);
    const out = collector();
    const err = await rejectedWith(pipeline(Readable.from([half]), zstdDecompress(), out), { code: 'CHILD_FAILED' });
    expect(err.message).toMatch(/premature end|truncated/i);
  });

  it('decompresses straight into a file descriptor (nothing comes out of the stream), and fails on corrupt input', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'zstd-fd-'));
    try {
      const text = sqlText(2 * 1024 * 1024);
      const packed = collector();
      await pipeline(Readable.from([text]), zstdCompress(), packed);
      const fh = await open(join(dir, 'plain'), 'wx', 0o600);
      const out = collector();
      try {
        await pipeline(Readable.from([packed.data()]), zstdDecompress({ toFd: fh.fd }), out);
      } finally {
        await fh.close();
      }
      expect(out.data().length).toBe(0);
      expect((await readFile(join(dir, 'plain'))).equals(text)).toBe(true);

      const bad = await open(join(dir, 'bad'), 'wx', 0o600);
      await rejectedWith(
        pipeline(Readable.from([packed.data().subarray(0, 5000)]), zstdDecompress({ toFd: bad.fd }), collector()).finally(() => bad.close()),
        { code: 'CHILD_FAILED' },
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('validates the level', () => {
    for (const level of [0, 2.5]) {
      expect(() => zstdCompress({ level })).toThrow(TandemError);
      expect(() => zstdCompress({ level })).toThrow(`zstd level must be an integer from 1 to 19, got ${level}`);
    }
  });
});
