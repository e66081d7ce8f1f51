/**
 * A planned switchover in WAL mode, with two real PostgreSQL clusters, the real primary daemon and
 * `tandem-standby switchover`: an application writes until onFenced stops it; the primary offers its
 * newest set as the final one (no base backup while the writes are stopped: the standby keeps its
 * cluster), closes and archives the WAL file that holds the last write and names it; the standby
 * promotes only once it has replayed that file. Every committed row is on the
 * new primary, whose timeline goes on from there; the old primary is fenced.
 *
 * maxDelay is long (10 minutes), so the daemon's own switching cannot be what brings the last write
 * over: only the switchover's final WAL file can.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { ensurePostgres, requireCommands, sleep, tmpDir, waitFor } from './support/site.js';
import { PRIMARY_MAIN } from './support/site.js';
import { writeTokens } from './support/tokens.js';
import { createWalSite, giveToPostgres, startAsPostgresAgent, type WalSite } from './support/wal-site.js';

const show = (r: { code: number | null; stdout: string; stderr: string }) => `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
const STANDBY_ID = 'sb-wal';

describe('switchover in WAL mode (directory filestore)', () => {
  let root: string;
  let s: WalSite;
  let daemon: Awaited<ReturnType<typeof startAsPostgresAgent>> | undefined;

  beforeAll(async () => {
    requireCommands(['zstd', 'runuser']);
    await ensurePostgres();
    root = await tmpDir('tandem-wal-switchover-');
    s = await createWalSite(root, { maxDelay: '10m' });
  }, 120_000);

  afterAll(async () => {
    if (daemon && daemon.child.exitCode === null) {
      daemon.child.kill('SIGTERM');
      await Promise.race([new Promise((r) => daemon!.child.once('close', r)), sleep(10_000)]);
      if (daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
    }
    await s?.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('loses no committed write: the standby promotes after replaying the WAL file the primary archived last', async () => {
    const p = s.primary.cluster;
    const sb = s.standby.cluster;
    const markers = join(s.root, 'markers');
    await mkdir(markers, { recursive: true });
    const marker = (name: string) => join(markers, name);

    // The control channel: tokens, the listed standby, onFenced (maintenance on, then wait for the
    // application to notice) and onResume.
    const tokens = await writeTokens(join(s.root, 'tokens'), 'walsw', [STANDBY_ID]);
    const primaryDoc = parseYaml(await readFile(s.primary.configFile, 'utf8')) as Record<string, any>;
    const listen = primaryDoc.server.listen as string;
    const onFenced = join(s.root, 'on-fenced.sh');
    await writeFile(
      onFenced,
      `#!/bin/sh
touch '${marker('maintenance')}'
i=0
while [ ! -f '${marker('writer-stopped')}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
`,
    );
    await chmod(onFenced, 0o755);
    primaryDoc.server = tokens.primaryServer(listen);
    primaryDoc.standbys = tokens.primaryStandbys();
    primaryDoc.onFenced = onFenced;
    primaryDoc.onResume = `rm -f '${marker('maintenance')}'`;
    await writeFile(s.primary.configFile, toYaml(primaryDoc));
    const standbyDoc = parseYaml(await readFile(s.standby.configFile, 'utf8')) as Record<string, any>;
    standbyDoc.primary = { url: `ws://${listen}`, tokenFile: tokens.standbys[STANDBY_ID]!.file };
    standbyDoc.standbyId = STANDBY_ID;
    await writeFile(s.standby.configFile, toYaml(standbyDoc));
    await giveToPostgres(s.root);

    // A seeded hot standby.
    await p.query('create table writes (id integer primary key, at timestamptz not null default now())');
    const b = await s.primaryCli(['backup', '--config', s.primary.configFile, '--json']);
    expect(b.code, show(b)).toBe(0);
    const seedSet = (JSON.parse(b.stdout) as { setId: string }).setId;
    const a = await s.standbyCli(['apply', '--config', s.standby.configFile]);
    expect(a.code, show(a)).toBe(0);
    expect((await sb.query<{ r: boolean }>('select pg_is_in_recovery() as r'))[0]!.r).toBe(true);

    daemon = await startAsPostgresAgent(PRIMARY_MAIN, ['run', '--config', s.primary.configFile], s.env);
    await waitFor(() => daemon!.stderr().includes('tandem-primary daemon ready') || undefined, 'the primary daemon to be ready', 30_000, 100).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}\n${daemon!.stderr()}`);
    });

    // The application: one committed row after another until maintenance mode is on.
    let written = 0;
    let gaveUp = false;
    const writer = (async () => {
      while (!existsSync(marker('maintenance')) && !gaveUp) {
        await p.query('insert into writes (id) values ($1)', [written + 1]);
        written++;
        await sleep(5);
      }
      await writeFile(marker('writer-stopped'), '');
    })();
    await waitFor(() => written >= 20 || undefined, 'the writer to get going', 10_000, 50);

    const r = await s.standbyCli(['switchover', '--config', s.standby.configFile, '--timeout', '2m']);
    gaveUp = true; // a switchover that never stopped the writes must not leave the writer running
    await writer;
    expect(r.code, `${show(r)}\nprimary daemon:\n${daemon.stderr().split('\n').slice(-30).join('\n')}`).toBe(0);
    if (process.env.DEBUG_SWITCHOVER) console.log(r.stdout);
    const walFile = /^primary: WAL file ([0-9A-F]{24}) archived: the standby replays up to it$/m.exec(r.stdout)?.[1];
    expect(walFile, r.stdout).toBeDefined();
    // The final set is the newest one, the standby's already: no base backup while the writes stop.
    const setId = /^primary: final set (\S+): the newest set/m.exec(r.stdout)?.[1];
    expect(setId, r.stdout).toBe(seedSet);
    expect(r.stdout).not.toContain('primary: final backup started');
    const out = r.stdout.split('\n');
    const at = (line: string) => out.findIndex((l) => l.startsWith(line));
    const order = [
      'primary: writes stopped (onFenced ran)',
      `primary: final set ${setId}: the newest set (WAL mode: no new base backup`,
      `primary: WAL file ${walFile} archived`,
      `standby: waiting until WAL file ${walFile}`,
      `standby: WAL file ${walFile} replayed`,
      'standby: promoted, epoch 2',
    ].map(at);
    expect(order.every((i) => i >= 0), r.stdout).toBe(true);
    expect([...order].sort((x, y) => x - y)).toEqual(order);
    expect(r.stdout).toContain(`its writes stopped before its last WAL file ${walFile}, replayed here: no committed transaction was lost`);

    // Every committed row is on the new primary, which takes writes on its new timeline.
    expect(written).toBeGreaterThanOrEqual(20);
    expect((await sb.query<{ r: boolean }>('select pg_is_in_recovery() as r'))[0]!.r).toBe(false);
    const rows = (await sb.query<{ n: string; max: number | null }>('select count(*)::text as n, max(id) as max from writes'))[0]!;
    expect(rows).toEqual({ n: String(written), max: written });
    await sb.query('insert into writes (id) values ($1)', [written + 1]);
    const tl = (await sb.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    expect(parseInt(tl.slice(0, 8), 16)).toBe(2);

    // The old primary is fenced: it says so, and stores no more WAL.
    await waitFor(() => daemon!.stderr().includes('fenced') || undefined, 'the old primary to know it is fenced', 30_000, 100);
    const epoch = JSON.parse(await readFile(join(s.root, 'store', s.site, 'epoch.json'), 'utf8')) as { epoch: number; reason?: string };
    expect(epoch).toMatchObject({ epoch: 2, reason: 'switchover' });
  }, 300_000);
});
