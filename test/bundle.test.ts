/**
 * The commands as shipped are bundles (scripts/bundle.mjs). What a bundle could lose that the
 * compiled modules have: files found beside the code at run time. The hashing thread's worker
 * (ChunkVerifierThread, for artifacts of 16 MiB and more) is started from the bundle's own copy of
 * the code: it must find its worker there and check pieces, a good one passing and a flipped byte
 * refused. (The status page's files, the other such case, are served by the daemons in
 * status-page.test.ts, which run the bundles.)
 *
 * Needs: `npm run build` first.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { PRIMARY_MAIN, STANDBY_MAIN, readBundleMeta, requireBuilt } from './support/site.js';

/** The bundle file that exports `name` (from the metafile scripts/bundle.mjs writes beside). */
function fileExporting(main: string, name: string): string {
  const meta = readBundleMeta(main);
  const hits = Object.entries(meta.outputs).filter(([, o]) => o.exports.includes(name));
  expect(hits.length, `files exporting ${name}`).toBe(1);
  return join(dirname(main), hits[0]![0].split('/').pop()!);
}

const CHILD = `
const [threadFile] = process.argv.slice(2);
const { ChunkVerifierThread } = await import(threadFile);
const { createHash } = await import('node:crypto');
// The signed pieces' digests (chunks.ts: each piece's SHA-256, concatenated, base64).
const chunksOf = (d, size) => {
  const parts = [];
  for (let i = 0; i < d.length; i += size) parts.push(createHash('sha256').update(d.subarray(i, i + size)).digest());
  return { size, sha256: Buffer.concat(parts).toString('base64') };
};
const { Readable, Writable } = await import('node:stream');
const { pipeline } = await import('node:stream/promises');
const { randomBytes } = await import('node:crypto');
const data = randomBytes(3 << 20);
const chunks = chunksOf(data, 1 << 20);
async function run(bytes) {
  const v = new ChunkVerifierThread(chunks, bytes.length, (mm) => new Error('mismatch in piece ' + (mm.index + 1)), () => new Error('short'));
  let n = 0;
  try {
    await pipeline(Readable.from([bytes.subarray(0, 100000), bytes.subarray(100000)]), v, new Writable({ write(c, _e, cb) { n += c.length; cb(); } }));
    return 'ok ' + n;
  } catch (err) { return err.message; }
}
const bad = Buffer.from(data); bad[(2 << 20) + 5] ^= 1;
console.log(JSON.stringify([await run(data), await run(bad)]));
`;

const PACK_CHILD = `
const [threadFile, file] = process.argv.slice(2);
const { PackReadThread } = await import(threadFile);
const { createHash } = await import('node:crypto');
const { readFileSync } = await import('node:fs');
const r = new PackReadThread(2);
const data = readFileSync(file);
const got = await r.read(file, data.length);
let short;
try { await r.read(file, data.length + 1); } catch (err) { short = err.message; }
await r.close();
console.log(JSON.stringify([got.sha256.toString('hex') === createHash('sha256').update(data).digest('hex'), got.bytes.equals(data), short]));
`;

describe('the bundled commands', () => {
  it('run by their first line (as installed), with malloc asking for huge pages (the primary: and a fixed mmap threshold) for the agent alone, and a young generation of 8 MiB', () => {
    const own = new Map([
      [STANDBY_MAIN, 'glibc.malloc.hugetlb=1:'],
      // The primary fixes malloc's mmap threshold too (cli.ts, PRIMARY_OWN_TUNABLES).
      [PRIMARY_MAIN, 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576:'],
    ]);
    for (const [main, tunables] of own) {
      requireBuilt(main);
      const bin = main;
      expect(readFileSync(bin, 'utf8').split('\n')[0]).toBe(`#!/usr/bin/env -S GLIBC_TUNABLES=${tunables}\${GLIBC_TUNABLES} node --max-semi-space-size=8`);
      for (const env of [{}, { GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }]) {
        const r = spawnSync(bin, ['--version'], { encoding: 'utf8', env: { ...process.env, ...env } });
        expect(r.status, r.stderr).toBe(0);
        expect(r.stdout).toMatch(/\d+\.\d+\.\d+/);
      }
    }
  });

  it('tandem-standby: the pack reading thread starts from the bundle, reads and hashes a file, refuses a wrong size', () => {
    requireBuilt(STANDBY_MAIN);
    const file = pathToFileURL(fileExporting(STANDBY_MAIN, 'PackReadThread')).href;
    const dir = mkdtempSync(join(tmpdir(), 'tandem-bundle-'));
    try {
      writeFileSync(join(dir, 'child.mjs'), PACK_CHILD);
      writeFileSync(join(dir, 'pack'), randomBytes(5 << 20));
      const r = spawnSync(process.execPath, [join(dir, 'child.mjs'), file, join(dir, 'pack')], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual([true, true, `${join(dir, 'pack')} has ${5 << 20} bytes, not ${(5 << 20) + 1}`]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('tandem-standby: the hashing thread starts from the bundle and checks every piece', () => {
    requireBuilt(STANDBY_MAIN);
    const file = pathToFileURL(fileExporting(STANDBY_MAIN, 'ChunkVerifierThread')).href;
    const dir = mkdtempSync(join(tmpdir(), 'tandem-bundle-'));
    try {
      // A script file, not --eval: a worker inherits the process's flags, and --input-type is refused there.
      writeFileSync(join(dir, 'child.mjs'), CHILD);
      const r = spawnSync(process.execPath, [join(dir, 'child.mjs'), file], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual([`ok ${3 << 20}`, 'mismatch in piece 3']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
