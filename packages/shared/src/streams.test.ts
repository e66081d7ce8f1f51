import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import type { TandemError } from './errors.js';
import { HashCounter, spawnFilter, spawnSource, textLines } from './streams.js';
import { collector, rejectedWith } from './testing/helpers.js';

/** `n` bytes in 64 KiB chunks, generated lazily. */
function bigSource(n: number): Readable {
  const chunk = randomBytes(64 * 1024);
  let left = n;
  return new Readable({
    read() {
      if (left <= 0) return void this.push(null);
      const c = chunk.subarray(0, Math.min(chunk.length, left));
      left -= c.length;
      this.push(c);
    },
  });
}

const expectTandemError = (p: Promise<unknown>, code: string): Promise<TandemError> => rejectedWith(p, { code });

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('HashCounter', () => {
  it('passes bytes through and reports their SHA-256 and count', async () => {
    const data = randomBytes(300_000);
    const h = new HashCounter();
    expect(() => h.digest()).toThrow(/before the stream ended/);
    const sink = collector();
    await pipeline(Readable.from([data.subarray(0, 1000), data.subarray(1000)]), h, sink);
    expect(sink.data().equals(data)).toBe(true);
    expect(h.bytes).toBe(data.length);
    expect(h.digest()).toBe(createHash('sha256').update(data).digest('hex'));
  });
});

