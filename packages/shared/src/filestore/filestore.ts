import type { Readable } from 'node:stream';

export { isFilestoreError } from './common.js';

/**
 * A filestore holds backup sets. Keys are '/'-separated relative paths ("demo/sets/<id>/manifest.json");
 * the store's own prefix (directory or bucket prefix) is applied by the implementation.
 *
 * Contract, shared by every implementation and checked by the contract test suite:
 * - `put` streams the body and makes the object visible atomically: a reader sees the old object,
 *   no object, or the complete new one, never a part. On any error nothing is left visible.
 * - `get` of a missing key throws TandemError kind 'not-found'. Errors are classified the same way
 *   for every implementation: 'not-found', 'transient' (worth retrying), 'permanent'.
 * - `delete` is idempotent: deleting a missing key succeeds.
 * - `version` is an opaque string that changes whenever the object is replaced (an ETag on S3).
 * - `getIfChanged` is the cheap poll: when the current version equals `knownVersion` it returns
 *   `{ changed: false }` without transferring the body.
 * - `getBuffer` and `getIfChanged` read small documents only: an object larger than `maxBytes`
 *   (default SMALL_DOC_MAX_BYTES) is refused with kind 'integrity' from its size before the body is
 *   read, and a body that turns out longer while it is read is cut off at the limit, so a replaced
 *   latest.json of any size costs a reader at most that much memory.
 * - `writeConditional` is the fencing primitive: `{ ifAbsent: true }` creates only if missing;
 *   `{ ifVersion }` replaces only if the current version matches. A lost race throws kind
 *   'precondition'. Of two concurrent writers exactly one wins.
 * - Every method honours `signal` where given.
 */
export interface ObjectInfo {
  key: string;
  size: number;
  version: string;
  modified: Date;
}

export interface OpOptions {
  signal?: AbortSignal;
}

/**
 * The most a small document (latest.json, manifest.json, epoch.json, heartbeat.json, a standby
 * report) may be. The largest real one, a manifest, is a few KiB.
 */
export const SMALL_DOC_MAX_BYTES = 1024 * 1024;

export interface GetBufferOptions extends OpOptions {
  /** Refuse a body longer than this (default SMALL_DOC_MAX_BYTES). */
  maxBytes?: number;
}

export interface PutOptions extends OpOptions {
  /** Known length, if any; lets S3 use a single PUT for small bodies. */
  contentLength?: number;
  contentType?: string;
}

export type WriteCondition = { ifAbsent: true } | { ifVersion: string };

export type ConditionalGetResult =
  | { changed: false }
  | { changed: true; body: Buffer; info: ObjectInfo };

export interface Filestore {
  /** The store's URL with any credentials removed, for messages and logs. */
  readonly description: string;
  put(key: string, body: Readable, opts?: PutOptions): Promise<ObjectInfo>;
  /** Small objects (manifests, pointers): whole-buffer convenience over `put`. */
  putBuffer(key: string, body: Buffer, opts?: PutOptions): Promise<ObjectInfo>;
  get(key: string, opts?: OpOptions): Promise<{ body: Readable; info: ObjectInfo }>;
  /** Small objects only: reads the whole body into memory, at most `maxBytes` of it. */
  getBuffer(key: string, opts?: GetBufferOptions): Promise<{ body: Buffer; info: ObjectInfo }>;
  getIfChanged(key: string, knownVersion: string | undefined, opts?: GetBufferOptions): Promise<ConditionalGetResult>;
  /** null when missing. */
  stat(key: string, opts?: OpOptions): Promise<ObjectInfo | null>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix: string, opts?: OpOptions): Promise<ObjectInfo[]>;
  delete(key: string, opts?: OpOptions): Promise<void>;
  writeConditional(key: string, body: Buffer, cond: WriteCondition, opts?: OpOptions): Promise<ObjectInfo>;
  /**
   * A directory filestore only: the file that holds `key` (the key checked as for get), for a
   * reader on another thread (an apply's packs, PackReadThread). Whoever reads it checks what it
   * reads as it checks what get returns.
   */
  localPath?(key: string): string;
  close(): Promise<void>;
}
