/**
 * age v1 (https://age-encryption.org/v1), X25519 recipients only, built on node:crypto natives.
 *
 * Why not the age-encryption npm package: its payload cipher is pure JS (~90 MB/s), which would make
 * encryption the bottleneck of every backup. OpenSSL's chacha20-poly1305 runs well over 1 GB/s per
 * 64 KiB chunk here, so the work in this file is mostly about not getting in its way: chunks are
 * sealed/opened straight out of the caller's buffers, and only the partial chunk left at the end of
 * each incoming buffer is copied.
 *
 * Output is byte-for-byte the format the `age` CLI reads and writes; the tests prove it both ways.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { bech32 } from '@scure/base';
import { TandemError } from '../errors.js';

export interface AgeKeyPair {
  /** "AGE-SECRET-KEY-1..." (uppercase bech32): the standby's secret. */
  identity: string;
  /** "age1..." (lowercase bech32): what the primary encrypts to. */
  recipient: string;
}

const INTRO = 'age-encryption.org/v1\n';
const INTRO_BYTES = Buffer.from(INTRO, 'latin1');
const ARMOR_BEGIN = '-----BEGIN AGE ENCRYPTED FILE-----';
const X25519_INFO = 'age-encryption.org/v1/X25519';
const IDENTITY_HRP = 'AGE-SECRET-KEY-';
const RECIPIENT_HRP = 'age';

const FILE_KEY_SIZE = 16;
const PAYLOAD_NONCE_SIZE = 16;
const TAG_SIZE = 16;
/** Plaintext bytes per STREAM chunk (spec: 64 KiB). */
const CHUNK_SIZE = 64 * 1024;
/** Ciphertext bytes per full chunk. */
const ENC_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE;
const BODY_COLUMNS = 64;
/**
 * The header has no length field, so a garbage stream could make us buffer forever looking for the
 * "---" line. A real header is ~150 bytes per recipient; 1 MiB is thousands of recipients.
 */
const MAX_HEADER_SIZE = 1024 * 1024;
const ZERO_NONCE = Buffer.alloc(12);
const EMPTY = Buffer.alloc(0);

// PKCS#8 wrapping for a raw X25519 private key (RFC 8410). JWK import would also work but insists on
// the public "x" member, which we would have to compute first; DER takes the scalar alone.
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

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

interface X25519Identity {
  privateKey: KeyObject;
  /** Raw 32-byte public key: part of the HKDF salt when unwrapping. */
  publicRaw: Buffer;
  recipient: string;
}

function x25519PrivateKey(raw: Buffer): KeyObject {
  return createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
}

function x25519PublicKey(raw: Buffer): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: raw.toString('base64url') }, format: 'jwk' });
}

function rawPublic(key: KeyObject): Buffer {
  const jwk = (key.type === 'private' ? createPublicKey(key) : key).export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new TandemError('internal', 'AGE_KEY_EXPORT', 'X25519 key export has no x');
  return Buffer.from(jwk.x, 'base64url');
}

function encodeRecipient(publicRaw: Buffer): string {
  return bech32.encode(RECIPIENT_HRP, bech32.toWords(publicRaw), false);
}

function identityFromString(identity: string, where: string): X25519Identity {
  const raw = decodeBech32(identity.trim(), IDENTITY_HRP);
  if (!raw) {
    throw new TandemError('config', 'AGE_BAD_IDENTITY', `${where}: ${expectation('identity', classify(identity.trim()))}`);
  }
  const privateKey = x25519PrivateKey(raw);
  const publicRaw = rawPublic(privateKey);
  return { privateKey, publicRaw, recipient: encodeRecipient(publicRaw) };
}

function recipientFromString(recipient: string, where: string): { publicKey: KeyObject; publicRaw: Buffer } {
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

// ---------------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------------

function hkdf(ikm: Buffer, salt: Buffer, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, 32));
}

function b64(data: Buffer): string {
  return data.toString('base64').replace(/=+$/, '');
}

/**
 * Strict unpadded base64, as the spec requires. Buffer.from(.., 'base64') silently skips bad
 * characters and accepts padding and non-zero trailing bits; each of those would let two different
 * header encodings decode to the same bytes, so reject anything that does not re-encode identically.
 */
function unb64(s: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*$/.test(s) || s.length % 4 === 1) return undefined;
  const out = Buffer.from(s, 'base64');
  return b64(out) === s ? out : undefined;
}

