import {
  FILESTORE_MARKER_KEY,
  compareSets,
  countSetsNewerThan,
  describeError,
  describeFilestoreLocation,
  isFilestoreMarkerRefusal,
  isTandemError,
  loadVerifyKeyFile,
  openFilestore,
  readVerifiedHeartbeat,
  readVerifiedLatest,
  requireFilestoreMarker,
  type Filestore,
  type Heartbeat,
  type LatestPointer,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { readApplied, readPromoted, type AppliedState } from '../apply/state.js';
import { readDeltaState } from '../apply/files-delta.js';
import { readWalReplay } from '../wal/replay-state.js';
import { askDaemonStatus, defaultStandbyId } from './daemon-info.js';
import { probeFilestore, siteMissing } from './filestore-probe.js';
import { pendingWithoutListing, type LatestInfo } from './lag.js';
import { buildStatusDoc, type HeartbeatInfo, type StandbyStatusDoc } from './status-doc.js';

/**
 * What could not be read while gathering the status, and so is not known: the state dir's
 * applied.json (the recovery point), the verify key, or the filestore. `status --max-lag` answers
 * UNKNOWN for these (CRITICAL for a filestore document that fails verification): not knowing is
 * not "OK".
 */
export interface StatusGap {
  part: 'applied' | 'verify-key' | 'filestore';
  /** One line, naming what and why: "cannot read the filestore file:///x: ...". */
  message: string;
  /** Read, but failed verification (a tampered or foreign document): an alarm, not an unknown. */
  integrity: boolean;
}

export interface GatheredStatus {
  doc: StandbyStatusDoc;
  gaps: StatusGap[];
}

/**
 * `tandem-standby status`, with or without a daemon: the applied set from the state dir, latest.json,
 * heartbeat.json and the pending count (one LIST) from the filestore; the daemon's runtime view (push
 * channel, polling, last error, apply in progress) from its /status when it runs. A part that cannot
 * be read is reported under `problems` (and in `gaps`) and its figures are null; the recovery point
 * age needs only the state dir. A filestore directory that does not exist is reported as such, not
 * read as a site without sets.
 */
export async function gatherStatus(config: StandbyConfig, logger: Logger, opts: { filestore?: Filestore; timeoutMs?: number } = {}): Promise<GatheredStatus> {
  const problems: string[] = [];
  const gaps: StatusGap[] = [];
  const note = (what: string, err: unknown) => problems.push(`${what}: ${describeError(err)}`);
  const timeout = opts.timeoutMs ?? 15_000;
  const fsName = opts.filestore?.description ?? describeFilestoreLocation(config.filestore.location);
  /** A filestore read that failed: a problem line, and a gap (the first one per part says enough). */
  const filestoreGap = (what: string, err: unknown) => {
    note(what, err);
    const integrity = isTandemError(err, 'integrity');
    if (!gaps.some((g) => g.part === 'filestore' && g.integrity === integrity)) {
      gaps.push({ part: 'filestore', integrity, message: integrity ? `${what} fails verification: ${describeError(err)}` : `cannot read the filestore ${fsName}: ${describeError(err)}` });
    }
  };

  let applied: AppliedState | null = null;
  let latestFiles: { delta: number; committedAt: string } | undefined;
  try {
    applied = await readApplied(config.stateDir);
  } catch (err) {
    note('applied.json', err);
    gaps.push({ part: 'applied', integrity: false, message: `cannot read applied.json (the recovery point): ${describeError(err)}` });
  }
  const journal = await readJournal(config.stateDir).catch((err: unknown) => (note('journal.json', err), null));
  const promoted = await readPromoted(config.stateDir).catch((err: unknown) => (note('promoted.json', err), null));

  // The daemon.
  const { info, live, problem } = await askDaemonStatus(config, logger);
  const running = info !== null;
  if (problem !== null) problems.push(problem);

  // The filestore.
  let latest: LatestPointer | null = null;
  let heartbeat: Heartbeat | null = null;
  let hb: HeartbeatInfo | null = live?.primaryHeartbeat ?? null;
  let latestRead = false;
  let pending: number | null = null;
  const unreadable = await probeFilestore(config.filestore.location);
  if (unreadable !== null) {
    problems.push(`filestore: ${unreadable}`);
    gaps.push({ part: 'filestore', integrity: false, message: `cannot read the filestore ${fsName}: ${unreadable}` });
  }
  const fs = unreadable !== null ? null : (opts.filestore ?? openFilestore(config.filestore.location, { s3: { maxAttempts: 2, connectTimeoutMs: 5_000, idleTimeoutMs: timeout } }));
  if (fs !== null) {
    try {
      // Only a tandem filestore (its marker) is read: any other reads as a site without sets.
      let marked = false;
      try {
        await requireFilestoreMarker(fs, { url: config.filestore.url }, { signal: AbortSignal.timeout(timeout) });
        marked = true;
      } catch (err) {
        // Not tandem's: named by the marker; not answering: the filestore (nothing more is read).
        filestoreGap(isFilestoreMarkerRefusal(err) ? FILESTORE_MARKER_KEY : 'filestore', err);
      }
      let verifyKey;
      try {
        verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
      } catch (err) {
        note('keys.verifyKeyFile', err);
        gaps.push({ part: 'verify-key', integrity: false, message: `cannot load keys.verifyKeyFile, so nothing in the filestore can be verified: ${describeError(err)}` });
      }
      if (verifyKey !== undefined && marked) {
        // The heartbeat first: the primary writes latest.json before the heartbeat that names its set,
        // so latest.json read after the heartbeat names that set at least, unless it was put back.
        try {
          heartbeat = await readVerifiedHeartbeat(fs, config.site, verifyKey, { signal: AbortSignal.timeout(timeout) });
        } catch (err) {
          filestoreGap('heartbeat.json', err);
        }
        try {
          const found = await readVerifiedLatest(fs, config.site, verifyKey);
          latest = found?.latest ?? null;
          latestFiles = found?.latest.files;
          latestRead = true;
          const missing = siteMissing(config.site, fs.description, applied?.setId ?? null, found !== null);
          if (missing !== null) {
            problems.push(`latest.json: ${missing}`);
            gaps.push({ part: 'filestore', integrity: false, message: `cannot read the filestore ${fsName}: ${missing}` });
          }
        } catch (err) {
          filestoreGap('latest.json', err);
        }
      }
      hb = mergeHeartbeats(heartbeat, live?.primaryHeartbeat ?? null);
      // Without latest.json read, "nothing newer" is not known: count by listing, or leave it unknown.
      pending = latestRead ? pendingWithoutListing(applied, latest, hb?.latest) : null;
      if (pending === null && marked) {
        try {
          pending = (await countSetsNewerThan(fs, config.site, applied, { signal: AbortSignal.timeout(timeout) })).count;
        } catch (err) {
          filestoreGap('pending sets', err);
        }
      }
    } finally {
      if (opts.filestore === undefined) await fs.close().catch(() => undefined);
    }
  }

  const doc = buildStatusDoc({
    site: config.site,
    standbyId: live?.standbyId ?? defaultStandbyId(config.standbyId),
    now: new Date(),
    applied,
    latest,
    heartbeat: hb,
    pendingSets: pending,
    latestReadAt: latestRead ? undefined : null,
    applying: live?.applying ?? null,
    journal,
    promoted,
    daemon: { running, pid: info?.pid ?? null, listen: info?.listen ?? null, startedAt: info?.startedAt ?? null, reachable: live !== null },
    push: live?.push ?? null,
    poll: live?.poll ?? null,
    lastError: live?.lastError ?? null,
    problems,
    filesDelta: { applied: await readDeltaState(config.stateDir), newest: latestFiles ?? null },
    ...(config.database.mode === 'wal' ? { walReplay: await readWalReplay(config.stateDir) } : {}),
  });
  return { doc, gaps };
}

/**
 * The newest of the heartbeat in the filestore and the one the daemon last saw (the push channel
 * brings one every heartbeatInterval); what the newer lacks (a push heartbeat names no set) is
 * taken from the other.
 */
export function mergeHeartbeats(file: Heartbeat | null, pushed: HeartbeatInfo | null): HeartbeatInfo | null {
  const fromFile: HeartbeatInfo | null =
    file === null
      ? null
      : {
          at: file.at,
          source: 'filestore',
          primaryHost: file.primaryHost,
          epoch: file.epoch,
          lastBackup: file.lastBackup,
          nextBackupAt: file.nextBackupAt,
          latest: file.latest,
          ...(file.state === undefined ? {} : { state: file.state }),
          ...(file.wal === undefined ? {} : { wal: file.wal }),
        };
  if (pushed === null) return fromFile;
  if (fromFile === null) return pushed;
  const [newer, older] = Date.parse(pushed.at) > Date.parse(fromFile.at) ? [pushed, fromFile] : [fromFile, pushed];
  return {
    ...newer,
    primaryHost: newer.primaryHost ?? older.primaryHost,
    lastBackup: newer.lastBackup ?? older.lastBackup,
    nextBackupAt: newer.nextBackupAt ?? older.nextBackupAt,
    latest: newerLatest(newer.latest, older.latest),
    ...((newer.wal ?? older.wal) === undefined ? {} : { wal: newer.wal ?? older.wal }),
  };
}

/** Of two heartbeats' newest sets, the newer (a set named once does not become un-named). */
function newerLatest(a: LatestInfo | null | undefined, b: LatestInfo | null | undefined): LatestInfo | null | undefined {
  if (a === undefined || a === null) return b ?? a;
  if (b === undefined || b === null) return a;
  return compareSets(a, b) >= 0 ? a : b;
}
