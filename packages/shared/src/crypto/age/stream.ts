/**
 * The payload's STREAM construction, shared by both directions: the payload is cut into 64 KiB
 * plaintext chunks, each sealed with ChaCha20-Poly1305 under a nonce made of the chunk counter and
 * a flag marking the final chunk.
 */
import { createDecipheriv } from 'node:crypto';
import { TAG_SIZE } from './primitives.js';

/** Random bytes between the header and the first chunk: the salt of the payload key. */
export const PAYLOAD_NONCE_SIZE = 16;
/** Plaintext bytes per STREAM chunk (spec: 64 KiB). */
export const CHUNK_SIZE = 64 * 1024;
/** Ciphertext bytes per full chunk. */
export const ENC_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE;

/** STREAM nonce: 11-byte big-endian chunk counter, then the last-chunk flag. */
export function setNonce(nonce: Buffer, counter: number, last: boolean): void {
  // 6 bytes of counter cover 2^48 chunks (16 EiB); the top 5 counter bytes stay zero.
  nonce.writeUIntBE(counter, 5, 6);
  nonce[11] = last ? 1 : 0;
}

/**
 * Ciphertext → plaintext via the callback, one 64 KiB STREAM chunk at a time, straight out of the
 * incoming buffers. Only a partial chunk at the end of a buffer is copied into `pending`: the
 * producer may reuse its buffer once our callback has run, so we must not keep references to it.
 *
 * A chunk is processed only once at least one byte beyond it has arrived, so whatever is left at
 * end-of-stream (1..chunkSize bytes, or 0 if nothing came at all) is exactly the final chunk. This is
 * how both directions solve the last-flag problem: the final chunk's nonce differs, and a full chunk
 * may or may not be the final one.
 */
export class ChunkSplitter {
  private readonly pending: Buffer;
  private pendingLen = 0;

  constructor(
    private readonly chunkSize: number,
    private readonly onFullChunk: (chunk: Buffer) => void,
  ) {
    this.pending = Buffer.allocUnsafe(chunkSize);
  }

  write(data: Buffer): void {
    let off = 0;
    if (this.pendingLen > 0) {
      const n = Math.min(this.chunkSize - this.pendingLen, data.length);
      data.copy(this.pending, this.pendingLen, 0, n);
      this.pendingLen += n;
      off = n;
      if (this.pendingLen === this.chunkSize && off < data.length) {
        // More data follows, so the held chunk is not the last. (The callback must not retain the
        // buffer: cipher.update() returns fresh memory, so pending can be refilled right away.)
        this.onFullChunk(this.pending);
        this.pendingLen = 0;
      }
    }
    // Here either pendingLen is 0, or all of data went into pending.
    while (data.length - off > this.chunkSize) {
      this.onFullChunk(data.subarray(off, off + this.chunkSize));
      off += this.chunkSize;
    }
    if (off < data.length) {
      data.copy(this.pending, 0, off);
      this.pendingLen = data.length - off;
    }
  }

  /** What is held back at end of stream (a view of internal memory: use before the next write). */
  rest(): Buffer {
    return this.pending.subarray(0, this.pendingLen);
  }
}

/** Why openPayloadInPlace refused a payload: an age error code and its message (without a label). */
export interface PayloadProblem {
  code: 'AGE_CORRUPT' | 'AGE_TRUNCATED';
  message: string;
}

/**
 * One sealed STREAM chunk (`sealedLength` bytes, number `counter`) opened by the rules both
 * decryptors follow, `open(last)` trying its tag with the last-chunk flag as given: a chunk with more
 * after it must open as non-final (one that opens only as final has data after it); the last must
 * open as final (a full one that opens only as non-final had its final chunk cut off) and may be
 * empty only when it is the first. The plaintext, or why not.
 */
export function openChunk(open: (last: boolean) => Buffer | undefined, counter: number, last: boolean, sealedLength: number): Buffer | PayloadProblem {
  if (!last) {
    const pt = open(false);
    if (pt !== undefined) return pt;
    // Distinguish "a complete file with junk appended" from a damaged chunk, for the message only.
    return open(true) !== undefined
      ? { code: 'AGE_CORRUPT', message: `unexpected data after the final chunk (chunk ${counter})` }
      : { code: 'AGE_CORRUPT', message: `chunk ${counter} (plaintext offset ${counter * CHUNK_SIZE}) failed authentication: the file is corrupt or was tampered with` };
  }
  if (sealedLength < TAG_SIZE) {
    return { code: 'AGE_TRUNCATED', message: sealedLength === 0 && counter === 0 ? 'the age file ends before its first chunk' : `the age file ends inside chunk ${counter}` };
  }
  const pt = open(true);
  if (pt === undefined) {
    if (sealedLength === ENC_CHUNK_SIZE && open(false) !== undefined) {
      return { code: 'AGE_TRUNCATED', message: `the age file ends after chunk ${counter}, before its final chunk` };
    }
    return { code: 'AGE_CORRUPT', message: `final chunk ${counter} failed authentication: the file is truncated, corrupt or was tampered with` };
  }
  // Spec: only an empty plaintext may end in an empty chunk. Authentic, but not conforming.
  if (pt.length === 0 && counter > 0) return { code: 'AGE_CORRUPT', message: 'empty final chunk after data: not a conforming age file' };
  return pt;
}

/**
 * The STREAM payload `buf[start, end)` (the chunks after the header and the payload nonce) opened
 * with `payloadKey` in place: each chunk's plaintext is written to the front of `buf` once its tag
 * has been checked (openChunk: the stream decryptor's rules and words, where the end is known), and
 * the plaintext's length is returned, or why the payload is refused. For a payload held whole in
 * memory (a pack read on the hashing thread, chunk-hasher-worker.ts). A chunk's plaintext lands
 * before its ciphertext (64 KiB against 64 KiB + 16 bytes a chunk): no sealed byte is overwritten
 * before it is read.
 */
export function openPayloadInPlace(buf: Buffer, start: number, end: number, payloadKey: Buffer): { plain: number } | PayloadProblem {
  const nonce = Buffer.alloc(12);
  const open = (s: number, e: number, counter: number, last: boolean): Buffer | undefined => {
    setNonce(nonce, counter, last);
    const d = createDecipheriv('chacha20-poly1305', payloadKey, nonce, { authTagLength: TAG_SIZE });
    d.setAuthTag(buf.subarray(e - TAG_SIZE, e));
    const pt = d.update(buf.subarray(s, e - TAG_SIZE));
    try {
      d.final();
    } catch {
      return undefined;
    }
    return pt;
  };
  // At least one chunk: an empty payload is the final chunk cut off before it began.
  const count = Math.max(1, Math.ceil((end - start) / ENC_CHUNK_SIZE));
  let out = 0;
  for (let i = 0; i < count; i++) {
    const s = start + i * ENC_CHUNK_SIZE;
    const e = Math.min(s + ENC_CHUNK_SIZE, end);
    const pt = openChunk((last) => open(s, e, i, last), i, i === count - 1, e - s);
    if (!Buffer.isBuffer(pt)) return pt;
    pt.copy(buf, out);
    out += pt.length;
  }
  return { plain: out };
}
