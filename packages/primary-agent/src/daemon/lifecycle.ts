import { CLOSE_CODES, TandemError, loadToken, requireDistinctTokens, type Logger, type PrimaryConfig } from '@tandem/shared';
import { stateFiles } from '../state-files.js';
import { findDaemon, probeDaemon, removeDaemonInfo, writeDaemonInfo } from './control.js';
import type { Clock } from './scheduler.js';
import type { ServerTokens } from './server.js';
import type { StandbyHub } from './standbys.js';

/**
 * The daemon as a process: one per state directory (stateDir/daemon.json names it while it runs),
 * and the shutdown: the parts stop (schedule, switchover hold, running backup), then the standbys'
 * connections close (1001), the server closes and daemon.json goes. The server, the tokens and the
 * SIGHUP reload are the process's, shared by the sites it serves (host.ts). The signals that end
 * it are caught by the command (commands/run.ts).
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

export interface SiteLifecycleOptions {
  config: PrimaryConfig;
  logger: Logger;
  clock: Clock;
  hub: StandbyHub;
}

/**
 * One site of the daemon as the machine sees it: stateDir/daemon.json (one daemon per state
 * directory: claim() refuses while another answers), written once the process serves (announce:
 * it names the shared listen address), and the site's part of the shutdown: its parts stop, its
 * standbys' connections close (1001); daemon.json goes once the server closed (release).
 */
export class SiteLifecycle {
  private started: Date | null = null;
  private listening: string | null = null;
  private stopRequested = false;
  private stopped: Promise<void> | null = null;

  constructor(private readonly opts: SiteLifecycleOptions) {}

  get startedAt(): Date | null {
    return this.started;
  }

  /** host:port the process's server is bound to, once it listens. */
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

  /** The process serves on `listen`: daemon.json names it. */
  async announce(listen: string): Promise<void> {
    const { config } = this.opts;
    this.listening = listen;
    await writeDaemonInfo(config.stateDir, { pid: process.pid, listen, startedAt: (this.started ?? this.opts.clock.now()).toISOString(), site: config.site });
  }

  /**
   * Stop once (a second call gets the first one's promise): `stopParts` stops what runs (the
   * schedule, a switchover's timers, a running backup) before this site's connections close.
   */
  stop(stopParts: () => Promise<void>): Promise<void> {
    if (this.stopped) return this.stopped;
    this.stopRequested = true;
    const { hub } = this.opts;
    this.stopped = (async () => {
      await stopParts();
      hub.closeAll(CLOSE_CODES.goingAway, 'primary shutting down');
      const deadline = Date.now() + 1_000;
      while (hub.size > 0 && Date.now() < deadline) await sleep(20);
      hub.terminateAll();
      hub.stop();
    })();
    return this.stopped;
  }

  /** After the server closed: daemon.json goes (if it is this process's). */
  async release(): Promise<void> {
    await removeDaemonInfo(this.opts.config.stateDir).catch((err: unknown) => this.opts.logger.warn({ err }, 'could not remove daemon.json'));
  }
}
