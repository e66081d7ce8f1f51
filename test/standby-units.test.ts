/** The pure parts of the standby: preserve globs and the ordering of sets. */
import { describe, expect, it } from 'vitest';
import { isTandemError, type Manifest } from '@tandem/shared';
import { globToRegExp, relativeInside } from '../packages/standby-agent/src/apply/preserve.js';
import { decide } from '../packages/standby-agent/src/apply/resolve-set.js';
import type { AppliedState } from '../packages/standby-agent/src/apply/state.js';

describe('preserve globs', () => {
  const m = (glob: string, path: string) => globToRegExp(glob).test(path);
  it('match within one segment with * and ?, across segments with **', () => {
    expect(m('config.d/db.yml', 'config.d/db.yml')).toBe(true);
    expect(m('config.d/db.yml', 'config.d/db_yml')).toBe(false); // "." is literal
    expect(m('config.d/*.yml', 'config.d/db.yml')).toBe(true);
    expect(m('config.d/*.yml', 'config.d/sub/db.yml')).toBe(false);
    expect(m('**/secret-?.txt', 'a/b/secret-1.txt')).toBe(true);
    expect(m('**/secret-?.txt', 'secret-1.txt')).toBe(true);
    expect(m('local/**', 'local/x/y')).toBe(true);
    expect(m('./config.d/db.yml', 'config.d/db.yml')).toBe(true);
  });
  it('finds the sentinel inside the config dir only', () => {
    expect(relativeInside('/srv/demo/priv', '/srv/demo/priv/BACKUP')).toBe('BACKUP');
    expect(relativeInside('/srv/demo/priv', '/srv/demo/BACKUP')).toBeUndefined();
    expect(relativeInside('/srv/demo/priv', '/srv/demo/priv')).toBeUndefined();
  });
});

describe('set ordering', () => {
  const set = (epoch: number, seq: number) => ({ setId: `20260101T000000Z-e${epoch}-${String(seq).padStart(6, '0')}`, epoch, seq }) as Manifest;
  const applied = { ...set(1, 5), site: 's', createdAt: '', appliedAt: '', bytes: 0, durations: {}, restart: 'ok' } as AppliedState;
  const none = { named: false, allowOlder: false, force: false };
  it('applies newer sets, skips the applied one unless forced, refuses older ones unless named and allowed', () => {
    expect(decide(set(1, 6), applied, none)).toBe('apply');
    expect(decide(set(2, 1), applied, none)).toBe('apply'); // a higher epoch wins over seq
    expect(decide(set(1, 5), null, none)).toBe('apply');
    expect(decide(set(1, 5), applied, none)).toBe('already-applied');
    expect(decide(set(1, 5), applied, { ...none, force: true })).toBe('apply');
    expect(() => decide(set(1, 4), applied, none)).toThrow(/older than the applied set/);
    expect(() => decide(set(1, 4), applied, { ...none, allowOlder: true })).toThrow(/older/); // not named
    expect(decide(set(1, 4), applied, { named: true, allowOlder: true, force: false })).toBe('apply');
    try {
      decide(set(1, 4), applied, { ...none, named: true });
    } catch (err) {
      expect(isTandemError(err) && err.hint).toMatch(/--allow-older/);
    }
  });
});
