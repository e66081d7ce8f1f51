import { TandemError } from '../errors.js';

/**
 * The S3 store's error classification: SDK and network errors to the kinds every filestore uses
 * ('not-found', 'transient', 'permanent', 'precondition'), the same way the directory store
 * classifies errno.
 */

const TRANSIENT_NAMES = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'RequestThrottled',
  'RequestTimeout',
  'TimeoutError',
  'InternalError',
  'ServiceUnavailable',
  'RequestTimeTooSkewed',
  'OperationAborted',
]);
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'ENETDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  errors?: { code?: string }[];
  $metadata?: { httpStatusCode?: number; attempts?: number };
  $retryable?: unknown;
}

/** The HTTP status of an SDK error, if the server answered at all. */
export const statusOf = (err: unknown): number | undefined => (err as SdkError | undefined)?.$metadata?.httpStatusCode;

/** Classifies an SDK or network error the same way the directory store classifies errno. */
export function s3Error(err: unknown, action: string, where: string): unknown {
  if (err instanceof TandemError || (err instanceof Error && err.name === 'AbortError')) return err;
  const e = (err ?? {}) as SdkError;
  const status = statusOf(err);
  const name = e.name ?? '';
  const code = e.code ?? e.errors?.[0]?.code ?? '';
  // The SDK names a connection reset "TimeoutError" too; say what it was.
  const shown = name === 'TimeoutError' && code !== '' && code !== 'ETIMEDOUT' ? code : name || code || 'Error';
  const detail = `${shown}${status ? ` (HTTP ${status})` : ''}: ${e.message ?? String(err)}`;
  const attempts = e.$metadata?.attempts;
  const gaveUp = attempts !== undefined && attempts > 1 ? ` (gave up after ${attempts} attempts)` : '';
  const make = (kind: 'not-found' | 'transient' | 'permanent' | 'precondition', c: string, msg: string, hint?: string) =>
    new TandemError(kind, c, msg, { cause: err, hint });

  if (name === 'NoSuchBucket') {
    return make('permanent', 'FILESTORE_NO_BUCKET', `cannot ${action} ${where}: the bucket does not exist`, 'create the bucket or fix the filestore URL');
  }
  if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) {
    return make('not-found', 'FILESTORE_NOT_FOUND', `${where} does not exist`);
  }
  if (name === 'PreconditionFailed' || name === 'ConditionalRequestConflict' || status === 412) {
    return make('precondition', 'FILESTORE_PRECONDITION', `conditional ${action} of ${where} lost: ${detail}`);
  }
  if ((status !== undefined && (status >= 500 || status === 429)) || TRANSIENT_NAMES.has(name) || TRANSIENT_CODES.has(code) || e.$retryable) {
    return make('transient', 'FILESTORE_S3_TRANSIENT', `cannot ${action} ${where}: ${detail}${gaveUp}`);
  }
  if (status === 403 || name === 'AccessDenied' || name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch' || name === 'ExpiredToken') {
    return make('permanent', 'FILESTORE_ACCESS_DENIED', `cannot ${action} ${where}: access denied: ${detail}`, 'check the credentials and the bucket policy');
  }
  if (name === 'CredentialsProviderError') {
    return make('permanent', 'FILESTORE_NO_CREDENTIALS', `cannot ${action} ${where}: no AWS credentials found`, 'set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE');
  }
  return make('permanent', 'FILESTORE_S3_ERROR', `cannot ${action} ${where}: ${detail}`);
}
