#!/usr/bin/env node
/**
 * The commands as shipped: each agent's compiled entry (packages/<agent>/dist/main.js, from `tsc -b`)
 * bundled with everything it imports into packages/<agent>/dist/bundle/, which is what the `bin`
 * of each package, the tests and the benchmarks run.
 *
 * Why: a command is a process start, and PostgreSQL starts one per WAL file (wal-push as
 * archive_command, wal-fetch as restore_command), cron one per backup. Unbundled, a start resolves
 * and reads some 500 module files (our own and those of zod, yaml, pg, pino, the AWS SDK): about
 * 0.7 s of CPU for `--help`. Bundled, the same start reads a handful of files: about 0.3 s.
 *
 * Each command's code stays in its own chunk (esbuild's code splitting keeps every dynamic
 * import() a separate file), so a command still loads only what it needs: test/lazy-commands.test.ts
 * checks that through the metafile written beside (meta.json: which sources went into which file).
 * The hashing worker (shared/chunk-hasher-worker.js) is an entry of its own, beside the chunk that
 * starts it, where chunk-verifier-thread.ts looks for it.
 *
 * Usage: node scripts/bundle.mjs   (npm run build runs tsc -b, then this)
 */
import { build } from 'esbuild';
import { chmodSync, existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const AGENTS = [
  { dir: 'primary-agent', bin: 'tandem-primary' },
  { dir: 'standby-agent', bin: 'tandem-standby' },
];

if (process.argv.includes('--help') || process.argv.includes('-h')) {
  console.log('Usage: node scripts/bundle.mjs\n\nBundles each agent\'s compiled entry (run `npx tsc -b` first) into packages/<agent>/dist/bundle/.');
  process.exit(0);
}

for (const { dir, bin } of AGENTS) {
  const entry = join(ROOT, 'packages', dir, 'dist', 'main.js');
  const worker = join(ROOT, 'packages', 'shared', 'dist', 'chunk-hasher-worker.js');
  for (const f of [entry, worker]) {
    if (!existsSync(f)) {
      console.error(`bundle: ${f} is missing: compile first with \`npx tsc -b\` (npm run build does both)`);
      process.exit(1);
    }
  }
  const outdir = join(ROOT, 'packages', dir, 'dist', 'bundle');
  if (upToDate(outdir)) continue;
  // Built beside and swapped in: a command started meanwhile (a test, PostgreSQL's archive_command)
  // finds the old bundle or the new one, never half of one.
  const building = `${outdir}.new-${process.pid}`;
  rmSync(building, { recursive: true, force: true });
  const result = await build({
    entryPoints: { [bin]: entry, 'chunk-hasher-worker': worker },
    outdir: building,
    absWorkingDir: ROOT,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    // One flat directory: the worker entry must be beside whichever chunk holds the code that starts it.
    chunkNames: '[name]-[hash]',
    // CommonJS dependencies (pg, pino, yaml) call require() for Node's own modules: give every
    // chunk a real one.
    banner: { js: "import { createRequire as __tandemRequire } from 'node:module'; const require = __tandemRequire(import.meta.url);" },
    plugins: [zodEnglishOnly(), pgNoCloudflareProbe()],
    metafile: true,
    logLevel: 'warning',
    legalComments: 'none',
  });
  writeFileSync(join(building, 'meta.json'), JSON.stringify(result.metafile));
  chmodSync(join(building, `${bin}.js`), 0o755);
  const old = `${outdir}.old-${process.pid}`;
  if (existsSync(outdir)) renameSync(outdir, old);
  renameSync(building, outdir);
  rmSync(old, { recursive: true, force: true });
}

/**
 * zod exports its messages in some 60 languages (z.locales), 366 KB of the 2.2 MB every command
 * compiles at start; tandem's messages are English (zod's default, `en`, which zod imports by
 * itself). Its locale index is replaced by one that has English only.
 */
function zodEnglishOnly() {
  return {
  name: 'zod-english-only',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      /[\\/]node_modules[\\/]zod[\\/]/.test(args.importer) ? { path: join(dirname(args.importer), '..', 'locales', 'index.js'), namespace: 'zod-locales' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'zod-locales' }, (args) => ({
      contents: `export { default as en } from ${JSON.stringify(join(dirname(args.path), 'en.js'))};\n`,
      resolveDir: dirname(args.path),
    }));
  },
  };
}

/**
 * pg asks, as it loads, whether it runs on Cloudflare Workers: on Node 20 (no `navigator`) by
 * constructing a fetch Response, which loads Node's fetch implementation (undici): some 20-60 ms of
 * CPU at the start of every command that loads pg, wal-push and wal-fetch run by PostgreSQL
 * included. These commands run on Node, never on Workers: the probe says so without asking. The
 * build fails if pg's source no longer has the function (the replacement would silently not apply).
 */
function pgNoCloudflareProbe() {
  return {
    name: 'pg-no-cloudflare-probe',
    setup(b) {
      b.onLoad({ filter: /[\\/]node_modules[\\/]pg[\\/]lib[\\/]stream\.js$/ }, (args) => {
        const text = readFileSync(args.path, 'utf8');
        const probe = 'function isCloudflareRuntime() {';
        if (!text.includes(probe)) throw new Error(`${args.path}: no "${probe}" to replace (a new pg version?): look at scripts/bundle.mjs`);
        return { contents: text.replace(probe, `${probe}\n  return false;`), loader: 'js' };
      });
    },
  };
}

/** The bundle is newer than every file that went into it (its metafile lists them) and than this script. */
function upToDate(outdir) {
  const metaFile = join(outdir, 'meta.json');
  if (!existsSync(metaFile)) return false;
  const built = statSync(metaFile).mtimeMs;
  let inputs;
  try {
    inputs = Object.keys(JSON.parse(readFileSync(metaFile, 'utf8')).inputs);
  } catch {
    return false;
  }
  for (const f of [fileURLToPath(import.meta.url), ...inputs.map((i) => join(ROOT, i))]) {
    if (!existsSync(f) || statSync(f).mtimeMs > built) return false;
  }
  return true;
}
