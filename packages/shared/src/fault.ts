import { Transform, type TransformCallback } from 'node:stream';

/**
 * Crash-test hooks, shared by both agents. With `TANDEM_FAULT_KILL_AT` unset (always, outside the
 * crash tests) they do nothing.
 *
 * - `TANDEM_FAULT_KILL_AT=<point>`: `faultPoint(point)` SIGKILLs the process when it gets there.
 * - `TANDEM_FAULT_KILL_AT=<stream>:<bytes>` (e.g. `upload:files:1048576`): the pass-through from
 *   `faultByteTrigger(stream)` SIGKILLs the process once at least that many bytes have gone
 *   through it, which gives a crash test as many points mid-transfer as it likes.
 *
 * SIGKILL, not an exception: nothing gets to clean up, exactly as with a power cut or the OOM killer.
 */
export function faultPoint(point: string): void {
  if (process.env.TANDEM_FAULT_KILL_AT === point) process.kill(process.pid, 'SIGKILL');
}

/**
 * `[counter]` when `TANDEM_FAULT_KILL_AT` names this stream with a byte count, else `[]`: spread it
 * into a pipeline, so that without the variable the pipeline is exactly what it was.
 */
export function faultByteTrigger(stream: string): Transform[] {
  const spec = process.env.TANDEM_FAULT_KILL_AT;
  if (spec === undefined || !spec.startsWith(`${stream}:`)) return [];
  const limit = Number(spec.slice(stream.length + 1));
  if (!Number.isSafeInteger(limit) || limit < 0) return [];
  let seen = 0;
  return [
    new Transform({
      transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
        seen += chunk.length;
        if (seen >= limit) process.kill(process.pid, 'SIGKILL');
        cb(null, chunk);
      },
    }),
  ];
}
