import type { KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { Readable } from 'node:stream';
import {
  deltaIndexId,
  openDelta,
  readFilesIndex,
  verifyDelta,
  OBJECT_ID_PATTERN,
  TandemError,
  describeError,
  formatBytes,
  formatDuration,
  isNotFound,
  layout,
  listSetDirs,
  loadFilesKeyFile,
  pidAlive,
  verifyManifest,
  type FilesKey,
  type Filestore,
  type ListedSet,
  type LockInfo,
  type Logger,
  type ObjectInfo,
  type PackInfo,
  type PrimaryConfig,
} from '@tandem/shared';
import { readSetFilesIndex } from '../backup/read-files-index.js';
import { stateFiles } from '../state-files.js';
import { deleteEach } from './delete-each.js';

/**
 * Garbage collection of content objects (<site>/objects/, cas/pack.ts): after retention has deleted
 * sets, an object that no remaining committed set's files index references is deleted, unless it is
 * younger than the grace period.
 *
 * The references come only from signed data: each committed set's manifest is verified with the
 * primary's public key, and its index is read through it (size and SHA-256 as signed, then
 * decrypted with the files key, then checked line by line). If any committed set's manifest or
 * index cannot be read or verified, no object is deleted: an object deleted on partial knowledge
 * could be one that set needs, and a set without its objects cannot be applied.
 *
 * What else may reference an object, and why it is safe:
 * - a backup running on this host when collection starts holds the backup lock: then nothing is
 *   collected (it may have run longer than the grace, and its cache may name packs of a set that
 *   retention has just deleted);
 * - a backup that starts later (the lock is looked at after retention has deleted its sets, before
 *   anything is read) uploads packs younger than the grace, and reuses only packs of a set still
 *   committed when it started, which collection reads as a reference;
 * - a backup on another host (there should be none) is covered by the grace alone;
 * - an uncommitted set (no manifest) is no reference: a standby never applies it, and its objects
 *   go once older than the grace.
 * The grace is measured against the object's modified time as the filestore LIST reports it, so
 * against the wall clock (the filestore's), not a scheduler's.
 *
 * Objects are deleted one at a time after everything was read: a run cut short at any point leaves
 * garbage for the next run, never a set that names a missing object.
 */
export const OBJECTS_GRACE_MS = 6 * 60 * 60 * 1000;

export interface Tally {
  objects: number;
  bytes: number;
}

export interface ObjectsGcOutcome {
  dryRun: boolean;
  graceMs: number;
  /** Nothing was looked at, and why (a backup is running); the next run collects. */
  skipped?: string;
  /** A committed set's references could not be read: no object was deleted. */
  blocked?: string;
  /** Committed sets whose references were read. */
  sets: number;
  /** Everything under <site>/objects/ that is an object. */
  stored: Tally;
  /** Stored objects some committed set references: kept. */
  referenced: Tally;
  /** Unreferenced objects younger than the grace: kept (a backup may be about to reference them). */
  young: Tally;
  /** Unreferenced objects older than the grace: deleted, or in a dry run what would be. */
  garbage: Tally;
  deleted: Tally;
  /** Deletions that failed (the objects are retried next time). */
  failed: number;
  /** Objects a committed set references that are not in the filestore (that set cannot be applied). */
  missing: number;
  /** Keys under <site>/objects/ that are not object keys: left alone. */
  strays: number;
}

const zero = (): Tally => ({ objects: 0, bytes: 0 });
const add = (t: Tally, bytes: number): void => {
  t.objects++;
  t.bytes += bytes;
};

/** An object under <site>/objects/ with its id. */
export interface StoredObject extends ObjectInfo {
  id: string;
}

/** Everything under <site>/objects/: the objects (`<xx>/<id>`), and any other key (strays). */
export async function listStoredObjects(fs: Filestore, site: string, signal?: AbortSignal): Promise<{ objects: StoredObject[]; strays: ObjectInfo[] }> {
  const prefix = layout.objects(site);
  const objects: StoredObject[] = [];
  const strays: ObjectInfo[] = [];
  for (const o of await fs.list(prefix, { signal })) {
    const [dir, id, ...more] = o.key.slice(prefix.length).split('/');
    if (more.length === 0 && id !== undefined && OBJECT_ID_PATTERN.test(id) && dir === id.slice(0, 2)) objects.push({ ...o, id });
    else strays.push(o);
  }
  return { objects, strays };
}

/**
 * The packs a committed set references: its manifest verified (signature, set id, site), its files
 * index read through it. null: the set's files are a tar (it references no object); undefined: the
 * manifest is gone (the set was deleted meanwhile, so it references nothing).
 */
export async function readSetPacks(fs: Filestore, site: string, setId: string, verifyKey: KeyObject, filesKey: FilesKey, signal?: AbortSignal): Promise<PackInfo[] | null | undefined> {
  const where = `${fs.description}/${layout.manifest(site, setId)}`;
  let raw: Buffer;
  try {
    raw = (await fs.getBuffer(layout.manifest(site, setId), { signal })).body;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  const m = verifyManifest(raw, verifyKey, where);
  if (m.setId !== setId) throw new TandemError('integrity', 'MANIFEST_MISMATCH', `${where} names set ${m.setId} (copied from another set)`);
  if (m.site !== site) throw new TandemError('integrity', 'MANIFEST_MISMATCH', `${where} is for site "${m.site}"`);
  const packs = await readSetFilesIndex(fs, m, filesKey, undefined, signal);
  if (packs === null) return null;
  packs.push(...(await readDeltaPacks(fs, site, setId, verifyKey, filesKey, signal)));
  // An index lists a pack once; a repeated line would count its bytes twice.
  return [...new Map(packs.map((p) => [p.id, p])).values()];
}

/**
 * The packs the files deltas on top of a set reference (every delta stored under it, also one that
 * latest.json does not name yet): each verified by signature and by where it is, read with the
 * files key (deltas are encrypted to it too).
 */
async function readDeltaPacks(fs: Filestore, site: string, setId: string, verifyKey: KeyObject, filesKey: FilesKey, signal?: AbortSignal): Promise<PackInfo[]> {
  const out: PackInfo[] = [];
  for (const o of await fs.list(`${layout.deltas(site)}${setId}/`, { signal })) {
    const n = Number(/\/(\d+)\.json$/.exec(o.key)?.[1]);
    if (!Number.isSafeInteger(n) || n < 1) throw new TandemError('integrity', 'DELTA_STRAY', `${fs.description}/${o.key} is not a files delta of set ${setId}`);
    const label = `${fs.description}/${o.key}`;
    const doc = verifyDelta((await fs.getBuffer(o.key, { signal })).body, verifyKey, { site, setId, n }, label);
    const plain = await openDelta(doc, [filesKey.identity], label);
    const packs: PackInfo[] = [];
    for await (const _ of readFilesIndex(Readable.from([plain]), { label, site, setId: deltaIndexId(setId, n), maxEntries: Number.MAX_SAFE_INTEGER }, packs));
    out.push(...packs);
  }
  return out;
}

export type SetPacks = { setId: string; packs: PackInfo[] | null } | { setId: string; problem: string };

/** readSetPacks of each committed set; a set whose manifest is gone meanwhile is left out. */
export async function readCommittedSetPacks(fs: Filestore, site: string, sets: ListedSet[], verifyKey: KeyObject, filesKey: FilesKey, o: { signal?: AbortSignal; stopAtProblem?: boolean } = {}): Promise<SetPacks[]> {
  const out: SetPacks[] = [];
  for (const s of sets) {
    if (!s.committed) continue;
    try {
      const packs = await readSetPacks(fs, site, s.setId, verifyKey, filesKey, o.signal);
      if (packs !== undefined) out.push({ setId: s.setId, packs });
    } catch (err) {
      o.signal?.throwIfAborted();
      out.push({ setId: s.setId, problem: describeError(err) });
      if (o.stopAtProblem) break;
    }
  }
  return out;
}

/**
 * Whether a backup of the site runs on this host now (its lock file in the state dir, held by a live
 * process or by another host sharing the state dir): while one runs, nothing is collected, since a
 * backup that has run longer than the grace may have uploaded packs its set will name. An unreadable
 * lock file counts as held (a writer between creating and filling it); the next backup clears it.
 */
export async function runningBackup(stateDir: string): Promise<string | null> {
  const file = stateFiles(stateDir).backupLock;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let holder: Partial<LockInfo> = {};
  try {
    holder = JSON.parse(text) as LockInfo;
  } catch {
    return `the backup lock ${file} is being written`;
  }
  if (holder.host === hostname() && typeof holder.pid === 'number' && !pidAlive(holder.pid)) return null;
  return `a ${holder.purpose ?? 'backup'} of the site holds ${file} (pid ${holder.pid} on ${holder.host}, since ${holder.startedAt})`;
}

export interface CollectObjectsOptions {
  filestore: Filestore;
  logger: Logger;
  verifyKey: KeyObject;
  dryRun: boolean;
  /** Sets taken as deleted (a dry run: what retention would delete). */
  gone?: ReadonlySet<string>;
  signal?: AbortSignal;
}

/**
 * Collects the site's unreferenced objects (see the top of this file); null when the site has no
 * files key (its sets hold their files). Never throws for what it finds: a problem is `blocked`.
 */
export async function collectObjects(config: PrimaryConfig, opts: CollectObjectsOptions): Promise<ObjectsGcOutcome | null> {
  const filesKeyFile = config.keys?.filesKeyFile;
  if (filesKeyFile === undefined) return null;
  const { filestore: fs, logger, signal } = opts;
  const site = config.site;
  const outcome: ObjectsGcOutcome = {
    dryRun: opts.dryRun,
    graceMs: OBJECTS_GRACE_MS,
    sets: 0,
    stored: zero(),
    referenced: zero(),
    young: zero(),
    garbage: zero(),
    deleted: zero(),
    failed: 0,
    missing: 0,
    strays: 0,
  };
  const block = (why: string): ObjectsGcOutcome => {
    outcome.blocked = why;
    logger.warn({ problem: why }, 'retention: objects not collected; none deleted');
    return outcome;
  };
  try {
    const busy = await runningBackup(config.stateDir);
    if (busy !== null) {
      outcome.skipped = busy;
      logger.info({ reason: busy }, 'retention: objects not collected this time (a backup is running)');
      return outcome;
    }
    // Taken before anything is read: an object written after this is younger than the cut-off.
    const cutoff = Date.now() - OBJECTS_GRACE_MS;
    const filesKey = loadFilesKeyFile(filesKeyFile, logger);
    const { sets } = await listSetDirs(fs, site, { signal });
    const kept = sets.filter((s) => !opts.gone?.has(s.setId));
    const read = await readCommittedSetPacks(fs, site, kept, opts.verifyKey, filesKey, { signal, stopAtProblem: true });
    const bad = read.find((r) => 'problem' in r);
    if (bad && 'problem' in bad) return block(`set ${bad.setId}: ${bad.problem}`);
    const referenced = new Set<string>();
    for (const r of read) if ('packs' in r && r.packs) for (const p of r.packs) referenced.add(p.id);
    outcome.sets = read.length;

    const { objects, strays } = await listStoredObjects(fs, site, signal);
    outcome.strays = strays.length;
    if (strays.length > 0) logger.warn({ keys: strays.slice(0, 5).map((o) => o.key), count: strays.length }, 'retention: keys under objects/ that are not objects: left alone');
    const garbage: StoredObject[] = [];
    const stored = new Set<string>();
    for (const o of objects) {
      stored.add(o.id);
      add(outcome.stored, o.size);
      if (referenced.has(o.id)) add(outcome.referenced, o.size);
      else if (o.modified.getTime() > cutoff) add(outcome.young, o.size);
      else {
        add(outcome.garbage, o.size);
        garbage.push(o);
      }
    }
    for (const id of referenced) if (!stored.has(id)) outcome.missing++;
    if (outcome.missing > 0) {
      logger.error({ missing: outcome.missing }, `retention: ${outcome.missing} object(s) the committed sets reference are missing from ${fs.description}: a standby cannot apply those sets`);
    }

    if (!opts.dryRun) {
      outcome.failed = await deleteEach(garbage, (o) => fs.delete(o.key, { signal }), {
        signal,
        deleted: (o) => add(outcome.deleted, o.size),
        failed: (o, err) => logger.warn({ key: o.key, err }, 'retention: could not delete an unreferenced object; it is retried next time'),
      });
    }
    const grace = formatDuration(OBJECTS_GRACE_MS);
    logger.info(
      {
        dryRun: opts.dryRun,
        sets: outcome.sets,
        referenced: outcome.referenced.objects,
        referencedBytes: outcome.referenced.bytes,
        unreferenced: outcome.garbage.objects,
        unreferencedBytes: outcome.garbage.bytes,
        deleted: outcome.deleted.objects,
        deletedBytes: outcome.deleted.bytes,
        young: outcome.young.objects,
        youngBytes: outcome.young.bytes,
        failed: outcome.failed,
      },
      opts.dryRun
        ? `retention: ${outcome.garbage.objects} unreferenced object(s) (${formatBytes(outcome.garbage.bytes)}) would be deleted; ${outcome.young.objects} younger than ${grace} kept`
        : `retention: ${outcome.deleted.objects} unreferenced object(s) (${formatBytes(outcome.deleted.bytes)}) deleted; ${outcome.young.objects} younger than ${grace} kept`,
    );
    return outcome;
  } catch (err) {
    return block(describeError(err));
  }
}
