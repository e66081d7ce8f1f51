import { closeSync, constants, ftruncate, ftruncateSync, open, openSync, read, write, writev } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { open as openAsync, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { OPEN_NEW_FILE, piecesAfter, writeAllSync } from './fsutil.js';

/**
 * The writes of an apply's files, the large ones handed to libuv's thread pool, so that they run on
 * other cores while this thread decrypts and checks the next blobs: the writes of one thread were
 * what kept a full apply behind restores that write from several. Where the file system takes it
 * (enableDirect), files begun `direct` are written with O_DIRECT: their bytes are gathered into
 * aligned blocks of 256 KiB and each block goes to the disk as it fills, the last one padded with
 * zeros and the file cut to its size when finished. Copying into the page cache was a quarter of a
 * full apply's CPU on the machines measured (its pages cost ~2 ms per MiB the first time they are
 * touched); a direct write costs a tenth of that.
 *
 * Every write names its position (a direct file's must follow one another), so they may finish in
 * any order. Files are finished (the caller's `finish`: mode, times, a record line, then the
 * descriptor closed) in the order they were begun, once every write of theirs completed: record
 * lines stay in index order. The bytes handed over and not yet written are bounded (`maxBytes`):
 * `room()` waits below it. A write that fails fails the next call; `settle()` waits for whatever is
 * in flight and closes the descriptors of files not finished.
 */
export class WriteBehind {
  readonly #queue: FileSlot[] = [];
  #head = 0;
  #inFlight = 0;
  #failed: Error | undefined;
  #wake: (() => void) | undefined;
  #blocks: DirectBlocks | null = null;
  #directBytes = 0;
  /** Direct files' cuts to their size in flight (end). */
  #cuts = 0;

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
  begin(fd: number, size: number, finish: () => void, o: { direct?: boolean } = {}): FileSlot {
    this.#check();
    const async = size >= this.asyncMin;
    const slot: FileSlot = { fd, size, pending: 0, ended: false, finish, async, direct: async && o.direct === true && this.#blocks !== null, next: 0, block: null, used: 0, blockAt: 0, cut: false };
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
    if (slot.direct) return this.#gather(slot, pieces, position);
    slot.pending++;
    this.#inFlight += len;
    this.#pwritev(slot, pieces, position, len);
  }

  /** No more writes for this file: it is finished once those in flight completed. */
  end(slot: FileSlot): void {
    if (slot.direct) {
      if (slot.block !== null) {
        // The last block, its tail zeroed to the alignment.
        const len = Math.ceil(slot.used / DIRECT_ALIGN) * DIRECT_ALIGN;
        slot.block.fill(0, slot.used, len);
        this.#issueBlock(slot, len);
      }
      // The file cut to its size once its writes are done, on the thread pool too: ext4 took ~75 us
      // a file, ~0.2 s of this thread in a first apply of 2,805 files.
      slot.cut = true;
      slot.pending++;
      this.#cutWhenWritten(slot);
    }
    slot.ended = true;
    this.#drain();
  }

  /** A direct file's cut (end) once it is all that is pending of the file. */
  #cutWhenWritten(slot: FileSlot): void {
    if (!slot.cut || slot.pending !== 1) return;
    slot.cut = false;
    this.#cuts++;
    ftruncate(slot.fd, slot.size, (err) => {
      this.#cuts--;
      this.#done(slot, 0, err);
    });
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
    while ((this.#inFlight > 0 || this.#cuts > 0) && this.#failed === undefined) await this.#next();
    this.#check();
    this.#drain();
    if (this.#head < this.#queue.length) throw new Error('WriteBehind.flush: a file was begun and not ended');
  }

  /** After a failure: waits for the writes in flight, then closes every descriptor not finished. */
  async settle(): Promise<void> {
    while (this.#inFlight > 0 || this.#cuts > 0) await this.#next();
    for (; this.#head < this.#queue.length; this.#head++) {
      const s = this.#queue[this.#head]!;
      if (s.block !== null) this.#blocks?.give(s.block);
      s.block = null;
      try {
        closeSync(s.fd);
      } catch {
        // already failing: the first error is the one reported
      }
    }
    this.#queue.length = 0;
    this.#head = 0;
  }

  /**
   * Direct writes (O_DIRECT) from here on, for the files begun with `direct`, when a probe file in
   * `dir` takes one: the bytes go from aligned blocks of this process's memory to the disk, not
   * through the page cache. Returns why not, or undefined. TANDEM_DIRECT_WRITES=0 in the
   * environment turns them off (a file system that takes O_DIRECT but serves it slowly).
   */
  async enableDirect(dir: string): Promise<string | undefined> {
    return this.enableDirectProbed(await probeDirectAsync(dir));
  }

  /**
   * As enableDirect, with the answer of a probe made before (probeDirectAsync): its direct write
   * waits on the disk (1-5 ms), which is better spent while other work runs.
   */
  enableDirectProbed(why: string | undefined): string | undefined {
    if (process.env.TANDEM_DIRECT_WRITES === '0') return 'TANDEM_DIRECT_WRITES=0';
    if (why === undefined) this.#blocks = new DirectBlocks();
    return why;
  }

  /** Bytes of files written with O_DIRECT so far. */
  get directBytes(): number {
    return this.#directBytes;
  }

  /** Whether files begun with `direct` are written with O_DIRECT (open them with DIRECT_OPEN). */
  get direct(): boolean {
    return this.#blocks !== null;
  }

  /**
   * The file open as `from` (a path; /proc/self/fd/N names a descriptor's own file) copied into a new
   * file at `to`, `size` bytes, both read and written with O_DIRECT, COPY_AHEAD blocks at a time on
   * the thread pool: neither file's bytes go through the page cache, so a file that a direct write
   * put on the disk costs the disk's time to copy, not the cache's (a kernel copy reads it into the
   * cache first: 60-70 ms for 24 MB here, against ~20 with the blocks in parallel). Only when
   * `direct`. Throws what the file system said; `to` may then be left, partly written.
   */
  async copyDirect(from: string, to: string, size: number): Promise<void> {
    const blocks = this.#blocks;
    if (blocks === null) throw new Error('WriteBehind.copyDirect: direct writes are not enabled');
    const src = openSync(from, constants.O_RDONLY | (constants.O_DIRECT ?? 0));
    let dst: number | undefined;
    const inFlight = new Set<Promise<void>>();
    let copied = 0;
    let failed: unknown;
    try {
      dst = openSync(to, DIRECT_OPEN, 0o600);
      const out = dst;
      const one = async (at: number): Promise<void> => {
        const b = blocks.take();
        try {
          // A short read is the end of the file (the next direct read would start unaligned).
          const n = await ioAsync(read, src, b, Math.min(DIRECT_BLOCK, Math.ceil((size - at) / DIRECT_ALIGN) * DIRECT_ALIGN), at);
          copied += n;
          if (n === 0) return;
          const len = Math.ceil(n / DIRECT_ALIGN) * DIRECT_ALIGN;
          if (len > n) b.fill(0, n, len);
          if ((await ioAsync(write, out, b, len, at)) !== len) throw Object.assign(new Error(`a direct write of ${len} bytes was short`), { code: 'EIO' });
        } finally {
          blocks.give(b);
        }
      };
      for (let at = 0; at < size && failed === undefined; at += DIRECT_BLOCK) {
        while (inFlight.size >= COPY_AHEAD) await Promise.race(inFlight);
        const p: Promise<void> = one(at).then(
          () => void inFlight.delete(p),
          (err: unknown) => {
            inFlight.delete(p);
            failed ??= err;
          },
        );
        inFlight.add(p);
      }
      await Promise.all(inFlight);
      if (failed !== undefined) throw failed;
      if (copied !== size) throw Object.assign(new Error(`${from}: read ${copied} of its ${size} bytes (changed while copied?)`), { code: 'EIO' });
      ftruncateSync(out, size);
    } finally {
      await Promise.allSettled(inFlight);
      closeSync(src);
      if (dst !== undefined) closeSync(dst);
    }
  }

  /** A direct slot's bytes gathered into aligned blocks, each written whole when full. */
  #gather(slot: FileSlot, pieces: Buffer[], position: number): void {
    if (position !== slot.next) throw new Error(`WriteBehind: a direct write at ${position} of a file written up to ${slot.next}`);
    for (const p of pieces) {
      for (let at = 0; at < p.length; ) {
        slot.block ??= this.#blocks!.take();
        const n = p.copy(slot.block, slot.used, at);
        slot.used += n;
        slot.next += n;
        this.#directBytes += n;
        at += n;
        if (slot.used === DIRECT_BLOCK) this.#issueBlock(slot, DIRECT_BLOCK);
      }
    }
  }

  /** The slot's block, its first `len` bytes, written at the block's place in the file; the block goes back to the pool when done. */
  #issueBlock(slot: FileSlot, len: number): void {
    const block = slot.block!;
    const at = slot.blockAt;
    slot.block = null;
    slot.used = 0;
    slot.blockAt += len;
    slot.pending++;
    this.#inFlight += len;
    write(slot.fd, block, 0, len, at, (err, written) => {
      this.#blocks?.give(block);
      this.#done(slot, len, err ?? (written !== len ? Object.assign(new Error(`a direct write of ${len} bytes wrote ${written}`), { code: 'EIO' }) : null));
    });
  }

  #pwritev(slot: FileSlot, pieces: Buffer[], position: number, len: number): void {
    writev(slot.fd, pieces, position, (err, written) => {
      if (err === null && written < len && written > 0) {
        // A short write (rare on a regular file): the rest from where it stopped.
        this.#inFlight -= written;
        this.#pwritev(slot, piecesAfter(pieces, written), position + written, len - written);
        return;
      }
      this.#done(slot, len, err ?? (written === 0 ? Object.assign(new Error(`write returned 0 of ${len} bytes`), { code: 'EIO' }) : null));
    });
  }

  /** A write of `len` bytes of the slot's file completed (failed with `err`): whoever waits is woken. */
  #done(slot: FileSlot, len: number, err: Error | null): void {
    this.#inFlight -= len;
    slot.pending--;
    if (err !== null) this.#failed ??= err;
    this.#cutWhenWritten(slot);
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
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
  readonly size: number;
  /** Written with O_DIRECT, from aligned blocks (the block being filled, its bytes used, the file offset it starts at). */
  readonly direct: boolean;
  next: number;
  block: Buffer | null;
  used: number;
  blockAt: number;
  /** A direct file's cut to its size, counted in `pending`, not yet begun (it begins once the writes are done). */
  cut: boolean;
}

/** Node's WebAssembly.Memory (the compiler's libraries here have no WebAssembly types). */
declare const WebAssembly: { Memory: new (d: { initial: number }) => { buffer: ArrayBuffer } };

/** fs.read or fs.write of `len` bytes of `buf` at `position`, as a promise of the bytes done. */
function ioAsync(op: typeof read | typeof write, fd: number, buf: Buffer, len: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => (op as (fd: number, b: Buffer, o: number, l: number, p: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void) => void)(fd, buf, 0, len, position, (err, n) => (err === null ? resolve(n) : reject(err))));
}

/** Blocks of a direct copy read or written at once (COPY_AHEAD × 256 KiB). */
const COPY_AHEAD = 16;

/** Offsets, lengths and memory of a direct write are multiples of this. */
const DIRECT_ALIGN = 4096;
/** The size of a direct write (a block of DirectBlocks). */
const DIRECT_BLOCK = 256 << 10;
/** open() flags for a new file written with O_DIRECT (0 where the platform has none: never used then). */
export const DIRECT_OPEN = OPEN_NEW_FILE | (constants.O_DIRECT ?? 0);

/**
 * Blocks for direct writes, cut from WebAssembly memories: their memory is page-aligned, as O_DIRECT
 * wants (a Buffer's is not, and JavaScript cannot ask where it lies). Taken and given back; more are
 * made when all are in flight (the caller bounds that: WriteBehind.full).
 */
class DirectBlocks {
  readonly #free: Buffer[] = [];

  take(): Buffer {
    if (this.#free.length === 0) {
      const mem = new WebAssembly.Memory({ initial: (16 * DIRECT_BLOCK) / 65536 });
      for (let i = 0; i < 16; i++) this.#free.push(Buffer.from(mem.buffer, i * DIRECT_BLOCK, DIRECT_BLOCK));
    }
    return this.#free.pop()!;
  }

  give(b: Buffer): void {
    this.#free.push(b);
  }
}

/**
 * Why files in `dir` cannot be written directly (a file opened with O_DIRECT, one aligned block
 * written), or undefined when they can (for enableDirectProbed); on the thread pool. Never rejects;
 * its probe file is gone when it resolves.
 */
export async function probeDirectAsync(dir: string): Promise<string | undefined> {
  if (constants.O_DIRECT === undefined) return 'this platform has no O_DIRECT';
  // A name nothing else uses (the dir may be an extraction target holding the archive's entries),
  // and removed only when this made it.
  const file = join(dir, `.tandem-direct-probe-${randomBytes(8).toString('hex')}`);
  let fh: FileHandle | undefined;
  try {
    fh = await openAsync(file, DIRECT_OPEN, 0o600);
    const { bytesWritten } = await fh.write(new DirectBlocks().take(), 0, DIRECT_ALIGN, 0);
    return bytesWritten !== DIRECT_ALIGN ? 'a direct write was short' : undefined;
  } catch (err) {
    return (err as Error).message;
  } finally {
    if (fh !== undefined) {
      await fh.close().catch(() => undefined);
      await rm(file, { force: true }).catch(() => undefined);
    }
  }
}

/**
 * A new file (OPEN_NEW_FILE, 0600) opened on the thread pool, ahead of its writes: creating a file
 * is the file system's work (an inode found and taken, a directory entry added) and need not hold
 * up this thread. A failure is the promise's.
 */
export function openNewAsync(path: string, flags = OPEN_NEW_FILE): Promise<number> {
  const p = new Promise<number>((resolve, reject) => open(path, flags, 0o600, (err, fd) => (err === null ? resolve(fd) : reject(err))));
  p.catch(() => undefined);
  return p;
}
