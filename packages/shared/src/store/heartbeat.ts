import type { KeyObject } from 'node:crypto';
import { z } from 'zod';
import { TandemError, isNotFound } from '../errors.js';
import type { Filestore } from '../filestore/filestore.js';
import { epochNumber as epoch, firstIssue, isoTime, seqNumber, setIdField as setId, siteName as site } from './fields.js';
import { layout } from './layout.js';
import { signDocument, verifyDocument } from './signed-doc.js';

/**
 * <site>/heartbeat.json (layout.heartbeat): the primary's liveness, written every
 * heartbeatInterval, so that a standby can tell an idle primary (fresh heartbeat, no new set) from
 * a dead one (stale heartbeat). Signed with the primary's signing key like latest.json. Unknown
 * members are stripped: a newer primary adds members without a new version (`latest` and `state`
 * came so), and an older reader keeps reading its heartbeats (the signature covers the file's
 * bytes, whatever the reader's schema keeps).
 */
export const heartbeatSchema = z.object({
  format: z.literal('tandem-heartbeat'),
  version: z.literal(1),
  site,
  epoch,
  primaryHost: z.string(),
  at: isoTime,
  lastBackup: z
    .object({
      /** null when the run failed before it had a set id. */
      setId: setId.nullable(),
      /** When the run ended. */
      at: isoTime,
      outcome: z.enum(['ok', 'failed']),
    })
    .nullable(),
  nextBackupAt: isoTime.nullable(),
  /**
   * The newest set the primary committed (what its latest.json should name; null before the first),
   * so that a standby can tell a replayed latest.json, or a replayed heartbeat, from the real ones.
   * Absent in heartbeats of primaries that predate it.
   */
  latest: z
    .object({ setId, epoch, seq: seqNumber, createdAt: isoTime, committedAt: isoTime })
    .nullable()
    .optional(),
  /**
   * "running", or "stopped": the daemon's last heartbeat, written as it shut down cleanly (SIGTERM,
   * SIGINT), so that a standby need not wait for it to go stale. Absent in heartbeats of primaries
   * that predate it (running); any other value a newer primary may write is read as running.
   */
  state: z.string().optional(),
  /**
   * WAL mode: the newest WAL file PostgreSQL archived (into the filestore, through wal-push), and
   * how long written WAL has waited in the current file (0: nothing written since the last switch).
   * A standby that replayed `lastArchived` while `pendingSeconds` is 0 holds everything up to this
   * heartbeat. Absent in dump mode and in heartbeats of primaries that predate it.
   */
  wal: z
    .object({
      lastArchived: z.string().nullable(),
      /** The WAL file PostgreSQL writes now: more than one past lastArchived means files wait to be archived. */
      current: z.string().nullable().optional(),
      pendingSeconds: z.number().nonnegative(),
      failing: z.boolean(),
    })
    .optional(),
});
export type Heartbeat = z.infer<typeof heartbeatSchema>;

/** The heartbeat states a primary writes; HEARTBEAT_STOPPED is the last one of a clean shutdown. */
export const HEARTBEAT_RUNNING = 'running';
export const HEARTBEAT_STOPPED = 'stopped';

/** Whether a heartbeat is its primary's last, written as its daemon stopped cleanly. */
export const isStoppedHeartbeat = (hb: { state?: string | null }): boolean => hb.state === HEARTBEAT_STOPPED;

export function signHeartbeat(hb: Heartbeat, key: KeyObject): Buffer {
  const r = heartbeatSchema.safeParse(hb);
  if (!r.success) throw new TandemError('internal', 'HEARTBEAT_INVALID', `refusing to sign an invalid heartbeat: ${firstIssue(r.error, '(message)')}`);
  return signDocument(r.data, key);
}

/** Signature and schema; see checkHeartbeat for the site as well. */
export function verifyHeartbeat(raw: Buffer, key: KeyObject, label: string): Heartbeat {
  const body = verifyDocument(raw, key, label);
  const r = heartbeatSchema.safeParse(body);
  if (!r.success) throw new TandemError('integrity', 'DOC_INVALID', `${label}: signed, but not a valid heartbeat (${firstIssue(r.error, '(message)')})`);
  return r.data;
}

/** Verifies a heartbeat.json body: signature, schema, and that it is this site's. */
export function checkHeartbeat(raw: Buffer, trust: KeyObject, site: string, label: string): Heartbeat {
  const hb = verifyHeartbeat(raw, trust, label);
  if (hb.site !== site) throw new TandemError('integrity', 'SITE_MISMATCH', `${label} is for site "${hb.site}", not "${site}"`);
  return hb;
}

/** The primary's heartbeat.json, verified (checkHeartbeat); null when there is none (an older primary, or no daemon ever ran). */
export async function readVerifiedHeartbeat(fs: Filestore, site: string, trust: KeyObject, opts: { signal?: AbortSignal } = {}): Promise<Heartbeat | null> {
  const key = layout.heartbeat(site);
  try {
    const { body } = await fs.getBuffer(key, opts);
    return checkHeartbeat(body, trust, site, `${fs.description}/${key}`);
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
}
