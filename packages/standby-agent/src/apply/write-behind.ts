import { closeSync, open, writev } from 'node:fs';
import { OPEN_NEW_FILE, writeAllSync } from '@tandem/shared';

/**
 * The writes of an apply's files, the large ones handed to libuv's thread pool (pwritev), so that
 * copying them into the page cache (on the machines measured, a quarter of a full apply's CPU) runs
 * on other cores while this thread decrypts and checks the next blobs: the writes of one thread were
 * what kept a full apply behind restores that write from several.
 *
 * Every write names its position, so they may finish in any order. Files are finished (the caller's
 * `finish`: mode, times, a record line, then the descriptor closed) in the order they were begun, once
 * every write of theirs completed: record lines stay in index order. The bytes handed over and not
 * yet written are bounded (`maxBytes`): `room()` waits below it. A write that fails fails the next
 * call; `settle()` waits for whatever is in flight and closes the descriptors of files not finished.
 */
export class WriteBehind {
  readonly #queue: FileSlot[] = [];
  #head = 0;
  #inFlight = 0;
  #failed: Error | undefined;
  #wake: (() => void) | undefined;

  constructor(
    private readonly maxBytes = 8 << 20,
    /** A file smaller than this is written at once, on this thread (a promise costs more than its copy). */
    readonly asyncMin = 64 << 10,
  ) {}

  /**
   * A file of `size` bytes whose writes follow (its descriptor owned from now on: closed by finish
   * or settle). All of a file's writes go the same way: one on this thread while the pool writes the
   * same file would wait for the file's lock.
   */
  begin(fd: number, size: number, finish: () => void): FileSlot {
    this.#check();
    const slot: FileSlot = { fd, pending: 0, ended: false, finish, async: size >= this.asyncMin };
    this.#queue.push(slot);
    return slot;
  }

  /** `pieces` (one blob's bytes, in order) at `position` of the slot's file. */
  write(slot: FileSlot, pieces: Buffer[], position: number): void {
    this.#check();
    let len = 0;
    for (const p of pieces) len += p.length;
    if (!slot.async) {
      for (const p of pieces) {
        writeAllSync(slot.fd, p, position);
        position += p.length;
      }
      return;
    }
    slot.pending++;
    this.#inFlight += len;
    this.#pwritev(slot, pieces, position, len);
  }

  /** No more writes for this file: it is finished once those in flight completed. */
  end(slot: FileSlot): void {
    slot.ended = true;
    this.#drain();
  }

  /** Bytes handed to the thread pool and not yet written. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Whether room() has to wait. */
  get full(): boolean {
    return this.#inFlight > this.maxBytes || this.#failed !== undefined;
  }

  /** Waits while the bytes in flight are over the bound (and finishes the files that can be). */
  async room(): Promise<void> {
    while (this.#inFlight > this.maxBytes && this.#failed === undefined) await this.#next();
    this.#check();
    this.#drain();
  }

  /** Waits for every write and finishes every file (throws the first write that failed). */
  async flush(): Promise<void> {
    while (this.#inFlight > 0 && this.#failed === undefined) await this.#next();
    this.#check();
    this.#drain();
    if (this.#head < this.#queue.length) throw new Error('WriteBehind.flush: a file was begun and not ended');
  }

  /** After a failure: waits for the writes in flight, then closes every descriptor not finished. */
  async settle(): Promise<void> {
    while (this.#inFlight > 0) await this.#next();
    for (; this.#head < this.#queue.length; this.#head++) {
      try {
        closeSync(this.#queue[this.#head]!.fd);
      } catch {
        // already failing: the first error is the one reported
      }
    }
    this.#queue.length = 0;
    this.#head = 0;
  }

  #pwritev(slot: FileSlot, pieces: Buffer[], position: number, len: number): void {
    writev(slot.fd, pieces, position, (err, written) => {
      if (err === null && written < len && written > 0) {
        // A short write (rare on a regular file): the rest from where it stopped.
        let skip = written;
        const rest: Buffer[] = [];
        for (const p of pieces) {
          if (skip >= p.length) skip -= p.length;
          else {
            rest.push(skip > 0 ? p.subarray(skip) : p);
            skip = 0;
          }
        }
        this.#inFlight -= written;
        this.#pwritev(slot, rest, position + written, len - written);
        return;
      }
      this.#inFlight -= len;
      slot.pending--;
      if (err !== null) this.#failed ??= err;
      else if (written === 0) this.#failed ??= Object.assign(new Error(`write returned 0 of ${len} bytes`), { code: 'EIO' });
      const wake = this.#wake;
      this.#wake = undefined;
      wake?.();
    });
  }

  #next(): Promise<void> {
    return new Promise((resolve) => (this.#wake = resolve));
  }

  #check(): void {
    if (this.#failed !== undefined) throw this.#failed;
  }

  #drain(): void {
    while (this.#head < this.#queue.length) {
      const s = this.#queue[this.#head]!;
      if (!s.ended || s.pending > 0) break;
      this.#head++;
      try {
        s.finish();
      } finally {
        closeSync(s.fd);
      }
    }
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
  }
}

export interface FileSlot {
  readonly fd: number;
  pending: number;
  ended: boolean;
  readonly finish: () => void;
  /** Its writes go to the thread pool. */
  readonly async: boolean;
}

/**
 * A new file (OPEN_NEW_FILE, 0600) opened on the thread pool, ahead of its writes: creating a file
 * is the file system's work (an inode found and taken, a directory entry added) and need not hold
 * up this thread. A failure is the promise's.
 */
export function openNewAsync(path: string): Promise<number> {
  const p = new Promise<number>((resolve, reject) => open(path, OPEN_NEW_FILE, 0o600, (err, fd) => (err === null ? resolve(fd) : reject(err))));
  p.catch(() => undefined);
  return p;
}
