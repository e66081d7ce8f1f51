/**
 * The age v1 header: the intro line, one X25519 stanza per recipient wrapping the file key, and
 * the MAC line. Written in one go when encrypting; read incrementally when decrypting, because it
 * arrives in pieces of any size at the front of the ciphertext stream.
 */
import { createHmac, diffieHellman, generateKeyPairSync, timingSafeEqual } from 'node:crypto';
import { TandemError } from '../../errors.js';
import { rawPublic, recipientFromString, x25519PublicKey, type X25519Identity } from './keys.js';
import { ARMOR_BEGIN, EMPTY, TAG_SIZE, aeadOpen, aeadSeal, hkdf } from './primitives.js';

const INTRO = 'age-encryption.org/v1\n';
const INTRO_BYTES = Buffer.from(INTRO, 'latin1');
const X25519_INFO = 'age-encryption.org/v1/X25519';

export const FILE_KEY_SIZE = 16;
const BODY_COLUMNS = 64;
/**
 * The header has no length field, so a garbage stream could make us buffer forever looking for the
 * "---" line. A real header is ~150 bytes per recipient; 1 MiB is thousands of recipients.
 */
const MAX_HEADER_SIZE = 1024 * 1024;
const ZERO_NONCE = Buffer.alloc(12);

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

export function buildHeader(recipients: string[], fileKey: Buffer): Buffer {
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

interface Stanza {
  type: string;
  args: string[];
  body: Buffer;
}

/**
 * Reads the header at the front of a ciphertext stream, fed in pieces of any size, and unwraps the
 * file key with one of `identities`. Errors are 'integrity' TandemErrors (AGE_BAD_HEADER,
 * AGE_NO_IDENTITY_MATCH) whose messages start with `prefix`.
 */
export class HeaderReader {
  private headerBuf: Buffer = EMPTY;
  private headerLen = 0;
  /** Where the first not yet checked header line starts (0: the intro is not complete yet). */
  private headerLineStart = 0;
  private headerLineNo = 2;

  constructor(
    private readonly identities: X25519Identity[],
    private readonly prefix: string,
  ) {}

  /** Header bytes held back so far, waiting for the rest of the header. */
  get received(): number {
    return this.headerLen;
  }

  private fail(code: string, message: string, hint?: string): TandemError {
    return new TandemError('integrity', code, this.prefix + message, hint === undefined ? {} : { hint });
  }

  /**
   * Accumulates header bytes; once complete, verifies it and returns the file key and the bytes
   * that follow the header.
   */
  feed(data: Buffer): { fileKey: Buffer; rest: Buffer } | undefined {
    // Usually the whole header is in the first buffer and is parsed in place. Otherwise the bytes
    // so far are copied into headerBuf: the producer may reuse `data` once we return, and growing
    // by doubling keeps a header trickling in one byte at a time linear rather than quadratic.
    let acc = data;
    if (this.headerLen > 0) {
      this.appendHeader(data);
      acc = this.headerBuf.subarray(0, this.headerLen);
    }
    const opened = this.scanHeader(acc);
    if (opened === undefined && acc === data) this.appendHeader(data);
    return opened;
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

  private scanHeader(acc: Buffer): { fileKey: Buffer; rest: Buffer } | undefined {
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
    return { fileKey: this.openHeader(header, lineStart), rest };
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
}
