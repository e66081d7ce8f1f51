/**
 * Files as content objects (keys.filesKeyFile on both agents): the round trip through a real
 * filestore with the real CLIs, what a second set costs (only what changed is read, uploaded,
 * downloaded and written), and the switch in place.
 */
import { appendFile, chmod, cp, lstat, readFile, readdir, rm, symlink, writeFile, rename, mkdir, stat, utimes } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { comparePaths } from '@tandem/shared';
import { apply, backup, createStandbySite, dropSiteDatabases, removeStandbySite, show, type StandbySite, stagedLine } from './support/standby-helpers.js';
import { ensurePostgres, mutateSiteTree, runPrimary, snapshotTree, tmpDir } from './support/site.js';

async function listObjects(s: StandbySite): Promise<string[]> {
  const fs = s.openStore();
  try {
    return (await fs.list(`${s.site}/objects/`)).map((o) => o.key);
  } finally {
    await fs.close();
  }
}

async function backupJson(s: StandbySite, extra: string[] = []) {
  const r = await runPrimary(['backup', '--config', s.primary.configFile, '--json', ...extra], { env: s.env });
  if (r.code !== 0) throw new Error(`backup failed: ${r.stderr}`);
  if (process.env.DEBUG_OBJECTS) console.log(r.stderr);
  return JSON.parse(r.stdout) as { setId: string; artifacts: Array<{ name: string; kind: string; file: string }>; files?: { filesRead: number; blobsUploaded: number; newBytes: number; bytesRead: number; packsUploaded: number; files: number; cache: string } };
}

/** Every directory under `dir` (not itself): its mode and mtime in milliseconds. */
async function dirTimes(dir: string, rel = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const d of await readdir(join(dir, rel), { withFileTypes: true })) {
    if (!d.isDirectory()) continue;
    const p = rel === '' ? d.name : `${rel}/${d.name}`;
    const st = await stat(join(dir, p));
    out[p] = `${(st.mode & 0o7777).toString(8)} ${Math.floor(st.mtimeMs)}`;
    Object.assign(out, await dirTimes(dir, p));
  }
  return out;
}

/** The first file named `name` under `dir`. */
async function findFile(dir: string, name: string): Promise<string | undefined> {
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, d.name);
    if (d.isFile() && d.name === name) return p;
    if (d.isDirectory()) {
      const found = await findFile(p, name);
      if (found) return found;
    }
  }
  return undefined;
}

