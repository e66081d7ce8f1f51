import type { Readable } from 'node:stream';
import { describeError, isTandemError } from '../errors.js';
import type { ConditionalGetResult, Filestore, GetBufferOptions, ObjectInfo, OpOptions, PutOptions, WriteCondition } from '../filestore/filestore.js';
import type { Logger } from '../logger.js';
import { requireFilestoreMarker, type FilestoreMarker } from './marker.js';

/**
 * A daemon's filestore: every operation waits until the filestore's marker has been read once
 * (requireFilestoreMarker). Until then each operation reads it again and, without it, fails with
 * the marker's error, so a daemon started while the filestore is missing or not mounted keeps
 * running and reports it where it reports any filestore failure (its log, /status, metrics), and
 * its next poll, heartbeat or backup tries again; nothing is written to an unmarked filestore. Once
 * the marker was read, operations pass straight through: the check is made once per start.
 */
export class MarkerGatedFilestore implements Filestore {
  readonly description: string;
  #marker: FilestoreMarker | undefined;
  #checking: Promise<FilestoreMarker> | undefined;

  constructor(
    private readonly inner: Filestore,
    private readonly context: { url: string },
  ) {
    this.description = inner.description;
  }

  /** The marker, once it was read. */
  get marker(): FilestoreMarker | undefined {
    return this.#marker;
  }

  /** The marker: read once; concurrent callers share one read; a failed read is tried again by the next call. */
  check(): Promise<FilestoreMarker> {
    if (this.#marker !== undefined) return Promise.resolve(this.#marker);
    this.#checking ??= requireFilestoreMarker(this.inner, this.context)
      .then((m) => (this.#marker = m))
      .finally(() => {
        this.#checking = undefined;
      });
    return this.#checking;
  }

  /**
   * A daemon's check at its start: the marker is read now; a filestore without one (or that cannot
   * be read) is logged with what to do, never thrown: the daemon runs on, `meanwhile` says what it
   * does until the filestore is usable, and its next operation checks again. True when usable.
   */
  async checkAtStart(logger: Logger, meanwhile: string): Promise<boolean> {
    try {
      await this.check();
      return true;
    } catch (err) {
      const hint = isTandemError(err) && err.hint !== undefined ? ` (${err.hint})` : '';
      logger.error({ err, filestore: this.description }, `${describeError(err)}${hint}; ${meanwhile}`);
      return false;
    }
  }

  async put(key: string, body: Readable, opts?: PutOptions): Promise<ObjectInfo> {
    try {
      await this.check();
    } catch (err) {
      body.destroy();
      throw err;
    }
    return this.inner.put(key, body, opts);
  }
  async putBuffer(key: string, body: Buffer, opts?: PutOptions): Promise<ObjectInfo> {
    await this.check();
    return this.inner.putBuffer(key, body, opts);
  }
  async get(key: string, opts?: OpOptions): Promise<{ body: Readable; info: ObjectInfo }> {
    await this.check();
    return this.inner.get(key, opts);
  }
  async getBuffer(key: string, opts?: GetBufferOptions): Promise<{ body: Buffer; info: ObjectInfo }> {
    await this.check();
    return this.inner.getBuffer(key, opts);
  }
  async getIfChanged(key: string, knownVersion: string | undefined, opts?: GetBufferOptions): Promise<ConditionalGetResult> {
    await this.check();
    return this.inner.getIfChanged(key, knownVersion, opts);
  }
  async stat(key: string, opts?: OpOptions): Promise<ObjectInfo | null> {
    await this.check();
    return this.inner.stat(key, opts);
  }
  async list(prefix: string, opts?: OpOptions): Promise<ObjectInfo[]> {
    await this.check();
    return this.inner.list(prefix, opts);
  }
  async delete(key: string, opts?: OpOptions): Promise<void> {
    await this.check();
    return this.inner.delete(key, opts);
  }
  async writeConditional(key: string, body: Buffer, cond: WriteCondition, opts?: OpOptions): Promise<ObjectInfo> {
    await this.check();
    return this.inner.writeConditional(key, body, cond, opts);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
