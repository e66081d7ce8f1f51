import { describe, expect, it } from 'vitest';
import type { AppliedState } from '../apply/state.js';
import { backoffDelay, jittered } from './backoff.js';
import { computeLag, judgeLag, pendingWithoutListing, verdictExitCode } from './lag.js';
import { checkListen, isLoopback } from './server.js';
import { streamUrl } from './push-client.js';

const applied = (o: Partial<AppliedState> = {}): AppliedState => ({
  site: 'demo',
  setId: '20261122T030000Z-e1-000042',
  epoch: 1,
  seq: 42,
  createdAt: '2026-11-22T03:00:00.000Z',
  committedAt: '2026-11-22T03:00:40.000Z',
  appliedAt: '2026-11-22T03:00:41.500Z',
  bytes: 1,
  durations: {},
  restart: 'none',
  ...o,
});
const latest = (seq: number, setId = `20261122T030000Z-e1-${String(seq).padStart(6, '0')}`) => ({
  setId,
  epoch: 1,
  seq,
  createdAt: '2026-11-22T03:00:00.000Z',
  committedAt: '2026-11-22T03:00:40.000Z',
});

describe('lag figures', () => {
  const now = new Date('2026-11-22T04:00:00.000Z');

  it('measures the recovery point from creation and the apply lag from the commit', () => {
    expect(computeLag({ now, applied: applied(), latest: latest(42), heartbeatAt: '2026-11-22T03:59:30.000Z', pendingSets: 0 })).toEqual({
      recoveryPointAgeSeconds: 3600,
      applyLagSeconds: 1.5,
      pendingSets: 0,
      primaryHeartbeatAgeSeconds: 30,
      heartbeatNewerSetId: null,
    });
  });

  it('is null where it cannot be known', () => {
    expect(computeLag({ now, applied: null, latest: null, heartbeatAt: null, pendingSets: null })).toEqual({
      recoveryPointAgeSeconds: null,
      applyLagSeconds: null,
      pendingSets: null,
      primaryHeartbeatAgeSeconds: null,
      heartbeatNewerSetId: null,
    });
    // An old applied.json without committedAt: known only while latest.json still names the set.
    const old = applied({ committedAt: undefined });
    expect(computeLag({ now, applied: old, latest: latest(42, old.setId), heartbeatAt: null, pendingSets: 0 }).applyLagSeconds).toBe(1.5);
    expect(computeLag({ now, applied: old, latest: latest(43), heartbeatAt: null, pendingSets: 1 }).applyLagSeconds).toBeNull();
  });

  it('knows the pending count without a listing only when nothing is pending', () => {
    expect(pendingWithoutListing(applied(), latest(42, applied().setId))).toBe(0);
    expect(pendingWithoutListing(applied(), latest(41))).toBe(0);
    expect(pendingWithoutListing(applied(), latest(43))).toBeNull();
    expect(pendingWithoutListing(null, null)).toBe(0);
    expect(pendingWithoutListing(null, latest(1))).toBeNull();
    // latest.json names the applied set, but the primary's heartbeat names a newer one: a listing decides.
    expect(pendingWithoutListing(applied(), latest(42, applied().setId), latest(43))).toBeNull();
    expect(pendingWithoutListing(applied(), latest(42, applied().setId), latest(42, applied().setId))).toBe(0);
  });

  it('alarms when the signed heartbeat names a newer set than latest.json (an old latest.json put back)', () => {
    const a = applied();
    const base = { now, applied: a, latest: latest(42, a.setId), heartbeatAt: '2026-11-22T03:59:30.000Z', pendingSets: null };
    // The replay: latest.json names the applied set, "0 pending" without the heartbeat.
    expect(computeLag({ ...base, heartbeatLatest: latest(43) }).heartbeatNewerSetId).toBe(latest(43).setId);
    expect(computeLag({ ...base, heartbeatLatest: latest(42, a.setId) }).heartbeatNewerSetId).toBeNull();
    expect(computeLag({ ...base, heartbeatLatest: latest(41) }).heartbeatNewerSetId).toBeNull();
    expect(computeLag({ ...base, heartbeatLatest: null }).heartbeatNewerSetId).toBeNull();
    expect(computeLag({ ...base, latest: null, heartbeatLatest: latest(43) }).heartbeatNewerSetId).toBe(latest(43).setId);
    // latest.json polled before that set was committed (03:00:40) rightly names the older one.
    expect(computeLag({ ...base, heartbeatLatest: latest(43), latestReadAt: new Date('2026-11-22T03:00:30.000Z') }).heartbeatNewerSetId).toBeNull();
    expect(computeLag({ ...base, heartbeatLatest: latest(43), latestReadAt: new Date('2026-11-22T03:00:50.000Z') }).heartbeatNewerSetId).toBe(latest(43).setId);
    // latest.json could not be read (the filestore is down): cannot tell.
    expect(computeLag({ ...base, heartbeatLatest: latest(43), latestReadAt: null }).heartbeatNewerSetId).toBeNull();
    // --max-lag: critical however young the applied set is.
    expect(judgeLag(10, 100, latest(43).setId)).toBe('critical');
    expect(judgeLag(10, 100, null)).toBe('ok');
  });

  it('judges --max-lag Nagios style: ok up to 80%, warning above, critical beyond', () => {
    expect(judgeLag(80, 100)).toBe('ok');
    expect(judgeLag(80.001, 100)).toBe('warning');
    expect(judgeLag(100, 100)).toBe('warning');
    expect(judgeLag(100.001, 100)).toBe('critical');
    expect(judgeLag(null, 100)).toBe('critical');
    expect(['ok', 'warning', 'critical'].map((v) => verdictExitCode(v as 'ok'))).toEqual([0, 1, 2]);
  });
});

describe('backoff', () => {
  it('doubles up to the cap, with half of each delay random', () => {
    const p = { baseMs: 1_000, capMs: 30_000 };
    expect([1, 2, 3, 4, 5, 6, 7, 50].map((n) => backoffDelay(n, p, () => 1))).toEqual([1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
    expect([1, 2, 6].map((n) => backoffDelay(n, p, () => 0))).toEqual([500, 1_000, 15_000]);
  });

  it('jitters the poll interval by ±10%', () => {
    expect(jittered(60_000, 0.1, () => 0)).toBe(54_000);
    expect(jittered(60_000, 0.1, () => 1)).toBe(66_000);
    expect(jittered(60_000, 0.1, () => 0.5)).toBe(60_000);
  });
});

describe('listen and push addresses', () => {
  it('serves /status without a token only on loopback', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', 'localhost']) expect(isLoopback(h), h).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.5', 'example.com']) expect(isLoopback(h), h).toBe(false);
    expect(() => checkListen('127.0.0.1:7071', null)).not.toThrow();
    expect(() => checkListen('[::1]:7071', null)).not.toThrow();
    expect(() => checkListen('0.0.0.0:7071', null)).toThrow(/not a loopback address and no token/);
    expect(() => checkListen('0.0.0.0:7071', 'x'.repeat(32))).not.toThrow();
  });

  it('dials /v1/stream unless the URL names a path', () => {
    expect(streamUrl('ws://primary:7070')).toBe('ws://primary:7070/v1/stream');
    expect(streamUrl('wss://primary.example/')).toBe('wss://primary.example/v1/stream');
    expect(streamUrl('wss://proxy.example/tandem/v1/stream')).toBe('wss://proxy.example/tandem/v1/stream');
  });
});
