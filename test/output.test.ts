/**
 * What an operator sees: Ctrl-C during a backup is an interruption, not a bug (one line saying what
 * was cleaned up, exit 130; SIGTERM 143), and leaves no partial set; a bad TANDEM_LOG_LEVEL or
 * TANDEM_LOG_FORMAT is a usage error naming it; on a terminal, backup and apply draw a progress
 * line (the daemon's, when the daemon makes the backup) and log one compact line per event, with
 * sizes in one human unit; nothing of that without a terminal; decrypt refuses to write binary to
 * a terminal. Terminals are pseudo-terminals made by util-linux `script`.
 *
 * Needs: `npm run build` first, PostgreSQL on 127.0.0.1:5432, pg_dump/pg_restore, zstd, script.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PRIMARY_MAIN,
  closedPort,
  ensurePostgres,
  logRecords,
  requireBuilt,
  requireCommands,
  runPrimary,
  startPrimary,
  tmpDir,
  waitFor,
  type RunningPrimary,
} from './support/site.js';
import { writeToken } from './support/standby-daemon.js';
import { STANDBY_MAIN, backup, createStandbySite, removeStandbySite, runStandby, show, writeSitePrimaryConfig, type StandbySite } from './support/standby-helpers.js';
import { runInTerminal, screenLines, withoutColours } from './support/terminal.js';

/** A size as tandem shows it to people. */
const SIZE = String.raw`\d+(\.\d)? (B|KiB|MiB|GiB)`;
/** A log line of the human format: time, level, message. */
const HUMAN_LINE = /^\[\d\d:\d\d:\d\d(\.\d+)?\] (TRACE|DEBUG|INFO|WARN|ERROR|FATAL): /;

async function sparseTree(dir: string, bytes: number): Promise<string> {
  await mkdir(dir, { recursive: true });
  const fh = await open(join(dir, 'sparse.bin'), 'w');
  await fh.truncate(bytes);
  await fh.close();
  return dir;
}

