/**
 * The documented install: `scripts/install.sh` into a temporary prefix builds the package with
 * `npm pack`, installs it with `npm install --global --prefix`, and lays out the units, the
 * documentation and the sample configs. The units must pass `systemd-analyze verify` (which fails
 * when ExecStart names a command that is not there), name documentation that exists, and the
 * installed commands must run from the prefix alone (every dependency inside the package).
 */
import { existsSync, readFileSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, requireCommands, runCommand, tmpDir, type CommandResult } from './support/site.js';

const INSTALL = join(REPO_ROOT, 'scripts', 'install.sh');
const UNITS = ['tandem-primary.service', 'tandem-standby.service'];
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

const install = (args: string[], env: NodeJS.ProcessEnv = process.env): Promise<CommandResult> =>
  runCommand('bash', [INSTALL, ...args], { cwd: REPO_ROOT, env, timeoutMs: 600_000 });
const show = (r: CommandResult): string => `exit ${r.code ?? r.signal}\nstdout: ${r.stdout.toString()}\nstderr: ${r.stderr}`;

/** `systemd-analyze verify UNIT-FILE`: exit code and what it printed. */
async function verifyUnit(file: string): Promise<{ code: number | null; text: string }> {
  const r = await runCommand('systemd-analyze', ['verify', file], { timeoutMs: 60_000 });
  return { code: r.code, text: `${r.stdout.toString()}${r.stderr}`.trim() };
}

/** The value of `Key=` in a unit file (the first one). */
function unitValue(text: string, key: string): string {
  const m = new RegExp(`^${key}=(.*)$`, 'm').exec(text);
  if (!m) throw new Error(`no ${key}= in the unit`);
  return m[1]!.trim();
}

