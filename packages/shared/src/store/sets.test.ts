import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeTempDirs, tempDirSync } from '../testing/helpers.js';
import { openFilestore } from '../filestore/open.js';
import { makeSetId } from './layout.js';
import { compareSetIds, compareSets, countSetsNewerThan, listSetDirs, listSets, setRefOf } from './sets.js';

afterAll(removeTempDirs);

const store = () => openFilestore(`file://${tempDirSync('tandem-sets-')}`);
const ref = (id: string) => setRefOf(id)!;

describe('the order of sets', () => {
  it('is (epoch, seq), which id order (time) agrees with only while clocks do', () => {
    const a = makeSetId(new Date('2026-11-22T03:00:00Z'), 1, 41);
    const b = makeSetId(new Date('2026-11-22T04:00:00Z'), 1, 42);
    expect(compareSets(ref(a), ref(b))).toBeLessThan(0);
    expect([b, a].sort()).toEqual([a, b]);
    // Promoted onto a server whose clock is an hour behind: the newer set has the earlier time.
    const promoted = makeSetId(new Date('2026-11-22T03:30:00Z'), 2, 43);
    expect(promoted < b).toBe(true);
    expect(compareSets(ref(promoted), ref(b))).toBeGreaterThan(0);
    // A clock stepped back within one epoch.
    const stepped = makeSetId(new Date('2026-11-22T02:00:00Z'), 1, 43);
    expect(compareSets(ref(stepped), ref(b))).toBeGreaterThan(0);
    // Two ids of one epoch and sequence never compare equal.
    const twin = makeSetId(new Date('2026-11-22T05:00:00Z'), 1, 42);
    expect(compareSets(ref(b), ref(twin))).toBeLessThan(0);
    expect(setRefOf('../x')).toBeNull();
    // Names under sets/ that are not set ids come after every set, by name.
    expect(['zz', promoted, 'aa', b, a].sort(compareSetIds)).toEqual([a, b, promoted, 'aa', 'zz']);
  });
});

describe('listing sets', () => {
  const ids = {
    old: makeSetId(new Date('2026-11-22T04:00:00Z'), 1, 1),
    leftover: makeSetId(new Date('2026-11-22T05:00:00Z'), 1, 2),
    newer: makeSetId(new Date('2026-11-22T03:00:00Z'), 2, 3),
  };
  const filled = async () => {
    const fs = store();
    await fs.putBuffer(`demo/sets/${ids.newer}/manifest.json`, Buffer.from('{}'));
    await fs.putBuffer(`demo/sets/${ids.old}/db.dump.zst.age`, Buffer.from('12345'));
    await fs.putBuffer(`demo/sets/${ids.old}/manifest.json`, Buffer.from('{}'));
    await fs.putBuffer(`demo/sets/${ids.leftover}/db.dump.zst.age`, Buffer.from('1'));
    await fs.putBuffer('demo/sets/lost+found/x', Buffer.from('1'));
    await fs.putBuffer('demo/sets/README', Buffer.from('1'));
    return fs;
  };

  it('cuts the set ids out of the keys, oldest first by (epoch, seq), strays apart', async () => {
    const fs = await filled();
    const sets = await listSets(fs, 'demo');
    expect(sets.map((s) => [s.setId, s.committed, s.objects.length, s.bytes])).toEqual([
      [ids.old, true, 2, 7],
      [ids.leftover, false, 1, 1],
      [ids.newer, true, 1, 2],
    ]);
    expect(sets[0]!.time).toEqual(new Date('2026-11-22T04:00:00Z'));
    expect((await listSets(fs, 'demo', { committedOnly: true })).map((s) => s.setId)).toEqual([ids.old, ids.newer]);
    const { strays } = await listSetDirs(fs, 'demo');
    expect(strays.map((s) => [s.name, s.committed, s.bytes])).toEqual([['lost+found', false, 1]]);
  });

  it('counts the committed sets newer than a set, and names the newest', async () => {
    const fs = await filled();
    expect(await countSetsNewerThan(fs, 'demo', null)).toMatchObject({ count: 2, newest: { setId: ids.newer } });
    expect(await countSetsNewerThan(fs, 'demo', ref(ids.old))).toMatchObject({ count: 1, newest: { setId: ids.newer } });
    expect((await countSetsNewerThan(fs, 'demo', ref(ids.newer))).count).toBe(0);
    expect(await countSetsNewerThan(store(), 'demo', null)).toEqual({ count: 0, newest: null });
  });
});
