import { createPublicKey, type KeyObject } from 'node:crypto';
import {
  TandemError,
  describeError,
  layout,
  listSetDirs,
  loadSigningKeyFile,
  readStandbyReports,
  readVerifiedLatest,
  verifyManifest,
  type Filestore,
  type Logger,
  type ObjectInfo,
  type PrimaryConfig,
} from '@tandem/shared';
import { collectObjects, type ObjectsGcOutcome } from './objects-gc.js';
import { planRetention, type AppliedRecord, type RetentionPlan, type SetInfo } from './plan.js';
import { collectWal, type WalGcOutcome } from './wal-gc.js';

/**
 * Retention against a filestore: gather what the plan needs (sets, their manifests' creation
 * times, latest.json, the standbys' reports), plan, and delete. Deleting a set removes its manifest
 * FIRST, so that a set deleted halfway is an uncommitted leftover and never looks committed.
 *
 * Everything a deletion is decided from is verified with the primary's public key first: anyone
 * who can write to the filestore could otherwise name another set in latest.json and date the only
 * real set back by years, and retention would delete it. latest.json that does not verify stops
 * retention (nothing is deleted); a set whose manifest does not verify is reported and kept.
 *
 * Then, when the site has a files key, the content objects no remaining set references are
 * collected (objects-gc.ts), and in WAL mode the WAL files no remaining set and no standby needs
 * (wal-gc.ts): the same run, so that `prune` and the daemon's run after each backup both do it.
 */
export interface RetentionInputs {
  sets: SetInfo[];
  latestSetId: string | null;
  applied: AppliedRecord[];
  objects: Map<string, ObjectInfo[]>;
  /** Standby reports that could not be read (named in the log). */
  badReports: string[];
}

export interface RetentionOutcome {
  plan: RetentionPlan;
  dryRun: boolean;
  deleted: string[];
  failed: Array<{ setId: string; error: string }>;
  /** Content objects collected after the sets (null: the site has no files key). */
  objects: ObjectsGcOutcome | null;
  /** WAL files collected after the sets (null: the site is not in WAL mode). */
  wal: WalGcOutcome | null;
}

/** The set latest.json names, verified (signature, site); null when there is no latest.json. */
async function readLatestSetId(fs: Filestore, site: string, verifyKey: KeyObject): Promise<string | null> {
  const where = `${fs.description}/${layout.latest(site)}`;
  try {
    return (await readVerifiedLatest(fs, site, verifyKey))?.latest.setId ?? null;
  } catch (err) {
    // Without knowing which set latest.json names, nothing may be deleted.
    throw new TandemError(err instanceof TandemError ? err.kind : 'integrity', 'RETENTION_NO_LATEST', `retention: cannot read ${where}: ${describeError(err)}; deleting nothing`, {
      cause: err,
      hint: "the next backup rewrites latest.json; if it keeps failing to verify, someone else writes to the filestore: look at who can",
    });
  }
}

/** A set's manifest, verified: its createdAt, or why it cannot be trusted. */
async function readManifestTime(fs: Filestore, site: string, setId: string, verifyKey: KeyObject): Promise<{ createdAt: Date } | { problem: string }> {
  const where = `${fs.description}/${layout.manifest(site, setId)}`;
  try {
    const { body } = await fs.getBuffer(layout.manifest(site, setId));
    const m = verifyManifest(body, verifyKey, where);
    if (m.setId !== setId) return { problem: `${where} names set ${m.setId} (copied from another set)` };
    if (m.site !== site) return { problem: `${where} is for site "${m.site}"` };
    return { createdAt: new Date(m.createdAt) };
  } catch (err) {
    return { problem: describeError(err) };
  }
}

/** The primary's public key, from its signing key (retention runs where the signing key is). */
export function retentionVerifyKey(config: PrimaryConfig, logger?: Logger): KeyObject {
  return createPublicKey(loadSigningKeyFile(config.keys.signingKeyFile, logger));
}

