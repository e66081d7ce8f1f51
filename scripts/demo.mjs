// The README's main job on the embedded default: a demo site in the local PostgreSQL and a
// directory filestore, backed up by tandem-primary, applied by tandem-standby, then promoted.
// Re-runnable: every run starts from a clean demo-site/ directory and fresh databases. It ends with
// the site as it was before the failover, and says what to try on it next.
// TANDEM_DEMO_DIR (default demo-site) and TANDEM_DEMO_DB (default tandem_demo, the primary's
// database; the standby's is <it>_standby) move it elsewhere.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';

const root = resolve(process.env.TANDEM_DEMO_DIR ?? 'demo-site');
const pgUrl = (db) => `postgres://postgres@127.0.0.1:5432/${db}`;
const PRIMARY_DB = process.env.TANDEM_DEMO_DB ?? 'tandem_demo';
const STANDBY_DB = `${PRIMARY_DB}_standby`;
const primaryBin = resolve('packages/primary-agent/dist/bundle/tandem-primary.js');
const standbyBin = resolve('packages/standby-agent/dist/bundle/tandem-standby.js');

const step = (text) => console.log(`\n== ${text}`);
function psql(db, sql) {
  // client_min_messages: no NOTICEs ("database ... does not exist, skipping") on the demo's stderr.
  const env = { ...process.env, PGOPTIONS: `${process.env.PGOPTIONS ?? ''} -c client_min_messages=warning`.trim() };
  return execFileSync('psql', ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', pgUrl(db), '-c', sql], { encoding: 'utf8', env }).trim();
}
function run(bin, args, { allowFail = false } = {}) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, TANDEM_LOG_LEVEL: process.env.TANDEM_LOG_LEVEL ?? 'warn' } });
  if (r.stdout) process.stdout.write(r.stdout.replace(/^/gm, '   '));
  if (r.status !== 0 && !allowFail) {
    process.stderr.write(r.stderr);
    throw new Error(`${bin.includes('primary') ? 'tandem-primary' : 'tandem-standby'} ${args[0]} exited ${r.status}`);
  }
  return r;
}

step(`creating the demo site in ${root}`);
rmSync(root, { recursive: true, force: true });
rmSync(`${root}.before-failover`, { recursive: true, force: true }); // left by a run that failed half-way
const site = (side, ...p) => join(root, side, ...p);
for (const side of ['primary', 'standby']) {
  mkdirSync(site(side, 'priv', 'config.d'), { recursive: true });
  mkdirSync(site(side, 'security'), { recursive: true });
  mkdirSync(site(side, 'files'), { recursive: true });
}
writeFileSync(site('primary', 'priv', 'config.d', 'site.yml'), 'hostname: demo.example\nlanguage: en\n');
writeFileSync(site('primary', 'priv', 'config.d', 'db.yml'), `dbname: ${PRIMARY_DB}\n`);
writeFileSync(site('standby', 'priv', 'config.d', 'db.yml'), `dbname: ${STANDBY_DB}   # the standby's own, preserved\n`);
writeFileSync(site('primary', 'security', 'site.key'), '-----BEGIN PRIVATE KEY-----\ndemo\n-----END PRIVATE KEY-----\n');
chmodSync(site('primary', 'security', 'site.key'), 0o600);
mkdirSync(site('primary', 'files', 'archive', '2026', '11'), { recursive: true });
writeFileSync(site('primary', 'files', 'archive', '2026', '11', 'lighthouse.jpg'), Buffer.alloc(256 * 1024, 7));
writeFileSync(site('primary', 'files', 'archive', 'café menu.pdf'), 'not really a pdf\n');
symlinkSync('archive/2026/11/lighthouse.jpg', site('primary', 'files', 'cover.jpg'));

psql('postgres', `DROP DATABASE IF EXISTS ${PRIMARY_DB} WITH (FORCE)`);
psql('postgres', `DROP DATABASE IF EXISTS ${STANDBY_DB} WITH (FORCE)`);
psql('postgres', `CREATE DATABASE ${PRIMARY_DB}`);
psql(PRIMARY_DB, `
  CREATE TABLE page (id serial PRIMARY KEY, title text NOT NULL, body jsonb, created timestamptz DEFAULT now());
  INSERT INTO page (title, body) SELECT 'Page ' || g, jsonb_build_object('n', g, 'lang', 'nl') FROM generate_series(1, 500) g;
  INSERT INTO page (title) VALUES ('Zoë''s café ☕');
  CREATE VIEW recent_pages AS SELECT id, title FROM page ORDER BY created DESC LIMIT 10;`);
console.log(`   database ${PRIMARY_DB}: ${psql(PRIMARY_DB, 'SELECT count(*) FROM page')} pages`);

step('tandem-primary init: generating keys');
run(primaryBin, ['init', '--keys-dir', join(root, 'keys')]);

const filestore = `file://${join(root, 'filestore')}`;
writeFileSync(join(root, 'primary.yml'), `site: demo
database:
  url: ${pgUrl(PRIMARY_DB)}
paths:
  config: ./primary/priv
  security: ./primary/security
  files: ./primary/files
filestore:
  url: ${filestore}
keys:
  recipientFile: ./keys/backup.agepub
  signingKeyFile: ./keys/signing.key
stateDir: ./state/primary
`);
writeFileSync(join(root, 'standby.yml'), `site: demo
database:
  url: ${pgUrl(STANDBY_DB)}
paths:
  config: ./standby/priv
  security: ./standby/security
  files: ./standby/files
config:
  preserve: ["config.d/db.yml"]
filestore:
  url: ${filestore}
keys:
  identityFile: ./keys/backup.agekey
  verifyKeyFile: ./keys/signing.pub
restartCommand: "echo \\"   (restart command ran: TANDEM_MODE=$TANDEM_MODE TANDEM_SET_ID=$TANDEM_SET_ID)\\""
stateDir: ./state/standby
`);

