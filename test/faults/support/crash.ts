/**
 * Harnesses of the crash suite (test/faults/crash-*.test.ts and the fast subset in
 * test/faults-fast.test.ts). Each kills a real agent process with SIGKILL at a named point or after
 * N bytes of a transfer (TANDEM_FAULT_KILL_AT, packages/shared/src/fault.ts), checks the invariants
 * right after the kill, runs the agent again without a fault and checks that it finished the job
 * and left nothing behind.
 *
 * Invariants, primary:
 *   - every set with a manifest verifies and all its artifacts match the signed sizes and hashes;
 *     latest.json verifies and names a committed set (by its manifest's SHA-256) — checkStore();
 *   - the killed run's set is committed only when the kill came after its manifest was written,
 *     and latest.json moves only when the kill came after latest.json was written;
 *   - the standby's own check (`tandem-standby verify`) passes on whatever latest.json names;
 *   - no pg_dump is left connected to the site's database;
 *   - the next backup succeeds, moves latest.json, and removes every uncommitted leftover (and,
 *     with a directory store, every temporary file of the killed writer).
 * Invariants, standby:
 *   - the live database and each live directory are exactly the previous set's or the new set's
 *     (compared with snapshots taken of both after clean applies), switched in the fixed order
 *     (db, config, security, files), and exactly as far as the kill point says; between the two
 *     renames of a directory swap the live path is absent while the previous copy (.tandem-old)
 *     and the new one (.tandem-new) lie complete beside it (the journal's roll-forward window);
 *   - the sentinel is present throughout;
 *   - the next apply finishes the job: everything live is the new set's, applied.json names it, the
 *     restart ran; no journal, staging dir, __tandem_new/__tandem_old database, .tandem-new/-old
 *     directory, or pg_restore session survives it.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { expect } from 'vitest';
import { layout, type ArtifactName, type Manifest } from '@tandem/shared';
import {
  REPO_ROOT,
  dumpDatabaseState,
  mutateDemoDatabase,
  mutateSiteTree,
  runPrimary,
  sleep,
  snapshotTree,
  withDb,
  type DatabaseState,
  type TreeEntry,
} from '../../support/site.js';
import { apply, backup, expectNoLeftovers, restartLog, runStandby, show, writeStandbyConfig, type StandbySite } from '../../support/standby-helpers.js';
import { checkStore, tempFiles, type VerifiedSets } from './store-check.js';

// ---------------------------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------------------------

/**
 * Makes the primary site big enough that every large artifact crosses many stream chunks (so that
 * byte offsets are distinct moments) and, on S3, the files artifact is uploaded in two parts:
 * a 4,000-row table of random hex (~2 MB stored) and a 9 MiB random file.
 */
export async function growPrimary(s: StandbySite, opts: { bulkRows?: number; bigFileBytes?: number } = {}): Promise<void> {
  await withDb(s.primary.db, async (c) => {
    await c.query('CREATE TABLE public.bulk (id integer PRIMARY KEY, payload text NOT NULL)');
    await c.query(
      `INSERT INTO public.bulk SELECT g, (SELECT string_agg(md5(random()::text || g || x), '') FROM generate_series(1, 32) x)
         FROM generate_series(1, $1::int) g`,
      [opts.bulkRows ?? 4000],
    );
  });
  const big = join(s.primary.paths.files, 'big', 'random-9mb.bin');
  await mkdir(dirname(big), { recursive: true });
  await writeFile(big, randomBytes(opts.bigFileBytes ?? 9 * 1024 * 1024));
}

/** A small change on the primary, repeatable (unlike mutateDemoDatabase): rows, a sequence, a file. */
export async function touchPrimary(s: StandbySite, n: number): Promise<void> {
  await withDb(s.primary.db, async (c) => {
    await c.query(`UPDATE public.rsc SET title = coalesce(title, '') || ' ·' || $1::int, modified = now() WHERE id % 13 = $1::int % 13`, [n]);
    await c.query(`INSERT INTO shop.orders (sku, qty, placed_at, invoice_no, note) VALUES ('SKU-0003', 1 + $1::int % 5, now(), nextval('shop.invoice_no'), 'touch ' || $1::int)`, [n]);
  });
  await writeFile(join(s.primary.paths.files, `touch-${n}.txt`), `change ${n}\n`);
}

export async function readManifest(s: StandbySite, setId: string): Promise<Manifest> {
  const fs = s.openStore();
  try {
    return JSON.parse((await fs.getBuffer(layout.manifest(s.site, setId))).body.toString('utf8')) as Manifest;
  } finally {
    await fs.close();
  }
}

