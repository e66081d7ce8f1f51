import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openFilestore } from '../filestore/open.js';
import { signLatest, type LatestPointer } from '../manifest.js';
import { rejectedWith, removeTempDirs, tempDirSync, thrownBy } from '../testing/helpers.js';
import { parseEpoch } from './epoch.js';
import { checkHeartbeat, readVerifiedHeartbeat, signHeartbeat, verifyHeartbeat, type Heartbeat } from './heartbeat.js';
import { readVerifiedLatest } from './latest.js';
import { encodeStandbyReport, parseStandbyReport, readStandbyReports } from './standby-report.js';

afterAll(removeTempDirs);

const SET = '20261122T030000Z-e1-000042';
const T = '2026-11-22T03:00:41.112Z';
const store = () => openFilestore(`file://${tempDirSync('tandem-store-')}`);
const keys = () => generateKeyPairSync('ed25519');

describe('latest.json', () => {
  const pointer = (site: string): LatestPointer => ({
    format: 'tandem-latest',
    version: 1,
    site,
    setId: SET,
    epoch: 1,
    seq: 42,
    createdAt: T,
    committedAt: T,
    manifestSha256: 'a'.repeat(64),
  });

  it('reads and verifies it, conditionally when a version is known, and null when there is none', async () => {
    const { privateKey, publicKey } = keys();
    const fs = store();
    expect(await readVerifiedLatest(fs, 'demo', publicKey)).toBeNull();
    expect(await readVerifiedLatest(fs, 'demo', publicKey, { knownVersion: undefined })).toBeNull();
    await fs.putBuffer('demo/latest.json', signLatest(pointer('demo'), privateKey));
    const read = await readVerifiedLatest(fs, 'demo', publicKey);
    expect(read?.latest).toEqual(pointer('demo'));
    expect(await readVerifiedLatest(fs, 'demo', publicKey, { knownVersion: read!.version })).toEqual({ unchanged: true });
    expect(await readVerifiedLatest(fs, 'demo', publicKey, { knownVersion: 'older' })).toMatchObject({ latest: { setId: SET } });
  });

  it("refuses another site's latest.json, signed with the same key", async () => {
    const { privateKey, publicKey } = keys();
    const fs = store();
    await fs.putBuffer('demo/latest.json', signLatest(pointer('other'), privateKey));
    const err = await rejectedWith(readVerifiedLatest(fs, 'demo', publicKey), { code: 'SITE_MISMATCH' });
    expect(err.message).toBe(`${fs.description}/demo/latest.json is for site "other", not "demo"`);
  });
});

describe('epoch.json', () => {
  const parse = (doc: unknown) => parseEpoch(Buffer.from(JSON.stringify(doc)), 'e');

  it('accepts what fencing needs, keeps every other member as read, and refuses the rest', () => {
    const base = { format: 'tandem-epoch', epoch: 1, primaryHost: 'web1' };
    // Members it does not check are accepted as they are: records of older and newer agents.
    expect(parse(base)).toEqual(base);
    const full = { ...base, version: 2, primaryId: 'a', since: 'x', previous: { epoch: 0 }, reason: 'promote', extra: [1] };
    expect(Object.keys(parse(full))).toEqual(Object.keys(full));
    expect(parse({ ...base, epoch: 2 ** 60 }).epoch).toBe(2 ** 60);
    for (const bad of [null, [], 1, { ...base, format: 'x' }, { ...base, epoch: 0 }, { ...base, epoch: 1.5 }, { ...base, epoch: '1' }, { ...base, primaryHost: 1 }, { ...base, primaryId: '' }, { ...base, primaryId: null }]) {
      expect(thrownBy(() => parse(bad)).message, JSON.stringify(bad)).toBe('e: not a tandem epoch document');
    }
    expect(thrownBy(() => parseEpoch(Buffer.from('{'), 'e')).message).toBe('e: not valid JSON');
  });
});

