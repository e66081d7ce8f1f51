import type { Readable } from 'node:stream';
import { TandemError } from '../errors.js';
import { SMALL_DOC_MAX_BYTES, type GetBufferOptions } from './filestore.js';

/**
 * The read cap of small documents (getBuffer, getIfChanged), the same for every backend: anyone who
 * can write one object into the filestore can replace latest.json with gigabytes, and every reader
 * would hold all of it in memory before the signature check could refuse it.
 */
export const capOf = (opts: GetBufferOptions | undefined): number => opts?.maxBytes ?? SMALL_DOC_MAX_BYTES;

export function docTooLarge(where: string, size: number | string, max: number): TandemError {
  return new TandemError(
    'integrity',
    'FILESTORE_DOC_TOO_LARGE',
    `${where} is ${typeof size === 'number' ? `${size} bytes` : size}, more than the ${max} bytes a tandem document may have: refusing to read it (damaged, or replaced by someone who can write to the filestore)`,
    { hint: 'a real latest.json, manifest, epoch.json, heartbeat.json or standby report is a few KiB: look at the object, and at who can write to the filestore' },
  );
}

/**
 * Collects a body, failing as soon as it passes `max` bytes (the counting limit: a declared length
 * can lie, or be absent). The source is destroyed then, so nothing more is transferred.
 */
export async function readCapped(body: Readable, max: number, where: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of body) {
      n += (chunk as Buffer).length;
      if (n > max) throw docTooLarge(where, `more than ${max} bytes`, max);
      chunks.push(chunk as Buffer);
    }
  } finally {
    if (!body.destroyed) body.destroy();
  }
  return Buffer.concat(chunks, n);
}
