import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultStateDir, loadPrimaryConfig, loadPrimarySites, loadStandbyConfig, loadStandbySites, selectSite, type PrimaryConfig, type StandbyConfig } from './config.js';
import { removeTempDirs, tempDirSync, thrownBy } from './testing/helpers.js';

afterAll(removeTempDirs);

function write(text: string): string {
  const dir = tempDirSync('tandem-config-');
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

/** A directory with the config file `agent.yml` and, for sitesDir, more files. */
function writeTree(files: Record<string, string>): string {
  const dir = tempDirSync('tandem-sites-');
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return join(dir, 'agent.yml');
}

/** The problem lines of a config error ("  - path: message" without the "  - "). */
const problemLines = (message: string): string[] => message.split('\n').filter((l) => l.startsWith('  - ')).map((l) => l.slice(4));

const PRIMARY_SHARED = `
database:
  url: postgres://zotonic@127.0.0.1:5432/zotonic
  passwordFile: ./secrets/db.pass
filestore:
  url: file:///var/backups/tandem
keys:
  recipientFile: ./keys/backup.agepub
  signingKeyFile: ./keys/signing.key
compression: { level: 5 }
server: { listen: "127.0.0.1:7070", tokenFile: ./keys/control.token }
standbys: [{ id: web2, tokenFile: ./keys/standby-web2.token }]
onFenced: /usr/local/bin/maintenance-on
`;

const TWO_PRIMARY_SITES = `${PRIMARY_SHARED}sites:
  - site: www
    database: { schema: www }
    paths: { config: /srv/www/priv, security: /srv/www/security, files: /srv/www/files }
  - site: shop
    database: { schema: shop, passwordFile: ./secrets/shop.pass }
    paths: { config: ./shop/priv, security: ./shop/security, files: /srv/shop/files }
    compression: { threads: 4 }
    schedule: "30 2 * * *"
    stateDir: ./state/shop
`;

const STANDBY_SHARED = `
database: { url: "postgres://postgres@127.0.0.1/zotonic", restoreJobs: 4 }
filestore: { url: "file:///var/backups/tandem" }
keys: { identityFile: ./keys/backup.agekey, verifyKeyFile: ./keys/signing.pub }
primary: { url: "ws://web1:7070", tokenFile: ./keys/standby-web2.token }
pollInterval: 5m
standbyId: web2
restartCommand: "systemctl restart zotonic"
config: { preserve: ["config.d/db.yml"] }
`;

const TWO_STANDBY_SITES = `${STANDBY_SHARED}concurrency: 3
sites:
  - site: www
    database: { schema: www }
    paths: { config: /srv/www/priv, security: /srv/www/security, files: /srv/www/files }
  - site: shop
    database: { schema: shop, preserveSettings: [statement_timeout] }
    paths: { config: /srv/shop/priv, security: /srv/shop/security, files: /srv/shop/files, sentinel: ./shop.BACKUP }
    config: { preserve: ["config.d/*.yml", "local.yml"] }
    restartCommand: "systemctl restart zotonic-shop"
`;

describe('several sites in one config', () => {
  it('primary: each site is the shared top level deep-merged with its entry, paths resolved against the config file', () => {
    const file = writeTree({ 'agent.yml': TWO_PRIMARY_SITES });
    const dir = dirname(file);
    const all = loadPrimarySites(file);
    expect(all.configFile).toBe(file);
    expect(all.concurrency).toBe(2);
    expect(all.sites.map((s) => s.site)).toEqual(['www', 'shop']);
    const [www, shop] = all.sites as [PrimaryConfig, PrimaryConfig];
    // Shared keys, inherited.
    for (const s of [www, shop]) {
      expect(s.configFile).toBe(file);
      expect(s.database.url).toBe('postgres://zotonic@127.0.0.1:5432/zotonic');
      expect(s.filestore.location).toEqual({ scheme: 'file', root: '/var/backups/tandem' });
      expect(s.keys).toEqual({ recipientFile: join(dir, 'keys/backup.agepub'), signingKeyFile: join(dir, 'keys/signing.key') });
      expect(s.server.tokenFile).toBe(join(dir, 'keys/control.token'));
      expect(s.standbys).toEqual([{ id: 'web2', tokenFile: join(dir, 'keys/standby-web2.token') }]);
      expect(s.onFenced).toBe('/usr/local/bin/maintenance-on');
    }
    // Per-site keys and overrides; mappings merged key by key.
    expect(www.database.schema).toBe('www');
    expect(www.database.passwordFile).toBe(join(dir, 'secrets/db.pass'));
    expect(www.compression).toEqual({ level: 5, threads: 1, files: 'auto' });
    expect(www.schedule).toBe('0 3 * * *');
    expect(www.paths).toEqual({ config: '/srv/www/priv', security: '/srv/www/security', files: '/srv/www/files', sentinel: '/srv/www/priv/BACKUP' });
    expect(www.stateDir).toBe(defaultStateDir('www'));
    expect(shop.database.schema).toBe('shop');
    expect(shop.database.passwordFile).toBe(join(dir, 'secrets/shop.pass'));
    expect(shop.compression).toEqual({ level: 5, threads: 4, files: 'auto' });
    expect(shop.schedule).toBe('30 2 * * *');
    expect(shop.paths).toEqual({ config: join(dir, 'shop/priv'), security: join(dir, 'shop/security'), files: '/srv/shop/files', sentinel: join(dir, 'shop/priv/BACKUP') });
    expect(shop.stateDir).toBe(join(dir, 'state/shop'));
  });

  it('standby: the same, with the standby keys; concurrency is the file\'s, not a site\'s', () => {
    const file = writeTree({ 'agent.yml': TWO_STANDBY_SITES });
    const dir = dirname(file);
    const all = loadStandbySites(file);
    expect(all.concurrency).toBe(3);
    const [www, shop] = all.sites as [StandbyConfig, StandbyConfig];
    expect(all.sites.map((s) => s.site)).toEqual(['www', 'shop']);
    expect('concurrency' in www).toBe(false);
    for (const s of [www, shop]) {
      expect(s.primary).toEqual({ url: 'ws://web1:7070', tokenFile: join(dir, 'keys/standby-web2.token'), tls: undefined });
      expect(s.pollInterval).toBe(300_000);
      expect(s.standbyId).toBe('web2');
      expect(s.keys).toEqual({ identityFile: join(dir, 'keys/backup.agekey'), verifyKeyFile: join(dir, 'keys/signing.pub') });
      expect(s.database.restoreJobs).toBe(4);
      expect(s.database.maintenanceDb).toBe('postgres');
    }
    expect(www.database.schema).toBe('www');
    expect(www.database.preserveSettings).toEqual([]);
    expect(www.config.preserve).toEqual(['config.d/db.yml']);
    expect(www.restartCommand).toBe('systemctl restart zotonic');
    expect(www.paths.sentinel).toBe('/srv/www/priv/BACKUP');
    expect(shop.database.schema).toBe('shop');
    expect(shop.database.preserveSettings).toEqual(['statement_timeout']);
    // A list is replaced, not appended to.
    expect(shop.config.preserve).toEqual(['config.d/*.yml', 'local.yml']);
    expect(shop.restartCommand).toBe('systemctl restart zotonic-shop');
    expect(shop.paths.sentinel).toBe(join(dir, 'shop.BACKUP'));
  });

  it('sitesDir: one site per *.yml / *.yaml file, in name order, after sites:; relative paths against the file that said them', () => {
    const file = writeTree({
      'agent.yml': `${STANDBY_SHARED}sites:\n  - { site: first, database: { schema: first }, paths: { config: /srv/first/priv, security: /srv/first/sec, files: /srv/first/files } }\nsitesDir: sites.d\n`,
      'sites.d/b-shop.yaml': 'site: shop\ndatabase: { schema: shop, passwordFile: ./shop.pass }\npaths: { config: ./shop/priv, security: ./shop/sec, files: ./shop/files }\n',
      'sites.d/a-www.yml': 'site: www\ndatabase: { schema: www }\npaths: { config: /srv/www/priv, security: /srv/www/sec, files: /srv/www/files }\nkeys: { verifyKeyFile: ./www-signing.pub }\n',
      'sites.d/README': 'not a site',
      'sites.d/.c.yml': 'site: hidden\n',
      'sites.d/old.yml.bak': 'site: old\n',
    });
    const dir = dirname(file);
    const sd = join(dir, 'sites.d');
    const { sites } = loadStandbySites(file);
    expect(sites.map((s) => s.site)).toEqual(['first', 'www', 'shop']);
    const [, www, shop] = sites as [StandbyConfig, StandbyConfig, StandbyConfig];
    expect(www.keys).toEqual({ identityFile: join(dir, 'keys/backup.agekey'), verifyKeyFile: join(sd, 'www-signing.pub') });
    expect(www.primary?.tokenFile).toBe(join(dir, 'keys/standby-web2.token'));
    expect(shop.database.passwordFile).toBe(join(sd, 'shop.pass'));
    expect(shop.paths).toEqual({ config: join(sd, 'shop/priv'), security: join(sd, 'shop/sec'), files: join(sd, 'shop/files'), sentinel: join(sd, 'shop/priv/BACKUP') });
    expect(shop.keys.verifyKeyFile).toBe(join(dir, 'keys/signing.pub'));
    expect(shop.configFile).toBe(file);
  });

  it('a one-site config is a list of one; concurrency may be said there too', () => {
    const one = loadPrimarySites(write(PRIMARY));
    expect(one.sites.map((s) => s.site)).toEqual(['demo']);
    expect(one.concurrency).toBe(2);
    expect(loadPrimarySites(write(`${PRIMARY}concurrency: 4\n`)).concurrency).toBe(4);
    const bad = thrownBy(() => loadPrimarySites(write(`${PRIMARY}concurrency: 17\n`)), { kind: 'config', code: 'CONFIG_INVALID' });
    expect(problemLines(bad.message)).toEqual([expect.stringMatching(/^concurrency: .*16/)]);
    const missing = thrownBy(() => loadPrimarySites(write(PRIMARY.replace('site: demo\n', ''))));
    expect(problemLines(missing.message)).toEqual([expect.stringMatching(/^site: required: the site's name \(for several sites in one file, list them under sites: or in the files of sitesDir:\)$/)]);
  });

  it('loadPrimaryConfig / loadStandbyConfig select a site: the only one, or the one named', () => {
    expect(loadPrimaryConfig(write(PRIMARY)).site).toBe('demo');
    expect(loadPrimaryConfig(write(PRIMARY), 'demo').site).toBe('demo');
    const two = writeTree({ 'agent.yml': TWO_PRIMARY_SITES });
    expect(loadPrimaryConfig(two, 'shop').database.schema).toBe('shop');
    expect(loadStandbyConfig(writeTree({ 'agent.yml': TWO_STANDBY_SITES }), 'www').database.schema).toBe('www');
    const err = thrownBy(() => loadPrimaryConfig(two, undefined, 'tandem-primary list'), { kind: 'config', code: 'USAGE' });
    expect(err.exitCode).toBe(2);
    expect(err.message).toBe(`tandem-primary list: ${two} holds 2 sites (www, shop): pass --site NAME to say which`);
  });
});

describe('selectSite', () => {
  const sites = [
    { site: 'www', configFile: '/etc/tandem/primary.yml' },
    { site: 'shop', configFile: '/etc/tandem/primary.yml' },
  ];

  it('gives the only site without a name, the named one with it', () => {
    expect(selectSite(sites.slice(0, 1), undefined, 'tandem-primary backup')).toBe(sites[0]);
    expect(selectSite(sites, 'shop', 'tandem-primary backup')).toBe(sites[1]);
  });

  it('several sites and no name: a usage error listing them and saying to pass --site NAME', () => {
    const err = thrownBy(() => selectSite(sites, undefined, 'tandem-standby apply'), { kind: 'config', code: 'USAGE' });
    expect(err.message).toBe('tandem-standby apply: /etc/tandem/primary.yml holds 2 sites (www, shop): pass --site NAME to say which');
    expect(err.hint).toContain('tandem-standby apply --site www');
  });

  it('a name the config does not hold: an error listing the names', () => {
    const err = thrownBy(() => selectSite(sites, 'blog', 'tandem-primary list'), { kind: 'config', code: 'UNKNOWN_SITE' });
    expect(err.exitCode).toBe(2);
    expect(err.message).toBe('tandem-primary list: --site "blog": /etc/tandem/primary.yml holds no such site; its sites are www, shop');
    const one = thrownBy(() => selectSite(sites.slice(0, 1), 'blog', 'tandem-primary list'));
    expect(one.message).toMatch(/holds no such site; its site is www$/);
  });
});

describe('several sites: problems, each with where it was said', () => {
  const primaryWith = (sites: string, extra = ''): string => writeTree({ 'agent.yml': `${PRIMARY_SHARED}${extra}sites:\n${sites}` });
  const WWW = '  - { site: www, database: { schema: www }, paths: { config: /srv/www/priv, security: /srv/www/sec, files: /srv/www/files } }\n';
  const SHOP = '  - { site: shop, database: { schema: shop }, paths: { config: /srv/shop/priv, security: /srv/shop/sec, files: /srv/shop/files } }\n';
  const problemsOf = (fn: () => unknown): string[] => problemLines(thrownBy(fn, { kind: 'config', code: 'CONFIG_INVALID' }).message);

  it('a top-level site: with sites: or sitesDir: names both keys', () => {
    expect(problemsOf(() => loadPrimarySites(primaryWith(WWW, 'site: www\n')))).toEqual([
      'site: a top-level site: (one site) and sites: (several) cannot both be said: move site: and the keys of that site into a site entry',
    ]);
    const file = writeTree({ 'agent.yml': `${PRIMARY_SHARED}site: www\nsitesDir: sites.d\n`, 'sites.d/shop.yml': SHOP.slice(4).replace(/^\{ |\}\n$/g, '').replace(/, (?=[a-z]+:)/g, '\n') });
    expect(problemsOf(() => loadPrimarySites(file))[0]).toMatch(/^site: a top-level site: \(one site\) and sitesDir: \(several\) cannot both be said/);
  });

  it.each([
    ['server', '{ listen: "127.0.0.1:7171" }'],
    ['standbys', '[{ id: web3, tokenFile: ./t }]'],
    ['heartbeatInterval', '10s'],
    ['filestore', '{ url: "file:///srv/other" }'],
  ])('primary: a site entry that says %s is told it is said once at the top level', (key, value) => {
    expect(problemsOf(() => loadPrimarySites(primaryWith(`${WWW}  - site: shop\n    ${key}: ${value}\n    database: { schema: shop }\n    paths: { config: /srv/shop/priv, security: /srv/shop/sec, files: /srv/shop/files }\n`)))).toEqual([
      `sites[1].${key}: said once, at the top level: it belongs to the agent, which serves every site of this file (move it out of the site entry)`,
    ]);
  });

  it.each([
    ['server', '{ listen: "127.0.0.1:7171" }'],
    ['primary', '{ url: "ws://web9:7070" }'],
    ['pollInterval', '1m'],
    ['standbyId', 'web3'],
    ['filestore', '{ url: "file:///srv/other" }'],
    ['heartbeatStaleAfter', '5m'],
  ])('standby: a site entry that says %s is told it is said once at the top level', (key, value) => {
    const file = writeTree({
      'agent.yml': `${STANDBY_SHARED}sitesDir: conf.d\n`,
      'conf.d/www.yml': `site: www\n${key}: ${value}\ndatabase: { schema: www }\npaths: { config: /srv/www/priv, security: /srv/www/sec, files: /srv/www/files }\n`,
    });
    expect(problemsOf(() => loadStandbySites(file))).toEqual([`conf.d/www.yml: ${key}: said once, at the top level: it belongs to the agent, which serves every site of this file (move it out of the site entry)`]);
  });

  it('names the entry (sites[N]. or the sitesDir file) of a problem it said, and the top level once for a shared one', () => {
    const file = writeTree({
      'agent.yml': `${PRIMARY_SHARED.replace('level: 5', 'level: 25')}sites:\n${WWW}  - { site: shop, database: { url: "mysql://x/zotonic", schema: shop }, paths: { config: /srv/shop/priv, security: /srv/shop/sec, files: 42 }, colour: blue }\n  - { database: { schema: blog }, paths: { config: /srv/blog/priv, security: /srv/blog/sec, files: /srv/blog/files } }\nsitesDir: sites.d\n`,
      'sites.d/b.yml': 'site: news\ndatabase: { url: "postgres://u:secret@127.0.0.1/zotonic", schema: news }\npaths: { config: /srv/news/priv, security: /srv/news/sec, files: /srv/news/files }\n',
      'sites.d/c.yml': 'site: [unclosed\n',
    });
    const problems = problemsOf(() => loadPrimarySites(file));
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^sites\[1\]\.database\.url: expected a postgres:\/\/ URL/),
        expect.stringMatching(/^sites\[1\]\.paths\.files: /),
        'sites[1].colour: unknown key (misspelt, or meant for the other agent?)',
        "sites[2].site: required: the site's name",
        expect.stringMatching(/^sites\.d\/b\.yml: database\.url: the URL contains a password/),
        expect.stringMatching(/^sites\.d\/c\.yml: not valid YAML: /),
        expect.stringMatching(/^compression\.level: /),
      ]),
    );
    // The shared problem once, though every site has it; nothing else.
    expect(problems.filter((p) => p.startsWith('compression.level'))).toHaveLength(1);
    expect(problems).toHaveLength(7);
    expect(thrownBy(() => loadPrimarySites(file)).message).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: 7 problems:`));
  });

  it('a shared key that is not a mapping, where site entries add keys to it, is named once at the top level', () => {
    const file = writeTree({ 'agent.yml': `${PRIMARY_SHARED.replace(/database:\n.*\n.*\n/, 'database: zotonic\n')}sites:\n${WWW}${SHOP}` });
    expect(problemsOf(() => loadPrimarySites(file))).toEqual(['database: expected a mapping of keys, which the database: of a site entry is merged into']);
  });

  it('an unset ${NAME} in a site entry is named at its entry', () => {
    const file = primaryWith(`${WWW}  - { site: shop, database: { url: "postgres://u@\${TANDEM_TEST_UNSET_HOST}/zotonic", schema: shop }, paths: { config: /srv/shop/priv, security: /srv/shop/sec, files: /srv/shop/files } }\n`);
    expect(problemsOf(() => loadPrimarySites(file))).toEqual([expect.stringMatching(/^sites\[1\]\.database\.url: environment variable TANDEM_TEST_UNSET_HOST is not set/)]);
  });

  it('a site without a key it needs is told at its entry, also when the top level would have it for others', () => {
    const file = writeTree({ 'agent.yml': `${PRIMARY_SHARED.replace(/database:\n.*\n.*\n/, '')}sites:\n${WWW.replace('schema: www', 'schema: www, url: "postgres://u@127.0.0.1/zotonic"')}${SHOP}` });
    expect(problemsOf(() => loadPrimarySites(file))).toEqual([expect.stringMatching(/^sites\[1\]\.database\.url: /)]);
  });

  it('a site name used twice', () => {
    expect(problemsOf(() => loadPrimarySites(primaryWith(`${WWW}${WWW.replace(/\/srv\/www/g, '/srv/www2').replace('schema: www', 'schema: www2')}`)))).toEqual([
      'sites[1].site: "www" is the name of sites[0] too: each site needs a name of its own',
    ]);
  });

  it('two sites with one state directory', () => {
    const problems = problemsOf(() => loadPrimarySites(primaryWith(`${WWW.replace('site: www,', 'site: www, stateDir: /var/lib/tandem/zotonic,')}${SHOP.replace('site: shop,', 'site: shop, stateDir: /var/lib/tandem/zotonic/,')}`)));
    expect(problems).toEqual(['sites[1].stateDir: /var/lib/tandem/zotonic is also the state directory of site "www" (sites[0]): each site needs its own (its lock, applied set and agent id live there)']);
  });

  it('two sites with one database target: the same schema, or a whole database another site uses too', () => {
    const sameSchema = primaryWith(`${WWW}${SHOP.replace('schema: shop', 'schema: www, url: "postgres://zotonic@127.0.0.1/zotonic"')}`);
    expect(problemsOf(() => loadPrimarySites(sameSchema))).toEqual([
      'sites[1].database.schema: schema "www" of database "zotonic" on 127.0.0.1:5432 is also that of site "www" (sites[0]): give each site a schema of its own',
    ]);
    const whole = primaryWith(`${WWW}${SHOP.replace('database: { schema: shop }', 'database: { url: "postgres://other@127.0.0.1:5432/zotonic" }')}`);
    expect(problemsOf(() => loadPrimarySites(whole))).toEqual([
      'sites[1].database: the whole database "zotonic" on 127.0.0.1:5432 (no database.schema) is also used by site "www" (sites[0]), schema "www": give each site its own database.schema, or its own database',
    ]);
    const firstWhole = primaryWith(`${WWW.replace('database: { schema: www }', 'database: {}')}${SHOP}`);
    expect(problemsOf(() => loadPrimarySites(firstWhole))).toEqual([
      'sites[1].database: database "zotonic" on 127.0.0.1:5432 is used whole by site "www" (sites[0]) (it has no database.schema): give that site its database.schema too, or this one its own database',
    ]);
    // Another database, or another server, is no conflict.
    expect(loadPrimarySites(primaryWith(`${WWW}${SHOP.replace('database: { schema: shop }', 'database: { url: "postgres://zotonic@127.0.0.1:5433/zotonic" }')}`)).sites).toHaveLength(2);
    expect(loadPrimarySites(primaryWith(`${WWW.replace('database: { schema: www }', 'database: {}')}${SHOP.replace('database: { schema: shop }', 'database: { url: "postgres://zotonic@127.0.0.1/shop" }')}`)).sites).toHaveLength(2);
  });

  it('directories of two sites that are the same or one inside the other', () => {
    const file = writeTree({
      'agent.yml': `${PRIMARY_SHARED}sites:\n${WWW}sitesDir: sites.d\n`,
      'sites.d/shop.yml': 'site: shop\ndatabase: { schema: shop }\npaths: { config: /srv/www/priv/shop, security: /srv/www/sec, files: /srv }\n',
    });
    expect(problemsOf(() => loadPrimarySites(file))).toEqual([
      expect.stringMatching(/^sites\.d\/shop\.yml: paths\.config: \/srv\/www\/priv\/shop is inside paths\.config \/srv\/www\/priv of site "www" \(sites\[0\]\): the directories of two sites must be apart/),
      expect.stringMatching(/^sites\.d\/shop\.yml: paths\.security: \/srv\/www\/sec is also paths\.security of site "www" \(sites\[0\]\)/),
      'sites.d/shop.yml: paths.files: /srv contains paths.config /srv/www/priv of site "www" (sites[0]): the directories of two sites must be apart (a backup of one would carry the other\'s files, an apply would replace them)',
      expect.stringMatching(/^sites\.d\/shop\.yml: paths\.files: \/srv contains paths\.security \/srv\/www\/sec of site "www"/),
      expect.stringMatching(/^sites\.d\/shop\.yml: paths\.files: \/srv contains paths\.files \/srv\/www\/files of site "www"/),
    ]);
  });

  it('what sites: and sitesDir: must be', () => {
    expect(problemsOf(() => loadPrimarySites(writeTree({ 'agent.yml': `${PRIMARY_SHARED}sites: www\n` })))).toEqual([
      'sites: expected a list of site entries, each a mapping with site: and the keys that differ for that site',
    ]);
    expect(problemsOf(() => loadPrimarySites(primaryWith(`${WWW}  - shop\n`)))).toEqual(['sites[1]: expected a mapping with site: and the keys that differ for that site']);
    expect(problemsOf(() => loadPrimarySites(writeTree({ 'agent.yml': `${PRIMARY_SHARED}sites: []\n` })))).toEqual([
      'sites: no site is configured (sites: lists none): give each site an entry (site: NAME and the keys that differ for it)',
    ]);
    const noDir = writeTree({ 'agent.yml': `${PRIMARY_SHARED}sitesDir: ./sites.d\n` });
    expect(problemsOf(() => loadPrimarySites(noDir))).toEqual([`sitesDir: ${join(dirname(noDir), 'sites.d')}: no such directory`]);
    const empty = writeTree({ 'agent.yml': `${PRIMARY_SHARED}sitesDir: sites.d\n`, 'sites.d/README': 'x' });
    expect(problemsOf(() => loadPrimarySites(empty))).toEqual([
      `sitesDir: no site is configured (sitesDir: ${join(dirname(empty), 'sites.d')} holds no *.yml or *.yaml file): give each site an entry (site: NAME and the keys that differ for it)`,
    ]);
    const misplaced = writeTree({ 'agent.yml': `${PRIMARY_SHARED}concurrency: 0\nsites:\n${WWW}${SHOP.replace('site: shop,', 'site: shop, concurrency: 4, sites: [],')}` });
    expect(problemsOf(() => loadPrimarySites(misplaced))).toEqual([
      expect.stringMatching(/^concurrency: .*1.* \(how many sites back up or apply at once\)$/),
      `sites[1].concurrency: said once, at the top level of ${misplaced}, not in a site entry`,
      `sites[1].sites: said once, at the top level of ${misplaced}, not in a site entry`,
    ]);
  });
});
