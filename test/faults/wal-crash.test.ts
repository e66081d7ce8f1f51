/**
 * Crash suite for WAL mode, with two real clusters: the seed killed while it stages the base
 * backup (the live cluster untouched, still running) and while it swaps data directories (the
 * live one moved aside: the next apply finishes the swap and starts the cluster); `wal-push`
 * killed after the body went up but before the signed document that commits it (a standby sees
 * nothing; PostgreSQL's retry stores it) and after the document (the retry finds it stored);
 * `wal-fetch` killed after verifying a file beside PostgreSQL's target, before the rename
 * (nothing at the target; the retry restores it). Afterwards the standby still replays. The
 * filestore unwritable for a while (a directory made read-only; the S3 server killed and started
 * again) loses nothing; promote killed after raising the epoch is finished by the next; the old
 * primary rejoins by a fresh seed. On both filestores.
 */
import { chmod, copyFile, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFilestore } from '@tandem/shared';
import { S3RVER_CREDENTIALS, s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from '../support/s3rver.js';
import { ensurePostgres, requireCommands, tmpDir, waitFor } from '../support/site.js';
import { createWalSite, giveToPostgres, type WalSite } from '../support/wal-site.js';

const show = (r: { code: number | null; signal?: NodeJS.Signals | null; stdout: string; stderr: string }) => `exit ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
const killedAt = (point: string) => ({ TANDEM_FAULT_KILL_AT: point });

describe.each(['dir', 's3'] as const)('WAL mode crash points (%s filestore)', (kind) => {
  let root: string;
  let s: WalSite;
  let s3: S3rverHandle | undefined;

  beforeAll(async () => {
    requireCommands(['zstd']);
    await ensurePostgres();
    root = await tmpDir('tandem-wal-crash-');
    if (kind === 's3') {
      s3 = await startS3rver();
      s = await createWalSite(root, { filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'unique' }), env: s3rverEnv() });
    } else {
      s = await createWalSite(root);
    }
  }, 120_000);

  afterAll(async () => {
    await s?.destroy();
    await s3?.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  const count = async (c: WalSite['primary']['cluster']) => Number((await c.query<{ n: string }>('select count(*)::text as n from stamps'))[0]!.n);

  it('a seed killed while staging or swapping, and WAL files killed in flight, lose nothing', async () => {
    const p = s.primary.cluster;
    const sb = s.standby.cluster;
    await p.query('create table stamps (id serial primary key, note text)');
    await p.query("insert into stamps (note) select 'row ' || g from generate_series(1, 20) g");
    const b = await s.primaryCli(['backup', '--config', s.primary.configFile]);
    expect(b.code, show(b)).toBe(0);

    await sb.start();
    await sb.query("create table standby_before (x int); insert into standby_before values (1)");
    // Killed while staging: nothing live changed; the standby's own cluster still runs as it was.
    const k1 = await s.standbyCli(['apply', '--config', s.standby.configFile], killedAt('staged-db'));
    expect(k1.signal, show(k1)).toBe('SIGKILL');
    expect((await sb.query<{ x: number }>('select x from standby_before'))[0]!.x).toBe(1);
    // Killed with the live data directory moved aside, the new one not yet in place.
    const k2 = await s.standbyCli(['apply', '--config', s.standby.configFile], killedAt('cluster-moved-aside'));
    expect(k2.signal, show(k2)).toBe('SIGKILL');
    expect(existsSync(sb.dataDir)).toBe(false);
    // The next apply finishes the swap (roll forward), starts the cluster, and it replays.
    const a = await s.standbyCli(['apply', '--config', s.standby.configFile, '--json']);
    expect(a.code, show(a)).toBe(0);
    expect(a.stderr).toContain('finishing it');
    expect((await sb.query<{ r: boolean }>('select pg_is_in_recovery() as r'))[0]!.r).toBe(true);
    expect(await count(sb)).toBe(20);
    expect(existsSync(`${sb.dataDir.replace(/\/$/, '')}.tandem-old`)).toBe(false);
    expect(existsSync(`${sb.dataDir.replace(/\/$/, '')}.tandem-new`)).toBe(false);

    // A WAL file archived normally, copied, then taken out of the filestore: as if never stored.
    await p.query("insert into stamps (note) values ('for the wal path')");
    const name = (await p.query<{ name: string }>('select pg_walfile_name(pg_current_wal_lsn()) as name'))[0]!.name;
    await p.query('select pg_switch_wal()');
    const fs = openFilestore(s.filestoreUrl, kind === 's3' ? { s3: { credentials: S3RVER_CREDENTIALS } } : {});
    try {
      await waitFor(async () => (await fs.stat(`${s.site}/wal/${name}.json`)) ?? undefined, 'the segment is archived', 60_000, 250);
      const copy = join(s.root, 'segment-copy');
      await copyFile(join(p.dataDir, 'pg_wal', name), copy);
      await giveToPostgres(s.root);
      const original = await readFile(copy);
      await fs.delete(`${s.site}/wal/${name}.json`);
      await fs.delete(`${s.site}/wal/${name}.zst.age`);
      const push = (env: NodeJS.ProcessEnv = {}) => s.primaryCli(['wal-push', '--config', s.primary.configFile, '--data-dir', p.dataDir, copy, name], env);
      const fetchTo = join(s.root, 'fetched');
      const fetch = (env: NodeJS.ProcessEnv = {}) => s.standbyCli(['wal-fetch', '--config', s.standby.configFile, name, fetchTo], env);

      // Killed after the body, before the signed document: not committed, invisible to a standby.
      const k3 = await push(killedAt('wal-body-stored'));
      expect(k3.signal, show(k3)).toBe('SIGKILL');
      expect(await fs.stat(`${s.site}/wal/${name}.zst.age`)).not.toBeNull();
      expect(await fs.stat(`${s.site}/wal/${name}.json`)).toBeNull();
      const f1 = await fetch();
      expect(f1.code, show(f1)).toBe(1);
      expect(existsSync(fetchTo)).toBe(false);
      // PostgreSQL's retry stores it.
      const r1 = await push();
      expect(r1.code, show(r1)).toBe(0);
      expect(r1.stdout).toContain('stored');
      // Killed after the document: the retry finds it stored, and changes nothing.
      await fs.delete(`${s.site}/wal/${name}.json`);
      const k4 = await push(killedAt('wal-doc-written'));
      expect(k4.signal, show(k4)).toBe('SIGKILL');
      const r2 = await push();
      expect(r2.code, show(r2)).toBe(0);
      expect(r2.stdout).toContain('already-stored');

      // wal-fetch killed with the verified file beside the target: nothing at the target.
      const k5 = await fetch(killedAt('wal-fetch-decoded'));
      expect(k5.signal, show(k5)).toBe('SIGKILL');
      expect(existsSync(fetchTo)).toBe(false);
      const f2 = await fetch();
      expect(f2.code, show(f2)).toBe(0);
      expect((await readFile(fetchTo)).equals(original)).toBe(true);
      expect(existsSync(`${fetchTo}.tandem-tmp`)).toBe(false);
    } finally {
      await fs.close();
    }

    // The standby replays on: the row of that segment, and a later one.
    await waitFor(async () => (await count(sb)) === 21 || undefined, 'the standby replays the segment', 60_000, 250);
    await p.query("insert into stamps (note) values ('after the crashes')");
    await p.query('select pg_switch_wal()');
    await waitFor(async () => (await count(sb)) === 22 || undefined, 'the standby replays on', 60_000, 250);

    // The filestore unwritable for a while (a full or unmounted store; the S3 server down): archiving
    // fails, PostgreSQL keeps the WAL, and once the store is back everything arrives; nothing is lost.
    const store = join(s.root, 'store', s.site, 'wal');
    const before = Number((await p.query<{ n: string }>('select failed_count::text as n from pg_stat_archiver'))[0]!.n);
    if (s3) await s3.stop();
    else await chmod(store, 0o500);
    try {
      await p.query("insert into stamps (note) values ('while the store is down')");
      await p.query('select pg_switch_wal()');
      await waitFor(async () => Number((await p.query<{ n: string }>('select failed_count::text as n from pg_stat_archiver'))[0]!.n) > before || undefined, 'archiving fails', 60_000, 250);
      expect(await count(sb)).toBe(22);
    } finally {
      if (s3) await s3.restart();
      else await chmod(store, 0o755);
    }
    await waitFor(async () => (await count(sb)) === 23 || undefined, 'what was written while the store was down arrives', 120_000, 250);

    // Promote killed right after it raised the epoch (the old primary fenced, PostgreSQL not yet
    // promoted): the next promote finishes it instead of refusing this server as the primary's copy.
    await p.stop('immediate');
    const kp = await s.standbyCli(['promote', '--config', s.standby.configFile, '--force'], killedAt('promote-epoch-raised'));
    expect(kp.signal, show(kp)).toBe('SIGKILL');
    expect((await sb.query<{ r: boolean }>('select pg_is_in_recovery() as r'))[0]!.r).toBe(true);
    const pr = await s.standbyCli(['promote', '--config', s.standby.configFile]);
    expect(pr.code, show(pr)).toBe(0);
    expect(pr.stderr).toContain('did not finish: finishing it');
    expect((await sb.query<{ r: boolean }>('select pg_is_in_recovery() as r'))[0]!.r).toBe(false);

    // The old primary rejoins by a fresh base backup (--seed: as when pg_rewind cannot): first
    // refused while the only sets are the old primary's, then seeded from a set of the new one.
    const early = await s.standbyCli(['rejoin', '--config', s.primary.standbyConfigFile, '--seed']);
    expect(early.code, show(early)).not.toBe(0);
    expect(early.stderr).toContain('make a set on the new primary first');
    const nb = await s.standbyPrimaryCli(['backup', '--config', s.standby.primaryConfigFile]);
    expect(nb.code, show(nb)).toBe(0);
    const rj = await s.standbyCli(['rejoin', '--config', s.primary.standbyConfigFile, '--seed', '--json']);
    expect(rj.code, show(rj)).toBe(0);
    expect(JSON.parse(rj.stdout)).toMatchObject({ method: 'seed' });
    await sb.query("insert into stamps (note) values ('after the seeded rejoin')");
    await sb.query('select pg_switch_wal()');
    await waitFor(async () => (await count(p)) === (await count(sb)) || undefined, 'the rejoined old primary follows the new one', 120_000, 250);
  }, 400_000);
});