describe('output', () => {
  let root: string;
  let s: StandbySite;
  let first: string;
  /** The site with a files tree of one 4 GiB sparse file: a backup of it takes seconds. */
  let slowConfig: string;
  /** ... of 512 MiB: long enough for a few progress lines. */
  let mediumConfig: string;
  let daemon: RunningPrimary | undefined;
  const setIds = async () => (await readdir(join(root, 'store', s.site, 'sets')).catch(() => [] as string[])).sort();

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore', 'script']);
    requireBuilt();
    requireBuilt(STANDBY_MAIN);
    await ensurePostgres();
    root = await tmpDir('tandem-output-');
    s = await createStandbySite(root);
    first = await backup(s);
    const withFiles = async (name: string, files: string) =>
      writeSitePrimaryConfig(s, join(root, `${name}.yml`), { paths: { config: s.primary.paths.config, security: s.primary.paths.security, files } });
    slowConfig = await withFiles('slow', await sparseTree(join(root, 'slow-files'), 4 * 1024 ** 3));
    mediumConfig = await withFiles('medium', await sparseTree(join(root, 'medium-files'), 512 * 1024 ** 2));
  });

  afterAll(async () => {
    if (daemon && daemon.child.exitCode === null && daemon.child.signalCode === null) {
      daemon.child.kill('SIGKILL');
      await daemon.result;
    }
    await removeStandbySite(s, root);
  });

  describe('interrupts', () => {
    it('Ctrl-C during an upload: exit 130, one line saying what was cleaned up, no partial set', async () => {
      const latestBefore = await readFile(join(root, 'store', s.site, 'latest.json'), 'utf8');
      const setsBefore = await setIds();
      const run = startPrimary(['backup', '--config', slowConfig], { timeoutMs: 120_000 });
      // The small artifacts are up: the 4 GiB files artifact is being uploaded.
      const started = await waitFor(() => logRecords(run.stderrSoFar()).find((l) => l.msg === 'artifact uploaded' && l.artifact === 'security'), 'the security artifact to be up', 60_000);
      const setId = String(started.setId);
      // After it, the files are sampled for compressibility; then their upload begins (its temporary object appears).
      const setDir = join(root, 'store', s.site, 'sets', setId);
      await waitFor(async () => (await readdir(setDir)).some((n) => n.startsWith('files.')), 'the upload of the files artifact to begin', 60_000, 5);
      run.child.kill('SIGINT');
      const r = await run.result;
      expect(r.signal, show(r)).toBeNull();
      expect(r.code, show(r)).toBe(130);
      expect(r.stderr).not.toMatch(/internal error|bug in tandem/);
      const messages = r.stderr.split('\n').filter((l) => l.startsWith('tandem-primary:'));
      expect(messages, show(r)).toEqual([
        `tandem-primary: interrupted by SIGINT: the backup was aborted during the files artifact; nothing was committed, and the 5 object(s) it had begun uploading for set ${setId} were removed`,
      ]);
      expect(await setIds(), 'no partial set left').toEqual(setsBefore);
      expect(await readFile(join(root, 'store', s.site, 'latest.json'), 'utf8')).toBe(latestBefore);
      expect(existsSync(join(s.primary.stateDir, 'backup.lock')), 'lock released').toBe(false);
    });

    it('SIGTERM: exit 143, the same kind of line', async () => {
      const run = startPrimary(['backup', '--config', slowConfig], { timeoutMs: 120_000 });
      await waitFor(() => logRecords(run.stderrSoFar()).some((l) => l.msg === 'backup started'), 'the backup to start', 60_000);
      run.child.kill('SIGTERM');
      const r = await run.result;
      expect(r.code, show(r)).toBe(143);
      expect(r.stderr).not.toMatch(/internal error|bug in tandem/);
      expect(r.stderr).toMatch(/^tandem-primary: interrupted by SIGTERM: the backup was aborted.*; nothing was committed/m);
    });
  });

  describe('log settings', () => {
    it.each([
      ['TANDEM_LOG_LEVEL', 'verbose', /TANDEM_LOG_LEVEL="verbose" is not a log level/, /fatal, error, warn, info, debug, trace, silent/],
      ['TANDEM_LOG_FORMAT', 'xml', /TANDEM_LOG_FORMAT="xml" is not a log format/, /auto, json, human/],
    ])('an unknown %s is a usage error (exit 2) naming it', async (name, value, message, hint) => {
      for (const run of [
        () => runPrimary(['list', '--config', s.primary.configFile], { env: { [name]: value } }),
        () => runStandby(['status', '--config', s.standby.configFile], { env: { [name]: value } }),
      ]) {
        const r = await run();
        expect(r.code, show(r)).toBe(2);
        expect(r.stderr).toMatch(message);
        expect(r.stderr).toMatch(hint);
        expect(r.stderr).not.toMatch(/internal error|bug in tandem/);
      }
    });
  });

  describe('on a terminal', () => {
    it('backup: a progress line per artifact, one line per event, no JSON', async () => {
      const r = await runInTerminal([process.execPath, PRIMARY_MAIN, 'backup', '--config', mediumConfig]);
      expect(r.code, r.output).toBe(0);
      const out = withoutColours(r.output);
      expect(out).toMatch(new RegExp(String.raw`\r\x1b\[Kbackup: db ${SIZE}`));
      expect(out).toMatch(new RegExp(String.raw`\r\x1b\[Kbackup: files ${SIZE}( ${SIZE}/s)?`));
      const lines = screenLines(r.output);
      expect(lines.filter((l) => l.startsWith('{')), 'no JSON on a terminal').toEqual([]);
      expect(lines.some((l) => /INFO: backup committed .*stored=\d/.test(l)), lines.join('\n')).toBe(true);
      // Each event is one line: every line is a log line or the result (the set id).
      const setId = lines.at(-1)!;
      expect(setId).toMatch(/^\d{8}T\d{6}Z-e\d+-\d{6}$/);
      expect(lines.slice(0, -1).filter((l) => !HUMAN_LINE.test(l)), lines.join('\n')).toEqual([]);
    });

    it('apply: a progress line with percent of the signed size, few compact lines, sizes in one unit', async () => {
      const r = await runInTerminal([process.execPath, STANDBY_MAIN, 'apply', '--config', s.standby.configFile, '--set', first, '--force']);
      expect(r.code, r.output).toBe(0);
      expect(withoutColours(r.output)).toMatch(new RegExp(String.raw`\r\x1b\[Kapply: db ${SIZE} of ${SIZE} \d+%`));
      const lines = screenLines(r.output);
      const result = lines.at(-1)!;
      expect(result).toMatch(new RegExp(String.raw`^applied set ${first} \(epoch 1, created \S+, ${SIZE}\) in [\d.]+ s$`));
      const logLines = lines.slice(0, -1);
      expect(logLines.filter((l) => !HUMAN_LINE.test(l)), lines.join('\n')).toEqual([]);
      // apply started, five artifacts staged, the switch, applied (and the restart command): one line each.
      expect(logLines.length, lines.join('\n')).toBeLessThanOrEqual(12);
      expect(logLines.filter((l) => l.includes(first)), 'the set is named once').toHaveLength(1);
      expect(logLines.join('\n')).toMatch(new RegExp(`INFO: artifact verified and staged artifact=files stored=${SIZE}`));
    });

    it('a backup made by the daemon: the client draws the daemon\'s progress', async () => {
      const port = await closedPort();
      const tokenFile = await writeToken(join(root, 'control.token'), randomBytes(24).toString('hex'));
      const config = await writeSitePrimaryConfig(s, join(root, 'daemon.yml'), {
        paths: { config: s.primary.paths.config, security: s.primary.paths.security, files: join(root, 'medium-files') },
        schedule: '0 0 1 1 *',
        timezone: 'UTC',
        server: { listen: `127.0.0.1:${port}`, tokenFile },
      });
      daemon = startPrimary(['run', '--config', config], { timeoutMs: 120_000 });
      await waitFor(() => daemon!.stderrSoFar().includes('tandem-primary daemon ready'), 'the daemon to be ready', 30_000);
      const r = await runInTerminal([process.execPath, PRIMARY_MAIN, 'backup', '--config', config]);
      expect(r.code, r.output).toBe(0);
      const out = withoutColours(r.output);
      expect(out).toContain('a tandem-primary daemon is running: it makes the backup');
      expect(out).toMatch(new RegExp(String.raw`\r\x1b\[Kbackup \(daemon\): (db|dbmeta|config|security|files) ${SIZE}`));
      const setId = screenLines(r.output).at(-1)!;
      expect(setId).toMatch(/^\d{8}T\d{6}Z-e\d+-\d{6}$/);
      expect(logRecords(daemon.stderrSoFar()).some((l) => l.msg === 'backup committed' && l.setId === setId)).toBe(true);
      daemon.child.kill('SIGTERM');
      expect((await daemon.result).code).toBe(0);
    });

    it('decrypt refuses to write binary to a terminal (exit 2), and says what to do', async () => {
      const input = join(root, 'store', s.site, 'sets', first, 'db.dump.zst.age');
      const r = await runInTerminal([process.execPath, STANDBY_MAIN, 'decrypt', '--identity', s.keys.identityFile, input]);
      expect(r.code, r.output).toBe(2);
      const lines = screenLines(r.output);
      expect(lines[0]).toBe('tandem-standby: error: tandem-standby decrypt: not writing the decrypted artifact to a terminal (it is binary: a zstd stream or a tar archive)');
      expect(lines[1]).toMatch(/hint: give -o FILE, or redirect stdout/);
      expect(lines).toHaveLength(2);
    });
  });

  describe('without a terminal', () => {
    it('no progress line, even in the human log format; sizes human-readable in list, apply and verify', async () => {
      const r = await runPrimary(['backup', '--config', mediumConfig], { env: { TANDEM_LOG_FORMAT: 'human' } });
      expect(r.code, show(r)).toBe(0);
      expect(r.stderr).not.toContain('\r');
      expect(r.stderr).not.toMatch(/backup: (db|files) /);
      expect(r.stderr).toMatch(/^\[\d\d:\d\d:\d\d\] INFO: backup committed/m);
      const lines = r.stderr.split('\n').filter((l) => l !== '');
      expect(lines.filter((l) => !HUMAN_LINE.test(l)), r.stderr).toEqual([]);

      const setId = r.stdout.trim();
      const list = await runPrimary(['list', '--config', mediumConfig]);
      expect(list.code, show(list)).toBe(0);
      expect(list.stdout).toMatch(new RegExp(`^${setId}  \\S+ +${SIZE}  committed, latest$`, 'm'));
      // (The daemon's retention may have removed the first set: the newest ones from here on.)
      const apply = await runStandby(['apply', '--config', s.standby.configFile, '--force']);
      expect(apply.code, show(apply)).toBe(0);
      expect(apply.stdout).toMatch(new RegExp(`, ${SIZE}\\) in `));
      const verify = await runStandby(['verify', '--config', s.standby.configFile]);
      expect(verify.code, show(verify)).toBe(0);
      expect(verify.stdout).toMatch(new RegExp(`ok {3}files +${SIZE} {2}\\d+ entries, ${SIZE} of file data`));
      for (const o of [list.stdout, apply.stdout, verify.stdout]) expect(o).not.toMatch(/\d bytes/);
      // JSON keeps raw byte numbers.
      const json = await runPrimary(['list', '--config', mediumConfig, '--json']);
      expect((JSON.parse(json.stdout) as Array<{ bytes: unknown }>).every((x) => typeof x.bytes === 'number')).toBe(true);
    });

    it('a terminal with TANDEM_LOG_FORMAT=json: JSON logs and no progress', async () => {
      const r = await runInTerminal([process.execPath, STANDBY_MAIN, 'apply', '--config', s.standby.configFile, '--force'], { env: { TANDEM_LOG_FORMAT: 'json' } });
      expect(r.code, r.output).toBe(0);
      expect(r.output).not.toMatch(/apply: db /);
      expect(screenLines(r.output).filter((l) => l.startsWith('{')).length).toBeGreaterThan(3);
    });
  });
});
