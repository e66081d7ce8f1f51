import type { Readable } from 'node:stream';
import { Transform } from 'node:stream';
import { TandemError, isTandemError } from '../errors.js';

/**
 * What every filestore shares: the key rules, the abort plumbing, list order, the length check of
 * a streamed body, and what a lost conditional write and a filestore error are.
 */

/**
 * Any key segment containing this marks an in-flight temporary or a lock, in every store, so
 * user keys may not contain it and `list` never returns such objects.
 */
export const RESERVED_MARK = '.tmp-';

/** Validates a key and returns its segments; the same rules hold for every store. */
export function checkKey(key: string): string[] {
  const bad = (why: string): never => {
    throw new TandemError('permanent', 'FILESTORE_BAD_KEY', `invalid filestore key ${JSON.stringify(key)}: ${why}`);
  };
  if (typeof key !== 'string' || key === '') bad('empty');
  if (key.startsWith('/')) bad('must be relative (no leading "/")');
  if (key.includes('\\')) bad('backslashes are not allowed');
  if (key.includes('\0')) bad('NUL bytes are not allowed');
  if (Buffer.byteLength(key) > 1024) bad('longer than 1024 bytes');
  const segments = key.split('/');
  for (const s of segments) {
    if (s === '') bad('empty path segment');
    if (s === '.' || s === '..') bad(`"${s}" segments are not allowed`);
    if (s.includes(RESERVED_MARK)) bad(`"${RESERVED_MARK}" is reserved for temporary files`);
  }
  return segments;
}

/** A list prefix: like a key, except that its last segment may be partial or empty. */
export function checkPrefix(prefix: string): void {
  if (prefix === '') return;
  const bad = (why: string): never => {
    throw new TandemError('permanent', 'FILESTORE_BAD_KEY', `invalid filestore prefix ${JSON.stringify(prefix)}: ${why}`);
  };
  if (prefix.startsWith('/')) bad('must be relative (no leading "/")');
  if (prefix.includes('\\') || prefix.includes('\0')) bad('backslashes and NUL bytes are not allowed');
  for (const s of prefix.split('/').slice(0, -1)) {
    if (s === '' || s === '.' || s === '..') bad(`"${s}" segments are not allowed`);
  }
}

export function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/**
 * Ties a returned body to the caller's signal. The abort may come before the caller has piped the
 * body anywhere (it awaits something else first): the error is then kept on the stream, which the
 * caller's pipeline reports when it starts, instead of an 'error' event nobody listens to, which
 * would end the process.
 */
export function abortableBody<T extends Readable>(body: T, signal: AbortSignal | undefined): T {
  if (!signal) return body;
  body.on('error', () => {});
  if (signal.aborted) {
    body.destroy(abortError(signal) as Error);
    throw abortError(signal);
  }
  signal.addEventListener('abort', () => body.destroy(abortError(signal) as Error), { once: true });
  return body;
}

/** S3 lists in UTF-8 byte order; JS string order differs for astral characters. */
export const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** Fails the stream (before it ends) when the byte count differs from a declared length. */
export function lengthCheck(expected: number | undefined, what: string): Transform & { bytes: number } {
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      t.bytes += chunk.length;
      cb(null, chunk);
    },
    flush(cb) {
      if (expected === undefined || t.bytes === expected) return cb();
      cb(new TandemError('permanent', 'FILESTORE_LENGTH_MISMATCH', `${what}: body has ${t.bytes} bytes, declared contentLength is ${expected}`));
    },
  }) as Transform & { bytes: number };
  t.bytes = 0;
  return t;
}

export function preconditionError(key: string, why: string): TandemError {
  return new TandemError('precondition', 'FILESTORE_PRECONDITION', `conditional write of ${key} lost: ${why}`);
}

/** Every error a filestore raises has a code with this prefix, and no error raised elsewhere has. */
export const FILESTORE_CODE_PREFIX = 'FILESTORE_';

/**
 * An error the filestore itself raised, whatever its kind: what `tandem_filestore_errors_total`
 * (primary) and `tandem_standby_filestore_errors_total` (standby) count, and what tells a standby
 * that a failed apply may be retried as soon as the filestore answers again.
 *
 * The kind cannot be the rule: 'transient', 'permanent', 'not-found' and 'precondition' are also
 * what the database, the push channel, archive extraction and retention raise (a pg_dump that
 * failed is no filestore error), and the filestore raises other kinds too (a small document past
 * its size cap is 'integrity', a malformed URL 'config'). Who raised it is what the metric means,
 * and that is what the code says: every error made in this directory has a FILESTORE_ code, and
 * none made elsewhere has (the contract test checks both). Causes are followed, because the apply
 * engine wraps a filestore error in one of its own (SET_NOT_FOUND, ARTIFACT_STREAM). An abort is
 * not one: the caller stopped the operation, the filestore did not fail it.
 */
export function isFilestoreError(err: unknown): boolean {
  for (let e: unknown = err, i = 0; e !== undefined && e !== null && i < 6; e = (e as { cause?: unknown }).cause, i++) {
    if (isTandemError(e) && e.code.startsWith(FILESTORE_CODE_PREFIX)) return true;
  }
  return false;
}
