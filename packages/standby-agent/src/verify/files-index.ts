import {
  TandemError,
  blobAt,
  describeError,
  isTandemError,
  objectKey,
  openPack,
  readFilesIndex,
  type FilesKey,
  type Logger,
  type PackInfo,
  type ReadIndexOptions,
  fetchPackStored,
  objectMissing as missing,
  objectWrongSize as wrongSize,
  pageLoader,
} from '@tandem/shared';
import { artifactLabel, streamArtifact, type ArtifactSource } from '../apply/artifact-stream.js';

/**
 * The restore drill of a set whose files are content objects (a files index, cas/files-index.ts):
 *
 * - The index, always: downloaded and verified against the signed manifest like any artifact, then
 *   decrypted and read to its end line with readFilesIndex, every rule an apply applies (paths,
 *   order, parents, blobs inside their packs, sizes that add up, the end line's counts, limits).
 * - Its objects, by default: one listing per `<site>/objects/<xx>/` directory the set uses (at most
 *   256, whatever the number of packs; one directory's listing in memory at a time, a few at once):
 *   each pack must be there with the stored size the signed index gives. Nothing is downloaded, so
 *   a pack altered in place, or swapped for one of the same size, is not seen.
 * - Its objects, with `--read-data`: every pack the index lists downloaded (a few at a time: memory
 *   is a few packs, never the set) and opened as an apply opens it (openPack: stored size and
 *   SHA-256 before a byte is decrypted, inflated to exactly the signed plain size), and every blob
 *   the index refers to checked against its id under the files key (blobAt).
 *
 * Every object is checked even after one failed; each failure names the object and the files that
 * use it (found by reading the index once more, only when something failed).
 */
const LIST_AT_ONCE = 4;
const READ_AT_ONCE = 2;
/** Files named per failed object; the rest are counted. */
const FILES_NAMED = 5;

export interface IndexSummary {
  files: number;
  directories: number;
  symlinks: number;
  /** Packs the index lists, and their stored bytes. */
  packs: number;
  packBytes: number;
}

export interface ObjectProblem {
  id: string;
  key: string;
  code?: string;
  error: string;
  hint?: string;
  /** Files of the set that use the object (the first few), and how many more do. */
  files: string[];
  moreFiles: number;
}

export interface ObjectsCheck {
  /** listed: each pack exists with its signed size; read: each pack opened and every blob used checked. */
  mode: 'listed' | 'read';
  /** Packs checked, and their stored bytes (as listed, or as read). */
  packs: number;
  bytes: number;
  /** Blobs checked against their ids (read only). */
  blobs?: number;
  problems: ObjectProblem[];
  seconds: number;
}

export interface FilesIndexCheck {
  entries: number;
  fileBytes: number;
  seconds: number;
  index: IndexSummary;
  objects: ObjectsCheck;
  /** The error of the first object that failed, for the exit status. */
  firstError?: unknown;
}

export interface FilesIndexOptions {
  scratch: string;
  maxEntries: number;
  maxBytes?: number;
  readData: boolean;
  filesKey: FilesKey | null;
  configFile: string;
  logger: Logger;
}