/** Stanza body: base64 wrapped at 64 columns, always ending with a line shorter than 64. */
function wrapBody(body: Buffer): string {
  const s = b64(body);
  let out = '';
  for (let i = 0; i <= s.length; i += BODY_COLUMNS) out += s.slice(i, i + BODY_COLUMNS) + '\n';
  return out;
}

function aeadSeal(key: Buffer, nonce: Buffer, plaintext: Buffer): Buffer {
  const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_SIZE });
  const ct = c.update(plaintext);
  c.final();
  return Buffer.concat([ct, c.getAuthTag()]);
}

/** Returns undefined if authentication fails. Plaintext is only returned after final() passed. */
function aeadOpen(key: Buffer, nonce: Buffer, sealed: Buffer): Buffer | undefined {
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

/** STREAM nonce: 11-byte big-endian chunk counter, then the last-chunk flag. */
function setNonce(nonce: Buffer, counter: number, last: boolean): void {
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
class ChunkSplitter {
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

// ---------------------------------------------------------------------------------------------
// Encrypt
// ---------------------------------------------------------------------------------------------

function buildHeader(recipients: string[], fileKey: Buffer): Buffer {
  let header = INTRO;
  for (const [i, r] of recipients.entries()) {
    const { publicKey, publicRaw } = recipientFromString(r, `age recipient #${i + 1}`);
    const eph = generateKeyPairSync('x25519');
    const ephShare = rawPublic(eph.publicKey);
    const shared = diffieHellman({ privateKey: eph.privateKey, publicKey });
    const wrapKey = hkdf(shared, Buffer.concat([ephShare, publicRaw]), X25519_INFO);
    header += `-> X25519 ${b64(ephShare)}\n${wrapBody(aeadSeal(wrapKey, ZERO_NONCE, fileKey))}`;
  }
  header += '---';
  const mac = createHmac('sha256', hkdf(fileKey, EMPTY, 'header')).update(header, 'latin1').digest();
  return Buffer.from(`${header} ${b64(mac)}\n`, 'latin1');
}

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

// ---------------------------------------------------------------------------------------------
// Decrypt
// ---------------------------------------------------------------------------------------------

interface Stanza {
  type: string;
  args: string[];
  body: Buffer;
}

type DecryptState = 'header' | 'nonce' | 'payload' | 'done' | 'failed';

class AgeDecryptStream extends Transform {
  private readonly identities: X25519Identity[];
  private readonly prefix: string;
  private state: DecryptState = 'header';
  private headerBuf: Buffer = EMPTY;
  private headerLen = 0;
  /** Where the first not yet checked header line starts (0: the intro is not complete yet). */
  private headerLineStart = 0;
  private headerLineNo = 2;
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
    this.identities = identities.map((id, i) => identityFromString(id, `age identity #${i + 1}`));
    this.prefix = label ? `${label}: ` : '';
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
      const rest = this.feedHeader(data);
      if (rest === undefined) return;
      data = rest;
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

  /** Accumulates header bytes; once complete, verifies it and returns the bytes that follow it. */
  private feedHeader(data: Buffer): Buffer | undefined {
    // Usually the whole header is in the first buffer and is parsed in place. Otherwise the bytes
    // so far are copied into headerBuf: the producer may reuse `data` once we return, and growing
    // by doubling keeps a header trickling in one byte at a time linear rather than quadratic.
    let acc = data;
    if (this.headerLen > 0) {
      this.appendHeader(data);
      acc = this.headerBuf.subarray(0, this.headerLen);
    }
    const rest = this.scanHeader(acc);
    if (rest === undefined && acc === data) this.appendHeader(data);
    return rest;
  }

  private appendHeader(data: Buffer): void {
    const need = this.headerLen + data.length;
    if (need > this.headerBuf.length) {
      const grown = Buffer.allocUnsafe(Math.max(need, 2 * this.headerBuf.length, 1024));
      this.headerBuf.copy(grown, 0, 0, this.headerLen);
      this.headerBuf = grown;
    }
    data.copy(this.headerBuf, this.headerLen);
    this.headerLen = need;
  }

  private headerIncomplete(acc: Buffer): undefined {
    if (acc.length > MAX_HEADER_SIZE) throw this.fail('AGE_BAD_HEADER', `no end of header in the first ${MAX_HEADER_SIZE} bytes`);
    return undefined;
  }

  private scanHeader(acc: Buffer): Buffer | undefined {
    // Say "not an age file" as soon as the first bytes disagree rather than after 1 MiB of scanning.
    const n = Math.min(acc.length, INTRO_BYTES.length);
    if (!acc.subarray(0, n).equals(INTRO_BYTES.subarray(0, n))) {
      const armored = acc.subarray(0, ARMOR_BEGIN.length).toString('latin1') === ARMOR_BEGIN;
      throw this.fail(
        'AGE_BAD_HEADER',
        armored
          ? 'ASCII-armored age file: tandem reads the binary format only (decode with `age -d` first)'
          : 'not an age v1 file (it does not start with "age-encryption.org/v1")',
      );
    }
    // Walk complete lines as they arrive. Each must already look like a stanza, body or MAC line,
    // so damage is reported as a bad header at once, not as "truncated" after reading to the end.
    // The MAC line is the first one starting with "---": stanza lines start with "->" and body
    // lines are base64, so nothing earlier can be mistaken for it.
    let lineStart = this.headerLineStart;
    for (;;) {
      if (lineStart === 0) lineStart = INTRO_BYTES.length; // the intro was checked above
      if (acc.length - lineStart >= 3 && acc.toString('latin1', lineStart, lineStart + 3) === '---') break;
      const nl = acc.indexOf(0x0a, lineStart);
      if (nl < 0) {
        this.headerLineStart = acc.length >= INTRO_BYTES.length ? lineStart : 0;
        return this.headerIncomplete(acc);
      }
      const line = acc.toString('latin1', lineStart, nl);
      if (!line.startsWith('-> ') && !/^[A-Za-z0-9+/]{0,64}$/.test(line)) {
        throw this.fail('AGE_BAD_HEADER', `malformed age header: line ${this.headerLineNo} is not a stanza, body or MAC line`);
      }
      this.headerLineNo++;
      lineStart = nl + 1;
    }
    this.headerLineStart = lineStart;
    const end = acc.indexOf(0x0a, lineStart);
    if (end < 0) {
      // "--- " + 43 base64 chars + "\n": a longer unterminated line is already wrong.
      if (acc.length - lineStart > 48) throw this.fail('AGE_BAD_HEADER', 'malformed header MAC line');
      return this.headerIncomplete(acc);
    }
    const header = acc.subarray(0, end + 1);
    const rest = acc.subarray(end + 1);
    this.fileKey = this.openHeader(header, lineStart);
    this.state = 'nonce';
    return rest;
  }

  private parseHeader(header: Buffer, macLineStart: number): { stanzas: Stanza[]; mac: Buffer } {
    const bad = (why: string): TandemError => this.fail('AGE_BAD_HEADER', `malformed age header: ${why}`);
    const text = header.toString('latin1');
    if (!/^[\x20-\x7e\n]*$/.test(text)) throw bad('non-printable bytes');
    const lines = text.slice(INTRO.length, macLineStart).split('\n');
    lines.pop(); // text before the MAC line ends with "\n"
    const stanzas: Stanza[] = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i++] ?? '';
      if (!line.startsWith('-> ')) throw bad(`line ${i + 1}: expected a "-> " stanza line`);
      const [type, ...args] = line.slice(3).split(' ');
      if (!type || ![type, ...args].every((a) => /^[\x21-\x7e]+$/.test(a))) throw bad(`line ${i + 1}: bad stanza arguments`);
      let body = '';
      for (;;) {
        if (i >= lines.length) throw bad(`stanza "${type}" body is not terminated by a short line`);
        const bl = lines[i++] ?? '';
        if (bl.length > BODY_COLUMNS) throw bad(`line ${i + 1}: stanza body line longer than 64 columns`);
        body += bl;
        if (bl.length < BODY_COLUMNS) break;
      }
      const decoded = unb64(body);
      if (!decoded) throw bad(`stanza "${type}" body is not canonical base64`);
      stanzas.push({ type, args, body: decoded });
    }
    if (stanzas.length === 0) throw bad('no recipient stanzas');
    const macLine = text.slice(macLineStart, -1);
    const mac = macLine.startsWith('--- ') ? unb64(macLine.slice(4)) : undefined;
    if (!mac || mac.length !== 32) throw bad('bad MAC line');
    return { stanzas, mac };
  }

  /** Finds the file key for one of our identities and checks the header MAC with it. */
  private openHeader(header: Buffer, macLineStart: number): Buffer {
    const { stanzas, mac } = this.parseHeader(header, macLineStart);
    const x25519 = stanzas.filter((s) => s.type === 'X25519');
    // Spec: an scrypt stanza must be alone, or a passphrase could silently be combined with keys.
    if (stanzas.some((s) => s.type === 'scrypt') && stanzas.length > 1) {
      throw this.fail('AGE_BAD_HEADER', 'malformed age header: an scrypt stanza must be the only stanza');
    }
    const shares = x25519.map((s) => {
      const share = s.args.length === 1 ? unb64(s.args[0] ?? '') : undefined;
      if (!share || share.length !== 32 || s.body.length !== FILE_KEY_SIZE + TAG_SIZE) {
        // Not "no match": a broken X25519 stanza is a broken file, as in the reference implementation.
        throw this.fail('AGE_BAD_HEADER', 'malformed age header: invalid X25519 stanza');
      }
      return { share, publicKey: x25519PublicKey(share), body: s.body };
    });

    let fileKey: Buffer | undefined;
    search: for (const id of this.identities) {
      for (const s of shares) {
        let shared: Buffer;
        try {
          shared = diffieHellman({ privateKey: id.privateKey, publicKey: s.publicKey });
        } catch (err) {
          // OpenSSL refuses an all-zero shared secret, i.e. a low-order point chosen by an attacker.
          throw new TandemError('integrity', 'AGE_BAD_HEADER', `${this.prefix}malformed age header: invalid X25519 share`, {
            cause: err,
          });
        }
        const wrapKey = hkdf(shared, Buffer.concat([s.share, id.publicRaw]), X25519_INFO);
        fileKey = aeadOpen(wrapKey, ZERO_NONCE, s.body);
        if (fileKey) break search;
      }
    }
    if (!fileKey) {
      const ours = this.identities.map((id) => id.recipient).join(', ');
      if (shares.length === 0) {
        const types = [...new Set(stanzas.map((s) => s.type))].join(', ');
        throw this.fail(
          'AGE_NO_IDENTITY_MATCH',
          `this key cannot decrypt it: it was encrypted to ${types} recipient(s) only, and tandem supports X25519 (age1...) recipients only`,
          `re-encrypt to the X25519 recipient ${ours}`,
        );
      }
      throw this.fail(
        'AGE_NO_IDENTITY_MATCH',
        'this key cannot decrypt it: it was encrypted for another recipient?',
        `this identity's recipient is ${ours}; the primary's recipient file must list it (or the header was damaged)`,
      );
    }
    const expected = createHmac('sha256', hkdf(fileKey, EMPTY, 'header'))
      .update(header.subarray(0, macLineStart + 3))
      .digest();
    if (!timingSafeEqual(expected, mac)) {
      throw this.fail('AGE_BAD_HEADER', 'age header MAC mismatch: the header was altered or corrupted');
    }
    return fileKey;
  }

  private open(sealed: Buffer, last: boolean): Buffer | undefined {
    setNonce(this.nonce, this.counter, last);
    return aeadOpen(this.payloadKey, this.nonce, sealed);
  }

  private openNonFinal(sealed: Buffer): void {
    const pt = this.open(sealed, false);
    if (!pt) {
      // Distinguish "a complete file with junk appended" from a damaged chunk, for the message only.
      const trailing = this.open(sealed, true) !== undefined;
      throw this.fail(
        'AGE_CORRUPT',
        trailing
          ? `unexpected data after the final chunk (chunk ${this.counter})`
          : `chunk ${this.counter} (plaintext offset ${this.counter * CHUNK_SIZE}) failed authentication: the file is corrupt or was tampered with`,
      );
    }
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
          this.headerLen === 0 ? 'empty input where an age file was expected' : 'the age file ends inside its header',
        );
      case 'nonce':
        throw this.fail('AGE_TRUNCATED', 'the age file ends before its payload');
      case 'payload':
        break;
    }
    const rest = this.splitter.rest();
    if (rest.length < TAG_SIZE) {
      throw this.fail(
        'AGE_TRUNCATED',
        rest.length === 0 && this.counter === 0
          ? 'the age file ends before its first chunk'
          : `the age file ends inside chunk ${this.counter}`,
      );
    }
    const pt = this.open(rest, true);
    if (!pt) {
      // A full chunk that only authenticates as non-final means the real final chunk was cut off
      // at a chunk boundary: report that as truncation, and still emit nothing from it.
      if (rest.length === ENC_CHUNK_SIZE && this.open(rest, false)) {
        throw this.fail('AGE_TRUNCATED', `the age file ends after chunk ${this.counter}, before its final chunk`);
      }
      throw this.fail(
        'AGE_CORRUPT',
        `final chunk ${this.counter} failed authentication: the file is truncated, corrupt or was tampered with`,
      );
    }
    if (pt.length === 0 && this.counter > 0) {
      // Spec: only an empty plaintext may end in an empty chunk. Authentic, but not conforming.
      throw this.fail('AGE_CORRUPT', 'empty final chunk after data: not a conforming age file');
    }
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
