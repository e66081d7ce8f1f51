/**
 * Garbage collection of content objects by `tandem-primary prune`, and what `tandem-primary list`
 * says each set takes of them, with the real CLIs and a directory filestore. Which objects each set
 * references is read here from its index by the tests' own reader (content and pages: a set whose
 * pages did not change shares the pack of pages of the set before), and checked against the objects
 * each backup added to the filestore. The grace is passed by setting an object's mtime back, which
 * is the modified time the directory filestore's LIST reports.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layout, objectKey } from '@tandem/shared';
import { indexContents } from './support/objects.js';
import { apply, backup, createStandbySite, dropSiteDatabases, removeStandbySite, show, writeSitePrimaryConfig, type StandbySite } from './support/standby-helpers.js';
import { ensurePostgres, runPrimary, snapshotTree, tmpDir } from './support/site.js';

interface Tally {
  objects: number;
  bytes: number;
}
interface GcJson {
  dryRun: boolean;
  skipped?: string;
  blocked?: string;
  sets: number;
  stored: Tally;
  referenced: Tally;
  young: Tally;
  garbage: Tally;
  deleted: Tally;
  failed: number;
  missing: number;
}
interface PruneJson {
  delete: Array<{ setId: string }>;
  deleted: string[];
  unverified: string[];
  objects: GcJson | null;
}
interface ListJson {
  sets: Array<{ setId: string; committed: boolean; bytes: number; uniqueBytes?: number | null; sharedBytes?: number | null; filesAs?: string; problem?: string }>;
  storage: {
    setsBytes: number;
    referencedObjects: number;
    referencedBytes: number;
    neededBytes: number;
    storedObjects: number;
    storedBytes: number;
    unreferencedObjects: number;
    unreferencedBytes: number;
    missingObjects: number;
    complete: boolean;
  };
}

const HOUR = 3_600_000;

describe('prune collects content objects no set references; list shows what each set takes', () => {
  let root: string;
  let s: StandbySite;
  let store: string;
  /** The objects (keys) each backup added, in order. */
  const added: string[][] = [];
  const sets: string[] = [];
  let tarSet: string;
  /** The object keys each set references (its content and its pages), from its index. */
  const refs: Array<Set<string>> = [];
  /** Of `keys`, those no set but `i` references (in `among`: by default every set). */
  const onlyOf = (i: number, among = refs.map((_, j) => j)): string[] => [...refs[i]!].filter((k) => among.every((j) => j === i || !refs[j]!.has(k)));
  const sharedOf = (i: number): string[] => [...refs[i]!].filter((k) => refs.some((r, j) => j !== i && r.has(k)));
  const minus = (a: string[], b: Set<string>): string[] => a.filter((k) => !b.has(k));

  /** Every object key under the site's objects/, from the store directory. */
  async function objectKeys(): Promise<string[]> {
    const base = join(store, s.site, 'objects');
    const out: string[] = [];
    for (const dir of await readdir(base).catch(() => [] as string[])) {
      for (const name of await readdir(join(base, dir))) out.push(`${s.site}/objects/${dir}/${name}`);
    }
    return out.sort();
  }
  const sizeOf = async (key: string): Promise<number> => (await stat(join(store, key))).size;
  const bytesOf = async (keys: string[]): Promise<number> => (await Promise.all(keys.map(sizeOf))).reduce((a, b) => a + b, 0);
  const exists = (key: string): Promise<boolean> => stat(join(store, key)).then(() => true, () => false);
  /** Stored bytes of a set's own objects, from the store directory. */
  async function setBytes(setId: string): Promise<number> {
    const dir = join(store, layout.set(s.site, setId));
    return bytesOf((await readdir(dir)).map((f) => layout.artifact(s.site, setId, f)));
  }
  async function backupAdding(): Promise<string> {
    const before = new Set(await objectKeys());
    const id = await backup(s);
    added.push((await objectKeys()).filter((k) => !before.has(k)));
    sets.push(id);
    refs.push(new Set((await indexContents(s, id)).packs.map((p) => objectKey(s.site, p.id))));
    return id;
  }
  const prune = (...args: string[]) => runPrimary(['prune', '--config', s.primary.configFile, ...args], { env: s.env });
  async function pruneJson(...args: string[]): Promise<{ code: number | null; out: PruneJson; stderr: string }> {
    const r = await prune('--json', ...args);
    return { code: r.code, out: JSON.parse(r.stdout) as PruneJson, stderr: r.stderr };
  }
  async function listJson(): Promise<ListJson> {
    const r = await runPrimary(['list', '--config', s.primary.configFile, '--json'], { env: s.env });
    expect(r.code, show(r)).toBe(0);
    return JSON.parse(r.stdout) as ListJson;
  }

  beforeAll(async () => {
    await ensurePostgres();
    root = await tmpDir('tandem-objects-gc-');
    s = await createStandbySite(root, { filesObjects: true });
    store = join(root, 'store');
    // One set a day is kept: every set of this test but the newest goes.
    await writeSitePrimaryConfig(s, s.primary.configFile, { retention: { daily: 1, weekly: 0 } });
    // A set of the tar format first (the same site without the files key): no objects of its own.
    const tarConfig = await writeSitePrimaryConfig({ ...s, filesObjects: false }, join(root, 'primary-tar.yml'));
    const r = await runPrimary(['backup', '--config', tarConfig], { env: s.env });
    expect(r.code, show(r)).toBe(0);
    tarSet = r.stdout.trim();
    expect(await objectKeys()).toEqual([]);

    // S0: the tree; S1, S2, S3 each add a file the next one removes, so that each of them has
    // objects of its own (a pack holds only what a backup found new) and shares S0's.
    const gc = join(s.primary.paths.files, 'gc');
    await backupAdding();
    for (const name of ['one', 'two', 'three']) {
      await rm(gc, { recursive: true, force: true });
      await mkdir(gc);
      await writeFile(join(gc, `${name}.bin`), randomBytes(300_000));
      await backupAdding();
    }
    for (const a of added) expect(a.length).toBeGreaterThan(0);
    // Every object a set references was stored by it or a set before it; each set stored some of its own.
    for (let i = 0; i < sets.length; i++) {
      for (const k of refs[i]!) expect(added.slice(0, i + 1).some((a) => a.includes(k)), k).toBe(true);
      expect(onlyOf(i).length).toBeGreaterThan(0);
    }
    // S0's content is shared with every later set.
    for (let i = 1; i < sets.length; i++) expect(sharedOf(i).length).toBeGreaterThan(0);
  }, 240_000);

  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    await removeStandbySite(s, root);
  });

  it('list shows the bytes only each set references and those it shares, and totals that add up', async () => {
    const l = await listJson();
    const byId = new Map(l.sets.map((x) => [x.setId, x]));
    expect(byId.get(tarSet)).toMatchObject({ committed: true, filesAs: 'tar', uniqueBytes: 0, sharedBytes: 0 });
    for (let i = 0; i < sets.length; i++) {
      expect(byId.get(sets[i]!), sets[i]).toMatchObject({ filesAs: 'objects', uniqueBytes: await bytesOf(onlyOf(i)), sharedBytes: await bytesOf(sharedOf(i)) });
    }
    const shared = await bytesOf([...new Set(refs.flatMap((_, i) => sharedOf(i)))]);

    const all = added.flat();
    const referenced = await bytesOf(all);
    let setsBytes = 0;
    for (const id of [tarSet, ...sets]) setsBytes += await setBytes(id);
    expect(l.storage).toMatchObject({
      referencedObjects: all.length,
      referencedBytes: referenced,
      setsBytes,
      neededBytes: setsBytes + referenced,
      storedObjects: all.length,
      storedBytes: referenced,
      unreferencedObjects: 0,
      missingObjects: 0,
      complete: true,
    });
    // Each object counted once: what only one set references plus what they share.
    const unique = l.sets.reduce((n, x) => n + (x.uniqueBytes ?? 0), 0);
    expect(unique + shared).toBe(l.storage.referencedBytes);

    const text = await runPrimary(['list', '--config', s.primary.configFile], { env: s.env });
    expect(text.code, show(text)).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^${tarSet} .* committed  files in the set \\(tar\\), no objects$`, 'm'));
    expect(text.stdout).toMatch(new RegExp(`^${sets[3]} .* committed, latest  objects: \\S+ \\S+ unique, \\S+ \\S+ shared$`, 'm'));
    expect(text.stdout).toMatch(/^needs \S+ \S+ in the filestore: /m);
  });

  it('prune deletes the old sets but keeps their objects while younger than the grace', async () => {
    const r = await pruneJson();
    expect(r.code, r.stderr).toBe(0);
    expect(r.out.deleted.sort()).toEqual([tarSet, ...sets.slice(0, 3)].sort());
    const kept = [...refs[3]!];
    const young = minus(added.flat(), refs[3]!);
    expect(r.out.objects).toMatchObject({
      dryRun: false,
      sets: 1,
      deleted: { objects: 0, bytes: 0 },
      garbage: { objects: 0, bytes: 0 },
      young: { objects: young.length, bytes: await bytesOf(young) },
      referenced: { objects: kept.length, bytes: await bytesOf(kept) },
      failed: 0,
      missing: 0,
    });
    for (const k of [...young, ...kept]) expect(await exists(k), k).toBe(true);
  });

  it('--dry-run reports the objects past the grace that would go, and deletes nothing', async () => {
    // S1's objects are now 7 hours old; the others stay young.
    const old = new Date(Date.now() - 7 * HOUR);
    for (const k of added[1]!) await utimes(join(store, k), old, old);
    const garbage = minus(added[1]!, refs[3]!);
    const young = minus(minus(added.flat(), refs[3]!), new Set(garbage));
    expect(garbage.length).toBeGreaterThan(0);
    const r = await pruneJson('--dry-run');
    expect(r.code, r.stderr).toBe(0);
    expect(r.out.objects).toMatchObject({
      dryRun: true,
      garbage: { objects: garbage.length, bytes: await bytesOf(garbage) },
      young: { objects: young.length, bytes: await bytesOf(young) },
      deleted: { objects: 0, bytes: 0 },
    });
    const text = await prune('--dry-run');
    expect(text.code, show(text)).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^objects: would delete ${garbage.length} unreferenced \\(\\S+ \\S+\\)$`, 'm'));
    for (const k of added.flat()) expect(await exists(k), k).toBe(true);
  });

  it('a committed set whose manifest does not verify: no object is deleted', async () => {
    const manifest = join(store, layout.manifest(s.site, sets[3]!));
    const good = await readFile(manifest);
    const bad = Buffer.from(good.toString('utf8').replace('"primaryHost": "', '"primaryHost": "x'));
    expect(bad.equals(good)).toBe(false);
    await writeFile(manifest, bad);
    try {
      const r = await pruneJson();
      expect(r.code, r.stderr).toBe(1);
      expect(r.out.unverified).toEqual([sets[3]]);
      expect(r.out.objects?.blocked).toContain(`set ${sets[3]}`);
      expect(r.out.objects?.deleted).toEqual({ objects: 0, bytes: 0 });
      const text = await prune();
      expect(text.code, show(text)).toBe(1);
      expect(text.stdout).toMatch(new RegExp(`^objects: NOT collected, none deleted: set ${sets[3]}: `, 'm'));
      for (const k of added.flat()) expect(await exists(k), k).toBe(true);
      // list marks the set, and its figures say they are incomplete.
      const l = await listJson();
      expect(l.sets.find((x) => x.setId === sets[3])).toMatchObject({ uniqueBytes: null, sharedBytes: null });
      expect(l.storage.complete).toBe(false);
    } finally {
      await writeFile(manifest, good);
    }
  });

  it('while a backup of the site runs on this host (its lock held by a live process), nothing is collected', async () => {
    const lock = join(s.primary.stateDir, 'backup.lock');
    await writeFile(lock, JSON.stringify({ pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), purpose: 'backup' }));
    try {
      const r = await pruneJson();
      expect(r.code, r.stderr).toBe(0);
      expect(r.out.objects?.skipped).toContain(`pid ${process.pid}`);
      for (const k of added.flat()) expect(await exists(k), k).toBe(true);
    } finally {
      await rm(lock, { force: true });
    }
  });

  it('prune deletes the objects only deleted sets referenced once past the grace; the newest set still applies', async () => {
    const text = await prune();
    expect(text.code, show(text)).toBe(0);
    const gone = minus(added[1]!, refs[3]!);
    expect(text.stdout).toMatch(new RegExp(`^objects: deleted ${gone.length} unreferenced \\(\\S+ \\S+\\)$`, 'm'));
    for (const k of gone) expect(await exists(k), k).toBe(false);
    // Younger than the grace, or referenced by the set kept: still there.
    const left = minus(added.flat(), new Set(gone));
    for (const k of left) expect(await exists(k), k).toBe(true);

    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));

    // What is left: one set, whose objects are all its own; S2's young ones unreferenced.
    const l = await listJson();
    const mine = [...refs[3]!];
    const unreferenced = minus(left, refs[3]!);
    expect(l.sets.map((x) => x.setId)).toEqual([sets[3]]);
    expect(l.sets[0]).toMatchObject({ uniqueBytes: await bytesOf(mine), sharedBytes: 0 });
    expect(l.storage).toMatchObject({
      referencedObjects: mine.length,
      referencedBytes: await bytesOf(mine),
      setsBytes: await setBytes(sets[3]!),
      storedObjects: left.length,
      unreferencedObjects: unreferenced.length,
      unreferencedBytes: await bytesOf(unreferenced),
      complete: true,
    });
  }, 120_000);
});