export async function checkFilesIndex(src: ArtifactSource, o: FilesIndexOptions): Promise<FilesIndexCheck> {
  const { manifest, entry } = src;
  const label = artifactLabel(manifest, entry);
  // As an apply: without the files key this standby cannot use the set, whatever its objects.
  if (o.filesKey === null) {
    throw new TandemError('config', 'FILES_KEY_MISSING', `set ${manifest.setId} stores its files as content objects, and this standby has no files key (keys.filesKeyFile in ${o.configFile}): it cannot apply the set`, {
      hint: "copy files.agekey from the primary's keys directory (mode 0600) and name it as keys.filesKeyFile",
    });
  }
  const filesKey = o.filesKey;
  const packs: PackInfo[] = [];
  const refs = o.readData ? new BlobRefs() : undefined;
  const index: IndexSummary = { files: 0, directories: 0, symlinks: 0, packs: 0, packBytes: 0 };
  let entries = 0;
  let fileBytes = 0;
  const read = await streamArtifact(src, o.scratch, async (plain) => {
    const gen = readFilesIndex(plain, indexOptions(label, src, o, refs), packs);
    for await (const e of gen) {
      entries++;
      if (e.t === 'd') index.directories++;
      else if (e.t === 'l') index.symlinks++;
      else {
        index.files++;
        fileBytes += e.s;
        if (refs) for (const [pack, off, len, id] of e.b) refs.add(pack, off, len, id);
      }
    }
  });
  index.packs = packs.length;
  index.packBytes = packs.reduce((n, p) => n + p.size, 0);
  o.logger.info({ artifact: entry.name, entries, files: index.files, packs: index.packs, seconds: read.seconds }, 'files index verified');

  const t0 = performance.now();
  const failed = new Map<number, unknown>();
  let objects: ObjectsCheck;
  if (refs) {
    const identities = entry.encryption === 'age' ? src.identities : null;
    const r = await readObjects(src, packs, refs, filesKey, identities, label, failed);
    objects = { mode: 'read', packs: packs.length, bytes: r.bytes, blobs: r.blobs, problems: [], seconds: 0 };
  } else {
    const bytes = await listObjects(src, packs, failed);
    objects = { mode: 'listed', packs: packs.length, bytes, problems: [], seconds: 0 };
  }
  objects.seconds = Math.round(performance.now() - t0) / 1000;

  let firstError: unknown;
  if (failed.size > 0) {
    const users = await filesUsing(src, o, packs, new Set(failed.keys()));
    for (const [ord, err] of [...failed].sort((a, b) => a[0] - b[0])) {
      firstError ??= err;
      const id = packs[ord]!.id;
      const u = users.get(ord);
      objects.problems.push({
        id,
        key: objectKey(manifest.site, id),
        ...(isTandemError(err) ? { code: err.code } : {}),
        error: describeError(err),
        ...(isTandemError(err) && err.hint !== undefined ? { hint: err.hint } : {}),
        files: u?.named ?? [],
        moreFiles: u ? u.count - u.named.length : 0,
      });
    }
  } else {
    o.logger.info({ artifact: entry.name, packs: objects.packs, bytes: objects.bytes, blobs: objects.blobs, mode: objects.mode, seconds: objects.seconds }, 'objects verified');
  }
  return { entries, fileBytes, seconds: Math.round((read.seconds + objects.seconds) * 1000) / 1000, index, objects, firstError };
}

/** How the index is read: as an apply reads it, its pages loaded (and checked) as it goes. */
const indexOptions = (label: string, src: ArtifactSource, o: FilesIndexOptions, refs?: BlobRefs): ReadIndexOptions => ({
  label,
  site: src.manifest.site,
  setId: src.manifest.setId,
  maxEntries: o.maxEntries,
  ...(o.maxBytes === undefined ? {} : { maxBytes: o.maxBytes }),
  pages: pageLoader(src.filestore, src.manifest.site, {
    identities: src.entry.encryption === 'age' ? src.identities : null,
    hmacKey: o.filesKey!.hmacKey,
    label,
    signal: src.signal,
  }),
  // With --read-data the pages are read again with the rest, as objects the set references.
  ...(refs ? { onPage: (pack: number, off: number, len: number, id: string) => refs.add(pack, off, len, id) } : {}),
});

/** Runs `fn` on each item, at most `n` at once. */
async function eachAtMost<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

/** Existence and stored size of each pack, from one listing per objects directory the set uses; returns the listed bytes. */
async function listObjects(src: ArtifactSource, packs: PackInfo[], failed: Map<number, unknown>): Promise<number> {
  const { filestore: fs, manifest, entry } = src;
  const label = artifactLabel(manifest, entry);
  const byDir = new Map<string, number[]>();
  packs.forEach((p, ord) => {
    const dir = p.id.slice(0, 2);
    const list = byDir.get(dir);
    if (list) list.push(ord);
    else byDir.set(dir, [ord]);
  });
  let bytes = 0;
  await eachAtMost([...byDir], LIST_AT_ONCE, async ([dir, ords]) => {
    let listed: Map<string, number>;
    try {
      listed = new Map((await fs.list(`${manifest.site}/objects/${dir}/`, { signal: src.signal })).map((x) => [x.key, x.size]));
    } catch (err) {
      for (const ord of ords) failed.set(ord, err);
      return;
    }
    for (const ord of ords) {
      const info = packs[ord]!;
      const size = listed.get(objectKey(manifest.site, info.id));
      if (size === undefined) failed.set(ord, missing(label, info, fs.description));
      else if (size !== info.size) failed.set(ord, wrongSize(label, info, size));
      else bytes += size;
    }
  });
  return bytes;
}

