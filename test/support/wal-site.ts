/**
 * A site in WAL mode for tests: two real PostgreSQL 15 clusters (pg-cluster.ts), the primary's
 * archiving through the real `tandem-primary wal-push`, a standby cluster that the real
 * `tandem-standby apply` seeds and whose restore_command is the real `tandem-standby wal-fetch`.
 *
 * PostgreSQL runs archive_command and restore_command as its own OS user, so in these tests both
 * agents run as the postgres OS user too (as they would on a server where the agent runs as the
 * cluster's user): the test root, keys, state dirs and a directory filestore belong to postgres.
 */
import { spawn } from 'node:child_process';
import { chown, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { createCluster, PG_BIN, type PgCluster } from './pg-cluster.js';
import { PRIMARY_MAIN, STANDBY_MAIN, closedPort, createSiteTree, type KeyFiles, type RunResult, type SitePaths } from './site.js';

let ids: { uid: number; gid: number } | undefined;
async function postgresIds(): Promise<{ uid: number; gid: number }> {
  if (ids) return ids;
  const out = await new Promise<string>((resolve, reject) => {
    const c = spawn('id', ['postgres']);
    let s = '';
    c.stdout.on('data', (d: Buffer) => (s += d.toString()));
    c.once('error', reject);
    c.once('close', () => resolve(s));
  });
  const uid = Number(/uid=(\d+)/.exec(out)?.[1]);
  const gid = Number(/gid=(\d+)/.exec(out)?.[1]);
  ids = { uid, gid };
  return ids;
}

/** chown -R postgres: everything the agents (running as postgres) must read or write. */
export async function giveToPostgres(path: string): Promise<void> {
  const { uid, gid } = await postgresIds();
  await new Promise<void>((resolve, reject) => {
    const c = spawn('chown', ['-R', `${uid}:${gid}`, path]);
    c.once('error', reject);
    c.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`chown -R ${path} exited ${code}`))));
  });
  await chown(path, uid, gid);
}

