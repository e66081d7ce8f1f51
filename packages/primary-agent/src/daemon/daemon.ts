import { createPublicKey, type KeyObject } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { CLOSE_CODES, TandemError, isS3Url, loadFilesKeyFile, loadRecipients, loadSigningKeyFile, type ArtifactProgress, type Filestore, type Limiter, type Logger, type PrimaryConfig, type PrimaryHello } from '@tandem/shared';
import { primaryIdentity } from '../backup/epoch.js';
import type { BackupResult } from '../backup/run-backup.js';
import { refuseInBackupMode } from '../backup/sentinel.js';
import { machineTimeZone } from '../retention/run.js';
import { FilesDeltaWriter } from '../backup/files-delta.js';
import { BackupRunner, type Trigger } from './backup-runner.js';
import { FilesWatcher } from './files-watch.js';
import { WalTimer } from './wal-timer.js';
import { Fencing } from './fencing.js';
import { HeartbeatLoop } from './heartbeat.js';
import { LatestSet } from './latest.js';
import { SiteLifecycle } from './lifecycle.js';
import { DaemonMetrics } from './metrics.js';
import { PrimaryHistory, type PrimaryHistoryDoc, type PrimaryPageState } from './page.js';
import { Scheduler, systemClock, type Clock } from './scheduler.js';
import { StandbyHub, type PushSocket } from './standbys.js';
import { SwitchoverCoordinator } from './switchover.js';

export type { LastRun, Trigger } from './backup-runner.js';

/**
 * `tandem-primary run`: the always-on primary agent, one site of it. This class wires the parts together:
 *
 * - backups (backup-runner.ts): on the cron schedule (configured time zone), on request, and the
 *   final one of a switchover; retried after a failed scheduled run; retention after each;
 * - the moment a backup commits (latest.json written): `set-committed` to every connected standby
 *   (latest.ts; standbys.ts); then heartbeat.json, then retention;
 * - every heartbeatInterval (heartbeat.ts): a `heartbeat` message to the standbys; epoch.json and
 *   latest.json are read (a set committed by a `--local` run is pushed too), then heartbeat.json
 *   is written;
 * - fencing (fencing.ts): a higher epoch fences this primary: no more backups or heartbeats,
 *   tandem_fenced 1, onFenced runs;
 * - a planned switchover (switchover.ts): onFenced, a final backup, a hold without backups; it ends
 *   fenced (the standby promoted) or called off (onResume);
 * - the site as the machine sees it (lifecycle.ts): one daemon per state directory (daemon.json),
 *   the shutdown, whose last heartbeat.json says "stopped" (heartbeat.ts).
 *
 * The process (host.ts) serves one or several sites, each a PrimaryDaemon: it owns the one
 * HTTP/WebSocket server and its tokens, routes requests and standby connections to the sites, and
 * runs every site's backups through one Limiter (`concurrency`).
 *
 * Filestore errors are logged, counted (tandem_filestore_errors_total) and retried on the next tick
 * or run; nothing a standby sends can stop the daemon.
 */
export interface DaemonOptions {
  config: PrimaryConfig;
  filestore: Filestore;
  logger: Logger;
  clock?: Clock;
  /** The backups of every site of the process, at most `concurrency` at once (host.ts). */
  limiter?: Limiter;
  /** One of several sites of the process: its metrics carry site="<site>", without the process metrics. */
  oneOfSeveral?: boolean;
  pingIntervalMs?: number;
  helloTimeoutMs?: number;
  /** Delays of the retries after a failed scheduled run (default 1 min, 5 min, 15 min). */
  retryDelaysMs?: number[];
  /** onFenced/onResume of a switchover are killed after this long (default 5 min). */
  switchoverHookTimeoutMs?: number;
}

