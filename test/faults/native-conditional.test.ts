import { appendFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type EpochDoc,
  type Filestore,
  layout,
  openFilestore,
  raiseEpoch,
  readEpochDoc,
  readOrCreateEpoch,
  TandemError,
} from '@tandem/shared';
import { radosgwFilestoreUrl, startRadosgw, type RadosgwHandle } from '../support/radosgw.js';
import { ensurePostgres, runPrimary, tmpDir } from '../support/site.js';
import {
  apply,
  backup,
  createStandbySite,
  removeStandbySite,
  runStandby,
  show,
  writeStandbyConfig,
  type StandbySite,
} from '../support/standby-helpers.js';

/**
 * The fencing write's default mode, `native` (If-None-Match / If-Match on PUT), against a server
 * that honours those headers: Ceph's object gateway, single node, started for this file. s3rver,
 * which the other suites use, ignores them, so there the tests run `emulated`.
 */
let rgw: RadosgwHandle | undefined;
const stores: Filestore[] = [];

beforeAll(async () => {
  await ensurePostgres();
  rgw = await startRadosgw();
});

afterAll(async () => {
  for (const fs of stores) await fs.close();
  await rgw?.destroy();
});

const urls = new Map<Filestore, string>();

function open(url: string): Filestore {
  const fs = openFilestore(url, { s3: { credentials: rgw!.credentials } });
  stores.push(fs);
  urls.set(fs, url);
  return fs;
}

/** A filestore on a fresh prefix of the gateway, in native mode. */
const store = (): Filestore => open(radosgwFilestoreUrl(rgw!, { prefix: 'unique' }));

/** Another client on the same prefix: a second server racing the first. */
const sameStore = (fs: Filestore): Filestore => open(urls.get(fs)!);

