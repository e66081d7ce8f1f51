import { TandemError } from './errors.js';
import type { Logger } from './logger.js';

/**
 * SIGINT/SIGTERM while a command runs: the run's AbortSignal is aborted, and the run decides what
 * that means (an apply rolls back its staging but finishes a switch already begun; a backup
 * deletes what it uploaded; a daemon shuts down). The handlers exist only while the run does, so
 * outside it a signal has its default effect.
 */

/** The reason the run's signal is aborted with: which signal arrived. */
export class Interrupted extends TandemError {
  readonly signal: NodeJS.Signals;

  constructor(signal: NodeJS.Signals) {
    super('transient', 'INTERRUPTED', `interrupted by ${signal}`);
    this.signal = signal;
  }
}

/** The signal that interrupted a run, or null while none did. */
export const interruptedBy = (signal: AbortSignal): NodeJS.Signals | null => (signal.reason instanceof Interrupted ? signal.reason.signal : null);

export interface InterruptOptions {
  /**
   * Logged as a warning, with the signal, when one arrives; null logs nothing (the run logs what it
   * does). Default: `interrupted: stopping the <what> (a switch already under way is finished
   * first)`, the apply's wording.
   */
  message?: string | null;
  /**
   * A later signal. 'repeat' (default): handled like the first (logged again; the run is already
   * aborted). 'default': each handler runs once, so a second Ctrl-C has its default effect and
   * ends the process at once. `{ log }`: logged as a warning with this message, nothing else.
   */
  again?: 'repeat' | 'default' | { log: string };
}

export async function withInterrupts<T>(logger: Logger, what: string, fn: (signal: AbortSignal) => Promise<T>, opts: InterruptOptions = {}): Promise<T> {
  const message = opts.message === undefined ? `interrupted: stopping the ${what} (a switch already under way is finished first)` : opts.message;
  const again = opts.again ?? 'repeat';
  const ac = new AbortController();
  const stop = (sig: NodeJS.Signals) => {
    if (ac.signal.aborted && typeof again === 'object') {
      logger.warn({ signal: sig }, again.log);
      return;
    }
    if (message !== null) logger.warn({ signal: sig }, message);
    ac.abort(new Interrupted(sig));
  };
  const on = again === 'default' ? process.once.bind(process) : process.on.bind(process);
  on('SIGINT', stop);
  on('SIGTERM', stop);
  try {
    return await fn(ac.signal);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}
