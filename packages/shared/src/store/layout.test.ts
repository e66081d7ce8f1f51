import { describe, expect, it } from 'vitest';
import { artifactEntrySchema } from '../manifest.js';
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
    expect(artifactFileName('files', true, false)).toBe('files.tar.age');
    expect(artifactFileName('files', false, false)).toBe('files.tar');
    expect(layout.manifest('demo', 'X')).toBe('demo/sets/X/manifest.json');
    expect(layout.latest('demo')).toBe('demo/latest.json');
  });

  it('stores only archives uncompressed: a manifest saying so of a dump is refused', () => {
    const entry = { name: 'files', kind: 'tar', file: 'files.tar.age', storedSize: 10, storedSha256: 'a'.repeat(64), plainSize: 10, compression: 'none', encryption: 'age' };
    expect(artifactEntrySchema.safeParse(entry).success).toBe(true);
    const dump = artifactEntrySchema.safeParse({ ...entry, name: 'db', kind: 'postgres-custom', file: 'db.dump.age' });
    expect(dump.success).toBe(false);
    expect(dump.error?.issues.map((i) => i.message)).toEqual(['only an archive may be stored uncompressed']);
    expect(artifactEntrySchema.safeParse({ ...entry, compression: 'gzip' }).success).toBe(false);
  });
});