step('tandem-primary init --filestore: creating the filestore the config names (backups never create one)');
run(primaryBin, ['init', '--filestore', '--config', join(root, 'primary.yml')]);

step('tandem-primary backup: one encrypted, signed set into the directory filestore');
run(primaryBin, ['backup', '--config', join(root, 'primary.yml')]);
run(primaryBin, ['list', '--config', join(root, 'primary.yml')]);

if (!existsSync(standbyBin)) {
  console.log('\n(tandem-standby is not built yet: stopping after the backup)');
  process.exit(0);
}

step('tandem-standby apply --create-database: verify, restore, swap in (the first apply creates the standby database)');
run(standbyBin, ['apply', '--config', join(root, 'standby.yml'), '--create-database']);

step('what the standby now has');
console.log(`   database ${STANDBY_DB}: ${psql(STANDBY_DB, 'SELECT count(*) FROM page')} pages; newest title: ${psql(STANDBY_DB, 'SELECT title FROM page ORDER BY id DESC LIMIT 1')}`);
const list = (dir, prefix = '') =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? list(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`],
  );
console.log(`   files: ${list(site('standby', 'files')).join(', ')}`);
console.log(`   config: ${list(site('standby', 'priv')).join(', ')}`);
console.log(`   config.d/db.yml kept as the standby's own: ${readFileSync(site('standby', 'priv', 'config.d', 'db.yml'), 'utf8').trim()}`);
console.log(`   sentinel ${site('standby', 'priv', 'BACKUP')}: ${JSON.stringify(JSON.parse(readFileSync(site('standby', 'priv', 'BACKUP'), 'utf8')))}`);

// The failover below moves the filestore to a new epoch and leaves the standby promoted, after
// which nothing but a failback applies or backs up again: it runs on a copy, and the site as it is
// now is put back at the end for the reader to try the commands on.
const beforeFailover = `${root}.before-failover`;
rmSync(beforeFailover, { recursive: true, force: true });
renameSync(root, beforeFailover);
cpSync(beforeFailover, root, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });

step('tandem-standby promote: the standby becomes the primary');
// No primary daemon ran, so there is no heartbeat: promote cannot tell whether the old primary is
// alive and refuses without --force. Here it is known to be stopped (it ran once, above).
console.log('   (no primary daemon ran, so no heartbeat: the demo knows the primary is stopped and passes --force)');
const promoted = run(standbyBin, ['promote', '--force', '--config', join(root, 'standby.yml')], { allowFail: true });
if (promoted.status !== 0) {
  process.stderr.write(promoted.stderr);
  throw new Error(`promote exited ${promoted.status}`);
}
console.log(`   sentinel present after promote: ${existsSync(site('standby', 'priv', 'BACKUP'))}`);
const epoch = JSON.parse(readFileSync(join(root, 'filestore', 'demo', 'epoch.json'), 'utf8'));
const agent = (host, id) => `${host} (agent ${id})`;
console.log(`   epoch.json: epoch ${epoch.epoch}, primary ${agent(epoch.primaryHost, epoch.primaryId)}; before: epoch ${epoch.previous.epoch}, ${agent(epoch.previous.primaryHost, epoch.previous.primaryId)}`);

step('the old primary tries one more backup: fenced (both agents have the same host name; their agent ids differ)');
const fenced = run(primaryBin, ['backup', '--config', join(root, 'primary.yml')], { allowFail: true });
const message = fenced.stderr.split('\n').filter((l) => l.startsWith('tandem-primary: error:'));
console.log(message.map((l) => `   ${l}`).join('\n'));
if (fenced.status !== 4) {
  process.stderr.write(fenced.stderr);
  throw new Error(`the old primary's backup exited ${fenced.status}, not 4 (fenced): split brain`);
}
console.log(`   exit status ${fenced.status} (fenced): nothing uploaded; the newest set is still the one the standby holds`);

step('putting the demo site back as it was before the failover');
rmSync(root, { recursive: true, force: true });
renameSync(beforeFailover, root);
console.log(`   ${root}: the standby holds the newest set, in backup mode; the primary is not fenced`);

// Commands to copy: relative to the repository (where `npm run demo` runs) when the site is inside it.
const here = (p) => (relative(process.cwd(), p).startsWith('..') ? p : relative(process.cwd(), p) || '.');
const siteDir = here(root);
step('what to try next');
console.log(`   alias tandem-primary="node ${primaryBin}" tandem-standby="node ${standbyBin}"
   cd ${siteDir}
   tandem-standby status --config standby.yml          # what the standby holds, and how far behind it is
   tandem-primary list --config primary.yml            # the sets in the filestore
   tandem-primary backup --config primary.yml && tandem-standby apply --config standby.yml   # one more set, applied
   tandem-standby verify --config standby.yml          # a restore drill that touches nothing live
   # the failover, by hand:
   tandem-standby promote --force --config standby.yml # the standby becomes the primary (--force: no primary daemon ran)
   tandem-primary backup --config primary.yml          # refused: the old primary is fenced (exit 4)
   cd ${siteDir === root ? process.cwd() : relative(root, process.cwd())} && npm run demo   # start over: a fresh site, databases and filestore`);
