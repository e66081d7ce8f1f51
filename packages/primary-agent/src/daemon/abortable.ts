import type { Filestore, OpOptions } from '@tandem/shared';

/**
 * A view of `fs` that refuses to start a write once `signal` is aborted, and hands the signal to
 * every operation. Reads and deletes are not refused: a backup that is aborted removes what it
 * uploaded, and its next upload must start (and fail at once) so that it tears its streams and child
 * processes down. `close` leaves the underlying filestore open (the daemon owns it).
 *
 * runBackup passes its signal to each artifact's upload, but an abort that lands between two
 * artifacts would otherwise go unnoticed until the next one has streamed completely.
 */
export function abortableFilestore(fs: Filestore, signal: AbortSignal): Filestore {
  const merge = <T extends OpOptions>(opts?: T): T => ({ ...(opts ?? ({} as T)), signal: opts?.signal ? AbortSignal.any([opts.signal, signal]) : signal });
  const guard = <A extends unknown[], R>(fn: (...args: A) => Promise<R>) =>
    (...args: A): Promise<R> => {
      try {
        signal.throwIfAborted();
      } catch (err) {
        return Promise.reject(err);
      }
      return fn(...args);
    };
  return {
    get description() {
      return fs.description;
    },
    put: guard((key, body, opts) => fs.put(key, body, merge(opts))),
    putBuffer: guard((key, body, opts) => fs.putBuffer(key, body, merge(opts))),
    get: (key, opts) => fs.get(key, opts),
    getBuffer: (key, opts) => fs.getBuffer(key, opts),
    getIfChanged: (key, known, opts) => fs.getIfChanged(key, known, opts),
    stat: (key, opts) => fs.stat(key, opts),
    list: (prefix, opts) => fs.list(prefix, opts),
    writeConditional: guard((key, body, cond, opts) => fs.writeConditional(key, body, cond, merge(opts))),
    delete: (key, opts) => fs.delete(key, opts),
    close: () => Promise.resolve(),
  };
}
