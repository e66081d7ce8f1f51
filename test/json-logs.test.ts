/**
 * Every log line is one valid JSON object with each key once (strict consumers reject a repeated
 * key; JSON.parse silently keeps the last). With TANDEM_LOG_FORMAT=json and TANDEM_LOG_LEVEL=debug,
 * each command's stderr is read line by line with a parser that sees repeated keys: a backup, list,
 * an apply, verify, status, a failing command, and both daemons running together (a backup made by
 * the primary daemon for `tandem-primary backup`, pushed to and applied by the standby daemon), then
 * stopped.
 *
 * Needs: `npm run build` first, PostgreSQL on 127.0.0.1:5432, pg_dump/pg_restore, zstd.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonLogProblems, strictJson } from './support/json-keys.js';
import { closedPort, ensurePostgres, requireBuilt, requireCommands, runPrimary, startPrimary, tmpDir, waitFor, type RunResult, type RunningPrimary } from './support/site.js';
import { startStandbyDaemon, writeDaemonConfig, writeToken, type RunningStandby } from './support/standby-daemon.js';
import { STANDBY_MAIN, createStandbySite, removeStandbySite, runStandby, show, writeSitePrimaryConfig, type StandbySite } from './support/standby-helpers.js';

const DEBUG = { TANDEM_LOG_FORMAT: 'json', TANDEM_LOG_LEVEL: 'debug' };

/** Each stderr line is a log record (valid JSON, unique keys) or one of the command's own message lines. */
function expectStrictJsonLogs(what: string, r: Pick<RunResult, 'stderr'>): number {
  expect(jsonLogProblems(r.stderr), `${what}: log lines that are not strict JSON`).toEqual([]);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  const other = lines.filter((l) => !l.startsWith('{') && !/^tandem-(primary|standby)(: |\s)/.test(l) && !l.startsWith('  hint: '));
  expect(other, `${what}: stderr lines that are neither log records nor the command's message`).toEqual([]);
  return lines.filter((l) => l.startsWith('{')).length;
}

describe('the duplicate-key reader', () => {
  it('finds repeated keys at any depth, compares them decoded, and refuses what is not JSON', () => {
    expect(strictJson('{"a":1,"b":{"c":[1,{"d":2}]},"e":"\\"a\\":1"}').duplicates).toEqual([]);
    expect(strictJson('{"a":1,"a":2}').duplicates).toEqual(['$.a']);
    expect(strictJson('{"x":{"b":1,"b":2},"y":[{"c":1,"c":1}]}').duplicates).toEqual(['$.x.b', '$.y[0].c']);
    expect(strictJson('{"\\u0061":1,"a":2}').duplicates).toEqual(['$.a']);
    expect(() => strictJson('{"a":1,}')).toThrow(/not valid JSON/);
    expect(() => strictJson('{"a":1} x')).toThrow(/text after the value/);
    expect(jsonLogProblems('{"level":30,"pid":1,"pid":2}\n{"ok":true}\n')).toEqual([expect.stringMatching(/^line 1: repeated key\(s\) \$\.pid/)]);
  });
});

