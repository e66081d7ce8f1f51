/**
 * Issue 5, "Planned switchover, zero data loss": `tandem-standby switchover` against a real
 * `tandem-primary run` daemon, PostgreSQL and a directory filestore.
 *
 * One site, one primary daemon, one standby, in this order: a request with a wrong token never
 * reaches the primary; a switchover refused because onFenced fails changes nothing; a raw client
 * that vanishes after it was allowed to promote makes the primary resume at the hold timeout, one
 * that vanishes before at once; the monitoring and control tokens and a standby's token naming
 * another standby cannot ask for a switchover at all; a standby whose
 * restore fails calls the switchover off (onResume, the primary backs up again); finally the real
 * switchover, with a writer inserting rows until onFenced stops it: every row is on the new primary.
 *
 * Needs: `npm run build` first, PostgreSQL on 127.0.0.1:5432 (or TANDEM_TEST_PG), pg_dump on PATH.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { encodeMessage, parseMessage } from '@tandem/shared';
import { writeTokens, type TokenSet } from './support/tokens.js';
import {
  PRIMARY_MAIN,
  closedPort,
  dumpDatabaseState,
  ensurePostgres,
  logRecords,
  runPrimary,
  sleep,
  snapshotTree,
  startAgent,
  startPrimary,
  tmpDir,
  waitFor,
  withDb,
  type RunningPrimary,
} from './support/site.js';
import {
  STANDBY_MAIN,
  apply,
  backup,
  createStandbySite,
  dropSiteDatabases,
  restartLog,
  runStandby,
  show,
  writeSitePrimaryConfig,
  writeStandbyConfig,
  type StandbySite,
} from './support/standby-helpers.js';

const STANDBY_ID = 'sb-new';
// raw-client and other: raw WebSocket clients playing listed standbys.
const STANDBY_IDS = [STANDBY_ID, 'raw-client', 'other'];
let tokens: TokenSet;

let work: string;
let s: StandbySite;
let port: number;
let markers: string;
let daemon: RunningPrimary | undefined;
const sockets: WebSocket[] = [];

const marker = (name: string) => join(markers, name);
const lines = async (name: string) => (await readFile(marker(name), 'utf8').catch(() => '')).split('\n').filter((l) => l !== '');
const base = () => `http://127.0.0.1:${port}`;
const auth = () => ({ authorization: `Bearer ${tokens.control.token}` });
const sbAuth = (id: string) => ({ authorization: `Bearer ${tokens.standbys[id]!.token}` });
const daemonLog = () => logRecords(daemon!.stderrSoFar());

async function getStatus(): Promise<Record<string, any>> {
  const r = await fetch(`${base()}/status`, { headers: auth() });
  expect(r.status).toBe(200);
  return (await r.json()) as Record<string, any>;
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${base()}/metrics`, { headers: auth() })).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

async function readStore(key: string): Promise<Record<string, any>> {
  return JSON.parse(await readFile(join(s.root, 'store', s.site, key), 'utf8')) as Record<string, any>;
}

/** The standby config with primary.url/tokenFile, standbyId, and any overrides. */
async function standbyConfig(name: string, o: { tokenFile?: string; database?: Record<string, unknown> } = {}): Promise<string> {
  const file = join(s.root, `standby-${name}.yml`);
  await writeStandbyConfig(s, file);
  const doc = parseYaml(await readFile(file, 'utf8')) as Record<string, any>;
  doc.primary = { url: `ws://127.0.0.1:${port}`, tokenFile: o.tokenFile ?? tokens.standbys[STANDBY_ID]!.file };
  doc.standbyId = STANDBY_ID;
  doc.heartbeatStaleAfter = '10m';
  if (o.database) doc.database = { ...doc.database, ...o.database };
  await writeFile(file, toYaml(doc));
  return file;
}

/** Everything live on the standby, for "unchanged" checks. */
async function standbySnapshot() {
  return {
    db: await dumpDatabaseState(s.standby.db),
    config: await snapshotTree(s.standby.paths.config),
    security: await snapshotTree(s.standby.paths.security),
    files: await snapshotTree(s.standby.paths.files),
    applied: await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8'),
    restarts: await restartLog(s),
  };
}

