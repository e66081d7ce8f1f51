import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, layout, openFilestore, parseStandbyReport, withPg, type Filestore, type StandbyConfig } from '@tandem/shared';
import type { AppliedState } from '../apply/state.js';
import { LastError } from './last-error.js';
import { StandbyMetrics } from './metrics.js';
import { Reporter, walNeededFrom } from './reporter.js';

/**
 * The standby's report against a real directory filestore and the machine's PostgreSQL server (not
 * in recovery: pg_control_checkpoint() gives its last checkpoint's redo where a standby's gives its
 * last restartpoint's; the query is the same).
 */
const logger = createLogger({ name: 'test', level: 'silent', pretty: false });
const URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const SET = '20261122T030000Z-e1-000042';
const applied: AppliedState = {
  setId: SET,
  createdAt: '2026-11-22T03:00:00.000Z',
  appliedAt: '2026-11-22T03:05:00.000Z',
  durations: {},
  restart: 'done',
} as unknown as AppliedState;
let dir: string;
let fs: Filestore;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-reporter-'));
  fs = openFilestore(pathToFileURL(dir).href);
});
afterAll(async () => {
  await fs?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function reporter(site: string, database: Partial<StandbyConfig['database']>, signal = new AbortController().signal): Reporter {
  const metrics = new StandbyMetrics({ lag: () => ({}) as never, applied: () => null, websocketConnected: () => false });
  return new Reporter({
    fs,
    site,
    standbyId: 'web2',
    logger,
    metrics,
    errors: new LastError(logger),
    push: () => null,
    signal,
    stopping: () => false,
    database: database as StandbyConfig['database'],
  });
}

const readReport = async (site: string) => parseStandbyReport((await fs.getBuffer(layout.standby(site, 'web2'))).body, site);
const redo = () => withPg({ url: URL }, async (c) => (await c.query<{ f: string }>('select redo_wal_file as f from pg_control_checkpoint()')).rows[0]!.f);

describe('the standby report in WAL mode', () => {
  it('carries the WAL file of the cluster\'s last restartpoint (checkpoint) redo, measured anew on each refresh', async () => {
    const site = 'walmode';
    expect(await walNeededFrom({ url: URL } as StandbyConfig['database'])).toBe(await redo());
    const r = reporter(site, { url: URL, mode: 'wal' });
    const t0 = Date.now();
    await r.reportIfNeeded(applied);
    const first = await readReport(site);
    expect(first).toMatchObject({ standbyId: 'web2', setId: SET, wal: { neededFrom: await redo() } });
    expect(Date.parse(first.wal!.at)).toBeGreaterThanOrEqual(t0 - 1000);
    // Between applies (the daemon's timer calls this every few minutes): written again, measured now.
    await new Promise((res) => setTimeout(res, 20));
    await r.refresh();
    const second = await readReport(site);
    expect(second.setId).toBe(SET);
    expect(Date.parse(second.wal!.at)).toBeGreaterThan(Date.parse(first.wal!.at));
  });

  it('keeps the last measurement while the cluster does not answer; says none when it never did', async () => {
    const db = { url: URL, mode: 'wal' } as { url: string; mode: 'wal' };
    const r = reporter('down', db);
    await r.reportIfNeeded(applied);
    const measured = (await readReport('down')).wal!;
    db.url = 'postgres://postgres@127.0.0.1:1/postgres'; // stopped (an apply reseeding it)
    await r.refresh();
    expect((await readReport('down')).wal).toEqual(measured);

    const never = reporter('never', { url: 'postgres://postgres@127.0.0.1:1/postgres', mode: 'wal' });
    await never.reportIfNeeded(applied);
    const rep = await readReport('never');
    expect(rep.setId).toBe(SET);
    expect(rep.wal).toBeUndefined();
  });

  it('outside WAL mode: the report as before, no WAL need, no refresh', async () => {
    const r = reporter('dump', { url: URL, mode: 'dump' });
    await r.reportIfNeeded(applied);
    const raw = JSON.parse((await fs.getBuffer(layout.standby('dump', 'web2'))).body.toString()) as Record<string, unknown>;
    expect(Object.keys(raw)).toEqual(['format', 'version', 'standbyId', 'setId', 'createdAt', 'appliedAt']);
    await fs.delete(layout.standby('dump', 'web2'));
    await r.refresh();
    expect(await fs.stat(layout.standby('dump', 'web2'))).toBeNull();
  });
});
