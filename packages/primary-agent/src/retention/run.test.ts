import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createLogger,
  encodeStandbyReport,
  layout,
  makeSetId,
  openFilestore,
  parseSetId,
  signLatest,
  signManifest,
  type Filestore,
  type PrimaryConfig,
} from '@tandem/shared';
import { runRetention } from './run.js';

const SITE = 'demo';
const logger = createLogger({ name: 'test', level: 'silent', pretty: false });
const { privateKey: signingKey, publicKey: verifyKey } = generateKeyPairSync('ed25519');
const foreign = generateKeyPairSync('ed25519').privateKey;
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

function manifestBytes(site: string, setId: string, createdAt: string, key = signingKey): Buffer {
  const p = parseSetId(setId)!;
  return signManifest(
    {
      format: 'tandem-manifest',
      version: 1,
      setId,
      site,
      epoch: p.epoch,
      seq: p.seq,
      createdAt,
      completedAt: createdAt,
      primaryHost: 'web1',
      toolVersion: 'test',
      database: { name: 'demo', serverVersion: '15' },
      encryption: { scheme: 'none', recipients: [] },
      artifacts: [],
    },
    key,
  );
}

function latestBytes(setId: string, key = signingKey, site = SITE): Buffer {
  const p = parseSetId(setId)!;
  const t = p.time.toISOString();
  return signLatest({ format: 'tandem-latest', version: 1, site, setId, epoch: p.epoch, seq: p.seq, createdAt: t, committedAt: t, manifestSha256: '0'.repeat(64) }, key);
}

async function putSet(site: string, t: Date, seq: number, committed = true): Promise<string> {
  const id = makeSetId(t, 1, seq);
  for (const f of ['db.dump.zst.age', 'config.tar.zst.age', 'files.tar.zst.age']) await fs.putBuffer(layout.artifact(site, id, f), Buffer.from('x'));
  if (committed) await fs.putBuffer(layout.manifest(site, id), manifestBytes(site, id, t.toISOString()));
  return id;
}

const run = (site: string, o: { dryRun?: boolean; at?: Date } = {}) =>
  runRetention({ ...config, site }, { filestore: fs, logger, verifyKey, now: o.at ?? now, dryRun: o.dryRun, timeZone: 'UTC' });

describe('runRetention against a filestore', () => {
  it('deletes the manifest first, then the artifacts; honours the standbys\' reports; ignores a damaged report', async () => {
    const old = await putSet(SITE, new Date(now.getTime() - 10 * day), 1);
    const applied = await putSet(SITE, new Date(now.getTime() - 9 * day), 2);
    const yesterday = await putSet(SITE, new Date(now.getTime() - day), 3);
    const today = await putSet(SITE, new Date(now.getTime() - 3_600_000), 4);
    await fs.putBuffer(layout.latest(SITE), latestBytes(today));
    await fs.putBuffer(layout.standby(SITE, 'web2'), encodeStandbyReport({ standbyId: 'web2', setId: applied, createdAt: now.toISOString(), appliedAt: new Date(now.getTime() - 3_600_000).toISOString() }));
    await fs.putBuffer(layout.standby(SITE, 'broken'), Buffer.from('{"format":'));

    const dry = await run(SITE, { dryRun: true });
    expect(dry.plan.delete.map((d) => d.setId)).toEqual([old]);
    expect(deletes).toEqual([]);

    const o = await run(SITE);
    expect(o.deleted).toEqual([old]);
    expect(o.plan.keep.map((k) => k.setId)).toEqual([applied, yesterday, today]);
    expect(deletes[0]).toBe(layout.manifest(SITE, old));
    expect(deletes.slice(1).sort()).toEqual(['config.tar.zst.age', 'db.dump.zst.age', 'files.tar.zst.age'].map((f) => layout.artifact(SITE, old, f)));
    expect((await fs.list(layout.set(SITE, old))).length).toBe(0);
  });

  it('deletes nothing when latest.json cannot be read', async () => {
    deletes.length = 0;
    await fs.putBuffer(layout.latest(SITE), Buffer.from('not json'));
    await expect(run(SITE, { at: new Date(now.getTime() + 30 * day) })).rejects.toThrow(/cannot read .*latest.json.*deleting nothing/);
    expect(deletes).toEqual([]);
  });
});

