/**
 * Ed25519 signatures for manifests and latest.json (node:crypto). The primary holds the private
 * key (PKCS#8 PEM), the standby only the public key (SPKI PEM).
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { TandemError } from '../errors.js';

export interface SigningKeyPair {
  privateKeyPem: string;
  publicKeyPem: string;
}

const ED25519_SIGNATURE_SIZE = 64;

export function generateSigningKeyPair(): SigningKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519', {
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/** Names what a non-PEM-key text looks like, so the error can point at the likely mix-up. */
function notPemReason(text: string): string | undefined {
  if (/AGE-SECRET-KEY-1/i.test(text)) return 'this is an age identity (AGE-SECRET-KEY-1...), not an Ed25519 PEM key';
  if (/^\s*(#.*\n\s*)*age1[a-z0-9]+\s*$/.test(text)) return 'this is an age recipient (age1...), not an Ed25519 PEM key';
  if (text.includes('BEGIN OPENSSH PRIVATE KEY') || /^\s*ssh-/.test(text)) {
    return 'this is an SSH key; an Ed25519 key in PEM (PKCS#8 / SPKI) form was expected';
  }
  if (text.includes('BEGIN ENCRYPTED PRIVATE KEY')) return 'this private key is passphrase-protected, which is not supported';
  if (text.trim() === '') return 'the file is empty';
  return undefined;
}

function configError(source: string, what: string, hint: string, cause?: unknown): TandemError {
  return new TandemError('config', 'SIGNING_KEY_INVALID', `${source}: ${what}`, { hint, cause });
}

function requireEd25519(key: KeyObject, source: string, hint: string): KeyObject {
  if (key.asymmetricKeyType !== 'ed25519') {
    throw configError(source, `this is a ${key.asymmetricKeyType ?? 'unknown'} key; an Ed25519 key was expected`, hint);
  }
  return key;
}

/** The primary's signing key: a PKCS#8 PEM Ed25519 private key. */
export function loadSigningKey(pem: string, source: string): KeyObject {
  const hint = 'the signing key is the PEM file with "BEGIN PRIVATE KEY" that `tandem-primary init` wrote for the primary';
  const reason = notPemReason(pem);
  if (reason) throw configError(source, reason, hint);
  if (/-----BEGIN PUBLIC KEY-----/.test(pem) && !/PRIVATE KEY-----/.test(pem)) {
    throw configError(
      source,
      'this is a public (verify) key, but the private signing key was expected: the verify key file was given where the signing key belongs',
      hint,
    );
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw configError(source, 'not a valid PEM private key', hint, err);
  }
  return requireEd25519(key, source, hint);
}

/** The standby's verify key: an SPKI PEM Ed25519 public key. */
export function loadVerifyKey(pem: string, source: string): KeyObject {
  const hint = 'the verify key is the PEM file with "BEGIN PUBLIC KEY" (signing.pub) from `tandem-primary init`';
  const reason = notPemReason(pem);
  if (reason) throw configError(source, reason, hint);
  // createPublicKey() would happily derive a public key from a private PEM. Refuse instead: a secret
  // signing key on the standby means whoever takes the standby can forge backups.
  if (/PRIVATE KEY-----/.test(pem)) {
    throw configError(
      source,
      'this is a private (signing) key, but the public verify key was expected: the signing key file was given where the verify key belongs',
      `${hint}; remove the private key from this machine`,
    );
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw configError(source, 'not a valid PEM public key', hint, err);
  }
  return requireEd25519(key, source, hint);
}

/** Ed25519 signature of `data`, base64 (88 characters, padded). */
export function signBytes(data: Buffer, key: KeyObject): string {
  return sign(null, data, key).toString('base64');
}

/**
 * True only for a valid signature in canonical base64. Never throws for bad input: a malformed
 * signature from the bucket is just a signature that does not verify.
 */
export function verifyBytes(data: Buffer, signatureB64: string, key: KeyObject): boolean {
  try {
    if (typeof signatureB64 !== 'string' || !/^[A-Za-z0-9+/]{86}==$/.test(signatureB64)) return false;
    const sig = Buffer.from(signatureB64, 'base64');
    // Re-encoding rejects a last character that differs only in the unused low bits: otherwise two
    // different strings would verify as the same signature.
    if (sig.length !== ED25519_SIGNATURE_SIZE || sig.toString('base64') !== signatureB64) return false;
    return verify(null, data, key, sig);
  } catch {
    return false;
  }
}

/** First 16 hex chars of SHA-256 over the raw 32-byte public key; same for either half of a pair. */
export function keyId(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  if (pub.asymmetricKeyType !== 'ed25519') {
    throw new TandemError('internal', 'SIGNING_KEY_TYPE', `keyId: expected an Ed25519 key, got ${pub.asymmetricKeyType ?? 'unknown'}`);
  }
  const jwk = pub.export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new TandemError('internal', 'SIGNING_KEY_EXPORT', 'Ed25519 key export has no x');
  return createHash('sha256').update(Buffer.from(jwk.x, 'base64url')).digest('hex').slice(0, 16);
}
