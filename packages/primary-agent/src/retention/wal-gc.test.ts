import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createLogger,
  encodeStandbyReport,
  layout,
  makeSetId,
  openFilestore,
  parseSetId,
  signLatest,
  signManifest,
  type Filestore,
  type Manifest,
  type PrimaryConfig,
} from '@tandem/shared';
import { formatWalGc } from '../commands/prune.js';
import { runRetention } from './run.js';
import { collectWal, decideWalCutoff, listStoredWal, planWalGc, WAL_GRACE_MS, type WalGcOutcome } from './wal-gc.js';

/**
 * WAL retention against a real directory filestore, with manifests signed as the primary signs
 * them. What is stored under wal/ is placeholder bytes: collection never reads a WAL file, only
 * its name and its objects' modified times (set with utimes, as the filestore reports them).
 */
const logger = createLogger({ name: 'test', level: 'silent', pretty: false });
const { privateKey: signingKey, publicKey: verifyKey } = generateKeyPairSync('ed25519');
const foreign = generateKeyPairSync('ed25519').privateKey;
const H = 3_600_000;
const DAY = 24 * H;
let dir: string;
let fs: Filestore;
const deletes: string[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-wal-gc-'));
  const real = openFilestore(pathToFileURL(dir).href);
  // Records the order of deletions; everything goes to the real directory filestore.
  fs = new Proxy(real, {
    get(target, prop, receiver) {
      if (prop === 'delete') return (key: string, opts?: object) => (deletes.push(key), target.delete(key, opts));
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
});
afterAll(async () => {
  await fs?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const walConfig = (site: string) => ({ site, database: { mode: 'wal' }, retention: { daily: 2, weekly: 0 } }) as unknown as PrimaryConfig;

/** A position 0x28 into the WAL file (16 MiB segments, below 4 GiB). */
const lsnOf = (walFile: string): string => `0/${Number.parseInt(walFile.slice(16), 16).toString(16).toUpperCase()}000028`;

/** A set's signed manifest: WAL mode (a base backup starting in `startWalFile`) or, with null, dump mode. */
function manifestBytes(site: string, setId: string, startWalFile: string | null, key = signingKey): Buffer {
  const p = parseSetId(setId)!;
  const t = p.time.toISOString();
  const wal = startWalFile !== null;
  const m: Manifest = {
    format: 'tandem-manifest',
    version: wal ? 3 : 1,
    setId,
    site,
    epoch: p.epoch,
    seq: p.seq,
    createdAt: t,
    completedAt: t,
    primaryHost: 'web1',
    toolVersion: 'test',
    database: wal
      ? { name: 'demo', serverVersion: '15', mode: 'wal', systemId: '7301234567890123456', timeline: Number.parseInt(startWalFile.slice(0, 8), 16), startLsn: lsnOf(startWalFile), startWalFile }
      : { name: 'demo', serverVersion: '15' },
    encryption: { scheme: 'none', recipients: [] },
    artifacts: wal ? [{ name: 'db', kind: 'postgres-base', file: 'db.base.tar.zst', storedSize: 1, storedSha256: '0'.repeat(64), plainSize: 1, compression: 'zstd', encryption: 'none' }] : [],
  };
  return signManifest(m, key);
}

async function putSet(site: string, t: Date, seq: number, startWalFile: string | null, o: { committed?: boolean; manifest?: Buffer } = {}): Promise<string> {
  const id = makeSetId(t, 1, seq);
  await fs.putBuffer(layout.artifact(site, id, startWalFile === null ? 'db.dump.zst' : 'db.base.tar.zst'), Buffer.from('x'));
  if (o.committed !== false) await fs.putBuffer(layout.manifest(site, id), o.manifest ?? manifestBytes(site, id, startWalFile));
  return id;
}

/** Dates every object of the keys to `at` (the filestore's modified time). */
async function age(keys: string[], at: Date): Promise<void> {
  for (const k of keys) await utimes(join(dir, k), at, at);
}

/** A WAL file as the primary stores it: body, then document; `size` bytes of body. */
async function putWal(site: string, name: string, o: { doc?: boolean; body?: 'age' | 'none' | null; size?: number; at?: Date } = {}): Promise<string[]> {
  const keys: string[] = [];
  if (o.body !== null) {
    const key = `${site}/wal/${name}.zst${o.body === 'none' ? '' : '.age'}`;
    await fs.putBuffer(key, Buffer.alloc(o.size ?? 1000, 1));
    keys.push(key);
  }
  if (o.doc !== false) {
    const key = `${site}/wal/${name}.json`;
    await fs.putBuffer(key, Buffer.alloc(100, 2));
    keys.push(key);
  }
  await age(keys, o.at ?? new Date(Date.now() - 2 * H));
  return keys;
}

const report = (standbyId: string, setId: string, wal?: { neededFrom: string; at: Date }) =>
  encodeStandbyReport({
    standbyId,
    setId,
    createdAt: parseSetId(setId)!.time.toISOString(),
    appliedAt: new Date().toISOString(),
    ...(wal === undefined ? {} : { wal: { neededFrom: wal.neededFrom, at: wal.at.toISOString() } }),
  });

const walNames = async (site: string) => (await fs.list(`${site}/wal/`)).map((o) => o.key.slice(`${site}/wal/`.length)).sort();
const collect = (site: string, o: { dryRun?: boolean; gone?: string[] } = {}) =>
  collectWal(walConfig(site), { filestore: fs, logger, verifyKey, dryRun: o.dryRun === true, gone: o.gone === undefined ? undefined : new Set(o.gone) });

const seg = (tl: number, n: number) => `${tl.toString(16).toUpperCase().padStart(8, '0')}00000000${n.toString(16).toUpperCase().padStart(8, '0')}`;

describe('which WAL files go (names, history, grace)', () => {
  it('compares the first 24 characters: timeline first, then position; .partial and .backup by their segment; history never', async () => {
    const site = 'names';
    await putWal(site, seg(1, 0x9f));
    await putWal(site, `${seg(1, 0x9f)}.partial`);
    await putWal(site, `${seg(1, 0xa0)}.00000028.backup`);
    await putWal(site, seg(1, 0xa0));
    await putWal(site, seg(1, 0x1a0)); // a later position in hex: "1A0" sorts after "0A0" at equal width
    await putWal(site, seg(2, 0x10)); // a newer timeline at a lower position: after every timeline 1 file
    await putWal(site, '00000001.history');
    await putWal(site, '00000002.history');
    const { files, strays } = await listStoredWal(fs, site);
    expect(strays).toEqual([]);
    const plan = planWalGc(files, seg(1, 0xa0), new Date(Date.now() - WAL_GRACE_MS));
    expect(plan.delete.map((f) => f.name)).toEqual([seg(1, 0x9f), `${seg(1, 0x9f)}.partial`]);
    expect(plan.history.files).toBe(2);
    expect(plan.needed.files).toBe(4);
    // The cutoff on timeline 2: every timeline 1 file goes, the history files stay.
    const tl2 = planWalGc(files, seg(2, 0x8), new Date(Date.now() - WAL_GRACE_MS));
    expect(tl2.delete.map((f) => f.name)).toEqual([seg(1, 0x9f), `${seg(1, 0x9f)}.partial`, seg(1, 0xa0), `${seg(1, 0xa0)}.00000028.backup`, seg(1, 0x1a0)]);
    expect(tl2.needed.files).toBe(1);
  });

  it('groups each file\'s document and body (either suffix), counts their bytes, and leaves other keys alone', async () => {
    const site = 'listing';
    await putWal(site, seg(1, 3), { size: 5000 });
    await putWal(site, seg(1, 4), { body: 'none', size: 7000 });
    await putWal(site, seg(1, 5), { doc: false }); // a body whose document is gone (an interrupted prune)
    await putWal(site, seg(1, 6), { body: null }); // a document without its body
    for (const k of ['notes.txt', `${seg(1, 0xab).toLowerCase()}.json`, `${seg(1, 8)}.zst.age.tmp`, `sub/${seg(1, 9)}.json`, '00000000000000000000000A.json']) await fs.putBuffer(`${site}/wal/${k}`, Buffer.from('x'));
    const { files, strays } = await listStoredWal(fs, site);
    expect(files.map((f) => [f.name, f.doc !== null, f.bodies.map((b) => b.key.split('/').pop()), f.bytes])).toEqual([
      [seg(1, 3), true, [`${seg(1, 3)}.zst.age`], 5100],
      [seg(1, 4), true, [`${seg(1, 4)}.zst`], 7100],
      [seg(1, 5), false, [`${seg(1, 5)}.zst.age`], 1000],
      [seg(1, 6), true, [], 100],
    ]);
    expect(strays.length).toBe(5);
  });

  it('keeps a file below the cutoff while any of its objects is younger than the grace', async () => {
    const site = 'grace';
    const old = new Date(Date.now() - WAL_GRACE_MS - 60_000);
    await putWal(site, seg(1, 1), { at: old });
    const keys = await putWal(site, seg(1, 2), { at: old });
    await age([keys[1]!], new Date(Date.now() - WAL_GRACE_MS + 60_000)); // its document was written again lately
    await putWal(site, seg(1, 3), { at: new Date() });
    const { files } = await listStoredWal(fs, site);
    const plan = planWalGc(files, seg(1, 9), new Date(Date.now() - WAL_GRACE_MS));
    expect(plan.delete.map((f) => f.name)).toEqual([seg(1, 1)]);
    expect(plan.young).toEqual({ files: 2, bytes: 2200 });
  });
});

describe('the cutoff: the oldest remaining set\'s start, lowered by the standbys\' recent needs', () => {
  const now = new Date('2026-11-22T12:00:00Z');
  const need = (standbyId: string, neededFrom: string, hoursAgo: number) => ({
    format: 'tandem-standby-report' as const,
    version: 1 as const,
    standbyId,
    setId: '20261122T030000Z-e1-000042',
    createdAt: now.toISOString(),
    appliedAt: now.toISOString(),
    wal: { neededFrom, at: new Date(now.getTime() - hoursAgo * H).toISOString() },
  });

  it('decides from the WAL-mode sets and the reports measured within 24 h', () => {
    const sets = [
      { setId: 'a', startWalFile: seg(1, 0xa0) },
      { setId: 'b', startWalFile: seg(1, 0xc0) },
      { setId: 'dump', startWalFile: null },
    ];
    expect(decideWalCutoff({ sets, reports: [], now })).toMatchObject({ cutoff: seg(1, 0xa0), oldestSet: { setId: 'a', startWalFile: seg(1, 0xa0) }, sets: 2 });
    const r = decideWalCutoff({
      sets,
      now,
      reports: [need('web3', seg(1, 0x10), 25), need('web2', seg(1, 0x98), 23), need('web4', seg(1, 0xb0), 1), { ...need('old', seg(1, 1), 0), wal: undefined }],
    });
    expect(r.cutoff).toBe(seg(1, 0x98));
    expect(r.standbys.map((n) => n.standbyId)).toEqual(['web2', 'web4']); // web4 needs less: no effect
    expect(r.stale.map((n) => n.standbyId)).toEqual(['web3']);
    // A measurement from the future (clock skew) counts: it can only keep more.
    expect(decideWalCutoff({ sets, now, reports: [need('web5', seg(1, 0x90), -2)] }).cutoff).toBe(seg(1, 0x90));
  });

  it('decides nothing when a set does not verify, or no set is a WAL-mode set, whatever the standbys say', () => {
    const reports = [need('web2', seg(1, 0x98), 1)];
    const blocked = decideWalCutoff({ sets: [{ setId: 'a', startWalFile: seg(1, 0xa0) }, { setId: 'b', problem: 'signature does not match' }], reports, now });
    expect(blocked).toMatchObject({ cutoff: null, blocked: 'set b: signature does not match' });
    expect(decideWalCutoff({ sets: [{ setId: 'dump', startWalFile: null }], reports, now })).toMatchObject({ cutoff: null, skipped: 'none of the 1 committed set(s) is a WAL-mode set' });
    expect(decideWalCutoff({ sets: [], reports, now })).toMatchObject({ cutoff: null, skipped: 'there is no committed set' });
  });
});

describe('collectWal against a filestore', () => {
  it('deletes what no remaining set and no recent standby needs: document first, then body; dry runs change nothing', async () => {
    const site = 'demo';
    const t0 = Date.now();
    const setA = await putSet(site, new Date(t0 - 3 * DAY), 1, seg(1, 5));
    const setB = await putSet(site, new Date(t0 - 2 * DAY), 2, seg(2, 3));
    await putSet(site, new Date(t0 - DAY), 3, null); // a dump-mode set: needs no WAL
    await putSet(site, new Date(t0 - 4 * DAY), 4, seg(1, 1), { committed: false }); // a leftover: no reference
    for (let n = 1; n <= 8; n++) await putWal(site, seg(1, n));
    await putWal(site, `${seg(1, 4)}.partial`);
    await putWal(site, `${seg(1, 5)}.00000028.backup`);
    await putWal(site, '00000002.history');
    for (let n = 3; n <= 4; n++) await putWal(site, seg(2, n));
    await putWal(site, seg(1, 0), { doc: false }); // the body left by an interrupted prune
    await putWal(site, seg(1, 3), { at: new Date() }); // archived again lately
    await fs.putBuffer(`${site}/wal/notes.txt`, Buffer.from('x'));
    await fs.putBuffer(layout.standby(site, 'web2'), report('web2', setA, { neededFrom: seg(1, 2), at: new Date(t0 - 20 * H) }));
    await fs.putBuffer(layout.standby(site, 'web3'), report('web3', setA, { neededFrom: seg(1, 0), at: new Date(t0 - 25 * H) }));
    await fs.putBuffer(layout.standby(site, 'web4'), report('web4', setB));
    const before = await walNames(site);

    deletes.length = 0;
    const dry = (await collect(site, { dryRun: true }))!;
    expect(deletes).toEqual([]);
    expect(await walNames(site)).toEqual(before);
    expect(dry).toMatchObject({ dryRun: true, cutoff: seg(1, 2), oldestSet: { setId: setA, startWalFile: seg(1, 5) }, sets: 2, strays: 1, unreadableReports: 0 });
    expect(dry.standbys).toEqual([{ standbyId: 'web2', neededFrom: seg(1, 2), at: new Date(t0 - 20 * H).toISOString() }]);
    expect(dry.stale.map((n) => n.standbyId)).toEqual(['web3']);
    expect(dry.garbage).toEqual({ files: 2, bytes: 2100 }); // seg(1,0) body alone, seg(1,1) whole
    expect(dry.young.files).toBe(0); // seg(1,3) is at the cutoff or after: needed anyway

    const o = (await collect(site))!;
    expect(o.deleted).toEqual({ files: 2, bytes: 2100 });
    expect(o.failed).toBe(0);
    expect(deletes).toEqual([`${site}/wal/${seg(1, 0)}.zst.age`, `${site}/wal/${seg(1, 1)}.json`, `${site}/wal/${seg(1, 1)}.zst.age`]);
    expect(await walNames(site)).toEqual(before.filter((k) => !k.startsWith(seg(1, 0)) && !k.startsWith(seg(1, 1))));

    // web2 moves on: the cutoff is set A's start again; seg(1,3), archived again lately, waits.
    await fs.putBuffer(layout.standby(site, 'web2'), report('web2', setA, { neededFrom: seg(1, 7), at: new Date() }));
    deletes.length = 0;
    const o2 = (await collect(site))!;
    expect(o2.cutoff).toBe(seg(1, 5));
    expect(o2.deleted.files).toBe(3); // seg(1,2), seg(1,4), seg(1,4).partial
    expect(o2.young).toEqual({ files: 1, bytes: 1100 });
    expect(await walNames(site)).toContain(`${seg(1, 3)}.json`);
    expect(await walNames(site)).toContain(`${seg(1, 5)}.00000028.backup.json`);
    expect(formatWalGc(o2)).toEqual([
      `wal: deleted 3 file(s) (3.2 KiB) before ${seg(1, 5)} (the oldest kept set's start, ${setA}; standby web2 needs from ${seg(1, 7)})`,
      `wal: kept 7 file(s) (7.5 KiB) from ${seg(1, 5)} on, 1 timeline history file(s) (1.1 KiB), 1 file(s) before it younger than 60m (1.1 KiB)`,
      'wal: 1 key(s) under wal/ are not WAL files: left alone',
      `wal: standby web3 last reported its WAL need (from ${seg(1, 0)}) at ${new Date(t0 - 25 * H).toISOString()}, more than 24h ago: not honoured`,
    ]);

    // Set A taken as gone (what a dry run of retention does with the sets it would delete): the
    // cutoff is set B's start on timeline 2, and every timeline 1 file but the young one would go.
    const dryB = (await collect(site, { dryRun: true, gone: [setA] }))!;
    expect(dryB.cutoff).toBe(seg(1, 7)); // web2 still needs timeline 1 from seg(1,7)
    await fs.delete(layout.standby(site, 'web2'));
    const dryB2 = (await collect(site, { dryRun: true, gone: [setA] }))!;
    expect(dryB2).toMatchObject({ cutoff: seg(2, 3), oldestSet: { setId: setB, startWalFile: seg(2, 3) } });
    expect(dryB2.garbage.files).toBe(5); // seg(1,5) and its .backup, seg(1,6), seg(1,7), seg(1,8)
    expect(dryB2.young.files).toBe(1); // seg(1,3)
    expect(dryB2.history.files).toBe(1);
    expect(dryB2.needed.files).toBe(2); // seg(2,3), seg(2,4)
  });

  it('deletes no WAL when a remaining set\'s manifest does not verify, naming the set', async () => {
    const site = 'forged';
    const t0 = Date.now();
    await putSet(site, new Date(t0 - 2 * DAY), 1, seg(1, 5));
    const real = makeSetId(new Date(t0 - DAY), 1, 2);
    const forged = await putSet(site, new Date(t0 - DAY), 2, seg(1, 6), { manifest: manifestBytes(site, real, seg(1, 6), foreign) });
    for (let n = 1; n <= 7; n++) await putWal(site, seg(1, n));
    const before = await walNames(site);
    deletes.length = 0;
    for (const dryRun of [true, false]) {
      const o = (await collect(site, { dryRun }))!;
      expect(o.cutoff).toBeNull();
      expect(o.blocked).toMatch(new RegExp(`^set ${forged}: .*signed by key \\w+, but this agent trusts key \\w+`));
      expect(o.deleted.files).toBe(0);
      expect(formatWalGc(o)[0]).toBe(`wal: NOT collected, none deleted: ${o.blocked}`);
    }
    // Another set's genuine manifest copied over it: refused the same way.
    const other = makeSetId(new Date(t0 - 3 * DAY), 1, 3);
    await fs.putBuffer(layout.manifest(site, forged), manifestBytes(site, other, seg(1, 1)));
    const o = (await collect(site))!;
    expect(o.blocked).toContain(`names set ${other} (copied from another set)`);
    expect(deletes).toEqual([]);
    expect(await walNames(site)).toEqual(before);
  });

  it('deletes no WAL while no remaining set is a WAL-mode set; does nothing outside WAL mode', async () => {
    const site = 'dumps';
    await putSet(site, new Date(Date.now() - DAY), 1, null);
    for (let n = 1; n <= 3; n++) await putWal(site, seg(1, n));
    deletes.length = 0;
    const o = (await collect(site))!;
    expect(o).toMatchObject({ cutoff: null, skipped: 'none of the 1 committed set(s) is a WAL-mode set' });
    expect(o.blocked).toBeUndefined();
    expect(formatWalGc(o)).toEqual(['wal: nothing deleted: none of the 1 committed set(s) is a WAL-mode set (WAL is kept until a WAL-mode set exists)']);
    const dump = { ...walConfig(site), database: { mode: 'dump' } } as unknown as PrimaryConfig;
    expect(await collectWal(dump, { filestore: fs, logger, verifyKey, dryRun: false })).toBeNull();
    expect(deletes).toEqual([]);
  });
});

describe('runRetention in WAL mode', () => {
  function latestBytes(site: string, setId: string): Buffer {
    const p = parseSetId(setId)!;
    const t = p.time.toISOString();
    return signLatest({ format: 'tandem-latest', version: 1, site, setId, epoch: p.epoch, seq: p.seq, createdAt: t, committedAt: t, manifestSha256: '0'.repeat(64) }, signingKey);
  }

  it('collects WAL after the sets, from the start of the oldest set that remains (a dry run: that would remain)', async () => {
    const site = 'retained';
    const now = new Date();
    // Set times placed by calendar day (retention keeps one set per UTC day), whatever the hour.
    const dayStart = Math.floor(now.getTime() / DAY) * DAY;
    const old = await putSet(site, new Date(dayStart - 10 * DAY), 1, seg(1, 2));
    const yesterday = await putSet(site, new Date(dayStart - 12 * H), 2, seg(1, 6));
    const today = await putSet(site, new Date(Math.max(dayStart, now.getTime() - 2 * H)), 3, seg(1, 8));
    await fs.putBuffer(layout.latest(site), latestBytes(site, today));
    for (let n = 1; n <= 9; n++) await putWal(site, seg(1, n));
    const run = (dryRun: boolean) => runRetention(walConfig(site), { filestore: fs, logger, verifyKey, now, dryRun, timeZone: 'UTC' });

    deletes.length = 0;
    const dry = await run(true);
    expect(dry.plan.delete.map((d) => d.setId)).toEqual([old]);
    expect(dry.wal).toMatchObject({ dryRun: true, cutoff: seg(1, 6), oldestSet: { setId: yesterday }, garbage: { files: 5 } });
    expect(deletes).toEqual([]);

    const o = await run(false);
    expect(o.deleted).toEqual([old]);
    expect(o.wal).toMatchObject({ cutoff: seg(1, 6), deleted: { files: 5 }, needed: { files: 4 } });
    expect((await walNames(site)).filter((k) => k.endsWith('.json'))).toEqual([6, 7, 8, 9].map((n) => `${seg(1, n)}.json`));
    // The set's manifest went before any WAL.
    expect(deletes.indexOf(layout.manifest(site, old))).toBeLessThan(deletes.findIndex((k) => k.includes('/wal/')));
  });
});
