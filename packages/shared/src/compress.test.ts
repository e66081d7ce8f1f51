import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { zstdCompress, zstdDecompress, zstdDecompressSmall, zstdFrameBounds } from './compress.js';
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

  describe('small artifacts, in this process', () => {
    const zstdCli = (data: Buffer, args: string[]) => execFileSync('zstd', ['-q', '-c', ...args], { input: data, maxBuffer: 64 << 20 });
    const tooLong = (n: number) => new TandemError('integrity', 'PLAIN_TOO_LONG', `more than allowed: ${n}`);
    /** Decodes with zstdDecompressSmall; with `noProcess`, PATH is emptied meanwhile, so that a zstd process could not start. */
    async function small(data: Buffer, maxBytes: number, noProcess: boolean): Promise<Buffer> {
      const path = process.env.PATH;
      if (noProcess) process.env.PATH = '/nonexistent';
      try {
        const out = collector();
        await pipeline(Readable.from([data]), zstdDecompressSmall(maxBytes, tooLong), out);
        return out.data();
      } finally {
        process.env.PATH = path;
      }
    }

    it('decodes what the zstd CLI wrote at every level the config allows, from a pipe, with no zstd process', async () => {
      const text = sqlText(600_000);
      for (const level of ['-1', '-3', '-19']) {
        const packed = execFileSync('sh', ['-c', `zstd -q -c ${level} | cat`], { input: text, maxBuffer: 64 << 20 });
        const b = zstdFrameBounds(packed)!;
        expect(b.window).toBeLessThanOrEqual(8 << 20);
        expect((await small(packed, text.length, true)).equals(text)).toBe(true);
      }
      // Two frames with a skippable frame between them (zstd's own format allows both).
      const a = zstdCli(Buffer.from('first frame\n'), ['-3']);
      const skip = Buffer.concat([Buffer.from([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0]), Buffer.from('pad!')]);
      const c = zstdCli(Buffer.from('second frame\n'), ['-3']);
      expect((await small(Buffer.concat([a, skip, c]), 100, true)).toString()).toBe('first frame\nsecond frame\n');
      expect(zstdFrameBounds(Buffer.concat([a, skip, c]))).toMatchObject({ declared: 0 });
    });

    it('a declared window is narrowed to what the plain size needs; one still too large goes to the zstd process', async () => {
      // A long-distance window (128 MiB) for 200 KB: narrowed to 256 KiB, decoded here.
      const text = sqlText(200_000);
      const packed = execFileSync('sh', ['-c', 'zstd -q -c -3 --long=27 | cat'], { input: text, maxBuffer: 64 << 20 });
      expect(zstdFrameBounds(packed)!.window).toBe(128 << 20);
      expect(zstdFrameBounds(Buffer.from(packed), text.length)!.window).toBe(256 << 10);
      expect((await small(packed, text.length, true)).equals(text)).toBe(true);
      // Matches reaching 3 MB back, within a narrowed window of 8 MiB: decoded here, exactly.
      const r3 = randomBytes(3 << 20);
      const six = Buffer.concat([r3, r3]);
      const sixPacked = execFileSync('sh', ['-c', 'zstd -q -c -3 --long=27 | cat'], { input: six, maxBuffer: 64 << 20 });
      expect(sixPacked.length).toBeLessThan(3.2 * (1 << 20));
      expect(zstdFrameBounds(Buffer.from(sixPacked), six.length)!.window).toBe(8 << 20);
      expect((await small(sixPacked, six.length, true)).equals(six)).toBe(true);
      // 10 MB with matches reaching back megabytes (the same 3 MB twice, and more): its window
      // cannot be narrowed under 16 MiB, over what is decoded here: the process decodes it.
      const third = randomBytes(3 << 20);
      const big = Buffer.concat([third, sqlText(1 << 20), third, third]);
      const far = execFileSync('sh', ['-c', 'zstd -q -c -3 --long=27 | cat'], { input: big, maxBuffer: 64 << 20 });
      expect(zstdFrameBounds(Buffer.from(far), big.length)!.window).toBe(16 << 20);
      expect((await small(far, big.length, false)).equals(big)).toBe(true);
      await expect(small(far, big.length, true)).rejects.toThrow(/zstd/);
    });

    it('never puts out more than the plain size allowed: a bomb stops at it, in this process and in the zstd process', async () => {
      // From a pipe the size is not declared: decoded here, the count stops it at the bound.
      const piped = execFileSync('sh', ['-c', 'zstd -q -c -19 | cat'], { input: Buffer.alloc(50 << 20), maxBuffer: 64 << 20 });
      expect(piped.length).toBeLessThan(20_000);
      expect(zstdFrameBounds(piped)).toMatchObject({ declared: 0 });
      for (const noProcess of [true, false]) {
        const out = collector();
        const path = process.env.PATH;
        if (noProcess) process.env.PATH = '/nonexistent';
        await expect(pipeline(Readable.from([piped]), zstdDecompressSmall(1 << 20, tooLong), out).finally(() => (process.env.PATH = path))).rejects.toThrow('more than allowed');
        expect(out.data().length).toBeLessThanOrEqual(1 << 20);
      }
      // From a file the frame declares 50 MB: not decoded here (no process: it fails), and the
      // zstd process's output is stopped at the bound.
      const dir = await mkdtemp(join(tmpdir(), 'tandem-zstd-'));
      try {
        const zeros = join(dir, 'zeros');
        const { writeFile } = await import('node:fs/promises');
        await writeFile(zeros, Buffer.alloc(50 << 20));
        const declared = execFileSync('zstd', ['-q', '-c', '-19', zeros], { maxBuffer: 64 << 20 });
        expect(zstdFrameBounds(declared)!.declared).toBe(50 << 20);
        await expect(small(declared, 1 << 20, true)).rejects.toThrow(/zstd/);
        const out = collector();
        await expect(pipeline(Readable.from([declared]), zstdDecompressSmall(1 << 20, tooLong), out)).rejects.toThrow('more than allowed');
        expect(out.data().length).toBeLessThanOrEqual(1 << 20);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it('damaged, truncated or not zstd: an error, nothing made up', async () => {
      const text = sqlText(300_000);
      const packed = zstdCli(text, ['-3']);
      expect(zstdFrameBounds(packed.subarray(0, packed.length - 10))).toBeNull();
      expect(zstdFrameBounds(randomBytes(1000))).toBeNull();
      // Truncated and random bytes go to the process, which names the fault.
      await expect(small(packed.subarray(0, packed.length - 10), text.length, false)).rejects.toThrow(/zstd/);
      await expect(small(randomBytes(1000), 1000, false)).rejects.toThrow(/zstd/);
      // A block's contents damaged (the headers intact): decoded here, and refused, or at least not
      // the same bytes (zstd's frame checksum is the caller's: the stored SHA-256 and plain size).
      const bad = Buffer.from(packed);
      for (let i = 40; i < bad.length - 40; i += 97) bad[i] = bad[i]! ^ 0x5a;
      expect(zstdFrameBounds(bad)).not.toBeNull();
      const got = await small(bad, text.length, true).catch((err: Error) => err);
      if (got instanceof Buffer) expect(got.equals(text)).toBe(false);
      else expect(got).toBeInstanceOf(Error);
    });
  });
});
