import {
  TandemError,
  describeError,
  isNotFound,
  layout,
  parseSetId,
  parseStandbyReport,
  type Filestore,
  type Logger,
  type ObjectInfo,
  type PrimaryConfig,
} from '@tandem/shared';
import { planRetention, type AppliedRecord, type RetentionPlan, type SetInfo } from './plan.js';

/**
 * Retention against a filestore: gather what the plan needs (sets, their manifests' creation
 * times, latest.json, the standbys' reports), plan, and delete. Deleting a set removes its manifest
 * FIRST, so that a set deleted halfway is an uncommitted leftover and never looks committed.
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
}

async function readLatestSetId(fs: Filestore, site: string): Promise<string | null> {
  try {
    const { body } = await fs.getBuffer(layout.latest(site));
    const setId = (JSON.parse(body.toString('utf8')) as { setId?: unknown }).setId;
    if (typeof setId !== 'string') throw new Error('no setId');
    return setId;
  } catch (err) {
    if (isNotFound(err)) return null;
    // Without knowing which set latest.json names, nothing may be deleted.
    throw new TandemError(err instanceof TandemError ? err.kind : 'integrity', 'RETENTION_NO_LATEST', `retention: cannot read ${fs.description}/${layout.latest(site)}: ${describeError(err)}; deleting nothing`, { cause: err });
  }
}

export async function gatherRetentionInputs(fs: Filestore, site: string, logger: Logger): Promise<RetentionInputs> {
  const prefix = layout.sets(site);
  const objects = new Map<string, ObjectInfo[]>();
  for (const o of await fs.list(prefix)) {
    const [id, name] = o.key.slice(prefix.length).split('/');
    if (!id || !name) continue;
    objects.set(id, [...(objects.get(id) ?? []), o]);
  }
  const sets: SetInfo[] = [];
  for (const [setId, objs] of objects) {
    const committed = objs.some((o) => o.key === layout.manifest(site, setId));
    let createdAt = parseSetId(setId)?.time ?? null;
    if (committed && createdAt !== null) {
      // By manifest time, as the issue says; the set id carries the same instant to the second.
      try {
        const { body } = await fs.getBuffer(layout.manifest(site, setId));
        const t = (JSON.parse(body.toString('utf8')) as { createdAt?: unknown }).createdAt;
        if (typeof t === 'string' && !Number.isNaN(Date.parse(t))) createdAt = new Date(t);
      } catch (err) {
        logger.warn({ setId, err: describeError(err) }, 'retention: cannot read the manifest; using the time in the set id');
      }
    }
    const lastModified = new Date(Math.max(...objs.map((o) => o.modified.getTime())));
    sets.push({ setId, createdAt, committed, lastModified });
  }
  const latestSetId = await readLatestSetId(fs, site);
  const applied: AppliedRecord[] = [];
  const badReports: string[] = [];
  for (const o of await fs.list(layout.standbys(site))) {
    if (!o.key.endsWith('.json')) continue;
    try {
      const { body } = await fs.getBuffer(o.key);
      const r = parseStandbyReport(body, `${fs.description}/${o.key}`);
      applied.push({ standbyId: r.standbyId, setId: r.setId, appliedAt: new Date(r.appliedAt) });
    } catch (err) {
      if (isNotFound(err)) continue;
      badReports.push(o.key);
      logger.warn({ key: o.key, err: describeError(err) }, 'retention: ignoring an unreadable standby report');
    }
  }
  return { sets, latestSetId, applied, objects, badReports };
}

/** Delete one set: manifest first, then the artifacts and anything else under the set. */
export async function deleteSet(fs: Filestore, site: string, setId: string, objects: ObjectInfo[]): Promise<void> {
  const manifest = layout.manifest(site, setId);
  if (objects.some((o) => o.key === manifest)) await fs.delete(manifest);
  for (const o of objects) if (o.key !== manifest) await fs.delete(o.key);
}

export interface RunRetentionOptions {
  filestore: Filestore;
  logger: Logger;
  now?: Date;
  dryRun?: boolean;
  /** Applied sets the caller knows about beyond the filestore's reports (the daemon's WebSocket peers). */
  extraApplied?: AppliedRecord[];
  timeZone: string;
}

export async function runRetention(config: PrimaryConfig, opts: RunRetentionOptions): Promise<RetentionOutcome> {
  const { filestore: fs, logger } = opts;
  const site = config.site;
  const inputs = await gatherRetentionInputs(fs, site, logger);
  const plan = planRetention({
    sets: inputs.sets,
    now: opts.now ?? new Date(),
    policy: config.retention,
    timeZone: opts.timeZone,
    latestSetId: inputs.latestSetId,
    applied: [...inputs.applied, ...(opts.extraApplied ?? [])],
  });
  const outcome: RetentionOutcome = { plan, dryRun: opts.dryRun === true, deleted: [], failed: [] };
  if (opts.dryRun || plan.delete.length === 0) return outcome;

  // latest.json may have moved since it was read (a backup committed meanwhile): read it again and
  // refuse to go on if it now names a set about to be deleted.
  const latestNow = await readLatestSetId(fs, site);
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
      logger.warn({ setId: d.setId, err: describeError(err) }, 'retention: could not delete set; it is retried next time');
    }
  }
  return outcome;
}

/** The machine's time zone, the default of `timezone:`. */
export function machineTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}
