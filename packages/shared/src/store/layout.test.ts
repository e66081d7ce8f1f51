import { describe, expect, it } from 'vitest';
import { artifactFileName, layout, makeSetId, parseSetId } from './layout.js';

describe('layout', () => {
  it('makes set ids that sort by time and parse back', () => {
    const a = makeSetId(new Date('2026-11-22T03:00:00.123Z'), 1, 42);
    const b = makeSetId(new Date('2026-11-22T03:00:01Z'), 1, 43);
    expect(a).toBe('20261122T030000Z-e1-000042');
    expect([b, a].sort()).toEqual([a, b]);
    expect(parseSetId(a)).toEqual({ time: new Date('2026-11-22T03:00:00Z'), epoch: 1, seq: 42 });
    expect(parseSetId('../../etc')).toBeNull();
  });

  it('names artifacts and keys as the design doc says', () => {
    expect(artifactFileName('db', true)).toBe('db.dump.zst.age');
    expect(artifactFileName('files', false)).toBe('files.tar.zst');
    expect(layout.manifest('demo', 'X')).toBe('demo/sets/X/manifest.json');
    expect(layout.latest('demo')).toBe('demo/latest.json');
  });
});