describe('spawnFilter / spawnSource', () => {
  it('streams a large input through a child with backpressure, unchanged', async () => {
    const hIn = new HashCounter();
    const hOut = new HashCounter();
    const sink = new Writable({ write: (_c, _e, cb) => setImmediate(cb) }); // slow consumer
    await pipeline(bigSource(20 * 1024 * 1024), hIn, spawnFilter('cat', [], { label: 'cat test' }), hOut, sink);
    expect(hOut.bytes).toBe(20 * 1024 * 1024);
    expect(hOut.digest()).toBe(hIn.digest());
  });

  it('a non-zero exit fails with the label, the exit code and stderr', async () => {
    const src = spawnSource('sh', ['-c', 'echo "pg_dump: connection lost" >&2; exit 3'], { label: 'dump of db x' });
    const err = await expectTandemError(pipeline(src, collector()), 'CHILD_FAILED');
    expect(err.kind).toBe('external');
    expect(err.message).toContain('dump of db x');
    expect(err.message).toContain('code 3');
    expect(err.message).toContain('pg_dump: connection lost');
  });

  it('keeps only the tail of a huge stderr', async () => {
    const src = spawnSource('sh', ['-c', 'yes noise | head -c 1000000 >&2; echo LAST-LINE >&2; exit 1'], { label: 'noisy' });
    const err = await expectTandemError(pipeline(src, collector()), 'CHILD_FAILED');
    expect(err.message).toContain('LAST-LINE');
    expect(err.message.length).toBeLessThan(9 * 1024);
  });

  it('output followed by a failure rejects the pipeline and never ends the readable side', async () => {
    const src = spawnSource('sh', ['-c', 'printf "COPY partial data"; sleep 0.2; exit 2'], { label: 'partial' });
    let ended = false;
    src.on('end', () => (ended = true));
    const sink = collector();
    await expectTandemError(pipeline(src, sink), 'CHILD_FAILED');
    expect(sink.data().toString()).toBe('COPY partial data'); // it did flow; only the end is held back
    expect(ended).toBe(false);
  });

  it('does not end when stdout closes before the exit status is known', async () => {
    // The child closes stdout at once but fails later: ending on stdout EOF would look complete.
    const src = spawnSource('sh', ['-c', 'printf data; exec 1>&-; sleep 0.3; echo late failure >&2; exit 5'], {
      label: 'early eof',
    });
    const err = await expectTandemError(pipeline(src, collector()), 'CHILD_FAILED');
    expect(err.message).toContain('late failure');
  });

  it('a child that dies while we write reports its own error, not EPIPE', async () => {
    const f = spawnFilter('sh', ['-c', 'head -c 10 >/dev/null; echo "age: bad header" >&2; exit 4'], { label: 'decrypt' });
    const err = await expectTandemError(pipeline(bigSource(50 * 1024 * 1024), f, collector()), 'CHILD_FAILED');
    expect(err.message).toContain('age: bad header');
    expect(err.message).toContain('code 4');
  });

  it('a child that exits 0 without reading all of its input is a failure', async () => {
    const f = spawnFilter('head', ['-c', '10'], { label: 'short reader' });
    const err = await expectTandemError(pipeline(bigSource(10 * 1024 * 1024), f, collector()), 'CHILD_FAILED');
    expect(err.message).toContain('before reading all of its input');
  });

  it('a child that exits 0 before late input arrives is a failure; with no late input it is fine', async () => {
    const late = (data: string) => {
      let started = false;
      return new Readable({
        read() {
          if (started) return;
          started = true;
          setTimeout(() => {
            if (data) this.push(data);
            this.push(null);
          }, 200);
        },
      });
    };
    const err = await expectTandemError(pipeline(late('more'), spawnFilter('true', [], { label: 'quitter' }), collector()), 'CHILD_FAILED');
    expect(err.message).toContain('before reading all of its input');
    await pipeline(late(''), spawnFilter('true', [], { label: 'quitter' }), collector());
  });

  it('a missing binary is a config error naming the binary and the package', async () => {
    const src = spawnSource('tandem-no-such-binary', ['--x'], { label: 'dump', package: 'postgresql-client-15' });
    const err = await expectTandemError(pipeline(src, collector()), 'MISSING_BINARY');
    expect(err.kind).toBe('config');
    expect(err.message).toContain('tandem-no-such-binary');
    expect(err.message).toContain('postgresql-client-15');
    expect(err.hint).toContain('apt-get install postgresql-client-15');
  });

  it('a missing binary in the middle of a pipeline is reported as such', async () => {
    const f = spawnFilter('tandem-no-such-binary', [], { label: 'filter', package: 'nope' });
    await expectTandemError(pipeline(bigSource(5 * 1024 * 1024), f, collector()), 'MISSING_BINARY');
  });

  it('destroying the stream kills the child', async () => {
    const src = spawnSource('sleep', ['30'], { label: 'sleeper' });
    const pid = src.pid!;
    expect(alive(pid)).toBe(true);
    src.destroy();
    for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));
    expect(alive(pid)).toBe(false);
  });

  it('an aborted pipeline kills the child', async () => {
    const f = spawnFilter('cat', [], { label: 'cat' });
    const pid = f.pid!;
    const ac = new AbortController();
    const p = pipeline(bigSource(1024 * 1024 * 1024), f, new Writable({ write: (_c, _e, cb) => setTimeout(cb, 5) }), {
      signal: ac.signal,
    });
    setTimeout(() => ac.abort(), 50);
    await expect(p).rejects.toThrow(/abort/i);
    for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));
    expect(alive(pid)).toBe(false);
  });

  it('a child killed by a signal fails the stream, naming the signal', async () => {
    const src = spawnSource('sleep', ['30'], { label: 'victim' });
    const p = pipeline(src, collector());
    setTimeout(() => process.kill(src.pid!, 'SIGKILL'), 50);
    const err = await expectTandemError(p, 'CHILD_FAILED');
    expect(err.message).toContain('SIGKILL');
  });

  it('passes env to the child', async () => {
    const sink = collector();
    await pipeline(spawnSource('sh', ['-c', 'printf "$TANDEM_X"'], { label: 'env', env: { PATH: process.env.PATH, TANDEM_X: 'y' } }), sink);
    expect(sink.data().toString()).toBe('y');
  });
});

describe('textLines', () => {
  const collect = async (pieces: Array<Buffer | string>, max?: number) => {
    const out: string[] = [];
    for await (const l of textLines((async function* () { yield* pieces; })(), max)) out.push(l);
    return out;
  };

  it('splits on newlines across pieces, a character split between pieces kept whole, a last line without one', async () => {
    const text = Buffer.from('één\ntwee\n\ndrie');
    expect(await collect([text.subarray(0, 1), text.subarray(1, 7), text.subarray(7)])).toEqual(['één', 'twee', '', 'drie']);
    expect(await collect(['a\n'])).toEqual(['a']);
    expect(await collect([])).toEqual([]);
  });

  it('refuses a line longer than the limit before reading on', async () => {
    let read = 0;
    const endless = (async function* () {
      for (;;) {
        read++;
        yield 'x'.repeat(1000);
      }
    })();
    const lines = textLines(endless, 5000);
    await expect(lines.next()).rejects.toThrow(/longer than 5000/);
    expect(read).toBe(6);
  });
});