export async function gatherRetentionInputs(fs: Filestore, site: string, logger: Logger, verifyKey: KeyObject): Promise<RetentionInputs> {
  const listing = await listSetDirs(fs, site);
  const objects = new Map<string, ObjectInfo[]>();
  const sets: SetInfo[] = [];
  // A directory whose name is not a set id has no time: the plan keeps it and says so.
  for (const dir of [...listing.sets, ...listing.strays.map((d) => ({ ...d, setId: d.name, time: null }))]) {
    const { setId, committed, objects: objs } = dir;
    objects.set(setId, objs);
    let createdAt = dir.time;
    let unverified: string | undefined;
    if (committed && createdAt !== null) {
      // By the signed manifest's time; the set id carries the same instant to the second.
      const m = await readManifestTime(fs, site, setId, verifyKey);
      if ('createdAt' in m) createdAt = m.createdAt;
      else {
        unverified = m.problem;
        logger.warn({ setId, problem: m.problem }, 'retention: the manifest does not verify; the set is kept and reported');
      }
    }
    const lastModified = new Date(Math.max(...objs.map((o) => o.modified.getTime())));
    sets.push({ setId, createdAt, committed, lastModified, ...(unverified === undefined ? {} : { unverified }) });
  }
  const latestSetId = await readLatestSetId(fs, site, verifyKey);
  const committedSets = sets.filter((x) => x.committed).length;
  if (latestSetId === null && committedSets > 0) {
    // Every backup writes latest.json; committed sets without it mean it was removed.
    throw new TandemError('integrity', 'RETENTION_NO_LATEST', `retention: ${fs.description}/${layout.latest(site)} is missing while ${committedSets} committed set(s) exist; deleting nothing`, {
      hint: 'the next backup writes latest.json again; if it goes missing again, someone else writes to the filestore',
    });
  }
  const { reports, unreadable } = await readStandbyReports(fs, site);
  const applied: AppliedRecord[] = reports.map((r) => ({ standbyId: r.standbyId, setId: r.setId, appliedAt: new Date(r.appliedAt) }));
  const badReports = unreadable.map((u) => u.key);
  for (const u of unreadable) logger.warn({ key: u.key, err: u.error }, 'retention: ignoring an unreadable standby report');
  return { sets, latestSetId, applied, objects, badReports };
}

/** Delete one set: manifest first, then the artifacts and anything else under the set. */
export async function deleteSet(fs: Filestore, site: string, setId: string, objects: ObjectInfo[]): Promise<void> {
  const manifest = layout.manifest(site, setId);
  if (objects.some((o) => o.key === manifest)) await fs.delete(manifest);
  for (const o of objects) if (o.key !== manifest) await fs.delete(o.key);
  // Its files deltas (files as content objects) build on it and go with it.
  for (const o of await fs.list(`${layout.deltas(site)}${setId}/`)) await fs.delete(o.key);
}

export interface RunRetentionOptions {
  filestore: Filestore;
  logger: Logger;
  /** The primary's public key (default: derived from keys.signingKeyFile). */
  verifyKey?: KeyObject;
  now?: Date;
  dryRun?: boolean;
  /** Applied sets the caller knows about beyond the filestore's reports (the daemon's WebSocket peers). */
  extraApplied?: AppliedRecord[];
  timeZone: string;
  /** Stops collecting objects between deletions (what is left is collected next time). */
  signal?: AbortSignal;
}

export async function runRetention(config: PrimaryConfig, opts: RunRetentionOptions): Promise<RetentionOutcome> {
  const { filestore: fs, logger } = opts;
  const site = config.site;
  const verifyKey = opts.verifyKey ?? retentionVerifyKey(config, logger);
  const inputs = await gatherRetentionInputs(fs, site, logger, verifyKey);
  const plan = planRetention({
    sets: inputs.sets,
    now: opts.now ?? new Date(),
    policy: config.retention,
    timeZone: opts.timeZone,
    latestSetId: inputs.latestSetId,
    applied: [...inputs.applied, ...(opts.extraApplied ?? [])],
  });
  const outcome: RetentionOutcome = { plan, dryRun: opts.dryRun === true, deleted: [], failed: [], objects: null, wal: null };
  if (!opts.dryRun && plan.delete.length > 0) {
    // latest.json may have moved since it was read (a backup committed meanwhile): read it again and
    // refuse to go on if it now names a set about to be deleted.
    const latestNow = await readLatestSetId(fs, site, verifyKey);
    if (latestNow !== null && plan.delete.some((d) => d.setId === latestNow)) {
      throw new TandemError('precondition', 'RETENTION_RACE', `retention: latest.json now names ${latestNow}, which was planned for deletion; deleting nothing`);
    }
    for (const d of plan.delete) {
      try {
        await deleteSet(fs, site, d.setId, inputs.objects.get(d.setId) ?? []);
        outcome.deleted.push(d.setId);
        logger.info({ setId: d.setId, reason: d.reasons.join('; ') }, 'retention: set deleted');
      } catch (err) {
        outcome.failed.push({ setId: d.setId, error: describeError(err) });
        logger.warn({ setId: d.setId, err }, 'retention: could not delete set; it is retried next time');
      }
    }
  }
  // Also with nothing to delete: objects of sets deleted earlier, or of interrupted backups, become
  // collectable only once past the grace. A dry run counts the sets it would delete as gone.
  outcome.objects = await collectObjects(config, {
    filestore: fs,
    logger,
    verifyKey,
    dryRun: opts.dryRun === true,
    gone: opts.dryRun ? new Set(plan.delete.map((d) => d.setId)) : undefined,
    signal: opts.signal,
  });
  // WAL from the start of the oldest set that remains (a dry run: that would remain) on is kept.
  outcome.wal = await collectWal(config, {
    filestore: fs,
    logger,
    verifyKey,
    dryRun: opts.dryRun === true,
    gone: opts.dryRun ? new Set(plan.delete.map((d) => d.setId)) : undefined,
    now: opts.now,
    signal: opts.signal,
  });
  return outcome;
}

/** The machine's time zone, the default of `timezone:`. */
export function machineTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}
