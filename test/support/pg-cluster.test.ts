/**
 * The WAL-mode test clusters (pg-cluster.ts) against real PostgreSQL 15 servers: a cluster starts,
 * answers queries over TCP, takes new settings at a restart, stops and starts again; a second one,
 * made without initdb, hosts a pg_basebackup copy of the first, and still comes up on its own port
 * after its data dir is swapped for a fresh copy by rename and started with its startCommand (as an
 * agent seeding a standby does); a start that fails says why from the server log; destroy removes
 * everything, twice over.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, runAsPostgres, type PgCluster } from './pg-cluster.js';

const sh = (command: string): { code: number | null; output: string } => {
  const r = spawnSync('sh', ['-c', command], { encoding: 'utf8' });
  return { code: r.status, output: `${r.stdout}${r.stderr}` };
};

const postgresUid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim());

describe('pg-cluster', () => {
  let a: PgCluster;
  let b: PgCluster;

  beforeAll(async () => {
    a = await createCluster({ name: 'primary', conf: { archive_mode: 'on', archive_command: "'/bin/true'" } });
    b = await createCluster({ name: 'restored', initdb: false });
  });

  afterAll(async () => {
    await a?.destroy();
    await b?.destroy();
  });

  it('makes a cluster that starts, answers, takes new settings at a restart, and stops', async () => {
    for (const dir of [a.root, a.dataDir]) {
      const st = statSync(dir);
      expect(st.uid, dir).toBe(postgresUid);
      expect(st.mode & 0o777, dir).toBe(0o700);
    }
    expect(a.dataDir).toBe(join(a.root, 'data'));
    expect(a.url).toBe(`postgres://postgres@127.0.0.1:${a.port}/postgres`);
    expect(await a.isRunning()).toBe(false);

    await a.start();
    expect(await a.isRunning()).toBe(true);
    expect(await a.query<{ one: number }>('select 1 as one')).toEqual([{ one: 1 }]);
    expect(await a.query<{ n: string }>('select $1::text as n', ['x'])).toEqual([{ n: 'x' }]);
    const settings = await a.query<{ name: string; setting: string }>(
      "select name, setting from pg_settings where name in ('port', 'listen_addresses', 'wal_level', 'max_wal_senders', 'fsync', 'archive_mode', 'archive_command') order by name",
    );
    expect(Object.fromEntries(settings.map((s) => [s.name, s.setting]))).toEqual({
      archive_command: '/bin/true',
      archive_mode: 'on',
      fsync: 'on',
      listen_addresses: '127.0.0.1',
      max_wal_senders: '4',
      port: String(a.port),
      wal_level: 'replica',
    });
    // The server's own socket is in root.
    expect(existsSync(join(a.root, `.s.PGSQL.${a.port}`))).toBe(true);

    // max_connections only changes at a restart.
    await a.setConf({ max_connections: '37', work_mem: "'7MB'" });
    await a.stop();
    expect(await a.isRunning()).toBe(false);
    await a.stop(); // not running: nothing to do
    await a.start();
    expect(await a.query('show max_connections')).toEqual([{ max_connections: '37' }]);
    expect(await a.query('show work_mem')).toEqual([{ work_mem: '7MB' }]);

    await a.stop('immediate');
    expect(await a.isRunning()).toBe(false);
    await a.start();
    expect(await a.isRunning()).toBe(true);
    expect(await a.query('select 1 as one')).toEqual([{ one: 1 }]);
  });

  it('hosts a restored copy, also after its data dir is swapped by rename and started by its startCommand', async () => {
    expect(await b.isRunning()).toBe(false);
    const st = statSync(b.dataDir);
    expect(st.uid).toBe(postgresUid);
    expect(st.mode & 0o777).toBe(0o700);
    expect(spawnSync('ls', ['-A', b.dataDir], { encoding: 'utf8' }).stdout).toBe('');

    await a.query('create table marker (v text)');
    await a.query("insert into marker values ('first copy')");
    await runAsPostgres('pg_basebackup', ['-h', '127.0.0.1', '-p', String(a.port), '-U', 'postgres', '-D', b.dataDir, '-X', 'fetch', '-c', 'fast']);
    await b.setConf({ port: String(b.port) });
    await b.start();
    expect(await b.isRunning()).toBe(true);
    expect(await b.query('show port')).toEqual([{ port: String(b.port) }]);
    expect(await b.query('select v from marker')).toEqual([{ v: 'first copy' }]);

    // A second copy, swapped in by rename while b is stopped; its postgresql.conf names a's port
    // and socket dir, yet the start command brings it up as b.
    await a.query("update marker set v = 'second copy'");
    const next = join(b.root, 'data.next');
    await runAsPostgres('pg_basebackup', ['-h', '127.0.0.1', '-p', String(a.port), '-U', 'postgres', '-D', next, '-X', 'fetch', '-c', 'fast']);
    const stopped = sh(b.stopCommand);
    expect(stopped.code, stopped.output).toBe(0);
    expect(await b.isRunning()).toBe(false);
    await rename(b.dataDir, join(b.root, 'data.old'));
    await rename(next, b.dataDir);
    const started = sh(b.startCommand);
    expect(started.code, started.output).toBe(0);
    expect(await b.isRunning()).toBe(true);
    expect(await b.query('show port')).toEqual([{ port: String(b.port) }]);
    expect(await b.query('select v from marker')).toEqual([{ v: 'second copy' }]);
    expect(await a.query('select v from marker')).toEqual([{ v: 'second copy' }]);
  });

  it('a failing start names the cause from the server log', async () => {
    await b.stop();
    await b.setConf({ shared_buffers: "'plenty'" });
    const err = await b.start().then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/restored/);
    expect(err?.message).toMatch(/invalid value for parameter "shared_buffers": "plenty"/);
    expect(await b.isRunning()).toBe(false);
  });

  it('runAsPostgres rejects with the stderr of a failing binary', async () => {
    await expect(runAsPostgres('pg_controldata', ['-D', join(a.root, 'nowhere')])).rejects.toThrow(/could not open file/);
    expect(await runAsPostgres('pg_controldata', ['-D', a.dataDir])).toMatch(/Database cluster state:\s+in production/);
  });

  it('destroy stops the server and removes the root, and may be called twice', async () => {
    await a.destroy();
    expect(existsSync(a.root)).toBe(false);
    await expect(a.query('select 1')).rejects.toThrow();
    await a.destroy();
    await b.destroy();
    await b.destroy();
    expect(existsSync(b.root)).toBe(false);
  });
});
