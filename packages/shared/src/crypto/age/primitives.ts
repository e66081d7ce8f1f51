/**
 * The node:crypto building blocks the age modules share: HKDF-SHA-256, ChaCha20-Poly1305 sealing
 * and opening of one buffer (the wrapped file key; payload chunks when decrypting), and the format
 * constants more than one of them needs.
 */
import { createCipheriv, createDecipheriv, hkdfSync } from 'node:crypto';

/** First line of an ASCII-armored age file (tandem reads the binary format only). */
export const ARMOR_BEGIN = '-----BEGIN AGE ENCRYPTED FILE-----';
/** Poly1305 tag, for the wrapped file key and every payload chunk. */
export const TAG_SIZE = 16;
export const EMPTY = Buffer.alloc(0);

export function hkdf(ikm: Buffer, salt: Buffer, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, 32));
}

export function aeadSeal(key: Buffer, nonce: Buffer, plaintext: Buffer): Buffer {
  const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_SIZE });
  const ct = c.update(plaintext);
  c.final();
  return Buffer.concat([ct, c.getAuthTag()]);
}

/** Returns undefined if authentication fails. Plaintext is only returned after final() passed. */
export function aeadOpen(key: Buffer, nonce: Buffer, sealed: Buffer): Buffer | undefined {
  if (sealed.length < TAG_SIZE) return undefined;
  const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_SIZE });
  d.setAuthTag(sealed.subarray(sealed.length - TAG_SIZE));
  const pt = d.update(sealed.subarray(0, sealed.length - TAG_SIZE));
  try {
    d.final();
  } catch {
    return undefined;
  }
  return pt;
}
