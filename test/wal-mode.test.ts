/**
 * WAL mode end to end, with two real PostgreSQL clusters and the real agents: the primary's
 * base backup as a set, its WAL archived by `tandem-primary wal-push`; the standby seeded by
 * `tandem-standby apply` (a hot standby), replaying writes made after the seed through
 * `tandem-standby wal-fetch`; a tampered, truncated, replayed or old-epoch WAL file refused and
 * raised, nothing written where PostgreSQL reads; promote (epoch raised, pg_promote); the fenced
 * old primary stores nothing and PostgreSQL there keeps its WAL; the new primary archives on its
 * new timeline; the old primary rejoins (pg_rewind) and replays the new primary's writes.
 */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlSystemId, loadSigningKey, openFilestore, parseRecipientFile, storeWalFile, walKeys } from '@tandem/shared';
import { S3RVER_CREDENTIALS, s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from './support/s3rver.js';
import { ensurePostgres, requireCommands, tmpDir, waitFor } from './support/site.js';
import { PRIMARY_MAIN, STANDBY_MAIN } from './support/site.js';
import { createWalSite, giveToPostgres, startAsPostgresAgent, type WalSite } from './support/wal-site.js';

const show = (r: { code: number | null; stdout: string; stderr: string }) => `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

describe.each(['dir', 's3'] as const)('WAL mode (%s filestore)', (kind) => {
  let root: string;
  let s: WalSite;
  let s3: S3rverHandle | undefined;

  beforeAll(async () => {
    requireCommands(['zstd', 'runuser']);
    await ensurePostgres();
    root = await tmpDir('tandem-wal-');
    if (kind === 's3') {
      s3 = await startS3rver();
      s = await createWalSite(root, { maxDelay: '2s', filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'unique' }), env: s3rverEnv() });
    } else {
      s = await createWalSite(root, { maxDelay: '2s' });
    }
  }, 120_000);

  afterAll(async () => {
    await s?.destroy();
    await s3?.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  /**
   * A by-hand wal-fetch with a state dir of its own (the seed's record copied): the standby's
   * wal-replay.json is PostgreSQL's restore_command's, and a second writer beside it would race it.
   */
  async function handFetcher(configFile: string, stateDir: string, tag: string) {
    const handState = join(s.root, `hand-state-${tag}`);
    await mkdir(handState, { recursive: true });
    await copyFile(join(stateDir, 'wal-seed.json'), join(handState, 'wal-seed.json'));
    const handConfig = join(s.root, `hand-${tag}.yml`);
    await writeFile(handConfig, (await readFile(configFile, 'utf8')).replace(stateDir, handState));
    await giveToPostgres(s.root);
    let n = 0;
    return {
      async fetch(name: string) {
        const target = join(s.root, `fetched-${tag}-${++n}`);
        await giveToPostgres(s.root);
        const r = await s.standbyCli(['wal-fetch', '--config', handConfig, name, target]);
        const rec = JSON.parse(await readFile(join(handState, 'wal-replay.json'), 'utf8').catch(() => '{}')) as { refused?: { name: string; code: string }; last?: { name: string } };
        return { ...r, written: existsSync(target), refused: rec.refused, recorded: rec.last?.name };
      },
      /** A refusal: an error status PostgreSQL retries (below 126), nothing at PATH, the code recorded. */
      async refused(name: string, code: string) {
        const r = await this.fetch(name);
        expect(r.code, show(r)).not.toBe(0);
        expect(r.code).toBeLessThan(126); // PostgreSQL would abort recovery on a higher status
        expect(r.written).toBe(false);
        expect(r.stderr).toContain(code);
        expect(r.refused).toMatchObject({ name, code });
      },
    };
  }

  const count = async (c: { query: WalSite['primary']['cluster']['query'] }) => Number((await c.query<{ n: string }>('select count(*)::text as n from stamps'))[0]!.n);
  const store = () => openFilestore(s.filestoreUrl, kind === 's3' ? { s3: { credentials: S3RVER_CREDENTIALS } } : {});

  it('seeds a hot standby from a base backup, replays later writes, refuses tampered, truncated, replayed and old-epoch WAL files, promotes, and rejoins the old primary', async () => {
    const p = s.primary.cluster;
    await p.query('create table stamps (id serial primary key, at timestamptz default now(), note text)');
    await p.query("insert into stamps (note) select 'before the set ' || g from generate_series(1, 100) g");
    await p.query('create role site_reader login');
    await p.query('grant select on stamps to site_reader');

    const b = await s.primaryCli(['backup', '--config', s.primary.configFile, '--json']);
    expect(b.code, show(b)).toBe(0);
    const set = JSON.parse(b.stdout) as { setId: string; artifacts: Array<{ name: string; kind: string; file: string }> };
    expect(set.artifacts.find((a) => a.name === 'db')).toMatchObject({ kind: 'postgres-base', file: 'db.base.tar.zst.age' });
    expect(set.artifacts.some((a) => a.name === 'dbmeta')).toBe(false);

    // Written after the set: they reach the standby only through the WAL.
    await p.query("insert into stamps (note) select 'after the set ' || g from generate_series(1, 50) g");
    await p.query('select pg_switch_wal()');

    await s.standby.cluster.start(); // a running standby server, as in real life: the seed stops it
    const a = await s.standbyCli(['apply', '--config', s.standby.configFile, '--json']);
    expect(a.code, show(a)).toBe(0);
    expect(JSON.parse(a.stdout)).toMatchObject({ status: 'applied', setId: set.setId });
    const sb = s.standby.cluster;
    expect((await sb.query<{ r: boolean }>('select pg_is_in_recovery() as r'))[0]!.r).toBe(true);
    // Roles and grants travel with the cluster.
    expect((await sb.query<{ n: string }>("select count(*)::text as n from pg_roles where rolname = 'site_reader'"))[0]!.n).toBe('1');
    expect(existsSync(join(sb.dataDir, 'standby.signal'))).toBe(true);
    expect(await readFile(join(sb.dataDir, 'postgresql.auto.conf'), 'utf8')).toContain('wal-fetch');
    expect(JSON.parse(await readFile(s.standby.paths.sentinel, 'utf8'))).toMatchObject({ mode: 'backup' });

    await waitFor(async () => (await count(sb)) === 150 || undefined, 'the standby replays the writes made after the set', 60_000, 250);

    // Continuous, with the primary daemon running: a single write, no switch asked for; the daemon
    // switches the WAL file within maxDelay (2 s), and the standby follows without any apply.
    const daemon = await startAsPostgresAgent(PRIMARY_MAIN, ['run', '--config', s.primary.configFile], s.env);
    await waitFor(async () => (await s.primaryCli(['list', '--config', s.primary.configFile])).code === 0 || undefined, 'the filestore answers', 30_000, 250);
    await waitFor(() => daemon.stderr().includes('WAL mode: written WAL goes to the filestore') || undefined, 'the primary daemon starts', 30_000, 100).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}\n${daemon.stderr()}`);
    });
    // Nothing else writes: without the daemon's switch this WAL file would not be archived for hours.
    // (How fast is bench:rpo's business, not a test's.)
    await p.query("insert into stamps (note) values ('continuous')");
    await waitFor(async () => (await count(sb)) === 151 || undefined, 'the standby replays a write made after the seed', 60_000, 250);
    const replay = JSON.parse(await readFile(join(s.standby.stateDir, 'wal-replay.json'), 'utf8')) as { last: { name: string } };
    expect(replay.last.name).toMatch(/^[0-9A-F]{24}/);

    // The standby daemon fetches ahead: with several files waiting, PostgreSQL gets them from the
    // spool (restore_command's fast path, no agent loaded), each verified by the daemon first.
    const standbyDaemon = await startAsPostgresAgent(STANDBY_MAIN, ['run', '--config', s.standby.configFile], s.env);
    try {
      for (let i = 0; i < 4; i++) {
        await p.query("insert into stamps (note) values ('burst')");
        await p.query('select pg_switch_wal()');
      }
      await waitFor(async () => (await count(sb)) === 155 || undefined, 'the standby replays the burst', 60_000, 250);
      const rec = JSON.parse(await readFile(join(s.standby.stateDir, 'wal-replay.json'), 'utf8')) as { recent: Array<{ name: string; via?: string }> };
      expect(rec.recent.filter((r) => r.via === 'spool').length, JSON.stringify(rec.recent.slice(-6))).toBeGreaterThan(0);
    } finally {
      standbyDaemon.child.kill('SIGTERM');
      await new Promise((r) => standbyDaemon.child.once('exit', r));
    }

    // status: the WAL figures, and a recovery point of seconds, not the set's age. The primary's
    // signed heartbeat names the newest archived file; once it is replayed nothing is pending.
    const st = await waitFor(
      async () => {
        const r = await s.standbyCli(['status', '--config', s.standby.configFile, '--json']);
        const d = JSON.parse(r.stdout) as { recoveryPointAgeSeconds: number; wal?: { pendingFiles: number | null; lastReplayed: string | null; refused: unknown } };
        return d.wal?.pendingFiles === 0 ? d : undefined;
      },
      'status shows the replay caught up',
      30_000,
      500,
    );
    expect(st.wal!.lastReplayed).toMatch(/^[0-9A-F]{24}$/);
    expect(st.wal!.refused).toBeNull();
    expect(st.recoveryPointAgeSeconds).toBeLessThan(10);
    const nag = await s.standbyCli(['status', '--config', s.standby.configFile, '--max-lag', '60s']);
    expect(nag.code, show(nag)).toBe(0);

    // A tampered, a truncated and a replayed WAL file are refused: nothing at PATH, the refusal recorded.
    const fs = store();
    try {
      const docs = (await fs.list(`${s.site}/wal/`)).filter((o) => /\/[0-9A-F]{24}\.json$/.test(o.key));
      const victim = docs[docs.length - 1]!.key.replace(/\.json$/, '').split('/').pop()!;
      const other = docs[docs.length - 2]!.key.replace(/\.json$/, '').split('/').pop()!;
      const bodyKey = `${s.site}/wal/${victim}.zst.age`;
      const docKey = `${s.site}/wal/${victim}.json`;
      const good = await fs.getBuffer(bodyKey, { maxBytes: 64 << 20 }).then((r) => r.body);
      const goodDoc = await fs.getBuffer(docKey).then((r) => r.body);
      const hand = await handFetcher(s.standby.configFile, s.standby.stateDir, 'standby');
      const bad = Buffer.from(good);
      const mid = bad.length >> 1;
      bad[mid] = bad[mid]! ^ 0x40;
      await fs.putBuffer(bodyKey, bad);
      await hand.refused(victim, 'WAL_BODY_MISMATCH');
      // Truncated (a cut-off upload): refused the same way, whatever the cut.
      await fs.putBuffer(bodyKey, good.subarray(0, good.length - 100));
      await hand.refused(victim, 'WAL_BODY_MISMATCH');
      // Replayed: another file's genuine, signed doc and body put under this name.
      await fs.putBuffer(bodyKey, await fs.getBuffer(`${s.site}/wal/${other}.zst.age`, { maxBytes: 64 << 20 }).then((r) => r.body));
      await fs.putBuffer(docKey, await fs.getBuffer(`${s.site}/wal/${other}.json`).then((r) => r.body));
      await hand.refused(victim, 'WAL_MISPLACED');
      // Put back, it is restored.
      await fs.putBuffer(bodyKey, good);
      await fs.putBuffer(docKey, goodDoc);
      const ok = await hand.fetch(victim);
      expect(ok.code, show(ok)).toBe(0);
      expect(ok.written).toBe(true);
      // Fetched by hand (not in the data directory, where PostgreSQL runs restore_command): not
      // recorded as handed to PostgreSQL, which promote's preflight would take as replayed.
      expect(ok.recorded).toBeUndefined();
      expect(ok.stderr).toContain('fetched by hand');
      // Not there yet: exit 1, silently.
      const missing = await hand.fetch('FFFFFFFF0000000000000001');
      expect(missing.code).toBe(1);
      expect(missing.written).toBe(false);
    } finally {
      await fs.close();
    }

    // Promote: the primary server dies (daemon and cluster); once its heartbeat is stale, the epoch
    // is raised and PostgreSQL promoted.
    daemon.child.kill('SIGKILL');
    await p.stop('immediate');
    await new Promise((r) => setTimeout(r, 6_000)); // heartbeatStaleAfter: 5s
    // The replay catches up with what the primary stored before it died (promote's preflight
    // refuses until then: it is the WAL a failover would otherwise lose).
    const fsr = store();
    try {
      const newest = (await fsr.list(`${s.site}/wal/`)).map((o) => o.key.split('/').pop()!).filter((n) => /^[0-9A-F]{24}\.json$/.test(n)).sort().pop()!.replace('.json', '');
      await waitFor(
        async () => (JSON.parse(await readFile(join(s.standby.stateDir, 'wal-replay.json'), 'utf8')) as { last?: { name: string } }).last?.name === newest || undefined,
        `the standby replays ${newest}`,
        60_000,
        250,
      ).catch(async (err: unknown) => {
        const log = (await readFile(sb.logFile, 'utf8')).split('\n').slice(-30).join('\n');
        throw new Error(`${(err as Error).message}\nwal-replay.json: ${await readFile(join(s.standby.stateDir, 'wal-replay.json'), 'utf8')}\nstandby log:\n${log}`);
      });
    } finally {
      await fsr.close();
    }
    const pr = await s.standbyCli(['promote', '--config', s.standby.configFile]);
    expect(pr.code, show(pr)).toBe(0);
    expect((await sb.query<{ r: boolean }>('select pg_is_in_recovery() as r'))[0]!.r).toBe(false);
    await sb.query("insert into stamps (note) values ('on the new primary')");
    expect(existsSync(s.standby.paths.sentinel)).toBe(false);
    const fs2 = store();
    try {
      const epoch = JSON.parse((await fs2.getBuffer(`${s.site}/epoch.json`)).body.toString()) as { epoch: number };
      expect(epoch.epoch).toBe(2);
      // The new primary archives on its new timeline (its history file first).
      await waitFor(async () => (await fs2.stat(`${s.site}/wal/00000002.history.json`)) ?? undefined, 'the new primary stores timeline 2 history', 60_000, 250);

      // The old primary comes back (it was never told): its WAL is not stored, PostgreSQL keeps it.
      await p.start();
      await p.query("insert into stamps (note) values ('split brain attempt')");
      const oldWal = (await p.query<{ name: string }>('select pg_walfile_name(pg_current_wal_lsn()) as name'))[0]!.name;
      await p.query('select pg_switch_wal()');
      await waitFor(async () => Number((await p.query<{ n: string }>('select failed_count::text as n from pg_stat_archiver'))[0]!.n) > 0 || undefined, 'the fenced primary fails to archive', 60_000, 250);
      expect(await fs2.stat(`${s.site}/wal/${oldWal}.json`)).toBeNull();
      expect((await readdir(join(p.dataDir, 'pg_wal'))).includes(oldWal)).toBe(true);
      const rec = JSON.parse(await readFile(join(s.primary.stateDir, 'wal-archive.json'), 'utf8')) as { failed?: { fenced: boolean; name: string } };
      expect(rec.failed).toMatchObject({ fenced: true });
      const fencedCopy = join(s.root, 'fenced-wal');
      await copyFile(join(p.dataDir, 'pg_wal', oldWal), fencedCopy);

      // The old primary rejoins as a standby of the new one: pg_rewind, then replay from the filestore.
      await p.stop('immediate');
      // Its server's start replays WAL fetched one file per wal-fetch process: on a loaded machine
      // (the whole suite on two cores) that took over two minutes once.
      const rj = await s.standbyCli(['rejoin', '--config', s.primary.standbyConfigFile, '--source', sb.url, '--json'], {}, 240_000);
      expect(rj.code, show(rj)).toBe(0);
      expect(JSON.parse(rj.stdout)).toMatchObject({ method: 'pg_rewind' });
      expect((await p.query<{ r: boolean }>('select pg_is_in_recovery() as r'))[0]!.r).toBe(true);
      // What it wrote while fenced is gone; what the new primary writes now arrives.
      expect((await p.query<{ n: string }>("select count(*)::text as n from stamps where note = 'split brain attempt'"))[0]!.n).toBe('0');
      await sb.query("insert into stamps (note) values ('after the rejoin')");
      await sb.query('select pg_switch_wal()');
      await waitFor(
        async () => (await p.query<{ n: string }>("select count(*)::text as n from stamps where note = 'after the rejoin'"))[0]!.n === '1' || undefined,
        'the rejoined old primary replays the new primary\'s writes',
        60_000,
        250,
      );
      expect(existsSync(join(s.primary.paths.config, 'BACKUP'))).toBe(true);

      // An old-epoch WAL file: what the fenced primary wrote, signed with the primary's key as it
      // would have been had that agent ignored the fence (or had epoch.json been rolled back for a
      // moment), stored after the epoch was raised. A standby refuses it and says so.
      const forged = await storeWalFile({
        filestore: fs2,
        site: s.site,
        path: fencedCopy,
        name: oldWal,
        epoch: 1,
        primaryId: 'the-fenced-primary',
        systemId: await controlSystemId(p.dataDir),
        // Read as the key files' owner would (the test runs as root; the agents refuse key files another user owns).
        recipients: parseRecipientFile(await readFile(s.keys.recipientFile, 'utf8'), s.keys.recipientFile),
        signingKey: loadSigningKey(await readFile(s.keys.signingKeyFile, 'utf8'), s.keys.signingKeyFile),
      });
      expect(forged.status).toBe('stored');
      await giveToPostgres(s.root);
      const rejoined = await handFetcher(s.primary.standbyConfigFile, s.primary.stateDir, 'rejoined');
      await rejoined.refused(oldWal, 'WAL_FENCED_PRIMARY');
      const forgedKeys = walKeys(s.site, oldWal);
      for (const key of [forgedKeys.doc, forgedKeys.body]) await fs2.delete(key);

      // apply --at: a set of the new primary, then the database as it was at a moment after it.
      // (Its filestore part is a seed and wal-fetch, both proven on both stores above: once is
      // enough for the suite's time.)
      if (kind === 's3') return;
      const nb = await s.standbyPrimaryCli(['backup', '--config', s.standby.primaryConfigFile]);
      expect(nb.code, show(nb)).toBe(0);
      await sb.query("insert into stamps (note) values ('pitr before')");
      await new Promise((r) => setTimeout(r, 1_100));
      const at = (await sb.query<{ t: string }>("select to_char(now() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') as t"))[0]!.t;
      await new Promise((r) => setTimeout(r, 1_100));
      await sb.query("insert into stamps (note) values ('pitr after')");
      await sb.query('select pg_switch_wal()');
      const notes = async (c: typeof p) => (await c.query<{ note: string }>("select note from stamps where note like 'pitr%' order by id")).map((r) => r.note);
      await waitFor(async () => (await notes(p)).length === 2 || undefined, 'both rows reach the rejoined standby', 60_000, 250);
      const pitr = await s.standbyCli(['apply', '--config', s.primary.standbyConfigFile, '--at', at, '--json']);
      expect(pitr.code, `${show(pitr)}\n${(await readFile(p.logFile, 'utf8')).split('\n').slice(-25).join('\n')}`).toBe(0);
      await waitFor(async () => (await p.query<{ paused: string }>('select pg_get_wal_replay_pause_state() as paused'))[0]!.paused === 'paused' || undefined, 'the replay pauses at the target', 60_000, 250);
      expect(await notes(p)).toEqual(['pitr before']);
      // The daemon's next apply does not replace a point-in-time cluster; --force follows the primary again.
      const again = await s.standbyCli(['apply', '--config', s.primary.standbyConfigFile]);
      expect(again.code, show(again)).toBe(0);
      expect(again.stdout).toContain('already applied');
      expect(await notes(p)).toEqual(['pitr before']);
    } finally {
      await fs2.close();
    }
  }, 420_000);
});
