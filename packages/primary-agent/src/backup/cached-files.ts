/**
 * The files the cache lists, as the walk asks of them: by path, whether a file is as the cache saw
 * it (size, mtime in nanoseconds, inode: restic's rule) and where its blobs are (entries of the
 * blob table). Held in typed arrays beside one Map of paths to slots: an object and two decimal
 * strings a file cost ~130 bytes of heap (100,000 small files: ~13 MB the collector also scans),
 * this is 28 bytes outside the scanned heap. A stamp that is not a number (a bucket object's ETag,
 * a cache line of an older version without one) is kept as text, and compared as text.
 */
export class CachedFiles {
  readonly #slot = new Map<string, number>();
  #size: Float64Array;
  #mtime: BigInt64Array;
  #ino: BigUint64Array;
  /** The blob-table entry of a file of exactly one blob (most files of a tree of small ones). */
  #blob: Uint32Array;
  /** Files of no blob or of more than one. */
  readonly #blobs = new Map<number, Uint32Array>();
  /** Stamps that are not numbers, as text. */
  readonly #text = new Map<number, { ns: string; ino: string }>();
  #n = 0;

  constructor(expected = 1024) {
    const cap = Math.max(16, expected);
    this.#size = new Float64Array(cap);
    this.#mtime = new BigInt64Array(cap);
    this.#ino = new BigUint64Array(cap);
    this.#blob = new Uint32Array(cap);
  }

  get size(): number {
    return this.#slot.size;
  }

  /** Records a file (a later call for the same path wins). `ns` and `ino` as the cache's lines have them. */
  set(path: string, size: number, ns: string, ino: string, blobs: Uint32Array): void {
    let slot = this.#slot.get(path);
    if (slot === undefined) {
      if (this.#n === this.#size.length) this.#grow();
      slot = this.#n++;
      this.#slot.set(path, slot);
    }
    this.#size[slot] = size;
    const mt = asInt64(ns);
    const node = asUint64(ino);
    if (mt === undefined || node === undefined) {
      this.#text.set(slot, { ns, ino });
    } else {
      this.#text.delete(slot);
      this.#mtime[slot] = mt;
      this.#ino[slot] = node;
    }
    if (blobs.length === 1) {
      this.#blob[slot] = blobs[0]!;
      this.#blobs.delete(slot);
    } else {
      this.#blobs.set(slot, blobs);
    }
  }

  /**
   * The blob entries of `path` when the cache saw it with this size, mtime and inode (a number for a
   * file of one blob, else an array), or undefined: the file must be read.
   */
  unchanged(path: string, size: number, ns: bigint | string, ino: bigint | string): Uint32Array | number | undefined {
    const slot = this.#slot.get(path);
    if (slot === undefined || this.#size[slot] !== size) return undefined;
    const text = this.#text.get(slot);
    if (text !== undefined) {
      if (text.ns !== String(ns) || text.ino !== String(ino)) return undefined;
    } else {
      const mt = typeof ns === 'bigint' ? ns : asInt64(ns);
      const node = typeof ino === 'bigint' ? ino : asUint64(ino);
      if (mt !== this.#mtime[slot] || node !== this.#ino[slot]) return undefined;
    }
    return this.#blobs.get(slot) ?? this.#blob[slot]!;
  }

  clear(): void {
    this.#slot.clear();
    this.#blobs.clear();
    this.#text.clear();
    this.#n = 0;
  }

  #grow(): void {
    const cap = this.#size.length * 2;
    const size = new Float64Array(cap);
    size.set(this.#size);
    this.#size = size;
    const mtime = new BigInt64Array(cap);
    mtime.set(this.#mtime);
    this.#mtime = mtime;
    const ino = new BigUint64Array(cap);
    ino.set(this.#ino);
    this.#ino = ino;
    const blob = new Uint32Array(cap);
    blob.set(this.#blob);
    this.#blob = blob;
  }
}

/** A decimal integer that fits in 64 bits signed, as a bigint; anything else undefined. */
function asInt64(s: string): bigint | undefined {
  if (!/^-?\d{1,19}$/.test(s)) return undefined;
  const v = BigInt(s);
  return BigInt.asIntN(64, v) === v ? v : undefined;
}

/** A decimal integer that fits in 64 bits unsigned, as a bigint; anything else undefined. */
function asUint64(s: string): bigint | undefined {
  if (!/^\d{1,20}$/.test(s)) return undefined;
  const v = BigInt(s);
  return BigInt.asUintN(64, v) === v ? v : undefined;
}
