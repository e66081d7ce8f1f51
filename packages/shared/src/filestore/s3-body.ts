import { once } from 'node:events';
import { PassThrough, Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { GetObjectCommand, type GetObjectCommandOutput, type S3Client } from '@aws-sdk/client-s3';
import { TandemError } from '../errors.js';
import { abortError, abortableBody } from './common.js';
import { s3Error, statusOf } from './s3-errors.js';

export interface ResumableObject {
  client: S3Client;
  bucket: string;
  /** The object's key in the bucket, prefix included. */
  fullKey: string;
  /** The object as messages name it. */
  where: string;
  /** How many times a transfer cut short is resumed before the body fails. */
  resumesAllowed: number;
}

/**
 * The response body of a GET, complete or failed. Once the SDK has handed the body over its
 * retries are spent, so a transfer cut short (a reset, an idle timeout, a connection closed early)
 * is resumed here where it stopped: a ranged GET of the same version (If-Match on the ETag; the
 * answer's ETag and Content-Range are checked too, for servers that ignore If-Match), up to
 * `resumesAllowed` times with backoff. Past that, the body fails with a transient
 * FILESTORE_SHORT_READ.
 */
export function resumableBody(obj: ResumableObject, first: GetObjectCommandOutput, signal?: AbortSignal): Readable {
  const { where } = obj;
  const expected = first.ContentLength;
  const etag = first.ETag;
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
      res = await obj.client.send(
        new GetObjectCommand({ Bucket: obj.bucket, Key: obj.fullKey, Range: `bytes=${received}-`, IfMatch: etag }),
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
        if (expected === undefined || etag === undefined || received >= expected || resumes >= obj.resumesAllowed) {
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
