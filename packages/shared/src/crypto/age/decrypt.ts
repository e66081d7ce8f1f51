/**
 * age v1 file in, plaintext out: the header (HeaderReader) yields the file key, then the payload's
 * STREAM chunks are opened and emitted one at a time, each only once it has authenticated.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { TandemError } from '../../errors.js';
import { HeaderReader } from './header.js';
import { identityFromString } from './keys.js';
import { EMPTY, TAG_SIZE, aeadOpen, hkdf } from './primitives.js';
import { ChunkSplitter, ENC_CHUNK_SIZE, PAYLOAD_NONCE_SIZE, openChunk, setNonce } from './stream.js';

type DecryptState = 'header' | 'nonce' | 'payload' | 'done' | 'failed';

class AgeDecryptStream extends Transform {
  private readonly header: HeaderReader;
  private readonly prefix: string;
  private state: DecryptState = 'header';
  private nonceAcc: Buffer = EMPTY;
  private fileKey: Buffer = EMPTY;
  private payloadKey: Buffer = EMPTY;
  private readonly nonce = Buffer.alloc(12);
  private counter = 0;
  private readonly splitter = new ChunkSplitter(ENC_CHUNK_SIZE, (chunk) => this.openNonFinal(chunk));

  constructor(identities: string[], label: string | undefined) {
    super();
    if (identities.length === 0) {
      throw new TandemError('config', 'AGE_NO_IDENTITIES', 'age decryption needs at least one identity');
    }
    const ids = identities.map((id, i) => identityFromString(id, `age identity #${i + 1}`));
    this.prefix = label ? `${label}: ` : '';
    this.header = new HeaderReader(ids, this.prefix);
  }

  private fail(code: string, message: string, hint?: string): TandemError {
    this.state = 'failed';
    return new TandemError('integrity', code, this.prefix + message, hint === undefined ? {} : { hint });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.consume(chunk);
      cb();
    } catch (err) {
      this.state = 'failed';
      cb(err as Error);
    }
  }

  private consume(data: Buffer): void {
    if (this.state === 'header') {
      const opened = this.header.feed(data);
      if (opened === undefined) return;
      this.fileKey = opened.fileKey;
      this.state = 'nonce';
      data = opened.rest;
    }
    if (this.state === 'nonce') {
      const need = PAYLOAD_NONCE_SIZE - this.nonceAcc.length;
      this.nonceAcc = Buffer.concat([this.nonceAcc, data.subarray(0, need)]);
      data = data.subarray(need);
      if (this.nonceAcc.length < PAYLOAD_NONCE_SIZE) return;
      this.payloadKey = hkdf(this.fileKey, this.nonceAcc, 'payload');
      this.state = 'payload';
    }
    if (this.state === 'payload') {
      if (data.length > 0) this.splitter.write(data);
      return;
    }
    if (data.length > 0) throw this.fail('AGE_CORRUPT', 'data after the end of the encrypted stream');
  }

  private open(sealed: Buffer, last: boolean): Buffer | undefined {
    setNonce(this.nonce, this.counter, last);
    return aeadOpen(this.payloadKey, this.nonce, sealed);
  }

  private openNonFinal(sealed: Buffer): void {
    const pt = openChunk((last) => this.open(sealed, last), this.counter, false, sealed.length);
    if (!Buffer.isBuffer(pt)) throw this.fail(pt.code, pt.message);
    this.counter++;
    this.push(pt);
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.finish();
      cb();
    } catch (err) {
      this.state = 'failed';
      cb(err as Error);
    }
  }

  private finish(): void {
    switch (this.state) {
      case 'failed':
      case 'done':
        return;
      case 'header':
        throw this.fail(
          'AGE_TRUNCATED',
          this.header.received === 0 ? 'empty input where an age file was expected' : 'the age file ends inside its header',
        );
      case 'nonce':
        throw this.fail('AGE_TRUNCATED', 'the age file ends before its payload');
      case 'payload':
        break;
    }
    const rest = this.splitter.rest();
    const pt = openChunk((last) => this.open(rest, last), this.counter, true, rest.length);
    if (!Buffer.isBuffer(pt)) throw this.fail(pt.code, pt.message);
    this.state = 'done';
    this.counter++;
    this.push(pt);
  }
}

/**
 * age v1 file in, plaintext out. Plaintext is emitted one authenticated 64 KiB chunk at a time, so
 * a consumer sees authentic data before it knows the file is complete: treat any stream error as
 * "the whole output is invalid" (write to a temporary file, rename only on success).
 *
 * Errors are 'integrity' TandemErrors: AGE_NO_IDENTITY_MATCH, AGE_BAD_HEADER, AGE_CORRUPT,
 * AGE_TRUNCATED; `label` (e.g. the object key) prefixes their messages.
 */
export function createAgeDecryptStream(identities: string[], opts: { label?: string } = {}): Transform {
  return new AgeDecryptStream(identities, opts.label);
}

/**
 * The header of the age file held whole in `data` read and its file key unwrapped: where the
 * payload's STREAM chunks start and the key that opens them (openPayloadInPlace opens a payload
 * held in memory, on another thread). Errors are createAgeDecryptStream's, prefixed by `label`.
 */
export function payloadOf(identities: string[], data: Buffer, label: string): { start: number; payloadKey: Buffer } {
  if (identities.length === 0) throw new TandemError('config', 'AGE_NO_IDENTITIES', 'age decryption needs at least one identity');
  const prefix = `${label}: `;
  const ids = identities.map((id, i) => identityFromString(id, `age identity #${i + 1}`));
  const opened = new HeaderReader(ids, prefix).feed(data);
  if (opened === undefined) {
    throw new TandemError('integrity', 'AGE_TRUNCATED', prefix + (data.length === 0 ? 'empty input where an age file was expected' : 'the age file ends inside its header'));
  }
  if (opened.rest.length < PAYLOAD_NONCE_SIZE) throw new TandemError('integrity', 'AGE_TRUNCATED', `${prefix}the age file ends before its payload`);
  return { start: data.length - opened.rest.length + PAYLOAD_NONCE_SIZE, payloadKey: hkdf(opened.fileKey, opened.rest.subarray(0, PAYLOAD_NONCE_SIZE), 'payload') };
}
