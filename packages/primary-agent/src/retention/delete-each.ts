/** Deletions that may fail in one run before it gives up (the rest is collected next time). */
export const MAX_DELETE_FAILURES = 10;

/**
 * Deletes `items` one at a time, as retention's collectors do (objects, WAL files): a failure is
 * reported and the next item tried, until MAX_DELETE_FAILURES have failed (the filestore is in
 * trouble: the rest waits for the next run); an abort stops it between items. Returns how many
 * failed.
 */
export async function deleteEach<T>(
  items: readonly T[],
  del: (item: T) => Promise<void>,
  o: { signal?: AbortSignal; deleted(item: T): void; failed(item: T, err: unknown): void },
): Promise<number> {
  let failed = 0;
  for (const item of items) {
    if (o.signal?.aborted) break;
    try {
      await del(item);
      o.deleted(item);
    } catch (err) {
      if (o.signal?.aborted) break;
      failed++;
      o.failed(item, err);
      if (failed >= MAX_DELETE_FAILURES) break;
    }
  }
  return failed;
}
