/**
 * The first-run experience: `scripts/setup.sh` installs only what the demo and the tests need
 * (restic only with --bench, for the benchmarks) and keeps apt's noise out of sight unless apt
 * fails; the demo shows no psql NOTICEs, ends by saying what to try next, and leaves the site so
 * that every command it suggests does what it says. Real PostgreSQL and the real CLIs; apt-get is
 * a stand-in that records what it was asked to install.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropDatabase, ensurePostgres, PRIMARY_MAIN, REPO_ROOT, requireBuilt, requireCommands, runCommand, STANDBY_MAIN, tmpDir, type CommandResult } from './support/site.js';

const show = (r: CommandResult): string => `exit ${r.code ?? r.signal}\nstdout: ${r.stdout.toString()}\nstderr: ${r.stderr}`;

/** setup.sh runs `npm ci` when node_modules is older than the lock file: never on a shared tree mid-run. */
function requireInstalledTree(): void {
  const installed = join(REPO_ROOT, 'node_modules', '.package-lock.json');
  if (!existsSync(installed) || statSync(installed).mtimeMs < statSync(join(REPO_ROOT, 'package-lock.json')).mtimeMs) {
    throw new Error('node_modules is older than package-lock.json: run npm ci first');
  }
}

describe('scripts/setup.sh', () => {
  let work: string;
  let bin: string;
  const aptLog = () => join(work, 'apt.log');

  beforeAll(async () => {
    requireInstalledTree();
    await ensurePostgres();
    work = await tmpDir('tandem-setup-');
    // A PATH like this machine's, without restic, and with an apt-get that records its arguments,
    // talks as apt does (debconf on stderr) and fails when APT_STUB_FAIL is set.
    bin = join(work, 'bin');
    await mkdir(bin);
    for (const dir of (process.env.PATH ?? '').split(delimiter)) {
      if (!dir || !existsSync(dir)) continue;
      for (const name of readdirSync(dir)) {
        if (name === 'restic' || name === 'apt-get' || name === 'sudo' || existsSync(join(bin, name))) continue;
        await symlink(join(dir, name), join(bin, name));
      }
    }
    await writeFile(
      join(bin, 'apt-get'),
      `#!/bin/sh
echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> '${aptLog()}'
echo "Reading package lists..."
echo "debconf: delaying package configuration, since apt-utils is not installed" >&2
if [ -n "$APT_STUB_FAIL" ] && [ "$1" = install ]; then echo "E: Unable to locate package restic" >&2; exit 100; fi
exit 0
`,
    );
    await chmod(join(bin, 'apt-get'), 0o755);
    await writeFile(join(bin, 'sudo'), '#!/bin/sh\nexec "$@"\n');
    await chmod(join(bin, 'sudo'), 0o755);
  });

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  const setup = async (args: string[], env: NodeJS.ProcessEnv = {}): Promise<CommandResult> => {
    await rm(aptLog(), { force: true });
    return runCommand('bash', [join(REPO_ROOT, 'scripts', 'setup.sh'), ...args], { cwd: REPO_ROOT, env: { ...process.env, PATH: bin, ...env }, timeoutMs: 120_000 });
  };
  const aptCalls = async (): Promise<string[]> => (existsSync(aptLog()) ? (await readFile(aptLog(), 'utf8')).split('\n').filter(Boolean) : []);

  it('installs restic only for the benchmarks (--bench), and apt says nothing when it succeeds', async () => {
    const plain = await setup([]);
    expect(plain.code, show(plain)).toBe(0);
    expect(await aptCalls()).toEqual([]);
    expect(plain.stderr).not.toMatch(/restic|debconf/);

    const bench = await setup(['--bench']);
    expect(bench.code, show(bench)).toBe(0);
    expect(await aptCalls()).toEqual(['DEBIAN_FRONTEND=noninteractive update -q', 'DEBIAN_FRONTEND=noninteractive install -y -q restic']);
    expect(bench.stderr).toBe('setup: installing restic from Debian\n');
    expect(bench.stdout.toString()).toBe('');
  });

  it("shows apt's output when apt fails, and fails", async () => {
    const r = await setup(['--bench'], { APT_STUB_FAIL: '1' });
    expect(r.code, show(r)).toBe(1);
    expect(r.stderr).toContain('debconf: delaying package configuration');
    expect(r.stderr).toContain('E: Unable to locate package restic');
    expect(r.stderr).toContain('setup: apt-get failed (exit 100) installing restic; its output is above');
  });

  it('refuses an option it does not know', async () => {
    const r = await setup(['--benhc']);
    expect(r.code, show(r)).toBe(2);
    expect(r.stderr).toMatch(/^setup: unknown option --benhc \(known: [^)]*--bench\b[^)]*\)\n$/);
  });
});

