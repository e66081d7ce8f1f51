/**
 * Files as content objects, with someone who can write the filestore but holds no key: after a good
 * set is applied, the files change and a new set is made; then one object (pack) of the new set that
 * the standby needs is
 *   (a) swapped for another object of the same site, (b) altered (one byte flipped),
 *   (c) removed, (d) replaced by a pack of another site (another files key, another recipient, the
 *   same size), (e) truncated.
 * Each time, on a directory filestore and on s3rver over HTTP: `apply` refuses the set naming the
 * object (exit 5), the live site is exactly as it was and no staging is left; `verify --read-data`
 * names the object and the files that use it; plain `verify` (a listing, nothing downloaded) finds
 * what changes an object's size or presence, and passes what only its bytes show; and once the
 * object is put back, verify passes and the set applies, the standby's files the primary's.
 * The same for a pack of the index's pages (altered, missing, foreign): the index cannot be read,
 * so apply and even plain verify refuse the set naming the object.
 */
import { appendFile, mkdir, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { indexContents, filesUsing, newPacks, newPagePacks, readObject, tamperObject, type IndexContents, type Tamper } from '../support/objects.js';
import { s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from '../support/s3rver.js';
import { ensurePostgres, requireCommands, snapshotTree, tmpDir } from '../support/site.js';
import { apply, backup, createStandbySite, expectNoLeftovers, liveState, removeStandbySite, runStandby, show, type StandbySite } from '../support/standby-helpers.js';

interface VerifyJson {
  ok: boolean;
  setId: string;
  artifacts: Array<{
    name: string;
    ok: boolean;
    error?: string;
    entries?: number;
    index?: { files: number; packs: number };
    objects?: { mode: string; packs: number; bytes: number; blobs?: number; problems: Array<{ id: string; code?: string; error: string; files: string[]; moreFiles: number }> };
  }>;
}

/** What an apply and `verify --read-data` say of each attack, and whether a listing (plain verify) sees it. */
const CASES: Array<{ how: Tamper; code: string; message: RegExp; listed: string | null }> = [
  { how: 'swapped', code: 'OBJECT_SIZE', message: /has \d+ bytes, the signed index says \d+ \(truncated or replaced\)/, listed: 'OBJECT_SIZE' },
  { how: 'altered', code: 'OBJECT_CHECKSUM', message: /does not match the SHA-256 in the signed index: it was altered or swapped/, listed: null },
  { how: 'missing', code: 'OBJECT_MISSING', message: /is missing from .*: the signed index lists it, the filestore does not have it/, listed: 'OBJECT_MISSING' },
  { how: 'foreign', code: 'OBJECT_CHECKSUM', message: /does not match the SHA-256 in the signed index: it was altered or swapped/, listed: null },
  { how: 'truncated', code: 'OBJECT_SIZE', message: /has \d+ bytes, the signed index says \d+ \(truncated or replaced\)/, listed: 'OBJECT_SIZE' },
];

const verify = (s: StandbySite, args: string[]) => runStandby(['verify', '--config', s.standby.configFile, ...args], { env: s.env });

function suite(name: string, make: (root: string) => Promise<StandbySite>, teardown: () => Promise<void> = async () => undefined) {
  describe(`tampered objects: ${name}`, () => {
    let root: string;
    let s: StandbySite;
    let first: IndexContents;
    let current: IndexContents;
    let round = 0;

    beforeAll(async () => {
      requireCommands(['zstd', 'pg_dump', 'pg_restore']);
      await ensurePostgres();
      root = await tmpDir('tandem-objects-tamper-');
      s = await make(root);
      const id = await backup(s);
      const a = await apply(s);
      expect(a.code, show(a)).toBe(0);
      first = current = await indexContents(s, id);
      expect(first.packs.length).toBeGreaterThan(0);
    }, 180_000);

    afterAll(async () => {
      await removeStandbySite(s, root);
      await teardown();
    });

    /** apply refuses the set naming the object (exit 5); nothing live changed, no staging left. */
    async function applyRefuses(id: string, message: RegExp, before: unknown): Promise<void> {
      const r = await apply(s);
      expect(r.code, show(r)).toBe(5);
      expect(r.stderr).toContain(`object ${id}`);
      expect(r.stderr).toMatch(message);
      expect(await liveState(s)).toEqual(before);
      expect(await expectNoLeftovers(s)).toEqual([]);
    }

    for (const c of CASES) {
      it(`(${c.how}) apply refuses the set naming the object, nothing live changes; verify --read-data names it; put back, it applies`, async () => {
        // New and changed files: their blobs go into a pack no applied set had.
        round++;
        const media = join(s.primary.paths.files, 'media', `round-${round}`);
        await mkdir(media, { recursive: true });
        await writeFile(join(media, 'upload.bin'), randomBytes(40_000 + round));
        await writeFile(join(media, 'notes.txt'), `round ${round}\n`.repeat(200));
        await appendFile(join(s.primary.paths.files, 'docs', 'emoji-🦄.txt'), `edited in round ${round}\n`);
        const setId = await backup(s);
        const idx = await indexContents(s, setId);
        const fresh = newPacks(current, idx);
        expect(fresh.length).toBeGreaterThan(0);
        const target = fresh[0]!;
        const users = filesUsing(idx, target.id);
        expect(users).toContain(`media/round-${round}/upload.bin`);

        let other: Buffer | undefined;
        if (c.how === 'swapped') {
          const donor = first.packs.find((p) => p.size !== target.size)!;
          other = await readObject(s, donor.id);
        }
        const before = await liveState(s);
        const putBack = await tamperObject(s, target.id, c.how, other);
        try {
          await applyRefuses(target.id, c.message, before);

          // --read-data: every object downloaded and checked; the failed one named with its files.
          const deep = await verify(s, ['--read-data', '--json']);
          expect(deep.code, show(deep)).toBe(5);
          const report = JSON.parse(deep.stdout) as VerifyJson;
          expect(report).toMatchObject({ ok: false, setId });
          const files = report.artifacts.find((a) => a.name === 'files')!;
          expect(report.artifacts.filter((a) => !a.ok).map((a) => a.name)).toEqual(['files']);
          expect(files.objects!.mode).toBe('read');
          expect(files.objects!.packs).toBe(idx.packs.length);
          expect(files.objects!.problems.map((p) => [p.id, p.code])).toEqual([[target.id, c.code]]);
          const problem = files.objects!.problems[0]!;
          expect(problem.error).toMatch(c.message);
          expect(problem.files.length + problem.moreFiles).toBe(users.length);
          expect(users).toEqual(expect.arrayContaining(problem.files));
          const text = await verify(s, ['--read-data']);
          expect(text.code, show(text)).toBe(5);
          expect(text.stdout).toMatch(new RegExp(`FAIL files .*1 of ${idx.packs.length} objects failed the check \\(read\\): ${target.id}`));
          expect(text.stdout).toContain(`used by ${JSON.stringify(problem.files[0])}`);
          expect(text.stderr).toMatch(/not restorable: files failed the drill/);

          // Plain verify lists the objects: it sees a missing or resized one, not altered bytes.
          const listed = await verify(s, ['--json']);
          const lr = JSON.parse(listed.stdout) as VerifyJson;
          const lf = lr.artifacts.find((a) => a.name === 'files')!;
          expect(lf.objects!.mode).toBe('listed');
          if (c.listed === null) {
            expect(listed.code, show(listed)).toBe(0);
            expect(lf.objects!.problems).toEqual([]);
          } else {
            expect(listed.code, show(listed)).toBe(5);
            expect(lf.objects!.problems.map((p) => [p.id, p.code])).toEqual([[target.id, c.listed]]);
            expect(lf.objects!.problems[0]!.files.length).toBeGreaterThan(0);
          }
          expect(await liveState(s)).toEqual(before);
        } finally {
          await putBack();
        }

        const good = await verify(s, ['--read-data', '--json']);
        expect(good.code, show(good)).toBe(0);
        const gf = (JSON.parse(good.stdout) as VerifyJson).artifacts.find((a) => a.name === 'files')!;
        expect(gf.objects).toMatchObject({ mode: 'read', packs: idx.packs.length, problems: [] });
        expect(gf.objects!.bytes).toBe(idx.packs.reduce((n, p) => n + p.size, 0));
        // Every blob of content and every page of the index, each once.
        expect(gf.objects!.blobs).toBe(new Set([...idx.files.flatMap((f) => f.b.map((b) => b.join(','))), ...idx.pages.map((g) => g.join(','))]).size);
        const a = await apply(s);
        expect(a.code, show(a)).toBe(0);
        expect(a.stdout).toContain(`applied set ${setId}`);
        expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
        current = idx;
      });
    }

    for (const how of ['altered', 'missing', 'foreign'] as const) {
      it(`(${how} pack of pages) apply and verify refuse the set naming the object, nothing live changes; put back, it applies`, async () => {
        round++;
        await writeFile(join(s.primary.paths.files, 'docs', `page-round-${round}.txt`), `round ${round}\n`);
        const setId = await backup(s);
        const idx = await indexContents(s, setId);
        const fresh = newPagePacks(current, idx);
        expect(fresh.length).toBe(1);
        const target = fresh[0]!;
        const c = CASES.find((x) => x.how === how)!;
        const before = await liveState(s);
        const putBack = await tamperObject(s, target.id, how);
        try {
          await applyRefuses(target.id, c.message, before);
          // Without the page the index cannot be read at all: plain verify says so too.
          const v = await verify(s, ['--json']);
          expect(v.code, show(v)).toBe(5);
          const files = (JSON.parse(v.stdout) as VerifyJson).artifacts.find((a) => a.name === 'files')!;
          expect(files.ok).toBe(false);
          expect(files.error).toContain(`object ${target.id}`);
        } finally {
          await putBack();
        }
        const a = await apply(s);
        expect(a.code, show(a)).toBe(0);
        expect(a.stdout).toContain(`applied set ${setId}`);
        expect(await snapshotTree(s.standby.paths.files, { mtimes: true })).toEqual(await snapshotTree(s.primary.paths.files, { mtimes: true }));
        current = idx;
      });
    }
  });
}

suite('a directory', (root) => createStandbySite(root, { filesObjects: true }));
// The same attacks with every pack read and hashed on the apply's second thread (PackReadThread),
// which an apply of a few packs does not start.
suite('a directory, packs read on a second thread', (root) => createStandbySite(root, { filesObjects: true, env: { TANDEM_PACK_THREAD_MIN: '1' } }));

let s3: S3rverHandle | undefined;
suite(
  's3rver over HTTP',
  async (root) => {
    s3 = await startS3rver();
    return createStandbySite(root, { filesObjects: true, filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'unique' }), env: s3rverEnv() });
  },
  async () => {
    await s3?.destroy();
  },
);
