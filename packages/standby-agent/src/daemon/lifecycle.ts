import { TandemError, type Logger } from '@tandem/shared';

/**
 * The daemon's life: it stops within a grace period, and is stopped by SIGTERM/SIGINT (a second one
 * hurries it) or by itself (promote ran here: apply/promoted.ts).
 */

/** The reason given to what a stop aborts (filestore requests, an apply's staging). */
export const shutdownError = (message: string): TandemError => new TandemError('transient', 'SHUTDOWN', message);

/** How long a stop waits for an apply it aborted before leaving it to the journal. */
export const ABORT_WAIT_MS = 15_000;

/**
 * The stop's wait for the loop (`loopDone`): an apply in progress may finish within `graceMs`; after
 * that it is aborted (staging rolls back; a switch already under way finishes), and waited for
 * ABORT_WAIT_MS more. 'left-running' when even that did not end it.
 */
export async function waitForLoop(
  loopDone: Promise<void>,
  o: { graceMs: number; why: string; log: Logger; applyingSetId(): string | null | undefined; abortApply(reason: TandemError): void },
): Promise<'clean' | 'left-running'> {
  if (await settlesWithin(loopDone, o.graceMs)) return 'clean';
  o.log.warn({ graceMs: o.graceMs, setId: o.applyingSetId() }, 'the apply in progress did not finish within the stop grace period: aborting it');
  o.abortApply(shutdownError(`stopped (${o.why})`));
  if (await settlesWithin(loopDone, ABORT_WAIT_MS)) return 'clean';
  o.log.error({ setId: o.applyingSetId() }, 'the apply did not stop; leaving it to the journal: the next start finishes or rolls it back');
  return 'left-running';
}

export async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** What `runUntilStopped` needs of a daemon. */
export interface StoppableDaemon {
  start(): Promise<string>;
  stop(why: string): Promise<'clean' | 'left-running'>;
  /** Second signal: abort the apply in progress now. */
  hurry(): void;
  /** Settles with the error that stopped the daemon by itself (promoted). */
  readonly failed: Promise<TandemError>;
}

/**
 * Starts the daemon and runs it until SIGTERM/SIGINT (a clean stop) or until it stops by itself
 * (promoted: that error is thrown). A second signal aborts the apply in progress at once.
 */
export async function runUntilStopped(daemon: StoppableDaemon, logger: Logger): Promise<'clean' | 'left-running'> {
  // Signals are caught from here on, so that one arriving during the start-up is a clean stop too.
  let signals = 0;
  let onFirst: ((sig: NodeJS.Signals) => void) | null = null;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals === 1) onFirst?.(sig);
    else {
      logger.warn({ signal: sig }, 'second signal: aborting the apply in progress now');
      daemon.hurry();
    }
  };
  const first = new Promise<{ signal?: NodeJS.Signals; fatal?: TandemError }>((resolve) => {
    onFirst = (signal) => resolve({ signal });
    void daemon.failed.then((fatal) => resolve({ fatal }));
  });
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await daemon.start();
    const ended = await first;
    const outcome = await daemon.stop(ended.signal ? `received ${ended.signal}` : 'promoted');
    if (ended.fatal) throw ended.fatal;
    return outcome;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
