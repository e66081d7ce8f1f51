import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { PassThrough, Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  type GetObjectCommandOutput,
  HeadObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { TandemError } from '../errors.js';
import { capOf, docTooLarge, readCapped } from './small-doc.js';
import { redactUrl } from './url.js';

export { redactUrl };
import {
  RESERVED_MARK,
  abortError,
  abortableBody,
  byteOrder,
  checkKey,
  checkPrefix,
  lengthCheck,
  preconditionError,
  throwIfAborted,
} from './dir-filestore.js';
import type {
  ConditionalGetResult,
  Filestore,
  GetBufferOptions,
  ObjectInfo,
  OpOptions,
  PutOptions,
  WriteCondition,
} from './filestore.js';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3FilestoreOptions {
  bucket: string;
  /** '' or a '/'-terminated key prefix inside the bucket. */
  prefix?: string;
  /** Default: the AWS SDK's region chain (AWS_REGION, profile). */
  region?: string;
  /** For S3-compatible servers (MinIO, Ceph, R2, s3rver). */
  endpoint?: string;
  forcePathStyle?: boolean;
  /**
   * 'when-required' turns off the SDK's default request checksums, which servers such as s3rver
   * do not understand: they store the aws-chunked framing of a streamed upload as the object.
   */
  checksums?: 'when-supported' | 'when-required';
  /**
   * 'native' sends If-None-Match / If-Match on PUT (AWS S3 since 2024, recent MinIO).
   * 'emulated' is for servers that ignore those headers (s3rver 3.7.1 does, silently): a lock
   * object plus HEAD-compare-then-PUT. It is NOT race-free; see `emulatedWrite`.
   */
  conditionalWrites?: 'native' | 'emulated';
  /** Default: the AWS SDK's provider chain (environment, profile, instance role). */
  credentials?: S3Credentials;
  /** Attempts per request, including the first; the SDK retries transient failures with backoff. */
  maxAttempts?: number;
  connectTimeoutMs?: number;
  /** A socket idle this long fails the request, so a stalled transfer does not hang forever. */
  idleTimeoutMs?: number;
  partSize?: number;
  queueSize?: number;
  /** Emulated conditional writes: how long a lock object is honoured, and how long to wait for one. */
  lockTtlMs?: number;
  lockWaitMs?: number;
  /** Overrides the generated description (must not contain credentials). */
  description?: string;
}

const MiB = 1024 * 1024;
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

const statusOf = (err: unknown): number | undefined => (err as SdkError | undefined)?.$metadata?.httpStatusCode;

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

export class S3Filestore implements Filestore {
  readonly description: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly opts: S3FilestoreOptions;

  constructor(opts: S3FilestoreOptions) {
    this.opts = opts;
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? '';
    if (this.prefix !== '' && !this.prefix.endsWith('/')) this.prefix += '/';
    this.description = opts.description ?? `s3://${this.bucket}/${this.prefix}${opts.endpoint ? ` at ${redactUrl(opts.endpoint)}` : ''}`;
    const whenRequired = opts.checksums === 'when-required';
    this.client = new S3Client({
      region: opts.region,
      endpoint: opts.endpoint,
      forcePathStyle: opts.forcePathStyle,
      credentials: opts.credentials,
      maxAttempts: opts.maxAttempts ?? 4,
      retryMode: 'standard',
      requestHandler: { connectionTimeout: opts.connectTimeoutMs ?? 10_000, socketTimeout: opts.idleTimeoutMs ?? 60_000 },
      ...(whenRequired ? { requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' } : {}),
    });
  }

  private where(key: string): string {
    return `s3://${this.bucket}/${this.prefix}${key}`;
  }

  async put(key: string, body: Readable, opts: PutOptions = {}): Promise<ObjectInfo> {
    const { signal } = opts;
    try {
      checkKey(key);
      throwIfAborted(signal);
    } catch (err) {
      body.destroy();
      throw err;
    }
    const counted = lengthCheck(opts.contentLength, `put ${this.where(key)}`);
    counted.on('error', () => {}); // surfaces through upload.done(); must not crash the process
    let sourceError: unknown;
    body.on('error', (err) => {
      sourceError ??= err;
      counted.destroy(err);
    });
    body.pipe(counted);
    // Aborting fails the body, which makes Upload abort the multipart upload before it returns.
    // Upload's own abort() would return at once and could leave a committed object behind.
    const onAbort = () => counted.destroy(abortError(signal!) as Error);
    signal?.addEventListener('abort', onAbort, { once: true });
    // Memory stays bounded: Upload holds at most queueSize parts plus the one being filled.
    // A body that ends within the first part goes up as a single PutObject.
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: this.prefix + key, Body: counted, ContentType: opts.contentType },
      partSize: this.opts.partSize ?? 8 * MiB,
      queueSize: this.opts.queueSize ?? 3,
      leavePartsOnError: false,
    });
    try {
      const res = await upload.done();
      return { key, size: counted.bytes, version: res.ETag ?? '', modified: new Date() };
    } catch (err) {
      body.unpipe(counted);
      body.destroy();
      counted.destroy();
      if (signal?.aborted) throw abortError(signal);
      throw sourceError ?? s3Error(err, 'upload', this.where(key));
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  async putBuffer(key: string, body: Buffer, opts: PutOptions = {}): Promise<ObjectInfo> {
    checkKey(key);
    return this.putObject(key, body, opts, {});
  }

  /**
   * A single PutObject. The signal is checked before sending but not passed to the request: an
   * abort racing the server's commit could otherwise report failure for a visible object.
   */
  private async putObject(key: string, body: Buffer, opts: PutOptions, cond: { IfNoneMatch?: string; IfMatch?: string }): Promise<ObjectInfo> {
    throwIfAborted(opts.signal);
    try {
      const res = await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.prefix + key,
          Body: body,
          ContentLength: body.length,
          ContentType: opts.contentType,
          ...cond,
        }),
      );
      return { key, size: body.length, version: res.ETag ?? '', modified: new Date() };
    } catch (err) {
      throw s3Error(err, 'write', this.where(key));
    }
  }

  async get(key: string, opts: OpOptions = {}): Promise<{ body: Readable; info: ObjectInfo }> {
    checkKey(key);
    throwIfAborted(opts.signal);
    let res: GetObjectCommandOutput;
    try {
      res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }), { abortSignal: opts.signal });
    } catch (err) {
      throw s3Error(err, 'read', this.where(key));
    }
    return { body: this.checkedBody(key, res, opts.signal), info: infoOf(key, res) };
  }

  /**
   * The response body, complete or failed. Once the SDK has handed the body over its retries are
   * spent, so a transfer cut short (a reset, an idle timeout, a connection closed early) is resumed
   * here where it stopped: a ranged GET of the same version (If-Match on the ETag; the answer's ETag
   * and Content-Range are checked too, for servers that ignore If-Match), up to maxAttempts - 1
   * times with backoff. Past that, the body fails with a transient FILESTORE_SHORT_READ.
   */
  private checkedBody(key: string, first: GetObjectCommandOutput, signal?: AbortSignal): Readable {
    const where = this.where(key);
    const expected = first.ContentLength;
    const etag = first.ETag;
    const resumesAllowed = (this.opts.maxAttempts ?? 4) - 1;
    const out = new PassThrough({ highWaterMark: 1 << 20 });
    let received = 0;
    let resumes = 0;
    const shortRead = (why: string, cause?: unknown) =>
      new TandemError('transient', 'FILESTORE_SHORT_READ', `read ${where}: transfer failed after ${received} of ${expected ?? '?'} bytes: ${why}`, { cause });
    const bodyOf = (res: GetObjectCommandOutput): Readable => {
      if (!(res.Body instanceof Readable)) {
        throw new TandemError('internal', 'FILESTORE_S3_BODY', `read ${where}: the SDK returned no Node.js stream`);
      }
      return res.Body;
    };
    const resume = async (): Promise<Readable> => {
      await sleep(Math.random() * 50 * 2 ** (resumes - 1), undefined, { signal });
      let res: GetObjectCommandOutput;
      try {
        res = await this.client.send(
          new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key, Range: `bytes=${received}-`, IfMatch: etag }),
          { abortSignal: signal },
        );
      } catch (err) {
        if (statusOf(err) === 412) throw new TandemError('transient', 'FILESTORE_CHANGED', `read ${where}: the object was replaced while being read`, { cause: err });
        throw s3Error(err, 'read', where);
      }
      const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.ContentRange ?? '');
      if (res.ETag !== etag || !range || Number(range[1]) !== received || Number(range[3]) !== expected) {
        bodyOf(res).destroy();
        throw new TandemError('transient', 'FILESTORE_CHANGED', `read ${where}: the object was replaced while being read (resumed at byte ${received})`);
      }
      return bodyOf(res);
    };
    let src = bodyOf(first);
    out.on('close', () => src.destroy()); // the reader stopped (or was aborted): so does the transfer
    const pump = async (): Promise<void> => {
      for (;;) {
        try {
          for await (const chunk of src) {
            if (out.destroyed) return;
            received += (chunk as Buffer).length;
            if (!out.write(chunk)) await drainedOrClosed(out);
          }
          if (expected === undefined || received === expected) return void out.end();
          if (received > expected) throw shortRead('more bytes than the declared length');
          throw shortRead('connection ended early');
        } catch (err) {
          src.destroy();
          if (out.destroyed) return;
          if (signal?.aborted) throw abortError(signal);
          if (err instanceof TandemError && err.code !== 'FILESTORE_SHORT_READ') throw err;
          if (expected === undefined || etag === undefined || received >= expected || resumes >= resumesAllowed) {
            throw err instanceof TandemError ? err : shortRead((err as Error).message, err);
          }
          resumes++;
          src = await resume();
          if (out.destroyed) src.destroy();
        }
      }
    };
    pump().catch((err: unknown) => out.destroy(err instanceof TandemError ? err : shortRead((err as Error).message, err)));
    return abortableBody(out, signal);
  }

  async getBuffer(key: string, opts: GetBufferOptions = {}): Promise<{ body: Buffer; info: ObjectInfo }> {
    const { body, info } = await this.get(key, opts);
    return { body: await this.collectSmall(key, body, info.size, capOf(opts)), info };
  }

  /** A small document's body: refused by its declared length before reading, and while reading past the cap. */
  private async collectSmall(key: string, body: Readable, declared: number | undefined, max: number): Promise<Buffer> {
    if (declared !== undefined && declared > max) {
      body.destroy();
      throw docTooLarge(this.where(key), declared, max);
    }
    return readCapped(body, max, this.where(key));
  }

  async getIfChanged(key: string, knownVersion: string | undefined, opts: GetBufferOptions = {}): Promise<ConditionalGetResult> {
    if (knownVersion === undefined) return { changed: true, ...(await this.getBuffer(key, opts)) };
    checkKey(key);
    throwIfAborted(opts.signal);
    let res: GetObjectCommandOutput;
    try {
      res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key, IfNoneMatch: knownVersion }), {
        abortSignal: opts.signal,
      });
    } catch (err) {
      if (statusOf(err) === 304) return { changed: false };
      throw s3Error(err, 'read', this.where(key));
    }
    const info = infoOf(key, res);
    return { changed: true, body: await this.collectSmall(key, this.checkedBody(key, res, opts.signal), res.ContentLength, capOf(opts)), info };
  }

  async stat(key: string, opts: OpOptions = {}): Promise<ObjectInfo | null> {
    checkKey(key);
    throwIfAborted(opts.signal);
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }), { abortSignal: opts.signal });
      return infoOf(key, res);
    } catch (err) {
      const e = s3Error(err, 'stat', this.where(key));
      if (e instanceof TandemError && e.kind === 'not-found') return null;
      throw e;
    }
  }

  async list(prefix: string, opts: OpOptions = {}): Promise<ObjectInfo[]> {
    checkPrefix(prefix);
    const out: ObjectInfo[] = [];
    let token: string | undefined;
    do {
      throwIfAborted(opts.signal);
      let page: ListObjectsV2CommandOutput;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ContinuationToken: token }),
          { abortSignal: opts.signal },
        );
      } catch (err) {
        throw s3Error(err, 'list', this.where(prefix));
      }
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.prefix)) continue;
        const key = o.Key.slice(this.prefix.length);
        if (key.slice(key.lastIndexOf('/') + 1).includes(RESERVED_MARK)) continue;
        out.push({ key, size: o.Size ?? 0, version: o.ETag ?? '', modified: o.LastModified ?? new Date(0) });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out.sort((a, b) => byteOrder(a.key, b.key));
  }

  async delete(key: string, opts: OpOptions = {}): Promise<void> {
    checkKey(key);
    await this.deleteRaw(this.prefix + key, opts.signal);
  }

  private async deleteRaw(fullKey: string, signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: fullKey }), { abortSignal: signal });
    } catch (err) {
      const e = s3Error(err, 'delete', `s3://${this.bucket}/${fullKey}`);
      if (!(e instanceof TandemError && e.kind === 'not-found')) throw e;
    }
  }

  async writeConditional(key: string, body: Buffer, cond: WriteCondition, opts: OpOptions = {}): Promise<ObjectInfo> {
    checkKey(key);
    if (this.opts.conditionalWrites === 'emulated') return this.emulatedWrite(key, body, cond, opts);
    const ifMatch = 'ifAbsent' in cond ? undefined : cond.ifVersion;
    try {
      return await this.putObject(key, body, opts, ifMatch === undefined ? { IfNoneMatch: '*' } : { IfMatch: ifMatch });
    } catch (err) {
      // S3 answers If-Match on a missing object with 404: the condition did not hold either.
      if (err instanceof TandemError && err.kind === 'not-found') throw preconditionError(key, 'it does not exist');
      const bare = ifMatch?.replace(/^"(.*)"$/, '$1');
      if (bare === undefined || bare === ifMatch || !(err instanceof TandemError && err.kind === 'precondition')) throw err;
      // Ceph's gateway (and services built on it) compares If-Match on PUT with the bare ETag and
      // refuses the quoted one that HEAD and GET return, so every promote would "lose". A refused
      // conditional write changed nothing, so asking again with the bare form is safe: the server
      // still checks the version atomically, and a stale one is refused again.
      try {
        return await this.putObject(key, body, opts, { IfMatch: bare });
      } catch (again) {
        // An unknown outcome stays unknown; any other answer to the bare form leaves the first one standing.
        if (again instanceof TandemError && again.kind === 'transient') throw again;
        throw err;
      }
    }
  }

  /**
   * For servers that ignore conditional PUT headers. A lock object `<key>.tmp-lock` is written,
   * read back after a pause to see whether a rival overwrote it, and held while the current
   * version is compared and the object written. Without an atomic primitive on the server this
   * is NOT race-free: two writers whose lock writes and read-backs interleave can both proceed.
   * Good enough for tests and a single writer; use native conditional writes for fencing.
   */
  private async emulatedWrite(key: string, body: Buffer, cond: WriteCondition, opts: OpOptions): Promise<ObjectInfo> {
    const { signal } = opts;
    const lockKey = `${this.prefix}${key}${RESERVED_MARK}lock`;
    const token = randomUUID();
    const ttl = this.opts.lockTtlMs ?? 30_000;
    const deadline = Date.now() + (this.opts.lockWaitMs ?? ttl + 5_000);
    for (;;) {
      throwIfAborted(signal);
      const held = await this.readLock(lockKey, signal);
      if (held === null || held.expires < Date.now()) {
        await this.writeLock(lockKey, { token, expires: Date.now() + ttl });
        await sleep(50, undefined, { signal }).catch(() => {});
        if ((await this.readLock(lockKey, signal))?.token === token) break;
      }
      if (Date.now() > deadline) {
        throw new TandemError('transient', 'FILESTORE_LOCKED', `timed out waiting for lock s3://${this.bucket}/${lockKey}`);
      }
      await sleep(50 + Math.random() * 100, undefined, { signal }).catch(() => {});
    }
    try {
      const cur = await this.stat(key, { signal });
      if ('ifAbsent' in cond ? cur !== null : cur?.version !== cond.ifVersion) {
        throw preconditionError(key, cur === null ? 'it does not exist' : 'ifAbsent' in cond ? 'it already exists' : 'its version changed');
      }
      return await this.putObject(key, body, opts, {});
    } finally {
      if ((await this.readLock(lockKey).catch(() => null))?.token === token) await this.deleteRaw(lockKey).catch(() => {});
    }
  }

  private async readLock(fullKey: string, signal?: AbortSignal): Promise<{ token: string; expires: number } | null> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: fullKey }), { abortSignal: signal });
      const raw = await readCapped(res.Body as Readable, LOCK_MAX_BYTES, `s3://${this.bucket}/${fullKey}`);
      const parsed = JSON.parse(raw.toString('utf8')) as { token?: unknown; expires?: unknown };
      return { token: String(parsed.token), expires: Number(parsed.expires) };
    } catch (err) {
      const e = s3Error(err, 'read lock', `s3://${this.bucket}/${fullKey}`);
      if (e instanceof TandemError && e.kind === 'not-found') return null;
      // Torn or foreign: treat as stale.
      if (err instanceof SyntaxError || (e instanceof TandemError && e.code === 'FILESTORE_DOC_TOO_LARGE')) return { token: '', expires: 0 };
      throw e;
    }
  }

  private async writeLock(fullKey: string, lock: { token: string; expires: number }): Promise<void> {
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: fullKey, Body: JSON.stringify(lock) }));
    } catch (err) {
      throw s3Error(err, 'write lock', `s3://${this.bucket}/${fullKey}`);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

/** Waits until `s` wants more, or is gone; leaves no listener behind either way. */
async function drainedOrClosed(s: PassThrough): Promise<void> {
  const ac = new AbortController();
  try {
    await Promise.race([once(s, 'drain', { signal: ac.signal }), once(s, 'close', { signal: ac.signal })]);
  } catch {
    // destroyed with an error: the caller sees `destroyed`
  } finally {
    ac.abort();
  }
}

/** A lock object is a token and a time: a few dozen bytes. */
const LOCK_MAX_BYTES = 4096;

function infoOf(key: string, res: { ContentLength?: number; ETag?: string; LastModified?: Date }): ObjectInfo {
  return { key, size: res.ContentLength ?? 0, version: res.ETag ?? '', modified: res.LastModified ?? new Date(0) };
}