export class PrimaryDaemon {
  private readonly config: PrimaryConfig;
  private readonly fs: Filestore;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly timeZone: string;
  private readonly primaryHost: string;
  /** This primary's agent id: what epoch.json must name (the host name may be shared). */
  private readonly primaryId: string;
  private readonly signingKey: KeyObject;
  private readonly verifyKey: KeyObject;
  readonly metrics: DaemonMetrics;
  /** The primary's half of a planned switchover (switchover.ts). */
  readonly switchover: SwitchoverCoordinator;
  private readonly hub: StandbyHub;
  private readonly scheduler: Scheduler;
  private readonly fencing: Fencing;
  private readonly runner: BackupRunner;
  private readonly latest: LatestSet;
  private readonly heartbeat: HeartbeatLoop;
  private readonly life: SiteLifecycle;
  private readonly oneOfSeveral: boolean;
  /** What the status page draws: the newest set's age, the standbys' lag, the backups (page.ts). */
  private readonly history: PrimaryHistory;
  /** start() completed: the daemon served and ran its heartbeat loop. */
  private started = false;
  /** Files as content objects: the watcher of paths.files and its deltas (files-watch.ts, files-delta.ts). */
  private filesWatch: FilesWatcher | null = null;
  /** WAL mode: maxDelay (pg_switch_wal) and the archiver's state. */
  private walTimer: WalTimer | null = null;
  /** The newest files delta committed by this daemon: its number and time, for /status. */
  filesDelta: { setId: string; n: number; committedAt: string; entries: number } | null = null;

  constructor(opts: DaemonOptions) {
    const { config, filestore, logger } = opts;
    this.config = config;
    this.fs = filestore;
    this.log = logger;
    this.clock = opts.clock ?? systemClock;
    this.oneOfSeveral = opts.oneOfSeveral ?? false;
    this.timeZone = config.timezone ?? machineTimeZone();
    ({ host: this.primaryHost, id: this.primaryId } = primaryIdentity(config));
    this.signingKey = loadSigningKeyFile(config.keys.signingKeyFile, logger);
    this.verifyKey = createPublicKey(this.signingKey);
    const clock = this.clock;
    const isStopping = () => this.life.stopping;

    this.switchover = new SwitchoverCoordinator({
      config,
      logger,
      clock,
      epoch: () => this.fencing.epoch,
      isFenced: () => this.fencing.fenced,
      isStopping,
      runningBackup: () => this.runner.running,
      finalBackup: () => this.runner.backupNow('switchover'),
      ...(config.database.mode === 'wal'
        ? {
            finalWal: async (timeoutMs: number) => {
              if (!this.walTimer) throw new TandemError('internal', 'WAL_TIMER_OFF', 'the WAL timer does not run: the daemon is not started');
              return this.walTimer.closeAndArchive(timeoutMs);
            },
            newestSet: () => {
              const l = this.latest.current;
              return l === null ? null : { setId: l.setId, epoch: l.epoch };
            },
          }
        : {}),
      recheckEpoch: async () => {
        await this.fencing.check();
        return this.fencing.fenced;
      },
      resumed: () => this.runner.afterSwitchoverCalledOff(),
      setHeld: (held) => this.metrics.switchoverHeld.set(held ? 1 : 0),
      hookTimeoutMs: opts.switchoverHookTimeoutMs,
    });
    this.hub = new StandbyHub({
      site: config.site,
      logger: logger.child({ component: 'stream' }),
      clock,
      hello: () => this.hello(),
      latest: () => this.latest.current,
      onApplied: (e) => this.runner.noteApplied({ standbyId: e.standbyId, setId: e.setId, appliedAt: new Date(e.appliedAt) }),
      pingIntervalMs: opts.pingIntervalMs,
      helloTimeoutMs: opts.helloTimeoutMs,
      switchover: this.switchover,
    });
    this.metrics = new DaemonMetrics(
      {
        standbys: () => this.hub.list().map((s) => ({ standbyId: s.standbyId ?? '?', lagSeconds: s.lagSeconds })),
        nextRunAt: () => (this.fencing.fenced ? null : this.scheduler.nextRunAt),
        ...(config.database.mode === 'wal' ? { wal: () => this.walTimer?.status ?? null } : {}),
      },
      this.oneOfSeveral ? config.site : undefined,
    );
    this.scheduler = new Scheduler({
      schedule: config.schedule,
      timeZone: this.timeZone,
      clock,
      onDue: (reason, scheduledAt) => this.runner.due(reason, scheduledAt),
    });
    this.fencing = new Fencing({
      config,
      filestore,
      logger,
      clock,
      self: { id: this.primaryId, host: this.primaryHost },
      metrics: this.metrics,
      hookTimeoutMs: opts.switchoverHookTimeoutMs,
      stopBackups: (err) => {
        this.scheduler.stop();
        this.runner.abort(err);
        void this.filesWatch?.stop();
        // Fenced: no more WAL switches; the archiver's state stays watched (/status, metrics
        // show archive_command failing, as it must on a fenced primary).
        if (this.walTimer) this.walTimer.fenced = true;
      },
      endSwitchover: (newPrimary, why) => {
        const ran = this.switchover.onFencedRanForSwitchover();
        this.switchover.fenced(newPrimary, why);
        return ran;
      },
      closeConnections: () => this.hub.closeAll(CLOSE_CODES.fenced, 'this primary is fenced: a higher epoch exists'),
    });
    this.runner = new BackupRunner({
      config,
      filestore,
      logger,
      clock,
      metrics: this.metrics,
      scheduler: this.scheduler,
      fencing: this.fencing,
      switchover: this.switchover,
      verifyKey: this.verifyKey,
      timeZone: this.timeZone,
      retryDelaysMs: opts.retryDelaysMs ?? [60_000, 300_000, 900_000],
      isStopping,
      onCommitted: (l, trigger) => this.latest.committed(l, trigger),
      afterCommit: () => void this.heartbeat.tick(),
      onRunEnded: (run) => this.history.noteRun(run),
      limiter: opts.limiter,
    });
    this.latest = new LatestSet({
      site: config.site,
      filestore,
      logger,
      verifyKey: this.verifyKey,
      hub: this.hub,
      metrics: this.metrics,
      fencing: this.fencing,
      noteSuccess: (at) => this.runner.noteSuccess(at),
    });
    this.heartbeat = new HeartbeatLoop({
      site: config.site,
      filestore,
      logger,
      clock,
      signingKey: this.signingKey,
      primaryHost: this.primaryHost,
      metrics: this.metrics,
      hub: this.hub,
      fencing: this.fencing,
      latest: this.latest,
      scheduler: this.scheduler,
      lastRun: () => this.runner.lastRun,
      wal: () => {
        const w = this.walTimer?.status;
        return w ? { lastArchived: w.lastArchivedWal, current: w.currentWal, pendingSeconds: w.pendingSeconds, failing: w.failing } : undefined;
      },
      isStopping,
    });
    this.history = new PrimaryHistory({
      now: () => this.clock.now(),
      latest: () => this.latest.current,
      standbys: () => this.hub.list(),
      fenced: () => this.fencing.fenced,
    });
    this.life = new SiteLifecycle({ config, logger, clock, hub: this.hub });
  }

