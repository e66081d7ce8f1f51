/**
 * Crash suite, primary side: `tandem-primary backup` is SIGKILLed at every named point of a backup
 * (before and after each artifact, before the manifest, between the manifest and latest.json, after
 * latest.json, after the record) and at byte offsets mid-upload of every artifact (db: while pg_dump
 * still runs), against a directory store and, for a subset, against a real S3 server (s3rver).
 * After each kill the invariants of support/crash.ts hold, and the next backup finishes the job.
 * The points and outcomes are written to .tmp/faults-report/crash-primary.json.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from '../support/s3rver.js';
import { ensurePostgres, requireCommands, tmpDir } from '../support/site.js';
import { apply, backup, createStandbySite, removeStandbySite, show, type StandbySite } from '../support/standby-helpers.js';
import {
  PRIMARY_NAMED_POINTS,
  growPrimary,
  killPrimaryAt,
  readManifest,
  sizesOf,
  uploadKills,
  writeFigures,
  type PrimaryKill,
  type PrimaryKillRecord,
  type Sizes,
} from './support/crash.js';
import type { VerifiedSets } from './support/store-check.js';

const records: Record<string, PrimaryKillRecord[]> = { dir: [], s3: [] };
const started = performance.now();

/** Every named point, plus 19 byte offsets: db 6, config 2, security 2, files 9 (files spans two S3 parts). */
function dirKills(sizes: Sizes): PrimaryKill[] {
  return [
    ...PRIMARY_NAMED_POINTS.map((p) => ({ label: p, point: p })),
    ...uploadKills(sizes, {
      db: [0, 0.1, 0.3, 0.5, 0.8, 1],
      config: [0, 1],
      security: [0, 1],
      files: [0, 0.05, 0.2, 0.4, 0.6, 0.79, 0.85, 0.95, 1],
    }),
  ];
}

/** The S3 subset: mid-upload of each artifact, across the multipart boundary of files, and the commit. */
function s3Kills(sizes: Sizes): PrimaryKill[] {
  return [
    { label: 'before-artifact:db', point: 'before-artifact:db' },
    ...uploadKills(sizes, { db: [0.5], config: [1], files: [0.3, 0.85, 1] }),
    { label: 'after-artifact:files', point: 'after-artifact:files' },
    { label: 'manifest-written', point: 'manifest-written' },
    { label: 'latest-written', point: 'latest-written' },
  ];
}

/**
 * Checks the tools and PostgreSQL, then, in a new work dir named from `prefix`: a site with a grown
 * primary and one set backed up, and that set's artifact sizes. If a step fails, what was made so
 * far is removed before the error is thrown.
 */
async function setUp(prefix: string, opts: Parameters<typeof createStandbySite>[1] = {}): Promise<{ root: string; s: StandbySite; sizes: Sizes }> {
  requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
  await ensurePostgres();
  const root = await tmpDir(prefix);
  let s: StandbySite | undefined;
  try {
    s = await createStandbySite(root, opts);
    await growPrimary(s);
    const first = await backup(s);
    return { root, s, sizes: sizesOf(await readManifest(s, first)) };
  } catch (e) {
    await removeStandbySite(s, root);
    throw e;
  }
}

describe('primary killed during a backup (directory store)', () => {
  let root: string;
  let s: StandbySite;
  let kills: PrimaryKill[] = [];
  const verified: VerifiedSets = new Map();

  beforeAll(async () => {
    const set = await setUp('tandem-crash-primary-');
    ({ root, s } = set);
    kills = dirKills(set.sizes);
  });

  afterAll(async () => {
    await removeStandbySite(s, root);
  });

  it('survives a SIGKILL at each of ≥ 30 points, and the next backup finishes the job', async () => {
    expect(kills.length).toBeGreaterThanOrEqual(30);
    expect(new Set(kills.map((k) => k.point)).size).toBe(kills.length);
    for (const k of kills) records.dir!.push(await killPrimaryAt(s, k, verified));
  });

  it('after all that, a standby applies the newest set', async () => {
    const r = await apply(s);
    expect(r.code, show(r)).toBe(0);
  });
});

describe('primary killed during a backup (S3: s3rver)', () => {
  let root: string;
  let s3: S3rverHandle;
  let s: StandbySite;
  let kills: PrimaryKill[] = [];
  const verified: VerifiedSets = new Map();

  beforeAll(async () => {
    s3 = await startS3rver();
    const set = await setUp('tandem-crash-primary-s3-', { filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'unique' }), env: s3rverEnv() });
    ({ root, s } = set);
    kills = s3Kills(set.sizes);
  });

  afterAll(async () => {
    if (s3) await s3.destroy();
    await removeStandbySite(s, root);
  });

  it('survives a SIGKILL at each point of the S3 subset, and the next backup finishes the job', async () => {
    for (const k of kills) records.s3!.push(await killPrimaryAt(s, k, verified));
  });
});

afterAll(async () => {
  const all = [...records.dir!, ...records.s3!];
  await writeFigures('crash-primary', {
    points: { dir: records.dir!.length, s3: records.s3!.length, distinct: new Set(all.map((r) => r.label)).size },
    killedSetsCommitted: all.filter((r) => r.committed).length,
    killedSetsUncommitted: all.filter((r) => r.killedSet !== null && !r.committed).length,
    losses: 0,
    seconds: Math.round(performance.now() - started) / 1000,
    records,
  });
});
