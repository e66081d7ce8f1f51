import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ByteLines, LineSink } from './files-objects.js';

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

/** Lines of many lengths (some longer than the small buffers below), some with multi-byte characters. */
function sample(n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(`{"p":"d${i % 7}/f-${i}-${'é'.repeat(i % 5)}","x":"${'y'.repeat((i * 37) % 90)}"}`);
  return out;
}

/** A file of `text`, read back through ByteLines with a buffer of `bufferBytes`. */
function reader(text: string, bufferBytes: number): ByteLines {
  dir ??= mkdtempSync(join(tmpdir(), 'tandem-bytelines-'));
  const file = join(dir, `in-${Math.random().toString(16).slice(2)}`);
  writeFileSync(file, text);
  return new ByteLines(openSync(file, 'r'), bufferBytes);
}

/** What `write` puts into a LineSink, as the file it wrote. */
function sunk(write: (out: LineSink) => void): string {
  dir ??= mkdtempSync(join(tmpdir(), 'tandem-bytelines-'));
  const file = join(dir, `out-${Math.random().toString(16).slice(2)}`);
  const out = new LineSink(file);
  write(out);
  out.close();
  return readFileSync(file, 'utf8');
}

describe('ByteLines: a file of lines read as bytes', () => {
  // Buffers far smaller than a line, about a line, and larger than the file: every refill, move and
  // growth of the buffer is crossed.
  for (const size of [16, 100, 1 << 20]) {
    it(`gives every line, spans and copies whole lines exactly (buffer of ${size} bytes)`, () => {
      const lines = sample(200);
      const text = `${lines.join('\n')}\n`;

      // next: every line, in order, decoded whole.
      const a = reader(text, size);
      expect([...a.iterator()]).toEqual(lines);
      a.close();

      // span: the last of n lines decoded, nothing taken; consume: exactly their bytes.
      const b = reader(text, size);
      expect(b.next()).toBe(lines[0]);
      const span = b.span(30)!;
      expect(span.last).toBe(lines[30]);
      const taken = Buffer.from(b.consume(span.end)).toString('utf8');
      expect(taken).toBe(`${lines.slice(1, 31).join('\n')}\n`);
      expect(b.next()).toBe(lines[31]);
      // Past the end: no span, and nothing taken by asking.
      expect(b.span(1000)).toBeNull();
      expect(b.next()).toBe(lines[32]);
      b.close();

      // copyLines: n whole lines into a sink, between lines written as text; copyRest: the rest.
      const c = reader(text, size);
      const out = sunk((sink) => {
        sink.write('{"head":1}');
        expect(c.copyLines(50, sink)).toBe(50);
        sink.write('{"between":1}');
        expect(c.next()).toBe(lines[50]);
        expect(c.copyLines(0, sink)).toBe(0);
        c.copyRest(sink);
      });
      expect(out).toBe(`{"head":1}\n${lines.slice(0, 50).join('\n')}\n{"between":1}\n${lines.slice(51).join('\n')}\n`);
      c.close();
    });
  }

  it('copyLines says how many there were; copyRest ends a last line without a newline with one', () => {
    const lines = sample(10);
    const d = reader(lines.join('\n'), 32);
    const out = sunk((sink) => {
      expect(d.copyLines(4, sink)).toBe(4);
      d.copyRest(sink);
    });
    expect(out).toBe(`${lines.join('\n')}\n`);
    d.close();
    const e = reader(`${lines.join('\n')}\n`, 32);
    sunk((sink) => expect(e.copyLines(50, sink)).toBe(10));
    e.close();
  });

  it('an empty line ends a span (the record never has one) and is skipped by next', () => {
    const f = reader('{"a":1}\n\n{"b":2}\n{"c":3}\n', 8);
    expect(f.span(3)).toBeNull();
    expect(f.span(1)!.last).toBe('{"a":1}');
    expect([...f.iterator()]).toEqual(['{"a":1}', '{"b":2}', '{"c":3}']);
    f.close();
  });
});

describe('LineSink', () => {
  it('writes lines and raw bytes in order, whatever their sizes against its 1 MiB buffer', () => {
    const lines = sample(40_000); // ~3 MB of text: several flushes of joined lines
    const small = Buffer.from(`${sample(20).join('\n')}\n`);
    const big = Buffer.from(`${sample(30_000).join('\n')}\n`); // over 1 MiB: written as it is
    const nearly = Buffer.alloc((1 << 20) - 10, 'x'); // fills the buffer but for a few bytes
    const expected: string[] = [];
    const out = sunk((sink) => {
      for (const [i, l] of lines.entries()) {
        sink.write(l);
        expected.push(`${l}\n`);
        if (i % 997 === 0) {
          sink.writeRaw(small);
          expected.push(small.toString());
        }
        if (i === 20_000) {
          sink.writeRaw(big);
          expected.push(big.toString());
          sink.writeRaw(nearly);
          expected.push(nearly.toString());
          // Multi-byte text joined into a nearly full buffer: fewer UTF-16 units than bytes free, more bytes.
          sink.write('é'.repeat(6));
          expected.push(`${'é'.repeat(6)}\n`);
          sink.writeRaw(small);
          expected.push(small.toString());
        }
      }
      // The caller's buffer is reused after writeRaw returns: what was written must not change with it.
      const reused = Buffer.from('{"reused":1}\n');
      sink.writeRaw(reused);
      reused.fill(0x21);
      expected.push('{"reused":1}\n');
    });
    expect(out.length).toBe(expected.join('').length);
    expect(out).toBe(expected.join(''));
  });
});