  /** host:port the server is bound to, once started. */
  get listenAddress(): string | null {
    return this.life.listenAddress;
  }

  get site(): string {
    return this.config.site;
  }

  /** A higher epoch exists: this primary makes no more backups and refuses standbys. */
  get fenced(): boolean {
    return this.fencing.fenced;
  }

  /**
   * Before the process serves: refuses (exit 2) while the site's BACKUP sentinel exists (the site
   * on this server is a standby) and while another daemon runs for its state directory; reads the
   * last run.
   */
  async prepare(): Promise<void> {
    // The site here is a standby (the BACKUP sentinel): no heartbeat, no schedule, exit 2.
    await refuseInBackupMode(this.config, 'daemon');
    await this.life.claim();
    await this.runner.loadLastRun();
    if (this.runner.lastRun !== null) this.history.noteRun(this.runner.lastRun);
  }

  /**
   * The process serves on `listen` (health checks, status): daemon.json names it; then the
   * filestore, which may be slow or down, and the schedule. Logs the ready line (of the site, when
   * it is one of several: the process logs its own).
   */
  async serve(listen: string, scheme: 'http' | 'https'): Promise<{ nextRunAt: Date | null; missed: boolean }> {
    const { config } = this;
    await this.life.announce(listen);
    this.history.start();
    await this.switchover.recover(); // a hold a stopped daemon left: before the epoch check, which may end it
    await this.heartbeat.refresh('reading epoch.json and latest.json at start-up');

    this.heartbeat.start(config.heartbeatInterval);
    const lastSuccess = this.runner.lastSuccessAt;
    const m = this.fencing.fenced ? { missed: false, scheduledAt: this.clock.now() } : this.scheduler.start(lastSuccess);
    if (m.missed) {
      this.log.info({ scheduledAt: m.scheduledAt.toISOString(), lastSuccessAt: lastSuccess?.toISOString() ?? null }, 'the last scheduled backup was missed: running it now');
    }
    void this.heartbeat.tick();
    if (!this.fencing.fenced) await this.startFilesWatch();
    if (config.database.mode === 'wal') {
      this.walTimer = new WalTimer({ config, logger: this.log });
      this.walTimer.fenced = this.fencing.fenced;
      this.walTimer.start();
      this.log.info({ maxDelaySeconds: config.database.maxDelay / 1000 }, 'WAL mode: written WAL goes to the filestore within maxDelay (archive_command: tandem-primary wal-push)');
    }
    this.started = true;
    const nextRunAt = this.fencing.fenced ? null : this.scheduler.nextRunAt;
    const fields = {
      listen,
      url: `${scheme}://${listen}`,
      stream: `${scheme === 'https' ? 'wss' : 'ws'}://${listen}/v1/stream`,
      site: config.site,
      epoch: this.fencing.epoch,
      schedule: config.schedule,
      timezone: this.timeZone,
      nextRunAt: nextRunAt?.toISOString() ?? null,
      filestore: this.fs.description,
    };
    if (this.oneOfSeveral) {
      this.log.info(fields, `site "${config.site}" ready${this.fencing.fenced ? ' (FENCED: no backups)' : ''}: next backup ${nextRunAt?.toISOString() ?? 'none'}`);
    } else {
      this.log.info(fields, `tandem-primary daemon ready: listening on ${scheme}://${listen} (site "${config.site}", next backup ${nextRunAt?.toISOString() ?? 'none'})`);
    }
    return { nextRunAt, missed: m.missed };
  }

