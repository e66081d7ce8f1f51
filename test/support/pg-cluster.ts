/**
 * Throwaway PostgreSQL 15 clusters for the WAL-mode tests (continuous archiving, and a hot standby
 * that replays the archived WAL). Unlike cluster.ts, these keep PostgreSQL's durability settings
 * (fsync stays on), run with wal_level = replica and accept replication connections, and can be
 * stopped and started again: a test restarts a primary with new settings, or lets an agent seed a
 * standby's data directory and start it with the same shell commands an operator would configure.
 *
 * Layout: one temp root (owned by postgres, 0700) holds `data/` (the data directory), the server's
 * Unix socket and `postgres.log`. Nothing here keeps a file open inside `data/`, and every command
 * names the directory by path, so the data directory may be replaced (renamed away, another renamed
 * in) between a stop and a start.
 *
 * The start command pins the port, the socket directory and listen_addresses on the command line
 * (`pg_ctl -o`), which outranks postgresql.conf and postgresql.auto.conf: a data directory restored
 * from another cluster's base backup still comes up on this cluster's port, not its source's.
 *
 * Every server binary runs as the postgres OS user (`runuser -u postgres --`): the tests run as root.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, chmod, chown, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import pg from 'pg';
import { closedPort } from './site.js';

/** The PostgreSQL 15 server binaries (initdb, pg_ctl, pg_basebackup ...). */
export const PG_BIN = '/usr/lib/postgresql/15/bin';

export interface ClusterOptions {
  /** Names the temp dir and appears in error messages. */
  name: string;
  /**
   * Extra postgresql.conf settings, each written as `key = value` with the value verbatim (quote
   * strings yourself: `archive_command: "'cp %p /archive/%f'"`).
   */
  conf?: Record<string, string>;
  /**
   * Default true. False: only make the data directory (empty, 0700, owned by postgres), for a
   * cluster that a test or an agent restores into (pg_basebackup, a base backup from an archive).
   */
  initdb?: boolean;
}

export interface PgCluster {
  /** The temp dir (owned by postgres, 0700): holds dataDir, the socket and the log. */
  readonly root: string;
  /** root/data */
  readonly dataDir: string;
  /** A TCP port free when the cluster was made; the server listens on 127.0.0.1 only. */
  readonly port: number;
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  readonly url: string;
  /** The server log (pg_ctl -l), outside dataDir. */
  readonly logFile: string;
  /** `pg_ctl -w start` as postgres; on failure throws with pg_ctl's output and the tail of the log. */
  start(): Promise<void>;
  /** `pg_ctl -w stop -m <mode>` (default fast); nothing to do when the server is not running. */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Whether a postmaster runs on dataDir (`pg_ctl status`). */
  isRunning(): Promise<boolean>;
  /** A one-off query over TCP with the `pg` module (database default `postgres`); returns the rows. */
  query<T = Record<string, unknown>>(sql: string, params?: unknown[], database?: string): Promise<T[]>;
  /**
   * Append `key = value` lines (values verbatim) to dataDir/postgresql.conf: later lines win, so
   * this overrides earlier settings; they take effect at the next start, or reload where allowed.
   */
  setConf(settings: Record<string, string>): Promise<void>;
  /** A shell command (for `sh -c`, run as root) that starts this cluster as start() does. */
  readonly startCommand: string;
  /** A shell command (for `sh -c`, run as root) that stops this cluster (fast shutdown). */
  readonly stopCommand: string;
  /** Stop (immediate) and remove root. Safe to call twice. */
  destroy(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Running commands as postgres
// ---------------------------------------------------------------------------------------------

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Longest any one command may take (pg_ctl -w itself gives up after 60 s). */
const COMMAND_TIMEOUT_MS = 120_000;

function run(cmd: string, args: string[], opts: { cwd?: string; input?: string } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    // A directory postgres may enter: runuser keeps the caller's cwd, and PostgreSQL's tools
    // complain when they cannot read it.
    const child = spawn(cmd, args, { cwd: opts.cwd ?? tmpdir(), stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    const timer = setTimeout(() => child.kill('SIGKILL'), COMMAND_TIMEOUT_MS);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.on('error', () => undefined); // the command may exit before reading stdin
    child.stdin.end(opts.input ?? '');
  });
}

/** `bin` as given when it is a path, else the binary of that name in PG_BIN. */
const pgBinary = (bin: string): string => (isAbsolute(bin) || bin.includes('/') ? bin : join(PG_BIN, bin));

const runuser = (bin: string, args: string[], opts?: { cwd?: string; input?: string }): Promise<Ran> =>
  run('runuser', ['-u', 'postgres', '--', pgBinary(bin), ...args], opts);

/**
 * Run a PostgreSQL binary (a name in PG_BIN, e.g. `pg_basebackup`, or a path) as the postgres OS
 * user; resolves with its stdout, rejects with its stderr when it exits non-zero.
 */
export async function runAsPostgres(bin: string, args: string[], opts: { cwd?: string; input?: string } = {}): Promise<string> {
  const r = await runuser(bin, args, opts);
  if (r.code !== 0) {
    throw new Error(`${pgBinary(bin)} ${args.join(' ')} (as postgres) exited ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim()}`);
  }
  return r.stdout;
}

let postgresIds: Promise<{ uid: number; gid: number }> | undefined;

/** The postgres OS user's uid and gid (looked up once). */
function postgresUser(): Promise<{ uid: number; gid: number }> {
  postgresIds ??= (async () => {
    const [u, g] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]);
    if (u.code !== 0 || g.code !== 0) {
      throw new Error(`no postgres OS user (\`id postgres\`: ${(u.stderr || g.stderr).trim()}): the test clusters run as it; install postgresql`);
    }
    return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
  })();
  return postgresIds;
}

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

