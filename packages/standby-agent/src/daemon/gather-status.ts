import {
  compareSets,
  countSetsNewerThan,
  describeError,
  loadVerifyKeyFile,
  openFilestore,
  readVerifiedHeartbeat,
  readVerifiedLatest,
  type Filestore,
  type Heartbeat,
  type LatestPointer,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { readApplied, readPromoted, type AppliedState } from '../apply/state.js';
import { askDaemonStatus, defaultStandbyId } from './daemon-info.js';
import { pendingWithoutListing, type LatestInfo } from './lag.js';
import { buildStatusDoc, type HeartbeatInfo, type StandbyStatusDoc } from './status-doc.js';

/**
 * `tandem-standby status`, with or without a daemon: the applied set from the state dir, latest.json,
 * heartbeat.json and the pending count (one LIST) from the filestore; the daemon's runtime view (push
 * channel, polling, last error, apply in progress) from its /status when it runs. A part that cannot
 * be read is reported under `problems` and its figures are null; the recovery point age needs only
 * the state dir, so `--max-lag` works while the filestore is down.
 */
export async function gatherStatus(config: StandbyConfig, logger: Logger, opts: { filestore?: Filestore; timeoutMs?: number } = {}): Promise<StandbyStatusDoc> {
  const problems: string[] = [];
  const note = (what: string, err: unknown) => problems.push(`${what}: ${describeError(err)}`);
  const timeout = opts.timeoutMs ?? 15_000;

  let applied: AppliedState | null = null;
  try {
    applied = await readApplied(config.stateDir);
  } catch (err) {
    note('applied.json', err);
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
  const fs = opts.filestore ?? openFilestore(config.filestore.location, { s3: { maxAttempts: 2, connectTimeoutMs: 5_000, idleTimeoutMs: timeout } });
  try {
    let verifyKey;
    try {
      verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
    } catch (err) {
      note('keys.verifyKeyFile', err);
    }
    if (verifyKey !== undefined) {
      // The heartbeat first: the primary writes latest.json before the heartbeat that names its set,
      // so latest.json read after the heartbeat names that set at least, unless it was put back.
      try {
        heartbeat = await readVerifiedHeartbeat(fs, config.site, verifyKey, { signal: AbortSignal.timeout(timeout) });
      } catch (err) {
        note('heartbeat.json', err);
      }
      try {
        latest = (await readVerifiedLatest(fs, config.site, verifyKey))?.latest ?? null;
        latestRead = true;
      } catch (err) {
        note('latest.json', err);
      }
    }
    hb = mergeHeartbeats(heartbeat, live?.primaryHeartbeat ?? null);
    pending = pendingWithoutListing(applied, latest, hb?.latest);
    if (pending === null) {
      try {
        pending = (await countSetsNewerThan(fs, config.site, applied, { signal: AbortSignal.timeout(timeout) })).count;
      } catch (err) {
        note('pending sets', err);
      }
    }
  } finally {
    if (opts.filestore === undefined) await fs.close().catch(() => undefined);
  }

  return buildStatusDoc({
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
  });
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
      : { at: file.at, source: 'filestore', primaryHost: file.primaryHost, epoch: file.epoch, lastBackup: file.lastBackup, nextBackupAt: file.nextBackupAt, latest: file.latest };
  if (pushed === null) return fromFile;
  if (fromFile === null) return pushed;
  const [newer, older] = Date.parse(pushed.at) > Date.parse(fromFile.at) ? [pushed, fromFile] : [fromFile, pushed];
  return {
    ...newer,
    primaryHost: newer.primaryHost ?? older.primaryHost,
    lastBackup: newer.lastBackup ?? older.lastBackup,
    nextBackupAt: newer.nextBackupAt ?? older.nextBackupAt,
    latest: newerLatest(newer.latest, older.latest),
  };
}

/** Of two heartbeats' newest sets, the newer (a set named once does not become un-named). */
function newerLatest(a: LatestInfo | null | undefined, b: LatestInfo | null | undefined): LatestInfo | null | undefined {
  if (a === undefined || a === null) return b ?? a;
  if (b === undefined || b === null) return a;
  return compareSets(a, b) >= 0 ? a : b;
}