/** Every pack downloaded, opened and every blob used checked, a few packs at a time. */
async function readObjects(
  src: ArtifactSource,
  packs: PackInfo[],
  refs: BlobRefs,
  filesKey: FilesKey,
  identities: string[] | null,
  label: string,
  failed: Map<number, unknown>,
): Promise<{ bytes: number; blobs: number }> {
  const { filestore: fs, manifest } = src;
  const grouped = refs.byPack(packs.length);
  let bytes = 0;
  let blobs = 0;
  await eachAtMost([...packs.keys()], READ_AT_ONCE, async (ord) => {
    const info = packs[ord]!;
    try {
      const stored = Buffer.concat(await fetchPackStored(fs, manifest.site, info, { label, signal: src.signal }));
      const plain = await openPack(stored, info, { identities, label });
      let checked = 0;
      for (const b of grouped.of(ord)) {
        blobAt(plain, b, filesKey.hmacKey, `${label}: object ${info.id}`);
        checked++;
      }
      bytes += info.size;
      blobs += checked;
    } catch (err) {
      failed.set(ord, err);
    }
  });
  return { bytes, blobs };
}

/** The files that use each failed pack: the index read once more (it verifies as before, or this says so). */
async function filesUsing(src: ArtifactSource, o: FilesIndexOptions, packs: PackInfo[], ords: Set<number>): Promise<Map<number, { named: string[]; count: number }>> {
  const { manifest, entry } = src;
  const label = artifactLabel(manifest, entry);
  const out = new Map<number, { named: string[]; count: number }>();
  try {
    await streamArtifact(src, o.scratch, async (plain) => {
      for await (const e of readFilesIndex(plain, indexOptions(label, src, o), [])) {
        if (e.t !== 'f') continue;
        for (const ord of new Set(e.b.map((b) => b[0]))) {
          if (!ords.has(ord)) continue;
          const u = out.get(ord) ?? { named: [], count: 0 };
          if (u.named.length < FILES_NAMED) u.named.push(e.p);
          u.count++;
          out.set(ord, u);
        }
      }
    });
  } catch (err) {
    o.logger.warn({ err, packs: packs.length }, `${label}: the index could not be read again to name the files of the failed objects`);
  }
  return out;
}

/**
 * The blob references of an index, grouped by pack when asked: 44 bytes each in one buffer (pack,
 * offset, length, id), not an object per blob, so that a set of a million files is tens of MB.
 * Offsets and lengths fit 32 bits: readFilesIndex keeps every blob inside its pack, and a pack's
 * plaintext is at most MAX_PACK_PLAIN.
 */
class BlobRefs {
  static readonly SIZE = 44;
  #buf = Buffer.alloc(BlobRefs.SIZE * 1024);
  #n = 0;

  add(pack: number, offset: number, length: number, id: string): void {
    if ((this.#n + 1) * BlobRefs.SIZE > this.#buf.length) {
      const bigger = Buffer.alloc(this.#buf.length * 2);
      this.#buf.copy(bigger);
      this.#buf = bigger;
    }
    const at = this.#n++ * BlobRefs.SIZE;
    this.#buf.writeUInt32BE(pack, at);
    this.#buf.writeUInt32BE(offset, at + 4);
    this.#buf.writeUInt32BE(length, at + 8);
    this.#buf.write(id, at + 12, 32, 'hex');
  }

  /** The references by pack ordinal (a counting sort), each distinct reference once. */
  byPack(packs: number): { of(ord: number): Iterable<{ id: string; offset: number; length: number }> } {
    const buf = this.#buf;
    const n = this.#n;
    const start = new Uint32Array(packs + 1);
    for (let i = 0; i < n; i++) start[buf.readUInt32BE(i * BlobRefs.SIZE) + 1]!++;
    for (let p = 0; p < packs; p++) start[p + 1]! += start[p]!;
    const fill = start.slice(0, packs);
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[fill[buf.readUInt32BE(i * BlobRefs.SIZE)]!++] = i;
    return {
      *of(ord: number) {
        const seen = new Set<string>();
        for (let k = start[ord]!; k < start[ord + 1]!; k++) {
          const at = order[k]! * BlobRefs.SIZE;
          const key = buf.toString('hex', at + 4, at + BlobRefs.SIZE);
          if (seen.has(key)) continue; // the same blob used by several files: checked once
          seen.add(key);
          yield { offset: buf.readUInt32BE(at + 4), length: buf.readUInt32BE(at + 8), id: buf.toString('hex', at + 12, at + BlobRefs.SIZE) };
        }
      },
    };
  }
}
