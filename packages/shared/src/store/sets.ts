import type { Filestore, ObjectInfo } from '../filestore/filestore.js';
import { layout, parseSetId } from './layout.js';

/**
 * The sets under <site>/sets/ and their order.
 *
 * The order of sets is (epoch, seq): a set of a higher epoch was made by a later primary, and within
 * an epoch the sequence only grows (each backup takes the highest sequence in the filestore plus
 * one). The id starts with the creation time, so sorting ids as strings orders by time, and time
 * is not the order: a promoted server whose clock is behind the old primary's makes sets of a
 * higher epoch with earlier times, and a clock stepped back does the same within an epoch. Every
 * "newer", "older", "newest" and "oldest first" of sets is `compareSets`.
 */

/** A set as the order of sets sees it. */
export interface SetRef {
  setId: string;
  epoch: number;
  seq: number;
}

/** (epoch, seq); ties (two ids of one epoch and sequence) broken by id, so two different sets never compare equal. */
export function compareSets(a: SetRef, b: SetRef): number {
  return a.epoch - b.epoch || a.seq - b.seq || (a.setId < b.setId ? -1 : a.setId > b.setId ? 1 : 0);
}

/**
 * compareSets for two names under sets/: set ids in the order of sets, after them any name that is
 * not a set id (by name), so that a list of directories has one order.
 */
export function compareSetIds(a: string, b: string): number {
  const ra = setRefOf(a);
  const rb = setRefOf(b);
  if (ra !== null && rb !== null) return compareSets(ra, rb);
  if (ra !== null) return -1;
  if (rb !== null) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The ref of a set id; null when the name is not a set id. */
export function setRefOf(setId: string): SetRef | null {
  const p = parseSetId(setId);
  return p === null ? null : { setId, epoch: p.epoch, seq: p.seq };
}

/** One directory under sets/ whose name is a set id. */
export interface ListedSet extends SetRef {
  /** The creation time the id carries (to the second). */
  time: Date;
  /** Its manifest.json exists: the set is committed. Without it, a leftover of an interrupted backup. */
  committed: boolean;
  /** Every object under the set's directory, in key order. */
  objects: ObjectInfo[];
  /** Their stored bytes together. */
  bytes: number;
}

/** A directory under sets/ whose name is not a set id: never a set, never applied or deleted. */
export interface StrayDir {
  name: string;
  committed: boolean;
  objects: ObjectInfo[];
  bytes: number;
}

export interface ListSetsOptions {
  /** Only sets with a manifest. */
  committedOnly?: boolean;
  signal?: AbortSignal;
}

/**
 * Every directory under <site>/sets/ (one LIST): the sets oldest first (compareSets), and the
 * directories whose names are not set ids by name. Objects directly under sets/ belong to no set
 * and are left out.
 */
export async function listSetDirs(fs: Filestore, site: string, opts: { signal?: AbortSignal } = {}): Promise<{ sets: ListedSet[]; strays: StrayDir[] }> {
  const prefix = layout.sets(site);
  const dirs = new Map<string, ObjectInfo[]>();
  for (const o of await fs.list(prefix, { signal: opts.signal })) {
    const [name, file] = o.key.slice(prefix.length).split('/');
    if (!name || !file) continue;
    const objs = dirs.get(name);
    if (objs) objs.push(o);
    else dirs.set(name, [o]);
  }
  const sets: ListedSet[] = [];
  const strays: StrayDir[] = [];
  for (const [name, objects] of dirs) {
    const manifest = layout.manifest(site, name);
    const committed = objects.some((o) => o.key === manifest);
    const bytes = objects.reduce((n, o) => n + o.size, 0);
    const p = parseSetId(name);
    if (p === null) strays.push({ name, committed, objects, bytes });
    else sets.push({ setId: name, epoch: p.epoch, seq: p.seq, time: p.time, committed, objects, bytes });
  }
  sets.sort(compareSets);
  strays.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { sets, strays };
}

/** The sets under <site>/sets/ (one LIST), oldest first (compareSets); directories that are not set ids are left out. */
export async function listSets(fs: Filestore, site: string, opts: ListSetsOptions = {}): Promise<ListedSet[]> {
  const { sets } = await listSetDirs(fs, site, { signal: opts.signal });
  return opts.committedOnly ? sets.filter((s) => s.committed) : sets;
}

/**
 * Committed sets (a manifest exists) newer than `ref` (all of them when null), and the newest
 * committed set (null: none): one LIST. What a standby has not applied yet.
 */
export async function countSetsNewerThan(
  fs: Filestore,
  site: string,
  ref: SetRef | null,
  opts: { signal?: AbortSignal } = {},
): Promise<{ count: number; newest: ListedSet | null }> {
  const sets = await listSets(fs, site, { committedOnly: true, signal: opts.signal });
  const count = ref === null ? sets.length : sets.filter((s) => compareSets(s, ref) > 0).length;
  return { count, newest: sets.at(-1) ?? null };
}
