/**
 * `tandem-standby run` on its own (no primary daemon): sets made with `tandem-primary backup` are
 * applied by polling latest.json; an idle standby only makes conditional GETs; no set is applied
 * twice; the daemon rides out an S3 outage in the middle of an apply; /status and /metrics need the
 * token; SIGTERM stops it with status 0; `status --max-lag` exits 0, 1 and 2 where it should.
 * Real PostgreSQL, the real CLIs, a real S3 server.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3rver, s3rverEnv, s3rverFilestoreUrl, type S3rverHandle } from './support/s3rver.js';
import { closedPort, ensurePostgres, logRecords, messageLines, requireCommands, sleep, tmpDir, waitFor } from './support/site.js';
import { appliedSetId, httpGet, metric, startStandbyDaemon, writeDaemonConfig, writeToken, type RunningStandby } from './support/standby-daemon.js';
import { backup, createStandbySite, dropSiteDatabases, expectNoLeftovers, restartLog, runStandby, show, type StandbySite } from './support/standby-helpers.js';

const TOKEN = randomBytes(24).toString('hex');

interface StatusJson {
  appliedSetId: string | null;
  appliedAt: string | null;
  latestSetId: string | null;
  recoveryPointAgeSeconds: number | null;
  applyLagSeconds: number | null;
  pendingSets: number | null;
  primaryHeartbeatAgeSeconds: number | null;
  daemon: { running: boolean; pid: number | null; reachable: boolean };
  push: { connected: boolean; failures: number; lastError: { code: string } | null } | null;
  poll: { lastResult: string | null; consecutiveErrors: number } | null;
  applying: { setId: string | null } | null;
  lastError: { what: string; code: string; message: string } | null;
  problems: string[];
  maxLag?: { verdict: string };
}

async function statusJson(configFile: string, env: NodeJS.ProcessEnv, args: string[] = []): Promise<{ code: number | null; doc: StatusJson; stdout: string; stderr: string }> {
  const r = await runStandby(['status', '--config', configFile, '--json', ...args], { env });
  let doc: StatusJson;
  try {
    doc = JSON.parse(r.stdout) as StatusJson;
  } catch {
    throw new Error(`status --json printed no JSON:\n${show(r)}`);
  }
  return { code: r.code, doc, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Until the daemon itself has applied and reported `setId` (applied.json is written before the restart
 * command runs and before the daemon counts the apply and writes its report).
 */
async function waitApplied(d: RunningStandby, setId: string, timeoutMs = 30_000): Promise<StatusJson> {
  return waitFor(
    async () => {
      const r = await httpGet(d.listen, '/status', TOKEN);
      const doc = JSON.parse(r.body) as StatusJson;
      return doc.appliedSetId === setId && doc.applying === null ? doc : null;
    },
    `set ${setId} applied by the daemon`,
    timeoutMs,
    50,
  );
}

async function metricsText(d: RunningStandby, token = TOKEN): Promise<string> {
  const r = await httpGet(d.listen, '/metrics', token);
  expect(r.status).toBe(200);
  return r.body;
}

