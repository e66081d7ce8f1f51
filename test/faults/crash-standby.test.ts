/**
 * Crash suite, standby side: `tandem-standby apply` is SIGKILLed at every named point of an apply
 * (staging, restore, each swap and between the two renames of each directory swap, the record, the
 * restart), at byte offsets mid-download of every artifact, at byte offsets while pg_restore reads
 * the dump, and twice in a row (killed again while recovering) — against a directory store and,
 * for a subset, against a real S3 server (s3rver). Applies alternate between two sets A and B in
 * both directions. After each kill the invariants of support/crash.ts hold and the next apply
 * finishes the job. The points and outcomes are written to .tmp/faults-report/crash-standby.json.
 */
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from '../support/s3rver.js';
import { ensurePostgres, requireCommands, tmpDir } from '../support/site.js';
import { createStandbySite, dropSiteDatabases, type StandbySite } from '../support/standby-helpers.js';
import {
  STANDBY_NAMED,
  downloadKills,
  killStandbyAt,
  named,
  prepareStandbyCrashSite,
  restoreKills,
  writeFigures,
  type StandbyImage,
  type StandbyKill,
  type StandbyKillRecord,
} from './support/crash.js';

const records: Record<string, StandbyKillRecord[]> = { dir: [], s3: [] };
const started = performance.now();

/** Killed again while recovering from the first kill (roll-back, or roll-forward). */
const DOUBLE: StandbyKill[] = [
  { label: 'staged-files, then the re-apply at download:files:50%', point: () => 'staged-files', recovery: (n) => `download:files:${Math.floor(n.sizes.files.stored / 2)}`, expect: 0 },
  { label: 'switching, then recovery at config-moved-aside', point: () => 'switching', recovery: () => 'config-moved-aside', expect: { aside: 'config' } },
  { label: 'db-blocked, then recovery at db-blocked', point: () => 'db-blocked', recovery: () => 'db-blocked', expect: 0 },
  { label: 'files-moved-aside, then recovery at recorded', point: () => 'files-moved-aside', recovery: () => 'recorded', expect: 4 },
];

const DIR_KILLS: StandbyKill[] = [
  ...STANDBY_NAMED.map(([n]) => named(n)),
  ...downloadKills({ db: [0, 0.33, 0.66, 1], config: [0, 1], security: [0, 1], files: [0, 0.33, 0.66, 1] }),
  ...restoreKills([0, 0.5, 1]),
  { ...named('restore-started'), label: 'restore-started (restoreJobs 1)', jobs1: true },
  ...DOUBLE,
];

const S3_KILLS: StandbyKill[] = [
  ...downloadKills({ db: [0.5], files: [0.5, 1] }),
  named('staged-files'),
  named('db-restored'),
  named('db-swapped'),
  named('config-moved-aside'),
  named('files-swapped'),
  named('recorded'),
];

describe('standby killed during an apply (directory store)', () => {
  let root: string;
  let s: StandbySite;
  let sets: { a: StandbyImage; b: StandbyImage; jobs1Config: string };

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-crash-standby-');
    s = await createStandbySite(root);
    sets = await prepareStandbyCrashSite(s);
  });

  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('survives a SIGKILL at each of ≥ 30 points, and the next apply finishes the job', async () => {
    expect(DIR_KILLS.length).toBeGreaterThanOrEqual(30);
    expect(new Set(DIR_KILLS.map((k) => k.label)).size).toBe(DIR_KILLS.length);
    for (const k of DIR_KILLS) records.dir!.push(await killStandbyAt(s, sets, k));
  });
});

describe('standby killed during an apply (S3: s3rver)', () => {
  let root: string;
  let s3: S3rverHandle;
  let s: StandbySite;
  let sets: { a: StandbyImage; b: StandbyImage; jobs1Config: string };

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-crash-standby-s3-');
    s3 = await startS3rver();
    s = await createStandbySite(root, { filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'unique' }), env: s3rverEnv() });
    sets = await prepareStandbyCrashSite(s);
  });

  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    if (s3) await s3.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('survives a SIGKILL at each point of the S3 subset, and the next apply finishes the job', async () => {
    for (const k of S3_KILLS) records.s3!.push(await killStandbyAt(s, sets, k));
  });
});

afterAll(async () => {
  const all = [...records.dir!, ...records.s3!];
  await writeFigures('crash-standby', {
    points: { dir: records.dir!.length, s3: records.s3!.length, distinct: new Set(all.map((r) => r.label)).size, kills: all.reduce((n, r) => n + r.points.length, 0) },
    liveNewAfterKill: all.filter((r) => Object.values(r.state).every((v) => v === 'next')).length,
    liveOldAfterKill: all.filter((r) => Object.values(r.state).every((v) => v === 'prev')).length,
    betweenRenames: all.filter((r) => Object.values(r.state).includes('aside')).length,
    dbBlocked: all.filter((r) => r.dbBlocked).length,
    losses: 0,
    seconds: Math.round(performance.now() - started) / 1000,
    records,
  });
});
