/** Plaintext in, age v1 file out: the header, the payload nonce, then the payload's STREAM chunks. */
import { createCipheriv, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { TandemError } from '../../errors.js';
import { FILE_KEY_SIZE, buildHeader } from './header.js';
import { TAG_SIZE, hkdf } from './primitives.js';
import { CHUNK_SIZE, ChunkSplitter, PAYLOAD_NONCE_SIZE, setNonce } from './stream.js';

class AgeEncryptStream extends Transform {
  private readonly payloadKey: Buffer;
  private readonly nonce = Buffer.alloc(12);
  private counter = 0;
  private prelude: Buffer | undefined;
  private readonly splitter = new ChunkSplitter(CHUNK_SIZE, (chunk) => this.seal(chunk, false));

  constructor(recipients: string[]) {
    super();
    if (recipients.length === 0) {
      throw new TandemError('config', 'AGE_NO_RECIPIENTS', 'age encryption needs at least one recipient');
    }
    const fileKey = randomBytes(FILE_KEY_SIZE);
    const payloadNonce = randomBytes(PAYLOAD_NONCE_SIZE);
    // Built here, not lazily, so a bad recipient throws from createAgeEncryptStream() itself.
    this.prelude = Buffer.concat([buildHeader(recipients, fileKey), payloadNonce]);
    this.payloadKey = hkdf(fileKey, payloadNonce, 'payload');
  }

  private emitPrelude(): void {
    if (this.prelude) {
      this.push(this.prelude);
      this.prelude = undefined;
    }
  }

  private seal(plaintext: Buffer, last: boolean): void {
    setNonce(this.nonce, this.counter++, last);
    const c = createCipheriv('chacha20-poly1305', this.payloadKey, this.nonce, { authTagLength: TAG_SIZE });
    // Two pushes rather than a concat: the tag is 16 bytes, copying 64 KiB to glue it on is not free.
    this.push(c.update(plaintext));
    c.final();
    this.push(c.getAuthTag());
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.emitPrelude();
      this.splitter.write(chunk);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.emitPrelude();
      // 0..64 KiB: an empty final chunk only happens for empty input, because a full chunk is held
      // back until more data proves it is not the last one.
      this.seal(this.splitter.rest(), true);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }
}

/** Plaintext in, age v1 file out. Throws a 'config' TandemError at once for a bad recipient. */
export function createAgeEncryptStream(recipients: string[]): Transform {
  return new AgeEncryptStream(recipients);
}
