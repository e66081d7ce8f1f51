/**
 * Crash suite for files as content objects, on a directory store and on S3 (s3rver): the standby
 * killed while it stages the files, while it switches them in place (after the first file renamed
 * into the live tree), and again while recovering; the primary killed after its first pack was
 * uploaded. After a kill in staging the live files are wholly the previous set's; after one in the
 * switch each file is wholly one set's or the other's (renamed, never written in place), but for the
 * one large file set B edits in its middle, which the switch patches in place: a kill while its
 * ranges are written leaves it between the two, and the roll-forward writes them all again. The
 * next apply finishes the job exactly, leaving nothing behind. A killed backup commits nothing,
 * and the next one makes a set a standby applies.
 */
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from '../support/s3rver.js';
import { ensurePostgres, mutateSiteTree, runPrimary, snapshotTree, tmpDir, type TreeEntry } from '../support/site.js';
import { apply, backup, createStandbySite, dropSiteDatabases, expectNoLeftovers, show, type StandbySite } from '../support/standby-helpers.js';

interface Sets {
  a: { id: string; files: TreeEntry[] };
  b: { id: string; files: TreeEntry[] };
}

async function prepare(s: StandbySite): Promise<Sets> {
  const f = s.primary.paths.files;
  for (let i = 0; i < 40; i++) await writeFile(join(f, 'archive', `thumb-${i}.jpg`), randomBytes(2_000 + i * 100));
  await writeFile(join(f, 'big', 'video.bin'), randomBytes(5 * 1024 * 1024));
  const idA = await backup(s);
  const ra = await apply(s);
  expect(ra.code, show(ra)).toBe(0);
  const a = { id: idA, files: await snapshotTree(s.standby.paths.files) };
  await mutateSiteTree(join(s.root, 'primary'));
  for (let i = 0; i < 40; i += 3) await writeFile(join(f, 'archive', `thumb-${i}.jpg`), randomBytes(1_500));
  // Edited in its middle: 5 MiB, most of it kept where it is, so the switch patches it in place.
  const video = await readFile(join(f, PATCHED));
  randomBytes(200_000).copy(video, 2_000_000);
  await writeFile(join(f, PATCHED), video);
  await mkdir(join(f, 'uploads', '2026'), { recursive: true });
  for (let i = 0; i < 20; i++) await writeFile(join(f, 'uploads', '2026', `u${i}.png`), randomBytes(3_000));
  await rm(join(f, 'empty-dir'), { recursive: true });
  await writeFile(join(f, 'empty-dir'), 'a file where a directory was\n');
  const idB = await backup(s);
  const rb = await apply(s);
  expect(rb.code, show(rb)).toBe(0);
  const b = { id: idB, files: await snapshotTree(s.standby.paths.files) };
  expect(b.files).not.toEqual(a.files);
  return { a, b };
}

/** Every entry of `tree` is the same entry of `a` or of `b` (files whole), and every path of both that is in neither... is allowed absent. */
function eachFromOneSet(tree: TreeEntry[], a: TreeEntry[], b: TreeEntry[]): string[] {
  const key = (e: TreeEntry) => JSON.stringify({ ...e, mode: e.type === 'dir' ? 0 : e.mode });
  const ok = new Set([...a, ...b].map(key));
  return tree.filter((e) => !ok.has(key(e))).map((e) => e.path);
}

/** The file set B edits in place (PlanOp pt): a kill at files-patched-part leaves it part-written. */
const PATCHED = 'big/video.bin';

interface Kill {
  label: string;
  point: string;
  recovery?: string;
  /** Where the live files may be right after the kill. */
  after: 'prev' | 'mix' | 'next';
  /** The killed apply is the first, into an empty files dir (the tree staged whole, its top-level entries renamed). */
  fresh?: boolean;
  /** Killed while PATCHED was being patched in place: it may be neither set's (between its ranges) until the roll-forward. */
  patching?: boolean;
}

const KILLS: Kill[] = [
  { label: 'journal-written', point: 'journal-written', after: 'prev' },
  { label: 'files-staged', point: 'files-staged', after: 'prev' },
  { label: 'staged-files', point: 'staged-files', after: 'prev' },
  { label: 'switching', point: 'switching', after: 'prev' },
  { label: 'files-renamed-one', point: 'files-renamed-one', after: 'mix' },
  { label: 'files-renamed-one, then again while rolling forward', point: 'files-renamed-one', recovery: 'files-renamed-one', after: 'mix' },
  { label: 'files-patched-part', point: 'files-patched-part', after: 'mix', patching: true },
  { label: 'files-patched-part, then again while rolling forward', point: 'files-patched-part', recovery: 'files-patched-part', after: 'mix', patching: true },
  { label: 'files-staged, then recovery at files-staged', point: 'files-staged', recovery: 'files-staged', after: 'prev' },
  { label: 'recorded', point: 'recorded', after: 'next' },
  { label: 'files-staged (first apply, empty dir)', point: 'files-staged', after: 'prev', fresh: true },
  { label: 'files-renamed-one (first apply, empty dir)', point: 'files-renamed-one', after: 'mix', fresh: true },
  { label: 'files-renamed-one (first apply, empty dir), then again while rolling forward', point: 'files-renamed-one', recovery: 'files-renamed-one', after: 'mix', fresh: true },
];

