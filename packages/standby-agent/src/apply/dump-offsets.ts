import { open, type FileHandle } from 'node:fs/promises';

/**
 * The data offsets of a staged dump, written into its table of contents as pg_dump writes them
 * when its output can seek.
 *
 * The primary's pg_dump writes into a pipe (its output goes through zstd and age to the filestore,
 * never to a file on its disk), so the table of contents at the front of the dump says of every
 * table's data "offset not known": pg_dump can only go back and fill the offsets in when it writes
 * a file. A parallel pg_restore of such a dump works, but each worker finds a table's data by
 * reading through the dump from the start of the data (every row's chunk header, past every table
 * before it), and it has no sizes to start the largest tables first. On the 749 MB dump of the
 * bench database: pg_restore -j2 11.1 s (pg_restore itself 2.6-3.5 s of CPU) against 10.5 s
 * (0.8 s) once the offsets are in, on two cores that the restore keeps busy.
 *
 * So once the dump is staged (decompressed into a file) and before the data is restored, this walks
 * its data blocks once (the chunk headers only: ~0.2 s for that dump, 1.9 million chunks) and writes
 * each block's offset into its entry: 9 bytes an entry with data, in place. The result is the file
 * pg_dump would have written (byte for byte, but for the dump's time in the header; see the test).
 *
 * The dump was verified against the signed manifest before it was staged, so this is an
 * optimization, never a trust decision: anything this does not recognize (another archive version,
 * a block that is not where the table of contents says, an entry that already has its offset, a
 * file that ends early or late) leaves the file exactly as it was, and pg_restore reads it as it
 * always could. Nothing is written before the whole file has been walked and matched.
 *
 * The custom format (PostgreSQL's pg_backup_archiver.c and pg_backup_custom.c): a header ("PGDMP",
 * version, int and offset sizes, format, compression, the dump's time, three strings), the table
 * of contents (a count, then per entry: dump id, had-dumper, tableoid, oid, tag, description,
 * section, definition, drop, copy statement, namespace, tablespace, table access method (1.14+),
 * owner, "false", dependency ids ending with a null string, and the offset: a flag byte and
 * offSize bytes), then the data blocks in table-of-contents order: a block type (1 data, 3 large
 * objects), the entry's dump id, and chunks each prefixed by its length, a length of 0 ending the
 * block (large objects: per object its oid, its chunks and a 0, and an oid of 0 ending the block).
 * Integers are a sign byte and intSize bytes, least significant first.
 */

/** Archive versions whose layout this knows (1.12: PostgreSQL 9.6-10 ... 1.15: 16). */
const MIN_VERSION = 12;
const MAX_VERSION = 15;
const BLK_DATA = 1;
const BLK_BLOBS = 3;
const OFFSET_NOT_SET = 1;
const OFFSET_SET = 2;
const OFFSET_NO_DATA = 3;
const READ_SIZE = 8 << 20;

export interface DataOffsets {
  /** Entries whose offset was written (0 when the file was left as it was). */
  written: number;
  /** Why the file was left as it was, when it was. */
  skipped?: string;
}

/** The dump's structure did not match what the walk expected: the file is left as it was. */
class NotAsExpected extends Error {}

/**
 * Reads a file front to back through one buffer, as the integers and strings of the custom format;
 * `skip` moves past bytes without reading them when they are not in the buffer.
 */
