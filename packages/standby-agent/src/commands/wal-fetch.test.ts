import { describe, expect, it } from 'vitest';
import { isTandemError, type WalDoc } from '@tandem/shared';
import { checkEpoch } from './wal-fetch.js';

/** Only the members the epoch rule reads matter here; the rest is what a real document carries. */
const doc = (epoch: number, archivedAt: string): WalDoc =>
  ({ name: '000000010000000000000007', epoch, archivedAt }) as unknown as WalDoc;

const code = (fn: () => void): string | null => {
  try {
    fn();
    return null;
  } catch (err) {
    return isTandemError(err) ? err.code : 'not a TandemError';
  }
};

describe('wal-fetch: the epoch rule', () => {
  const epoch2 = { epoch: 2, since: '2026-12-02T10:00:00.000Z' };

  it('accepts a file of the current epoch, and one of an older epoch stored before the current one began', () => {
    expect(code(() => checkEpoch(doc(2, '2026-12-02T11:00:00.000Z'), epoch2))).toBeNull();
    expect(code(() => checkEpoch(doc(1, '2026-12-02T09:59:59.000Z'), epoch2))).toBeNull();
    expect(code(() => checkEpoch(doc(1, '2026-12-02T09:00:00.000Z'), null))).toBeNull();
  });

  it('refuses a file stored by a replaced primary after the promote', () => {
    expect(code(() => checkEpoch(doc(1, '2026-12-02T10:00:01.000Z'), epoch2))).toBe('WAL_FENCED_PRIMARY');
  });

  it('refuses a file of an epoch the filestore does not know', () => {
    expect(code(() => checkEpoch(doc(3, '2026-12-02T11:00:00.000Z'), epoch2))).toBe('WAL_EPOCH_AHEAD');
  });
});
