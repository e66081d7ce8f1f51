import type { Logger } from '@tandem/shared';

/**
 * SIGINT/SIGTERM during a run: abort what can be aborted cleanly (staging rolls back); once the
 * switch has begun the run finishes regardless, which beats leaving the journal to the next run.
 */
export async function withInterrupts<T>(logger: Logger, what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const stop = (sig: NodeJS.Signals) => {
    logger.warn({ signal: sig }, `interrupted: stopping the ${what} (a switch already under way is finished first)`);
    ac.abort(new Error(`interrupted by ${sig}`));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  try {
    return await fn(ac.signal);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}
