/**
 * Hand-made tar streams for the hostile-archive suite: any type flag, pax headers (path, linkpath,
 * size), and entries whose data is generated on the fly (a 10 GiB entry is never held or written).
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createAgeEncryptStream, loadRecipients, zstdCompress } from '@tandem/shared';
import type { StandbySite } from '../../support/standby-helpers.js';

export interface HostileEntry {
  name: string;
  /** ustar type flag: 0 file, 1 hardlink, 2 symlink, 3 char dev, 4 block dev, 5 dir, 6 fifo, 7 contiguous, x pax, g global pax, L/K GNU long names. */
  type: string;
  data?: Buffer | string;
  linkname?: string;
  mode?: number;
  /** Pax records put in an 'x' header before this entry (path, linkpath, size ...). */
  pax?: Record<string, string>;
  /** Size to claim in the header when the data is generated (see `zeros`). */
  size?: number;
  /** Generate this many zero bytes as the entry's data instead of `data`. */
  zeros?: number;
}

const octal = (n: number, width: number): string => `${n.toString(8).padStart(width - 1, '0')}\0`;

export function header(name: string, type: string, size: number, opts: { linkname?: string; mode?: number } = {}): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  h.write(octal(opts.mode ?? (type === '5' ? 0o755 : 0o644), 8), 100, 'latin1');
  h.write(octal(0, 8), 108, 'latin1');
  h.write(octal(0, 8), 116, 'latin1');
  if (size < 8 ** 11) h.write(octal(size, 12), 124, 'latin1');
  else h.write(octal(0, 12), 124, 'latin1'); // the pax "size" record carries it
  h.write(octal(1_700_000_000, 12), 136, 'latin1');
  h.write('        ', 148, 'latin1');
  h.write(type, 156, 'latin1');
  if (opts.linkname) h.write(opts.linkname, 157, 100, 'utf8');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  if (type === '3' || type === '4') {
    h.write(octal(1, 8), 329, 'latin1');
    h.write(octal(3, 8), 337, 'latin1');
  }
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

const pad = (n: number): Buffer => Buffer.alloc((512 - (n % 512)) % 512);

function paxBody(records: Record<string, string>): Buffer {
  let out = '';
  for (const [k, v] of Object.entries(records)) {
    const rest = ` ${k}=${v}\n`;
    let len = Buffer.byteLength(rest) + 1;
    while (String(len).length + Buffer.byteLength(rest) !== len) len = String(len).length + Buffer.byteLength(rest);
    out += `${len}${rest}`;
  }
  return Buffer.from(out, 'utf8');
}

/** The tar stream as chunks (generated lazily: zero-filled entries are produced 1 MiB at a time). */
export async function* tarChunks(entries: Iterable<HostileEntry>): AsyncGenerator<Buffer> {
  const ZERO = Buffer.alloc(1 << 20);
  for (const e of entries) {
    if (e.pax) {
      const body = paxBody(e.pax);
      yield Buffer.concat([header('PaxHeader', 'x', body.length), body, pad(body.length)]);
    }
    if (e.zeros !== undefined) {
      yield header(e.name, e.type, e.size ?? e.zeros, { linkname: e.linkname, mode: e.mode });
      for (let left = e.zeros; left > 0; left -= ZERO.length) yield left >= ZERO.length ? ZERO : ZERO.subarray(0, left);
      yield pad(e.zeros);
      continue;
    }
    const data = Buffer.from(e.data ?? '');
    yield Buffer.concat([header(e.name, e.type, e.size ?? data.length, { linkname: e.linkname, mode: e.mode }), data, pad(data.length)]);
  }
  yield Buffer.alloc(1024);
}

export async function tarBuffer(entries: Iterable<HostileEntry>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of tarChunks(entries)) out.push(c);
  return Buffer.concat(out);
}

/** zstd + age (to the site's recipient) of a generated stream; returns the stored bytes and the plain size. */
export async function sealStream(s: StandbySite, chunks: AsyncIterable<Buffer>): Promise<{ stored: Buffer; plainSize: number }> {
  let plainSize = 0;
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(
      (async function* () {
        for await (const c of chunks) {
          plainSize += c.length;
          yield c;
        }
      })(),
    ),
    zstdCompress(),
    createAgeEncryptStream(loadRecipients(s.keys.recipientFile)),
    async function* (src: AsyncIterable<Buffer>) {
      for await (const c of src) out.push(c);
    },
  );
  return { stored: Buffer.concat(out), plainSize };
}
