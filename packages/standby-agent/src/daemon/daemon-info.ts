import { request } from 'node:http';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { TandemError, agentName, connectAddress, isTandemError, localDaemonConnection, pidAlive, loadToken, requireDistinctTokens, writeFileAtomic, type Logger, type ServerTlsConfig, type StandbyConfig } from '@tandem/shared';
import type { StandbyStatusDoc } from './status-doc.js';

/**
 * stateDir/daemon.json, written (0600) while `tandem-standby run` runs: how `tandem-standby status`
 * finds the daemon (pid alive?) and its HTTP server. stateDir/daemon.lock keeps a second daemon for
 * the same state dir from starting.
 */
export interface StandbyDaemonInfo {
  agent: 'tandem-standby';
  pid: number;
  /** host:port actually bound. */
  listen: string;
  startedAt: string;
  site: string;
  standbyId: string;
  /** Written by a daemon that serves several sites: their names (its /status then takes ?site=NAME). */
  sites?: string[];
}

export const daemonFiles = (stateDir: string) => ({ info: join(stateDir, 'daemon.json'), lock: join(stateDir, 'daemon.lock') });

export const writeDaemonInfo = (stateDir: string, info: StandbyDaemonInfo): Promise<void> =>
  writeFileAtomic(daemonFiles(stateDir).info, `${JSON.stringify(info, null, 2)}\n`, 0o600);

export async function readDaemonInfo(stateDir: string): Promise<StandbyDaemonInfo | null> {
  try {
    const v = JSON.parse(await readFile(daemonFiles(stateDir).info, 'utf8')) as Partial<StandbyDaemonInfo>;
    if (typeof v.pid !== 'number' || typeof v.listen !== 'string') return null;
    return {
      agent: 'tandem-standby',
      pid: v.pid,
      listen: v.listen,
      startedAt: String(v.startedAt ?? ''),
      site: String(v.site ?? ''),
      standbyId: String(v.standbyId ?? ''),
      ...(Array.isArray(v.sites) ? { sites: v.sites.map(String) } : {}),
    };
  } catch {
    return null;
  }
}

/** Removes daemon.json if it is this process's (a newer daemon's file stays). */
export async function removeDaemonInfo(stateDir: string, pid = process.pid): Promise<void> {
  const info = await readDaemonInfo(stateDir);
  if (info === null || info.pid === pid) await rm(daemonFiles(stateDir).info, { force: true });
}

/** The standbyId to use: the configured one, else this host's name made into a valid id (agentName). */
export const defaultStandbyId = (configured: string | undefined): string => agentName({ standbyId: configured });

/**
 * GET path from the running daemon with the token; null on any failure (not running, refused, timeout).
 * `tls`: the daemon's server.tls (its certificate is pinned: localDaemonConnection).
 */
export function fetchFromDaemon(listen: string, path: string, token: string | null, timeoutMs = 2_000, tls?: ServerTlsConfig): Promise<{ status: number; body: string } | null> {
  const { host, port } = connectAddress(listen);
  return new Promise((resolve) => {
    const req = request(
      {
        host,
        port,
        path,
        method: 'GET',
        timeout: timeoutMs,
        headers: token === null ? {} : { authorization: `Bearer ${token}` },
        ...(tls === undefined ? {} : { createConnection: localDaemonConnection(tls, { timeoutMs }) }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', () => resolve(null));
      },
    );
    req.on('timeout', () => req.destroy(new TandemError('transient', 'DAEMON_TIMEOUT', `no answer from the daemon at ${listen} within ${timeoutMs} ms`)));
    req.on('error', () => resolve(null));
    req.end();
  });
}

/**
 * This standby's own token for the primary's push channel (primary.tokenFile, else TANDEM_TOKEN):
 * required with primary: configured (config error without one); without (polling only) TANDEM_TOKEN
 * or nothing. It also opens this daemon's /status and /metrics.
 */
export function loadDaemonToken(config: StandbyConfig, logger?: Logger): string | null {
  if (config.primary !== undefined) return loadToken({ tokenFile: config.primary.tokenFile, key: 'primary.tokenFile', logger });
  try {
    return loadToken({ key: 'primary.tokenFile', logger });
  } catch (err) {
    if (isTandemError(err) && err.code === 'TOKEN_MISSING') return null;
    throw err;
  }
}

/**
 * The monitoring token for /status and /metrics (server.readTokenFile), or null. It must differ from
 * the push channel's token (`pushToken`): Prometheus must not hold what can ask for a switchover.
 */
export function loadReadToken(config: StandbyConfig, logger?: Logger, pushToken: string | null = null): string | null {
  if (config.server.readTokenFile === undefined) return null;
  const read = loadToken({ tokenFile: config.server.readTokenFile, key: 'server.readTokenFile', env: null, logger });
  if (pushToken !== null) requireDistinctTokens([{ key: 'primary.tokenFile', token: pushToken }, { key: 'server.readTokenFile', token: read }], config.configFile);
  return read;
}

/**
 * The running daemon's /status (the heartbeats it saw on the push channel, its runtime state), for
 * `status` and promote's preflight. `info` is null when no daemon runs; `problem` says why a running
 * one could not be asked. The daemon may serve several sites: this site's document is asked for
 * (?site=NAME; a daemon of one site ignores it).
 */
export async function askDaemonStatus(
  config: StandbyConfig,
  logger: Logger,
): Promise<{ info: StandbyDaemonInfo | null; live: StandbyStatusDoc | null; problem: string | null }> {
  const info = await readDaemonInfo(config.stateDir);
  if (info === null || !pidAlive(info.pid)) return { info: null, live: null, problem: null };
  let token: string | null = null;
  try {
    token = loadReadToken(config) ?? loadDaemonToken(config);
  } catch (err) {
    logger.debug({ err }, 'no token to ask the daemon with');
  }
  const path = info.sites === undefined ? '/status' : `/status?site=${encodeURIComponent(config.site)}`;
  const r = await fetchFromDaemon(info.listen, path, token, 2_000, config.server.tls);
  let live: StandbyStatusDoc | null = null;
  if (r !== null && r.status === 200) {
    try {
      const doc = JSON.parse(r.body) as StandbyStatusDoc | { sites?: Record<string, StandbyStatusDoc> };
      live = 'sites' in doc && doc.sites !== undefined ? (doc.sites[config.site] ?? null) : (doc as StandbyStatusDoc);
    } catch {
      live = null;
    }
  }
  const problem = live === null ? `the daemon (pid ${info.pid}) did not answer GET ${config.server.tls === undefined ? 'http' : 'https'}://${info.listen}${path}${r ? ` (HTTP ${r.status})` : ''}` : null;
  return { info, live, problem };
}