/** A raw WebSocket client holding listed standby `id`'s token. */
async function rawClient(id: string) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`, { headers: sbAuth(id) });
  sockets.push(ws);
  const msgs: Array<Record<string, any>> = [];
  ws.on('message', (d) => msgs.push(JSON.parse(d.toString()) as Record<string, any>));
  const closed = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  await new Promise<void>((res, rej) => ws.once('open', () => res()).once('error', rej));
  return { ws, msgs, closed };
}

const switchover = (config: string, extra: string[] = []) => runStandby(['switchover', '--config', config, '--timeout', '2m', ...extra], { timeoutMs: 90_000 });

beforeAll(async () => {
  if (!existsSync(PRIMARY_MAIN) || !existsSync(STANDBY_MAIN)) throw new Error('build first with `npm run build`');
  await ensurePostgres();
  work = await tmpDir('tandem-switchover-');
  s = await createStandbySite(work);
  port = await closedPort();
  markers = join(work, 'markers');
  await mkdir(markers, { recursive: true });
  tokens = await writeTokens(join(work, 'tokens'), 'switchover', STANDBY_IDS);

  // onFenced stops the "site's writes": it switches maintenance on and returns only once the writer
  // (the test's stand-in for the application) has stopped, as `systemctl stop app` would.
  const onFenced = join(work, 'on-fenced.sh');
  await writeFile(
    onFenced,
    `#!/bin/sh
