import { Readable } from 'node:stream';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ChunkerStream,
  MAX_CHUNK,
  SMALL_CHUNK_SIZES,
  chunkSizesFor,
  FILES_INDEX_FORMAT,
  FILES_INDEX_V1,
  PACK_TARGET,
  RESERVED_NAME,
  TandemError,
  acquireLock,
  assertNotFenced,
  comparePaths,
  cutPoint,
  deltaIndexId,
  indexLine,
  layout,
  objectId,
  objectKey,
  packId,
  readEpochDoc,
  readVerifiedLatest,
  sealDelta,
  sealPack,
  signLatest,
  verifyManifest,
  type BlobRef,
  type FilesKey,
  type Filestore,
  type LatestPointer,
  type Logger,
  type PackInfo,
  type PrimaryConfig,
  type TreeEntry,
} from '@tandem/shared';
import { stateFiles } from '../state-files.js';
import { primaryIdentity } from './epoch.js';
import { readSetFilesIndex } from './read-files-index.js';
import { appendDeltaToCache, type CachedDeltaFile } from './files-objects.js';

/**
 * Files deltas (cas/delta.ts): the new and changed files the daemon's watcher saw settle, committed
 * on top of the newest set, so that they reach the standbys in seconds. One delta at a time, under
 * the backup lock (a backup or a switchover hold makes the watcher wait: "busy"), fenced like a
 * backup (checked before the packs and before latest.json moves), in the order of the set: packs,
 * then the signed delta document, then latest.json naming it. A kill at any point leaves at most
 * packs no set names (collected as garbage) or a delta document latest.json does not name yet
 * (written again under the same name by the next delta).
 */
export const MAX_DELTA_ENTRIES = 1000;

interface Loc {
  info: PackInfo;
  offset: number;
  length: number;
}

export interface DeltaCommitted {
  setId: string;
  n: number;
  entries: number;
  newBytes: number;
  latest: LatestPointer;
}

export class FilesDeltaWriter {
  /** The set the deltas build on, and the blobs stored for it (its index's, and the deltas' since). */
  #base: string | null = null;
  #known = new Map<string, Loc>();
  readonly #verifyKey: KeyObject;
  readonly #cacheMemo: { ino?: number; size?: number; ordinals?: Map<string, number> } = {};

  constructor(
    private readonly o: {
      config: PrimaryConfig;
      fs: Filestore;
      signingKey: KeyObject;
      recipients: string[] | null;
      filesKey: FilesKey;
      logger: Logger;
    },
  ) {
    this.#verifyKey = createPublicKey(o.signingKey);
  }

