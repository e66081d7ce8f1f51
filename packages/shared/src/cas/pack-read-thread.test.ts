import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PackReadError, PackReadThread } from '../chunk-verifier-thread.js';
import { generateAgeKeyPair } from '../crypto/age/index.js';
import { isTandemError } from '../errors.js';
import { DirFilestore } from '../filestore/dir-filestore.js';
import { filesKeyFromIdentity } from './files-key.js';
import { objectId, objectKey } from './object-id.js';
import { fetchPackLocal, MAX_PACK_STORED } from './pack-fetch.js';
import { blobAt, openPackPieces, sealPack } from './pack.js';

const dir = mkdtempSync(join(tmpdir(), 'tandem-pack-read-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();

async function reason(p: Promise<unknown>): Promise<PackReadError['reason']> {
  try {
    await p;
  } catch (err) {
    if (err instanceof PackReadError) return err.reason;
    throw err;
  }
  throw new Error('expected the read to fail');
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isTandemError(err)) return err.code;
    throw err;
  }
  return 'no error';
}

describe('PackReadThread: packs of a directory filestore read and hashed on a second thread', () => {
  it('reads a file whole with its SHA-256, and reuses its buffers once released', async () => {
    const r = new PackReadThread(2);
    try {
      const files = [randomBytes(3 << 20), randomBytes(13 << 20), randomBytes(1), Buffer.alloc(0)];
      for (const [i, data] of files.entries()) {
        const p = join(dir, `f${i}`);
        writeFileSync(p, data);
        const got = await r.read(p, data.length);
        expect(got.bytes.equals(data)).toBe(true);
        expect(got.sha256.equals(sha256(data))).toBe(true);
        r.release(got.bytes);
      }
      // 3 MiB fits the first buffer (12 MiB); 13 MiB needs a larger one, which then serves the rest.
      expect(r.allocated).toBe(2);
    } finally {
      await r.close();
    }
  });

  it('holds at most `max` buffers: a read waits until one is released', async () => {
    const r = new PackReadThread(1);
    try {
      const a = join(dir, 'a');
      const b = join(dir, 'b');
      writeFileSync(a, randomBytes(1000));
      writeFileSync(b, randomBytes(2000));
      const first = await r.read(a, 1000);
      let second = false;
      const p = r.read(b, 2000).then((x) => {
        second = true;
        return x;
      });
      await new Promise((res) => setTimeout(res, 100));
      expect(second).toBe(false);
      r.release(first.bytes);
      const got = await p;
      expect(got.bytes.length).toBe(2000);
      r.release(got.bytes);
    } finally {
      await r.close();
    }
  });

  it('refuses what is not the object the index lists: missing, not a file (a directory, a FIFO), shorter, longer', async () => {
    const r = new PackReadThread(2);
    try {
      const data = randomBytes(100_000);
      const p = join(dir, 'sized');
      writeFileSync(p, data);
      expect(await reason(r.read(join(dir, 'nope'), 10))).toEqual({ missing: true });
      mkdirSync(join(dir, 'adir'));
      expect(await reason(r.read(join(dir, 'adir'), 10))).toEqual({ notFile: true });
      // A FIFO opens at once and is refused; the thread is not left waiting for a writer.
      execFileSync('mkfifo', [join(dir, 'afifo')]);
      expect(await reason(r.read(join(dir, 'afifo'), 10))).toEqual({ notFile: true });
      expect(await reason(r.read(p, data.length + 1))).toEqual({ size: data.length });
      expect(await reason(r.read(p, data.length - 1))).toEqual({ size: data.length });
      // After refusals the pool still serves reads.
      const ok = await r.read(p, data.length);
      expect(ok.sha256.equals(sha256(data))).toBe(true);
      r.release(ok.bytes);
    } finally {
      await r.close();
    }
  });
});

describe('fetchPackLocal + openPackPieces: the digest from the reading thread decides', () => {
  const site = generateAgeKeyPair();
  const filesKey = filesKeyFromIdentity(generateAgeKeyPair().identity, 'files.agekey');
  const root = join(dir, 'store');
  mkdirSync(root, { recursive: true });
  const fs = new DirFilestore(root);
  const label = 'set X: files artifact';

  it('opens an intact pack; names a missing, swapped, altered or oversized one as the index would', async () => {
    const data = randomBytes(200_000);
    const pack = await sealPack([{ id: objectId(filesKey.hmacKey, data), data }], { hmacKey: filesKey.hmacKey, recipients: [site.recipient] });
    const r = new PackReadThread(2);
    try {
      expect(await codeOf(fetchPackLocal(fs, r, 's1', pack.info, { label }))).toBe('OBJECT_MISSING');
      await fs.putBuffer(objectKey('s1', pack.info.id), pack.stored);
      const got = await fetchPackLocal(fs, r, 's1', pack.info, { label });
      const plain = await openPackPieces([got.bytes], pack.info, { identities: [site.identity], label, sha256: got.sha256 });
      r.release(got.bytes);
      const joined = Buffer.concat(plain.pieces);
      expect(blobAt(joined, { id: objectId(filesKey.hmacKey, data), offset: 0, length: data.length }, filesKey.hmacKey, label).equals(data)).toBe(true);

      // One byte altered: same size, the thread's SHA-256 does not match the signed one.
      const altered = Buffer.from(pack.stored);
      altered[altered.length >> 1]! ^= 1;
      await fs.putBuffer(objectKey('s1', pack.info.id), altered);
      const bad = await fetchPackLocal(fs, r, 's1', pack.info, { label });
      expect(await codeOf(openPackPieces([bad.bytes], pack.info, { identities: [site.identity], label, sha256: bad.sha256 }))).toBe('OBJECT_CHECKSUM');
      r.release(bad.bytes);

      await fs.putBuffer(objectKey('s1', pack.info.id), pack.stored.subarray(1));
      expect(await codeOf(fetchPackLocal(fs, r, 's1', pack.info, { label }))).toBe('OBJECT_SIZE');
      expect(await codeOf(fetchPackLocal(fs, r, 's1', { ...pack.info, size: MAX_PACK_STORED + 1 }, { label }))).toBe('OBJECT_SIZE');
      // A symlink where the object should be is read as get reads it (followed), and checked the same.
      const target = join(dir, 'elsewhere');
      writeFileSync(target, pack.stored);
      rmSync(fs.localPath(objectKey('s1', pack.info.id)));
      symlinkSync(target, fs.localPath(objectKey('s1', pack.info.id)));
      const viaLink = await fetchPackLocal(fs, r, 's1', pack.info, { label });
      expect(viaLink.sha256.toString('hex')).toBe(pack.info.sha256);
      r.release(viaLink.bytes);
    } finally {
      await r.close();
    }
  });
});
