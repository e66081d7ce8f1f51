import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { loadPrimaryConfig, parseConfigText, primaryConfigSchema } from './config.js';
import { expandEnvString } from './config-env.js';
import { removeTempDirs, tempDirSync, thrownBy } from './testing/helpers.js';

afterAll(removeTempDirs);

const PRIMARY = `
site: \${SITE}
database:
  url: postgres://\${PGUSER_NAME}@\${PGHOST_ADDR}:5432/demo
paths:
  config: /srv/demo/priv
  security: /srv/demo/security
  files: /srv/demo/files
filestore:
  url: "s3://\${BUCKET}/demo?region=eu-west-1"
keys:
  recipientFile: /etc/tandem/keys/backup.agepub
  signingKeyFile: /etc/tandem/keys/signing.key
compression:
  level: \${ZSTD_LEVEL}
`;

const ENV = { SITE: 'shop', PGUSER_NAME: 'tandem', PGHOST_ADDR: '10.0.0.5', BUCKET: 'backups', ZSTD_LEVEL: '9' };

const parse = (text: string, env: NodeJS.ProcessEnv) => parseConfigText(text, primaryConfigSchema, '/etc/tandem/primary.yml', undefined, env);

describe('${VAR} in config values', () => {
  it('replaces references in values, inside longer strings too, and types an unquoted value as YAML would', () => {
    const c = parse(PRIMARY, ENV);
    expect(c.site).toBe('shop');
    expect(c.database.url).toBe('postgres://tandem@10.0.0.5:5432/demo');
    expect(c.filestore.location).toMatchObject({ scheme: 's3', bucket: 'backups', region: 'eu-west-1' });
    expect(c.compression.level).toBe(9);
  });

  it('reports an unset variable with its name and key path, joined to the other problems, without the schema noise', () => {
    const err = thrownBy(() => parse(`${PRIMARY}encryption: maybe\n`, { ...ENV, SITE: undefined, BUCKET: undefined }));
    expect(err.kind).toBe('config');
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.message).toContain('/etc/tandem/primary.yml: 3 problems:');
    expect(err.message).toMatch(/^ {2}- site: environment variable SITE is not set \(the value refers to \$\{SITE\}/m);
    expect(err.message).toMatch(/^ {2}- filestore\.url: environment variable BUCKET is not set/m);
    expect(err.message).toMatch(/^ {2}- encryption: /m);
    // The unexpanded value is not also reported as a bad site name or URL.
    expect(err.message).not.toMatch(/site: expected a site name/);
    expect(err.message.match(/filestore\.url/g)).toHaveLength(1);
  });

  it('names list indexes in the key path', () => {
    const text = `${PRIMARY}standbys:\n  - id: web2\n    tokenFile: /k/web2.token\n  - id: web3\n    tokenFile: \${WEB3_TOKEN_FILE}\n`;
    expect(thrownBy(() => parse(text, ENV)).message).toMatch(/^ {2}- standbys\.1\.tokenFile: environment variable WEB3_TOKEN_FILE is not set/m);
    expect(parse(text, { ...ENV, WEB3_TOKEN_FILE: '/k/web3.token' }).standbys[1]).toEqual({ id: 'web3', tokenFile: '/k/web3.token' });
  });

  it('takes $${ as a literal ${, leaves other $ alone, and keeps a quoted value a string', () => {
    expect(expandEnvString('a$${B}c', {})).toEqual({ text: 'a${B}c', problems: [] });
    expect(expandEnvString('cost $5 and $HOME', { HOME: '/root' })).toEqual({ text: 'cost $5 and $HOME', problems: [] });
    expect(expandEnvString('${A}-${B}', { A: 'x', B: '' })).toEqual({ text: 'x-', problems: [] });
    expect(expandEnvString('${1X}', {}).problems[0]).toMatch(/"\$\{1X\}" is not a variable reference/);
    expect(expandEnvString('${A', { A: 'x' }).problems[0]).toMatch(/without a closing "\}"/);
    const err = thrownBy(() => parse(PRIMARY.replace('level: ${ZSTD_LEVEL}', 'level: "${ZSTD_LEVEL}"'), ENV));
    expect(err.message).toMatch(/compression\.level: .*number/);
    const literal = parse(PRIMARY.replace('  files: /srv/demo/files', () => '  files: /srv/$${literal}'), ENV);
    expect(literal.paths.files).toBe('/srv/${literal}');
  });

  it('never turns a value into structure, and never expands keys', () => {
    const err = thrownBy(() => parse(PRIMARY, { ...ENV, SITE: 'shop\nencryption: none' }));
    // The whole value (newline and all) is the site name: refused as one, no encryption key appears.
    expect(err.message).toMatch(/^ {2}- site: expected a site name/m);
    // A value that looks like YAML structure stays the one string it is.
    expect(parse(`${PRIMARY}onFenced: \${EVIL}\n`, { ...ENV, EVIL: '{ a: 1 }' }).onFenced).toBe('{ a: 1 }');
    const keyErr = thrownBy(() => parse(`${PRIMARY}\${SITE}: 1\n`, ENV));
    expect(keyErr.message).toContain('${SITE}: unknown key');
  });

  it('ignores references in comments', () => {
    expect(parse(`${PRIMARY}# onFenced: \${NOT_SET_ANYWHERE}\n`, ENV).site).toBe('shop');
  });
});

describe('loadPrimaryConfig and the process environment', () => {
  const saved = { ...process.env };
  afterEach(() => {
    for (const k of Object.keys(ENV)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  });

  it('reads the variables from the environment of the process', () => {
    Object.assign(process.env, ENV);
    const dir = tempDirSync('tandem-config-env-');
    const file = join(dir, 'primary.yml');
    writeFileSync(file, PRIMARY);
    expect(loadPrimaryConfig(file).site).toBe('shop');
    delete process.env.ZSTD_LEVEL;
    const err = thrownBy(() => loadPrimaryConfig(file));
    expect(err.message).toContain(`${file}: 1 problem:`);
    expect(err.message).toMatch(/compression\.level: environment variable ZSTD_LEVEL is not set/);
  });
});