export type Sizes = Record<ArtifactName, { stored: number; plain: number }>;

export const sizesOf = (m: Manifest): Sizes =>
  Object.fromEntries(m.artifacts.map((a) => [a.name, { stored: a.storedSize, plain: a.plainSize }])) as Sizes;

/** A byte offset into an artifact: a fraction of its size (at least 1; 1 means its last chunk). */
export const offset = (size: number, fraction: number): number => Math.max(1, Math.floor(size * fraction));

/** Sessions of `app` (pg_dump, pg_restore) connected to any of `dbs`; waits up to `ms` for them to end. */
export async function lingeringSessions(app: string, dbs: string[], ms = 10_000): Promise<number> {
  const deadline = Date.now() + ms;
  for (;;) {
    const n = await withDb('postgres', async (c) =>
      Number((await c.query<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND datname = ANY($2)', [app, dbs])).rows[0]!.n),
    );
    if (n === 0 || Date.now() > deadline) return n;
    await sleep(100);
  }
}

/** Figures for docs/reliability.md: written to .tmp/faults-report/<name>.json and printed. */
export async function writeFigures(name: string, figures: unknown): Promise<void> {
  const file = join(REPO_ROOT, '.tmp', 'faults-report', `${name}.json`);
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(`[faults] ${name}: ${JSON.stringify(figures)}`);
}

// ---------------------------------------------------------------------------------------------
// Primary
// ---------------------------------------------------------------------------------------------

/** Named points of a backup, in the order a backup passes them (packages/primary-agent/src/backup). */
export const PRIMARY_NAMED_POINTS = [
  'before-artifact:db',
  'after-artifact:db',
  'before-artifact:config',
  'after-artifact:config',
  'before-artifact:security',
  'after-artifact:security',
  'before-artifact:files',
  'after-artifact:files',
  'before-manifest',
  'manifest-written',
  'before-latest',
  'latest-written',
  'recorded',
] as const;

/** From these points on the killed run's set is committed (its manifest is written). */
const COMMITTED_FROM = PRIMARY_NAMED_POINTS.indexOf('manifest-written');
/** From these points on latest.json names the killed run's set. */
const ANNOUNCED_FROM = PRIMARY_NAMED_POINTS.indexOf('latest-written');

export interface PrimaryKill {
  /** What the report calls it, e.g. "upload:files:50%". */
  label: string;
  /** The TANDEM_FAULT_KILL_AT value. */
  point: string;
}

export interface PrimaryKillRecord {
  label: string;
  point: string;
  killedSet: string | null;
  committed: boolean;
  announced: boolean;
  seconds: number;
}

/**
 * Byte-offset kills mid-upload: `upload:<artifact>:<bytes>` at fractions of the artifact's stored
 * size in a reference backup. A dump's size varies by a few bytes from run to run, so fraction 1
 * ("end") is a little short of the end: the last stream chunk, or very near it.
 */
export function uploadKills(sizes: Sizes, fractions: Partial<Record<ArtifactName, number[]>>): PrimaryKill[] {
  const out: PrimaryKill[] = [];
  for (const [name, fs] of Object.entries(fractions) as [ArtifactName, number[]][]) {
    const size = sizes[name].stored;
    for (const f of fs) {
      const bytes = f >= 1 ? size - Math.min(1024, Math.floor(size / 4)) : offset(size, f);
      out.push({ label: `upload:${name}:${f >= 1 ? 'end' : `${Math.round(f * 100)}%`}`, point: `upload:${name}:${bytes}` });
    }
  }
  return out;
}

/**
 * Kills `tandem-primary backup` at `kill`, checks the invariants, runs the next backup and checks
 * it finished the job. `verified` caches fully checked committed sets between calls.
 */
export async function killPrimaryAt(s: StandbySite, kill: PrimaryKill, verified: VerifiedSets): Promise<PrimaryKillRecord> {
  const t0 = performance.now();
  const fs = s.openStore();
  const dirRoot = s.filestoreUrl.startsWith('file:') ? new URL(s.filestoreUrl).pathname : null;
  try {
    const before = await checkStore(fs, s.site, s.keys.verifyKeyFile, verified);
    expect(before.problems).toEqual([]);
    const known = new Set([...before.committed, ...before.uncommitted]);

    const r = await runPrimary(['backup', '--config', s.primary.configFile], { env: { ...s.env, TANDEM_FAULT_KILL_AT: kill.point } });
    expect(r.signal, `the backup was to be killed at ${kill.point}\n${r.stderr}`).toBe('SIGKILL');
    // No pg_dump (or its connection) outlives the killed agent.
    expect(await lingeringSessions('pg_dump', [s.primary.db])).toBe(0);

    const after = await checkStore(fs, s.site, s.keys.verifyKeyFile, verified);
    expect(after.problems, `after the kill at ${kill.point}`).toEqual([]);
    const created = [...after.committed, ...after.uncommitted].filter((id) => !known.has(id));
    expect(created.length).toBeLessThanOrEqual(1);
    const killedSet = created[0] ?? null;
    const i = PRIMARY_NAMED_POINTS.indexOf(kill.point as (typeof PRIMARY_NAMED_POINTS)[number]);
    const committed = killedSet !== null && after.committed.includes(killedSet);
    const announced = after.latest !== null && after.latest === killedSet;
    // Committed only once its manifest is written; announced only once latest.json is.
    expect(committed).toBe(i >= COMMITTED_FROM);
    expect(announced).toBe(i >= ANNOUNCED_FROM);
    if (!announced) expect(after.latest).toBe(before.latest);
    if (i >= COMMITTED_FROM) expect(killedSet).not.toBeNull();

    // What a standby sees: the newest committed set, whole.
    if (after.latest !== null) {
      const v = await runStandby(['verify', '--config', s.standby.configFile, '--json'], { env: s.env });
      expect(v.code, show(v)).toBe(0);
      expect((JSON.parse(v.stdout) as { setId: string; ok: boolean }).setId).toBe(after.latest);
    }
    // The operator's view: a killed, uncommitted set is listed as uncommitted.
    if (killedSet !== null && !committed) {
      const l = await runPrimary(['list', '--config', s.primary.configFile, '--json'], { env: s.env });
      expect(l.code, l.stderr).toBe(0);
      const row = (JSON.parse(l.stdout) as { setId: string; committed: boolean; latest: boolean }[]).find((x) => x.setId === killedSet);
      expect(row).toMatchObject({ committed: false, latest: false });
    }

    // The next run finishes the job and removes what the killed one left.
    const next = await runPrimary(['backup', '--config', s.primary.configFile], { env: s.env });
    expect(next.code, next.stderr).toBe(0);
    const nextId = next.stdout.trim();
    const done = await checkStore(fs, s.site, s.keys.verifyKeyFile, verified);
    expect(done.problems).toEqual([]);
    expect(done.latest).toBe(nextId);
    expect(done.uncommitted, 'uncommitted leftovers after the next backup').toEqual([]);
    if (dirRoot !== null) expect(await tempFiles(join(dirRoot, s.site, 'sets'))).toEqual([]);
    return { label: kill.label, point: kill.point, killedSet, committed, announced, seconds: Math.round(performance.now() - t0) / 1000 };
  } finally {
    await fs.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Standby
// ---------------------------------------------------------------------------------------------

export type Part = 'db' | 'config' | 'security' | 'files';
const PARTS: readonly Part[] = ['db', 'config', 'security', 'files'];
type DirPart = Exclude<Part, 'db'>;

export interface StandbyImage {
  id: string;
  sizes: Sizes;
  db: DatabaseState;
  config: TreeEntry[];
  security: TreeEntry[];
  files: TreeEntry[];
}

/** The standby's live state (taken after a clean apply of `id`). */
export async function standbyImage(s: StandbySite, id: string): Promise<StandbyImage> {
  return {
    id,
    sizes: sizesOf(await readManifest(s, id)),
    db: await dumpDatabaseState(s.standby.db),
    config: await snapshotTree(s.standby.paths.config),
    security: await snapshotTree(s.standby.paths.security),
    files: await snapshotTree(s.standby.paths.files),
  };
}

/**
 * A standby site with two sets A and B applied once each (so both images are known), the primary
 * grown by growPrimary() (unless `grow: false`) and changed between the two. Leaves B applied.
 */
export async function prepareStandbyCrashSite(s: StandbySite, opts: { grow?: boolean } = {}): Promise<{ a: StandbyImage; b: StandbyImage; jobs1Config: string }> {
  if (opts.grow !== false) await growPrimary(s);
  const idA = await backup(s);
  const ra = await apply(s);
  expect(ra.code, show(ra)).toBe(0);
  const a = await standbyImage(s, idA);
  await mutateDemoDatabase(s.primary.db);
  await mutateSiteTree(join(s.root, 'primary'));
  const idB = await backup(s);
  const rb = await apply(s);
  expect(rb.code, show(rb)).toBe(0);
  const b = await standbyImage(s, idB);
  // The same standby with restoreJobs 1: the dump streams through the agent into pg_restore.
  const jobs1Config = await writeStandbyConfig(s, join(s.root, 'standby-jobs1.yml'), { restoreJobs: 1 });
  return { a, b, jobs1Config };
}

export interface StandbyKill {
  /** What the report calls it, e.g. "download:files:50%" or "switching, then recovery at db-swapped". */
  label: string;
  /** TANDEM_FAULT_KILL_AT for the apply, given the set being applied. */
  point: (next: StandbyImage) => string;
  /** Kill the recovering apply too, here (a crash during recovery). */
  recovery?: (next: StandbyImage) => string;
  /** Switched parts right after the (last) kill; 'aside' = between the two renames of that part. */
  expect: number | { aside: DirPart };
  /** Apply with restoreJobs 1 (the dump streams through the agent into pg_restore). */
  jobs1?: boolean;
}

/** Named standby points and how many parts are live-new right after a kill there. */
export const STANDBY_NAMED: Array<[string, StandbyKill['expect']]> = [
  ['journal-written', 0],
  ['staged-db', 0],
  ['staged-config', 0],
  ['staged-security', 0],
  ['staged-files', 0],
  ['sentinel-written', 0],
  ['restore-db-created', 0],
  ['restore-started', 0],
  ['db-restored', 0],
  ['switching', 0],
  ['db-blocked', 0],
  ['db-swapped', 1],
  ['config-moved-aside', { aside: 'config' }],
  ['config-swapped', 2],
  ['security-moved-aside', { aside: 'security' }],
  ['security-swapped', 3],
  ['files-moved-aside', { aside: 'files' }],
  ['files-swapped', 4],
  ['recorded', 4],
  ['before-restart', 4],
  ['restart-running', 4],
];

export const named = (name: string): StandbyKill => {
  const e = STANDBY_NAMED.find(([n]) => n === name);
  if (!e) throw new Error(`no standby point ${name}`);
  return { label: name, point: () => name, expect: e[1] };
};

/** Byte-offset kills mid-download: `download:<artifact>:<bytes>` at fractions of the next set's stored size. */
export function downloadKills(fractions: Partial<Record<ArtifactName, number[]>>): StandbyKill[] {
  const out: StandbyKill[] = [];
  for (const [name, fs] of Object.entries(fractions) as [ArtifactName, number[]][]) {
    for (const f of fs) {
      out.push({ label: `download:${name}:${Math.round(f * 100)}%`, point: (n) => `download:${name}:${offset(n.sizes[name].stored, f)}`, expect: 0 });
    }
  }
  return out;
}

/** Kills while pg_restore reads the dump from the agent (restoreJobs 1), at fractions of the plain dump. */
export function restoreKills(fractions: number[]): StandbyKill[] {
  return fractions.map((f) => ({
    label: `restore:db:${Math.round(f * 100)}%`,
    point: (n: StandbyImage) => `restore:db:${offset(n.sizes.db.plain, f)}`,
    expect: 0,
    jobs1: true,
  }));
}

export interface StandbyKillRecord {
  label: string;
  points: string[];
  direction: string;
  /** Per part right after the kill: 'prev', 'next', or 'aside' (between the renames). */
  state: Record<Part, 'prev' | 'next' | 'aside'>;
  /** The live database refused connections right after the kill (killed mid-swap). */
  dbBlocked: boolean;
  seconds: number;
}

async function dbInfo(name: string): Promise<{ oid: string; allowConn: boolean } | null> {
  return withDb('postgres', async (c) => {
    const r = await c.query<{ oid: string; datallowconn: boolean }>('SELECT oid::text AS oid, datallowconn FROM pg_database WHERE datname = $1', [name]);
    const row = r.rows[0];
    return row ? { oid: row.oid, allowConn: row.datallowconn } : null;
  });
}

/** Which of two known states `got` is exactly, if either. */
function which<T>(got: T, prev: T, next: T): 'prev' | 'next' | null {
  const g = JSON.stringify(got);
  return g === JSON.stringify(prev) ? 'prev' : g === JSON.stringify(next) ? 'next' : null;
}

const exists = (p: string) => stat(p).then(() => true, () => false);

async function appliedSetId(s: StandbySite): Promise<string> {
  return (JSON.parse(await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8')) as { setId: string }).setId;
}

/**
 * Kills `tandem-standby apply` (from whichever of A and B is applied to the other) as `kill` says,
 * checks the live state right after the kill(s), runs apply again and checks it finished the job.
 */
export async function killStandbyAt(s: StandbySite, sets: { a: StandbyImage; b: StandbyImage; jobs1Config: string }, kill: StandbyKill): Promise<StandbyKillRecord> {
  const t0 = performance.now();
  const current = await appliedSetId(s);
  const [prev, next] = current === sets.a.id ? [sets.a, sets.b] : [sets.b, sets.a];
  const newest = sets.a.id > sets.b.id ? sets.a : sets.b;
  const args = next === newest ? [] : ['--set', next.id, '--allow-older'];
  const config = kill.jobs1 ? sets.jobs1Config : s.standby.configFile;
  const live = await dbInfo(s.standby.db);
  expect(live?.allowConn).toBe(true);

  const points = [kill.point(next)];
  const first = await apply(s, args, { TANDEM_FAULT_KILL_AT: points[0]! }, config);
  expect(first.signal, `apply was to be killed at ${points[0]}\n${show(first)}`).toBe('SIGKILL');
  if (kill.recovery) {
    points.push(kill.recovery(next));
    const second = await apply(s, args, { TANDEM_FAULT_KILL_AT: points[1]! }, config);
    expect(second.signal, `the recovering apply was to be killed at ${points[1]}\n${show(second)}`).toBe('SIGKILL');
  }

  // Right after the kill: every part wholly the previous set's or the new one's.
  const state = {} as StandbyKillRecord['state'];
  const info = await dbInfo(s.standby.db);
  expect(info, 'the live database exists').not.toBeNull();
  let dbBlocked = false;
  if (!info!.allowConn) {
    // Killed between blocking connections and the rename: still the previous database, untouched.
    dbBlocked = true;
    expect(info!.oid, 'a blocked live database is the previous one').toBe(live!.oid);
    state.db = 'prev';
  } else {
    const db = await dumpDatabaseState(s.standby.db);
    const w = which(db, prev.db, next.db);
    if (w === null) expect(db, 'the live database is neither set: a mix').toEqual(next.db);
    state.db = w!;
  }
  for (const part of ['config', 'security', 'files'] as const) {
    const dir = s.standby.paths[part];
    if (await exists(dir)) {
      const tree = await snapshotTree(dir);
      const w = which(tree, prev[part], next[part]);
      if (w === null) expect(tree, `live ${part} is neither set: a mix`).toEqual(next[part]);
      state[part] = w!;
    } else {
      // Between the two renames: the previous copy and the new one lie complete beside the live path.
      expect(await snapshotTree(`${dir}.tandem-old`), `${part}.tandem-old is the previous set's`).toEqual(prev[part]);
      expect(await snapshotTree(`${dir}.tandem-new`), `${part}.tandem-new is the new set's`).toEqual(next[part]);
      state[part] = 'aside';
    }
  }
  // Switched in order, and exactly as far as the kill point says.
  const expected = PARTS.map((p, i) =>
    typeof kill.expect === 'number' ? (i < kill.expect ? 'next' : 'prev') : p === kill.expect.aside ? 'aside' : i < PARTS.indexOf(kill.expect.aside) ? 'next' : 'prev',
  );
  expect(PARTS.map((p) => state[p]), `live parts after a kill at ${points.join(' then ')}`).toEqual(expected);
  // The sentinel lives in the config dir: between the two renames of the config swap it is in both
  // copies beside the live path (their snapshots above include it), otherwise it is live.
  if (state.config !== 'aside') expect(await exists(s.standby.paths.sentinel), 'the sentinel is present').toBe(true);
  else expect(prev.config.some((e) => e.path === 'BACKUP') && next.config.some((e) => e.path === 'BACKUP')).toBe(true);

  // The next apply finishes the job and leaves nothing behind.
  const done = await apply(s, args, {}, config);
  expect(done.code, show(done)).toBe(0);
  expect(await dumpDatabaseState(s.standby.db)).toEqual(next.db);
  for (const part of ['config', 'security', 'files'] as const) expect(await snapshotTree(s.standby.paths[part])).toEqual(next[part]);
  const applied = JSON.parse(await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8')) as { setId: string; restart: string };
  expect(applied).toMatchObject({ setId: next.id, restart: 'ok' });
  expect((await restartLog(s)).at(-1)).toBe(`backup ${next.id}`);
  expect(await expectNoLeftovers(s)).toEqual([]);
  expect(await lingeringSessions('pg_restore', [s.standby.db, `${s.standby.db}__tandem_new`, `${s.standby.db}__tandem_old`])).toBe(0);
  expect((await dbInfo(s.standby.db))?.allowConn).toBe(true);
  return {
    label: kill.label,
    points,
    direction: `${prev === sets.a ? 'A' : 'B'}→${next === sets.a ? 'A' : 'B'}`,
    state,
    dbBlocked,
    seconds: Math.round(performance.now() - t0) / 1000,
  };
}