describe('tandem-standby run against a directory filestore', () => {
  let root: string;
  let s: StandbySite;
  let configFile: string;
  let daemon: RunningStandby | undefined;
  const env = { TANDEM_TOKEN: TOKEN };
  const sets: string[] = [];

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-standby-daemon-');
    s = await createStandbySite(root);
    configFile = await writeDaemonConfig(s, join(root, 'standby-daemon.yml'), { pollInterval: '1s', standbyId: 'sb-dir' });
  });

  afterAll(async () => {
    if (daemon && daemon.child.exitCode === null) await daemon.stop('SIGKILL');
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('refuses to start on a server that was promoted', async () => {
    const stateDir = join(root, 'promoted-state');
    await mkdir(stateDir, { recursive: true });
    await writeFile(join(stateDir, 'promoted.json'), JSON.stringify({ site: s.site, promotedAt: '2026-01-01T00:00:00.000Z', appliedSetId: null, forced: true, unapplied: null, restart: 'none' }));
    const cfg = await writeDaemonConfig(s, join(root, 'promoted.yml'), { stateDir });
    const r = await runStandby(['run', '--config', cfg], { env, timeoutMs: 20_000 });
    expect(r.code, show(r)).toBe(2);
    expect(messageLines(r.stderr).join('\n')).toMatch(/promoted to primary at 2026-01-01.*this server is the primary now/);
  });

  it('applies the committed set by polling, writes the sentinel and the report, then only polls', async () => {
    sets.push(await backup(s));
    daemon = await startStandbyDaemon(configFile, s.standby.stateDir, env);
    await waitApplied(daemon, sets[0]!);
    expect(JSON.parse(await readFile(s.standby.paths.sentinel, 'utf8'))).toMatchObject({ mode: 'backup', site: s.site });
    const report = JSON.parse(await readFile(join(root, 'store', s.site, 'standbys', 'sb-dir.json'), 'utf8')) as Record<string, unknown>;
    expect(report).toMatchObject({ format: 'tandem-standby-report', standbyId: 'sb-dir', setId: sets[0] });

    // Idle: every poll is a conditional GET that finds latest.json unchanged, and nothing is applied.
    await waitFor(async () => metric(await metricsText(daemon!), 'tandem_standby_polls_total', { result: 'unchanged' })! >= 1, 'an unchanged poll');
    const before = await metricsText(daemon);
    await sleep(3_500);
    const after = await metricsText(daemon);
    const polls = (t: string, result: string) => metric(t, 'tandem_standby_polls_total', { result })!;
    expect(polls(after, 'unchanged') - polls(before, 'unchanged')).toBeGreaterThanOrEqual(2);
    expect(polls(after, 'unchanged') - polls(before, 'unchanged')).toBeLessThanOrEqual(5);
    expect(polls(after, 'changed')).toBe(polls(before, 'changed'));
    expect(polls(after, 'error')).toBe(0);
    expect(metric(after, 'tandem_standby_applies_total', { outcome: 'applied' })).toBe(1);
    expect(metric(after, 'tandem_standby_pending_sets')).toBe(0);
    expect(metric(after, 'tandem_standby_websocket_connected')).toBe(0);
    expect(metric(after, 'tandem_standby_last_apply_bytes')).toBeGreaterThan(0);
    expect(metric(after, 'tandem_standby_last_apply_duration_seconds', { stage: 'total' })).toBeGreaterThan(0);
    expect(metric(after, 'tandem_standby_recovery_point_age_seconds')).toBeGreaterThan(0);
    expect(metric(after, 'tandem_standby_apply_lag_seconds')).toBeGreaterThanOrEqual(0);
    expect(await restartLog(s)).toEqual([`backup ${sets[0]}`]);
  });

  it('serves /healthz openly and /status, /metrics only with the token', async () => {
    const d = daemon!;
    const health = await httpGet(d.listen, '/healthz');
    expect(health.status).toBe(200);
    expect(health.body.trim()).toBe('ok');
    for (const path of ['/status', '/metrics']) {
      expect((await httpGet(d.listen, path)).status, `${path} without a token`).toBe(401);
      expect((await httpGet(d.listen, path, 'x'.repeat(48))).status, `${path} with a wrong token`).toBe(401);
      const noToken = await httpGet(d.listen, path);
      expect(noToken.headers['www-authenticate']).toBe('Bearer');
      expect(noToken.body).not.toContain(sets[0]);
    }
    const st = await httpGet(d.listen, '/status', TOKEN);
    expect(st.status).toBe(200);
    const doc = JSON.parse(st.body) as StatusJson;
    expect(doc).toMatchObject({ appliedSetId: sets[0], latestSetId: sets[0], pendingSets: 0, lastError: null });
    expect(doc.daemon).toMatchObject({ running: true, pid: d.pid });

    // One daemon per state dir.
    const second = await runStandby(['run', '--config', configFile], { env, timeoutMs: 20_000 });
    expect(second.code, show(second)).toBe(75);
    expect(messageLines(second.stderr).join('\n')).toMatch(/tandem-standby run for site .* is already running \(pid \d+/);
  });

  it('applies a new set once, and never again after a restart', async () => {
    sets.push(await backup(s));
    await waitApplied(daemon!, sets[1]!);
    const m = await metricsText(daemon!);
    expect(metric(m, 'tandem_standby_applies_total', { outcome: 'applied' })).toBe(2);
    expect(metric(m, 'tandem_standby_applies_total', { outcome: 'failed' })).toBe(0);
    const st = await statusJson(configFile, env);
    expect(st.code, st.stderr).toBe(0);
    expect(st.doc).toMatchObject({ appliedSetId: sets[1], latestSetId: sets[1], pendingSets: 0, lastError: null, problems: [] });
    expect(st.doc.daemon).toMatchObject({ running: true, pid: daemon!.pid, reachable: true });
    expect(st.doc.recoveryPointAgeSeconds).toBeGreaterThan(0);
    expect(st.doc.applyLagSeconds).toBeGreaterThanOrEqual(0);
    expect(st.doc.applyLagSeconds).toBeLessThan(30);

    // SIGTERM: a clean stop, status 0, daemon.json gone.
    const r = await daemon!.stop('SIGTERM');
    expect(r.code, show(r)).toBe(0);
    expect(logRecords(r.stderr).some((l) => l.msg === 'standby daemon stopped')).toBe(true);
    await expect(readFile(join(s.standby.stateDir, 'daemon.json'))).rejects.toThrow();

    // A new daemon finds the set applied and leaves it alone.
    daemon = await startStandbyDaemon(configFile, s.standby.stateDir, env);
    await waitFor(async () => metric(await metricsText(daemon!), 'tandem_standby_polls_total', { result: 'unchanged' })! >= 2, 'two polls');
    const m2 = await metricsText(daemon);
    expect(metric(m2, 'tandem_standby_applies_total', { outcome: 'applied' })).toBe(0);
    expect(await restartLog(s)).toEqual(sets.map((id) => `backup ${id}`));
  });

  it('on SIGTERM lets an apply in progress finish; past --stop-grace rolls it back; the next start applies it', async () => {
    const journal = join(s.standby.stateDir, 'journal.json');
    const staging = async (setId: string) =>
      waitFor(
        async () => {
          if (await stat(journal).then(() => true, () => false)) return 'staging';
          return (await appliedSetId(s.standby.stateDir)) === setId ? 'too-late' : null;
        },
        `the daemon to start staging ${setId}`,
        30_000,
        5,
      );
    // A set that takes a moment to stage.
    await writeFile(join(s.primary.paths.files, 'big', 'random-16mb.bin'), randomBytes(16 * 1024 * 1024));
    sets.push(await backup(s));
    expect(await staging(sets[2]!)).toBe('staging');
    const r1 = await daemon!.stop('SIGTERM');
    expect(r1.code, show(r1)).toBe(0);
    expect(await appliedSetId(s.standby.stateDir), 'the apply in progress finished').toBe(sets[2]);
    await expect(stat(journal)).rejects.toThrow();

    daemon = await startStandbyDaemon(configFile, s.standby.stateDir, env, ['--stop-grace', '0s']);
    await writeFile(join(s.primary.paths.files, 'big', 'random-16mb.bin'), randomBytes(16 * 1024 * 1024));
    sets.push(await backup(s));
    expect(await staging(sets[3]!)).toBe('staging');
    const r2 = await daemon.stop('SIGTERM');
    expect(r2.code, show(r2)).toBe(0);
    expect(logRecords(r2.stderr).some((l) => l.msg === 'apply interrupted by the stop')).toBe(true);
    expect(await appliedSetId(s.standby.stateDir), 'the apply was rolled back').toBe(sets[2]);
    expect(await expectNoLeftovers(s)).toEqual([]);

    daemon = await startStandbyDaemon(configFile, s.standby.stateDir, env);
    await waitApplied(daemon, sets[3]!);
    expect(await restartLog(s)).toEqual(sets.map((id) => `backup ${id}`));
  });

  it('status works without the daemon, and --max-lag exits 0, 1 and 2', async () => {
    const newest = sets[sets.length - 1]!;
    const r = await daemon!.stop('SIGINT');
    expect(r.code, show(r)).toBe(0);
    const st = await statusJson(configFile, env);
    expect(st.doc).toMatchObject({ appliedSetId: newest, latestSetId: newest, pendingSets: 0 });
    expect(st.doc.daemon).toMatchObject({ running: false, pid: null });

    const human = await runStandby(['status', '--config', configFile, '--max-lag', '1h'], { env });
    expect(human.code, show(human)).toBe(0);
    expect(human.stdout).toMatch(/recovery point\s+\S+ old/);
    expect(human.stdout).toMatch(/daemon\s+NOT RUNNING/);
    expect(human.stdout).toMatch(/max-lag 60m\s+OK: recovery point age \S+ is within 80% of 60m/);

    // The real applied set: well within an hour, far beyond a fraction of its age.
    const ok = await statusJson(configFile, env, ['--max-lag', '1h']);
    expect(ok.code, ok.stdout).toBe(0);
    expect(ok.doc.maxLag?.verdict).toBe('ok');
    const age = ok.doc.recoveryPointAgeSeconds!;
    const crit = await runStandby(['status', '--config', configFile, '--max-lag', `${Math.max(1, Math.floor(age / 2))}s`], { env });
    expect(crit.code, show(crit)).toBe(2);
    expect(crit.stdout).toMatch(/CRITICAL: recovery point age .* is beyond/);

    // The warning band (above 80%, up to 100%) with an age that does not move much while the command
    // runs: the same applied record, made 1000 s older, in a state dir of its own.
    const oldState = join(root, 'old-state');
    await mkdir(oldState, { recursive: true });
    const rec = JSON.parse(await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(oldState, 'applied.json'), JSON.stringify({ ...rec, createdAt: new Date(Date.now() - 1000_000).toISOString() }));
    const oldCfg = await writeDaemonConfig(s, join(root, 'old.yml'), { stateDir: oldState });
    for (const [maxLag, code, verdict] of [['1300s', 0, 'ok'], ['990s', 2, 'critical']] as const) {
      const r = await statusJson(oldCfg, env, ['--max-lag', maxLag]);
      expect(r.code, `--max-lag ${maxLag}: ${r.stdout}`).toBe(code);
      expect(r.doc.maxLag?.verdict).toBe(verdict);
    }
    const warn = await runStandby(['status', '--config', oldCfg, '--max-lag', '1100s'], { env });
    expect(warn.code, show(warn)).toBe(1);
    expect(warn.stdout).toMatch(/max-lag 18m\s+WARNING: recovery point age 17m is above 80% of 18m \(15m\)/);

    // Nothing applied at all: a failover would lose everything.
    const empty = await writeDaemonConfig(s, join(root, 'empty.yml'), { stateDir: join(root, 'empty-state') });
    const none = await statusJson(empty, env, ['--max-lag', '1h']);
    expect(none.code).toBe(2);
    expect(none.doc).toMatchObject({ appliedSetId: null, recoveryPointAgeSeconds: null, latestSetId: newest, pendingSets: sets.length });

    // A Nagios check that cannot run is UNKNOWN (3), said on its first line.
    const bad = await runStandby(['status', '--config', configFile, '--max-lag', 'soon'], { env });
    expect(bad.code).toBe(3);
    expect(bad.stdout).toMatch(/^TANDEM UNKNOWN - tandem-standby status: --max-lag "soon" is not a duration/);
  });

  it('stops by itself (status 2) when this server is promoted while it runs', async () => {
    daemon = await startStandbyDaemon(configFile, s.standby.stateDir, env);
    await writeFile(
      join(s.standby.stateDir, 'promoted.json'),
      JSON.stringify({ site: s.site, promotedAt: new Date().toISOString(), appliedSetId: sets[sets.length - 1], forced: false, unapplied: null, restart: 'none' }),
    );
    const r = await daemon.result;
    expect(r.code, show(r)).toBe(2);
    expect(messageLines(r.stderr).join('\n')).toMatch(/was promoted to primary at .*this server is the primary now/);
    await expect(readFile(join(s.standby.stateDir, 'daemon.json'))).rejects.toThrow();
  });
});

describe('tandem-standby run against S3 (s3rver), through an outage', () => {
  let root: string;
  let s: StandbySite;
  let s3: S3rverHandle;
  let configFile: string;
  let daemon: RunningStandby | undefined;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-standby-daemon-s3-');
    s3 = await startS3rver();
    env = { ...s3rverEnv() };
    s = await createStandbySite(root, { filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'unique' }), env, restoreJobs: 1 });
    // A push channel to a port nobody listens on: the daemon must poll, and keep redialling.
    const tokenFile = await writeToken(join(root, 'ws.token'), TOKEN);
    configFile = await writeDaemonConfig(s, join(root, 'standby-daemon.yml'), {
      pollInterval: '1s',
      standbyId: 'sb-s3',
      restoreJobs: 1,
      primary: { url: `ws://127.0.0.1:${await closedPort()}`, tokenFile },
    });
  });

  afterAll(async () => {
    if (daemon && daemon.child.exitCode === null) await daemon.stop('SIGKILL');
    if (s) await dropSiteDatabases(s);
    await s3?.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('applies by polling while the push channel is down', async () => {
    const first = await backup(s);
    daemon = await startStandbyDaemon(configFile, s.standby.stateDir, env);
    await waitApplied(daemon, first);
    const m = await metricsText(daemon);
    expect(metric(m, 'tandem_standby_websocket_connected')).toBe(0);
    expect(metric(m, 'tandem_standby_failures_total', { kind: 'websocket' })).toBeGreaterThanOrEqual(1);
    const st = JSON.parse((await httpGet(daemon.listen, '/status', TOKEN)).body) as StatusJson;
    expect(st.push).toMatchObject({ connected: false });
    expect(st.push?.lastError?.code).toBe('PUSH_UNREACHABLE');
  });

  it('survives the S3 server going away in the middle of an apply, and applies the set once it is back', async () => {
    // A set big enough that its download takes a moment.
    await writeFile(join(s.primary.paths.files, 'big', 'random-24mb.bin'), randomBytes(24 * 1024 * 1024));
    const second = await backup(s);
    const d = daemon!;
    // The journal is written when the set is resolved and verified, right before the downloads.
    const caught = await waitFor(
      async () => {
        if (await stat(join(s.standby.stateDir, 'journal.json')).then(() => true, () => false)) return 'staging';
        return (await appliedSetId(s.standby.stateDir)) === second ? 'too-late' : null;
      },
      'the daemon to start staging the set',
      30_000,
      5,
    );
    expect(caught, 'the outage should hit the apply while it downloads').toBe('staging');
    await s3.stop();
    try {
      // The outage shows: in the daemon's /status and in `status`.
      await waitFor(async () => {
        const st = JSON.parse((await httpGet(d.listen, '/status', TOKEN)).body) as StatusJson;
        return st.lastError !== null && st.applying === null && st.poll !== null && st.poll.consecutiveErrors > 0;
      }, 'the daemon to report the outage', 40_000, 50);
      const during = await statusJson(configFile, env);
      expect(during.doc.lastError).not.toBeNull();
      // The filestore is not read past its marker, which it cannot give.
      expect(during.doc.problems.join('\n')).toMatch(/^filestore: cannot read s3:\/\/\S+\/tandem-filestore\.json: .*ECONNREFUSED/m);
      expect(during.doc.appliedSetId).not.toBe(second);
      const human = await runStandby(['status', '--config', configFile], { env });
      expect(human.stdout).toMatch(/last error\s+\S+ (poll|apply):/);
      await sleep(1_000);
    } finally {
      await s3.restart();
    }
    expect(d.child.exitCode, 'the daemon must not exit').toBeNull();
    await waitApplied(d, second, 60_000);
    const m = await metricsText(d);
    expect(metric(m, 'tandem_standby_polls_total', { result: 'error' })).toBeGreaterThanOrEqual(1);
    expect(metric(m, 'tandem_standby_filestore_errors_total')).toBeGreaterThanOrEqual(1);
    expect(metric(m, 'tandem_standby_applies_total', { outcome: 'applied' })).toBe(2);
    expect(metric(m, 'tandem_standby_applies_total', { outcome: 'failed' })).toBeGreaterThanOrEqual(1);
    await waitFor(async () => (JSON.parse((await httpGet(d.listen, '/status', TOKEN)).body) as StatusJson).lastError === null, 'the error to clear', 20_000, 100);
    expect(await restartLog(s)).toEqual([expect.stringContaining('backup '), `backup ${second}`]);

    // The report in the filestore names the set.
    const store = s.openStore();
    try {
      const report = JSON.parse((await store.getBuffer(`${s.site}/standbys/sb-s3.json`)).body.toString('utf8')) as Record<string, unknown>;
      expect(report).toMatchObject({ standbyId: 'sb-s3', setId: second });
    } finally {
      await store.close();
    }

    const r = await d.stop('SIGTERM');
    expect(r.code, show(r)).toBe(0);
  });
});

