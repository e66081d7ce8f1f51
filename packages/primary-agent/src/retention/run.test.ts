import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, encodeStandbyReport, layout, makeSetId, openFilestore, type Filestore, type PrimaryConfig } from '@tandem/shared';
import { runRetention } from './run.js';

const SITE = 'demo';
const logger = createLogger({ name: 'test', level: 'silent', pretty: false });
let dir: string;
let fs: Filestore;
const deletes: string[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-retention-'));
  const real = openFilestore(pathToFileURL(dir).href);
  // Record the order of deletions; everything else goes to the real directory filestore.
  fs = new Proxy(real, {
    get(target, prop, receiver) {
      if (prop === 'delete') return (key: string, opts?: object) => (deletes.push(key), target.delete(key, opts));
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
});
afterAll(async () => {
  await fs?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const config = { site: SITE, retention: { daily: 2, weekly: 0 } } as unknown as PrimaryConfig;
const now = new Date('2026-11-22T12:00:00Z');
const day = 86_400_000;

async function putSet(t: Date, seq: number, committed = true): Promise<string> {
  const id = makeSetId(t, 1, seq);
  for (const f of ['db.dump.zst.age', 'config.tar.zst.age', 'files.tar.zst.age']) await fs.putBuffer(layout.artifact(SITE, id, f), Buffer.from('x'));
  if (committed) await fs.putBuffer(layout.manifest(SITE, id), Buffer.from(JSON.stringify({ createdAt: t.toISOString() })));
  return id;
}

describe('runRetention against a filestore', () => {
  it('deletes the manifest first, then the artifacts; honours the standbys\' reports; ignores a damaged report', async () => {
    const old = await putSet(new Date(now.getTime() - 10 * day), 1);
    const applied = await putSet(new Date(now.getTime() - 9 * day), 2);
    const yesterday = await putSet(new Date(now.getTime() - day), 3);
    const today = await putSet(new Date(now.getTime() - 3_600_000), 4);
    await fs.putBuffer(layout.latest(SITE), Buffer.from(JSON.stringify({ setId: today })));
    await fs.putBuffer(layout.standby(SITE, 'web2'), encodeStandbyReport({ standbyId: 'web2', setId: applied, createdAt: now.toISOString(), appliedAt: new Date(now.getTime() - 3_600_000).toISOString() }));
    await fs.putBuffer(layout.standby(SITE, 'broken'), Buffer.from('{"format":'));

    const dry = await runRetention(config, { filestore: fs, logger, now, dryRun: true, timeZone: 'UTC' });
    expect(dry.plan.delete.map((d) => d.setId)).toEqual([old]);
    expect(deletes).toEqual([]);

    const o = await runRetention(config, { filestore: fs, logger, now, timeZone: 'UTC' });
    expect(o.deleted).toEqual([old]);
    expect(o.plan.keep.map((k) => k.setId)).toEqual([applied, yesterday, today]);
    expect(deletes[0]).toBe(layout.manifest(SITE, old));
    expect(deletes.slice(1).sort()).toEqual(['config.tar.zst.age', 'db.dump.zst.age', 'files.tar.zst.age'].map((f) => layout.artifact(SITE, old, f)));
    expect((await fs.list(layout.set(SITE, old))).length).toBe(0);
  });

  it('deletes nothing when latest.json cannot be read', async () => {
    deletes.length = 0;
    await fs.putBuffer(layout.latest(SITE), Buffer.from('not json'));
    await expect(runRetention(config, { filestore: fs, logger, now: new Date(now.getTime() + 30 * day), timeZone: 'UTC' })).rejects.toThrow(/cannot read .*latest.json.*deleting nothing/);
    expect(deletes).toEqual([]);
  });
});
