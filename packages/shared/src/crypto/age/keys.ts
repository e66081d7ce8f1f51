/**
 * age X25519 keys: generating them, the identity and recipient files, and turning their bech32
 * strings into node:crypto keys. Every key error names what was given instead (a recipient where
 * an identity belongs, an SSH or PEM key, ...) without ever echoing the text itself.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { bech32 } from '@scure/base';
import { TandemError } from '../../errors.js';
import { ARMOR_BEGIN } from './primitives.js';

export interface AgeKeyPair {
  /** "AGE-SECRET-KEY-1..." (uppercase bech32): the standby's secret. */
  identity: string;
  /** "age1..." (lowercase bech32): what the primary encrypts to. */
  recipient: string;
}

const IDENTITY_HRP = 'AGE-SECRET-KEY-';
const RECIPIENT_HRP = 'age';

// PKCS#8 wrapping for a raw X25519 private key (RFC 8410). JWK import would also work but insists on
// the public "x" member, which we would have to compute first; DER takes the scalar alone.
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

/** What a key-ish string looks like, so errors can name the mix-up instead of just "invalid". */
type KeyShape =
  | 'identity'
  | 'bad-identity'
  | 'recipient'
  | 'bad-recipient'
  | 'plugin-identity'
  | 'plugin-recipient'
  | 'ssh-public'
  | 'ssh-private'
  | 'pem-private'
  | 'pem-public'
  | 'age-file'
  | 'unknown';

function decodeBech32(s: string, hrp: string): Buffer | undefined {
  // Like age, accept only the canonical case: identities uppercase, recipients lowercase.
  const wantUpper = hrp === IDENTITY_HRP;
  if (s !== (wantUpper ? s.toUpperCase() : s.toLowerCase())) return undefined;
  const decoded = bech32.decodeUnsafe(s, false);
  if (!decoded || decoded.prefix !== hrp.toLowerCase()) return undefined;
  const bytes = bech32.fromWordsUnsafe(decoded.words);
  if (!bytes || bytes.length !== 32) return undefined;
  return Buffer.from(bytes);
}

function classify(line: string): KeyShape {
  if (decodeBech32(line, IDENTITY_HRP)) return 'identity';
  if (decodeBech32(line, RECIPIENT_HRP)) return 'recipient';
  const upper = line.toUpperCase();
  if (upper.startsWith('AGE-PLUGIN-')) return 'plugin-identity';
  if (upper.startsWith('AGE-SECRET-KEY-')) return 'bad-identity';
  // age1<name>1... is a plugin recipient (e.g. age1yubikey1...); plain age1 + 58 chars is X25519.
  const lower = line.toLowerCase();
  if (/^age1[a-z0-9]+1[a-z0-9]+$/.test(lower) && !/^age1[02-9ac-hj-np-z]{58}$/.test(lower)) return 'plugin-recipient';
  if (lower.startsWith('age1')) return 'bad-recipient';
  if (/^(ssh-(ed25519|rsa)|ecdsa-sha2-)/.test(line)) return 'ssh-public';
  if (line.includes('BEGIN OPENSSH PRIVATE KEY')) return 'ssh-private';
  if (/^-----BEGIN .*PRIVATE KEY-----/.test(line)) return 'pem-private';
  if (/^-----BEGIN .*PUBLIC KEY-----/.test(line)) return 'pem-public';
  if (line.startsWith('age-encryption.org/') || line.startsWith(ARMOR_BEGIN)) return 'age-file';
  return 'unknown';
}

export interface X25519Identity {
  privateKey: KeyObject;
  /** Raw 32-byte public key: part of the HKDF salt when unwrapping. */
  publicRaw: Buffer;
  recipient: string;
}

function x25519PrivateKey(raw: Buffer): KeyObject {
  return createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
}

export function x25519PublicKey(raw: Buffer): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: raw.toString('base64url') }, format: 'jwk' });
}

export function rawPublic(key: KeyObject): Buffer {
  const jwk = (key.type === 'private' ? createPublicKey(key) : key).export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new TandemError('internal', 'AGE_KEY_EXPORT', 'X25519 key export has no x');
  return Buffer.from(jwk.x, 'base64url');
}

function encodeRecipient(publicRaw: Buffer): string {
  return bech32.encode(RECIPIENT_HRP, bech32.toWords(publicRaw), false);
}

/**
 * Identities already parsed, by their text: an apply opens every pack (and page pack) with the same
 * identities, and parsing one (bech32, key import, the public key derived) cost ~1.5 ms a pack. The
 * same strings the caller holds; a few at most.
 */
const parsedIdentities = new Map<string, X25519Identity>();
const PARSED_IDENTITIES_MAX = 16;

export function identityFromString(identity: string, where: string): X25519Identity {
  const known = parsedIdentities.get(identity);
  if (known !== undefined) return known;
  const raw = decodeBech32(identity.trim(), IDENTITY_HRP);
  if (!raw) {
    throw new TandemError('config', 'AGE_BAD_IDENTITY', `${where}: ${expectation('identity', classify(identity.trim()))}`);
  }
  const privateKey = x25519PrivateKey(raw);
  const publicRaw = rawPublic(privateKey);
  const id = { privateKey, publicRaw, recipient: encodeRecipient(publicRaw) };
  if (parsedIdentities.size >= PARSED_IDENTITIES_MAX) parsedIdentities.delete(parsedIdentities.keys().next().value!);
  parsedIdentities.set(identity, id);
  return id;
}

