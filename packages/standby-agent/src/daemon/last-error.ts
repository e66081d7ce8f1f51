import { describeError, isTandemError, type Logger } from '@tandem/shared';
import type { FailureKind } from './metrics.js';
import type { ErrorInfo } from './status-doc.js';

/** Errors of the filestore itself (any backend), also when wrapped by the apply engine: the primary's rule too. */
export { isFilestoreError } from '@tandem/shared';

/** What can fail in the daemon: the failure kinds the metrics count, a latest.json going back, a bug. */
export type ErrorWhat = FailureKind | 'latest' | 'internal';

/**
 * The daemon's last error, as /status shows it (`lastError`): the newest failure of any part, until
 * the part that failed succeeds again and clears it. Every failure is logged here too, once.
 */
export class LastError {
  #current: ErrorInfo | null = null;

  constructor(private readonly log: Logger) {}

  get current(): ErrorInfo | null {
    return this.#current;
  }

  note(what: ErrorWhat, err: unknown, level: 'error' | 'warn' | 'debug' = 'warn', extra: object = {}): void {
    const te = isTandemError(err) ? err : null;
    this.#current = {
      at: new Date().toISOString(),
      what,
      kind: te?.kind ?? 'internal',
      code: te?.code ?? 'UNEXPECTED',
      message: describeError(err),
    };
    this.log[level]({ what, code: this.#current.code, err, ...extra }, `${what} failed`);
  }

  /** The part that failed works again: its error is no longer the news. */
  clear(...whats: ErrorWhat[]): void {
    if (this.#current !== null && (whats as string[]).includes(this.#current.what)) this.#current = null;
  }
}
