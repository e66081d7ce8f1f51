// The README's main job on the embedded default: a demo site in the local PostgreSQL and a
// directory filestore, backed up by tandem-primary, applied by tandem-standby, then promoted.
// Re-runnable: every run starts from a clean demo-site/ directory and fresh databases.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

const root = resolve(process.env.TANDEM_DEMO_DIR ?? 'demo-site');
const pgUrl = (db) => `postgres://postgres@127.0.0.1:5432/${db}`;
const PRIMARY_DB = 'tandem_demo';
const STANDBY_DB = 'tandem_demo_standby';
const primaryBin = resolve('packages/primary-agent/dist/main.js');
const standbyBin = resolve('packages/standby-agent/dist/main.js');

const step = (text) => console.log(`\n== ${text}`);
function psql(db, sql) {
  return execFileSync('psql', ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', pgUrl(db), '-c', sql], { encoding: 'utf8' }).trim();
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

step('tandem-primary backup: one encrypted, signed set into the directory filestore');
run(primaryBin, ['backup', '--config', join(root, 'primary.yml')]);
run(primaryBin, ['list', '--config', join(root, 'primary.yml')]);

if (!existsSync(standbyBin)) {
  console.log('\n(tandem-standby is not built yet: stopping after the backup)');
  process.exit(0);
}

step('tandem-standby apply: verify, restore, swap in');
run(standbyBin, ['apply', '--config', join(root, 'standby.yml')]);

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
console.log(`\nDone. Everything is under ${root}; run again to start over.`);
