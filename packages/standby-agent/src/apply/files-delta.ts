import { chmod, lstat, mkdir, open, readFile, readlink, rename, rm, symlink, lutimes, utimes } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import {
  OPEN_NEW_FILE,
  TandemError,
  acquireLock,
  blobAt,
  deltaIndexId,
  isNotFound,
  layout,
  loadFilesKeyFile,
  loadIdentities,
  openDelta,
  openPack,
  readFilesIndex,
  verifyDelta,
  writeFileAtomic,
  type Filestore,
  type LatestPointer,
  type Logger,
  type PackInfo,
  type StandbyConfig,
  type TreeEntry,
  fetchPackStored,
} from '@tandem/shared';
import type { KeyObject } from 'node:crypto';
import { blobsDigest, lstatOrNull, recordBlobs, recordDeltaLines, utimeOf } from './files-objects.js';
import { readApplied, stateFiles } from './state.js';
import { targetsFor } from './targets.js';

/**
 * Applying files deltas (cas/delta.ts) on top of the applied set: each new or changed file built
 * beside the live tree from verified packs (the same checks as an apply: the delta by signature and
 * by what it must be, each pack by its signed SHA-256 before decryption, each blob by its id), then
 * renamed into place, so a reader sees the old file or the new one. Directories above them are made
 * or checked first (never a path through a symlink this did not just check). Removals wait for the
 * next set. `files-delta.json` in the state dir says which delta of which set is applied; a delta
 * killed half way is applied again whole (every step can be repeated).
 */
export const DELTA_STATE = 'files-delta.json';

export interface DeltaState {
  setId: string;
  n: number;
  /** When the primary committed the newest applied delta. */
  committedAt: string;
  appliedAt: string;
}

export async function readDeltaState(stateDir: string): Promise<DeltaState | null> {
  try {
    return JSON.parse(await readFile(join(stateDir, DELTA_STATE), 'utf8')) as DeltaState;
  } catch {
    return null;
  }
}

/** The deltas of the applied set that latest.json names and this standby has not applied: 0 when none (or the set is not applied yet). */
export async function pendingDeltas(config: StandbyConfig, latest: LatestPointer | null): Promise<number> {
  if (!latest?.files) return 0;
  const applied = await readApplied(config.stateDir);
  if (applied?.setId !== latest.setId) return 0;
  const state = await readDeltaState(config.stateDir);
  const done = state?.setId === latest.setId ? state.n : 0;
  return Math.max(0, latest.files.delta - done);
}

export interface DeltaApplied {
  setId: string;
  from: number;
  to: number;
  files: number;
}

/**
 * Applies the deltas latest.json names on top of the applied set, in order. null: nothing to do, or
 * an apply or promote holds the lock (the daemon tries again at its next look).
 */
