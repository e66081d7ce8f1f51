import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPrimaryConfig, loadStandbyConfig } from './config.js';
import { thrownBy } from './testing/helpers.js';

function write(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'tandem-config-'));
  const file = join(dir, 'agent.yml');
  writeFileSync(file, text);
  return file;
}

const PRIMARY = `
site: demo
database:
  url: postgres://postgres@127.0.0.1:5432/demo
paths:
  config: ./priv
  security: /srv/demo/security
  files: /srv/demo/files
filestore:
  url: file:///var/backups/tandem
keys:
  recipientFile: ./keys/backup.agepub
  signingKeyFile: ./keys/signing.key
`;

const STANDBY = `
site: demo
database: { url: "postgres://postgres@127.0.0.1/demo_standby" }
paths: { config: /srv/demo/priv, security: /srv/demo/security, files: /srv/demo/files }
filestore: { url: "file:///var/backups/tandem" }
keys: { identityFile: ./keys/backup.agekey, verifyKeyFile: ./keys/signing.pub }
`;

describe('primary config', () => {
  it('loads the documented keys, resolves relative paths against the file, applies defaults', () => {
    const file = write(PRIMARY);
    const c = loadPrimaryConfig(file);
    const dir = join(file, '..');
    expect(c.site).toBe('demo');
    expect(c.paths.config).toBe(join(dir, 'priv'));
    expect(c.keys.recipientFile).toBe(join(dir, 'keys/backup.agepub'));
    expect(c.encryption).toBe('age');
    expect(c.compression.level).toBe(3);
    expect(c.stateDir).toMatch(/demo$/);
  });

  it('reads the tokens: server.tokenFile (control), server.readTokenFile (monitoring), standbys with their own token files', () => {
    const file = write(`${PRIMARY}server: { tokenFile: ./keys/control.token, readTokenFile: ./keys/read.token }
standbys:
  - { id: web2, tokenFile: ./keys/standby-web2.token }
  - { id: web3, tokenFile: /etc/tandem/standby-web3.token }
`);
    const c = loadPrimaryConfig(file);
    const dir = join(file, '..');
    expect(c.server).toEqual({ listen: '127.0.0.1:7070', tokenFile: join(dir, 'keys/control.token'), readTokenFile: join(dir, 'keys/read.token') });
    expect(c.standbys).toEqual([
      { id: 'web2', tokenFile: join(dir, 'keys/standby-web2.token') },
      { id: 'web3', tokenFile: '/etc/tandem/standby-web3.token' },
    ]);
    expect(loadPrimaryConfig(write(PRIMARY)).standbys).toEqual([]);
    const dup = thrownBy(() => loadPrimaryConfig(write(`${PRIMARY}standbys: [{ id: web2, tokenFile: a }, { id: web2, tokenFile: b }]\n`)));
    expect(dup.message).toMatch(/standbys: each standby id may be listed once/);
    const noToken = thrownBy(() => loadPrimaryConfig(write(`${PRIMARY}standbys: [{ id: web2 }]\n`)));
    expect(noToken.message).toMatch(/standbys\.0\.tokenFile/);
  });

  it('reports every problem at once, each with its key path', () => {
    const file = write(`
site: Demo Site
database:
  url: mysql://x
paths:
  config: 42
  files: /srv/files
filestore:
  url: ftp://nope
keys:
  signingKeyFile: ./k
  recipentFile: ./typo
encryption: maybe
`);
    const err = thrownBy(() => loadPrimaryConfig(file));
    expect(err.kind).toBe('config');
    expect(err.exitCode).toBe(2);
    for (const path of ['site', 'database.url', 'paths.config', 'paths.security', 'filestore.url', 'keys.recipentFile', 'encryption']) {
      expect(err.message).toContain(`  - ${path}:`);
    }
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/keys\.recipentFile: unknown key/);
  });

  it('parses the filestore URL into the location the filestore is opened with', () => {
    expect(loadPrimaryConfig(write(PRIMARY)).filestore).toEqual({
      url: 'file:///var/backups/tandem',
      location: { scheme: 'file', root: '/var/backups/tandem' },
    });
    const s3 = loadPrimaryConfig(write(PRIMARY.replace('file:///var/backups/tandem', 's3://backups/demo?region=eu-west-1&maxAttempts=6')));
    expect(s3.filestore.location).toMatchObject({ scheme: 's3', bucket: 'backups', prefix: 'demo/', region: 'eu-west-1', maxAttempts: 6 });
  });

  it.each([
    ['file://relative/dir', /names host "relative"; a relative path is not allowed; use file:\/\/\/absolute\/path/],
    ['file:///srv/store?mode=1', /file URLs take no options/],
    ['s3://backups/demo?colour=blue', /unknown option "colour"; allowed options: endpoint, region/],
    ['s3://backups/demo?idleTimeoutMs=fast', /option idleTimeoutMs="fast" is not valid; idleTimeoutMs is a whole number/],
    ['s3://AKID:hunter2@backups/demo', /credentials do not belong in the URL/],
  ])('reports filestore.url %s in the config report, with the other problems', (url, message) => {
    const file = write(PRIMARY.replace('file:///var/backups/tandem', url).replace('site: demo', 'site: Demo Site'));
    const err = thrownBy(() => loadPrimaryConfig(file));
    expect(err.kind).toBe('config');
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.message).toContain(`${file}: 2 problems:`);
    expect(err.message).toMatch(/^ {2}- site: /m);
    const line = err.message.split('\n').find((l) => l.startsWith('  - filestore.url: '));
    expect(line, err.message).toMatch(message);
    expect(err.message).not.toContain('hunter2');
  });

  it('refuses a password inside the database URL', () => {
    const file = write(PRIMARY.replace('postgres@', 'postgres:hunter2@'));
    expect(thrownBy(() => loadPrimaryConfig(file)).message).toMatch(/database\.url: the URL contains a password.*passwordFile/);
  });

  it('requires a recipient while encryption is on, and accepts none only when said', () => {
    const noRecipient = PRIMARY.replace('  recipientFile: ./keys/backup.agepub\n', '');
    const err = thrownBy(() => loadPrimaryConfig(write(noRecipient)));
    expect(err.message).toMatch(/keys\.recipientFile: required while encryption is "age"/);
    expect(loadPrimaryConfig(write(`${noRecipient}encryption: none\n`)).encryption).toBe('none');
  });

  it('names the file when it is missing or not YAML', () => {
    expect(thrownBy(() => loadPrimaryConfig('/nonexistent/tandem.yml')).message).toBe('config file /nonexistent/tandem.yml: no such file');
    const bad = write('site: [unclosed\n');
    expect(thrownBy(() => loadPrimaryConfig(bad)).message).toMatch(/not valid YAML/);
  });
});

