/**
 * Where each blob a backup knows of is stored (its pack's number, offset and length), by blob id,
 * held outside the JS heap: 32 bytes of id and 12 of place in two dense arrays, and a 4-byte slot
 * in an open-addressing hash table. A Map of hex strings to objects cost ~180 bytes a blob on the
 * heap (a site with 100,000 small files held 18 MB of it, which the collector also had to scan on
 * every full collection and let grow to four times that before one); this is ~52 bytes a blob, and
 * none of it is scanned.
 *
 * Ids are HMAC-SHA-256 outputs, uniformly distributed: their first four bytes are the hash.
 */
const ID = 32;
const EMPTY = -1;

export class BlobTable {
  #ids: Buffer;
  #meta: Uint32Array;
  #index: Int32Array;
  #mask: number;
  #size = 0;

  constructor(expected = 1024) {
    const cap = Math.max(16, 2 ** Math.ceil(Math.log2(expected)));
    this.#ids = Buffer.allocUnsafeSlow(cap * ID);
    this.#meta = new Uint32Array(cap * 3);
    this.#index = new Int32Array(cap * 2).fill(EMPTY);
    this.#mask = cap * 2 - 1;
  }

  get size(): number {
    return this.#size;
  }

  /** The entry of `id` (32 bytes), or -1. */
  find(id: Buffer): number {
    for (let s = id.readUInt32LE(0) & this.#mask; ; s = (s + 1) & this.#mask) {
      const e = this.#index[s]!;
      if (e === EMPTY) return -1;
      if (this.#ids.compare(id, 0, ID, e * ID, e * ID + ID) === 0) return e;
    }
  }

  /** Adds `id` at the given place unless it is there already; returns its entry. */
  add(id: Buffer, pack: number, offset: number, length: number): number {
    if (id.length !== ID) throw new RangeError(`a blob id is ${ID} bytes, not ${id.length}`);
    const have = this.find(id);
    if (have >= 0) return have;
    if ((this.#size + 1) * 2 > this.#index.length) this.#grow();
    const e = this.#size++;
    id.copy(this.#ids, e * ID);
    this.#meta[e * 3] = pack;
    this.#meta[e * 3 + 1] = offset;
    this.#meta[e * 3 + 2] = length;
    this.#place(e);
    return e;
  }

  pack(e: number): number {
    return this.#meta[e * 3]!;
  }

  offset(e: number): number {
    return this.#meta[e * 3 + 1]!;
  }

  length(e: number): number {
    return this.#meta[e * 3 + 2]!;
  }

  /** The id of entry `e`, hex. */
  idHex(e: number): string {
    return this.#ids.toString('hex', e * ID, e * ID + ID);
  }

  #place(e: number): void {
    let s = this.#ids.readUInt32LE(e * ID) & this.#mask;
    while (this.#index[s] !== EMPTY) s = (s + 1) & this.#mask;
    this.#index[s] = e;
  }

  #grow(): void {
    const cap = this.#index.length; // entries room doubles: from cap / 2 to cap
    const ids = Buffer.allocUnsafeSlow(cap * ID);
    this.#ids.copy(ids, 0, 0, this.#size * ID);
    this.#ids = ids;
    const meta = new Uint32Array(cap * 3);
    meta.set(this.#meta.subarray(0, this.#size * 3));
    this.#meta = meta;
    this.#index = new Int32Array(cap * 2).fill(EMPTY);
    this.#mask = cap * 2 - 1;
    for (let e = 0; e < this.#size; e++) this.#place(e);
  }
}
