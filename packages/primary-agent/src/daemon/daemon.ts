import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CLOSE_CODES,
  TandemError,
  assertNotFenced,
  describeError,
  isNotFound,
  isTandemError,
  layout,
  loadSigningKeyFile,
  loadToken,
  namesAgent,
  requireDistinctTokens,
  readEpoch,
  verifyLatest,
  type Filestore,
  type Logger,
  type PrimaryConfig,
  type PrimaryHello,
  type SetCommitted,
} from '@tandem/shared';
import { primaryIdentity, readOrCreateEpoch } from '../backup/epoch.js';
import { runBackup, type BackupResult, type CommittedLatest } from '../backup/run-backup.js';
import { runHook } from '../hooks.js';
import { machineTimeZone, runRetention } from '../retention/run.js';
import type { AppliedRecord } from '../retention/plan.js';
import { abortableFilestore } from './abortable.js';
import { errorBody, findDaemon, probeDaemon, removeDaemonInfo, writeDaemonInfo } from './control.js';
import { writeHeartbeat } from './heartbeat.js';
import { DaemonMetrics } from './metrics.js';
import { Scheduler, systemClock, type Clock, type DueReason } from './scheduler.js';
import { DaemonServer, type ServerTokens } from './server.js';
import { StandbyHub, type LatestKnown } from './standbys.js';
import { SwitchoverCoordinator } from './switchover.js';

/**
 * `tandem-primary run`: the always-on primary agent.
 *
 * - Backs up on the cron schedule (configured time zone); a run missed while the daemon was down
 *   happens at start-up. One backup at a time (in this process; runBackup's lock file across
 *   processes). A failed scheduled run is retried (1 min, 5 min, 15 min) unless the next scheduled
 *   run comes first.
 * - The moment a backup commits (latest.json written): `set-committed` to every connected standby; then
 *   heartbeat.json, then retention.
 * - Every heartbeatInterval: a `heartbeat` message to the standbys; reads epoch.json (a higher epoch
 *   fences this primary: no more backups or heartbeats, tandem_fenced 1, onFenced runs) and
 *   latest.json (a set committed by a `--local` run is pushed too), then writes heartbeat.json.
 * - Filestore errors are logged, counted (tandem_filestore_errors_total) and retried on the next tick
 *   or run; nothing a standby sends can stop the daemon.
 * - A planned switchover (`tandem-standby switchover`, switchover.ts): onFenced, a final backup, a
 *   hold without backups; it ends fenced (the standby promoted) or called off (onResume).
 */
export type Trigger = DueReason | 'request' | 'switchover';

export interface LastRun {
  outcome: 'ok' | 'failed' | 'aborted';
  setId: string | null;
  /** When the run ended. */
  at: string;
  trigger: Trigger | null;
  durationSeconds: number | null;
  storedBytes: number | null;
  durations: Record<string, number> | null;
  error: string | null;
  errorKind: string | null;
}

export interface DaemonOptions {
  config: PrimaryConfig;
  filestore: Filestore;
  logger: Logger;
  /** The control token (server.tokenFile or TANDEM_TOKEN); the others come from the config (serverTokens). */
  token: string;
  clock?: Clock;
  pingIntervalMs?: number;
  helloTimeoutMs?: number;
  /** Delays of the retries after a failed scheduled run (default 1 min, 5 min, 15 min). */
  retryDelaysMs?: number[];
  /** onFenced/onResume of a switchover are killed after this long (default 5 min). */
  switchoverHookTimeoutMs?: number;
}

interface Running {
  trigger: Trigger;
  startedAt: Date;
  ac: AbortController;
  promise: Promise<BackupResult>;
}

