import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { TandemError } from '../../errors.js';
import { rejectedWith } from '../../testing/helpers.js';
import { OFFTHREAD_DECRYPT_MIN_BYTES, createAgeDecryptStream, createAgeDecryptStreamFor, createAgeEncryptStream, generateAgeKeyPair } from './index.js';

const dir = mkdtempSync(join(tmpdir(), 'tandem-age-offthread-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function collect(input: Buffer, stage: Duplex, piece = 1 << 20): Promise<Buffer> {
  const parts: Buffer[] = [];
  const pieces = function* () {
    for (let i = 0; i < input.length; i += piece) yield input.subarray(i, i + piece);
  };
  await pipeline(Readable.from(pieces()), stage, new Writable({ write: (c: Buffer, _e, cb) => (parts.push(c), cb()) }));
  return Buffer.concat(parts);
}

const seal = (plain: Buffer, recipient: string) => collect(plain, createAgeEncryptStream([recipient]));
const offthread = (identities: string[], size: number) => createAgeDecryptStreamFor(identities, { label: 'set X: files artifact', size });

describe('age decryption on a worker thread', () => {
  const kp = generateAgeKeyPair();
  const plain = randomBytes(OFFTHREAD_DECRYPT_MIN_BYTES + 3 * 65536 + 17);

  it('is used for large artifacts only, and decrypts what the age CLI encrypted, whatever the piece sizes', async () => {
    expect(createAgeDecryptStreamFor([kp.identity], { size: 1000 }).constructor.name).not.toMatch(/Worker/);
    expect(offthread([kp.identity], plain.length).constructor.name).toMatch(/Worker/);
    const idFile = join(dir, 'id.txt');
    writeFileSync(idFile, `${kp.identity}\n`, { mode: 0o600 });
    const inFile = join(dir, 'plain.bin');
    writeFileSync(inFile, plain);
    const sealed = execFileSync('age', ['-r', kp.recipient, inFile], { maxBuffer: 1 << 30 });
    for (const piece of [1 << 20, 100_000, 4 << 20]) {
      expect((await collect(sealed, offthread([kp.identity], sealed.length), piece)).equals(plain)).toBe(true);
    }
  });

  it('fails as the in-thread stream does: another recipient, a flipped byte, a truncated file', async () => {
    const sealed = await seal(plain, kp.recipient);
    const other = generateAgeKeyPair();
    const cases: Array<[string, Buffer, string[]]> = [
      ['another recipient', sealed, [other.identity]],
      ['a flipped byte', Buffer.from(sealed).fill(0x55, 5_000_000, 5_000_001), [kp.identity]],
      ['a truncated file', sealed.subarray(0, sealed.length - 70_000), [kp.identity]],
    ];
    for (const [what, input, ids] of cases) {
      const off = await rejectedWith(collect(input, offthread(ids, input.length)));
      const own = await rejectedWith(collect(input, createAgeDecryptStream(ids, { label: 'set X: files artifact' })));
      expect(off, what).toBeInstanceOf(TandemError);
      expect({ kind: off.kind, code: off.code, message: off.message, hint: off.hint }, what).toEqual({ kind: own.kind, code: own.code, message: own.message, hint: own.hint });
    }
  });

  it('holds no more than a few MiB when its reader is slow', async () => {
    const sealed = await seal(plain, kp.recipient);
    const stage = offthread([kp.identity], sealed.length);
    let fed = 0;
    const source = Readable.from(
      (function* () {
        for (let i = 0; i < sealed.length; i += 1 << 20) {
          fed = i;
          yield sealed.subarray(i, i + (1 << 20));
        }
      })(),
    );
    const parts: Buffer[] = [];
    let most = 0;
    const slow = new Writable({
      highWaterMark: 1 << 20,
      write: (c: Buffer, _e, cb) => {
        parts.push(c);
        const got = parts.reduce((n, p) => n + p.length, 0);
        most = Math.max(most, fed - got);
        setTimeout(cb, 2);
      },
    });
    await pipeline(source, stage, slow);
    expect(Buffer.concat(parts).equals(plain)).toBe(true);
    expect(most).toBeLessThan(12 << 20); // read ahead of what was written: buffers of 1 MiB, a few in flight
  });

  it('refuses a malformed identity at once, in this thread', () => {
    expect(() => offthread(['AGE-SECRET-KEY-1NOPE'], plain.length)).toThrow(TandemError);
  });
});