describe('tandem-standby run against a directory filestore, without a push channel', () => {
  let root: string;
  let s: StandbySite;
  let daemon: RunningStandby | undefined;
  const env = { TANDEM_TOKEN: TOKEN };

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-standby-watch-');
    s = await createStandbySite(root);
  });

  afterAll(async () => {
    if (daemon && daemon.child.exitCode === null) await daemon.stop('SIGKILL');
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('applies a set committed by a one-shot backup within seconds, long before its next poll', async () => {
    const first = await backup(s);
    // A 10-minute poll interval: only the start-up poll falls inside this test.
    const configFile = await writeDaemonConfig(s, join(root, 'standby-watch.yml'), { pollInterval: '10m', standbyId: 'sb-watch' });
    daemon = await startStandbyDaemon(configFile, s.standby.stateDir, env);
    await waitApplied(daemon, first);

    const t0 = Date.now();
    const second = await backup(s); // `tandem-primary backup` with no daemon: nobody pushes
    await waitApplied(daemon, second, 10_000);
    expect(Date.now() - t0).toBeLessThan(10_000);
    const m = await metricsText(daemon);
    expect(metric(m, 'tandem_standby_applies_total', { outcome: 'applied' })).toBe(2);

    const r = await daemon.stop('SIGTERM');
    expect(r.code, show(r)).toBe(0);
    const logs = logRecords(r.stderr);
    expect(logs.some((l) => String(l.msg).startsWith('watching latest.json in the filestore directory'))).toBe(true);
    expect(logs.some((l) => l.msg === 'latest.json names a new set' && l.setId === second && l.reason === 'watch')).toBe(true);
  });
});