/** Every file under `dir`, relative to it. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)));
}

describe('scripts/install.sh', () => {
  let work: string;

  beforeAll(async () => {
    requireCommands(['systemd-analyze', 'npm', 'node']);
    work = await tmpDir('tandem-install-');
  });

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('refuses a Node.js older than 20 before doing anything, saying how to get Node 20 on Debian 12', async () => {
    const fakeBin = join(work, 'old-node');
    await mkdir(fakeBin, { recursive: true });
    await writeFile(join(fakeBin, 'node'), '#!/bin/sh\necho v18.19.0\n');
    await chmod(join(fakeBin, 'node'), 0o755);
    const prefix = join(work, 'old-node-prefix');
    const r = await install(['--prefix', prefix], { ...process.env, PATH: `${fakeBin}:${process.env.PATH ?? ''}` });
    expect(r.code, show(r)).toBe(1);
    expect(r.stderr).toContain(`install: error: tandem needs Node.js 20 or later; ${join(fakeBin, 'node')} is v18.19.0`);
    expect(r.stderr).toMatch(/hint: Debian 12 ships Node\.js 18 .*NodeSource/);
    expect(r.stderr).toContain('https://deb.nodesource.com/setup_22.x');
    expect(r.stderr).toContain('https://nodejs.org/en/download');
    expect(existsSync(prefix)).toBe(false);
  });

  it('refuses a command an earlier hand-made install linked into the prefix, naming it', async () => {
    const prefix = join(work, 'old-links');
    await mkdir(join(prefix, 'bin'), { recursive: true });
    const target = join(REPO_ROOT, 'packages', 'primary-agent', 'dist', 'main.js');
    await symlink(target, join(prefix, 'bin', 'tandem-primary'));
    const r = await install(['--prefix', prefix]);
    expect(r.code, show(r)).toBe(1);
    expect(r.stderr).toContain(`install: error: ${join(prefix, 'bin', 'tandem-primary')} exists and is not from a tandem package (it links to ${target})`);
    expect(r.stderr).toContain(`hint: remove it (an earlier install made it by hand): rm ${join(prefix, 'bin', 'tandem-primary')}`);
  });

  it('refuses a path that would not survive in a unit file, and a tarball that is not there', async () => {
    const spaced = await install(['--prefix', join(work, 'with space')]);
    expect(spaced.code, show(spaced)).toBe(1);
    expect(spaced.stderr).toContain(`--prefix ${join(work, 'with space')}: only letters, digits and ._/+@- may appear in it`);
    const missing = await install([join(work, 'nope.tgz'), '--prefix', join(work, 'p')]);
    expect(missing.code, show(missing)).toBe(1);
    expect(missing.stderr).toContain(`install: error: ${join(work, 'nope.tgz')}: no such file`);
  });

  it('installs the commands, units that systemd-analyze verify accepts, the documentation they name and the sample configs', async () => {
    // install.sh runs `npm ci` when node_modules is older than the lock file: never on a shared tree mid-run.
    const lock = statSync(join(REPO_ROOT, 'package-lock.json')).mtimeMs;
    const installed = join(REPO_ROOT, 'node_modules', '.package-lock.json');
    if (!existsSync(installed) || statSync(installed).mtimeMs < lock) throw new Error('node_modules is older than package-lock.json: run npm ci first');

    const root = join(work, 'root');
    const prefix = join(root, 'usr', 'local');
    const sysconfdir = join(root, 'etc');
    const unitdir = join(root, 'etc', 'systemd', 'system');
    const r = await install(['--prefix', prefix, '--sysconfdir', sysconfdir, '--unitdir', unitdir]);
    expect(r.code, show(r)).toBe(0);
    expect(r.stdout.toString()).toContain(`tandem ${VERSION} installed:`);
    expect(r.stdout.toString()).toContain(`systemctl daemon-reload && systemctl enable --now tandem-primary`);

    // The commands run from the prefix: the package resolves nothing from this checkout.
    for (const bin of ['tandem-primary', 'tandem-standby']) {
      const path = join(prefix, 'bin', bin);
      expect(realpathSync(path).startsWith(join(prefix, 'lib', 'node_modules', 'tandem') + '/'), path).toBe(true);
      const version = await runCommand(path, ['--version'], { cwd: '/' });
      expect(version.code, version.stderr).toBe(0);
      expect(version.stdout.toString()).toBe(`${VERSION}\n`);
      const help = await runCommand(path, ['--help'], { cwd: '/' });
      expect(help.code, help.stderr).toBe(0);
      expect(help.stdout.toString()).toContain(`Usage: ${bin} <command> [options]`);
      const runHelp = await runCommand(path, ['run', '--help'], { cwd: '/' });
      expect(runHelp.stdout.toString()).toMatch(/^Usage: tandem-(primary|standby) run --config FILE/);
    }

    // The package: compiled code and assets, no sources, source maps or build info.
    const pkg = join(prefix, 'lib', 'node_modules', 'tandem');
    const files = filesUnder(pkg);
    expect(files).toContain('node_modules/@tandem/shared/dist/index.js');
    expect(files).toContain('node_modules/@tandem/primary-agent/dist/main.js');
    expect(files).toContain('node_modules/@tandem/standby-agent/dist/main.js');
    // The commands are the bundles (scripts/bundle.mjs), with the hashing thread's worker beside; the build's metafile stays behind.
    for (const [ws, bin] of [['primary-agent', 'tandem-primary'], ['standby-agent', 'tandem-standby']] as const) {
      expect(realpathSync(join(prefix, 'bin', bin))).toBe(join(pkg, 'node_modules', '@tandem', ws, 'dist', 'bundle', `${bin}.js`));
      expect(files).toContain(`node_modules/@tandem/${ws}/dist/bundle/chunk-hasher-worker.js`);
      expect(files).not.toContain(`node_modules/@tandem/${ws}/dist/bundle/meta.json`);
    }
    expect(files.filter((f) => f.startsWith('node_modules/@tandem/') && /\/src\/|\.map$|\.tsbuildinfo$/.test(f))).toEqual([]);
    for (const ws of ['shared', 'primary-agent', 'standby-agent']) {
      const assets = join(REPO_ROOT, 'packages', ws, 'assets');
      if (!existsSync(assets)) continue;
      for (const f of filesUnder(assets)) expect(files, `${ws}/assets/${f}`).toContain(`node_modules/@tandem/${ws}/assets/${f}`);
    }

    for (const unit of UNITS) {
      const file = join(unitdir, unit);
      const text = await readFile(file, 'utf8');
      const bin = unit.replace('.service', '');
      expect(unitValue(text, 'ExecStart').split(' ').slice(0, 4)).toEqual([join(prefix, 'bin', bin), 'run', '--config', join(sysconfdir, 'tandem', `${bin.replace('tandem-', '')}.yml`)]);
      // `systemctl reload` sends SIGHUP to the daemon, which reads its TLS files again.
      expect(unitValue(text, 'ExecReload')).toBe('/bin/kill -HUP $MAINPID');
      const v = await verifyUnit(file);
      expect(v.code, v.text).toBe(0);
      expect(v.text).toBe('');
      // Documentation= names files that exist.
      const docs = unitValue(text, 'Documentation').split(/\s+/);
      for (const d of docs) {
        expect(d).toMatch(/^file:\/\//);
        expect(existsSync(d.slice('file://'.length)), d).toBe(true);
      }
      expect(docs[0]).toBe(`file://${join(prefix, 'share', 'doc', 'tandem', 'operations.md')}`);
    }
    expect(readFileSync(join(prefix, 'share', 'doc', 'tandem', 'operations.md'), 'utf8')).toBe(readFileSync(join(REPO_ROOT, 'docs', 'operations.md'), 'utf8'));

    // The sample configs beside where the units look, and no live config made up.
    for (const side of ['primary', 'standby']) {
      expect(readFileSync(join(sysconfdir, 'tandem', `${side}.yml.example`), 'utf8')).toBe(readFileSync(join(REPO_ROOT, 'etc', `${side}.yml`), 'utf8'));
      expect(existsSync(join(sysconfdir, 'tandem', `${side}.yml`))).toBe(false);
    }

    // The check has teeth: the same unit naming a command that is not there fails verification.
    const broken = join(work, 'broken', 'tandem-standby.service');
    await mkdir(join(work, 'broken'), { recursive: true });
    await writeFile(broken, (await readFile(join(unitdir, 'tandem-standby.service'), 'utf8')).replace(join(prefix, 'bin', 'tandem-standby'), join(prefix, 'bin', 'tandem-nothing')));
    const v = await verifyUnit(broken);
    expect(v.code).not.toBe(0);
    expect(v.text).toContain(`Command ${join(prefix, 'bin', 'tandem-nothing')} is not executable`);
  }, 900_000);
});