describe('the demo (scripts/demo.mjs, the last step of npm run demo)', () => {
  let work: string;
  let root: string;
  const db = `tandem_demo_t${randomBytes(3).toString('hex')}`;

  beforeAll(async () => {
    requireBuilt(PRIMARY_MAIN);
    requireBuilt(STANDBY_MAIN);
    requireCommands(['psql', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    work = await tmpDir('tandem-demo-');
    root = join(work, 'site');
  });

  afterAll(async () => {
    for (const name of [db, `${db}_standby`, `${db}_standby__tandem_new`, `${db}_standby__tandem_old`]) await dropDatabase(name).catch(() => undefined);
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('runs quietly, ends with what to try next, and every suggested command does what it says', async () => {
    const demo = await runCommand(process.execPath, [join(REPO_ROOT, 'scripts', 'demo.mjs')], {
      cwd: REPO_ROOT,
      env: { ...process.env, TANDEM_DEMO_DIR: root, TANDEM_DEMO_DB: db },
      timeoutMs: 300_000,
    });
    expect(demo.code, show(demo)).toBe(0);
    // The databases did not exist: without client_min_messages, DROP DATABASE IF EXISTS prints a NOTICE.
    expect(demo.stderr).not.toMatch(/NOTICE|debconf/);
    expect(demo.stderr).toBe('');

    const out = demo.stdout.toString();
    expect(out).toContain('the old primary tries one more backup: fenced');
    const tail = out.slice(out.lastIndexOf('== what to try next'));
    expect(out.trimEnd().endsWith(tail.trimEnd())).toBe(true);
    const lines = tail.split('\n').slice(1).map((l) => l.trim()).filter(Boolean);
    expect(lines[0]).toBe(`alias tandem-primary="node ${PRIMARY_MAIN}" tandem-standby="node ${STANDBY_MAIN}"`);
    expect(lines[1]).toBe(`cd ${root}`);
    expect(lines.at(-1)).toBe(`cd ${REPO_ROOT} && npm run demo   # start over: a fresh site, databases and filestore`);
    const commands = lines.filter((l) => l.startsWith('tandem-'));
    const verbs = commands.map((c) => c.split(' ').slice(0, 2).join(' '));
    expect(verbs).toEqual(['tandem-standby status', 'tandem-primary list', 'tandem-primary backup', 'tandem-standby verify', 'tandem-standby promote', 'tandem-primary backup']);

    // Run them as suggested, in order, in the site directory: each exits 0, but the one that says
    // the old primary is refused, which exits 4 (fenced).
    const functions = `tandem-primary() { '${process.execPath}' '${PRIMARY_MAIN}' "$@"; }\ntandem-standby() { '${process.execPath}' '${STANDBY_MAIN}' "$@"; }\n`;
    const results: Array<{ command: string; code: number | null; stdout: string }> = [];
    for (const command of commands) {
      const r = await runCommand('bash', ['-c', `${functions}${command}`], { cwd: root, env: { ...process.env, TANDEM_LOG_LEVEL: 'warn' }, timeoutMs: 300_000 });
      const expected = /\(exit (\d+)\)/.exec(command)?.[1] ?? '0';
      expect(r.code, `${command}\n${show(r)}`).toBe(Number(expected));
      results.push({ command, code: r.code, stdout: r.stdout.toString() });
      if (command.includes('&& tandem-standby apply')) {
        // backup && apply: a second set, applied by the standby
        const applied = JSON.parse(await readFile(join(root, 'state', 'standby', 'applied.json'), 'utf8')) as { setId: string };
        expect(applied.setId).toMatch(/-e1-000002$/);
      }
    }
    expect(results[0]!.stdout).toMatch(/applied\s+\d{8}T\d{6}Z-e1-000001/); // the site came back in its pre-failover state
    expect(results[4]!.stdout).toMatch(/promoted site "demo" to primary \(epoch 2/);
  });
});
