import { describe, expect, it } from 'vitest';
import { MAX_DELETE_FAILURES, deleteEach } from './delete-each.js';

describe('deleteEach', () => {
  it('deletes each, reports a failure and goes on, and gives up after MAX_DELETE_FAILURES failures', async () => {
    const items = Array.from({ length: 30 }, (_, i) => i);
    const tried: number[] = [];
    const deleted: number[] = [];
    const failedItems: number[] = [];
    // Every odd item fails: the 10th failure is item 19, after which nothing more is tried.
    const failed = await deleteEach(
      items,
      async (i) => {
        tried.push(i);
        if (i % 2 === 1) throw new Error(`cannot delete ${i}`);
      },
      { deleted: (i) => deleted.push(i), failed: (i) => failedItems.push(i) },
    );
    expect(failed).toBe(MAX_DELETE_FAILURES);
    expect(tried.at(-1)).toBe(19);
    expect(deleted).toEqual([0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
    expect(failedItems).toHaveLength(MAX_DELETE_FAILURES);
  });

  it('stops between items once aborted', async () => {
    const ac = new AbortController();
    const deleted: number[] = [];
    const failed = await deleteEach(
      [1, 2, 3, 4],
      async (i) => {
        if (i === 2) ac.abort();
      },
      { signal: ac.signal, deleted: (i) => deleted.push(i), failed: () => undefined },
    );
    expect(deleted).toEqual([1, 2]);
    expect(failed).toBe(0);
  });
});
