import {
  describeError,
  isTandemError,
  loadVerifyKeyFile,
  openFilestore,
  type Filestore,
  type Heartbeat,
  type LatestPointer,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { pidAlive } from '@tandem/shared';
import { readJournal } from '../apply/journal.js';
import { readLatest } from '../apply/resolve-set.js';
import { readApplied, readPromoted, type AppliedState } from '../apply/state.js';
import { defaultStandbyId, fetchFromDaemon, loadDaemonToken, readDaemonInfo } from './daemon-info.js';
import { committedAtOf, computeLag, countPendingSets, pendingWithoutListing, readHeartbeat } from './lag.js';
import type { HeartbeatInfo, StandbyStatusDoc } from './status-doc.js';

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
  const info = await readDaemonInfo(config.stateDir);
  const running = info !== null && pidAlive(info.pid);
  let live: StandbyStatusDoc | null = null;
  if (running) {
    let token: string | null = null;
    try {
      token = loadDaemonToken(config);
    } catch (err) {
      logger.debug({ err: describeError(err) }, 'no token to ask the daemon with');
    }
    const r = await fetchFromDaemon(info.listen, '/status', token);
    if (r !== null && r.status === 200) {
      try {
        live = JSON.parse(r.body) as StandbyStatusDoc;
      } catch {
        live = null;
      }
    }
    if (live === null) problems.push(`the daemon (pid ${info.pid}) did not answer GET http://${info.listen}/status${r ? ` (HTTP ${r.status})` : ''}`);
  }

  // The filestore.
  let latest: LatestPointer | null = null;
  let heartbeat: Heartbeat | null = null;
  let pending: number | null = null;
  const fs = opts.filestore ?? openFilestore(config.filestore.url, { s3: { maxAttempts: 2, connectTimeoutMs: 5_000, idleTimeoutMs: timeout } });
  try {
    let verifyKey;
    try {
      verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
    } catch (err) {
      note('keys.verifyKeyFile', err);
    }
    if (verifyKey !== undefined) {
      try {
        latest = (await readLatest(fs, config.site, verifyKey)).latest;
      } catch (err) {
        if (!(isTandemError(err) && err.code === 'NO_SETS')) note('latest.json', err);
      }
      try {
        heartbeat = await readHeartbeat(fs, config.site, verifyKey, AbortSignal.timeout(timeout));
      } catch (err) {
        note('heartbeat.json', err);
      }
    }
    pending = pendingWithoutListing(applied, latest);
    if (pending === null) {
      try {
        pending = await countPendingSets(fs, config.site, applied, AbortSignal.timeout(timeout));
      } catch (err) {
        note('pending sets', err);
      }
    }
  } finally {
    if (opts.filestore === undefined) await fs.close().catch(() => undefined);
  }

  let hb: HeartbeatInfo | null =
    heartbeat === null
      ? null
      : { at: heartbeat.at, source: 'filestore', primaryHost: heartbeat.primaryHost, epoch: heartbeat.epoch, lastBackup: heartbeat.lastBackup, nextBackupAt: heartbeat.nextBackupAt };
  const pushed = live?.primaryHeartbeat ?? null;
  if (pushed !== null && (hb === null || Date.parse(pushed.at) > Date.parse(hb.at))) hb = { ...pushed, primaryHost: pushed.primaryHost ?? hb?.primaryHost ?? null, lastBackup: pushed.lastBackup ?? hb?.lastBackup ?? null, nextBackupAt: pushed.nextBackupAt ?? hb?.nextBackupAt ?? null };

  const now = new Date();
  const lag = computeLag({ now, applied, latest, heartbeatAt: hb?.at ?? null, pendingSets: pending });
  return {
    site: config.site,
    standbyId: live?.standbyId ?? defaultStandbyId(config.standbyId),
    now: now.toISOString(),
    appliedSetId: applied?.setId ?? null,
    appliedCreatedAt: applied?.createdAt ?? null,
    appliedAt: applied?.appliedAt ?? null,
    appliedCommittedAt: applied === null ? null : committedAtOf(applied, latest),
    latestSetId: latest?.setId ?? null,
    latestCreatedAt: latest?.createdAt ?? null,
    latestCommittedAt: latest?.committedAt ?? null,
    ...lag,
    primaryHeartbeat: hb,
    applying: live?.applying ?? null,
    unfinishedApply: journal === null ? null : { setId: journal.setId, phase: journal.phase, startedAt: journal.startedAt },
    promoted: promoted === null ? null : { promotedAt: promoted.promotedAt },
    daemon: { running, pid: running ? info.pid : null, listen: running ? info.listen : null, startedAt: running ? info.startedAt : null, reachable: live !== null },
    push: live?.push ?? null,
    poll: live?.poll ?? null,
    lastError: live?.lastError ?? null,
    problems,
  };
}
