import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPrimaryConfig, loadStandbyConfig } from './config.js';
import { TandemError } from './errors.js';

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

function errorOf(fn: () => unknown): TandemError {
  try {
    fn();
  } catch (err) {
    if (err instanceof TandemError) return err;
    throw err;
  }
  throw new Error('expected an error');
}

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
    const dup = errorOf(() => loadPrimaryConfig(write(`${PRIMARY}standbys: [{ id: web2, tokenFile: a }, { id: web2, tokenFile: b }]\n`)));
    expect(dup.message).toMatch(/standbys: each standby id may be listed once/);
    const noToken = errorOf(() => loadPrimaryConfig(write(`${PRIMARY}standbys: [{ id: web2 }]\n`)));
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
    const err = errorOf(() => loadPrimaryConfig(file));
    expect(err.kind).toBe('config');
    expect(err.exitCode).toBe(2);
    for (const path of ['site', 'database.url', 'paths.config', 'paths.security', 'filestore.url', 'keys.recipentFile', 'encryption']) {
      expect(err.message).toContain(`  - ${path}:`);
    }
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/keys\.recipentFile: unknown key/);
  });

  it('refuses a password inside the database URL', () => {
    const file = write(PRIMARY.replace('postgres@', 'postgres:hunter2@'));
    expect(errorOf(() => loadPrimaryConfig(file)).message).toMatch(/database\.url: the URL contains a password.*passwordFile/);
  });

  it('requires a recipient while encryption is on, and accepts none only when said', () => {
    const noRecipient = PRIMARY.replace('  recipientFile: ./keys/backup.agepub\n', '');
    const err = errorOf(() => loadPrimaryConfig(write(noRecipient)));
    expect(err.message).toMatch(/keys\.recipientFile: required while encryption is "age"/);
    expect(loadPrimaryConfig(write(`${noRecipient}encryption: none\n`)).encryption).toBe('none');
  });

  it('names the file when it is missing or not YAML', () => {
    expect(errorOf(() => loadPrimaryConfig('/nonexistent/tandem.yml')).message).toBe('config file /nonexistent/tandem.yml: no such file');
    const bad = write('site: [unclosed\n');
    expect(errorOf(() => loadPrimaryConfig(bad)).message).toMatch(/not valid YAML/);
  });
});

describe('standby config', () => {
  it('defaults the sentinel into the config dir and keeps preserve globs', () => {
    const file = write(`
site: demo
database: { url: "postgres://postgres@127.0.0.1/demo_standby" }
paths: { config: /srv/demo/priv, security: /srv/demo/security, files: /srv/demo/files }
config: { preserve: ["config.d/db.yml"] }
filestore: { url: "file:///var/backups/tandem" }
keys: { identityFile: ./keys/backup.agekey, verifyKeyFile: ./keys/signing.pub }
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

  it("refuses the standby's old server.tokenFile, saying what took its place", () => {
    const old = write(`
site: demo
database: { url: "postgres://postgres@127.0.0.1/demo_standby" }
paths: { config: /srv/demo/priv, security: /srv/demo/security, files: /srv/demo/files }
filestore: { url: "file:///var/backups/tandem" }
keys: { identityFile: ./keys/backup.agekey, verifyKeyFile: ./keys/signing.pub }
server: { listen: "127.0.0.1:7171", tokenFile: ./keys/ws.token }
`);
    expect(errorOf(() => loadStandbyConfig(old)).message).toMatch(/server\.tokenFile: no longer used on the standby: \/status and \/metrics take the monitoring token, server\.readTokenFile; the token this standby presents to the primary is primary\.tokenFile/);
  });

  it('calls out primary-only keys given to the standby', () => {
    const err = errorOf(() => loadStandbyConfig(write(PRIMARY)));
    expect(err.message).toMatch(/keys\.recipientFile: unknown key \(misspelt, or meant for the other agent\?\)/);
    expect(err.message).toMatch(/keys\.verifyKeyFile:/);
  });
});
