/**
 * Fixtures for the daemon tests: a standby config with the daemon keys, the real
 * `tandem-standby run` as a child process, its HTTP endpoints and Prometheus text.
 */
import { request } from 'node:http';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { STANDBY_MAIN, startAgent, waitFor, type RunResult, type RunningPrimary } from './site.js';
import { writeStandbyConfig, type StandbyConfigInput, type StandbySite } from './standby-helpers.js';

export interface DaemonConfigInput extends StandbyConfigInput {
  pollInterval?: string;
  listen?: string;
  primary?: { url: string; tokenFile?: string };
  standbyId?: string;
  /** server.readTokenFile: the monitoring token for /status and /metrics. */
  readTokenFile?: string;
}

/** writeStandbyConfig plus the daemon's keys (default: listen on 127.0.0.1:0). */
export async function writeDaemonConfig(s: StandbySite, file: string, c: DaemonConfigInput = {}): Promise<string> {
  await writeStandbyConfig(s, file, c);
  const doc = fromYaml(await readFile(file, 'utf8')) as Record<string, unknown>;
  if (c.pollInterval !== undefined) doc.pollInterval = c.pollInterval;
  doc.server = { listen: c.listen ?? '127.0.0.1:0', ...(c.readTokenFile === undefined ? {} : { readTokenFile: c.readTokenFile }) };
  if (c.primary !== undefined) doc.primary = c.primary;
  if (c.standbyId !== undefined) doc.standbyId = c.standbyId;
  await writeFile(file, toYaml(doc));
  return file;
}

export async function writeToken(file: string, token: string): Promise<string> {
  await writeFile(file, `${token}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return file;
}

export interface RunningStandby extends RunningPrimary {
  pid: number;
  listen: string;
  /** SIGTERM (or the given signal) and the exit. */
  stop(signal?: NodeJS.Signals): Promise<RunResult>;
}

/** Starts `tandem-standby run --config FILE` and waits until its daemon.json names it. */
export async function startStandbyDaemon(configFile: string, stateDir: string, env: NodeJS.ProcessEnv = {}, extraArgs: string[] = []): Promise<RunningStandby> {
  const p = startAgent(STANDBY_MAIN, ['run', '--config', configFile, ...extraArgs], { env, timeoutMs: 300_000 });
  let exited: RunResult | null = null;
  void p.result.then((r) => {
    exited = r;
  });
  const info = await waitFor(
    async () => {
      if (exited !== null) throw new Error(`tandem-standby run exited early: ${(exited as RunResult).code}\n${(exited as RunResult).stderr}`);
      try {
        const v = JSON.parse(await readFile(join(stateDir, 'daemon.json'), 'utf8')) as { pid: number; listen: string };
        return v.pid === p.child.pid ? v : null;
      } catch {
        return null;
      }
    },
    'the standby daemon to write daemon.json',
    30_000,
  );
  return {
    ...p,
    pid: info.pid,
    listen: info.listen,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      p.child.kill(signal);
      return p.result;
    },
  };
}

export interface HttpResult {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

export function httpGet(listen: string, path: string, token?: string): Promise<HttpResult> {
  const i = listen.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const req = request(
      { host: listen.slice(0, i), port: Number(listen.slice(i + 1)), path, method: 'GET', headers: token === undefined ? {} : { authorization: `Bearer ${token}` } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample in Prometheus text, e.g. metric(text, 'tandem_standby_polls_total', { result: 'unchanged' }). */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const part of (m[3] ?? '').match(/[a-zA-Z_]+="(?:[^"\\]|\\.)*"/g) ?? []) {
      const eq = part.indexOf('=');
      have[part.slice(0, eq)] = part.slice(eq + 2, -1);
    }
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[4]);
  }
  return undefined;
}

export async function appliedSetId(stateDir: string): Promise<string | null> {
  try {
    return (JSON.parse(await readFile(join(stateDir, 'applied.json'), 'utf8')) as { setId: string }).setId;
  } catch {
    return null;
  }
}
