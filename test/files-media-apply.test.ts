/**
 * Files as content objects, a tree of media (files of hundreds of KB): the apply opens the new files
 * on the thread pool ahead of their writes and writes them there (WriteBehind), finishing each file
 * (mode, mtime, its record line) once its writes are done. What must hold whatever order the writes
 * complete in: the tree is the primary's, the record names each file's final inode and ctime in index
 * order, and a set that fails part-way (a pack missing after files were written and others opened
 * ahead) leaves the live files as they were and no staging behind. The files of 64 KiB or more
 * are written with O_DIRECT (where the file system takes it, as this machine's temp dir does).
 */
import { lstat, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { comparePaths } from '@tandem/shared';
import { contentPacks, filesUsing, indexContents, tamperObject } from './support/objects.js';
import { apply, backup, createStandbySite, dropSiteDatabases, expectNoLeftovers, liveState, removeStandbySite, show, type StandbySite, stagedLine } from './support/standby-helpers.js';
import { ensurePostgres, snapshotTree, tmpDir } from './support/site.js';

/** The record's file lines (after its first line) whose paths are under `under`. */
async function recordLines(s: StandbySite): Promise<Array<{ p: string; ino: string; ct: string; s: number }>> {
  const lines = (await readFile(join(s.standby.stateDir, 'files-record.ndjson'), 'utf8')).trim().split('\n').slice(1);
  return lines.map((l) => JSON.parse(l) as { p: string; ino: string; ct: string; s: number });
}

/** Each record line against the live file: the same inode, ctime and size (taken after its last write). */
async function recordMatchesLive(s: StandbySite): Promise<string[]> {
  const problems: string[] = [];
  const lines = await recordLines(s);
  for (let i = 1; i < lines.length; i++) if (comparePaths(lines[i - 1]!.p, lines[i]!.p) >= 0) problems.push(`out of order: ${lines[i - 1]!.p} before ${lines[i]!.p}`);
  for (const r of lines) {
    const st = await lstat(join(s.standby.paths.files, r.p), { bigint: true });
    if (String(st.ino) !== r.ino || String(st.ctimeNs) !== r.ct || Number(st.size) !== r.s) problems.push(`${r.p}: record ino ${r.ino} ct ${r.ct} size ${r.s}, live ${st.ino} ${st.ctimeNs} ${st.size}`);
  }
  return problems;
}

describe('files as content objects: a tree of media', () => {
  let root: string;
  let s: StandbySite;

  beforeAll(async () => {
    await ensurePostgres();
    root = await tmpDir('tandem-media-');
    s = await createStandbySite(root, { filesObjects: true });
    // ~24 MB in 60 files of 200-600 KB: three packs or more, files that average well over 64 KiB.
    for (let d = 0; d < 6; d++) {
      const dir = join(s.primary.paths.files, 'media', `album-${d}`);
      await mkdir(dir, { recursive: true });
      for (let f = 0; f < 10; f++) await writeFile(join(dir, `photo-${f}.jpg`), randomBytes(200_000 + ((d * 10 + f) * 7_919) % 400_000));
    }
  }, 60_000);

  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    await removeStandbySite(s, root);
  });

  it('a pack missing part-way through a first apply: refused, nothing live changed, no staging left; put back, the tree and its record are exact', async () => {
    const setId = await backup(s);
    const idx = await indexContents(s, setId);
    const packs = contentPacks(idx);
    expect(packs.length).toBeGreaterThanOrEqual(3);
    // The pack the last files use: the files before it are written (and some after it opened) when it is found missing.
    const last = packs.at(-1)!;
    const users = filesUsing(idx, last.id);
    expect(users.length).toBeGreaterThan(0);
    expect(users.length).toBeLessThan(idx.files.length / 2);
    const before = await liveState(s);
    const putBack = await tamperObject(s, last.id, 'missing');
    try {
      const r = await apply(s, ['--create-database']);
      expect(r.code, show(r)).toBe(5);
      expect(r.stderr).toContain(`object ${last.id}`);
      // The index's pages are kept for the next apply (a cache of verified pages, not live state).
      const after = await liveState(s);
      expect({ ...after, state: after.state.filter((n) => n !== 'index-pages.bin') }).toEqual(before);
      expect(await expectNoLeftovers(s)).toEqual([]);
    } finally {
      await putBack();
    }
    const a = await apply(s, ['--create-database']);
    expect(a.code, show(a)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    // Every file of 64 KiB or more went to the disk directly (this machine's temp file system takes O_DIRECT).
    expect(stagedLine(a.stderr).bytesDirect).toBe(idx.files.filter((f) => f.s >= 65_536).reduce((n, f) => n + f.s, 0));
    expect((await recordLines(s)).length).toBe(idx.files.length);
    expect(await recordMatchesLive(s)).toEqual([]);
  }, 180_000);

  it('a second set rewriting and adding media applies in place: the tree and its record are exact', async () => {
    for (let f = 0; f < 10; f += 2) await writeFile(join(s.primary.paths.files, 'media', 'album-1', `photo-${f}.jpg`), randomBytes(150_000 + f * 20_000));
    await mkdir(join(s.primary.paths.files, 'media', 'album-new'), { recursive: true });
    for (let f = 0; f < 5; f++) await writeFile(join(s.primary.paths.files, 'media', 'album-new', `clip-${f}.mp4`), randomBytes(300_000 + f));
    await backup(s);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await recordMatchesLive(s)).toEqual([]);
  }, 180_000);

  it('a large file edited in the middle is copied with direct reads and writes and patched', async () => {
    const video = join(s.primary.paths.files, 'media', 'album-2', 'clip.mp4');
    const content = randomBytes(3_000_000);
    await writeFile(video, content);
    await backup(s);
    const first = await apply(s);
    expect(first.code, show(first)).toBe(0);
    // The live copy was written directly by that apply (it is 64 KiB or more): not in the page cache.
    randomBytes(100_000).copy(content, 1_400_000);
    await writeFile(video, content);
    await backup(s);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    const staged = stagedLine(a.stderr);
    expect(staged.copiedDirect).toBe(1);
    expect(staged.bytesCopied).toBeGreaterThan(2_000_000);
    expect((await readFile(join(s.standby.paths.files, 'media', 'album-2', 'clip.mp4'))).equals(content)).toBe(true);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await recordMatchesLive(s)).toEqual([]);
  }, 180_000);

  it('an edited large file is copied while the new files are written; a pack missing meanwhile: refused, nothing live changed, no staging left', async () => {
    const video = join(s.primary.paths.files, 'media', 'album-2', 'clip.mp4');
    const content = await readFile(video);
    randomBytes(200_000).copy(content, 600_000);
    await writeFile(video, content);
    // New files after it in index order: written while its copy runs.
    await mkdir(join(s.primary.paths.files, 'media', 'album-9'), { recursive: true });
    for (let f = 0; f < 6; f++) await writeFile(join(s.primary.paths.files, 'media', 'album-9', `new-${f}.jpg`), randomBytes(150_000 + f));
    const setId = await backup(s);
    const idx = await indexContents(s, setId);
    const newPacks = new Set(idx.files.filter((f) => f.p.startsWith('media/album-9/')).flatMap((f) => f.b.map((b) => idx.packs[b[0]]!.id)));
    expect(newPacks.size).toBeGreaterThan(0);
    // The index's pages (a cache of verified pages, not live state) aside, nothing may change.
    const live = async () => {
      const st = await liveState(s);
      return { ...st, state: st.state.filter((n) => n !== 'index-pages.bin') };
    };
    const before = await live();
    const putBack = await tamperObject(s, [...newPacks][0]!, 'missing');
    try {
      const r = await apply(s);
      expect(r.code, show(r)).toBe(5);
      expect(r.stderr).toContain(`object ${[...newPacks][0]!}`);
      expect(await live()).toEqual(before);
      expect(await expectNoLeftovers(s)).toEqual([]);
    } finally {
      await putBack();
    }
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    const staged = stagedLine(a.stderr);
    expect(staged.copiedDirect).toBe(1);
    expect(staged.changed).toBe(7);
    expect((await readFile(join(s.standby.paths.files, 'media', 'album-2', 'clip.mp4'))).equals(content)).toBe(true);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await recordMatchesLive(s)).toEqual([]);
  }, 180_000);

  it('packs read and opened on the reading thread, their plaintext kept in its few buffers while held: exact whether the writes go directly or through the page cache', async () => {
    // ~40 MB of media in five packs or more (more packs than the reader has buffers), and text that deflates (a pack of its own kind).
    const album = join(s.primary.paths.files, 'media', 'album-big');
    await mkdir(album, { recursive: true });
    const text = join(s.primary.paths.files, 'notes');
    await mkdir(text, { recursive: true });
    const writeAll = async (round: number) => {
      for (let f = 0; f < 9; f++) await writeFile(join(album, `take-${f}.mov`), randomBytes(4_500_000 + f * 1_000 + round));
      for (let f = 0; f < 4; f++) await writeFile(join(text, `note-${f}.txt`), `round ${round}, note ${f}: ${'the quick brown fox jumps over the lazy dog. '.repeat(8_000 + f)}`);
    };
    for (const [round, env] of [
      [1, {}],
      [2, { TANDEM_DIRECT_WRITES: '0' }],
    ] as const) {
      await writeAll(round);
      await backup(s);
      const a = await apply(s, [], { TANDEM_PACK_THREAD_MIN: '1', ...env });
      expect(a.code, show(a)).toBe(0);
      const staged = stagedLine(a.stderr);
      expect(staged.packsOpenedInPlace, `round ${round}`).toBe(staged.packs);
      // More packs than the reader has buffers (four): each given back and used again.
      expect(staged.packs, `round ${round}`).toBeGreaterThan(4);
      expect(staged.bytesDirect > 0, `round ${round}: direct writes`).toBe(round === 1);
      expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
      for (let f = 0; f < 9; f++) expect((await readFile(join(s.standby.paths.files, 'media', 'album-big', `take-${f}.mov`))).equals(await readFile(join(album, `take-${f}.mov`))), `round ${round}: take-${f}`).toBe(true);
      expect(await recordMatchesLive(s)).toEqual([]);
    }
  }, 180_000);

  it('what the switch replaces or removes is freed after it: kept in the staging until then, and a kill in the switch leaves it there for the next apply to finish', async () => {
    const video = join(s.primary.paths.files, 'media', 'album-3', 'reel.mp4');
    await writeFile(video, randomBytes(2_500_000));
    await backup(s);
    const first = await apply(s);
    expect(first.code, show(first)).toBe(0);
    const liveVideo = join(s.standby.paths.files, 'media', 'album-3', 'reel.mp4');
    const oldIno = (await lstat(liveVideo)).ino;
    // The next set replaces the video and drops a whole album.
    await writeFile(video, randomBytes(2_600_000));
    await rm(join(s.primary.paths.files, 'media', 'album-0'), { recursive: true });
    await backup(s);
    const killed = await apply(s, [], { TANDEM_FAULT_KILL_AT: 'files-renamed-one' });
    expect(killed.code, show(killed)).not.toBe(0);
    // Killed after the first file renamed in: the album was moved aside (removals come first), not
    // removed, and the replaced video's inode (the live one, or a link to it) is still there.
    const aside = join(`${s.standby.paths.files}.tandem-new`, 'replaced');
    const held = await readdir(aside);
    const inodes = await Promise.all(held.map(async (n) => ({ n, st: await lstat(join(aside, n)) })));
    expect(inodes.some(({ st }) => st.isDirectory())).toBe(true);
    const videoNow = await lstat(liveVideo);
    expect(videoNow.ino === oldIno || inodes.some(({ st }) => st.isFile() && st.ino === oldIno)).toBe(true);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await recordMatchesLive(s)).toEqual([]);
    expect(await expectNoLeftovers(s)).toEqual([]);
  }, 180_000);

  it('a small file the next set rewrites is linked aside too: freed after the switch, not inside its rename', async () => {
    const thumb = join(s.primary.paths.files, 'media', 'album-3', 'thumb.jpg');
    await writeFile(thumb, randomBytes(6_000));
    await backup(s);
    const first = await apply(s);
    expect(first.code, show(first)).toBe(0);
    const liveThumb = join(s.standby.paths.files, 'media', 'album-3', 'thumb.jpg');
    const oldIno = (await lstat(liveThumb)).ino;
    await writeFile(thumb, randomBytes(7_000));
    await backup(s);
    // Killed right after the change's one file is renamed in: the file it replaced is not freed
    // yet, its inode still linked in the staging (a rename over it would have freed it).
    const killed = await apply(s, [], { TANDEM_FAULT_KILL_AT: 'files-renamed-one' });
    expect(killed.code, show(killed)).not.toBe(0);
    expect((await lstat(liveThumb)).ino).not.toBe(oldIno);
    const aside = join(`${s.standby.paths.files}.tandem-new`, 'replaced');
    const held = await Promise.all((await readdir(aside).catch(() => [] as string[])).map((n) => lstat(join(aside, n))));
    expect(held.filter((st) => st.isFile() && st.ino === oldIno)).toHaveLength(1);
    // The roll-forward finishes the switch (the staged copy is gone: nothing more is linked) and frees it.
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(await readFile(join(s.standby.paths.files, 'media', 'album-3', 'thumb.jpg'))).toEqual(await readFile(thumb));
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await recordMatchesLive(s)).toEqual([]);
    expect(await expectNoLeftovers(s)).toEqual([]);
  }, 180_000);

  /** A 6 MB file applied, then edited in the middle and appended to on the primary and backed up: its live path and inode on the standby. */
  async function editedLargeFile(name: string): Promise<{ video: string; content: Buffer; live: string; ino: bigint }> {
    const video = join(s.primary.paths.files, 'media', 'album-4', name);
    await mkdir(join(s.primary.paths.files, 'media', 'album-4'), { recursive: true });
    const content = randomBytes(6_000_000);
    await writeFile(video, content);
    await backup(s);
    const first = await apply(s);
    expect(first.code, show(first)).toBe(0);
    const live = join(s.standby.paths.files, 'media', 'album-4', name);
    const ino = (await lstat(live, { bigint: true })).ino;
    randomBytes(300_000).copy(content, 2_500_000);
    const grown = Buffer.concat([content, randomBytes(200_000)]);
    await writeFile(video, grown);
    await backup(s);
    return { video, content: grown, live, ino };
  }

  it('a large file edited in the middle and appended to is patched in place: only the bytes that changed are staged and written, its inode stays', async () => {
    const f = await editedLargeFile('long.mov');
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    const staged = stagedLine(a.stderr);
    expect(staged.filesPatched).toBe(1);
    // The 500 KB changed, and the chunks their edges fall in (at most 256 KiB each side): not the 6 MB.
    expect(staged.bytesPatched).toBeGreaterThanOrEqual(500_000);
    expect(staged.bytesPatched).toBeLessThan(1_100_000);
    expect(staged.bytesCopied).toBe(0);
    expect((await lstat(f.live, { bigint: true })).ino).toBe(f.ino);
    expect((await readFile(f.live)).equals(f.content)).toBe(true);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await recordMatchesLive(s)).toEqual([]);
    expect(await expectNoLeftovers(s)).toEqual([]);
    // The next apply of a set that changes nothing there keeps it as recorded.
    await backup(s);
    const again = await apply(s);
    expect(again.code, show(again)).toBe(0);
    expect(stagedLine(again.stderr).changed).toBe(0);
  }, 180_000);

  it('a switch killed part-way through patching a file in place: the roll-forward writes every range again, and the file and its record are exact', async () => {
    const f = await editedLargeFile('cut.mov');
    const killed = await apply(s, [], { TANDEM_FAULT_KILL_AT: 'files-patched-part' });
    expect(killed.signal, show(killed)).toBe('SIGKILL');
    // Killed after its first range: the staged bytes are marked as being written, the file is neither set's.
    const data = join(`${s.standby.paths.files}.tandem-new`, 'data');
    expect((await readdir(data)).filter((n) => n.endsWith('.patching'))).toHaveLength(1);
    const mid = await readFile(f.live);
    expect(mid.equals(f.content)).toBe(false);
    // Its journal is one a version that cannot patch refuses to roll forward (it would rename the staged bytes over the file).
    expect((JSON.parse(await readFile(join(s.standby.stateDir, 'journal.json'), 'utf8')) as { version: number }).version).toBe(2);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect((await lstat(f.live, { bigint: true })).ino).toBe(f.ino);
    expect((await readFile(f.live)).equals(f.content)).toBe(true);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await recordMatchesLive(s)).toEqual([]);
    expect(await expectNoLeftovers(s)).toEqual([]);
  }, 180_000);

  it('a file changed on the standby between staging and the patch: left as it is and not recorded, said so; the next apply writes it whole', async () => {
    const f = await editedLargeFile('touched.mov');
    // Killed with the set staged and the switch begun before the files (the roll-forward switches them).
    const killed = await apply(s, [], { TANDEM_FAULT_KILL_AT: 'security-swapped' });
    expect(killed.signal, show(killed)).toBe('SIGKILL');
    await writeFile(f.live, 'written on the standby\n', { flag: 'a' });
    const changed = await readFile(f.live);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(a.stderr).toContain('was changed on this standby after staging');
    expect(a.stderr).toContain(f.live);
    expect((await readFile(f.live)).equals(changed)).toBe(true);
    expect((await recordLines(s)).some((r) => r.p === 'media/album-4/touched.mov')).toBe(false);
    expect(await recordMatchesLive(s)).toEqual([]);
    expect(await expectNoLeftovers(s)).toEqual([]);
    const again = await apply(s, ['--force']);
    expect(again.code, show(again)).toBe(0);
    expect((await readFile(f.live)).equals(f.content)).toBe(true);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await recordMatchesLive(s)).toEqual([]);
  }, 180_000);
});
