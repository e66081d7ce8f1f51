import type { KeyObject } from 'node:crypto';
import {
  TandemError,
  WAL_PREFIX,
  describeError,
  formatBytes,
  formatDuration,
  isNotFound,
  layout,
  listSetDirs,
  parseWalName,
  readStandbyReports,
  verifyManifest,
  type Filestore,
  type ListedSet,
  type Logger,
  type ObjectInfo,
  type PrimaryConfig,
  type StandbyReport,
  type WalKind,
} from '@tandem/shared';
import { deleteEach } from './delete-each.js';

/**
 * WAL retention (database.mode "wal"): after retention has deleted sets, the WAL files under
 * <site>/wal/ (wal/wal-file.ts) that no remaining set and no standby needs are deleted.
 *
 * What is needed:
 * - a WAL-mode set is restored from its base backup and the WAL from the file it starts in (its
 *   signed manifest's database.startWalFile) on: the cutoff is the smallest startWalFile of the
 *   committed sets that remain;
 * - a standby replays from its cluster's last restartpoint on: its report
 *   (<site>/standbys/<id>.json, `wal.neededFrom`) lowers the cutoff when it was measured within the
 *   last 24 h. An older measurement is of a standby that is gone or stuck, which reseeds from a set.
 * A WAL file is below the cutoff when the first 24 characters of its name (timeline, then position)
 * sort before it, so a file of an older timeline goes once every remaining base backup is on a newer
 * one. Timeline history files are never deleted: they are small, and a timeline switch needs the
 * whole chain of them.
 *
 * Decided from signed data only: every committed set's manifest is verified with the primary's
 * public key. If one does not verify, or no committed set is a WAL-mode set, the cutoff is not
 * decided and nothing is deleted. Standby reports are unsigned, but can only lower the cutoff.
 *
 * A file below the cutoff goes once each of its objects is older than the grace (by the modified
 * time the filestore LIST reports), as content objects do: a file PostgreSQL archives again after a
 * crash is left alone. Its signed document goes first, then the body: a run cut short leaves a body
 * without a document, which no standby uses and the next run deletes.
 */
export const WAL_GRACE_MS = 60 * 60 * 1000;
/** A standby's WAL need older than this is not honoured. */
export const WAL_NEED_FRESH_MS = 24 * 60 * 60 * 1000;

export interface WalTally {
  files: number;
  bytes: number;
}

/** A standby's reported WAL need. */
export interface WalNeed {
  standbyId: string;
  neededFrom: string;
  at: string;
}

export interface WalGcOutcome {
  dryRun: boolean;
  graceMs: number;
  /** WAL files whose name sorts before this are not needed; null: not decided, nothing deleted. */
  cutoff: string | null;
  /** The remaining WAL-mode set that starts first, and the WAL file it starts in. */
  oldestSet: { setId: string; startWalFile: string } | null;
  /** Standbys whose WAL need was measured within the last 24 h (each may lower the cutoff). */
  standbys: WalNeed[];
  /** Standbys whose WAL need is older than 24 h: not honoured. */
  stale: WalNeed[];
  /** Standby reports that could not be read (their needs are not known). */
  unreadableReports: number;
  /** No cutoff, and why (no committed set is a WAL-mode set): nothing deleted. */
  skipped?: string;
  /** A committed set's manifest could not be read or verified: nothing deleted. */
  blocked?: string;
  /** Committed WAL-mode sets whose manifests were read. */
  sets: number;
  /** Every WAL file under <site>/wal/. */
  stored: WalTally;
  /** Timeline history files: kept. */
  history: WalTally;
  /** Files from the cutoff on: kept. */
  needed: WalTally;
  /** Files below the cutoff younger than the grace: kept. */
  young: WalTally;
  /** Files below the cutoff older than the grace: deleted, or in a dry run what would be. */
  garbage: WalTally;
  deleted: WalTally;
  /** Files that could not be deleted (whole or in part: retried next time). */
  failed: number;
  /** Keys under <site>/wal/ that are not a WAL file's objects: left alone. */
  strays: number;
}