  /** Files as content objects, and filesWatch.enabled: deltas of what changes in paths.files. */
  private async startFilesWatch(): Promise<void> {
    const { config } = this;
    if (config.keys.filesKeyFile === undefined || !config.filesWatch.enabled) return;
    if (isS3Url(config.paths.files)) {
      this.log.info({ files: config.paths.files }, 'the files are a bucket: they go with each set (a bucket gives no change events to watch)');
      return;
    }
    const writer = new FilesDeltaWriter({
      config,
      fs: this.fs,
      signingKey: this.signingKey,
      recipients: config.encryption === 'none' ? null : loadRecipients(config.keys.recipientFile!),
      filesKey: loadFilesKeyFile(config.keys.filesKeyFile, this.log),
      logger: this.log.child({ component: 'files-watch' }),
    });
    this.filesWatch = new FilesWatcher({
      dir: config.paths.files,
      settleMs: config.filesWatch.settle,
      scanIntervalMs: config.filesWatch.scanInterval,
      logger: this.log.child({ component: 'files-watch' }),
      onBatch: async (paths) => {
        // Fenced: the watcher is stopped (stopBackups); a switchover hold has the backup lock ("busy").
        const d = await writer.commit(paths);
        if (d === null) return;
        this.filesDelta = { setId: d.setId, n: d.n, committedAt: d.latest.files!.committedAt, entries: d.entries };
        this.metrics.filesDeltasTotal.inc();
        this.latest.deltaCommitted(d.setId, d.n, d.latest.files!.committedAt);
      },
    });
    await this.filesWatch.start();
    this.log.info({ dir: config.paths.files, mode: this.filesWatch.mode, settleSeconds: config.filesWatch.settle / 1000 }, 'watching the files: new and changed files go to the standbys as files deltas');
  }

