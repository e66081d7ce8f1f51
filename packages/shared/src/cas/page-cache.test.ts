import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { objectId } from './object-id.js';
import { PageCache } from './page-cache.js';

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('PageCache', () => {
  it('gives back every page it was given, of any size against its 1 MiB write buffer, and only by a matching id', () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-page-cache-'));
    const file = join(dir, 'index-pages.bin');
    const key = randomBytes(32);
    // Many small pages (several buffers' worth), one that nearly fills a buffer, one larger than it.
    const pages = [
      ...Array.from({ length: 600 }, (_, i) => randomBytes(3000 + ((i * 7919) % 4000))),
      randomBytes((1 << 20) - 100),
      randomBytes(5),
      randomBytes((1 << 20) + 12345),
      ...Array.from({ length: 50 }, () => randomBytes(2000)),
    ];
    const ids = pages.map((p) => objectId(key, p));
    const w = new PageCache(file, key, { write: true });
    for (const [i, p] of pages.entries()) {
      w.add(ids[i]!, p);
      p.fill(0); // the caller's buffer is reused: the cache holds its own copy
    }
    w.add(ids[0]!, randomBytes(10)); // an id given twice: the first stays
    w.commit();
    w.close();
    const originals = pages.map((_, i) => i); // indices, the bytes are gone: compare by id
    const r = new PageCache(file, key, { write: false });
    for (const i of originals) {
      const got = r.get(ids[i]!, pages[i]!.length);
      expect(got, `page ${i}`).not.toBeNull();
      expect(objectId(key, got!)).toBe(ids[i]);
    }
    expect(r.hits).toBe(pages.length);
    expect(r.get(objectId(key, randomBytes(100)), 100)).toBeNull();
    expect(r.get(ids[3]!, pages[3]!.length + 1)).toBeNull();
    r.close();
  });
});
