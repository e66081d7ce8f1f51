// Throwaway PostgreSQL 15 clusters for the WAL-mode benchmarks: initdb as the postgres OS user in a
// directory the caller gives (its data dir, Unix socket and server log side by side), a free port on
// 127.0.0.1, trust auth, wal_level replica with replication connections allowed (the base backup),
// and the caller's settings. The same shape as the test suite's clusters, in plain ESM: start, stop,
// one-off queries, and a synchronous immediate stop for a benchmark interrupted by Ctrl-C.
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, chownSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';

/** The PostgreSQL 15 server binaries (initdb, pg_ctl, pgbench ...). */
export const PG_BIN = process.env.BENCH_PG_BIN ?? '/usr/lib/postgresql/15/bin';

let ids;
/** The postgres OS user's uid and gid: the clusters and the agents run as it. */
export function postgresIds() {
  if (ids) return ids;
  const u = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (u.status !== 0 || g.status !== 0) throw new Error(`no postgres OS user (\`id postgres\`: ${(u.stderr || g.stderr).trim()}): install postgresql`);
  ids = { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
  return ids;
}

/** chown -R postgres: PATH (everything the clusters and the agents must read or write). */
export function giveToPostgres(path) {
  const { uid, gid } = postgresIds();
  const r = spawnSync('chown', ['-R', `${uid}:${gid}`, path], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`chown -R postgres ${path}: ${r.stderr.trim()}`);
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort() {
  const srv = createServer();
  await new Promise((res, rej) => srv.listen(0, '127.0.0.1', res).once('error', rej));
  const { port } = srv.address();
  await new Promise((res) => srv.close(res));
  return port;
}

/** Runs a command as postgres (runuser); resolves {code, stdout, stderr}, never rejects on exit status. */
export function runAsPostgres(cmd, args, { timeoutMs = 300_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn('runuser', ['-u', 'postgres', '--', cmd, ...args], { cwd: '/tmp', stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-64 * 1024)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

async function mustRunAsPostgres(cmd, args, what) {
  const r = await runAsPostgres(cmd, args);
  if (r.code !== 0) throw new Error(`${what}: ${cmd} ${args.join(' ')} (as postgres) exited ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

const shq = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** The last lines of a log file, or a note saying there is none. */
export function logTail(file, lines = 30) {
  try {
    const text = readFileSync(file, 'utf8').trimEnd();
    return text === '' ? `(${file} is empty)` : text.split('\n').slice(-lines).join('\n');
  } catch {
    return `(no log at ${file})`;
  }
}

/**
 * A cluster in `root` (created, owned by postgres, 0700): initdb into root/data, `conf` appended to
 * postgresql.conf (values verbatim: quote strings yourself). Not started.
 * Returns {name, root, dataDir, port, url, logFile, startCommand, stopCommand, start, stop,
 * isRunning, query, stopNowSync}; the start/stop commands are for a shell run by postgres itself
 * (an agent running as postgres: no runuser).
 */
export async function createCluster({ name, root, conf = {} }) {
  const { uid, gid } = postgresIds();
  mkdirSync(root, { recursive: true, mode: 0o700 });
  chmodSync(root, 0o700);
  chownSync(root, uid, gid);
  const dataDir = join(root, 'data');
  const logFile = join(root, 'postgres.log');
  await mustRunAsPostgres(join(PG_BIN, 'initdb'), ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C.UTF-8'], `cluster ${name}: initdb`);
  const port = await freePort();
  const settings = {
    port: String(port),
    listen_addresses: "'127.0.0.1'",
    unix_socket_directories: `'${root}'`,
    wal_level: 'replica',
    max_wal_senders: '4',
    ...conf,
  };
  appendFileSync(join(dataDir, 'postgresql.conf'), Object.entries(settings).map(([k, v]) => `${k} = ${v}\n`).join(''));
  appendFileSync(join(dataDir, 'pg_hba.conf'), 'host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n');

  const pgCtl = join(PG_BIN, 'pg_ctl');
  // Command-line settings outrank every config file: a data dir restored from the other cluster's
  // base backup still starts on this cluster's port and socket dir.
  const serverOpts = `-p ${port} -k ${root} -c listen_addresses=127.0.0.1`;
  const startArgs = ['-D', dataDir, '-l', logFile, '-o', serverOpts, '-w', 'start'];
  const isRunning = async () => (await runAsPostgres(pgCtl, ['-D', dataDir, 'status'])).code === 0;
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    name,
    root,
    dataDir,
    port,
    url,
    logFile,
    startCommand: [pgCtl, ...startArgs].map(shq).join(' '),
    // Like `systemctl stop`: nothing to do when it is not running.
    stopCommand: `if ${shq(pgCtl)} -D ${shq(dataDir)} status >/dev/null; then ${shq(pgCtl)} -D ${shq(dataDir)} -w stop -m fast; fi`,
    isRunning,
    async start() {
      const r = await runAsPostgres(pgCtl, startArgs);
      if (r.code !== 0) throw new Error(`cluster ${name}: pg_ctl start exited ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim()}\n--- ${logFile} ---\n${logTail(logFile)}`);
    },
    async stop(mode = 'fast') {
      if (!(await isRunning())) return;
      await mustRunAsPostgres(pgCtl, ['-D', dataDir, '-w', 'stop', '-m', mode], `cluster ${name}: stop`);
    },
    /** For a signal handler: stop at once, synchronously (nothing to do when it is not running). */
    stopNowSync() {
      if (!existsSync(join(dataDir, 'postmaster.pid'))) return;
      spawnSync('runuser', ['-u', 'postgres', '--', pgCtl, '-D', dataDir, '-w', '-t', '30', 'stop', '-m', 'immediate'], { cwd: '/tmp', stdio: 'ignore' });
    },
    async query(sql, params) {
      const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
      await c.connect();
      try {
        return (await c.query(sql, params)).rows;
      } finally {
        await c.end().catch(() => undefined);
      }
    },
  };
}
