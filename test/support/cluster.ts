/**
 * A throwaway PostgreSQL cluster of the machine's own version (initdb + pg_ctl, run as the postgres
 * OS user, trust auth on 127.0.0.1 and a socket in its own directory, on a free port): for tests
 * that need a second server, e.g. a standby whose cluster lacks the primary's roles.
 */
import { spawnSync } from 'node:child_process';
import { chmod, chown, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { closedPort } from './site.js';

export interface Cluster {
  port: number;
  dir: string;
  /** postgres://postgres@127.0.0.1:<port>/<db> */
  url(db: string, user?: string): string;
  query<R extends pg.QueryResultRow = Record<string, unknown>>(db: string, sql: string, params?: unknown[], user?: string): Promise<pg.QueryResult<R>>;
  stop(): Promise<void>;
}

function binDir(): string {
  const r = spawnSync('sh', ['-c', 'ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1'], { encoding: 'utf8' });
  const dir = r.stdout.trim();
  if (!dir) throw new Error('no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (initdb, pg_ctl): install postgresql');
  return dir;
}

function asPostgres(cmd: string, args: string[]): void {
  const r = spawnSync('runuser', ['-u', 'postgres', '--', cmd, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
}

export async function startCluster(): Promise<Cluster> {
  const bin = binDir();
  const dir = await mkdtemp(join(tmpdir(), 'tandem-cluster-'));
  await chmod(dir, 0o755);
  const pw = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (pw.status !== 0) throw new Error('no postgres OS user: throwaway clusters run as it');
  await chown(dir, Number(pw.stdout), Number(gid.stdout));
  const data = join(dir, 'data');
  asPostgres(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C.UTF-8']);
  const port = await closedPort();
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off`;
  asPostgres(join(bin, 'pg_ctl'), ['-D', data, '-o', opts, '-l', join(dir, 'log'), '-w', '-t', '60', 'start']);
  const url = (db: string, user = 'postgres') => `postgres://${encodeURIComponent(user)}@127.0.0.1:${port}/${encodeURIComponent(db)}`;
  return {
    port,
    dir,
    url,
    async query(db, sql, params, user) {
      const c = new pg.Client({ connectionString: url(db, user) });
      await c.connect();
      try {
        return await c.query(sql, params);
      } finally {
        await c.end();
      }
    },
    async stop() {
      try {
        asPostgres(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}
