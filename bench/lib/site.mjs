// A throwaway tandem site for the benchmarks: keys from `tandem-primary init`, small config and
// security dirs, the (cached) files tree, a directory filestore, and primary/standby configs, all
// in one temp dir that the benchmark removes at the end.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { MIB, PRIMARY_BIN, STANDBY_BIN, log, pgUrl, removeTree } from './common.mjs';

/** Where generated inputs are cached between runs (the files tree). */
export const CACHE_DIR = process.env.BENCH_CACHE_DIR ?? '/var/tmp/tandem-bench';
export const BENCH_DB = process.env.BENCH_DB ?? 'tandem_bench';
export const STANDBY_DB = `${BENCH_DB}_standby`;
export const REF_DB = `${BENCH_DB}_ref`;

export const benchGb = () => {
  const gb = Number(process.env.BENCH_DB_GB ?? 1.0);
  if (!(gb > 0 && gb <= 64)) throw new Error(`BENCH_DB_GB must be a number in (0, 64], got ${process.env.BENCH_DB_GB}`);
  return gb;
};
export const benchFilesMb = () => {
  const mb = Number(process.env.BENCH_FILES_MB ?? 500);
  if (!(mb > 0 && mb <= 100_000)) throw new Error(`BENCH_FILES_MB must be a number in (0, 100000], got ${process.env.BENCH_FILES_MB}`);
  return mb;
};
export const benchRuns = () => {
  const n = Number(process.env.BENCH_RUNS ?? 3);
  if (!(Number.isInteger(n) && n >= 1 && n <= 20)) throw new Error(`BENCH_RUNS must be an integer 1..20, got ${process.env.BENCH_RUNS}`);
  return n;
};
export const filesTreeDir = () => join(CACHE_DIR, `files-${benchFilesMb()}mb`);

/** Environment for the agents: JSON logs at warn (the benchmark reads --json from stdout). */
export const agentEnv = () => ({ ...process.env, TANDEM_LOG_LEVEL: process.env.TANDEM_LOG_LEVEL ?? 'warn', TANDEM_LOG_FORMAT: 'json' });

/**
 * Creates the temp dir with keys, config/security dirs, primary.yml and standby.yml.
 * The primary backs up `filesDir` (the cached tree) and database `db`; the standby applies into
 * `standbyDb` and `<tmp>/standby/{priv,security,files}`.
 * Optional: `filestoreUrl` (default: a directory filestore in the temp dir), YAML text appended
 * to each config (`primaryExtra`, `standbyExtra`: further top-level keys, e.g. the daemons'), and
 * `env` for the agents (S3 credentials). The filestore is created as an operator creates it:
 * `tandem-primary init --filestore --config primary.yml`.
 */
export function makeSite({ db, filesDir, standbyDb, filestoreUrl, primaryExtra = '', standbyExtra = '', env = {} }) {
  const dir = mkdtempSync(join(os.tmpdir(), 'tandem-bench-'));
  const r = spawnSync(process.execPath, [PRIMARY_BIN, 'init', '--keys-dir', join(dir, 'keys')], { encoding: 'utf8', env: agentEnv() });
  if (r.status !== 0) throw new Error(`tandem-primary init failed: ${r.stderr}`);

  mkdirSync(join(dir, 'primary', 'priv', 'config.d'), { recursive: true });
  writeFileSync(join(dir, 'primary', 'priv', 'config.d', 'site.yml'), 'hostname: bench.example\nlanguage: en\n');
  writeFileSync(join(dir, 'primary', 'priv', 'config.d', 'db.yml'), `dbname: ${db}\n`);
  mkdirSync(join(dir, 'primary', 'security'), { recursive: true });
  writeFileSync(join(dir, 'primary', 'security', 'site.key'), `-----BEGIN PRIVATE KEY-----\n${'A'.repeat(1600)}\n-----END PRIVATE KEY-----\n`);
  chmodSync(join(dir, 'primary', 'security', 'site.key'), 0o600);
  const filestore = filestoreUrl ?? `file://${join(dir, 'filestore')}`;
  const primaryConfig = join(dir, 'primary.yml');
  writeFileSync(
    primaryConfig,
    `site: bench
database:
  url: ${pgUrl(db)}
paths:
  config: ./primary/priv
  security: ./primary/security
  files: ${filesDir}
filestore:
  url: ${filestore}
keys:
  recipientFile: ./keys/backup.agepub
  signingKeyFile: ./keys/signing.key
stateDir: ./state/primary
${primaryExtra}`,
  );
  const init = spawnSync(process.execPath, [PRIMARY_BIN, 'init', '--filestore', '--config', primaryConfig], { encoding: 'utf8', env: { ...agentEnv(), ...env } });
  if (init.status !== 0) throw new Error(`tandem-primary init --filestore failed: ${init.stderr}`);
  const site = { dir, primaryConfig, filestoreDir: join(dir, 'filestore'), filestoreUrl: filestore };
  site.standbyConfig = addStandby(site, 'standby', { standbyDb, extra: standbyExtra }).config;
  return site;
}

/**
 * Another standby of a site made by makeSite (or the first one): `<tmp>/<name>/{priv,security,files}`,
 * state in `<tmp>/state/<name>`, config `<tmp>/<name>.yml` applying into `standbyDb`, from the
 * site's filestore unless `filestoreUrl` is given; `extra` is YAML appended (top-level keys);
 * `create`: database.create (the first apply creates `standbyDb`). Returns {config, stateDir}.
 */
export function addStandby(site, name, { standbyDb, filestoreUrl, extra = '', create = false }) {
  const { dir } = site;
  for (const p of ['priv/config.d', 'security', 'files']) mkdirSync(join(dir, name, p), { recursive: true });
  writeFileSync(join(dir, name, 'priv', 'config.d', 'db.yml'), `dbname: ${standbyDb}\n`);
  const config = join(dir, `${name}.yml`);
  writeFileSync(
    config,
    `site: bench
database:
  url: ${pgUrl(standbyDb)}
${create ? '  create: true\n' : ''}paths:
  config: ./${name}/priv
  security: ./${name}/security
  files: ./${name}/files
config:
  preserve: ["config.d/db.yml"]
filestore:
  url: ${filestoreUrl ?? site.filestoreUrl}
keys:
  identityFile: ./keys/backup.agekey
  verifyKeyFile: ./keys/signing.pub
stateDir: ./state/${name}
${extra}`,
  );
  return { config, stateDir: join(dir, 'state', name) };
}

export function removeSite(site) {
  if (process.env.BENCH_KEEP_TMP === '1') {
    log(`BENCH_KEEP_TMP=1: leaving ${site.dir}`);
    return;
  }
  removeTree(site.dir);
}

/** Parses the agent's --json stdout (the last line that is a JSON object). */
export function parseJsonOut(stdout, what) {
  const line = stdout.trim().split('\n').reverse().find((l) => l.startsWith('{'));
  if (!line) throw new Error(`${what}: no JSON on stdout: ${stdout.slice(0, 500)}`);
  return JSON.parse(line);
}

export { PRIMARY_BIN, STANDBY_BIN, MIB };