/** A built agent's long-running command (a daemon) as the postgres OS user. */
export async function startAsPostgresAgent(mainJs: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ child: ReturnType<typeof spawn>; stderr: () => string }> {
  const child = spawn(process.execPath, [mainJs, ...args], {
    ...(await postgresIds()),
    cwd: '/tmp',
    env: { ...process.env, TANDEM_LOG_FORMAT: 'json', TANDEM_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const err: Buffer[] = [];
  child.stderr!.on('data', (c: Buffer) => err.push(c));
  return { child, stderr: () => Buffer.concat(err).toString('utf8') };
}

/** Runs a built agent as the postgres OS user; never rejects on a non-zero exit. */
export async function runAsPostgresAgent(mainJs: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  const child = spawn(process.execPath, [mainJs, ...args], {
    ...(await postgresIds()),
    cwd: opts.cwd ?? '/tmp',
    env: { ...process.env, TANDEM_LOG_FORMAT: 'json', TANDEM_LOG_LEVEL: 'info', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => err.push(c));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, opts.timeoutMs ?? 120_000);
  return new Promise<RunResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
  });
}

export interface WalSite {
  site: string;
  root: string;
  keys: KeyFiles;
  filestoreUrl: string;
  env: NodeJS.ProcessEnv;
  primary: { cluster: PgCluster; paths: SitePaths; configFile: string; stateDir: string; standbyConfigFile: string };
  standby: {
    cluster: PgCluster;
    paths: { config: string; security: string; files: string; sentinel: string };
    configFile: string;
    stateDir: string;
    /** The standby server's primary agent (after a promote): the same state dir, so the same agent id. */
    primaryConfigFile: string;
  };
  primaryCli(args: string[], env?: NodeJS.ProcessEnv): Promise<RunResult>;
  /** `timeoutMs`: how long before the command is killed (120 s unless given). */
  standbyCli(args: string[], env?: NodeJS.ProcessEnv, timeoutMs?: number): Promise<RunResult>;
  /** The new primary's CLI on the standby server (after a promote). */
  standbyPrimaryCli(args: string[], env?: NodeJS.ProcessEnv): Promise<RunResult>;
  destroy(): Promise<void>;
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** The start/stop commands as the postgres user runs them (no runuser: the agent is postgres already). */
function ctlCommands(c: PgCluster): { start: string; stop: string } {
  const opts = `-p ${c.port} -k ${c.root} -c listen_addresses=127.0.0.1`;
  return {
    start: `${PG_BIN}/pg_ctl -D ${q(c.dataDir)} -l ${q(c.logFile)} -o ${q(opts)} -w -t 600 start`,
    // Like `systemctl stop`: nothing to do when it is not running.
    stop: `if ${PG_BIN}/pg_ctl -D ${q(c.dataDir)} status >/dev/null; then ${PG_BIN}/pg_ctl -D ${q(c.dataDir)} -w stop -m fast; fi`,
  };
}

export async function createWalSite(root: string, opts: { filestoreUrl?: string; env?: NodeJS.ProcessEnv; maxDelay?: string } = {}): Promise<WalSite> {
  const site = `w${Math.random().toString(16).slice(2, 8)}`;
  const env = { TANDEM_STANDBY_BIN: `${process.execPath} ${STANDBY_MAIN}`, ...opts.env };
  const filestoreUrl = opts.filestoreUrl ?? `file://${join(root, 'store')}`;
  const keysDir = join(root, 'keys');
  const primaryPaths = await createSiteTree(join(root, 'primary'));
  const sroot = join(root, 'standby');
  const standbyPaths = { config: join(sroot, 'priv'), security: join(sroot, 'security'), files: join(sroot, 'files'), sentinel: join(sroot, 'priv', 'BACKUP') };
  await mkdir(standbyPaths.config, { recursive: true });
  await giveToPostgres(root);

  const primaryConfigFile = join(root, 'primary.yml');
  const standbyConfigFile = join(root, 'standby.yml');
  const standbyPrimaryConfigFile = join(root, 'standby-primary.yml');
  // PostgreSQL runs archive_command with the server's environment: what the agent needs from the
  // environment (S3 credentials in the S3 runs) is given on the command line.
  const envPrefix = Object.entries(opts.env ?? {})
    .filter(([k]) => k.startsWith('AWS_'))
    .map(([k, v]) => `${k}=${v} `)
    .join('');
  const archive = (configFile: string) => `'${envPrefix === '' ? '' : `env ${envPrefix}`}${process.execPath} ${PRIMARY_MAIN} wal-push --config ${configFile} %p %f'`;
  // wal_log_hints: pg_rewind can wind either back once the other was promoted.
  // wal_retrieve_retry_interval: how soon a waiting standby runs restore_command again (500 ms: the
  // scenarios wait for replay often). Without a standby daemon each ask is a whole agent's start
  // (~0.5 s of CPU); 2 s took 20% of the CPU of wal-mode.test.ts's dir scenario but nothing off the
  // suite's wall time (docs/benchmarks.md, "Command start-up").
  const primaryCluster = await createCluster({
    name: `${site}-primary`,
    conf: { archive_mode: 'on', archive_command: archive(primaryConfigFile), wal_log_hints: 'on', wal_retrieve_retry_interval: "'500ms'" },
  });
  const standbyCluster = await createCluster({
    name: `${site}-standby`,
    // The same archiving on the standby's server: used once it is promoted (a standby archives nothing).
    conf: { archive_mode: 'on', archive_command: archive(standbyPrimaryConfigFile), wal_log_hints: 'on', wal_retrieve_retry_interval: "'500ms'" },
  });
  const asPg = (main: string) => (args: string[], e: NodeJS.ProcessEnv = {}, timeoutMs?: number) =>
    runAsPostgresAgent(main, args, { env: { ...env, ...e }, ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
  const r = await asPg(PRIMARY_MAIN)(['init', '--keys-dir', keysDir]);
  if (r.code !== 0) throw new Error(`init --keys-dir: ${r.stderr}`);
  const keys: KeyFiles = {
    dir: keysDir,
    identityFile: join(keysDir, 'backup.agekey'),
    recipientFile: join(keysDir, 'backup.agepub'),
    signingKeyFile: join(keysDir, 'signing.key'),
    verifyKeyFile: join(keysDir, 'signing.pub'),
    filesKeyFile: join(keysDir, 'files.agekey'),
  };
  const primaryStateDir = join(root, 'primary-state');
  const standbyStateDir = join(root, 'standby-state');
  const port = await closedPort();
  const primaryDoc = (url: string, paths: { config: string; security: string; files: string }, stateDir: string) => ({
    site,
    database: { url, mode: 'wal', ...(opts.maxDelay ? { maxDelay: opts.maxDelay } : {}) },
    paths: { config: paths.config, security: paths.security, files: paths.files },
    filestore: { url: filestoreUrl },
    keys: { recipientFile: keys.recipientFile, signingKeyFile: keys.signingKeyFile },
    stateDir,
    // The daemon (tandem-primary run): heartbeats every second, no scheduled backup during a test.
    schedule: '0 3 1 1 *',
    heartbeatInterval: '1s',
    server: { listen: `127.0.0.1:${port}`, tokenFile: join(keysDir, 'control.token') },
  });
  await writeFile(primaryConfigFile, toYaml(primaryDoc(primaryCluster.url, primaryPaths, primaryStateDir)));
  await writeFile(standbyPrimaryConfigFile, toYaml(primaryDoc(standbyCluster.url, standbyPaths, standbyStateDir)));
  const standbyPort = await closedPort();
  const standbyDoc = (c: PgCluster, paths: { config: string; security: string; files: string }, stateDir: string) => {
    const ctl = ctlCommands(c);
    return toYaml({
      site,
      database: { url: c.url, mode: 'wal', binDir: PG_BIN, dataDir: c.dataDir, startCommand: ctl.start, stopCommand: ctl.stop },
      paths: { config: paths.config, security: paths.security, files: paths.files },
      filestore: { url: filestoreUrl },
      keys: { identityFile: keys.identityFile, verifyKeyFile: keys.verifyKeyFile },
      stateDir,
      heartbeatStaleAfter: '5s',
      pollInterval: '2s',
      server: { listen: `127.0.0.1:${standbyPort}` },
    });
  };
  await writeFile(standbyConfigFile, standbyDoc(standbyCluster, standbyPaths, standbyStateDir));
  // The former primary's server as a standby (rejoin): its own cluster, trees and state dir.
  const oldPrimaryStandbyConfigFile = join(root, 'primary-standby.yml');
  await writeFile(oldPrimaryStandbyConfigFile, standbyDoc(primaryCluster, primaryPaths, primaryStateDir));
  await giveToPostgres(root);
  await primaryCluster.start();
  const s: WalSite = {
    site,
    root,
    keys,
    filestoreUrl,
    env,
    primary: { cluster: primaryCluster, paths: primaryPaths, configFile: primaryConfigFile, stateDir: primaryStateDir, standbyConfigFile: oldPrimaryStandbyConfigFile },
    standby: { cluster: standbyCluster, paths: standbyPaths, configFile: standbyConfigFile, stateDir: standbyStateDir, primaryConfigFile: standbyPrimaryConfigFile },
    primaryCli: asPg(PRIMARY_MAIN),
    standbyCli: asPg(STANDBY_MAIN),
    standbyPrimaryCli: asPg(PRIMARY_MAIN),
    async destroy() {
      await primaryCluster.destroy();
      await standbyCluster.destroy();
    },
  };
  const init = await s.primaryCli(['init', '--filestore', '--config', primaryConfigFile]);
  if (init.code !== 0) throw new Error(`init --filestore: ${init.stderr}`);
  return s;
}