interface Latest extends LatestKnown {
  epoch: number;
  seq: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

/**
 * The monitoring token and each listed standby's token, beside the control token: loaded now, so
 * that a missing or unsafe file stops the start with the key named; all must differ.
 */
function serverTokens(config: PrimaryConfig, control: string, logger: Logger): ServerTokens {
  const read = config.server.readTokenFile === undefined ? null : loadToken({ tokenFile: config.server.readTokenFile, key: 'server.readTokenFile', env: null, logger });
  const standbys = config.standbys.map((sb, i) => ({ id: sb.id, token: loadToken({ tokenFile: sb.tokenFile, key: `standbys[${i}].tokenFile (standby "${sb.id}")`, env: null, logger }) }));
  requireDistinctTokens(
    [
      { key: 'server.tokenFile', token: control },
      ...(read === null ? [] : [{ key: 'server.readTokenFile', token: read }]),
      ...standbys.map((sb, i) => ({ key: `standbys[${i}].tokenFile (standby "${sb.id}")`, token: sb.token })),
    ],
    config.configFile,
  );
  if (standbys.length === 0) {
    logger.warn({}, 'no standbys are listed (standbys: in the config): the push channel /v1/stream refuses every connection, standbys rely on polling, and no switchover is possible');
  }
  return { control, read, standbys };
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
  private readonly retryDelays: number[];
  private readonly signingKey: KeyObject;
  private readonly verifyKey: KeyObject;
  readonly metrics: DaemonMetrics;
  private readonly hub: StandbyHub;
  private readonly server: DaemonServer;
  private readonly scheduler: Scheduler;
  /** The primary's half of a planned switchover (switchover.ts). */
  readonly switchover: SwitchoverCoordinator;
  /** A run that came due while a switchover held: run once it is called off. */
  private skippedDue: DueReason | null = null;

  private epoch: number | null = null;
  private latest: Latest | null = null;
  private latestVersion: string | undefined;
  private lastRun: LastRun | null = null;
  private lastSuccessAt: Date | null = null;
  private running: Running | null = null;
  private retryAttempt = 0;
  private fenced: { filestoreEpoch: number | null; at: string; why: string } | null = null;
  private heartbeat: { lastWrittenAt: string | null; lastError: string | null } = { lastWrittenAt: null, lastError: null };
  private readonly applied = new Map<string, AppliedRecord>();
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private tickRunning = false;
  private tickAgain = false;
  private maintenance: Promise<void> = Promise.resolve();
  private stopping = false;
  private stopped: Promise<void> | null = null;
  private startedAt: Date | null = null;
  listenAddress: string | null = null;
  private readonly hookTimeoutMs: number | undefined;

  constructor(opts: DaemonOptions) {
    this.hookTimeoutMs = opts.switchoverHookTimeoutMs;
    this.config = opts.config;
    this.fs = opts.filestore;
    this.log = opts.logger;
    this.clock = opts.clock ?? systemClock;
    this.timeZone = opts.config.timezone ?? machineTimeZone();
    ({ host: this.primaryHost, id: this.primaryId } = primaryIdentity(opts.config));
    this.retryDelays = opts.retryDelaysMs ?? [60_000, 300_000, 900_000];
    this.signingKey = loadSigningKeyFile(opts.config.keys.signingKeyFile, opts.logger);
    this.verifyKey = createPublicKey(this.signingKey);
    this.switchover = new SwitchoverCoordinator({
      config: opts.config,
      logger: opts.logger,
      clock: this.clock,
      epoch: () => this.epoch,
      isFenced: () => this.fenced !== null,
      isStopping: () => this.stopping,
      runningBackup: () => this.running,
      finalBackup: () => this.backupNow('switchover'),
      recheckEpoch: async () => {
        await this.checkEpoch();
        return this.fenced !== null;
      },
      resumed: () => this.afterSwitchoverCalledOff(),
      setHeld: (held) => this.metrics.switchoverHeld.set(held ? 1 : 0),
      hookTimeoutMs: opts.switchoverHookTimeoutMs,
    });
    this.hub = new StandbyHub({
      site: opts.config.site,
      logger: opts.logger.child({ component: 'stream' }),
      clock: this.clock,
      hello: () => this.hello(),
      latest: () => this.latest,
      onApplied: (e) => this.applied.set(e.standbyId, { standbyId: e.standbyId, setId: e.setId, appliedAt: new Date(e.appliedAt) }),
      pingIntervalMs: opts.pingIntervalMs,
      helloTimeoutMs: opts.helloTimeoutMs,
      switchover: this.switchover,
    });
    this.metrics = new DaemonMetrics({
      standbys: () => this.hub.list().map((s) => ({ standbyId: s.standbyId ?? '?', lagSeconds: s.lagSeconds })),
      nextRunAt: () => (this.fenced ? null : this.scheduler.nextRunAt),
    });
    this.scheduler = new Scheduler({
      schedule: opts.config.schedule,
      timeZone: this.timeZone,
      clock: this.clock,
      onDue: (reason, scheduledAt) => this.due(reason, scheduledAt),
    });
    this.server = new DaemonServer({
      tokens: serverTokens(opts.config, opts.token, opts.logger),
      logger: opts.logger.child({ component: 'http' }),
      hub: this.hub,
      handlers: {
        status: () => this.status(),
        metrics: async () => ({ contentType: this.metrics.contentType, body: await this.metrics.text() }),
        backup: () => this.backupRequest(),
        refuseUpgrade: () => (this.fenced ? '503 Service Unavailable' : this.stopping ? '503 Service Unavailable' : null),
      },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Start and stop
  // -------------------------------------------------------------------------------------------

  async start(): Promise<{ listen: string; nextRunAt: Date | null; missed: boolean }> {
    const { config } = this;
    const other = await findDaemon(config.stateDir);
    // A live pid may be a reused one after a crash: only a daemon that answers counts.
    if (other !== null && !(await probeDaemon(other.listen))) {
      this.log.warn({ pid: other.pid, listen: other.listen }, 'daemon.json names a process that does not answer as a tandem daemon: taking over');
    } else if (other !== null) {
      throw new TandemError('busy', 'DAEMON_RUNNING', `a tandem-primary daemon for site "${config.site}" is already running (pid ${other.pid}, listening on ${other.listen})`, {
        hint: `stop it first; ${join(config.stateDir, 'daemon.json')} names it`,
      });
    }
    this.startedAt = this.clock.now();
    await this.loadLastRun();
    // Serve first (health checks, status), then look at the filestore, which may be slow or down.
    this.listenAddress = await this.server.listen(config.server.listen);
    await writeDaemonInfo(config.stateDir, { pid: process.pid, listen: this.listenAddress, startedAt: this.startedAt.toISOString(), site: config.site });
    await this.switchover.recover(); // a hold a stopped daemon left: before the epoch check, which may end it
    await this.filestoreOp('reading epoch.json and latest.json at start-up', () => this.refreshFromFilestore());

    this.heartbeatTimer = setInterval(() => void this.tick(), config.heartbeatInterval);
    const lastSuccess = this.lastSuccessAt;
    const m = this.fenced ? { missed: false, scheduledAt: this.clock.now() } : this.scheduler.start(lastSuccess);
    if (m.missed) {
      this.log.info({ scheduledAt: m.scheduledAt.toISOString(), lastSuccessAt: lastSuccess?.toISOString() ?? null }, 'the last scheduled backup was missed: running it now');
    }
    void this.tick();
    const nextRunAt = this.fenced ? null : this.scheduler.nextRunAt;
    this.log.info(
      {
        listen: this.listenAddress,
        url: `http://${this.listenAddress}`,
        stream: `ws://${this.listenAddress}/v1/stream`,
        site: config.site,
        epoch: this.epoch,
        schedule: config.schedule,
        timezone: this.timeZone,
        nextRunAt: nextRunAt?.toISOString() ?? null,
        filestore: this.fs.description,
      },
      `tandem-primary daemon ready: listening on http://${this.listenAddress} (site "${config.site}", next backup ${nextRunAt?.toISOString() ?? 'none'})`,
    );
    return { listen: this.listenAddress, nextRunAt, missed: m.missed };
  }

  /** Stop the schedule, abort a running backup (nothing is committed), close the server. */
  stop(reason = 'stop requested'): Promise<void> {
    if (this.stopped) return this.stopped;
    this.stopping = true;
    this.stopped = (async () => {
      this.log.info({ reason }, 'shutting down');
      this.scheduler.stop();
      if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
      await this.switchover.stop();
      const running = this.running;
      if (running) {
        this.log.warn({ trigger: running.trigger }, 'aborting the running backup; nothing of it will be committed');
        running.ac.abort(new TandemError('transient', 'SHUTDOWN', `the daemon is shutting down (${reason})`));
        await running.promise.catch(() => undefined);
      }
      await Promise.race([this.maintenance, sleep(10_000)]);
      this.hub.closeAll(CLOSE_CODES.goingAway, 'primary shutting down');
      const deadline = Date.now() + 1_000;
      while (this.hub.size > 0 && Date.now() < deadline) await sleep(20);
      this.hub.terminateAll();
      this.hub.stop();
      await this.server.close();
      await removeDaemonInfo(this.config.stateDir).catch((err: unknown) => this.log.warn({ err: describeError(err) }, 'could not remove daemon.json'));
      this.log.info('stopped');
    })();
    return this.stopped;
  }

  private async loadLastRun(): Promise<void> {
    let doc: Record<string, unknown>;
    try {
      doc = JSON.parse(await readFile(join(this.config.stateDir, 'last-backup.json'), 'utf8')) as Record<string, unknown>;
    } catch {
      return;
    }
    const str = (v: unknown) => (typeof v === 'string' ? v : null);
    const durations = (doc.durations ?? null) as Record<string, number> | null;
    const at = str(doc.at);
    if (at === null) return;
    this.lastRun = {
      outcome: doc.outcome === 'ok' ? 'ok' : 'failed',
      setId: str(doc.setId) || null,
      at,
      trigger: null,
      durationSeconds: durations?.total ?? null,
      storedBytes: typeof doc.storedBytes === 'number' ? doc.storedBytes : null,
      durations,
      error: str(doc.error),
      errorKind: null,
    };
    if (this.lastRun.outcome === 'ok') {
      this.noteSuccess(new Date(at));
      this.setBackupMetrics(this.lastRun);
    }
    this.metrics.lastBackupSuccess.set(this.lastRun.outcome === 'ok' ? 1 : 0);
  }

  private noteSuccess(at: Date): void {
    if (this.lastSuccessAt === null || at > this.lastSuccessAt) this.lastSuccessAt = at;
    this.metrics.lastBackupTimestamp.set(this.lastSuccessAt.getTime() / 1000);
  }

  private setBackupMetrics(run: LastRun): void {
    this.metrics.lastBackupDuration.reset();
    for (const [stage, s] of Object.entries(run.durations ?? {})) this.metrics.lastBackupDuration.set({ stage }, s);
    if (run.storedBytes !== null) this.metrics.lastBackupStoredBytes.set(run.storedBytes);
  }

  // -------------------------------------------------------------------------------------------
  // Backups
  // -------------------------------------------------------------------------------------------

  private due(reason: DueReason, scheduledAt: Date): void {
    if (this.switchover.holding()) {
      this.skippedDue ??= reason;
      this.log.info({ reason, scheduledAt: scheduledAt.toISOString() }, `backup due, but a switchover holds the primary: deferred until it ends (${this.switchover.describeHold()})`);
      return;
    }
    if (this.running) {
      this.log.info({ reason, scheduledAt: scheduledAt.toISOString(), running: this.running.trigger }, 'backup due, but one is already running: skipped');
      return;
    }
    this.log.info({ reason, scheduledAt: scheduledAt.toISOString() }, 'backup due');
    this.backupNow(reason).catch(() => undefined); // reported by backupNow
  }

  /** Run a backup now. Throws kind 'busy' when one is running, 'fenced' when this primary is fenced. */
  backupNow(trigger: Trigger): Promise<BackupResult> {
    if (this.stopping) return Promise.reject(new TandemError('transient', 'SHUTTING_DOWN', 'the daemon is shutting down; no new backup is started'));
    if (this.fenced) return Promise.reject(this.fencedError());
    if (trigger !== 'switchover' && this.switchover.holding()) {
      return Promise.reject(
        new TandemError('busy', 'SWITCHOVER_HOLD', `no backup of site "${this.config.site}" now: ${this.switchover.describeHold()}`, {
          hint: 'the switchover ends with this primary fenced or resumed; /status shows it',
        }),
      );
    }
    if (this.running) {
      const r = this.running;
      return Promise.reject(
        new TandemError('busy', 'BACKUP_RUNNING', `a backup of site "${this.config.site}" is already running in the daemon (${r.trigger}, started ${r.startedAt.toISOString()})`, {
          hint: 'wait for it to finish: `tandem-primary list` shows the new set when it is committed',
        }),
      );
    }
    const ac = new AbortController();
    const startedAt = this.clock.now();
    const log = this.log.child({ trigger });
    const promise = (async () => {
      try {
        // Rule 7: a primary that sees a higher epoch than its own stops uploading.
        await this.checkEpoch();
        if (this.fenced) throw this.fencedError();
        log.info('backup starting');
        // The wrapper refuses new filestore operations once aborted (deletes excepted, for the
        // clean-up), so an abort between two artifacts stops the backup there.
        const result = await runBackup(this.config, {
          filestore: abortableFilestore(this.fs, ac.signal),
          logger: log,
          signal: ac.signal,
          // The push goes out the moment latest.json names the set, before any local bookkeeping.
          onCommitted: (l) => this.pushCommitted(l, trigger),
        });
        await this.committed(result, trigger);
        return result;
      } catch (err) {
        this.failed(err, trigger, ac.signal.aborted);
        throw err;
      } finally {
        this.running = null;
      }
    })();
    this.running = { trigger, startedAt, ac, promise };
    return promise;
  }

  private async committed(r: BackupResult, trigger: Trigger): Promise<void> {
    const at = this.clock.now();
    this.lastRun = {
      outcome: 'ok',
      setId: r.setId,
      at: at.toISOString(),
      trigger,
      durationSeconds: r.durations.total ?? null,
      storedBytes: r.storedBytes,
      durations: r.durations,
      error: null,
      errorKind: null,
    };
    this.noteSuccess(at);
    this.setBackupMetrics(this.lastRun);
    this.metrics.lastBackupSuccess.set(1);
    this.metrics.backupsTotal.inc({ outcome: 'ok' });
    this.retryAttempt = 0;
    this.scheduler.cancelRetry();
    this.epoch = r.epoch; // runBackup checked that epoch.json names this server in it

    void this.tick();
    this.maintenance = this.maintenance.then(() => this.retention());
  }

  private pushCommitted(l: CommittedLatest, trigger: Trigger): void {
    this.latest = { setId: l.setId, epoch: l.epoch, seq: l.seq, createdAt: l.createdAt, committedAt: l.committedAt };
    this.latestVersion = l.version;
    const msg: SetCommitted = { type: 'set-committed', site: this.config.site, ...this.latest };
    const n = this.hub.broadcast(msg);
    this.log.info({ setId: l.setId, trigger, standbys: n }, `set-committed pushed to ${n} standby(s)`);
  }

  private failed(err: unknown, trigger: Trigger, aborted: boolean): void {
    const kind = isTandemError(err) ? err.kind : 'internal';
    const outcome = aborted ? 'aborted' : 'failed';
    this.lastRun = {
      outcome,
      setId: null,
      at: this.clock.now().toISOString(),
      trigger,
      durationSeconds: null,
      storedBytes: null,
      durations: null,
      error: describeError(err),
      errorKind: kind,
    };
    this.metrics.lastBackupSuccess.set(0);
    this.metrics.backupsTotal.inc({ outcome });
    if (aborted) {
      this.log.warn({ trigger }, 'backup aborted; nothing committed');
      return;
    }
    this.metrics.backupFailuresTotal.inc({ kind });
    if (kind === 'transient' || kind === 'permanent' || kind === 'not-found' || kind === 'precondition') this.metrics.filestoreErrorsTotal.inc();
    if (kind === 'busy') {
      this.log.warn({ trigger, err: describeError(err) }, 'backup not started: another backup of this site is running (outside the daemon)');
      return;
    }
    this.log.error({ trigger, kind, code: isTandemError(err) ? err.code : undefined, err: describeError(err) }, 'backup failed; nothing committed');
    if (kind === 'fenced') {
      this.fence(null, describeError(err));
      return;
    }
    if (trigger !== 'request' && trigger !== 'switchover' && kind !== 'config' && kind !== 'integrity' && this.retryAttempt < this.retryDelays.length) {
      const at = this.scheduler.retryAfter(this.retryDelays[this.retryAttempt]!);
      this.retryAttempt++;
      if (at) this.log.info({ retryAt: at.toISOString(), attempt: this.retryAttempt }, 'the failed backup will be retried');
    }
  }

  private async backupRequest(): Promise<{ status: number; body: unknown }> {
    this.log.info('backup requested over HTTP (tandem-primary backup)');
    try {
      return { status: 200, body: await this.backupNow('request') };
    } catch (err) {
      const kind = isTandemError(err) ? err.kind : 'internal';
      const status = kind === 'busy' ? 409 : kind === 'fenced' || (isTandemError(err) && err.code === 'SHUTTING_DOWN') ? 503 : 500;
      return { status, body: errorBody(err) };
    }
  }

  private async retention(): Promise<void> {
    if (this.stopping || this.fenced) return;
    try {
      const o = await runRetention(this.config, {
        filestore: this.fs,
        verifyKey: this.verifyKey,
        logger: this.log.child({ component: 'retention' }),
        timeZone: this.timeZone,
        extraApplied: [...this.applied.values()],
        now: this.clock.now(),
      });
      this.log.info({ kept: o.plan.keep.length, deleted: o.deleted, failed: o.failed.length }, 'retention done');
      if (o.failed.length > 0) this.metrics.filestoreErrorsTotal.inc(o.failed.length);
    } catch (err) {
      this.countFilestoreError('retention', err);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Heartbeat, epoch, latest.json
  // -------------------------------------------------------------------------------------------

  private async tick(): Promise<void> {
    if (this.tickRunning) {
      this.tickAgain = true;
      return;
    }
    this.tickRunning = true;
    try {
      await this.tickOnce();
    } catch (err) {
      this.log.error({ err }, 'heartbeat tick failed unexpectedly; the next one tries again');
    } finally {
      this.tickRunning = false;
    }
  }

  private async tickOnce(): Promise<void> {
    do {
      this.tickAgain = false;
      if (this.stopping) return;
      const at = this.clock.now();
      this.hub.broadcast({ type: 'heartbeat', at: at.toISOString() });
      if (this.fenced) return;
      await this.filestoreOp('reading epoch.json and latest.json', () => this.refreshFromFilestore());
      if (this.fenced || this.epoch === null || this.stopping) return;
      await this.filestoreOp('writing heartbeat.json', async () => {
        const last = this.lastRun;
        await writeHeartbeat(this.fs, this.signingKey, {
          site: this.config.site,
          epoch: this.epoch!,
          primaryHost: this.primaryHost,
          at: this.clock.now(),
          lastBackup: last ? { setId: last.setId, at: last.at, outcome: last.outcome === 'ok' ? 'ok' : 'failed' } : null,
          nextBackupAt: this.scheduler.nextRunAt,
          latest: this.latest,
        });
        this.heartbeat = { lastWrittenAt: this.clock.now().toISOString(), lastError: null };
        this.metrics.heartbeatTimestamp.set(this.clock.now().getTime() / 1000);
      });
    } while (this.tickAgain);
  }

  /** Runs `fn`; a failure is logged and counted, never thrown. */
  private async filestoreOp(what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      this.countFilestoreError(what, err);
      if (what.startsWith('writing heartbeat')) this.heartbeat.lastError = describeError(err);
    }
  }

  private countFilestoreError(what: string, err: unknown): void {
    this.metrics.filestoreErrorsTotal.inc();
    this.log.warn({ err: describeError(err), kind: isTandemError(err) ? err.kind : undefined }, `filestore: ${what} failed; retried later`);
  }

  /**
   * Fencing (rule 7): epoch.json must name this server. Created as epoch 1 naming it when the site
   * has none; a record naming another server (promoted elsewhere) fences this primary.
   */
  private async checkEpoch(): Promise<void> {
    try {
      if (this.epoch === null) {
        this.epoch = (await readOrCreateEpoch(this.fs, this.config, this.log)).epoch;
        return;
      }
      const current = await readEpoch(this.fs, this.config.site);
      if (current === null) return;
      if (namesAgent(current.doc, { id: this.primaryId, host: this.primaryHost }) && current.doc.epoch >= this.epoch) {
        this.epoch = current.doc.epoch;
        return;
      }
      assertNotFenced(current.doc, { epoch: this.epoch, id: this.primaryId, host: this.primaryHost }, this.config.site);
    } catch (err) {
      if (!isTandemError(err, 'fenced')) throw err;
      const current = await readEpoch(this.fs, this.config.site).catch(() => null);
      this.fence(current?.doc.epoch ?? null, err.message, current?.doc.primaryHost ?? null);
    }
  }

  private async refreshFromFilestore(): Promise<void> {
    await this.checkEpoch();
    if (this.fenced) return;
    const key = layout.latest(this.config.site);
    let r;
    try {
      r = await this.fs.getIfChanged(key, this.latestVersion);
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    if (!r.changed) return;
    const p = verifyLatest(r.body, this.verifyKey, `${this.fs.description}/${key}`);
    this.latestVersion = r.info.version;
    if (this.epoch !== null && p.epoch > this.epoch) {
      this.fence(p.epoch, `latest.json names set ${p.setId} of epoch ${p.epoch}, above this primary's epoch ${this.epoch}: another primary commits sets`);
      return;
    }
    const known = this.latest;
    if (known !== null && (p.epoch < known.epoch || (p.epoch === known.epoch && p.seq < known.seq))) {
      // Signed by this primary, but older than what it committed since: an old copy put back. The
      // heartbeat goes on naming the newest set, which is how the standbys notice.
      this.log.error({ latestJson: p.setId, newest: known.setId }, `latest.json names set ${p.setId}, older than ${known.setId} which this primary committed: an old latest.json was put back (replayed); heartbeats keep naming ${known.setId}`);
      this.metrics.filestoreErrorsTotal.inc();
      return;
    }
    this.latest = { setId: p.setId, epoch: p.epoch, seq: p.seq, createdAt: p.createdAt, committedAt: p.committedAt };
    this.noteSuccess(new Date(p.committedAt));
    if (known !== null && known.setId !== p.setId && p.setId > known.setId) {
      // Committed outside the daemon (tandem-primary backup --local): push it all the same.
      const n = this.hub.broadcast({ type: 'set-committed', site: this.config.site, setId: p.setId, epoch: p.epoch, seq: p.seq, createdAt: p.createdAt, committedAt: p.committedAt });
      this.log.info({ setId: p.setId, standbys: n }, 'a set committed outside the daemon: pushed to the standbys');
    }
  }

  private fencedError(): TandemError {
    return new TandemError('fenced', 'FENCED', `this primary is fenced and makes no more backups: ${this.fenced?.why ?? 'a higher epoch exists'}`, {
      hint: 'the site now runs elsewhere: stop this primary; to make this server follow, run `tandem-standby run` here',
    });
  }

  private fence(filestoreEpoch: number | null, why: string, newPrimary: string | null = null): void {
    if (this.fenced) return;
    this.fenced = { filestoreEpoch, at: this.clock.now().toISOString(), why };
    this.metrics.fenced.set(1);
    this.scheduler.stop();
    this.running?.ac.abort(this.fencedError());
    this.log.error({ epoch: this.epoch, filestoreEpoch, why }, 'FENCED: a higher epoch exists; this primary stops backing up and writing heartbeats');
    // onFenced stopped the site's writes for a switchover already: it does not run twice.
    const alreadyRan = this.switchover.onFencedRanForSwitchover();
    this.switchover.fenced(newPrimary, why); // before the close, so the switchover's standby hears it
    this.hub.closeAll(CLOSE_CODES.fenced, 'this primary is fenced: a higher epoch exists');
    const cmd = this.config.onFenced;
    if (cmd && alreadyRan) {
      this.log.info({ onFenced: cmd }, 'onFenced is not run again: it ran for the switchover');
    } else if (cmd) {
      const env = { TANDEM_SITE: this.config.site, TANDEM_EPOCH: String(this.epoch ?? ''), TANDEM_FILESTORE_EPOCH: String(filestoreEpoch ?? ''), TANDEM_REASON: 'fenced' };
      void runHook(cmd, env, this.hookTimeoutMs).then((r) => {
        if (r.ok) this.log.info({ onFenced: cmd }, 'onFenced ran');
        else this.log.error({ onFenced: cmd, error: r.error }, 'onFenced failed');
      });
    }
  }

  /** A switchover was called off (or refused after it waited): run what came due meanwhile. */
  private afterSwitchoverCalledOff(): void {
    const reason = this.skippedDue;
    this.skippedDue = null;
    if (reason === null || this.fenced || this.stopping) return;
    this.log.info({ reason }, 'running the backup that came due during the switchover');
    this.due(reason, this.clock.now());
  }

  // -------------------------------------------------------------------------------------------
  // Status
  // -------------------------------------------------------------------------------------------

  private hello(): PrimaryHello {
    return { type: 'hello', site: this.config.site, epoch: this.epoch, latestSetId: this.latest?.setId ?? null, serverTime: this.clock.now().toISOString() };
  }

  status(): Record<string, unknown> {
    const last = this.lastRun;
    const next = this.fenced ? null : this.scheduler.nextRunAt;
    return {
      site: this.config.site,
      epoch: this.epoch,
      fenced: this.fenced,
      primaryHost: this.primaryHost,
      primaryId: this.primaryId,
      pid: process.pid,
      startedAt: this.startedAt?.toISOString() ?? null,
      serverTime: this.clock.now().toISOString(),
      schedule: this.config.schedule,
      timezone: this.timeZone,
      nextRunAt: next?.toISOString() ?? null,
      backupRunning: this.running ? { trigger: this.running.trigger, startedAt: this.running.startedAt.toISOString() } : null,
      lastBackup: last
        ? {
            id: last.setId,
            time: last.at,
            duration: last.durationSeconds,
            bytes: last.storedBytes,
            outcome: last.outcome,
            error: last.error,
            trigger: last.trigger,
          }
        : null,
      lastSuccessAt: this.lastSuccessAt?.toISOString() ?? null,
      latest: this.latest,
      heartbeat: this.heartbeat,
      standbys: this.hub.list(),
      switchover: this.switchover.status(),
    };
  }
}
