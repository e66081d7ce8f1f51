/**
 * The staged dump's data offsets (packages/standby-agent/src/apply/dump-offsets.ts): the primary's
 * pg_dump writes into a pipe, so its table of contents has no data offsets, and a parallel
 * pg_restore reads through the dump to find each table's data. Written in by the standby, the file
 * is the one pg_dump writes when it can seek: checked byte for byte against pg_dump's own, on a real
 * database with tables in two schemas, an empty table, sequences and large objects; restored with
 * pg_restore -j2 to the same state; and anything not laid out as expected is left untouched.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeDataOffsets } from '../packages/standby-agent/src/apply/dump-offsets.js';
import { createDemoDatabase, createEmptyDatabase, dbUrl, dropDatabase, dumpDatabaseState, ensurePostgres, mustRun, requireCommands, sha256, tmpDir, withDb } from './support/site.js';
import { uid } from './support/standby-helpers.js';

/** pg_dump -Fc -Z0 of `db` as the primary runs it: its output a pipe, not a file it could seek in. */
async function dumpThroughPipe(db: string, file: string): Promise<void> {
  const child = spawn('pg_dump', ['-Fc', '-Z0', '-w', `--dbname=${dbUrl(db)}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  await pipeline(child.stdout, createWriteStream(file));
  expect(await exited).toBe(0);
}

/** Where two files differ (byte positions), and whether their lengths do. */
function differences(a: Buffer, b: Buffer): { at: number[]; lengths: boolean } {
  const at: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) at.push(i);
  return { at, lengths: a.length !== b.length };
}

/** The header's seven integers of the dump's time: bytes 16 to 50 (5 + 3 version + 3 sizes and format + 5 compression). */
const TIME_FIELDS = { from: 16, to: 51 };

describe('the staged dump gets the data offsets pg_dump writes when it can seek', () => {
  const db = `tandem_offsets_${uid()}`;
  const restored = `${db}_restored`;
  let dir: string;

  beforeAll(async () => {
    requireCommands(['pg_dump', 'pg_restore']);
    await ensurePostgres();
    dir = await tmpDir();
    await createDemoDatabase(db, { rows: 300 });
    await withDb(db, (c) => c.query('CREATE TABLE public.nothing_yet (id int PRIMARY KEY, note text)'));
  }, 60_000);

  afterAll(async () => {
    await dropDatabase(db);
    await dropDatabase(restored);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('writes them into a dump made through a pipe: then it is pg_dump\'s own file, and restores in parallel to the same state', async () => {
    const piped = join(dir, 'piped.dump');
    const seekable = join(dir, 'seekable.dump');
    await dumpThroughPipe(db, piped);
    await mustRun('pg_dump', ['-Fc', '-Z0', '-w', `--file=${seekable}`, `--dbname=${dbUrl(db)}`]);
    const before = await readFile(piped);
    const own = await readFile(seekable);
    // Without the offsets the two differ in the table of contents (and in the dump's time).
    expect(differences(before, own).at.some((i) => i >= TIME_FIELDS.to)).toBe(true);

    // A block for each table's data (the empty table's too) and one for the large objects, as
    // pg_restore lists them; the sequences' positions are entries without data.
    const listed = (await mustRun('pg_restore', ['-l', piped])).toString().split('\n').filter((l) => /^\d+; \d+ \d+ (TABLE DATA|BLOBS) /.test(l));
    expect(listed.filter((l) => / BLOBS /.test(l))).toHaveLength(1);
    expect(listed.filter((l) => / TABLE DATA public nothing_yet /.test(l))).toHaveLength(1);
    expect(listed.length).toBeGreaterThanOrEqual(5);
    const r = await writeDataOffsets(piped);
    expect(r).toEqual({ written: listed.length });
    const after = await readFile(piped);
    const d = differences(after, own);
    expect(d.lengths).toBe(false);
    expect(d.at.filter((i) => i < TIME_FIELDS.from || i >= TIME_FIELDS.to)).toEqual([]);

    await createEmptyDatabase(restored);
    await mustRun('pg_restore', ['--exit-on-error', '-j2', `--dbname=${dbUrl(restored)}`, piped]);
    expect(await dumpDatabaseState(restored)).toEqual(await dumpDatabaseState(db));

    // A second walk finds them in: the file stays as it is.
    expect(await writeDataOffsets(piped)).toEqual({ written: 0, skipped: 'the dump has its data offsets already' });
    expect(sha256(await readFile(piped))).toBe(sha256(after));
  }, 120_000);

  it('leaves a dump it does not recognize exactly as it was: cut short, a byte too long, another format or version, an end marker changed', async () => {
    const piped = join(dir, 'piped2.dump');
    await dumpThroughPipe(db, piped);
    const whole = await readFile(piped);
    const cases: Array<[string, Buffer, RegExp]> = [
      ['cut short', whole.subarray(0, whole.length - 3), /ends at|past the end|gave/],
      ['a byte past the end', Buffer.concat([whole, Buffer.from([0])]), /block|ends at|gave/],
      ['not a custom dump', Buffer.from('-- PostgreSQL database dump\nSET statement_timeout = 0;\n'), /not a custom-format dump/],
      ['an archive version it does not know', Buffer.concat([whole.subarray(0, 6), Buffer.from([99]), whole.subarray(7)]), /archive version 1\.99/],
    ];
    // The last end marker (the large objects' block ends the dump with an integer 0) made 1: the
    // walk then looks for more than the file holds.
    const grown = Buffer.from(whole);
    grown[grown.length - 4] = 1;
    cases.push(['the last end marker changed', grown, /past the end|ends at|gave/]);
    for (const [what, bytes, why] of cases) {
      const f = join(dir, `bad-${cases.findIndex((c) => c[0] === what)}.dump`);
      await writeFile(f, bytes);
      const r = await writeDataOffsets(f);
      expect(r.written, what).toBe(0);
      expect(r.skipped, what).toMatch(why);
      expect(sha256(await readFile(f)), what).toBe(sha256(bytes));
    }
  }, 60_000);

  it('says which file it cannot open', async () => {
    await expect(writeDataOffsets(join(dir, 'not-there.dump'))).rejects.toThrow(/ENOENT.*not-there\.dump/);
  });
});