export function recipientFromString(recipient: string, where: string): { publicKey: KeyObject; publicRaw: Buffer } {
  const raw = decodeBech32(recipient.trim(), RECIPIENT_HRP);
  if (!raw) {
    throw new TandemError('config', 'AGE_BAD_RECIPIENT', `${where}: ${expectation('recipient', classify(recipient.trim()))}`);
  }
  return { publicKey: x25519PublicKey(raw), publicRaw: raw };
}

/**
 * The "what did you give me" half of a key error. Never echoes the offending text: in an identity
 * file it may well be a secret key in a slightly wrong form.
 */
function expectation(wanted: 'identity' | 'recipient', got: KeyShape): string {
  const want =
    wanted === 'identity'
      ? 'an age identity (AGE-SECRET-KEY-1...) was expected'
      : 'an age recipient (age1...) was expected';
  switch (got) {
    case 'identity':
      return `this is an age identity (secret key), but ${want}: the identity file was given where the recipient file belongs (the primary must only ever hold the public recipient)`;
    case 'recipient':
      return `this is an age recipient (public key), but ${want}: the recipient file was given where the identity file belongs`;
    case 'bad-identity':
      return `this looks like an age identity but is malformed (bad checksum, length or mixed case); ${want}`;
    case 'bad-recipient':
      return `this looks like an age recipient but is malformed (bad checksum, length or case); ${want}`;
    case 'plugin-identity':
    case 'plugin-recipient':
      return `age plugin keys are not supported; ${want}`;
    case 'ssh-public':
    case 'ssh-private':
      return `this is an SSH key; tandem uses native age X25519 keys only, ${want}`;
    case 'pem-private':
    case 'pem-public':
      return `this is a PEM key (the Ed25519 signing/verify key?), but ${want}`;
    case 'age-file':
      return `this is an age-encrypted file, not a key; ${want}`;
    case 'unknown':
      return `unrecognised line; ${want}`;
  }
}

export function generateAgeKeyPair(): AgeKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  const jwk = privateKey.export({ format: 'jwk' });
  if (typeof jwk.d !== 'string') throw new TandemError('internal', 'AGE_KEY_EXPORT', 'X25519 key export has no d');
  const identity = bech32.encode(IDENTITY_HRP, bech32.toWords(Buffer.from(jwk.d, 'base64url')), false).toUpperCase();
  return { identity, recipient: encodeRecipient(rawPublic(publicKey)) };
}

export function recipientFromIdentity(identity: string): string {
  return identityFromString(identity, 'age identity').recipient;
}

/** The same three lines `age-keygen` writes, so the file works with `age -d -i` as is. */
export function formatIdentityFile(kp: AgeKeyPair, created: Date = new Date()): string {
  if (recipientFromIdentity(kp.identity) !== kp.recipient) {
    throw new TandemError('internal', 'AGE_KEYPAIR_MISMATCH', 'age key pair: recipient does not belong to identity');
  }
  const stamp = created.toISOString().replace(/\.\d{3}Z$/, 'Z'); // RFC 3339 without millis, like age-keygen
  return `# created: ${stamp}\n# public key: ${kp.recipient}\n${kp.identity}\n`;
}

function keyFileLines(text: string): Array<{ line: string; no: number }> {
  const out: Array<{ line: string; no: number }> = [];
  text.split('\n').forEach((rawLine, i) => {
    const line = rawLine.trim(); // tolerate CRLF and stray indentation from copy-paste
    if (line === '' || line.startsWith('#')) return;
    out.push({ line, no: i + 1 });
  });
  return out;
}

export function parseIdentityFile(text: string, source: string): string[] {
  const identities: string[] = [];
  for (const { line, no } of keyFileLines(text)) {
    const shape = classify(line);
    if (shape !== 'identity') {
      throw new TandemError('config', 'AGE_BAD_IDENTITY_FILE', `${source}: line ${no}: ${expectation('identity', shape)}`, {
        hint:
          shape === 'recipient'
            ? 'the standby needs the identity file (backup.agekey, the one with AGE-SECRET-KEY-1...), not the recipient'
            : 'an identity file has one AGE-SECRET-KEY-1... per line, as written by `tandem-primary init` or `age-keygen`',
      });
    }
    identities.push(line);
  }
  if (identities.length === 0) {
    throw new TandemError('config', 'AGE_BAD_IDENTITY_FILE', `${source}: no age identity (AGE-SECRET-KEY-1...) found`, {
      hint: 'an identity file has one AGE-SECRET-KEY-1... per line, as written by `tandem-primary init` or `age-keygen`',
    });
  }
  return identities;
}

export function parseRecipientFile(text: string, source: string): string[] {
  const recipients: string[] = [];
  for (const { line, no } of keyFileLines(text)) {
    const shape = classify(line);
    if (shape !== 'recipient') {
      throw new TandemError('config', 'AGE_BAD_RECIPIENT_FILE', `${source}: line ${no}: ${expectation('recipient', shape)}`, {
        hint:
          shape === 'identity'
            ? 'give the primary only the public recipient (age1...); `age-keygen -y <identity file>` prints it. Keep the secret key off the primary.'
            : 'a recipient file has one age1... public key per line',
      });
    }
    recipients.push(line);
  }
  if (recipients.length === 0) {
    throw new TandemError('config', 'AGE_BAD_RECIPIENT_FILE', `${source}: no age recipient (age1...) found`, {
      hint: 'a recipient file has one age1... public key per line',
    });
  }
  return recipients;
}
