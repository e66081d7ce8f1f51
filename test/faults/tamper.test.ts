/**
 * Tamper suite: stored bytes, manifests and pointers changed after the primary signed them. Every
 * variant is refused with a message naming the set (and the artifact, where there is one), and the
 * live standby (database rows, dirs, applied record, what lies beside them) is exactly as before.
 */
import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ARTIFACT_NAMES, layout, type ArtifactEntry, type ArtifactName, type Manifest } from '@tandem/shared';
import { makeKeys, type KeyFiles } from '../support/site.js';
import { apply, forgeSet, pointLatestAt, readPlain, removeStandbySite, runStandby, show, type StandbySite } from '../support/standby-helpers.js';
import { Tally, baseline, expectRefused, setUpRefusalSite, type Baseline } from './support/refusal.js';
import { bombBytes, bytesUnder, sealToSize, watchDisk, zstdBomb, zstdOf } from './support/replace.js';
import { tarBuffer } from './support/tar.js';

const tally = new Tally('tamper');
let root: string;
let s: StandbySite;
let other: KeyFiles;
let first: string;
let before: Baseline;

/** The stored file of artifact `n` in set `id`, as its manifest names it (files.tar.age or files.tar.zst.age, by compression). */
const manifestOf = async (id: string): Promise<Manifest> => JSON.parse(await readFile(join(root, 'store', s.site, 'sets', id, 'manifest.json'), 'utf8')) as Manifest;
const fileIn = async (id: string, n: ArtifactName): Promise<string> => (await manifestOf(id)).artifacts.find((a) => a.name === n)!.file;
const flipAt = (at: (len: number) => number) => (b: Buffer) => {
  const c = Buffer.from(b);
  const i = Math.max(0, Math.min(c.length - 1, at(c.length)));
  c[i]! ^= 0x5a;
  return c;
};
const OFFSETS: Array<[string, (len: number) => number]> = [
  ['first byte', () => 0],
  ['age header', () => 40],
  ['header/payload boundary', () => 200],
  ['middle', (n) => Math.floor(n / 2)],
  ['last chunk', (n) => n - 20],
  ['last byte', (n) => n - 1],
];
const CUTS: Array<[string, (len: number) => number]> = [
  ['empty', () => 0],
  ['1 byte', () => 1],
  ['half', (n) => Math.floor(n / 2)],
  ['one byte short', (n) => n - 1],
];

beforeAll(async () => {
  ({ root, s, first, before } = await setUpRefusalSite('tandem-faults-tamper-', ['pg_dump', 'pg_restore']));
  other = await makeKeys(join(root, 'other-keys'));
});

afterAll(async () => {
  tally.print();
  await removeStandbySite(s, root);
});

