import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { TandemError } from '../errors.js';
import { throwIfAborted } from './common.js';
import { s3Error } from './s3-errors.js';
import { readCapped } from './small-doc.js';

/** A lock object is a token and a time: a few dozen bytes. */
const LOCK_MAX_BYTES = 4096;

export interface S3LockTiming {
  /** How long a lock object is honoured: an older one is presumed left by a crashed writer. */
  ttlMs: number;
  /** How long to wait for a live lock before failing with a transient error. */
  waitMs: number;
}

interface LockDoc {
  token: string;
  expires: number;
}

/**
 * The lock of emulated conditional writes, for servers that ignore conditional PUT headers: a lock
 * object (`<key>.tmp-lock`, `lockKey` is its full key in the bucket) is written, read back after a
 * pause to see whether a rival overwrote it, and held until the returned release function runs.
 * Without an atomic primitive on the server this is NOT race-free: two writers whose lock writes
 * and read-backs interleave can both proceed. Good enough for tests and a single writer; use
 * native conditional writes for fencing.
 */
export async function lockS3Object(
  client: S3Client,
  bucket: string,
  lockKey: string,
  timing: S3LockTiming,
  signal?: AbortSignal,
): Promise<() => Promise<void>> {
  const token = randomUUID();
  const deadline = Date.now() + timing.waitMs;
  for (;;) {
    throwIfAborted(signal);
    const held = await readLock(client, bucket, lockKey, signal);
    if (held === null || held.expires < Date.now()) {
      await writeLock(client, bucket, lockKey, { token, expires: Date.now() + timing.ttlMs });
      await sleep(50, undefined, { signal }).catch(() => {});
      if ((await readLock(client, bucket, lockKey, signal))?.token === token) break;
    }
    if (Date.now() > deadline) {
      throw new TandemError('transient', 'FILESTORE_LOCKED', `timed out waiting for lock s3://${bucket}/${lockKey}`);
    }
    await sleep(50 + Math.random() * 100, undefined, { signal }).catch(() => {});
  }
  return async () => {
    // Taken over meanwhile (this holder outlived the TTL): the lock is the new holder's now.
    if ((await readLock(client, bucket, lockKey).catch(() => null))?.token !== token) return;
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: lockKey })).catch(() => {});
  };
}

async function readLock(client: S3Client, bucket: string, lockKey: string, signal?: AbortSignal): Promise<LockDoc | null> {
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: lockKey }), { abortSignal: signal });
    const raw = await readCapped(res.Body as Readable, LOCK_MAX_BYTES, `s3://${bucket}/${lockKey}`);
    const parsed = JSON.parse(raw.toString('utf8')) as { token?: unknown; expires?: unknown };
    return { token: String(parsed.token), expires: Number(parsed.expires) };
  } catch (err) {
    const e = s3Error(err, 'read lock', `s3://${bucket}/${lockKey}`);
    if (e instanceof TandemError && e.kind === 'not-found') return null;
    // Torn or foreign: treat as stale.
    if (err instanceof SyntaxError || (e instanceof TandemError && e.code === 'FILESTORE_DOC_TOO_LARGE')) return { token: '', expires: 0 };
    throw e;
  }
}

async function writeLock(client: S3Client, bucket: string, lockKey: string, lock: LockDoc): Promise<void> {
  try {
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: lockKey, Body: JSON.stringify(lock) }));
  } catch (err) {
    throw s3Error(err, 'write lock', `s3://${bucket}/${lockKey}`);
  }
}