echo "$TANDEM_REASON $TANDEM_SWITCHOVER_ID $TANDEM_STANDBY_ID" >> '${marker('onfenced.log')}'
if [ -f '${marker('fail-onfenced')}' ]; then echo "maintenance mode could not be switched on" >&2; exit 3; fi
touch '${marker('maintenance')}'
i=0
while [ -f '${marker('writer-running')}' ] && [ ! -f '${marker('writer-stopped')}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
`,
  );
  await chmod(onFenced, 0o755);
  await writeSitePrimaryConfig(s, s.primary.configFile, {
    schedule: '0 3 * * *',
    heartbeatInterval: '1s',
    server: tokens.primaryServer(`127.0.0.1:${port}`),
    standbys: tokens.primaryStandbys(),
    onFenced,
    onResume: `echo "$TANDEM_REASON $TANDEM_SWITCHOVER_ID" >> '${marker('onresume.log')}' && rm -f '${marker('maintenance')}'`,
  });

  // A standby in backup mode, one set behind nothing.
  await backup(s);
  const first = await apply(s);
  if (first.code !== 0) throw new Error(show(first));

  daemon = startPrimary(['run', '--config', s.primary.configFile], { timeoutMs: 300_000 });
  await waitFor(() => daemonLog().find((r) => String(r.msg).startsWith('tandem-primary daemon ready')), 'the primary daemon to be ready', 20_000);
});

afterAll(async () => {
  for (const ws of sockets) ws.terminate();
  if (daemon && daemon.child.exitCode === null) {
    daemon.child.kill('SIGTERM');
    await Promise.race([daemon.result, sleep(10_000)]);
    if (daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
  }
  if (s) await dropSiteDatabases(s);
  if (work) await rm(work, { recursive: true, force: true });
});

describe('switchover messages', () => {
  const T = '2026-11-22T03:00:41.112Z';
  const SET = '20261122T030000Z-e1-000042';
  it('are directions of their own: a push client parsing primary-to-standby ignores them as unknown', () => {
    const progress = { type: 'switchover-progress', requestId: 'abcdef12-0000', step: 'final-backup-committed', detail: 'final backup committed', setId: SET, at: T };
    expect(parseMessage(JSON.stringify(progress), 'switchover-to-standby')).toEqual(progress);
    expect(() => parseMessage(JSON.stringify(progress), 'primary-to-standby')).toThrow(/message type "switchover-progress" is not one of hello, set-committed, heartbeat/);
    const req = { type: 'switchover-request', requestId: 'abcdef12-0000', site: 'demo', standbyId: 'web2', timeoutSeconds: 600 };
    expect(parseMessage(JSON.stringify(req), 'switchover-to-primary')).toEqual(req);
    expect(() => parseMessage(JSON.stringify(req), 'standby-to-primary')).toThrow(/PROTOCOL_UNKNOWN_TYPE|is not one of hello, applied/);
    expect(() => parseMessage(JSON.stringify({ ...req, requestId: 'x' }), 'switchover-to-primary')).toThrow(/requestId: expected a request id/);
    expect(() => parseMessage(JSON.stringify({ ...req, timeoutSeconds: 0 }), 'switchover-to-primary')).toThrow(/timeoutSeconds/);
    expect(() => encodeMessage({ type: 'switchover-failed', requestId: 'abcdef12-0000', step: 'request', error: 'no', primary: 'gone' as 'fenced' }, 'switchover-to-standby')).toThrow(
      /refusing to send an invalid "switchover-failed"/,
    );
    const ready = { type: 'switchover-ready' as const, requestId: 'abcdef12-0000', setId: SET, epoch: 1, heldSince: T, holdSeconds: 600 };
    expect(JSON.parse(encodeMessage(ready, 'switchover-to-standby'))).toEqual(ready);
  });
});

describe('tandem-standby switchover', () => {
  it('without a valid token never reaches the primary (401), and changes nothing', async () => {
    const wrong = join(work, 'wrong.token');
    await writeFile(wrong, 'not-the-token-at-all-0000000000\n', { mode: 0o600 });
    const cfg = await standbyConfig('wrong-token', { tokenFile: wrong });
    const r = await switchover(cfg);
    expect(r.code, show(r)).toBe(2);
    expect(r.stderr).toContain(`the primary at ws://127.0.0.1:${port}/v1/stream refused the token (401): the switchover request was not sent`);
    expect(daemonLog().some((l) => l.msg === 'refused an unauthenticated WebSocket upgrade')).toBe(true);
    expect(daemonLog().some((l) => String(l.msg).includes('switchover'))).toBe(false);
    expect((await getStatus()).switchover).toBeNull();
    expect(await lines('onfenced.log')).toEqual([]);
    expect(await readStore('epoch.json')).toMatchObject({ epoch: 1 });

    // --help documents it.
    const help = await runStandby(['switchover', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: tandem-standby switchover --config FILE [--timeout DURATION] [--json]');
  });

  it('is refused when onFenced fails: the step is named, nothing changed', async () => {
    const cfg = await standbyConfig('main');
    const before = await standbySnapshot();
    const latestBefore = (await readStore('latest.json')).setId as string;
    await writeFile(marker('fail-onfenced'), '');
    const r = await switchover(cfg, ['--json']);
    await rm(marker('fail-onfenced'));
    expect(r.code, show(r)).toBe(1);
    expect(r.stderr).toContain(`switchover of site "${s.site}" failed at step "stop-writes": onFenced`);
    expect(r.stderr).toContain('exited with status 3: maintenance mode could not be switched on');
    expect(r.stderr).toContain('nothing changed on the primary; this server is still a standby');
    const out = JSON.parse(r.stdout) as Record<string, any>;
    expect(out).toMatchObject({ status: 'failed', failedStep: 'stop-writes', primary: 'unchanged', setId: null, epoch: null, standbyId: STANDBY_ID });
    expect(out.steps.map((e: any) => `${e.side}:${e.step}`)).toEqual(['standby:preflight', 'standby:request', 'primary:accepted', 'primary:stop-writes', 'primary:stop-writes']);

    expect(await lines('onfenced.log')).toEqual([`switchover ${out.requestId} ${STANDBY_ID}`]);
    expect(await lines('onresume.log')).toEqual([]);
    expect(existsSync(marker('maintenance'))).toBe(false);
    const st = await getStatus();
    expect(st.fenced).toBeNull();
    expect(st.switchover).toMatchObject({ state: 'refused', requestId: out.requestId, standbyId: STANDBY_ID, step: 'stop-writes', onFenced: 'failed', onResume: 'not-run' });
    expect(await metric('tandem_switchover_held')).toBe(0);
    expect((await readStore('latest.json')).setId).toBe(latestBefore); // no final backup
    expect(await readStore('epoch.json')).toMatchObject({ epoch: 1 });
    expect(await standbySnapshot()).toEqual(before);
    expect(existsSync(s.standby.paths.sentinel)).toBe(true);
  });

  it('holds while the standby works, refuses other backups and switchovers, survives a daemon restart, and resumes at the hold timeout when the standby vanishes after it was allowed to promote', async () => {
    const { ws, msgs } = await rawClient('raw-client');
    ws.send(JSON.stringify({ type: 'switchover-request', requestId: 'raw-client-0001', site: s.site, standbyId: 'raw-client', timeoutSeconds: 8 }));
    const ready = await waitFor(() => msgs.find((m) => m.type === 'switchover-ready'), 'switchover-ready', 30_000);
    expect(ready).toMatchObject({ requestId: 'raw-client-0001', epoch: 1, holdSeconds: 8 });
    expect(msgs.filter((m) => m.type === 'switchover-progress').map((m) => m.step)).toEqual([
      'accepted',
      'stop-writes',
      'writes-stopped',
      'final-backup',
      'final-backup-committed',
    ]);
    expect((await readStore('latest.json')).setId).toBe(ready.setId);
    expect(existsSync(marker('maintenance'))).toBe(true);

    // While held: status and metrics say so; no backup, no second switchover.
    const st = await getStatus();
    expect(st.switchover).toMatchObject({ state: 'held', requestId: 'raw-client-0001', setId: ready.setId, step: 'hold', onFenced: 'ok' });
    expect(Date.parse(st.switchover.holdUntil) - Date.parse(st.switchover.heldSince)).toBe(8000);
    expect(await metric('tandem_switchover_held')).toBe(1);
    const busy = await fetch(`${base()}/v1/backup`, { method: 'POST', headers: auth() });
    expect(busy.status).toBe(409);
    expect(JSON.stringify(await busy.json())).toContain('switchover raw-client-0001 to raw-client is under way');
    const local = await runPrimary(['backup', '--config', s.primary.configFile, '--local']);
    expect(local.code, show(local)).toBe(75); // the hold keeps the backup lock
    const { ws: other, msgs: otherMsgs } = await rawClient('other');
    other.send(JSON.stringify({ type: 'switchover-request', requestId: 'raw-client-0002', site: s.site, standbyId: 'other', timeoutSeconds: 60 }));
    const refused = await waitFor(() => otherMsgs.find((m) => m.type === 'switchover-failed'), 'the refusal', 5_000);
    expect(refused).toMatchObject({ requestId: 'raw-client-0002', step: 'request', primary: 'unchanged' });
    expect(refused.error).toContain('another switchover is in progress');
    other.close();

    // The standby asks to promote: from the answer on, it may be raising the epoch ...
    ws.send(JSON.stringify({ type: 'switchover-promoting', requestId: 'raw-client-0001' }));
    const ok = await waitFor(() => msgs.find((m) => m.type === 'switchover-promote-ok'), 'switchover-promote-ok', 5_000);
    expect(ok.holdUntil).toBe(st.switchover.holdUntil);
    // ... so when it vanishes, the primary keeps holding (it might be promoting) until the timeout ...
    ws.terminate();
    await sleep(300);
    expect((await getStatus()).switchover.state).toBe('held');
    // ... even across a crash of the daemon: switchover.json brings the hold back ...
    expect(JSON.parse(await readFile(join(s.primary.stateDir, 'switchover.json'), 'utf8'))).toMatchObject({ requestId: 'raw-client-0001', setId: ready.setId, promoteAllowedAt: expect.any(String) });
    daemon!.child.kill('SIGKILL');
    await daemon!.result;
    daemon = startPrimary(['run', '--config', s.primary.configFile], { timeoutMs: 300_000 });
    await waitFor(() => daemonLog().find((r) => String(r.msg).startsWith('tandem-primary daemon ready')), 'the restarted daemon', 20_000);
    expect(daemonLog().some((l) => String(l.msg).includes('the daemon was restarted during a switchover: still holding'))).toBe(true);
    const recovered = await getStatus();
    expect(recovered.switchover).toMatchObject({ state: 'held', requestId: 'raw-client-0001', recovered: true, holdUntil: st.switchover.holdUntil });
    expect(existsSync(marker('maintenance'))).toBe(true);
    expect((await runPrimary(['backup', '--config', s.primary.configFile])).code).toBe(75);
    // ... then reads epoch.json (not raised), runs onResume and stays the primary.
    const after = await waitFor(async () => ((await getStatus()).switchover.state === 'called-off' ? getStatus() : null), 'the hold timeout', 15_000);
    expect(after.fenced).toBeNull();
    expect(after.switchover).toMatchObject({ state: 'called-off', onResume: 'ok' });
    expect(after.switchover.error).toContain('the hold timed out');
    expect(await lines('onresume.log')).toEqual(['switchover raw-client-0001']);
    expect(existsSync(marker('maintenance'))).toBe(false);
    expect(await metric('tandem_switchover_held')).toBe(0);
    // The record of the hold goes right after the status says "called-off".
    await waitFor(() => !existsSync(join(s.primary.stateDir, 'switchover.json')), 'switchover.json removed', 5_000);
    expect(await readStore('epoch.json')).toMatchObject({ epoch: 1 });
  });

  it('ends the hold at once when the requester vanishes before it was allowed to promote: onResume runs, the primary backs up again', async () => {
    const resumedBefore = (await lines('onresume.log')).length;
    const { ws, msgs } = await rawClient('raw-client');
    // It asks for the longest hold there is, gets the final set, and vanishes without promoting.
    ws.send(JSON.stringify({ type: 'switchover-request', requestId: 'raw-client-0003', site: s.site, standbyId: 'raw-client', timeoutSeconds: 3600 }));
    const ready = await waitFor(() => msgs.find((m) => m.type === 'switchover-ready'), 'switchover-ready', 30_000);
    expect(ready.holdSeconds).toBe(3600);
    expect(existsSync(marker('maintenance'))).toBe(true);
    const vanishedAt = Date.now();
    ws.terminate();
    const st = await waitFor(async () => {
      const now = await getStatus();
      return now.switchover.requestId === 'raw-client-0003' && now.switchover.state === 'called-off' ? now : null;
    }, 'the hold to end', 10_000);
    expect(Date.now() - vanishedAt).toBeLessThan(5_000);
    expect(st.fenced).toBeNull();
    expect(st.switchover).toMatchObject({ state: 'called-off', requestId: 'raw-client-0003', onFenced: 'ok', onResume: 'ok', promoteAllowedAt: null });
    expect(st.switchover.error).toContain('raw-client disconnected before it was allowed to promote');
    expect(await lines('onresume.log')).toHaveLength(resumedBefore + 1);
    expect(existsSync(marker('maintenance'))).toBe(false);
    expect(existsSync(join(s.primary.stateDir, 'switchover.json'))).toBe(false);
    expect(await metric('tandem_switchover_held')).toBe(0);
    const b = await fetch(`${base()}/v1/backup`, { method: 'POST', headers: auth() });
    expect(b.status).toBe(200);
  });

  it('is asked for only by a listed standby, as itself: not with the monitoring or control token, not under another id', async () => {
    const before = (await lines('onfenced.log')).length;
    // The monitoring token (what Prometheus holds) and the control token open no push channel.
    for (const token of [tokens.read.token, tokens.control.token]) {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream`, { headers: { authorization: `Bearer ${token}` } });
      sockets.push(ws);
      const status = await new Promise<number>((resolve) => {
        ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
        ws.on('open', () => resolve(101));
        ws.on('error', () => resolve(-1));
      });
      expect(status).toBe(403);
    }
    const monitoring = join(s.root, 'monitoring-as-standby.yml');
    await writeFile(monitoring, (await readFile(await standbyConfig('main'), 'utf8')).replace(tokens.standbys[STANDBY_ID]!.file, tokens.read.file));
    const r = await switchover(monitoring);
    expect(r.code, show(r)).toBe(2);
    expect(r.stderr).toContain('refused the token (403): it is the primary\'s monitoring or control token, not a standby\'s; the switchover request was not sent');
    // A listed standby's token, naming a made-up standby or another listed one: closed, nothing runs.
    for (const claimed of ['made-up-standby', STANDBY_ID]) {
      const { ws, closed } = await rawClient('other');
      ws.send(JSON.stringify({ type: 'switchover-request', requestId: 'raw-client-0004', site: s.site, standbyId: claimed, timeoutSeconds: 3600 }));
      const c = await closed;
      expect(c.code).toBe(1008);
      expect(c.reason).toContain(`names standby "${claimed}", but this connection's token is standby "other"'s`);
    }
    await sleep(500);
    expect(await lines('onfenced.log')).toHaveLength(before);
    expect((await getStatus()).switchover.requestId).not.toBe('raw-client-0004');
    expect(await metric('tandem_switchover_held')).toBe(0);
  });

  it('calls everything off when the standby cannot apply the final set: onResume runs, the primary backs up again, the standby is unchanged', async () => {
    // A pg_restore that fails: the final set is staged and verified, then the restore fails.
    const bin = join(work, 'bad-bin');
    await mkdir(bin, { recursive: true });
    // It answers --version like the real one, so that the check before the download passes.
    await writeFile(join(bin, 'pg_restore'), '#!/bin/sh\n[ "$1" = --version ] && echo "pg_restore (PostgreSQL) 99.0" && exit 0\necho "pg_restore: error: simulated restore failure" >&2\nexit 1\n');
    await chmod(join(bin, 'pg_restore'), 0o755);
    const cfg = await standbyConfig('bad-restore', { database: { binDir: bin } });
    const before = await standbySnapshot();
    const resumedBefore = (await lines('onresume.log')).length;

    const r = await switchover(cfg);
    expect(r.code, show(r)).toBe(1);
    const setId = /^primary: final backup (\S+) committed$/m.exec(r.stdout)?.[1];
    expect(setId, r.stdout).toBeDefined();
    expect(r.stdout).toContain('primary: writes stopped (onFenced ran)\n');
    expect(r.stdout).toMatch(new RegExp(`^standby: apply of ${setId} FAILED: .*pg_restore`, 'm'));
    expect(r.stdout).toContain('primary: put back: onResume ran; it keeps running as the primary and backs up again');
    expect(r.stderr).toContain(`switchover of site "${s.site}" failed at step "apply": `);
    expect(r.stderr).toContain('simulated restore failure');
    expect(r.stderr).toContain('the primary was put back (onResume ran) and keeps running as primary; this server is still a standby');

    const onResume = await lines('onresume.log');
    expect(onResume).toHaveLength(resumedBefore + 1);
    expect(existsSync(marker('maintenance'))).toBe(false);
    const st = await getStatus();
    expect(st.fenced).toBeNull();
    expect(st.switchover).toMatchObject({ state: 'called-off', setId, onFenced: 'ok', onResume: 'ok' });
    expect(st.switchover.error).toContain('the standby\'s step "apply" failed');
    expect(await readStore('epoch.json')).toMatchObject({ epoch: 1 });
    expect(await standbySnapshot()).toEqual(before);
    expect(existsSync(s.standby.paths.sentinel)).toBe(true);
    expect(existsSync(join(s.standby.stateDir, 'promoted.json'))).toBe(false);

    // The primary is back to normal: a backup through the daemon works.
    const b = await runPrimary(['backup', '--config', s.primary.configFile]);
    expect(b.code, show(b)).toBe(0);
    expect(logRecords(b.stderr).some((l) => String(l.msg).includes('daemon is running: it makes the backup'))).toBe(true);
    expect(b.stdout.trim() > setId!).toBe(true);
  });

  it('ends like other interrupted commands on Ctrl-C: the switchover is called off, one line says so, exit 130', async () => {
    const cfg = await standbyConfig('interrupted');
    const before = await standbySnapshot();
    const resumedBefore = (await lines('onresume.log')).length;
    const run = startAgent(STANDBY_MAIN, ['switchover', '--config', cfg, '--timeout', '2m'], { timeoutMs: 90_000 });
    // Interrupted once the primary has been asked (it is stopping writes or taking the final backup).
    await waitFor(() => logRecords(run.stderrSoFar()).some((l) => l.step === 'request'), 'the switchover request', 30_000, 20);
    run.child.kill('SIGINT');
    const r = await run.result;
    expect(r.code, show(r)).toBe(130);
    expect(r.stdout).toContain('standby: asked the primary to call the switchover off');
    expect(r.stdout).toContain('primary: put back: onResume ran; it keeps running as the primary and backs up again');
    const last = r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{'));
    expect(last).toEqual([
      expect.stringMatching(
        /^tandem-standby: interrupted by SIGINT: the switchover was called off at step "(wait-for-ready|apply)": the primary was put back \(onResume ran\) and keeps running as primary; this server is still a standby$/,
      ),
    ]);
    expect(r.stderr).not.toMatch(/internal error|failed at step/);

    // As called off for any other reason: onResume ran, the primary is not held, the standby is unchanged.
    expect(await lines('onresume.log')).toHaveLength(resumedBefore + 1);
    expect(existsSync(marker('maintenance'))).toBe(false);
    const st = await getStatus();
    expect(st.fenced).toBeNull();
    expect(st.switchover.state).toBe('called-off');
    expect(await metric('tandem_switchover_held')).toBe(0);
    expect(await readStore('epoch.json')).toMatchObject({ epoch: 1 });
    expect(await standbySnapshot()).toEqual(before);
    expect(existsSync(join(s.standby.stateDir, 'promoted.json'))).toBe(false);
  });

  it('loses no committed transaction: rows written until onFenced stopped the writes are on the new primary', async () => {
    const cfg = await standbyConfig('main');
    await withDb(s.primary.db, (c) => c.query('CREATE TABLE public.switchover_writes (id integer PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())'));

    // The "application": writes (each committed at once) until maintenance mode is on.
    await writeFile(marker('writer-running'), '');
    let written = 0;
    const writer = withDb(s.primary.db, async (c) => {
      while (!existsSync(marker('maintenance'))) {
        await c.query('INSERT INTO public.switchover_writes (id) VALUES ($1)', [written + 1]);
        written++;
        await sleep(5);
      }
      await writeFile(marker('writer-stopped'), '');
    });
    await waitFor(() => written >= 20, 'the writer to get going', 10_000);

    const r = await switchover(cfg);
    await writer;
    expect(r.code, show(r)).toBe(0);
    const setId = /^primary: final backup (\S+) committed$/m.exec(r.stdout)?.[1];
    expect(setId, r.stdout).toBeDefined();
    const out = r.stdout.split('\n');
    const at = (line: string) => out.findIndex((l) => l === line || l.startsWith(line));
    const order = [
      'standby: preflight ok',
      'primary: writes stopped (onFenced ran)',
      `primary: final backup ${setId} committed`,
      `standby: applied ${setId}`,
      'standby: promoted, epoch 2',
      'primary: fenced',
      `switchover of site "${s.site}" done in `,
    ].map(at);
    expect(order.every((i) => i >= 0), r.stdout).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(r.stdout).toContain(`${STANDBY_ID} is the primary now (epoch 2, set ${setId}); the primary is fenced`);
    // The promote's heartbeat check passed because the primary holds for this switchover.
    expect(logRecords(r.stderr).some((l) => /preflight: the primary's heartbeat is fresh: .*; as expected: for switchover \S+ the primary stopped the site's writes/.test(String(l.msg)))).toBe(true);

    // Every row, and everything else, is on the standby.
    const rows = await withDb(s.standby.db, (c) => c.query<{ n: string; max: number }>('SELECT count(*) AS n, max(id) AS max FROM public.switchover_writes'));
    expect(written).toBeGreaterThanOrEqual(20);
    expect(rows.rows[0]).toEqual({ n: String(written), max: written });
    expect(await dumpDatabaseState(s.standby.db)).toEqual(await dumpDatabaseState(s.primary.db));

    // The old primary: onFenced ran once (for the switchover, not again when fenced), fenced now.
    const requestId = (await lines('onfenced.log')).at(-1)!.split(' ')[1];
    expect((await lines('onfenced.log')).filter((l) => l.split(' ')[1] === requestId)).toEqual([`switchover ${requestId} ${STANDBY_ID}`]);
    expect((await lines('onfenced.log')).some((l) => l.startsWith('fenced'))).toBe(false);
    expect(daemonLog().some((l) => l.msg === 'onFenced is not run again: it ran for the switchover')).toBe(true);
    const st = await getStatus();
    expect(st.fenced).not.toBeNull();
    expect(st.fenced.why).toContain(`${STANDBY_ID} became primary of site "${s.site}" in epoch 2`);
    expect(st.switchover).toMatchObject({ state: 'completed', requestId, setId, step: 'fenced', onFenced: 'ok', onResume: 'not-run' });
    expect(await metric('tandem_fenced')).toBe(1);
    expect(await metric('tandem_switchover_held')).toBe(0);
    expect(await readStore('epoch.json')).toMatchObject({ epoch: 2, primaryHost: STANDBY_ID, reason: 'switchover', previous: { epoch: 1 } });

    // The standby is the primary: sentinel gone, restarted as primary, promotion recorded.
    expect(existsSync(s.standby.paths.sentinel)).toBe(false);
    expect((await restartLog(s)).at(-1)).toBe(`primary ${setId}`);
    const promoted = JSON.parse(await readFile(join(s.standby.stateDir, 'promoted.json'), 'utf8')) as Record<string, unknown>;
    expect(promoted).toMatchObject({ appliedSetId: setId, epoch: 2, forced: false, primaryName: STANDBY_ID });
    // The old primary's config can back up no more.
    const fenced = await runPrimary(['backup', '--config', s.primary.configFile, '--local']);
    expect(fenced.code).toBe(4);
  });
});