  /** The files watcher as /status shows it; null without one. */
  filesWatchStatus(): { mode: string; pending: number; lastDelta: PrimaryDaemon['filesDelta']; lastError: string | null } | null {
    const w = this.filesWatch;
    return w === null ? null : { mode: w.mode, pending: w.pending.size, lastDelta: this.filesDelta, lastError: w.lastError };
  }

  /** Why a standby's channel of this site is refused now (fenced, shutting down), or null. */
  channelRefusal(): { code: number; reason: string } | null {
    if (this.fencing.fenced) return { code: CLOSE_CODES.fenced, reason: 'this primary is fenced: a higher epoch exists' };
    if (this.life.stopping) return { code: CLOSE_CODES.goingAway, reason: 'primary shutting down' };
    return null;
  }

  /** A standby's connection (or its channel of this site on a shared one): the push channel. */
  attach(ws: PushSocket, req: IncomingMessage, standbyId: string): void {
    this.hub.attach(ws, req, standbyId);
  }

  /** GET /status/history of this site. */
  historyDoc(): PrimaryHistoryDoc {
    return this.history.doc(this.pageState());
  }

  /** POST /v1/backup of this site. */
  requestBackup(onProgress?: (artifacts: ArtifactProgress[]) => void): Promise<{ status: number; body: unknown }> {
    return this.runner.request(onProgress);
  }

  /**
   * Stop the schedule, abort a running backup (nothing is committed), write the last heartbeat
   * (state "stopped": a standby may promote at once), close the standbys' connections; the process
   * then closes the server and calls release(). The stopped heartbeat is written only by a daemon
   * that started and wrote running heartbeats itself: after a failed start (the port taken, a
   * sentinel, another daemon running) heartbeat.json is left as it is, since the primary it names
   * may be running elsewhere.
   */
  stop(reason = 'stop requested'): Promise<void> {
    return this.life.stop(async () => {
      await this.filesWatch?.stop();
      await this.walTimer?.stop();
      this.scheduler.stop();
      this.heartbeat.stop();
      await this.switchover.stop();
      await this.runner.stop(reason);
      this.history.stop();
      if (this.started) await this.heartbeat.writeStopped();
    });
  }

  /** After the server closed: daemon.json goes. */
  release(): Promise<void> {
    return this.life.release();
  }

  /** Run a backup now. Throws kind 'busy' when one is running, 'fenced' when this primary is fenced. */
  backupNow(trigger: Trigger): Promise<BackupResult> {
    return this.runner.backupNow(trigger);
  }

  private hello(): PrimaryHello {
    return { type: 'hello', site: this.config.site, epoch: this.fencing.epoch, latestSetId: this.latest.current?.setId ?? null, serverTime: this.clock.now().toISOString() };
  }

  /** What the status page's problems are judged from. */
  private pageState(): PrimaryPageState {
    return {
      now: this.clock.now(),
      epoch: this.fencing.epoch,
      fenced: this.fencing.state,
      lastRun: this.runner.lastRun,
      latest: this.latest.current,
      heartbeat: this.heartbeat.state,
      standbys: this.hub.list(),
      configuredStandbys: this.config.standbys.map((s) => s.id),
      switchoverHold: this.switchover.holding() ? this.switchover.describeHold() : null,
    };
  }

  status(): Record<string, unknown> {
    const next = this.fencing.fenced ? null : this.scheduler.nextRunAt;
    return {
      site: this.config.site,
      epoch: this.fencing.epoch,
      fenced: this.fencing.state,
      primaryHost: this.primaryHost,
      primaryId: this.primaryId,
      pid: process.pid,
      startedAt: this.life.startedAt?.toISOString() ?? null,
      serverTime: this.clock.now().toISOString(),
      schedule: this.config.schedule,
      timezone: this.timeZone,
      nextRunAt: next?.toISOString() ?? null,
      ...this.runner.status(),
      latest: this.latest.current,
      filesWatch: this.filesWatchStatus(),
      ...(this.config.database.mode === 'wal' ? { wal: this.walTimer?.status ?? null } : {}),
      heartbeat: this.heartbeat.state,
      standbys: this.hub.list(),
      switchover: this.switchover.status(),
    };
  }
}
