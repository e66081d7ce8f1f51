import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readJournal } from './journal.js';

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

/** A state dir holding a journal of `version` and `phase`. */
function stateWith(version: unknown, phase = 'switching'): string {
  dir = mkdtempSync(join(tmpdir(), 'tandem-journal-'));
  writeFileSync(join(dir, 'journal.json'), JSON.stringify({ format: 'tandem-apply-journal', version, phase, site: 's', setId: 'x', switched: [], durations: {} }));
  return dir;
}

describe('the apply journal', () => {
  it('version 1 (renames only) and version 2 (the files plan patches files in place) are read', async () => {
    expect((await readJournal(stateWith(1)))?.version).toBe(1);
    expect((await readJournal(stateWith(2)))?.version).toBe(2);
  });

  it('a version this agent does not know is refused, naming the file, not rolled forward', async () => {
    const d = stateWith(3);
    await expect(readJournal(d)).rejects.toThrow(`apply journal ${join(d, 'journal.json')}: not a journal this version of tandem understands`);
    await expect(readJournal(stateWith(2, 'finishing'))).rejects.toThrow('not a journal this version of tandem understands');
  });
});
