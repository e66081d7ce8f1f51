import type { Readable } from 'node:stream';
import { DirFilestore, type DirFilestoreOptions } from './dir-filestore.js';
import type { ConditionalGetResult, Filestore, GetBufferOptions, ObjectInfo, OpOptions, PutOptions, WriteCondition } from './filestore.js';
import { describeFilestoreLocation, parseFilestoreUrl, type FilestoreLocation } from './location.js';
import type { S3Filestore, S3FilestoreOptions } from './s3-filestore.js';

export { describeFilestoreLocation, parseFilestoreUrl, type FilestoreLocation };

export interface OpenFilestoreOptions {
  /** Settings that do not belong in a URL: credentials, retry and timeout tuning. */
  s3?: Pick<
    S3FilestoreOptions,
    'credentials' | 'maxAttempts' | 'connectTimeoutMs' | 'idleTimeoutMs' | 'partSize' | 'queueSize' | 'lockTtlMs' | 'lockWaitMs'
  >;
  dir?: DirFilestoreOptions;
}

/**
 * Opens the filestore at `where`: a location parsed by the config (`config.filestore.location`), or
 * a URL, parsed here (tools and tests that have no config).
 */
export function openFilestore(where: FilestoreLocation | string, opts: OpenFilestoreOptions = {}): Filestore {
  const loc = typeof where === 'string' ? parseFilestoreUrl(where) : where;
  if (loc.scheme === 'file') return new DirFilestore(loc.root, opts.dir);
  return new LazyS3Filestore({ ...loc, ...opts.s3, description: describeFilestoreLocation(loc) });
}

/**
 * The S3 backend, loaded on first use: the AWS SDK costs ~20 MiB of memory and some start-up
 * time, which an agent on a directory filestore should not pay.
 */
class LazyS3Filestore implements Filestore {
  readonly description: string;
  readonly #opts: S3FilestoreOptions;
  #store: Promise<S3Filestore> | undefined;

  constructor(opts: S3FilestoreOptions & { description: string }) {
    this.#opts = opts;
    this.description = opts.description;
  }

  #s3(): Promise<S3Filestore> {
    this.#store ??= import('./s3-filestore.js').then((m) => new m.S3Filestore(this.#opts));
    return this.#store;
  }

  async put(key: string, body: Readable, opts?: PutOptions): Promise<ObjectInfo> {
    return (await this.#s3()).put(key, body, opts);
  }
  async putBuffer(key: string, body: Buffer, opts?: PutOptions): Promise<ObjectInfo> {
    return (await this.#s3()).putBuffer(key, body, opts);
  }
  async get(key: string, opts?: OpOptions): Promise<{ body: Readable; info: ObjectInfo }> {
    return (await this.#s3()).get(key, opts);
  }
  async getBuffer(key: string, opts?: GetBufferOptions): Promise<{ body: Buffer; info: ObjectInfo }> {
    return (await this.#s3()).getBuffer(key, opts);
  }
  async getIfChanged(key: string, knownVersion: string | undefined, opts?: GetBufferOptions): Promise<ConditionalGetResult> {
    return (await this.#s3()).getIfChanged(key, knownVersion, opts);
  }
  async stat(key: string, opts?: OpOptions): Promise<ObjectInfo | null> {
    return (await this.#s3()).stat(key, opts);
  }
  async list(prefix: string, opts?: OpOptions): Promise<ObjectInfo[]> {
    return (await this.#s3()).list(prefix, opts);
  }
  async delete(key: string, opts?: OpOptions): Promise<void> {
    return (await this.#s3()).delete(key, opts);
  }
  async writeConditional(key: string, body: Buffer, cond: WriteCondition, opts?: OpOptions): Promise<ObjectInfo> {
    return (await this.#s3()).writeConditional(key, body, cond, opts);
  }
  async close(): Promise<void> {
    if (this.#store) await (await this.#store).close();
  }
}
