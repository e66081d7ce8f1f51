/**
 * One error type for everything tandem reports to an operator. Commands throw; only the CLI entry
 * point turns an error into a message and an exit code.
 *
 * `code` is stable and machine readable (used in logs, metrics and tests); `message` says what went
 * wrong and names the file, key or value at fault; `hint` says what to do about it.
 */
export type ErrorKind =
  | 'config' // the operator's input is wrong: config, flags, key files
  | 'not-found' // an object, set or file that should exist does not
  | 'transient' // worth retrying: timeouts, 5xx, throttling, connection resets
  | 'permanent' // retrying will not help: access denied, bad request, disk full
  | 'integrity' // bytes do not match what was signed: tampering or corruption
  | 'precondition' // a conditional write lost: someone else wrote first
  | 'fenced' // a higher epoch exists: this primary must stop
  | 'busy' // another run holds the lock, or the port: a temporary failure, try again later
  | 'external' // a child process (pg_dump, pg_restore, zstd, restart command) failed
  | 'internal';

export class TandemError extends Error {
  readonly kind: ErrorKind;
  readonly code: string;
  readonly hint?: string;
  readonly exitCode: number;

  constructor(
    kind: ErrorKind,
    code: string,
    message: string,
    opts: { hint?: string; cause?: unknown; exitCode?: number } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'TandemError';
    this.kind = kind;
    this.code = code;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode ?? defaultExitCode(kind);
  }
}

function defaultExitCode(kind: ErrorKind): number {
  switch (kind) {
    case 'config':
      return 2;
    case 'busy':
      return 75; // EX_TEMPFAIL
    case 'fenced':
      return 4;
    case 'integrity':
      return 5;
    default:
      return 1;
  }
}

export const isTandemError = (err: unknown, kind?: ErrorKind): err is TandemError =>
  err instanceof TandemError && (kind === undefined || err.kind === kind);

export const isNotFound = (err: unknown): boolean => isTandemError(err, 'not-found');
export const isTransient = (err: unknown): boolean => isTandemError(err, 'transient');
export const isPrecondition = (err: unknown): boolean => isTandemError(err, 'precondition');

/** Short, single-line description of any thrown value, for logs and messages. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** A stream is destroyed with an Error: a thrown value that is none (a bug) becomes one, with its text. */
export const asError = (err: unknown): Error => (err instanceof Error ? err : new TandemError('internal', 'INTERNAL', String(err), { cause: err }));