describe('standby config', () => {
  it('defaults the sentinel into the config dir and keeps preserve globs', () => {
    const file = write(`${STANDBY}config: { preserve: ["config.d/db.yml"] }
restartCommand: "true"
server: { listen: "127.0.0.1:7171", readTokenFile: ./keys/read.token }
`);
    const c = loadStandbyConfig(file);
    expect(c.server).toEqual({ listen: '127.0.0.1:7171', readTokenFile: join(file, '..', 'keys/read.token') });
    expect(c.pollInterval).toBe(60_000);
    expect(c.paths.sentinel).toBe('/srv/demo/priv/BACKUP');
    expect(c.config.preserve).toEqual(['config.d/db.yml']);
    expect(c.database.restoreJobs).toBe(2);
  });

  it('reports a relative file:// filestore URL with the key named, like the primary', () => {
    const file = write(STANDBY.replace('"file:///var/backups/tandem"', '"file://store"'));
    const err = thrownBy(() => loadStandbyConfig(file));
    expect(err.kind).toBe('config');
    expect(err.message).toMatch(/^ {2}- filestore\.url: filestore URL "file:\/\/store": names host "store"/m);
  });

  it("refuses the standby's old server.tokenFile, saying what took its place", () => {
    const old = write(`${STANDBY}server: { listen: "127.0.0.1:7171", tokenFile: ./keys/ws.token }\n`);
    expect(thrownBy(() => loadStandbyConfig(old)).message).toMatch(/server\.tokenFile: no longer used on the standby: \/status and \/metrics take the monitoring token, server\.readTokenFile; the token this standby presents to the primary is primary\.tokenFile/);
  });

  it('calls out primary-only keys given to the standby', () => {
    const err = thrownBy(() => loadStandbyConfig(write(PRIMARY)));
    expect(err.message).toMatch(/keys\.recipientFile: unknown key \(misspelt, or meant for the other agent\?\)/);
    expect(err.message).toMatch(/keys\.verifyKeyFile:/);
  });
});
