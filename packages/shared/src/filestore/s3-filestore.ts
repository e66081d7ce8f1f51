import type { Readable } from 'node:stream';
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
import { RESERVED_MARK, abortError, byteOrder, checkKey, checkPrefix, lengthCheck, preconditionError, throwIfAborted } from './common.js';
import type {
  ConditionalGetResult,
  Filestore,
  GetBufferOptions,
  ObjectInfo,
  OpOptions,
  PutOptions,
  WriteCondition,
} from './filestore.js';
import { resumableBody } from './s3-body.js';
import { s3Error, statusOf } from './s3-errors.js';
import { lockS3Object } from './s3-lock.js';
import { capOf, docTooLarge, readCapped } from './small-doc.js';
import { redactUrl } from './url.js';

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

  /** The body of a GET, resumed where it stopped when the transfer is cut short (see resumableBody). */
  private checkedBody(key: string, first: GetObjectCommandOutput, signal?: AbortSignal): Readable {
    const resumesAllowed = (this.opts.maxAttempts ?? 4) - 1;
    return resumableBody({ client: this.client, bucket: this.bucket, fullKey: this.prefix + key, where: this.where(key), resumesAllowed }, first, signal);
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
    throwIfAborted(opts.signal);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }), { abortSignal: opts.signal });
    } catch (err) {
      const e = s3Error(err, 'delete', this.where(key));
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
   * For servers that ignore conditional PUT headers: the current version is compared and the object
   * written while a lock object is held. NOT race-free (see lockS3Object); use native conditional
   * writes for fencing.
   */
  private async emulatedWrite(key: string, body: Buffer, cond: WriteCondition, opts: OpOptions): Promise<ObjectInfo> {
    const { signal } = opts;
    const ttlMs = this.opts.lockTtlMs ?? 30_000;
    const timing = { ttlMs, waitMs: this.opts.lockWaitMs ?? ttlMs + 5_000 };
    const release = await lockS3Object(this.client, this.bucket, `${this.prefix}${key}${RESERVED_MARK}lock`, timing, signal);
    try {
      const cur = await this.stat(key, { signal });
      if ('ifAbsent' in cond ? cur !== null : cur?.version !== cond.ifVersion) {
        throw preconditionError(key, cur === null ? 'it does not exist' : 'ifAbsent' in cond ? 'it already exists' : 'its version changed');
      }
      return await this.putObject(key, body, opts, {});
    } finally {
      await release();
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

function infoOf(key: string, res: { ContentLength?: number; ETag?: string; LastModified?: Date }): ObjectInfo {
  return { key, size: res.ContentLength ?? 0, version: res.ETag ?? '', modified: res.LastModified ?? new Date(0) };
}

