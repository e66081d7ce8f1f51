import { request, type IncomingMessage } from 'node:http';
import { readFile, rm } from 'node:fs/promises';
import { TandemError, connectAddress, describeError, describeTlsFailure, localDaemonConnection, pidAlive, writeFileAtomic, type ArtifactProgress, type ErrorKind, type ServerTlsConfig } from '@tandem/shared';
import type { BackupResult } from '../backup/run-backup.js';
import { stateFiles } from '../state-files.js';

/**
 * How `tandem-primary backup` finds a running daemon and has it do the backup: the daemon writes
 * stateDir/daemon.json {pid, listen, startedAt, site} (0600) while it runs; a CLI run that finds the
 * file with a live pid POSTs /v1/backup?site=<site> to that address with the token and waits for
 * the result. A daemon serving several sites writes one daemon.json per site, each in that site's
 * stateDir, each naming the one address they share.
 */
export interface DaemonInfo {
  pid: number;
  /** host:port actually bound. */
  listen: string;
  startedAt: string;
  site: string;
}

export const daemonInfoFile = (stateDir: string): string => stateFiles(stateDir).daemonInfo;

export async function writeDaemonInfo(stateDir: string, info: DaemonInfo): Promise<void> {
  await writeFileAtomic(daemonInfoFile(stateDir), `${JSON.stringify({ agent: 'tandem-primary', ...info }, null, 2)}\n`, 0o600);
}

/** Remove daemon.json if it is ours (a newer daemon's file is left alone). */
export async function removeDaemonInfo(stateDir: string, pid = process.pid): Promise<void> {
  const info = await readDaemonInfo(stateDir);
  if (info === null || info.pid === pid) await rm(daemonInfoFile(stateDir), { force: true });
}

export async function readDaemonInfo(stateDir: string): Promise<DaemonInfo | null> {
  try {
    const v = JSON.parse(await readFile(daemonInfoFile(stateDir), 'utf8')) as Partial<DaemonInfo>;
    // Both agents keep a daemon.json; with a shared state dir the standby's must not be taken for ours.
    const agent = (v as { agent?: unknown }).agent;
    if (typeof v.pid !== 'number' || typeof v.listen !== 'string' || (agent !== undefined && agent !== 'tandem-primary')) return null;
    return { pid: v.pid, listen: v.listen, startedAt: String(v.startedAt ?? ''), site: String(v.site ?? '') };
  } catch {
    return null;
  }
}

/** The running daemon of this state dir, or null (no file, or its process is gone). */
export async function findDaemon(stateDir: string): Promise<DaemonInfo | null> {
  const info = await readDaemonInfo(stateDir);
  return info !== null && info.pid !== process.pid && pidAlive(info.pid) ? info : null;
}

/**
 * How a command reaches the daemon it runs beside: plain HTTP, or with server.tls over TLS with the
 * daemon's certificate pinned (localDaemonConnection).
 */
const overTls = (tls: ServerTlsConfig | undefined, timeoutMs?: number) => (tls === undefined ? {} : { createConnection: localDaemonConnection(tls, { timeoutMs }) });