const zero = (): WalTally => ({ files: 0, bytes: 0 });
const add = (t: WalTally, f: StoredWalFile): void => {
  t.files++;
  t.bytes += f.bytes;
};

// ---------------------------------------------------------------------------------------------
// What is stored
// ---------------------------------------------------------------------------------------------

/** One WAL file's objects under <site>/wal/: its document and its body (either may be missing). */
export interface StoredWalFile {
  name: string;
  kind: WalKind;
  doc: ObjectInfo | null;
  /** `<name>.zst.age` and/or `<name>.zst`. */
  bodies: ObjectInfo[];
  bytes: number;
  /** The newest modified time of its objects. */
  modified: Date;
}

const SUFFIXES = ['.json', '.zst.age', '.zst'] as const;

/** Everything under <site>/wal/, by WAL file; any key that is not a WAL file's object is a stray. */
export async function listStoredWal(fs: Filestore, site: string, signal?: AbortSignal): Promise<{ files: StoredWalFile[]; strays: ObjectInfo[] }> {
  const prefix = WAL_PREFIX(site);
  const byName = new Map<string, StoredWalFile>();
  const strays: ObjectInfo[] = [];
  for (const o of await fs.list(prefix, { signal })) {
    const rest = o.key.slice(prefix.length);
    const suffix = SUFFIXES.find((s) => rest.endsWith(s));
    const name = suffix === undefined ? '' : rest.slice(0, -suffix.length);
    const parsed = parseWalName(name);
    if (parsed === null) {
      strays.push(o);
      continue;
    }
    let f = byName.get(name);
    if (f === undefined) {
      f = { name, kind: parsed.kind, doc: null, bodies: [], bytes: 0, modified: o.modified };
      byName.set(name, f);
    }
    if (suffix === '.json') f.doc = o;
    else f.bodies.push(o);
    f.bytes += o.size;
    if (o.modified.getTime() > f.modified.getTime()) f.modified = o.modified;
  }
  const files = [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { files, strays };
}

// ---------------------------------------------------------------------------------------------
// The cutoff
// ---------------------------------------------------------------------------------------------

/**
 * Where a committed set's restore starts in the WAL: its manifest verified (signature, set id,
 * site); startWalFile null for a dump-mode set (it needs no WAL); undefined when the manifest is gone
 * (the set was deleted meanwhile). Throws when the manifest cannot be read or verified.
 */
export async function readSetWalStart(fs: Filestore, site: string, setId: string, verifyKey: KeyObject, signal?: AbortSignal): Promise<{ startWalFile: string | null } | undefined> {
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
  return { startWalFile: m.database.mode === 'wal' ? (m.database.startWalFile ?? null) : null };
}

/** A committed set's WAL start, or why it could not be read. */
export type SetWalStart = { setId: string; startWalFile: string | null } | { setId: string; problem: string };

export interface WalCutoffInput {
  /** Every committed set that remains. */
  sets: SetWalStart[];
  reports: StandbyReport[];
  now: Date;
  /** Default 24 h. */
  freshMs?: number;
}

export interface WalCutoff {
  cutoff: string | null;
  oldestSet: { setId: string; startWalFile: string } | null;
  standbys: WalNeed[];
  stale: WalNeed[];
  /** Why there is no cutoff: a set that does not verify. */
  blocked?: string;
  /** Why there is no cutoff: no WAL-mode set. */
  skipped?: string;
  /** WAL-mode sets counted. */
  sets: number;
}

/** The 24 characters of a WAL file's name that place it: timeline, then position. */
const placeOf = (name: string): string => name.slice(0, 24);

/** Pure: the first WAL file still needed, from the remaining sets and the standbys' reports. */
export function decideWalCutoff(input: WalCutoffInput): WalCutoff {
  const freshMs = input.freshMs ?? WAL_NEED_FRESH_MS;
  const standbys: WalNeed[] = [];
  const stale: WalNeed[] = [];
  for (const r of [...input.reports].sort((a, b) => (a.standbyId < b.standbyId ? -1 : a.standbyId > b.standbyId ? 1 : 0))) {
    if (r.wal === undefined) continue;
    const need = { standbyId: r.standbyId, neededFrom: r.wal.neededFrom, at: r.wal.at };
    // A time in the future (clock skew) counts as recent: a report can only keep more.
    if (input.now.getTime() - Date.parse(r.wal.at) <= freshMs) standbys.push(need);
    else stale.push(need);
  }
  const out: WalCutoff = { cutoff: null, oldestSet: null, standbys, stale, sets: 0 };
  const bad = input.sets.find((s) => 'problem' in s);
  if (bad !== undefined && 'problem' in bad) return { ...out, blocked: `set ${bad.setId}: ${bad.problem}` };
  for (const s of input.sets) {
    if (!('startWalFile' in s) || s.startWalFile === null) continue;
    out.sets++;
    if (out.oldestSet === null || s.startWalFile < out.oldestSet.startWalFile) out.oldestSet = { setId: s.setId, startWalFile: s.startWalFile };
  }
  if (out.oldestSet === null) {
    return { ...out, skipped: input.sets.length === 0 ? 'there is no committed set' : `none of the ${input.sets.length} committed set(s) is a WAL-mode set` };
  }
  let cutoff = out.oldestSet.startWalFile;
  for (const n of standbys) if (n.neededFrom < cutoff) cutoff = n.neededFrom;
  return { ...out, cutoff };
}

// ---------------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------------

export interface WalGcPlan {
  stored: WalTally;
  history: WalTally;
  needed: WalTally;
  young: WalTally;
  garbage: WalTally;
  /** What goes, oldest first. */
  delete: StoredWalFile[];
}

/** Pure: which stored WAL files go, given the cutoff; a file with an object modified after `youngAfter` stays. */
export function planWalGc(files: StoredWalFile[], cutoff: string, youngAfter: Date): WalGcPlan {
  const plan: WalGcPlan = { stored: zero(), history: zero(), needed: zero(), young: zero(), garbage: zero(), delete: [] };
  for (const f of files) {
    add(plan.stored, f);
    if (f.kind === 'history') add(plan.history, f);
    else if (placeOf(f.name) >= cutoff) add(plan.needed, f);
    else if (f.modified.getTime() > youngAfter.getTime()) add(plan.young, f);
    else {
      add(plan.garbage, f);
      plan.delete.push(f);
    }
  }
  return plan;
}

/** One WAL file: its document first (that uncommits it), then its body. */
export async function deleteWalFile(fs: Filestore, f: StoredWalFile, signal?: AbortSignal): Promise<void> {
  if (f.doc !== null) await fs.delete(f.doc.key, { signal });
  for (const b of f.bodies) await fs.delete(b.key, { signal });
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

export interface CollectWalOptions {
  filestore: Filestore;
  logger: Logger;
  verifyKey: KeyObject;
  dryRun: boolean;
  /** Sets taken as deleted (a dry run: what retention would delete). */
  gone?: ReadonlySet<string>;
  /** Default: the clock (the grace and the standbys' reports are measured against it). */
  now?: Date;
  signal?: AbortSignal;
}

/** Every committed set that remains, with where its restore starts in the WAL (or why not known). */
async function readSetStarts(fs: Filestore, site: string, sets: ListedSet[], verifyKey: KeyObject, signal?: AbortSignal): Promise<SetWalStart[]> {
  const out: SetWalStart[] = [];
  for (const s of sets) {
    if (!s.committed) continue;
    try {
      const start = await readSetWalStart(fs, site, s.setId, verifyKey, signal);
      if (start !== undefined) out.push({ setId: s.setId, ...start });
    } catch (err) {
      signal?.throwIfAborted();
      out.push({ setId: s.setId, problem: describeError(err) });
      break; // one is enough to decide nothing
    }
  }
  return out;
}

/**
 * Deletes the site's WAL files that no remaining set and no recent standby report needs (see the
 * top of this file); null when the site is not in WAL mode. Never throws for what it finds: a
 * problem is `blocked`, an undecidable cutoff `skipped`.
 */
export async function collectWal(config: PrimaryConfig, opts: CollectWalOptions): Promise<WalGcOutcome | null> {
  if (config.database?.mode !== 'wal') return null;
  const { filestore: fs, logger, signal } = opts;
  const site = config.site;
  const now = opts.now ?? new Date();
  // Taken before anything is read: an object written after this is younger than the cut-off.
  const youngAfter = new Date(now.getTime() - WAL_GRACE_MS);
  const outcome: WalGcOutcome = {
    dryRun: opts.dryRun,
    graceMs: WAL_GRACE_MS,
    cutoff: null,
    oldestSet: null,
    standbys: [],
    stale: [],
    unreadableReports: 0,
    sets: 0,
    stored: zero(),
    history: zero(),
    needed: zero(),
    young: zero(),
    garbage: zero(),
    deleted: zero(),
    failed: 0,
    strays: 0,
  };
  try {
    const { sets } = await listSetDirs(fs, site, { signal });
    const kept = sets.filter((s) => !opts.gone?.has(s.setId));
    const starts = await readSetStarts(fs, site, kept, opts.verifyKey, signal);
    const { reports, unreadable } = await readStandbyReports(fs, site, { signal });
    outcome.unreadableReports = unreadable.length;
    const decided = decideWalCutoff({ sets: starts, reports, now });
    Object.assign(outcome, decided);
    for (const n of decided.stale) logger.warn({ standbyId: n.standbyId, neededFrom: n.neededFrom, at: n.at }, 'retention: a standby reported its WAL need more than 24 h ago: not honoured');
    if (decided.blocked !== undefined) {
      logger.warn({ problem: decided.blocked }, 'retention: WAL not collected; none deleted');
      return outcome;
    }
    if (decided.cutoff === null) {
      logger.info({ reason: decided.skipped }, 'retention: WAL not collected; none deleted');
      return outcome;
    }
    const cutoff = decided.cutoff;

    const { files, strays } = await listStoredWal(fs, site, signal);
    outcome.strays = strays.length;
    if (strays.length > 0) logger.warn({ keys: strays.slice(0, 5).map((o) => o.key), count: strays.length }, 'retention: keys under wal/ that are not WAL files: left alone');
    const plan = planWalGc(files, cutoff, youngAfter);
    Object.assign(outcome, { stored: plan.stored, history: plan.history, needed: plan.needed, young: plan.young, garbage: plan.garbage });

    if (!opts.dryRun) {
      outcome.failed = await deleteEach(plan.delete, (f) => deleteWalFile(fs, f, signal), {
        signal,
        deleted: (f) => add(outcome.deleted, f),
        failed: (f, err) => logger.warn({ name: f.name, err }, 'retention: could not delete a WAL file; it is retried next time'),
      });
    }
    const grace = formatDuration(WAL_GRACE_MS);
    const done = opts.dryRun ? outcome.garbage : outcome.deleted;
    logger.info(
      {
        dryRun: opts.dryRun,
        cutoff,
        oldestSet: outcome.oldestSet?.setId,
        standbys: outcome.standbys.map((n) => `${n.standbyId}:${n.neededFrom}`),
        deleted: outcome.deleted.files,
        deletedBytes: outcome.deleted.bytes,
        needed: outcome.needed.files,
        young: outcome.young.files,
        failed: outcome.failed,
      },
      `retention: ${done.files} WAL file(s) (${formatBytes(done.bytes)}) before ${cutoff} ${opts.dryRun ? 'would be deleted' : 'deleted'}; ${outcome.young.files} younger than ${grace} kept`,
    );
    return outcome;
  } catch (err) {
    outcome.cutoff = null;
    outcome.blocked = describeError(err);
    logger.warn({ problem: outcome.blocked }, 'retention: WAL not collected; none deleted');
    return outcome;
  }
}
