import { describe, expect, it } from 'vitest';
import { ownerSafeRestore, splitGucList } from './db-prereqs.js';

describe('splitGucList (as PostgreSQL splits list settings such as search_path)', () => {
  it('splits on commas, trims, and unquotes double-quoted items', () => {
    expect(splitGucList('app, public')).toEqual(['app', 'public']);
    expect(splitGucList('"$user", public')).toEqual(['$user', 'public']);
    expect(splitGucList('"a,b", "say ""hi"""')).toEqual(['a,b', 'say "hi"']);
    expect(splitGucList('')).toEqual([]);
  });
});

describe('ownerSafeRestore', () => {
  it('knows the releases that run index expressions as the table owner', () => {
    expect(ownerSafeRestore(150020)).toBe(true);
    expect(ownerSafeRestore(140003)).toBe(true);
    expect(ownerSafeRestore(140002)).toBe(false);
    expect(ownerSafeRestore(130007)).toBe(true);
    expect(ownerSafeRestore(130006)).toBe(false);
    expect(ownerSafeRestore(90624)).toBe(false);
  });
});
