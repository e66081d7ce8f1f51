/**
 * The payload's STREAM construction, shared by both directions: the payload is cut into 64 KiB
 * plaintext chunks, each sealed with ChaCha20-Poly1305 under a nonce made of the chunk counter and
 * a flag marking the final chunk.
 */
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
