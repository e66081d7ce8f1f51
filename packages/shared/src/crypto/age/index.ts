/**
 * age v1 (https://age-encryption.org/v1), X25519 recipients only, built on node:crypto natives.
 *
 * Why not the age-encryption npm package: its payload cipher is pure JS (~90 MB/s), which would make
 * encryption the bottleneck of every backup. OpenSSL's chacha20-poly1305 runs well over 1 GB/s per
 * 64 KiB chunk here, so the work in these modules is mostly about not getting in its way: chunks are
 * sealed/opened straight out of the caller's buffers, and only the partial chunk left at the end of
 * each incoming buffer is copied.
 *
 * Output is byte-for-byte the format the `age` CLI reads and writes; the tests prove it both ways.
 *
 * keys.ts: X25519 keys and the identity/recipient files; header.ts: the header (recipient stanzas
 * wrapping the file key, and its MAC); stream.ts: the payload's STREAM chunking, shared by
 * encrypt.ts and decrypt.ts, the two stream directions; primitives.ts: HKDF and AEAD helpers.
 */
export {
  formatIdentityFile,
  generateAgeKeyPair,
  parseIdentityFile,
  parseRecipientFile,
  recipientFromIdentity,
  type AgeKeyPair,
} from './keys.js';
export { createAgeEncryptStream } from './encrypt.js';
export { createAgeDecryptStream, payloadOf } from './decrypt.js';
export { openPayloadInPlace, type PayloadProblem } from './stream.js';
