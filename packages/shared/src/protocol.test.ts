import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TandemError } from './errors.js';
import {
  MAX_FRAME_BYTES,
  encodeMessage,
  encodeStandbyReport,
  parseMessage,
  parseStandbyReport,
  signHeartbeat,
  verifyHeartbeat,
  type Heartbeat,
} from './protocol.js';

const SET = '20261122T030000Z-e1-000042';
const T = '2026-11-22T03:00:41.112Z';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TandemError);
    return `${(err as TandemError).code}: ${(err as TandemError).message}`;
  }
  throw new Error('did not throw');
}

describe('protocol v1', () => {
  it('parses every message of both directions', () => {
    const p2s = [
      { type: 'hello', site: 'demo', epoch: 1, latestSetId: SET, serverTime: T },
      { type: 'hello', site: 'demo', epoch: null, latestSetId: null, serverTime: T },
      { type: 'set-committed', site: 'demo', setId: SET, epoch: 1, seq: 42, createdAt: T, committedAt: T },
      { type: 'heartbeat', at: T },
    ];
    for (const m of p2s) expect(parseMessage(JSON.stringify(m), 'primary-to-standby')).toEqual(m);
    const s2p = [
      { type: 'hello', standbyId: 'web2', site: 'demo', appliedSetId: SET, appliedCreatedAt: T },
      { type: 'hello', standbyId: 'web2', site: 'demo', appliedSetId: null, appliedCreatedAt: null },
      { type: 'applied', standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T },
    ];
    for (const m of s2p) expect(parseMessage(Buffer.from(JSON.stringify(m)), 'standby-to-primary')).toEqual(m);
  });

  it('names what is wrong with a bad frame', () => {
    expect(code(() => parseMessage('{nope', 'standby-to-primary'))).toMatch(/^PROTOCOL_NOT_JSON/);
    expect(code(() => parseMessage('[1]', 'standby-to-primary'))).toMatch(/^PROTOCOL_NOT_OBJECT/);
    expect(code(() => parseMessage('{"type":"set-committed"}', 'standby-to-primary'))).toMatch(/^PROTOCOL_UNKNOWN_TYPE: message type "set-committed" is not one of hello, applied/);
    expect(code(() => parseMessage('{"x":1}', 'primary-to-standby'))).toMatch(/^PROTOCOL_UNKNOWN_TYPE: message type missing/);
    expect(code(() => parseMessage(JSON.stringify({ type: 'applied', standbyId: 'a/b', setId: SET, createdAt: T, appliedAt: T }), 'standby-to-primary'))).toMatch(
      /^PROTOCOL_INVALID: invalid "applied" message: standbyId: expected a standby id/,
    );
    expect(code(() => parseMessage(JSON.stringify({ type: 'applied', standbyId: 'a', setId: '../x', createdAt: T, appliedAt: T }), 'standby-to-primary'))).toMatch(/setId: expected a set id/);
    expect(code(() => parseMessage(JSON.stringify({ type: 'heartbeat', at: 'yesterday' }), 'primary-to-standby'))).toMatch(/at: expected an ISO 8601/);
    expect(code(() => parseMessage(Buffer.from([0x7b, 0xff, 0x7d]), 'standby-to-primary'))).toMatch(/^PROTOCOL_NOT_JSON/);
    expect(code(() => parseMessage('x'.repeat(MAX_FRAME_BYTES + 1), 'standby-to-primary'))).toMatch(/^PROTOCOL_FRAME_TOO_LARGE/);
  });

  it('ignores unknown members (additive changes stay v1) and validates what it sends', () => {
    const m = parseMessage(JSON.stringify({ type: 'heartbeat', at: T, extra: 1 }), 'primary-to-standby');
    expect(m).toEqual({ type: 'heartbeat', at: T });
    expect(encodeMessage({ type: 'heartbeat', at: T }, 'primary-to-standby')).toBe(`{"type":"heartbeat","at":"${T}"}`);
    expect(() => encodeMessage({ type: 'heartbeat', at: 'now' }, 'primary-to-standby')).toThrow(/refusing to send an invalid "heartbeat"/);
  });

  it('round-trips the standby report and rejects damaged ones', () => {
    const raw = encodeStandbyReport({ standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T });
    expect(JSON.parse(raw.toString())).toEqual({ format: 'tandem-standby-report', version: 1, standbyId: 'web2', setId: SET, createdAt: T, appliedAt: T });
    expect(parseStandbyReport(raw, 'r').setId).toBe(SET);
    expect(() => parseStandbyReport(Buffer.from('{'), 'demo/standbys/x.json')).toThrow(/demo\/standbys\/x.json: not valid JSON/);
    expect(() => parseStandbyReport(Buffer.from('{"format":"tandem-standby-report","version":2}'), 'r')).toThrow(/not a tandem standby report/);
  });

  it('signs and verifies the heartbeat', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
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
    const raw = signHeartbeat(hb, privateKey);
    expect(verifyHeartbeat(raw, publicKey, 'hb')).toEqual(hb);
    const tampered = Buffer.from(raw.toString().replace('"web1"', '"web9"'));
    expect(() => verifyHeartbeat(tampered, publicKey, 'hb')).toThrow(/signature does not match/);
  });
});
