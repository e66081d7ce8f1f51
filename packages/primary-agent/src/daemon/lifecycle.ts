import { CLOSE_CODES, TandemError, loadToken, requireDistinctTokens, type Logger, type PrimaryConfig } from '@tandem/shared';
import { stateFiles } from '../state-files.js';
import { findDaemon, probeDaemon, removeDaemonInfo, writeDaemonInfo } from './control.js';
import type { Clock } from './scheduler.js';
import { DaemonServer, type ServerHandlers, type ServerTokens } from './server.js';
import type { StandbyHub } from './standbys.js';

/**
 * The daemon as a process: one per state directory (stateDir/daemon.json names it while it runs),
 * its HTTP/WebSocket server with the tokens it knows, and the shutdown: the parts stop (schedule,
 * switchover hold, running backup), then the standbys' connections close (1001), the server
 * closes and daemon.json goes. The signals that end it are caught by the command (commands/run.ts).
 */

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

/**
 * The monitoring token and each listed standby's token, beside the control token: loaded now, so
 * that a missing or unsafe file stops the start with the key named; all must differ.
 */
export function serverTokens(config: PrimaryConfig, control: string, logger: Logger): ServerTokens {
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

export interface LifecycleOptions {
  config: PrimaryConfig;
  logger: Logger;
  clock: Clock;
  /** The control token (server.tokenFile or TANDEM_TOKEN); the others come from the config. */
  token: string;
  hub: StandbyHub;
  handlers: ServerHandlers;
}

export class DaemonLifecycle {
  private readonly server: DaemonServer;
  private started: Date | null = null;
  private listening: string | null = null;
  private stopRequested = false;
  private stopped: Promise<void> | null = null;

  constructor(private readonly opts: LifecycleOptions) {
    this.server = new DaemonServer({
      tokens: serverTokens(opts.config, opts.token, opts.logger),
      logger: opts.logger.child({ component: 'http' }),
      hub: opts.hub,
      handlers: opts.handlers,
      tls: opts.config.server.tls,
    });
  }

  /** 'https' with server.tls (the push channel is then wss://). */
  get scheme(): 'http' | 'https' {
    return this.server.scheme;
  }

  /** SIGHUP while serving: server.tls's files are read again (a failure keeps the old ones, logged). */
  private readonly onHangup = (): void => {
    if (this.server.tls === null) {
      this.opts.logger.info({ signal: 'SIGHUP' }, 'SIGHUP: nothing to reload (no server.tls)');
      return;
    }
    this.server.reloadTls('SIGHUP');
  };

  get startedAt(): Date | null {
    return this.started;
  }

  /** host:port the server is bound to, once it listens. */
  get listenAddress(): string | null {
    return this.listening;
  }

  /** True from the moment a stop was asked for. */
  get stopping(): boolean {
    return this.stopRequested;
  }

  /** One daemon per state directory: refuses (DAEMON_RUNNING) while another answers. */
  async claim(): Promise<void> {
    const { config, logger } = this.opts;
    const other = await findDaemon(config.stateDir);
    // A live pid may be a reused one after a crash: only a daemon that answers counts.
    if (other !== null && !(await probeDaemon(other.listen, 2000, config.server.tls))) {
      logger.warn({ daemonPid: other.pid, listen: other.listen }, 'daemon.json names a process that does not answer as a tandem daemon: taking over');
    } else if (other !== null) {
      throw new TandemError('busy', 'DAEMON_RUNNING', `a tandem-primary daemon for site "${config.site}" is already running (pid ${other.pid}, listening on ${other.listen})`, {
        hint: `stop it first; ${stateFiles(config.stateDir).daemonInfo} names it`,
      });
    }
    this.started = this.opts.clock.now();
  }

  /** Serve (health checks, status), and name the address in daemon.json. */
  async listen(): Promise<string> {
    const { config } = this.opts;
    this.listening = await this.server.listen(config.server.listen);
    process.on('SIGHUP', this.onHangup);
    await writeDaemonInfo(config.stateDir, { pid: process.pid, listen: this.listening, startedAt: (this.started ?? this.opts.clock.now()).toISOString(), site: config.site });
    return this.listening;
  }

  /**
   * Stop once (a second call gets the first one's promise): `stopParts` stops what runs (the
   * schedule, a switchover's timers, a running backup) before the connections and the server close.
   */
  stop(reason: string, stopParts: () => Promise<void>): Promise<void> {
    if (this.stopped) return this.stopped;
    this.stopRequested = true;
    const { hub, logger, config } = this.opts;
    this.stopped = (async () => {
      process.off('SIGHUP', this.onHangup);
      logger.info({ reason }, 'shutting down');
      await stopParts();
      hub.closeAll(CLOSE_CODES.goingAway, 'primary shutting down');
      const deadline = Date.now() + 1_000;
      while (hub.size > 0 && Date.now() < deadline) await sleep(20);
      hub.terminateAll();
      hub.stop();
      await this.server.close();
      await removeDaemonInfo(config.stateDir).catch((err: unknown) => logger.warn({ err }, 'could not remove daemon.json'));
      logger.info('stopped');
    })();
    return this.stopped;
  }
}
