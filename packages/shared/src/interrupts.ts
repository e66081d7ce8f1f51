import { constants } from 'node:os';
import { TandemError } from './errors.js';
import type { Logger } from './logger.js';

/**
 * SIGINT/SIGTERM while a command runs: the run's AbortSignal is aborted, and the run decides what
 * that means (an apply rolls back its staging but finishes a switch already begun; a backup
 * deletes what it uploaded; a daemon shuts down). The handlers exist only while the run does, so
 * outside it a signal has its default effect.
 *
 * An interrupted command is not a failure of tandem: it ends with one line saying what was cleaned
 * up ("interrupted by SIGINT: ...") and the exit status of a process killed by that signal, as
 * shells and restic report it: 128 + the signal's number (SIGINT 130, SIGTERM 143).
 */

/** 128 + the signal's number: SIGINT 130, SIGTERM 143. */
export const signalExitCode = (signal: NodeJS.Signals): number => 128 + (constants.signals[signal] ?? 0);

/**
 * The reason the run's signal is aborted with (which signal arrived), and the error an interrupted
 * run ends with, then saying what it cleaned up.
 */
export class Interrupted extends TandemError {
  readonly signal: NodeJS.Signals;
  /** What the run left behind or removed, in words; null until the run says. */
  readonly cleanedUp: string | null;

  constructor(signal: NodeJS.Signals, cleanedUp: string | null = null, opts: { cause?: unknown } = {}) {
    super('transient', 'INTERRUPTED', cleanedUp === null ? `interrupted by ${signal}` : `interrupted by ${signal}: ${cleanedUp}`, {
      cause: opts.cause,
      exitCode: signalExitCode(signal),
    });
    this.signal = signal;
    this.cleanedUp = cleanedUp;
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
  /**
   * What the run has cleaned up when a signal stopped it and it threw anything but an Interrupted
   * that says so itself: the command's last line. Default: "the <what> was stopped".
   */
  cleanedUp?: string;
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
  } catch (err) {
    const sig = interruptedBy(ac.signal);
    if (sig === null) throw err;
    if (err instanceof Interrupted && err.cleanedUp !== null) throw err;
    throw new Interrupted(sig, opts.cleanedUp ?? `the ${what} was stopped`, { cause: err });
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/**
 * A daemon reloads its TLS files on SIGHUP once it serves, but until then Node's default for SIGHUP
 * would end it, and the unit's `systemctl reload` during a start-up would leave the site without
 * its agent (systemd counts a death by SIGHUP as a clean exit, so it would not restart it). From
 * the start of `run`, a hangup is only logged: the files are read as the daemon starts anyway.
 * Returns the function that removes the handler (when the run ends).
 */
export function holdHangupsUntilServing(logger: Logger): () => void {
  const onHangup = (): void => {
    // Once the daemon serves, its own handler reloads and logs; this one stays quiet.
    if (process.listenerCount('SIGHUP') > 1) return;
    logger.info({ signal: 'SIGHUP' }, 'SIGHUP before the daemon serves: nothing to reload yet (the TLS files are read as it starts)');
  };
  process.on('SIGHUP', onHangup);
  return () => process.off('SIGHUP', onHangup);
}