/** Whether a tandem daemon answers GET /healthz at `listen` (within `timeoutMs`); `tls`: its server.tls. */
export function probeDaemon(listen: string, timeoutMs = 2000, tls?: ServerTlsConfig): Promise<boolean> {
  const { host, port } = connectAddress(listen);
  return new Promise((resolve) => {
    const req = request({ host, port, method: 'GET', path: '/healthz', timeout: timeoutMs, ...overTls(tls, timeoutMs) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        if (body.length < 100) body += c;
      });
      res.on('end', () => resolve(res.statusCode === 200 && body === 'ok\n'));
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** The daemon could not be reached at all: the caller may fall back to a local run. */
export class DaemonUnreachable extends TandemError {
  constructor(message: string) {
    super('transient', 'DAEMON_UNREACHABLE', message);
  }
}

const ERROR_KINDS: ErrorKind[] = ['config', 'not-found', 'transient', 'permanent', 'integrity', 'precondition', 'fenced', 'busy', 'external', 'internal'];

/** The JSON error body every non-2xx answer of the daemon carries. */
export interface ErrorBody {
  error: { kind: ErrorKind; code: string; message: string; hint?: string };
}

export function errorBody(err: unknown): ErrorBody {
  if (err instanceof TandemError) return { error: { kind: err.kind, code: err.code, message: err.message, hint: err.hint } };
  return { error: { kind: 'internal', code: 'INTERNAL', message: describeError(err) } };
}

function errorFrom(status: number, text: string, listen: string): TandemError {
  let body: Partial<ErrorBody> = {};
  try {
    body = JSON.parse(text) as ErrorBody;
  } catch {
    /* not JSON */
  }
  const e = body.error;
  if (status === 401) {
    return new TandemError('config', 'DAEMON_UNAUTHORIZED', `the daemon at ${listen} rejected the token`, {
      hint: 'the backup command must use the same server.tokenFile (or TANDEM_TOKEN) as `tandem-primary run`; or pass --local',
    });
  }
  if (e && typeof e.message === 'string') {
    const kind = ERROR_KINDS.includes(e.kind as ErrorKind) ? (e.kind as ErrorKind) : 'internal';
    return new TandemError(kind, typeof e.code === 'string' ? e.code : 'DAEMON_ERROR', e.message, { hint: e.hint });
  }
  return new TandemError('external', 'DAEMON_ERROR', `the daemon at ${listen} answered HTTP ${status}: ${text.slice(0, 200)}`);
}

/**
 * POST /v1/backup and wait (without a time limit: a backup takes as long as it takes) for the result.
 * Throws DaemonUnreachable when no connection could be made, TandemError for the daemon's answer.
 * With `onProgress`, the daemon is asked for its progress too, given to it as it comes.
 */
export function requestBackup(
  info: DaemonInfo,
  token: string,
  opts: { connectTimeoutMs?: number; tls?: ServerTlsConfig; onProgress?: (artifacts: ArtifactProgress[]) => void } = {},
): Promise<BackupResult> {
  const { host, port } = connectAddress(info.listen);
  return new Promise((resolve, reject) => {
    let connected = false;
    // The site, for a daemon that serves several (daemon.json names it; a daemon of one site checks it is its own).
    const path = info.site === '' ? '/v1/backup' : `/v1/backup?site=${encodeURIComponent(info.site)}`;
    const req = request({ host, port, method: 'POST', path, headers: { authorization: `Bearer ${token}`, 'content-length': 0, ...progressAccept(opts.onProgress) }, ...overTls(opts.tls, opts.connectTimeoutMs ?? 5000) });
    const connectTimer = setTimeout(() => req.destroy(new TandemError('transient', 'DAEMON_CONNECT_TIMEOUT', `no connection within ${opts.connectTimeoutMs ?? 5000} ms`)), opts.connectTimeoutMs ?? 5000);
    req.on('socket', (socket) => {
      const done = () => {
        connected = true;
        clearTimeout(connectTimer);
      };
      if (!socket.connecting) done();
      else socket.once('connect', done);
    });
    req.on('error', (err) => {
      clearTimeout(connectTimer);
      // Under mutual TLS a refused client certificate is told after the handshake, on the first read.
      const tlsRefusal = opts.tls === undefined ? null : describeTlsFailure(err, `the daemon at ${info.listen}`, 'server.tls');
      if (tlsRefusal !== null) reject(tlsRefusal);
      else if (!connected) reject(new DaemonUnreachable(`cannot reach the daemon at ${info.listen} (pid ${info.pid}): ${describeError(err)}`));
      else {
        reject(
          new TandemError('external', 'DAEMON_CONNECTION_LOST', `lost the connection to the daemon at ${info.listen} while it was backing up: ${describeError(err)}`, {
            hint: 'the backup may or may not have been committed: see `tandem-primary list` and the daemon log',
          }),
        );
      }
    });
    req.on('response', (res) => {
      if (opts.onProgress && isProgressStream(res)) {
        readProgressStream(res, opts.onProgress, info.listen).then(resolve, reject);
        return;
      }
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (err) => reject(new TandemError('external', 'DAEMON_CONNECTION_LOST', `reading the daemon's answer: ${describeError(err)}`)));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode === 200) {
          try {
            resolve(JSON.parse(text) as BackupResult);
          } catch {
            reject(new TandemError('external', 'DAEMON_ERROR', `the daemon at ${info.listen} answered with something that is not JSON`));
          }
          return;
        }
        reject(errorFrom(res.statusCode ?? 0, text, info.listen));
      });
    });
    req.end();
  });
}

/** The media type of POST /v1/backup's answer with progress (backup-stream.ts). */
export const BACKUP_PROGRESS_TYPE = 'application/x-ndjson';

const progressAccept = (onProgress: unknown): Record<string, string> => (onProgress ? { accept: `${BACKUP_PROGRESS_TYPE}, application/json` } : {});

const isProgressStream = (res: IncomingMessage): boolean => res.statusCode === 200 && (res.headers['content-type'] ?? '').startsWith(BACKUP_PROGRESS_TYPE);

/**
 * The streamed answer: one JSON object a line, {"progress": [...]} while the backup runs, then
 * {"result": BackupResult} or {"status": <HTTP status>, "error": {...}}.
 */
async function readProgressStream(res: IncomingMessage, onProgress: (artifacts: ArtifactProgress[]) => void, listen: string): Promise<BackupResult> {
  const lost = (why: string) =>
    new TandemError('external', 'DAEMON_CONNECTION_LOST', `lost the connection to the daemon at ${listen} while it was backing up: ${why}`, {
      hint: 'the backup may or may not have been committed: see `tandem-primary list` and the daemon log',
    });
  let rest = '';
  try {
    for await (const chunk of res) {
      rest += (chunk as Buffer).toString('utf8');
      let nl: number;
      while ((nl = rest.indexOf('\n')) >= 0) {
        const line = rest.slice(0, nl).trim();
        rest = rest.slice(nl + 1);
        if (line === '') continue;
        let msg: { progress?: ArtifactProgress[]; result?: BackupResult; status?: number; error?: unknown };
        try {
          msg = JSON.parse(line) as typeof msg;
        } catch {
          throw new TandemError('external', 'DAEMON_ERROR', `the daemon at ${listen} answered with something that is not JSON`);
        }
        if (Array.isArray(msg.progress)) onProgress(msg.progress);
        else if (msg.result !== undefined) return msg.result;
        else if (msg.error !== undefined) throw errorFrom(msg.status ?? 500, JSON.stringify({ error: msg.error }), listen);
      }
    }
  } catch (err) {
    if (err instanceof TandemError) throw err;
    throw lost(describeError(err));
  }
  throw lost('the answer ended before the result');
}
