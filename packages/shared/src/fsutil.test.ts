import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writevAll } from './fsutil.js';
import { removeTempDirs, tempDirSync } from './testing/helpers.js';

afterAll(removeTempDirs);

describe('writevAll', () => {
  it('writes every piece in order, thousands of them, at the file position and at a given position', async () => {
    const dir = tempDirSync('tandem-fsutil-');
    const file = join(dir, 'f');
    // 3,000 pieces of odd sizes, in two calls, then 100 bytes over the start.
    const pieces = Array.from({ length: 3000 }, (_, i) => randomBytes(1 + ((i * 7) % 300)));
    const fh = await open(file, 'w+');
    try {
      await writevAll(fh, pieces.slice(0, 1500));
      await writevAll(fh, pieces.slice(1500));
      const head = randomBytes(100);
      await writevAll(fh, [head.subarray(0, 40), head.subarray(40)], 0);
      const want = Buffer.concat(pieces);
      head.copy(want, 0);
      await fh.sync();
      expect(readFileSync(file).equals(want)).toBe(true);
    } finally {
      await fh.close();
    }
  });
});