/** The HTTP status the server answered with, under the TandemError. */
const httpStatus = (err: unknown): number | undefined =>
  ((err as TandemError).cause as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;

/**
 * Wraps filestores so that their writeConditional calls wait until `n` of them have been made:
 * every racer has read the same version before any of them writes, so the server alone decides.
 */
function gate(n: number): (fs: Filestore) => Filestore {
  let arrived = 0;
  let release!: () => void;
  const all = new Promise<void>((r) => (release = r));
  return (fs) => {
    const writeConditional: Filestore['writeConditional'] = async (...args) => {
      if (++arrived === n) release();
      await all;
      return fs.writeConditional(...args);
    };
    return new Proxy(fs, {
      get(target, prop) {
        if (prop === 'writeConditional') return writeConditional;
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  };
}

describe('native conditional writes on Ceph RGW', () => {
  it('create-if-absent: of 12 racing writers exactly one wins, the others get HTTP 412, and the object is the winner\'s', async () => {
    const fs = store();
    const racers = [fs, ...Array.from({ length: 11 }, () => sameStore(fs))];
    const results = await Promise.allSettled(racers.map((r, i) => r.writeConditional('race/doc.json', Buffer.from(`writer ${i}`), { ifAbsent: true })));
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    expect(won, rgw!.version).toHaveLength(1);
    for (const r of results) {
      if (r.status === 'fulfilled') continue;
      expect(r.reason).toBeInstanceOf(TandemError);
      expect((r.reason as TandemError).kind).toBe('precondition');
      expect(httpStatus(r.reason)).toBe(412);
    }
    expect((await fs.getBuffer('race/doc.json')).body.toString()).toBe(`writer ${won[0]}`);
  });

  it('compare-and-swap: a write on the version just read succeeds; one on a stale version is refused with HTTP 412 and changes nothing', async () => {
    const fs = store();
    const v1 = await fs.writeConditional('cas.json', Buffer.from('one'), { ifAbsent: true });
    const read = await fs.getBuffer('cas.json');
    expect(read.info.version).toBe(v1.version);
    // The version as HEAD/GET return it: a quoted ETag.
    expect(read.info.version).toMatch(/^"[0-9a-f]{32}"$/);
    const v2 = await fs.writeConditional('cas.json', Buffer.from('two'), { ifVersion: read.info.version });
    expect(v2.version).not.toBe(v1.version);

    const stale = await fs.writeConditional('cas.json', Buffer.from('stale'), { ifVersion: v1.version }).catch((e: unknown) => e);
    expect(stale).toBeInstanceOf(TandemError);
    expect((stale as TandemError).kind).toBe('precondition');
    expect(httpStatus(stale)).toBe(412);
    expect((await fs.getBuffer('cas.json')).body.toString()).toBe('two');

    const missing = await fs.writeConditional('absent.json', Buffer.from('x'), { ifVersion: v1.version }).catch((e: unknown) => e);
    expect((missing as TandemError).kind).toBe('precondition');
    await expect(fs.stat('absent.json')).resolves.toBeNull();

    // Eight writers that all read v2: exactly one replaces it.
    const racers = [fs, ...Array.from({ length: 7 }, () => sameStore(fs))];
    const results = await Promise.allSettled(racers.map((r, i) => r.writeConditional('cas.json', Buffer.from(`next ${i}`), { ifVersion: v2.version })));
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    expect(won).toHaveLength(1);
    expect(results.filter((r) => r.status === 'rejected').map((r) => httpStatus((r as PromiseRejectedResult).reason))).toEqual(Array(7).fill(412));
    expect((await fs.getBuffer('cas.json')).body.toString()).toBe(`next ${won[0]}`);
  });

  it('epoch.json: racing first backups create epoch 1 once, racing promotes raise it once, and a stale write is refused with HTTP 412', async () => {
    const fs = store();
    const site = 'race-site';

    const creating = gate(6);
    const creators = Array.from({ length: 6 }, (_, i) => readOrCreateEpoch(creating(i === 0 ? fs : sameStore(fs)), site, { id: `primary-${i}`, host: `primary-${i}` }));
    const created = await Promise.all(creators);
    expect(created.filter((c) => c.created)).toHaveLength(1);
    const first = created.find((c) => c.created)!.doc;
    for (const c of created) expect(c.doc).toEqual(first);
    const epoch1 = (await readEpochDoc(fs, site))!;
    expect(epoch1.doc).toMatchObject({ epoch: 1, primaryHost: first.primaryHost });

    // Five standbys promote at once, each having read epoch 1 before any of them writes.
    const promoting = gate(5);
    const promotes = Array.from({ length: 5 }, (_, i) => raiseEpoch(promoting(i === 0 ? fs : sameStore(fs)), site, { id: `sb-${i}`, host: `sb-${i}` }, 'promote', { expect: 1 }));
    const results = await Promise.allSettled(promotes);
    const won = results.filter((r): r is PromiseFulfilledResult<EpochDoc> => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    const winner = won[0]!.value;
    expect(winner).toMatchObject({ epoch: 2, previous: { epoch: 1, primaryHost: first.primaryHost } });
    for (const r of results) {
      if (r.status === 'fulfilled') continue;
      const err = r.reason as TandemError;
      expect(err.code).toBe('PROMOTE_RACE_LOST');
      expect(err.message).toContain(`first: ${winner.primaryHost} is primary in epoch 2`);
      // Lost at the server, not at the read: the conditional PUT itself was refused.
      expect(httpStatus(err.cause)).toBe(412);
    }
    const epoch2 = (await readEpochDoc(fs, site))!;
    expect(epoch2.doc).toEqual(winner);

    // A server that still holds epoch 1's version cannot write over the promote.
    const forged = Buffer.from(JSON.stringify({ ...epoch1.doc, epoch: 3, primaryHost: 'stale-writer' }));
    const stale = await fs.writeConditional(layout.epoch(site), forged, { ifVersion: epoch1.version }).catch((e: unknown) => e);
    expect((stale as TandemError).kind).toBe('precondition');
    expect(httpStatus(stale)).toBe(412);
    expect((await readEpochDoc(fs, site))!.doc).toEqual(winner);
  });
});

describe('promote through the CLIs on Ceph RGW, native conditional writes', () => {
  let s: StandbySite | undefined;
  let root: string | undefined;
  afterAll(() => removeStandbySite(s, root));

  it('of two promotes racing, exactly one wins, and the old primary is fenced', async () => {
    root = await tmpDir('tandem-rgw-');
    s = await createStandbySite(root, { filestoreUrl: radosgwFilestoreUrl(rgw!, { prefix: 'unique' }), env: rgw!.env });
    const site = s;
    await backup(site);
    const named = async (name: string) => {
      const file = join(site.root, `standby-${name}.yml`);
      await writeStandbyConfig(site, file, { stateDir: join(site.root, `state-${name}`) });
      await appendFile(file, `standbyId: ${name}\n`);
      return file;
    };
    const a = await named('sb-a');
    const b = await named('sb-b');
    const applied = await apply(site, [], {}, a);
    expect(applied.code, show(applied)).toBe(0);

    const [ra, rb] = await Promise.all([
      runStandby(['promote', '--config', a, '--force'], { env: site.env }),
      runStandby(['promote', '--config', b, '--force'], { env: site.env }),
    ]);
    expect([ra, rb].filter((r) => r.code === 0), [ra, rb].map(show).join('\n---\n')).toHaveLength(1);
    const winner = ra.code === 0 ? 'sb-a' : 'sb-b';
    const loser = ra.code === 0 ? rb : ra;
    expect(loser.stderr).toContain(`another server changed epoch.json of site "${site.site}" first: ${winner} is primary in epoch 2`);
    await expect(readFile(join(site.root, `state-${winner === 'sb-a' ? 'sb-b' : 'sb-a'}`, 'promoted.json'))).rejects.toThrow(/ENOENT/);

    const fs = open(site.filestoreUrl);
    expect((await readEpochDoc(fs, site.site))!.doc).toMatchObject({ epoch: 2, primaryHost: winner, reason: 'promote --force' });

    const r = await runPrimary(['backup', '--config', site.primary.configFile], { env: site.env });
    expect(r.code, show(r)).toBe(4);
    expect(r.stderr).toContain(`has been fenced: ${winner} became primary of site "${site.site}" in epoch 2`);
  });
});