class DumpReader {
  pos = 0;
  intSize = 4;
  readonly #buf = Buffer.allocUnsafe(READ_SIZE);
  #start = 0;
  #len = 0;

  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
  ) {}

  async #need(n: number): Promise<number> {
    if (this.pos >= this.#start && this.pos + n <= this.#start + this.#len) return this.pos - this.#start;
    if (this.pos + n > this.size) throw new NotAsExpected(`the file ends at ${this.size} bytes, inside what begins at ${this.pos}`);
    if (n > this.#buf.length) throw new NotAsExpected(`a field of ${n} bytes at ${this.pos}`);
    const { bytesRead } = await this.fh.read(this.#buf, 0, this.#buf.length, this.pos);
    this.#start = this.pos;
    this.#len = bytesRead;
    if (bytesRead < n) throw new NotAsExpected(`the file gave ${bytesRead} bytes at ${this.pos}, ${n} were needed`);
    return 0;
  }

  async byte(): Promise<number> {
    const at = await this.#need(1);
    this.pos++;
    return this.#buf[at]!;
  }

  async int(): Promise<number> {
    return this.intNow() ?? (await this.#need(1 + this.intSize), this.intNow()!);
  }

  /** The next integer when it is in the buffer, else null (nothing read): the walk's fast path. */
  intNow(): number | null {
    const at = this.pos - this.#start;
    if (at < 0 || at + 1 + this.intSize > this.#len) return null;
    let v = 0;
    for (let i = this.intSize; i >= 1; i--) v = v * 256 + this.#buf[at + i]!;
    const negative = this.#buf[at]! !== 0;
    this.pos += 1 + this.intSize;
    return negative ? -v : v;
  }

  /** A string's bytes are skipped, not decoded: only their length matters here. Null is -1. */
  async skipStr(): Promise<number> {
    const n = await this.int();
    if (n > 0) this.skip(n);
    return n;
  }

  skip(n: number): void {
    if (n < 0 || this.pos + n > this.size) throw new NotAsExpected(`${n} bytes at ${this.pos} run past the end of the file (${this.size})`);
    this.pos += n;
  }
}

interface TocEntry {
  dumpId: number;
  /** Where the entry's offset flag byte is. */
  at: number;
  flag: number;
}

/**
 * Writes the offset of every data block of the custom-format dump `file` into its table of
 * contents, unless the dump already has them or is not laid out as expected (see above).
 * I/O errors are thrown; a file that is not as expected is left unchanged and `skipped` says why.
 */
export async function writeDataOffsets(file: string): Promise<DataOffsets> {
  const fh = await open(file, 'r+');
  try {
    const { size } = await fh.stat();
    const r = new DumpReader(fh, size);
    let entries: TocEntry[];
    let offSize: number;
    try {
      ({ entries, offSize } = await readToc(r));
    } catch (err) {
      if (err instanceof NotAsExpected) return { written: 0, skipped: err.message };
      throw err;
    }
    const pending = entries.filter((e) => e.flag === OFFSET_NOT_SET);
    if (pending.length === 0) return { written: 0, skipped: entries.some((e) => e.flag === OFFSET_SET) ? 'the dump has its data offsets already' : 'the dump has no data' };
    let blocks: Array<{ entry: TocEntry; offset: number }>;
    try {
      blocks = await walkBlocks(r, new Map(pending.map((e) => [e.dumpId, e])));
    } catch (err) {
      if (err instanceof NotAsExpected) return { written: 0, skipped: err.message };
      throw err;
    }
    const field = Buffer.alloc(1 + offSize);
    for (const { entry, offset } of blocks) {
      field[0] = OFFSET_SET;
      let v = offset;
      for (let i = 1; i <= offSize; i++) {
        field[i] = v % 256;
        v = Math.floor(v / 256);
      }
      await fh.write(field, 0, field.length, entry.at);
    }
    return { written: blocks.length };
  } finally {
    await fh.close();
  }
}

async function readToc(r: DumpReader): Promise<{ entries: TocEntry[]; offSize: number }> {
  const magic = Buffer.alloc(5);
  for (let i = 0; i < 5; i++) magic[i] = await r.byte();
  if (magic.toString('latin1') !== 'PGDMP') throw new NotAsExpected('not a custom-format dump (no PGDMP at its start)');
  const major = await r.byte();
  const minor = await r.byte();
  await r.byte(); // revision
  if (major !== 1 || minor < MIN_VERSION || minor > MAX_VERSION) throw new NotAsExpected(`archive version ${major}.${minor}, not one this knows (1.${MIN_VERSION} to 1.${MAX_VERSION})`);
  const intSize = await r.byte();
  const offSize = await r.byte();
  // Beyond 6 bytes an integer is not exact in a double; pg_dump writes 4 and 8.
  if (intSize < 1 || intSize > 6 || offSize < 1 || offSize > 8) throw new NotAsExpected(`integer size ${intSize}, offset size ${offSize}`);
  r.intSize = intSize;
  if ((await r.byte()) !== 1) throw new NotAsExpected('not the custom format');
  if (minor >= 15) await r.byte(); // compression algorithm
  else await r.int(); // compression level
  for (let i = 0; i < 7; i++) await r.int(); // the dump's time
  for (let i = 0; i < 3; i++) await r.skipStr(); // database name, server and pg_dump versions
  const count = await r.int();
  if (count < 0) throw new NotAsExpected(`a table of contents of ${count} entries`);
  const entries: TocEntry[] = [];
  for (let i = 0; i < count; i++) {
    const dumpId = await r.int();
    await r.int(); // had a data dumper
    await r.skipStr(); // tableoid
    await r.skipStr(); // oid
    await r.skipStr(); // tag
    await r.skipStr(); // description
    await r.int(); // section
    for (let s = 0; s < (minor >= 14 ? 7 : 6); s++) await r.skipStr(); // definition, drop, copy, namespace, tablespace, [table am,] owner
    await r.skipStr(); // "false" (with oids)
    while ((await r.skipStr()) >= 0); // dependencies, ending with a null
    const at = r.pos;
    const flag = await r.byte();
    if (flag !== OFFSET_NOT_SET && flag !== OFFSET_SET && flag !== OFFSET_NO_DATA) throw new NotAsExpected(`entry ${dumpId}: offset flag ${flag}`);
    r.skip(offSize);
    entries.push({ dumpId, at, flag });
  }
  return { entries, offSize };
}

/** Every data block from the end of the table of contents to the end of the file, each matched to its entry. */
async function walkBlocks(r: DumpReader, pending: Map<number, TocEntry>): Promise<Array<{ entry: TocEntry; offset: number }>> {
  const blocks: Array<{ entry: TocEntry; offset: number }> = [];
  const chunks = async (): Promise<void> => {
    for (;;) {
      // A chunk is a row (pg_dump writes one per row of COPY data): no await per chunk when its
      // length is in the buffer (a million awaits cost more than the reads).
      const n = r.intNow() ?? (await r.int());
      if (n === 0) return;
      if (n < 0) throw new NotAsExpected(`a chunk of ${n} bytes at ${r.pos}`);
      r.skip(n);
    }
  };
  while (r.pos < r.size) {
    const offset = r.pos;
    const type = await r.byte();
    const dumpId = await r.int();
    const entry = pending.get(dumpId);
    if (entry === undefined) throw new NotAsExpected(`a block at ${offset} for entry ${dumpId}, which has no data to place or was placed already`);
    pending.delete(dumpId);
    if (type === BLK_DATA) await chunks();
    else if (type === BLK_BLOBS) {
      while ((await r.int()) !== 0) await chunks();
    } else throw new NotAsExpected(`a block of type ${type} at ${offset}`);
    blocks.push({ entry, offset });
  }
  return blocks;
}