/** Quote for sh. */
const shq = (s: string): string => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

const confLines = (settings: Record<string, string>): string =>
  Object.entries(settings)
    .map(([k, v]) => `${k} = ${v}\n`)
    .join('');

/** The last lines of the server log, or a note saying there is none. */
async function logTail(logFile: string, lines = 30): Promise<string> {
  try {
    const text = (await readFile(logFile, 'utf8')).trimEnd();
    return text === '' ? `(${logFile} is empty)` : text.split('\n').slice(-lines).join('\n');
  } catch {
    return `(no log at ${logFile})`;
  }
}

/**
 * Make a cluster under a fresh temp dir: initdb (trust auth, superuser postgres) and the settings
 * the WAL tests rely on, or with `initdb: false` an empty data dir to restore into. Not started.
 */
export async function createCluster(opts: ClusterOptions): Promise<PgCluster> {
  const { uid, gid } = await postgresUser();
  // The socket path (root/.s.PGSQL.<port>) must stay under the 107-byte limit of a Unix socket.
  const label = opts.name.replace(/[^\w.-]+/g, '-').slice(0, 40);
  const root = await mkdtemp(join(tmpdir(), `tandem-pg-${label}-`));
  const dataDir = join(root, 'data');
  const logFile = join(root, 'postgres.log');
  try {
    await chmod(root, 0o700);
    await chown(root, uid, gid);
    if (opts.initdb ?? true) {
      await runAsPostgres('initdb', ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C.UTF-8']);
    } else {
      await mkdir(dataDir, { mode: 0o700 });
      await chmod(dataDir, 0o700);
      await chown(dataDir, uid, gid);
    }
  } catch (err) {
    await rm(root, { recursive: true, force: true });
    throw new Error(`cluster ${opts.name}: cannot make ${dataDir}: ${(err as Error).message}`, { cause: err });
  }

  const port = await closedPort();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const pgCtl = join(PG_BIN, 'pg_ctl');
  // Command-line settings outrank every config file, so a data dir restored from another cluster
  // (with that cluster's port and socket dir in its postgresql.conf) still starts as this one.
  const serverOpts = `-p ${port} -k ${root} -c listen_addresses=127.0.0.1`;
  const startArgs = ['-D', dataDir, '-l', logFile, '-o', serverOpts, '-w', 'start'];
  const stopArgs = (mode: string): string[] => ['-D', dataDir, '-w', 'stop', '-m', mode];
  const asShell = (args: string[]): string => ['runuser', '-u', 'postgres', '--', pgCtl, ...args].map(shq).join(' ');

  const settings: Record<string, string> = {
    port: String(port),
    listen_addresses: "'127.0.0.1'",
    unix_socket_directories: `'${root}'`,
    wal_level: 'replica',
    max_wal_senders: '4',
    ...opts.conf,
  };

  const isRunning = async (): Promise<boolean> => (await runuser(pgCtl, ['-D', dataDir, 'status'])).code === 0;

  const stop = async (mode: 'fast' | 'immediate' = 'fast'): Promise<void> => {
    if (!(await isRunning())) return;
    const r = await runuser(pgCtl, stopArgs(mode));
    if (r.code !== 0) {
      throw new Error(`cluster ${opts.name}: pg_ctl stop -m ${mode} on ${dataDir} exited ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim()}\n--- ${logFile} ---\n${await logTail(logFile)}`);
    }
  };

  const setConf = async (more: Record<string, string>): Promise<void> => {
    const file = join(dataDir, 'postgresql.conf');
    if (!existsSync(file)) throw new Error(`cluster ${opts.name}: no ${file} to add settings to (restore into ${dataDir} first)`);
    await appendFile(file, confLines(more));
  };

  if (opts.initdb ?? true) {
    await setConf(settings);
    await appendFile(join(dataDir, 'pg_hba.conf'), 'host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n');
  }

  let destroyed = false;
  return {
    root,
    dataDir,
    port,
    url,
    logFile,
    startCommand: asShell(startArgs),
    stopCommand: asShell(stopArgs('fast')),
    isRunning,
    stop,
    setConf,
    async start() {
      const r = await runuser(pgCtl, startArgs);
      if (r.code !== 0) {
        throw new Error(
          `cluster ${opts.name}: pg_ctl start on ${dataDir} (port ${port}) exited ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim()}\n` +
            `--- ${logFile} ---\n${await logTail(logFile)}`,
        );
      }
    },
    async query<T>(sql: string, params?: unknown[], database = 'postgres'): Promise<T[]> {
      const client = new pg.Client({
        connectionString: `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`,
        connectionTimeoutMillis: 5_000,
      });
      await client.connect();
      try {
        return (await client.query(sql, params)).rows as T[];
      } finally {
        await client.end().catch(() => undefined);
      }
    },
    async destroy() {
      if (destroyed) return;
      try {
        await stop('immediate');
      } finally {
        await rm(root, { recursive: true, force: true });
        destroyed = true;
      }
    },
  };
}
