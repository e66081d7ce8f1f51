import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readWalReplay, readWalReplaySync, recordPrefetchRefused, recordRefused, recordRestored } from './replay-state.js';

describe('wal-replay.json and the daemon\'s refusals', () => {
  let dir = '';
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('keeps restore_command\'s record and the daemon\'s refusals apart, and shows the newer refusal', async () => {
    dir = await mkdtemp(join(tmpdir(), 'tandem-replay-'));
    await recordRestored(dir, { name: '000000010000000000000005', archivedAt: '2026-12-02T10:00:00.000Z', at: '2026-12-02T10:00:01.000Z', epoch: 1 });
    expect((await readWalReplay(dir)).refused).toBeUndefined();
    // The daemon refuses the next file while fetching ahead: the record of 05 stays, the refusal shows.
    await recordPrefetchRefused(dir, { name: '000000010000000000000006', at: '2026-12-02T10:00:02.000Z', code: 'WAL_BODY_MISMATCH', error: 'x' });
    const merged = await readWalReplay(dir);
    expect(merged.last?.name).toBe('000000010000000000000005');
    expect(merged.refused).toMatchObject({ name: '000000010000000000000006', code: 'WAL_BODY_MISMATCH' });
    expect(readWalReplaySync(dir).refused).toMatchObject({ code: 'WAL_BODY_MISMATCH' });
    // restore_command's own, newer refusal wins.
    await recordRefused(dir, { name: '000000010000000000000006', at: '2026-12-02T10:00:03.000Z', code: 'WAL_MISPLACED', error: 'y' });
    expect((await readWalReplay(dir)).refused).toMatchObject({ code: 'WAL_MISPLACED' });
    // An unreadable prefetch file is no refusal.
    await writeFile(join(dir, 'wal-prefetch.json'), 'not json');
    expect((await readWalReplay(dir)).refused).toMatchObject({ code: 'WAL_MISPLACED' });
  });
});
