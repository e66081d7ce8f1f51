import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants, deflateRawSync, inflateRawSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { createAgeEncryptStream, formatIdentityFile, generateAgeKeyPair } from '../crypto/age/index.js';
import { isTandemError } from '../errors.js';
import { filesKeyFromIdentity } from './files-key.js';
import { objectId } from './object-id.js';
import { MAX_PACK_PLAIN, blobAt, openPack, openPackPieces, packId, runTransform, sealPack, sealPackStream, type PackInfo } from './pack.js';

const site = generateAgeKeyPair();
const filesKey = filesKeyFromIdentity(generateAgeKeyPair().identity, 'files.agekey');
const LABEL = 'set X: files artifact';
const dir = mkdtempSync(join(tmpdir(), 'tandem-pack-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const blob = (data: Buffer, key = filesKey.hmacKey) => ({ id: objectId(key, data), data });
/** Text that deflates well, like HTML, CSS or JSON among the files of a site. */
const text = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => `<p class="item">line ${i % 97} of the page</p>\n`).join('')).subarray(0, n);
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The code of what `fn` throws (a TandemError). */
async function codeOf(fn: () => Promise<unknown> | unknown): Promise<string> {
  try {
    await fn();
  } catch (err) {
    if (isTandemError(err)) return err.code;
    throw err;
  }
  throw new Error('did not throw');
}