export async function applyFilesDeltas(config: StandbyConfig, o: { filestore: Filestore; latest: LatestPointer; verifyKey: KeyObject; logger: Logger; signal?: AbortSignal }): Promise<DeltaApplied | null> {
  const { latest, filestore: fs } = o;
  if (!latest.files || config.keys.filesKeyFile === undefined) return null;
  const lock = await acquireLock(stateFiles(config.stateDir).lock, 'files delta', `an apply or promote of site "${config.site}"`).catch(() => null);
  if (lock === null) return null;
  try {
    const applied = await readApplied(config.stateDir);
    if (applied?.setId !== latest.setId) return null;
    const state = await readDeltaState(config.stateDir);
    const from = (state?.setId === latest.setId ? state.n : 0) + 1;
    if (from > latest.files.delta) return null;
    const filesKey = loadFilesKeyFile(config.keys.filesKeyFile, o.logger);
    const identities = config.keys.identityFile === undefined ? [] : loadIdentities(config.keys.identityFile, o.logger);
    const live = (await targetsFor(config)).dirs.files.live;
    const work = join(dirname(live), `${basename(live)}.tandem-delta`);
    let files = 0;
    for (let n = from; n <= latest.files.delta; n++) {
      const key = layout.delta(config.site, latest.setId, n);
      const label = `files delta ${n} of set ${latest.setId}`;
      let raw: Buffer;
      try {
        raw = (await fs.getBuffer(key, { signal: o.signal })).body;
      } catch (err) {
        if (isNotFound(err)) throw new TandemError('integrity', 'DELTA_MISSING', `${label} is missing from ${fs.description}: latest.json names it`, { cause: err });
        throw err;
      }
      const doc = verifyDelta(raw, o.verifyKey, { site: config.site, setId: latest.setId, n }, label);
      if (doc.encryption === 'none' && config.encryption === 'age') {
        throw new TandemError('integrity', 'SET_UNENCRYPTED', `${label} is not encrypted, but this standby expects age-encrypted sets`);
      }
      const plain = await openDelta(doc, identities, label);
      const packs: PackInfo[] = [];
      const entries: TreeEntry[] = [];
      for await (const e of readFilesIndex(Readable.from([plain]), { label, site: config.site, setId: deltaIndexId(latest.setId, n), maxEntries: config.limits.maxEntries, maxBytes: config.limits.maxBytes }, packs)) {
        entries.push(e);
      }
      await rm(work, { recursive: true, force: true });
      await mkdir(work, { mode: 0o700 });
      // Every new or changed file built in full beside the live tree before any is renamed in.
      const cache = new Map<number, Buffer>();
      const packPlain = async (ord: number): Promise<Buffer> => {
        const hit = cache.get(ord);
        if (hit) return hit;
        const info = packs[ord]!;
        const body = Buffer.concat(await fetchPackStored(fs, config.site, info, { label, signal: o.signal }));
        const p = await openPack(body, info, { identities: doc.encryption === 'age' ? identities : null, label });
        if (cache.size >= 4) cache.delete(cache.keys().next().value!);
        cache.set(ord, p);
        return p;
      };
      const staged = new Map<string, string>();
      for (const [i, e] of entries.entries()) {
        if (e.t !== 'f') continue;
        const tmp = join(work, String(i));
        const fh = await open(tmp, OPEN_NEW_FILE, 0o600);
        try {
          for (const [ord, off, len, id] of e.b) await fh.write(blobAt(await packPlain(ord), { id, offset: off, length: len }, filesKey.hmacKey, `${label}: ${JSON.stringify(e.p)}`));
        } finally {
          await fh.close();
        }
        await chmod(tmp, e.m);
        await utimes(tmp, utimeOf(e.mt), utimeOf(e.mt));
        staged.set(e.p, tmp);
      }
      // Then into place, in index order (each directory made or checked before what it holds).
      await mkdir(live, { recursive: true });
      const record: string[] = [];
      for (const [i, e] of entries.entries()) {
        const target = join(live, e.p);
        const there = await lstatOrNull(target);
        if (e.t === 'd') {
          if (there && !there.isDirectory()) await rm(target, { recursive: true, force: true });
          if (!there || !there.isDirectory()) await mkdir(target, { mode: e.m });
          await chmod(target, e.m);
        } else if (e.t === 'f') {
          if (there?.isDirectory()) await rm(target, { recursive: true, force: true });
          await rename(staged.get(e.p)!, target);
          const st = await lstat(target, { bigint: true });
          record.push(JSON.stringify({ p: e.p, d: blobsDigest(e), s: e.s, ino: String(st.ino), ct: String(st.ctimeNs), b: recordBlobs(e) }));
          files++;
        } else {
          if (there?.isSymbolicLink() && (await readlink(target)) === e.l) continue;
          if (there?.isDirectory()) await rm(target, { recursive: true, force: true });
          const tmp = join(work, `l${i}`);
          await symlink(e.l, tmp);
          await lutimes(tmp, utimeOf(e.mt), utimeOf(e.mt));
          await rename(tmp, target);
          files++;
        }
      }
      // The record learns the new files (each line wins over the record's of its path when read).
      await recordDeltaLines(config.stateDir, record);
      await writeFileAtomic(join(config.stateDir, DELTA_STATE), `${JSON.stringify({ setId: latest.setId, n, committedAt: doc.committedAt, appliedAt: new Date().toISOString() } satisfies DeltaState)}\n`);
      await rm(work, { recursive: true, force: true });
      o.logger.info({ setId: latest.setId, delta: n, entries: doc.entries }, 'files delta applied');
    }
    return { setId: latest.setId, from, to: latest.files.delta, files };
  } finally {
    await lock.release();
  }
}