describe('files as content objects', () => {
  let root: string;
  let s: StandbySite;

  beforeAll(async () => {
    await ensurePostgres();
    root = await tmpDir('tandem-objects-');
    s = await createStandbySite(root, { filesObjects: true });
  }, 60_000);

  afterAll(async () => {
    for (const t of [s?.primary.paths.files, s?.standby.paths.files]) if (t) await chmod(join(t, 'docs', 'frozen'), 0o755).catch(() => undefined);
    if (s) await dropSiteDatabases(s);
    await removeStandbySite(s, root);
  });

  it('backs up the files as an index and packs, and a standby applies them exactly', async () => {
    // A directory the standby must not be able to write in once applied (0555), and a file at the
    // top: the first apply stages the tree whole and renames only its top-level entries.
    await mkdir(join(s.primary.paths.files, 'docs', 'frozen'), { recursive: true });
    await writeFile(join(s.primary.paths.files, 'docs', 'frozen', 'terms.txt'), 'the terms as they were\n');
    await chmod(join(s.primary.paths.files, 'docs', 'frozen'), 0o555);
    await writeFile(join(s.primary.paths.files, 'robots.txt'), 'User-agent: *\n');
    await utimes(join(s.primary.paths.files, 'docs'), new Date('2021-03-04T05:06:07.891Z'), new Date('2021-03-04T05:06:07.891Z'));
    const r = await backupJson(s);
    const files = r.artifacts.find((a) => a.name === 'files')!;
    expect(files.kind).toBe('files-index');
    expect(files.file).toBe('files.index.zst.age');
    expect(r.files!.cache).toBe('none');
    expect(r.files!.filesRead).toBe(r.files!.files);
    const objects = await listObjects(s);
    expect(objects.length).toBeGreaterThan(0);
    // Small files are packed: far fewer objects than files.
    expect(objects.length).toBeLessThan(r.files!.files);
    for (const k of objects) expect(k).toMatch(new RegExp(`^${s.site}/objects/[0-9a-f]{2}/[0-9a-f]{64}$`));

    await rm(s.standby.paths.files, { recursive: true, force: true });
    const a = await apply(s, [], { TANDEM_LOG_LEVEL: 'debug' });
    expect(a.code, show(a)).toBe(0);
    // Into an empty dir: one rename per top-level entry, not one per file.
    const switched = a.stderr.split('\n').filter((l) => l.includes('"files switched in place"')).map((l) => JSON.parse(l) as { renamed: number });
    expect(switched).toEqual([expect.objectContaining({ renamed: (await readdir(s.primary.paths.files)).length })]);
    expect(stagedLine(a.stderr).changed).toBeGreaterThan((await readdir(s.primary.paths.files)).length);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    // Directories too: modes (the 0555 one made, its file in it) and mtimes to the millisecond.
    expect(await dirTimes(s.standby.paths.files)).toEqual(await dirTimes(s.primary.paths.files));
    expect((await stat(join(s.standby.paths.files, 'docs', 'frozen'))).mode & 0o7777).toBe(0o555);
    // What the first apply recorded holds (the top-level file's too, renamed after it was staged):
    // the same set again writes nothing.
    const again = await apply(s, ['--force']);
    expect(again.code, show(again)).toBe(0);
    expect(stagedLine(again.stderr)).toMatchObject({ changed: 0, removed: 0 });
    expect(await dirTimes(s.standby.paths.files)).toEqual(await dirTimes(s.primary.paths.files));
  }, 120_000);

  it('a second set reads and uploads only what changed, and the standby writes only that', async () => {
    const before = await listObjects(s);
    const big = join(s.primary.paths.files, 'big', 'random-1mb.bin');
    const bigIno = (await stat(join(s.standby.paths.files, 'big', 'random-1mb.bin'))).ino;
    await mutateSiteTree(join(s.primary.paths.files, '..'));
    await writeFile(join(s.primary.paths.files, 'big', 'video.bin'), randomBytes(6 * 1024 * 1024));
    const r1 = await backupJson(s);
    expect(r1.files!.cache).toBe('used');
    // Two new files, one edited, one new large file; not the 1 MiB file or the others.
    expect(r1.files!.filesRead).toBe(3);
    const a1 = await apply(s);
    expect(a1.code, show(a1)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    // An unchanged file was not rewritten: same inode.
    expect((await stat(join(s.standby.paths.files, 'big', 'random-1mb.bin'))).ino).toBe(bigIno);

    // Append to the large file: only its last chunk(s) are new.
    await appendFile(join(s.primary.paths.files, 'big', 'video.bin'), randomBytes(1000));
    const r2 = await backupJson(s);
    expect(r2.files!.filesRead).toBe(1);
    // A directory nothing changed in is not touched by the apply (not even a chmod: its ctime stays).
    const docsCtime = (await stat(join(s.standby.paths.files, 'docs'), { bigint: true })).ctimeNs;
    expect(r2.files!.newBytes).toBeLessThan(5 * 1024 * 1024);
    expect(r2.files!.newBytes).toBeGreaterThan(1000);
    const videoIno = (await stat(join(s.standby.paths.files, 'big', 'video.bin'))).ino;
    const a2 = await apply(s);
    expect(a2.code, show(a2)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect((await listObjects(s)).length).toBeGreaterThan(before.length);
    // The blobs the appended file kept are read from the standby's own copy, not downloaded again.
    expect((await stat(join(s.standby.paths.files, 'docs'), { bigint: true })).ctimeNs).toBe(docsCtime);
    const staged2 = stagedLine(a2.stderr);
    expect(staged2).toMatchObject({ changed: 1 });
    expect(staged2.bytesReused).toBeGreaterThan(2 * 1024 * 1024);
    expect(staged2.bytesWritten - staged2.bytesReused).toBeLessThan(r2.files!.newBytes + 1);
    // Appended to (6 MiB, 4 MiB or more): patched in place, the blobs it kept left where they were,
    // neither copied nor read; only the new bytes staged, and the live file's inode stays.
    expect(staged2).toMatchObject({ filesPatched: 1, bytesCopied: 0 });
    expect(staged2.bytesPatched).toBeGreaterThanOrEqual(1000);
    expect(staged2.bytesPatched).toBeLessThan(r2.files!.newBytes + 1);
    expect((await stat(join(s.standby.paths.files, 'big', 'video.bin'))).ino).toBe(videoIno);
    // A smaller file appended to (1 MiB): its live copy copied whole by the kernel, the new blobs
    // written over it, and the copy renamed into place (a new inode).
    await appendFile(big, randomBytes(1000));
    await backupJson(s);
    const a2b = await apply(s);
    expect(a2b.code, show(a2b)).toBe(0);
    const staged2b = stagedLine(a2b.stderr);
    expect(staged2b).toMatchObject({ changed: 1, filesPatched: 0 });
    expect(staged2b.bytesCopied).toBeGreaterThan(900_000);
    expect(staged2b.bytesCopied).toBe(staged2b.bytesReused);
    expect((await stat(join(s.standby.paths.files, 'big', 'random-1mb.bin'))).ino).not.toBe(bigIno);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));

    // The standby's copy changed since this standby wrote it (its ctime moved): nothing is taken from it.
    await writeFile(join(s.standby.paths.files, 'big', 'video.bin'), randomBytes(6 * 1024 * 1024));
    await appendFile(join(s.primary.paths.files, 'big', 'video.bin'), randomBytes(1000));
    const r3 = await backupJson(s);
    expect(r3.files!.filesRead).toBe(1);
    const a3 = await apply(s);
    expect(a3.code, show(a3)).toBe(0);
    expect(stagedLine(a3.stderr)).toMatchObject({ changed: 1, bytesReused: 0, bytesCopied: 0 });
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));

    // A file the set leaves as it was, altered on the standby (same size, same mtime put back: only
    // its ctime says so): applying the same set again writes it again, and only it.
    const local = join(s.standby.paths.files, 'big', 'random-1mb.bin');
    const localStat = await stat(local);
    await writeFile(local, Buffer.alloc(localStat.size, 7));
    await utimes(local, localStat.atime, localStat.mtime);
    const a4 = await apply(s, ['--force']);
    expect(a4.code, show(a4)).toBe(0);
    expect(stagedLine(a4.stderr)).toMatchObject({ changed: 1, removed: 0 });
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    // And once more with nothing altered: nothing written.
    const a5 = await apply(s, ['--force']);
    expect(a5.code, show(a5)).toBe(0);
    expect(stagedLine(a5.stderr)).toMatchObject({ changed: 0, removed: 0 });

    // A file whose mode and mtime alone changed on the primary: the switch sets them on the live
    // file (not written again), and its record line, written again in its place among the kept
    // files' lines, says the ctime that moved: the same set again writes nothing.
    const robots = join(s.primary.paths.files, 'robots.txt');
    await chmod(robots, 0o640);
    await utimes(robots, new Date('2022-01-02T03:04:05.678Z'), new Date('2022-01-02T03:04:05.678Z'));
    await backupJson(s);
    const robotsIno = (await stat(join(s.standby.paths.files, 'robots.txt'))).ino;
    const a6 = await apply(s);
    expect(a6.code, show(a6)).toBe(0);
    expect(stagedLine(a6.stderr)).toMatchObject({ changed: 0, removed: 0 });
    expect((await stat(join(s.standby.paths.files, 'robots.txt'))).ino).toBe(robotsIno);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    const a7 = await apply(s, ['--force']);
    expect(a7.code, show(a7)).toBe(0);
    expect(stagedLine(a7.stderr)).toMatchObject({ changed: 0, removed: 0 });
    const recorded = (await readFile(join(s.standby.stateDir, 'files-record.ndjson'), 'utf8')).trim().split('\n').slice(1).map((l) => (JSON.parse(l) as { p: string }).p);
    expect(recorded).toEqual([...new Set(recorded)].sort(comparePaths));
    void big;
  }, 180_000);

  it('a file edited in the middle is copied by the kernel and patched; pages of the last index are not fetched again, and a damaged copy of them costs a fetch', async () => {
    const f = s.primary.paths.files;
    // Enough entries for an index of several pages.
    await mkdir(join(f, 'many'), { recursive: true });
    for (let i = 0; i < 300; i++) await writeFile(join(f, 'many', `thumb-${String(i).padStart(3, '0')}.jpg`), `thumbnail ${i}\n`);
    const middle = join(f, 'big', 'middle.bin');
    await writeFile(middle, randomBytes(3 * 1024 * 1024));
    await backupJson(s);
    // --force: every page read (none skipped as the last apply had it), so each goes through the copy.
    const a1 = await apply(s, ['--force']);
    expect(a1.code, show(a1)).toBe(0);
    const cache = await findFile(s.standby.stateDir, 'index-pages.bin');
    expect(cache, 'the standby keeps the pages of the index it read').toBeDefined();
    expect((await stat(cache!)).mode & 0o777).toBe(0o600);

    // 64 KiB overwritten in the middle, same size: the blobs before and after stay where they were.
    const data = await readFile(middle);
    randomBytes(64 * 1024).copy(data, 1536 * 1024);
    await writeFile(middle, data);
    await backupJson(s);
    const a2 = await apply(s, ['--force']);
    expect(a2.code, show(a2)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect((await readFile(join(s.standby.paths.files, 'big', 'middle.bin'))).equals(data)).toBe(true);
    const st2 = stagedLine(a2.stderr);
    expect(st2).toMatchObject({ changed: 1 });
    // Most of the file came from the standby's own copy through the kernel; little was fetched.
    expect(st2.bytesCopied).toBeGreaterThan(2 * 1024 * 1024);
    expect(st2.bytesWritten - st2.bytesReused).toBeLessThan(1024 * 1024);
    expect(st2.pagesCached).toBeGreaterThan(3);

    // The copy of the pages damaged (bytes of its pages flipped): those pages are fetched again,
    // the apply is the same. Then cut short (no table): every page fetched.
    const bytes = await readFile(cache!);
    for (let i = 0; i < 4000 && i < bytes.length - 8; i += 97) bytes[i] = bytes[i]! ^ 0xff;
    await writeFile(cache!, bytes);
    await writeFile(join(f, 'many', 'thumb-150.jpg'), 'changed\n');
    await backupJson(s);
    const a3 = await apply(s, ['--force']);
    expect(a3.code, show(a3)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    const st3 = stagedLine(a3.stderr);
    expect(st3.pagesCached).toBeLessThan(st2.pagesCached);
    await writeFile(cache!, bytes.subarray(0, 3));
    await writeFile(join(f, 'many', 'thumb-151.jpg'), 'changed too\n');
    await backupJson(s);
    const a4 = await apply(s, ['--force']);
    expect(a4.code, show(a4)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(stagedLine(a4.stderr).pagesCached).toBe(0);
    // Written whole again by that apply, for the next one.
    expect((await stat(cache!)).size).toBeGreaterThan(bytes.length / 2);
  }, 180_000);

  it('pages the last apply had are skipped whole, their files kept as recorded; a files delta since, or --force, has them read', async () => {
    const f = s.primary.paths.files;
    await mkdir(join(f, 'skip'), { recursive: true });
    for (let i = 0; i < 400; i++) await writeFile(join(f, 'skip', `t-${String(i).padStart(3, '0')}.txt`), `file ${i}\n`);
    await backupJson(s);
    const a0 = await apply(s, ['--force']);
    expect(a0.code, show(a0)).toBe(0);
    expect(stagedLine(a0.stderr).pagesSkipped).toBe(0);
    /** skip/t-N.txt changed on the primary, a set made and applied: the apply, which succeeded. */
    const changeAndApply = async (n: number, args: string[] = []) => {
      await writeFile(join(f, 'skip', `t-${n}.txt`), `changed ${n}\n`);
      await backupJson(s);
      const a = await apply(s, args);
      expect(a.code, show(a)).toBe(0);
      return a;
    };
    /** A standby file's atime and mtime set to the primary's copy's (its ctime still moves). */
    const timesAsOnPrimary = async (rel: string) => {
      const st = await stat(join(f, rel));
      await utimes(join(s.standby.paths.files, rel), st.atime, st.mtime);
    };
    /** The files-delta record beside the record: one line saying a delta wrote `rel` (blobs no set has), under `g`. */
    const deltaRecordSays = async (g: string, rel: string) => {
      const st = await stat(join(s.standby.paths.files, rel), { bigint: true });
      await writeFile(join(s.standby.stateDir, 'files-record-delta.ndjson'), `${JSON.stringify({ gen: g })}\n${JSON.stringify({ p: rel, d: 'f'.repeat(32), s: Number(st.size), ino: String(st.ino), ct: String(st.ctimeNs) })}\n`);
    };

    // One file changed, one added, one removed: the pages around them are read, the others skipped.
    await writeFile(join(f, 'skip', 't-200.txt'), 'changed 200\n');
    await writeFile(join(f, 'skip', 't-100a.txt'), 'new\n');
    await rm(join(f, 'skip', 't-300.txt'));
    await backupJson(s);
    const a1 = await apply(s);
    expect(a1.code, show(a1)).toBe(0);
    const st1 = stagedLine(a1.stderr);
    expect(st1.pagesSkipped).toBeGreaterThan(5);
    expect(st1).toMatchObject({ changed: 2, removed: 1 });
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));

    // A file on a skipped page altered on the standby (its mtime put back): not looked at by an
    // apply of another change, written again by --force, which looks at every file.
    const local = join(s.standby.paths.files, 'skip', 't-010.txt');
    const was = await stat(local);
    await writeFile(local, 'file XX\n');
    await utimes(local, was.atime, was.mtime);
    // And one on the page that changes (t-390's), taken as the last apply left it, entry by entry.
    const shapeLine = (await readFile(join(s.standby.stateDir, 'files-pages.ndjson'), 'utf8')).split('\n').find((l) => l.includes('"skip/t-390.txt"'))!;
    const neighbour = (JSON.parse(shapeLine) as { e: Array<[string, string]> }).e.find((x) => x[1] === 'f' && x[0] !== 'skip/t-390.txt')![0];
    const near = join(s.standby.paths.files, neighbour);
    const nearWas = await stat(near);
    const nearText = await readFile(near, 'utf8');
    await writeFile(near, nearText.replace(/\d/, 'X'));
    await utimes(near, nearWas.atime, nearWas.mtime);
    const a2 = await changeAndApply(390);
    expect(stagedLine(a2.stderr)).toMatchObject({ changed: 1 });
    expect(stagedLine(a2.stderr).pagesSkipped).toBeGreaterThan(5);
    expect(await readFile(local, 'utf8')).toBe('file XX\n');
    expect(await readFile(near, 'utf8')).not.toBe(nearText);
    const a3 = await apply(s, ['--force']);
    expect(a3.code, show(a3)).toBe(0);
    expect(stagedLine(a3.stderr)).toMatchObject({ changed: 2, pagesSkipped: 0 });
    expect(await readFile(near, 'utf8')).toBe(nearText);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));

    // The record: its lines in index order, each path once, under a generation of its own.
    const recordPath = join(s.standby.stateDir, 'files-record.ndjson');
    const recordLines = (await readFile(recordPath, 'utf8')).trim().split('\n');
    const { gen } = JSON.parse(recordLines[0]!) as { gen: string };
    expect(gen).toMatch(/^[0-9a-f]{16}$/);
    const recorded = recordLines.slice(1).map((l) => (JSON.parse(l) as { p: string }).p);
    expect(recorded).toEqual([...new Set(recorded)].sort(comparePaths));
    expect(recorded).toContain('skip/t-020.txt');

    // A file a files delta wrote since the last set (the delta's blobs recorded beside the record
    // under its generation, as files-delta.ts does), back on the primary as the last set had it:
    // its page is the same page, and is read, not skipped: the file is written as the set has it.
    // A delta record of another generation (stale: a switch since) is not used.
    const deltaRecord = join(s.standby.stateDir, 'files-record-delta.ndjson');
    const deltaFile = join(s.standby.paths.files, 'skip', 't-020.txt');
    const staleFile = join(s.standby.paths.files, 'skip', 't-021.txt');
    const staleText = await readFile(staleFile, 'utf8');
    await writeFile(deltaFile, 'from a delta\n');
    await deltaRecordSays(gen, 'skip/t-020.txt');
    const a4 = await changeAndApply(391);
    expect(stagedLine(a4.stderr)).toMatchObject({ changed: 2 });
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await readFile(deltaRecord).catch(() => null)).toBeNull();
    // Stale: it says t-021 was written by a delta (so its page would be read, and the file with the
    // standby's own text kept only if the record's line held): it is not used, the page is skipped.
    const gen4 = (JSON.parse((await readFile(recordPath, 'utf8')).split('\n')[0]!) as { gen: string }).gen;
    expect(gen4).not.toBe(gen);
    await writeFile(staleFile, 'XX standby text\n');
    await timesAsOnPrimary('skip/t-021.txt');
    await deltaRecordSays(gen, 'skip/t-021.txt');
    const a8 = await changeAndApply(395);
    expect(stagedLine(a8.stderr)).toMatchObject({ changed: 1 });
    expect(await readFile(staleFile, 'utf8')).toBe('XX standby text\n');
    await writeFile(staleFile, staleText);
    await timesAsOnPrimary('skip/t-021.txt');

    // A record written before it was kept in order (no generation, lines in any order, a line
    // appended after them wins): read whole and put in order, what it says is kept.
    const now = (await readFile(recordPath, 'utf8')).trim().split('\n');
    const oldHead = JSON.parse(now[0]!) as { gen?: string };
    delete oldHead.gen;
    const body = now.slice(1).reverse();
    const restored = await stat(staleFile, { bigint: true });
    body.push(JSON.stringify({ p: 'skip/t-021.txt', d: body.map((l) => JSON.parse(l) as { p: string; d: string }).find((x) => x.p === 'skip/t-021.txt')!.d, s: staleText.length, ino: String(restored.ino), ct: String(restored.ctimeNs) }));
    await writeFile(recordPath, `${[JSON.stringify(oldHead), ...body].join('\n')}\n`);
    const a9 = await changeAndApply(396, ['--force']);
    expect(stagedLine(a9.stderr)).toMatchObject({ changed: 1 });
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    const rewritten = (await readFile(recordPath, 'utf8')).trim().split('\n');
    expect(JSON.parse(rewritten[0]!)).toHaveProperty('gen');
    const again = rewritten.slice(1).map((l) => (JSON.parse(l) as { p: string }).p);
    expect(again).toEqual([...new Set(again)].sort(comparePaths));

    // A record damaged half-way (two lines in the middle of a page swapped: out of order). A page
    // skipped whole has its files' lines copied as they are, only its first and last line read: the
    // damage goes unseen, nothing on disk is trusted for it (the page's files are not looked at
    // either way), and the tree comes out right.
    const cut = (await readFile(recordPath, 'utf8')).trim().split('\n');
    const half = Math.floor(cut.length / 2);
    [cut[half], cut[half + 1]] = [cut[half + 1]!, cut[half]!];
    await writeFile(recordPath, `${cut.join('\n')}\n`);
    const a10a = await changeAndApply(397);
    expect(a10a.stderr).not.toContain('the files record cannot be read past this point');
    expect(stagedLine(a10a.stderr)).toMatchObject({ changed: 1 });
    expect(stagedLine(a10a.stderr).pagesSkipped).toBeGreaterThan(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    // An apply that reads the record through (--force, as the daily look at every file) finds it:
    // read up to it, with a warning; the files after it are looked at as new (written again, not
    // trusted), the tree comes out right, and the record is in order again.
    const a10 = await changeAndApply(398, ['--force']);
    expect(a10.stderr).toContain('the files record cannot be read past this point');
    expect(stagedLine(a10.stderr).changed).toBeGreaterThan(1);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    const healed = (await readFile(recordPath, 'utf8')).trim().split('\n').slice(1).map((l) => (JSON.parse(l) as { p: string }).p);
    expect(healed).toEqual([...new Set(healed)].sort(comparePaths));

    // The page shapes damaged (a digit changed: still JSON): not used, every page read.
    const shapesFile = join(s.standby.stateDir, 'files-pages.ndjson');
    const shapes = await readFile(shapesFile, 'utf8');
    await writeFile(shapesFile, shapes.replace(/"n":(\d)/, (_m, d: string) => `"n":${(Number(d) + 1) % 10}`));
    const a6 = await changeAndApply(393);
    expect(stagedLine(a6.stderr)).toMatchObject({ changed: 1, pagesSkipped: 0 });
    expect(a6.stderr).toContain('do not match the SHA-256 the record has for them');
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));

    // (Every file of this test has content no other file has: the next test counts bytes stored once.)
    // A day after the last apply that looked at every file, one looks again (the record's clock).
    const text = await readFile(recordPath, 'utf8');
    const head = JSON.parse(text.slice(0, text.indexOf('\n'))) as { checked: number };
    expect(head.checked).toBeGreaterThan(Date.now() - 600_000);
    await writeFile(recordPath, `${JSON.stringify({ ...head, checked: Date.now() - 25 * 3600 * 1000 })}${text.slice(text.indexOf('\n'))}`);
    const a5 = await changeAndApply(392);
    expect(stagedLine(a5.stderr)).toMatchObject({ changed: 1, pagesSkipped: 0 });
    const after = await readFile(recordPath, 'utf8');
    expect((JSON.parse(after.slice(0, after.indexOf('\n'))) as { checked: number }).checked).toBeGreaterThan(Date.now() - 600_000);

    // The files dir copied and put in its place (a restore by hand, or a standby cloned from
    // another's image, state dir and all): another dir, so nothing is taken as recorded.
    const live = s.standby.paths.files;
    await cp(live, `${live}.copy`, { recursive: true, preserveTimestamps: true });
    await rm(live, { recursive: true, force: true });
    await rename(`${live}.copy`, live);
    const a7 = await changeAndApply(394);
    expect(stagedLine(a7.stderr).pagesSkipped).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
  }, 180_000);

  it('types that change place (a file becomes a directory, a directory a symlink) and --reread', async () => {
    const f = s.primary.paths.files;
    await rm(join(f, 'docs'), { recursive: true });
    await writeFile(join(f, 'docs'), 'now a file\n');
    await rm(join(f, 'bin', 'resize.sh'));
    await mkdir(join(f, 'bin', 'resize.sh'));
    await writeFile(join(f, 'bin', 'resize.sh', 'inside'), 'x');
    await rename(join(f, 'empty-dir'), join(f, 'empty-dir-renamed'));
    const r = await backupJson(s, ['--reread']);
    expect(r.files!.filesRead).toBe(r.files!.files);
    expect(r.files!.blobsUploaded).toBeLessThan(3);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    expect(await readdir(join(root, 'standby'))).not.toContain('files.tandem-new');

    // On the standby, a symlink where the set has a directory, to a directory outside the files dir
    // holding what the set does not have: the link is replaced by the directory, nothing is
    // listed or removed through it (the removals are found by listing directories, never a link).
    const outside = join(root, 'outside-dir');
    await mkdir(outside, { recursive: true });
    await writeFile(join(outside, 'keep-me.txt'), 'not the standby files dir\n');
    await writeFile(join(outside, 'inside'), 'x');
    await rm(join(s.standby.paths.files, 'bin', 'resize.sh'), { recursive: true });
    await symlink(outside, join(s.standby.paths.files, 'bin', 'resize.sh'));
    const l = await apply(s, ['--force']);
    expect(l.code, show(l)).toBe(0);
    expect(await readFile(join(outside, 'keep-me.txt'), 'utf8')).toBe('not the standby files dir\n');
    expect((await lstat(join(s.standby.paths.files, 'bin', 'resize.sh'))).isDirectory()).toBe(true);
    expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
  }, 120_000);

  it('an object lost from the filestore: the apply refuses naming it, and --repair-objects stores the content again', async () => {
    await writeFile(join(s.primary.paths.files, 'big', 'lost.bin'), randomBytes(300_000));
    await backupJson(s);
    // The pack holding lost.bin: the newest object (the one only these sets have).
    const fs = s.openStore();
    try {
      const objs = await fs.list(`${s.site}/objects/`);
      const newest = objs.sort((a, b) => a.modified.getTime() - b.modified.getTime()).at(-1)!;
      await fs.delete(newest.key);
      const bad = await apply(s);
      expect(bad.code, show(bad)).toBe(5);
      expect(bad.stderr).toContain(newest.key.split('/').at(-1)!);
      expect(bad.stderr).toContain('--repair-objects');
      const r = await backupJson(s, ['--repair-objects']);
      expect(r.files!.newBytes).toBe(r.files!.bytesRead);
      expect(r.files!.filesRead).toBe(r.files!.files);
      const ok = await apply(s);
      expect(ok.code, show(ok)).toBe(0);
      expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
    } finally {
      await fs.close();
    }
  }, 180_000);
});