describe('JSON logs (TANDEM_LOG_FORMAT=json, TANDEM_LOG_LEVEL=debug)', () => {
  let root: string;
  let s: StandbySite;
  let primary: RunningPrimary | undefined;
  let standby: RunningStandby | undefined;

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    requireBuilt();
    requireBuilt(STANDBY_MAIN);
    await ensurePostgres();
    root = await tmpDir('tandem-json-logs-');
    s = await createStandbySite(root);
  });

  afterAll(async () => {
    for (const d of [standby, primary]) {
      if (d && d.child.exitCode === null && d.child.signalCode === null) {
        d.child.kill('SIGKILL');
        await d.result;
      }
    }
    await removeStandbySite(s, root);
  });

  it('one-shot commands: backup, list, apply, verify, status, and a failing one', async () => {
    const backup = await runPrimary(['backup', '--config', s.primary.configFile], { env: DEBUG });
    expect(backup.code, show(backup)).toBe(0);
    const runs: Array<[string, RunResult]> = [
      ['backup', backup],
      ['list', await runPrimary(['list', '--config', s.primary.configFile], { env: DEBUG })],
      ['apply', await runStandby(['apply', '--config', s.standby.configFile], { env: DEBUG })],
      ['verify', await runStandby(['verify', '--config', s.standby.configFile], { env: DEBUG })],
      ['status', await runStandby(['status', '--config', s.standby.configFile], { env: DEBUG })],
      ['apply --set (no such set)', await runStandby(['apply', '--config', s.standby.configFile, '--set', '20200101T000000Z-e1-000001'], { env: DEBUG })],
    ];
    for (const [what, r] of runs.slice(0, 4)) expect(r.code, `${what}: ${show(r)}`).toBe(0);
    expect(runs[5]![1].code).not.toBe(0);
    let records = 0;
    for (const [what, r] of runs) records += expectStrictJsonLogs(what, r);
    // The apply logs what it does, bound to the set (child loggers) and naming it again in calls.
    expect(records).toBeGreaterThan(15);
    expect(runs[2]![1].stderr).toMatch(/"msg":"set applied"/);
    // The primary's pg_dump wrote into a pipe; the staged dump gets its data offsets before pg_restore -j2 reads it.
    expect(runs[2]![1].stderr).toMatch(/"entries":[1-9]\d*,"msg":"data offsets written into the staged dump"/);
  });

  it('both daemons, a backup through the primary daemon applied by the standby daemon, and their stop', async () => {
    const port = await closedPort();
    const token = randomBytes(24).toString('hex');
    const sbToken = randomBytes(24).toString('hex');
    const tokenFile = await writeToken(join(root, 'control.token'), token);
    const sbTokenFile = await writeToken(join(root, 'sb.token'), sbToken);
    const primaryConfig = await writeSitePrimaryConfig(s, join(root, 'primary-daemon.yml'), {
      schedule: '0 0 1 1 *',
      timezone: 'UTC',
      heartbeatInterval: '1s',
      server: { listen: `127.0.0.1:${port}`, tokenFile },
      standbys: [{ id: 'sb', tokenFile: sbTokenFile }],
    });
    const standbyConfig = await writeDaemonConfig(s, join(root, 'standby-daemon.yml'), {
      pollInterval: '60s',
      standbyId: 'sb',
      primary: { url: `ws://127.0.0.1:${port}`, tokenFile: sbTokenFile },
    });
    primary = startPrimary(['run', '--config', primaryConfig], { env: DEBUG, timeoutMs: 120_000 });
    await waitFor(() => primary!.stderrSoFar().includes('tandem-primary daemon ready'), 'the primary daemon to be ready', 20_000);
    standby = await startStandbyDaemon(standbyConfig, s.standby.stateDir, DEBUG);
    await waitFor(() => primary!.stderrSoFar().includes('standby said hello'), 'the standby on the push channel', 20_000);

    const viaDaemon = await runPrimary(['backup', '--config', primaryConfig], { env: DEBUG });
    expect(viaDaemon.code, show(viaDaemon)).toBe(0);
    const setId = viaDaemon.stdout.trim();
    expect(viaDaemon.stderr).toContain('a tandem-primary daemon is running: it makes the backup');
    await waitFor(
      async () => (JSON.parse(await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8').catch(() => '{}')) as { setId?: string }).setId === setId,
      'the standby daemon to apply the pushed set',
      60_000,
    );
    const standbyRun = await standby.stop('SIGTERM');
    primary.child.kill('SIGTERM');
    const primaryRun = await primary.result;
    expect(standbyRun.code, show(standbyRun)).toBe(0);
    expect(primaryRun.code, show(primaryRun)).toBe(0);

    expectStrictJsonLogs('backup through the daemon', viaDaemon);
    expect(expectStrictJsonLogs('the primary daemon', primaryRun)).toBeGreaterThan(5);
    expect(expectStrictJsonLogs('the standby daemon', standbyRun)).toBeGreaterThan(5);
    // What used to be written twice: the process id beside the daemon's, the site bound by both the
    // standby daemon and its apply, the set bound and named again.
    expect(viaDaemon.stderr).toMatch(/"pid":\d+,.*"daemonPid":\d+/);
    expect(standbyRun.stderr).toMatch(/"msg":"set applied"/);
  });
});
