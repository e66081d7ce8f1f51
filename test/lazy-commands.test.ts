/**
 * A command loads only what it needs: PostgreSQL runs `wal-push` and `wal-fetch` once per WAL file,
 * cron or an operator runs `backup` and `apply`, and none of them may pay for the daemon's
 * WebSocket server, metrics registry, file watcher and scheduler (memory and start-up time). The
 * commands as shipped are bundles (scripts/bundle.mjs): each is run with a module-resolution hook
 * that lists every file it loads, and the bundle's metafile says which npm packages went into each
 * of those files.
 *
 * Needs: `npm run build` first.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PRIMARY_MAIN, STANDBY_MAIN, readBundleMeta, requireBuilt, tmpDir } from './support/site.js';
import { rm } from 'node:fs/promises';

/** What only the daemons use (cron-parser is not here: every config's schedule is checked with it). */
const DAEMON_ONLY = ['ws', 'prom-client', 'chokidar'];
let dir: string;
let register: string;

beforeAll(async () => {
  requireBuilt();
  dir = await tmpDir('tandem-lazy-');
  const hook = join(dir, 'hook.mjs');
  writeFileSync(hook, "export async function resolve(s, c, next) { const r = await next(s, c); if (r.url.startsWith('file:')) process.stderr.write(`LOADED ${r.url}\\n`); return r; }\n");
  register = join(dir, 'register.mjs');
  // ES modules through the resolve hook; CommonJS ones (required, or imported from ESM) from the
  // module cache at exit.
  writeFileSync(
    register,
    `import { createRequire, register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hook).href)});\n` +
      "const require = createRequire(import.meta.url);\nprocess.on('exit', () => { for (const k of Object.keys(require('node:module')._cache)) process.stderr.write(`LOADED ${k}\\n`); " +
      // Node's own modules too: its fetch implementation (undici) is ~30 ms and ~5 MiB of a start.
      "for (const m of process.moduleLoadList) if (m.includes('undici')) process.stderr.write(`BUILTIN ${m}\\n`); });\n",
  );
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The npm packages each file of a command's bundle holds (from the metafile scripts/bundle.mjs writes). */
function packagesByFile(main: string): Map<string, Set<string>> {
  const meta = readBundleMeta(main);
  const out = new Map<string, Set<string>>();
  for (const [file, o] of Object.entries(meta.outputs)) {
    const pkgs = new Set<string>();
    for (const input of Object.keys(o.inputs)) {
      const m = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
      if (m) pkgs.add(m[1]!);
    }
    out.set(basename(file), pkgs);
  }
  return out;
}

/** The npm packages a run of the command loaded: in the bundle's files it loaded, or from node_modules itself; `node:undici` when Node's fetch was loaded. */
function packagesLoaded(main: string, args: string[]): Set<string> {
  const r = spawnSync(process.execPath, ['--import', register, main, ...args], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const byFile = packagesByFile(main);
  const found = new Set<string>();
  let bundleFiles = 0;
  for (const line of r.stderr.split('\n')) {
    const m = /^LOADED .*\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(line);
    if (m) found.add(m[1]!);
    if (line.startsWith('BUILTIN ')) found.add('node:undici');
    const b = /^LOADED file:\/\/(.*)$/.exec(line);
    if (b && dirname(b[1]!) === dirname(main)) {
      const pkgs = byFile.get(basename(b[1]!));
      expect(pkgs, `${b[1]} is not in the bundle's metafile`).toBeDefined();
      bundleFiles++;
      for (const p of pkgs!) found.add(p);
    }
  }
  expect(bundleFiles, 'no file of the bundle was seen loading').toBeGreaterThan(0);
  return found;
}

describe('commands load only what they need', () => {
  it.each([
    { bin: 'tandem-primary', main: PRIMARY_MAIN, args: ['wal-push', '--help'] },
    { bin: 'tandem-primary', main: PRIMARY_MAIN, args: ['backup', '--help'] },
    { bin: 'tandem-standby', main: STANDBY_MAIN, args: ['wal-fetch', '--help'] },
    { bin: 'tandem-standby', main: STANDBY_MAIN, args: ['apply', '--help'] },
  ])('$bin $args loads none of the daemon-only packages', ({ main, args }) => {
    const loaded = packagesLoaded(main, args);
    // It did load packages (the hook works): the config schema library at least.
    expect(loaded.has('zod')).toBe(true);
    for (const p of DAEMON_ONLY) expect(loaded.has(p), `${p} loaded`).toBe(false);
    // pg asks whether it runs on Cloudflare Workers by making a fetch Response: answered at build
    // time (scripts/bundle.mjs), not by loading Node's fetch in every command.
    expect(loaded.has('pg'), 'pg loaded').toBe(true);
    expect(loaded.has('node:undici'), "Node's fetch (undici) loaded").toBe(false);
  });

  it("a Response made in the same run loads Node's fetch (the check above would see it)", () => {
    const probe = join(dir, 'probe.mjs');
    writeFileSync(probe, 'new Response(null);\n');
    const r = spawnSync(process.execPath, ['--import', register, probe], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('BUILTIN ');
  });

  it('the daemon still loads them (the check above would see them)', () => {
    const loaded = packagesLoaded(PRIMARY_MAIN, ['run', '--help']);
    for (const p of DAEMON_ONLY) expect(loaded.has(p), `${p} not loaded`).toBe(true);
  });
});
