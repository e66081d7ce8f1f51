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
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { STANDBY_MAIN, readBundleMeta, requireBuilt } from './support/site.js';

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

describe('the bundled commands', () => {
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