describe('tamper: stored artifacts', () => {
  it.each(ARTIFACT_NAMES.map((n) => [n]))('a flipped byte at 6 offsets of the %s artifact', async (name) => {
    for (const [where, at] of OFFSETS) {
      const id = await forgeSet(s, first, { damage: { [name]: flipAt(at) } });
      await expectRefused(s, before, await apply(s), [`set ${id}: ${name} artifact (${await fileIn(id, name)})`, /SHA-256|corrupt|tampered|cannot decrypt/]);
      tally.add(`flipped byte in an artifact (${where})`);
    }
  });

  it.each(ARTIFACT_NAMES.map((n) => [n]))('the %s artifact truncated at 4 lengths', async (name) => {
    for (const [what, len] of CUTS) {
      const id = await forgeSet(s, first, { damage: { [name]: (b: Buffer) => b.subarray(0, len(b.length)) } });
      await expectRefused(s, before, await apply(s), [`set ${id}: ${name} artifact (${await fileIn(id, name)})`]);
      tally.add(`truncated artifact (${what})`);
    }
  });

  it('an artifact with bytes appended', async () => {
    for (const name of ARTIFACT_NAMES) {
      const id = await forgeSet(s, first, { damage: { [name]: (b: Buffer) => Buffer.concat([b, Buffer.from('x')]) } });
      await expectRefused(s, before, await apply(s), [`set ${id}: ${name} artifact (${await fileIn(id, name)})`]);
      tally.add('artifact with a byte appended');
    }
  });

  it('artifacts swapped between two sets, and within one set', async () => {
    // A second genuine set whose artifacts are valid age files of the same site, with the same
    // plaintext as `first`, but sealed anew (fresh age file keys): their stored bytes differ.
    const plain = {} as Record<ArtifactName, Buffer>;
    for (const n of ARTIFACT_NAMES) plain[n] = await readPlain(s, first, n);
    const donor = await forgeSet(s, first, { plain, keepLatest: true });
    const fs = s.openStore();
    const donorBytes = {} as Record<ArtifactName, Buffer>;
    try {
      for (const n of ARTIFACT_NAMES) donorBytes[n] = (await fs.getBuffer(layout.artifact(s.site, donor, await fileIn(donor, n)), { maxBytes: Infinity })).body;
    } finally {
      await fs.close();
    }
    for (const name of ARTIFACT_NAMES) {
      const id = await forgeSet(s, first, { damage: { [name]: () => donorBytes[name] } });
      await expectRefused(s, before, await apply(s), [`set ${id}: ${name} artifact (${await fileIn(id, name)})`]);
      tally.add('artifact swapped in from another set');
    }
    const pairs: Array<[ArtifactName, ArtifactName]> = [
      ['db', 'files'],
      ['config', 'security'],
    ];
    for (const [a, b] of pairs) {
      const id = await forgeSet(s, first, {
        damage: { [a]: () => donorBytes[b], [b]: () => donorBytes[a] },
      });
      await expectRefused(s, before, await apply(s), [`set ${id}: `, /artifact \(/]);
      tally.add('two artifacts swapped within a set');
    }
  });
});

/**
 * The attacker who can write one object into the filestore and holds no signing key (every standby
 * can: it writes its report and epoch.json) replaces an artifact of a genuine, signed set with bytes
 * of exactly the signed stored size, encrypted to the recipient the manifest lists. Nothing of it may
 * be decrypted, decompressed or unpacked before the stored SHA-256 is checked: the disk sees at most
 * the stored object, in the staging dir.
 */
describe('tamper: an object replaced at its signed size is not used before it is verified', () => {
  const objectPath = async (id: string, n: ArtifactName) => join(root, 'store', s.site, 'sets', id, await fileIn(id, n));
  const entryOf = async (id: string, n: ArtifactName): Promise<ArtifactEntry> => (await manifestOf(id)).artifacts.find((a) => a.name === n)!;

  it('a zstd bomb in the db artifact writes no more than the stored object into the state dir', async () => {
    const id = await forgeSet(s, first); // genuine and signed: the attacker only replaces one object
    const entry = await entryOf(id, 'db');
    // As many 128 KiB RLE blocks (4 bytes each) as fit beside the age overhead, up to 1 GiB.
    const bomb = zstdBomb(Math.min(8192, Math.floor((entry.storedSize - 600) / 4)) * 128 * 1024);
    expect(bombBytes(bomb)).toBeGreaterThan(100 * entry.storedSize);
    await writeFile(await objectPath(id, 'db'), await sealToSize(s, bomb, entry.storedSize));

    const base = bytesUnder(s.standby.stateDir);
    const w = await watchDisk({ bytesUnder: s.standby.stateDir, pathsUnder: join(root, 'standby'), names: /tandem-new/ }, apply(s));
    console.log(
      `[tamper] db bomb: ${entry.storedSize} stored bytes expanding to ${bombBytes(bomb)}; ` +
        `the state dir grew by at most ${w.maxBytes - base} bytes (${w.samples} samples)`,
    );
    await expectRefused(s, before, w.result, [`set ${id}: db artifact (${await fileIn(id, 'db')}): SHA-256 of the stored bytes`, 'tampered with']);
    expect(w.samples).toBeGreaterThan(20);
    expect(w.maxBytes - base).toBeLessThanOrEqual(entry.storedSize + 16 * 1024); // + journal and lock
    expect([...w.paths]).toEqual([]); // refused before any directory was staged

    // The restore drill refuses it the same way, leaving no scratch copy. It goes on to check the
    // other artifacts (one stored copy at a time), so its bound is the largest stored object.
    const largest = Math.max(...(await manifestOf(id)).artifacts.map((a) => a.storedSize));
    const v = await watchDisk(
      { bytesUnder: s.standby.stateDir, pathsUnder: join(root, 'standby'), names: /tandem-new/ },
      runStandby(['verify', '--config', s.standby.configFile, '--set', id]),
    );
    expect(v.result.code, show(v.result)).toBe(5);
    expect(v.result.stderr).toMatch(/db artifact .*SHA-256 of the stored bytes/);
    expect(v.maxBytes - base).toBeLessThanOrEqual(largest + 16 * 1024);
    expect((await readdir(s.standby.stateDir)).filter((n) => n.startsWith('verify-'))).toEqual([]);
    tally.add('zstd bomb at the signed stored size (apply and verify)', 2);
  });

  it('a forged files archive puts nothing into files.tandem-new before the checksum refuses it', async () => {
    // A genuine set whose files artifact is big enough (24 MiB) that unpacking takes a while.
    const size = 24 << 20;
    const genuine = await tarBuffer([{ name: './', type: '5' }, { name: './ok.txt', type: '0', data: 'fine\n' }, { name: './bulk.bin', type: '0', data: randomBytes(size) }]);
    const id = await forgeSet(s, first, { plain: { files: genuine } });
    const entry = await entryOf(id, 'files');
    // The attacker's archive: their file first, then data to keep the extractor busy, within the signed plain size.
    const forged = await tarBuffer([
      { name: './', type: '5' },
      { name: './ATTACKER-NAMED.txt', type: '0', data: 'planted before any check\n' },
      { name: './pad.bin', type: '0', data: randomBytes(size - (256 << 10)) },
    ]);
    expect(forged.length).toBeLessThan(entry.plainSize);
    await writeFile(await objectPath(id, 'files'), await sealToSize(s, await zstdOf(forged), entry.storedSize));

    const w = await watchDisk({ bytesUnder: s.standby.stateDir, pathsUnder: join(root, 'standby'), names: /^files\.tandem-new$|ATTACKER/ }, apply(s));
    console.log(`[tamper] forged files archive: paths seen ${JSON.stringify([...w.paths])} (${w.samples} samples)`);
    await expectRefused(s, before, w.result, [`set ${id}: files artifact (${await fileIn(id, 'files')}): SHA-256 of the stored bytes`, 'tampered with']);
    expect(w.samples).toBeGreaterThan(20);
    expect([...w.paths]).toEqual([]);
    tally.add('forged archive at the signed stored size (nothing unpacked)');
  });
});

describe('tamper: manifest and pointers', () => {
  it('a flipped byte at several offsets of the manifest', async () => {
    const offsets: Array<(n: number) => number> = [() => 0, () => 5, (n) => Math.floor(n / 3), (n) => Math.floor(n / 2), (n) => n - 30, (n) => n - 2, (n) => n - 1];
    for (const at of offsets) {
      let setId = '';
      setId = await forgeSet(s, first, { editManifest: flipAt(at) });
      await expectRefused(s, before, await apply(s), [`set ${setId}`, /manifest/]);
      tally.add('flipped byte in the manifest');
    }
  });

  it('the manifest truncated, emptied, or with whitespace changed', async () => {
    const edits: Array<(b: Buffer) => Buffer> = [
      () => Buffer.alloc(0),
      (b) => b.subarray(0, Math.floor(b.length / 2)),
      (b) => b.subarray(0, b.length - 1),
      (b) => Buffer.from(b.toString('utf8').replace('\n', '\r\n')),
      (b) => Buffer.concat([b, Buffer.from('\n')]),
      (b) => Buffer.from(b.toString('utf8').replace(/"seq": (\d+)/, (_m, n: string) => `"seq": ${Number(n) + 100}`)),
      (b) => Buffer.from(b.toString('utf8').replace(/"storedSize": (\d+)/, (_m, n: string) => `"storedSize": ${Number(n) - 1}`)),
    ];
    for (const edit of edits) {
      const id = await forgeSet(s, first, { editManifest: edit });
      await expectRefused(s, before, await apply(s), [`set ${id}`, /manifest/]);
      tally.add('manifest truncated or edited after signing');
    }
  });

  it('a manifest re-signed with a foreign key, and a latest.json signed with one', async () => {
    const id = await forgeSet(s, first, { manifestKeyFile: other.signingKeyFile });
    await expectRefused(s, before, await apply(s), [`set ${id}: manifest.json: signed by key`, 'but this agent trusts key']);
    tally.add('manifest re-signed with a foreign key');

    // latest.json re-signed with a foreign key (the manifest is genuine).
    const good = await forgeSet(s, first);
    const latestFile = join(root, 'store', s.site, 'latest.json');
    const saved = await readFile(latestFile);
    const { loadSigningKeyFile, signLatest } = await import('@tandem/shared');
    const doc = JSON.parse(saved.toString('utf8')) as Record<string, unknown>;
    delete doc.signature;
    await writeFile(latestFile, signLatest(doc as never, loadSigningKeyFile(other.signingKeyFile)));
    await expectRefused(s, before, await apply(s), [/latest\.json: signed by key \S+, but this agent trusts key/]);
    tally.add('latest.json re-signed with a foreign key');
    await writeFile(latestFile, saved);
    expect(good).not.toBe('');
  });

  it('latest.json pointing at a manifest it does not describe (hash mismatch)', async () => {
    const a = await forgeSet(s, first);
    const latestFile = join(root, 'store', s.site, 'latest.json');
    const aLatest = await readFile(latestFile);
    const b = await forgeSet(s, first, { keepLatest: true });
    // Copy b's manifest over a's: latest.json (for a) names a manifest hash that no longer matches.
    await writeFile(join(root, 'store', s.site, 'sets', a, 'manifest.json'), await readFile(join(root, 'store', s.site, 'sets', b, 'manifest.json')));
    await writeFile(latestFile, aLatest);
    await expectRefused(s, before, await apply(s), [new RegExp(`${a}|${b}`)]);
    tally.add('manifest replaced under a signed latest.json');
  });

  it('a set of a lowered epoch (epoch 1 forged after a promote to epoch 2)', async () => {
    const epochFile = join(root, 'store', s.site, 'epoch.json');
    const saved = await readFile(epochFile);
    await writeFile(
      epochFile,
      JSON.stringify({ format: 'tandem-epoch', version: 1, epoch: 2, primaryHost: 'promoted-standby', since: new Date().toISOString(), previous: { epoch: 1, primaryHost: 'web1' }, reason: 'promote' }),
    );
    try {
      for (const name of [undefined, 'db', 'files'] as const) {
        const id = await forgeSet(s, first, name ? { plain: { [name]: undefined } } : {});
        await expectRefused(s, before, await apply(s), [`set ${id} was made in epoch 1, but the filestore is at epoch 2`]);
        await expectRefused(s, before, await apply(s, ['--set', id]), [`set ${id} was made in epoch 1`]);
        tally.add('set of a lowered epoch (latest and --set)', 2);
      }
    } finally {
      await writeFile(epochFile, saved);
    }
  });

  // Last: applies a newer set, on purpose, then replays the old pointer.
  it('a replayed old latest.json is refused as older', async () => {
    const latestFile = join(root, 'store', s.site, 'latest.json');
    await pointLatestAt(s, first);
    const oldLatest = await readFile(latestFile); // a genuine, signed pointer at `first`
    const newer = await forgeSet(s, first);
    const ok = await apply(s);
    expect(ok.code, show(ok)).toBe(0);
    before = await baseline(s);

    await writeFile(latestFile, oldLatest); // byte-for-byte replay of an old, genuinely signed latest.json
    await expectRefused(s, before, await apply(s), [`set ${first} (epoch 1, seq 1) is older than the applied set ${newer}`]);
    tally.add('replayed old latest.json (byte-for-byte)');
    await pointLatestAt(s, first); // re-signed pointer at the old set
    await expectRefused(s, before, await apply(s), [`set ${first} (epoch 1, seq 1) is older than the applied set ${newer}`]);
    await expectRefused(s, before, await apply(s, ['--set', first]), [/--allow-older/]);
    tally.add('latest.json re-pointed at an older set (latest and --set)', 2);
  });
});