describe('packs', () => {
  const cases = [
    { what: 'encrypted, compressible', data: () => [text(300_000), text(5_000), Buffer.from('tiny')], encrypted: true, c: 'deflate' },
    { what: 'encrypted, incompressible', data: () => [randomBytes(200_000), randomBytes(70_000), randomBytes(1)], encrypted: true, c: 'none' },
    { what: 'unencrypted, compressible', data: () => [text(100_000), text(3_000)], encrypted: false, c: 'deflate' },
    { what: 'unencrypted, incompressible', data: () => [randomBytes(100_000)], encrypted: false, c: 'none' },
  ] as const;

  it.each(cases)('round trip: $what', async ({ data, encrypted, c }) => {
    const blobs = data().map((d) => blob(d));
    const plain = Buffer.concat(blobs.map((b) => b.data));
    const sealed = await sealPack(blobs, { hmacKey: filesKey.hmacKey, recipients: encrypted ? [site.recipient] : null });
    expect(sealed.info).toMatchObject({ id: packId(filesKey.hmacKey, blobs.map((b) => b.id)), size: sealed.stored.length, sha256: sha256(sealed.stored), plain: plain.length, c });
    if (c === 'deflate') expect(sealed.stored.length).toBeLessThan(plain.length / 2);
    if (!encrypted && c === 'none') expect(sealed.stored.equals(plain)).toBe(true);
    // Never the plaintext in the stored bytes of an encrypted pack.
    if (encrypted) expect(sealed.stored.includes(plain.subarray(0, 64))).toBe(false);
    const opened = await openPack(sealed.stored, sealed.info, { identities: encrypted ? [site.identity] : null, label: LABEL });
    expect(opened.equals(plain)).toBe(true);
    sealed.blobs.forEach((b, i) => expect(blobAt(opened, b, filesKey.hmacKey, LABEL).equals(blobs[i]!.data)).toBe(true));
  });

  it.each(cases)('sealed as it streams: $what', async ({ data, encrypted, c }) => {
    const blobs = data().map((d) => blob(d));
    const plain = Buffer.concat(blobs.map((b) => b.data));
    const sealing = sealPackStream(blobs.map((b) => b.id), plain, { hmacKey: filesKey.hmacKey, recipients: encrypted ? [site.recipient] : null });
    expect(() => sealing.info()).toThrow(/before its stored bytes were all read/);
    const parts: Buffer[] = [];
    for await (const p of sealing.stream as AsyncIterable<Buffer>) parts.push(p);
    const stored = Buffer.concat(parts);
    expect(sealing.info()).toEqual({ id: packId(filesKey.hmacKey, blobs.map((b) => b.id)), size: stored.length, sha256: sha256(stored), plain: plain.length, c });
    const opened = await openPackPieces([stored], sealing.info(), { identities: encrypted ? [site.identity] : null, label: LABEL });
    expect(Buffer.concat(opened.pieces).equals(plain)).toBe(true);
  });

  it('a pack id depends on its blobs, their order, the key and the attempt', () => {
    const ids = [blob(Buffer.from('a')).id, blob(Buffer.from('b')).id];
    const id = packId(filesKey.hmacKey, ids);
    expect(packId(filesKey.hmacKey, [...ids].reverse())).not.toBe(id);
    expect(packId(randomBytes(32), ids)).not.toBe(id);
    expect(packId(filesKey.hmacKey, ids, 1)).not.toBe(id);
    expect(packId(filesKey.hmacKey, ids, 1)).not.toBe(packId(filesKey.hmacKey, ids, 2));
  });

  it('holds at most MAX_PACK_PLAIN bytes', async () => {
    await expect(sealPack([blob(Buffer.alloc(MAX_PACK_PLAIN / 2)), blob(Buffer.alloc(MAX_PACK_PLAIN / 2 + 1, 1))], { hmacKey: filesKey.hmacKey, recipients: null })).rejects.toThrow(/over the 16777216 limit/);
  });

  it('decrypts with the real age CLI (age -d -i), stored or deflated inside', async () => {
    const identityFile = join(dir, 'backup.agekey');
    writeFileSync(identityFile, formatIdentityFile(site), { mode: 0o600 });
    for (const data of [randomBytes(150_000), text(150_000)]) {
      const sealed = await sealPack([blob(data)], { hmacKey: filesKey.hmacKey, recipients: [site.recipient] });
      const byAge = execFileSync('age', ['-d', '-i', identityFile], { input: sealed.stored, maxBuffer: 64 << 20 });
      expect((sealed.info.c === 'deflate' ? inflateRawSync(byAge) : byAge).equals(data)).toBe(true);
    }
  });

  describe('a stored pack is checked before a byte of it is decrypted', () => {
    it('a flipped stored byte: OBJECT_CHECKSUM, not a decryption error', async () => {
      const sealed = await sealPack([blob(randomBytes(100_000))], { hmacKey: filesKey.hmacKey, recipients: [site.recipient] });
      for (const at of [0, 40, Math.floor(sealed.stored.length / 2), sealed.stored.length - 1]) {
        const bad = Buffer.from(sealed.stored);
        bad[at]! ^= 0x01;
        // age would refuse each of these bytes too (header, MAC, payload): the code says which check ran first.
        expect(await codeOf(() => openPack(bad, sealed.info, { identities: [site.identity], label: LABEL }))).toBe('OBJECT_CHECKSUM');
      }
      // Not even with an identity that cannot decrypt it: the checksum comes first.
      const bad = Buffer.from(sealed.stored);
      bad[100]! ^= 0x80;
      await expect(openPack(bad, sealed.info, { identities: [generateAgeKeyPair().identity], label: LABEL })).rejects.toThrow(
        new RegExp(`^${LABEL}: object ${sealed.info.id} does not match the SHA-256 in the signed index: it was altered or swapped$`),
      );
    });

    it('the wrong size: OBJECT_SIZE, longer or shorter', async () => {
      const sealed = await sealPack([blob(randomBytes(10_000))], { hmacKey: filesKey.hmacKey, recipients: [site.recipient] });
      const o = { identities: [site.identity], label: LABEL };
      expect(await codeOf(() => openPack(sealed.stored.subarray(0, sealed.stored.length - 1), sealed.info, o))).toBe('OBJECT_SIZE');
      expect(await codeOf(() => openPack(Buffer.concat([sealed.stored, Buffer.from([0])]), sealed.info, o))).toBe('OBJECT_SIZE');
      await expect(openPack(Buffer.alloc(0), sealed.info, o)).rejects.toThrow(`object ${sealed.info.id} has 0 bytes, the signed index says ${sealed.info.size} (truncated or replaced)`);
    });

    it('a pack sealed with another files key: it opens, and every blob is refused (OBJECT_BLOB_MISMATCH)', async () => {
      const other = filesKeyFromIdentity(generateAgeKeyPair().identity, 'another files.agekey');
      const blobs = [blob(randomBytes(5_000), other.hmacKey), blob(text(5_000), other.hmacKey)];
      // Same recipients, so it decrypts: only the blob ids, keyed by the files key, tell.
      const sealed = await sealPack(blobs, { hmacKey: other.hmacKey, recipients: [site.recipient] });
      const plain = await openPack(sealed.stored, sealed.info, { identities: [site.identity], label: LABEL });
      for (const b of sealed.blobs) {
        expect(blobAt(plain, b, other.hmacKey, LABEL).length).toBe(b.length);
        expect(await codeOf(() => blobAt(plain, b, filesKey.hmacKey, LABEL))).toBe('OBJECT_BLOB_MISMATCH');
      }
      expect(await codeOf(() => blobAt(plain, { ...sealed.blobs[1]!, length: sealed.blobs[1]!.length + 1 }, other.hmacKey, LABEL))).toBe('OBJECT_BLOB_RANGE');
    });

    it('the wrong recipient: OBJECT_DECRYPT once the checksum matched', async () => {
      const sealed = await sealPack([blob(randomBytes(1_000))], { hmacKey: filesKey.hmacKey, recipients: [generateAgeKeyPair().recipient] });
      expect(await codeOf(() => openPack(sealed.stored, sealed.info, { identities: [site.identity], label: LABEL }))).toBe('OBJECT_DECRYPT');
    });
  });

  describe('inflated to exactly the signed plain size', () => {
    /**
     * A raw deflate stream of `gib` GiB of zeros in a few MB, made without deflating gigabytes: one
     * MiB of zeros compressed and flushed (byte-aligned, no back reference before it), repeated, and
     * an empty final block.
     */
    function zeroBomb(gib: number): { bomb: Buffer; block: Buffer; final: Buffer } {
      const block = deflateRawSync(Buffer.alloc(1 << 20), { level: 9, finishFlush: constants.Z_FULL_FLUSH });
      const final = Buffer.from([0x03, 0x00]);
      return { bomb: Buffer.concat([...Array.from({ length: gib * 1024 }, () => block), final]), block, final };
    }

    it('a deflate bomb whose hand-made index entry says it is small: refused, never inflated past that size', async () => {
      const { bomb, block, final } = zeroBomb(4);
      expect(bomb.length).toBeLessThan(8 * 1024 * 1024);
      // The bomb is what it claims: each block a MiB of zeros, the blocks one stream.
      expect(inflateRawSync(Buffer.concat([block, block, block, final])).equals(Buffer.alloc(3 << 20))).toBe(true);
      const stored = await runTransform(createAgeEncryptStream([site.recipient]), bomb);
      const info: PackInfo = { id: objectId(filesKey.hmacKey, Buffer.from('bomb')), size: stored.length, sha256: sha256(stored), plain: 1000, c: 'deflate' };
      const rss = process.memoryUsage().rss;
      const t0 = performance.now();
      await expect(openPack(stored, info, { identities: [site.identity], label: LABEL })).rejects.toMatchObject({ code: 'OBJECT_DECOMPRESS', message: expect.stringContaining('does not inflate to its signed plain size 1000') });
      // 4 GiB inflated would take seconds and gigabytes; stopping at the signed size, neither.
      expect(performance.now() - t0).toBeLessThan(2_000);
      expect(process.memoryUsage().rss - rss).toBeLessThan(256 * 1024 * 1024);
    });

    it('a plaintext that inflates short of, or past, its signed size: refused', async () => {
      const data = text(50_000);
      const sealed = await sealPack([blob(data)], { hmacKey: filesKey.hmacKey, recipients: null });
      expect(sealed.info.c).toBe('deflate');
      const o = { identities: null, label: LABEL };
      expect(await codeOf(() => openPack(sealed.stored, { ...sealed.info, plain: data.length + 1 }, o))).toBe('OBJECT_PLAIN_SIZE');
      expect(await codeOf(() => openPack(sealed.stored, { ...sealed.info, plain: data.length - 1 }, o))).toBe('OBJECT_DECOMPRESS');
      // Stored as is: the plain size must be the stored size.
      const raw = randomBytes(2_000);
      const plainInfo: PackInfo = { id: objectId(filesKey.hmacKey, raw), size: raw.length, sha256: sha256(raw), plain: 1_999, c: 'none' };
      expect(await codeOf(() => openPack(raw, plainInfo, o))).toBe('OBJECT_PLAIN_SIZE');
      // Not deflate at all, but said to be.
      const junk = deflateRawSync(randomBytes(10)).subarray(0, 3);
      expect(await codeOf(() => openPack(junk, { ...plainInfo, size: junk.length, sha256: sha256(junk), plain: 10, c: 'deflate' }, o))).toBe('OBJECT_DECOMPRESS');
    });
  });
});