describe('retention decides from signed data only', () => {
  it('deletes nothing when latest.json does not verify, even with the only set dated back by years', async () => {
    // The attack: latest.json names a set that does not exist, the only real set's manifest says
    // 2001. Unverified, the plan deleted the only set.
    const site = 'forged-latest';
    deletes.length = 0;
    const only = await putSet(site, new Date(now.getTime() - 3_600_000), 1);
    const bogus = makeSetId(new Date(now.getTime() - 60_000), 1, 99);
    const unsigned = JSON.parse(latestBytes(only, signingKey, site).toString('utf8')) as Record<string, unknown>;
    const body = Buffer.from(`${JSON.stringify({ ...unsigned, setId: bogus }, null, 2)}\n`);
    await fs.putBuffer(layout.latest(site), body);
    await fs.putBuffer(layout.manifest(site, only), Buffer.from(manifestBytes(site, only, '2001-01-01T00:00:00.000Z').toString('utf8').replace(/"createdAt": "[^"]+"/, '"createdAt": "2001-01-01T00:00:00.000Z"')));
    for (const dryRun of [true, false]) {
      const err = await run(site, { dryRun }).then(() => null, (e: unknown) => e as Error & { code?: string });
      expect(err?.code, String(err)).toBe('RETENTION_NO_LATEST');
      expect(err!.message).toMatch(/latest\.json: signature does not match its content .*; deleting nothing/);
    }
    // Re-signed with another key: refused the same way.
    await fs.putBuffer(layout.latest(site), latestBytes(bogus, foreign, site));
    await expect(run(site, { dryRun: true })).rejects.toThrow(/latest\.json: signed by key \w+, but this agent trusts key \w+.*deleting nothing/);
    // Removed while committed sets exist: refused too.
    await fs.delete(layout.latest(site));
    deletes.length = 0;
    await expect(run(site)).rejects.toThrow(/latest\.json is missing while 1 committed set\(s\) exist; deleting nothing/);
    expect(deletes).toEqual([]);
    expect((await fs.list(layout.set(site, only))).length).toBe(4);
  });

  it('reports and keeps a set whose manifest does not verify, instead of deleting it by its forged time', async () => {
    const site = 'forged-manifest';
    const yesterday = await putSet(site, new Date(now.getTime() - day), 1);
    const today = await putSet(site, new Date(now.getTime() - 3_600_000), 2);
    await fs.putBuffer(layout.latest(site), latestBytes(today, signingKey, site));
    // Yesterday's set is the newest of its day (kept); dated back a year, it would be deleted.
    const real = manifestBytes(site, yesterday, new Date(now.getTime() - day).toISOString()).toString('utf8');
    await fs.putBuffer(layout.manifest(site, yesterday), Buffer.from(real.replace(/"createdAt": "[^"]+"/, '"createdAt": "2025-11-01T00:00:00.000Z"')));
    // Another set's genuine manifest copied over this one's (valid signature, wrong set).
    const copied = await putSet(site, new Date(now.getTime() - 20 * day), 3);
    await fs.putBuffer(layout.manifest(site, copied), manifestBytes(site, today, new Date(now.getTime() - 3_600_000).toISOString()));
    const gone = await putSet(site, new Date(now.getTime() - 30 * day), 4);
    deletes.length = 0;
    const o = await run(site);
    expect(o.deleted).toEqual([gone]);
    const kept = new Map(o.plan.keep.map((k) => [k.setId, k]));
    expect(kept.get(yesterday)).toMatchObject({ unverified: true });
    expect(kept.get(yesterday)!.reasons.join()).toMatch(/UNVERIFIED: its manifest does not verify \(.*signature does not match its content.*\): not deleted; look at it/);
    expect(kept.get(copied)).toMatchObject({ unverified: true });
    expect(kept.get(copied)!.reasons.join()).toContain(`names set ${today} (copied from another set)`);
    expect(kept.get(today)?.unverified).toBeUndefined();
    expect(deletes.every((k) => k.includes(gone))).toBe(true);
  });
});