  /**
   * Commits the settled paths (relative to paths.files) as the next delta. null: nothing to do (no
   * set yet, a set of tar files, every path gone). Throws kind 'busy' while a backup or a
   * switchover hold has the lock, 'fenced' when another primary took over.
   */
  async commit(paths: string[], signal?: AbortSignal): Promise<DeltaCommitted | null> {
    const { config, fs } = this.o;
    const lock = await acquireLock(stateFiles(config.stateDir).backupLock, 'files delta', `a backup of site "${config.site}"`).catch((err: unknown) => {
      throw new TandemError('busy', 'BUSY', `files delta waits: ${(err as Error).message}`, { cause: err });
    });
    try {
      const verified = await readVerifiedLatest(fs, config.site, this.#verifyKey, { signal });
      if (verified === null) return null;
      const latest = verified.latest;
      const self = primaryIdentity(config);
      const checkFence = async () => {
        const current = await readEpochDoc(fs, config.site, { signal });
        if (current) assertNotFenced(current.doc, { ...self, epoch: latest.epoch }, config.site);
      };
      await checkFence();
      if (this.#base !== latest.setId && !(await this.#rebase(latest.setId, signal))) return null;
      const n = (latest.files?.delta ?? 0) + 1;
      const entries = await this.#entries(paths);
      const changed = entries.filter((e) => e.entry.t !== 'd').length;
      if (changed === 0) return null;

      // New blobs into packs, uploaded before anything names them.
      let newBytes = 0;
      let pending: Array<{ id: string; data: Buffer; locs: Array<{ set: (l: Loc) => void }> }> = [];
      let pendingBytes = 0;
      const waiting = new Map<string, Array<(l: Loc) => void>>();
      const flush = async () => {
        if (pending.length === 0) return;
        const sealed = await sealPack(pending, { hmacKey: this.o.filesKey.hmacKey, recipients: this.o.recipients });
        for (let attempt = 1; (await fs.stat(objectKey(config.site, sealed.info.id), { signal })) !== null; attempt++) {
          sealed.info.id = packId(this.o.filesKey.hmacKey, sealed.blobs.map((b) => b.id), attempt);
        }
        await checkFence();
        await fs.put(objectKey(config.site, sealed.info.id), Readable.from(sealed.pieces), { signal, contentLength: sealed.info.size, contentType: 'application/octet-stream' });
        for (const b of sealed.blobs) {
          const loc = { info: sealed.info, offset: b.offset, length: b.length };
          this.#known.set(b.id, loc);
          for (const cb of waiting.get(b.id) ?? []) cb(loc);
        }
        pending = [];
        pendingBytes = 0;
        waiting.clear();
      };
      const lines: Array<{ entry: TreeEntry; blobs: Array<{ id: string; loc?: Loc }> }> = [];
      for (const e of entries) {
        const blobs: Array<{ id: string; loc?: Loc }> = [];
        let size = 0;
        for await (const data of e.file === undefined ? [] : blobsOf(e.file.full, e.file.size)) {
          size += data.length;
          const id = objectId(this.o.filesKey.hmacKey, data);
          const have = this.#known.get(id);
          const ref: { id: string; loc?: Loc } = { id, loc: have };
          blobs.push(ref);
          if (have) continue;
          const w = waiting.get(id);
          if (w) {
            w.push((l) => (ref.loc = l));
            continue;
          }
          if (pendingBytes + data.length > PACK_TARGET && pending.length > 0) await flush();
          pending.push({ id, data, locs: [] });
          pendingBytes += data.length;
          newBytes += data.length;
          waiting.set(id, [(l) => (ref.loc = l)]);
        }
        if (e.entry.t === 'f') e.entry.s = size;
        lines.push({ entry: e.entry, blobs });
      }
      await flush();

      const ordinals = new Map<string, number>();
      const out: Buffer[] = [indexLine({ t: 'h', format: FILES_INDEX_FORMAT, version: FILES_INDEX_V1, site: config.site, setId: deltaIndexId(latest.setId, n), chunking: SMALL_CHUNK_SIZES })];
      let bytes = 0;
      for (const l of lines) {
        for (const b of l.blobs) {
          if (!ordinals.has(b.loc!.info.id)) {
            ordinals.set(b.loc!.info.id, ordinals.size);
            out.push(indexLine({ t: 'o', ...b.loc!.info }));
          }
        }
        if (l.entry.t === 'f') {
          const refs = l.blobs.map((b): BlobRef => [ordinals.get(b.loc!.info.id)!, b.loc!.offset, b.loc!.length, b.id]);
          bytes += l.entry.s;
          out.push(indexLine({ ...l.entry, b: refs }));
        } else out.push(indexLine(l.entry));
      }
      out.push(indexLine({ t: 'e', entries: lines.length, objects: ordinals.size, bytes }));
      const committedAt = new Date().toISOString();
      const recipients = this.o.recipients ? [...this.o.recipients, this.o.filesKey.recipient] : null;
      const doc = await sealDelta({ site: config.site, setId: latest.setId, n, epoch: latest.epoch, committedAt, entries: changed }, Buffer.concat(out), { recipients, signingKey: this.o.signingKey });
      await checkFence();
      await fs.putBuffer(layout.delta(config.site, latest.setId, n), doc, { signal, contentType: 'application/json' });
      await checkFence();
      const next: LatestPointer = { ...latest, files: { delta: n, committedAt } };
      await fs.putBuffer(layout.latest(config.site), signLatest(next, this.o.signingKey), { signal, contentType: 'application/json' });
      this.o.logger.info({ setId: latest.setId, delta: n, entries: changed, paths: paths.length, newBytes }, 'files delta committed');
      // The cache learns what the delta stored: the next set neither reads nor uploads it again.
      const cached: CachedDeltaFile[] = [];
      for (const [i, l] of lines.entries()) {
        const f = entries[i]!.file;
        if (l.entry.t === 'f' && f) cached.push({ p: l.entry.p, s: l.entry.s, ns: f.ns, ino: f.ino, blobs: l.blobs.map((b) => ({ info: b.loc!.info, offset: b.loc!.offset, length: b.loc!.length, id: b.id })) });
      }
      await appendDeltaToCache(config.stateDir, config.site, latest.setId, cached, this.#cacheMemo).catch((err: unknown) =>
        this.o.logger.warn({ err }, 'could not add the files delta to the files cache (the next set reads those files again)'),
      );
      return { setId: latest.setId, n, entries: changed, newBytes, latest: next };
    } finally {
      await lock.release();
    }
  }

  /** The blobs stored for a new base set: those of its index. false: the set's files are a tar. */
  async #rebase(setId: string, signal?: AbortSignal): Promise<boolean> {
    const { fs, config } = this.o;
    const manifest = verifyManifest((await fs.getBuffer(layout.manifest(config.site, setId), { signal })).body, this.#verifyKey, `set ${setId}: manifest`);
    const known = new Map<string, Loc>();
    const packs = await readSetFilesIndex(fs, manifest, this.o.filesKey, (e, infos) => {
      if (e.t === 'f') for (const [p, offset, length, id] of e.b) known.set(id, { info: infos[p]!, offset, length });
    }, signal);
    if (packs === null) return false;
    this.#base = setId;
    this.#known = known;
    return true;
  }

  /** The entries for the paths (and every directory above them), in index order; vanished paths left out. */
  async #entries(paths: string[]): Promise<Array<{ entry: TreeEntry; file?: { full: string; size: number; ns: string; ino: string } }>> {
    const root = this.o.config.paths.files;
    const want = new Set<string>();
    for (const raw of paths) {
      const p = raw.split('/').filter((s) => s !== '' && s !== '.').join('/');
      if (p === '' || p.split('/').some((s) => s === '..' || RESERVED_NAME.test(s))) continue;
      const parts = p.split('/');
      for (let i = 1; i <= parts.length; i++) want.add(parts.slice(0, i).join('/'));
    }
    const out: Array<{ entry: TreeEntry; file?: { full: string; size: number; ns: string; ino: string } }> = [];
    const gone = new Set<string>();
    for (const p of [...want].sort(comparePaths)) {
      const parent = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
      if (parent !== '' && gone.has(parent)) {
        gone.add(p);
        continue;
      }
      const full = join(root, p);
      const st = await lstat(full, { bigint: true }).catch(() => null);
      if (st === null || (!st.isDirectory() && !st.isFile() && !st.isSymbolicLink()) || p.includes('\uFFFD')) {
        gone.add(p);
        continue;
      }
      const m = Number(st.mode & 0o7777n);
      const mt = Number(st.mtimeNs / 1000n) / 1000;
      if (st.isDirectory()) out.push({ entry: { t: 'd', p, m, mt } });
      else if (st.isSymbolicLink()) out.push({ entry: { t: 'l', p, m, mt, l: await readlink(full) } });
      else out.push({ entry: { t: 'f', p, m, mt, s: Number(st.size), b: [] }, file: { full, size: Number(st.size), ns: String(st.mtimeNs), ino: String(st.ino) } });
    }
    // A directory whose parent went is not in the delta either (readers need each entry's parent).
    return out;
  }
}

/** A file's blobs as it is read: whole when small, through the chunker when large (bounded memory). */
async function* blobsOf(full: string, size: number): AsyncGenerator<Buffer> {
  const sizes = chunkSizesFor(size);
  if (size <= MAX_CHUNK) {
    const data = await readFile(full);
    for (let start = 0; start < data.length; ) {
      const len = cutPoint(data, start, data.length, sizes);
      yield data.subarray(start, start + len);
      start += len;
    }
    return;
  }
  yield* createReadStream(full, { highWaterMark: 1 << 20 }).pipe(new ChunkerStream(sizes)) as AsyncIterable<Buffer>;
}