/** The live files dir as a tree; empty when it is not there. */
async function liveTree(s: StandbySite): Promise<TreeEntry[]> {
  return (await readdir(s.standby.paths.files).catch(() => null)) === null ? [] : snapshotTree(s.standby.paths.files);
}

async function killStandby(s: StandbySite, sets: Sets, k: Kill): Promise<void> {
  // Start from A (older), or from nothing, and apply B with the kill.
  const from = k.fresh ? [] : sets.a.files;
  if (k.fresh) {
    await rm(s.standby.paths.files, { recursive: true, force: true });
    await rm(join(s.standby.stateDir, 'files-record.ndjson'), { force: true });
  } else {
    const back = await apply(s, ['--set', sets.a.id, '--allow-older']);
    expect(back.code, show(back)).toBe(0);
  }
  expect(await liveTree(s)).toEqual(from);
  // B is this standby's set already when it starts from nothing: applied again (--force).
  const first = await apply(s, k.fresh ? ['--force'] : [], { TANDEM_FAULT_KILL_AT: k.point });
  expect(first.signal, `${k.label}: apply was to be killed\n${show(first)}`).toBe('SIGKILL');
  if (k.recovery) {
    const second = await apply(s, [], { TANDEM_FAULT_KILL_AT: k.recovery });
    expect(second.signal, `${k.label}: the recovering apply was to be killed\n${show(second)}`).toBe('SIGKILL');
  }
  const tree = await liveTree(s);
  if (k.after === 'prev') expect(tree, `${k.label}: live files are the previous set's`).toEqual(from);
  else if (k.after === 'next') expect(tree, `${k.label}: live files are the new set's`).toEqual(sets.b.files);
  else {
    // Killed mid-switch: some files are the new set's already, none is a part of one.
    expect(tree).not.toEqual(from);
    expect(tree).not.toEqual(sets.b.files);
    expect(eachFromOneSet(tree, from, sets.b.files).filter((p) => !k.patching || p !== PATCHED), `${k.label}: entries that are neither set's`).toEqual([]);
    // Killed with the file's bytes staged and being written into it.
    if (k.patching) expect((await readdir(join(`${s.standby.paths.files}.tandem-new`, 'data'))).filter((n) => n.endsWith('.patching')), k.label).toHaveLength(1);
  }
  // Killed before its switch, a --force apply leaves the set this standby's: applied again the same way.
  const done = await apply(s, k.fresh && k.after === 'prev' ? ['--force'] : []);
  expect(done.code, `${k.label}\n${show(done)}`).toBe(0);
  expect(await snapshotTree(s.standby.paths.files), `${k.label}: after recovery`).toEqual(sets.b.files);
  expect(await expectNoLeftovers(s)).toEqual([]);
}

async function killPrimary(s: StandbySite, sets: Sets): Promise<void> {
  await writeFile(join(s.primary.paths.files, 'archive', 'late.bin'), randomBytes(12 * 1024 * 1024));
  const r = await runPrimary(['backup', '--config', s.primary.configFile], { env: { ...s.env, TANDEM_FAULT_KILL_AT: 'files-pack-uploaded' } });
  expect(r.signal, show(r)).toBe('SIGKILL');
  const id = await backup(s);
  expect(id > sets.b.id).toBe(true);
  const a = await apply(s);
  expect(a.code, show(a)).toBe(0);
  expect(await snapshotTree(s.standby.paths.files)).toEqual(await snapshotTree(s.primary.paths.files));
}

for (const kind of ['dir', 's3'] as const) {
  describe(`files as objects, agents killed (${kind})`, () => {
    let root: string;
    let s3: S3rverHandle | undefined;
    let s: StandbySite;
    let sets: Sets;

    beforeAll(async () => {
      await ensurePostgres();
      root = await tmpDir('tandem-objects-crash-');
      if (kind === 's3') {
        s3 = await startS3rver();
        s = await createStandbySite(root, { filesObjects: true, filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'objects-crash' }), env: s3rverEnv() });
      } else s = await createStandbySite(root, { filesObjects: true });
      sets = await prepare(s);
    });

    afterAll(async () => {
      if (s) await dropSiteDatabases(s);
      if (s3) await s3.destroy();
      if (root) await rm(root, { recursive: true, force: true });
    });

    for (const k of kind === 'dir' ? KILLS : KILLS.filter((k) => ['files-staged', 'files-renamed-one', 'recorded'].includes(k.label))) {
      it(`standby killed at ${k.label}: the next apply finishes the job`, () => killStandby(s, sets, k));
    }
    it('primary killed after its first pack was uploaded: nothing committed, the next backup is whole', () => killPrimary(s, sets));
  });
}