describe('standby reports', () => {
  it('round-trips the standby report and rejects damaged ones', () => {
    const raw = encodeStandbyReport({ standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T });
    expect(JSON.parse(raw.toString())).toEqual({ format: 'tandem-standby-report', version: 1, standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T });
    expect(parseStandbyReport(raw, 'r').setId).toBe(SET);
    expect(() => parseStandbyReport(Buffer.from('{'), 'demo/standbys/x.json')).toThrow(/demo\/standbys\/x.json: not valid JSON/);
    expect(() => parseStandbyReport(Buffer.from('{"format":"tandem-standby-report","version":2}'), 'r')).toThrow(/not a tandem standby report/);
  });

  it('carries the WAL need of a standby in WAL mode; older reports lack it, unknown members are stripped', () => {
    const wal = { neededFrom: '0000000100000000000000A3', at: T };
    const raw = encodeStandbyReport({ standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T, wal });
    expect(JSON.parse(raw.toString())).toEqual({ format: 'tandem-standby-report', version: 1, standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T, wal });
    expect(parseStandbyReport(raw, 'r').wal).toEqual(wal);
    // Written by an older standby: no wal member.
    expect(parseStandbyReport(encodeStandbyReport({ standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T }), 'r').wal).toBeUndefined();
    // A newer one's members are stripped, inside wal too.
    const newer = { format: 'tandem-standby-report', version: 1, standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T, lagSeconds: 3, wal: { ...wal, replayedTo: '0/A3000060' } };
    const parsed = parseStandbyReport(Buffer.from(JSON.stringify(newer)), 'r');
    expect(parsed).toEqual({ format: 'tandem-standby-report', version: 1, standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T, wal });
    // A damaged wal member makes the report unreadable, naming the member.
    for (const bad of [{ ...wal, neededFrom: '0000000100000000000000a3' }, { ...wal, neededFrom: '00000001000000000000A3' }, { neededFrom: wal.neededFrom }, { ...wal, at: 'yesterday' }]) {
      expect(() => parseStandbyReport(Buffer.from(JSON.stringify({ ...newer, wal: bad })), 'r'), JSON.stringify(bad)).toThrow(/not a tandem standby report \(wal\./);
      expect(() => encodeStandbyReport({ standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T, wal: bad as typeof wal })).toThrow(/refusing to write an invalid standby report: wal\./);
    }
  });

  it('reads every report, naming the ones it cannot', async () => {
    const fs = store();
    await fs.putBuffer('demo/standbys/web2.json', encodeStandbyReport({ standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T }));
    await fs.putBuffer('demo/standbys/web3.json', Buffer.from('{'));
    await fs.putBuffer('demo/standbys/notes.txt', Buffer.from('x'));
    const r = await readStandbyReports(fs, 'demo');
    expect(r.reports.map((x) => x.standbyId)).toEqual(['web2']);
    expect(r.unreadable.map((x) => x.key)).toEqual(['demo/standbys/web3.json']);
  });
});

describe('heartbeat.json', () => {
  const hb: Heartbeat = {
    format: 'tandem-heartbeat',
    version: 1,
    site: 'demo',
    epoch: 1,
    primaryHost: 'web1',
    at: T,
    lastBackup: { setId: SET, at: T, outcome: 'ok' },
    nextBackupAt: null,
  };

  it('signs and verifies the heartbeat', () => {
    const { privateKey, publicKey } = keys();
    const raw = signHeartbeat(hb, privateKey);
    expect(verifyHeartbeat(raw, publicKey, 'hb')).toEqual(hb);
    const tampered = Buffer.from(raw.toString().replace('"web1"', '"web9"'));
    expect(() => verifyHeartbeat(tampered, publicKey, 'hb')).toThrow(/signature does not match/);
  });

  it("checks the site, and reads none as null", async () => {
    const { privateKey, publicKey } = keys();
    expect(thrownBy(() => checkHeartbeat(signHeartbeat({ ...hb, site: 'other' }, privateKey), publicKey, 'demo', 'hb')).message).toBe('hb is for site "other", not "demo"');
    const fs = store();
    expect(await readVerifiedHeartbeat(fs, 'demo', publicKey)).toBeNull();
    await fs.putBuffer('demo/heartbeat.json', signHeartbeat(hb, privateKey));
    expect(await readVerifiedHeartbeat(fs, 'demo', publicKey)).toEqual(hb);
  });
});
