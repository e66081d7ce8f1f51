import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { objectId, objectKey, objectMatches } from './object-id.js';

describe('content object ids', () => {
  it('are keyed: the same bytes get another name under another key, and not their plain SHA-256', () => {
    const data = Buffer.from('a file someone knows');
    const k1 = randomBytes(32);
    const k2 = randomBytes(32);
    expect(objectId(k1, data)).toMatch(/^[0-9a-f]{64}$/);
    expect(objectId(k1, data)).toBe(objectId(k1, Buffer.from('a file someone knows')));
    expect(objectId(k1, data)).not.toBe(objectId(k2, data));
    expect(objectId(k1, data)).not.toBe(createHash('sha256').update(data).digest('hex'));
  });

  it('check an object against its name, and refuse a swapped or altered one', () => {
    const k = randomBytes(32);
    const a = Buffer.from('object a');
    const id = objectId(k, a);
    expect(objectMatches(k, id, a)).toBe(true);
    expect(objectMatches(k, id, Buffer.from('object b'))).toBe(false);
    expect(objectMatches(randomBytes(32), id, a)).toBe(false);
    expect(objectMatches(k, 'not-an-id', a)).toBe(false);
  });

  it('live under the site in 256 directories', () => {
    const id = 'ab'.padEnd(64, '0');
    expect(objectKey('demo', id)).toBe(`demo/objects/ab/${id}`);
    expect(() => objectKey('demo', '../x')).toThrow(/not an object id/);
  });
});
