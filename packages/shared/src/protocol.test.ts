import { describe, expect, it } from 'vitest';
import { MAX_FRAME_BYTES, encodeMessage, parseMessage } from './protocol.js';
import { thrownBy } from './testing/helpers.js';

const SET = '20261122T030000Z-e1-000042';
const T = '2026-11-22T03:00:41.112Z';

/** "CODE: message" of the TandemError `fn` throws. */
function code(fn: () => unknown): string {
  const err = thrownBy(fn);
  return `${err.code}: ${err.message}`;
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
});
