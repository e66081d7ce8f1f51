import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadStandbyConfig, loadPrimaryConfig } from './config.js';
import type { Logger } from './logger.js';
import { ReloadingTls, describeTlsFailure, loadClientTls, loadServerTls, tlsOptions, type TlsMaterial } from './tls.js';
import { removeTempDirs, tempDirSync, thrownBy } from './testing/helpers.js';

afterAll(removeTempDirs);

/** Certificates made with the real openssl: a CA, two server certificates (serials 0x11, 0x22), a client certificate. */
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
const openssl = (args: string[], cwd: string) => execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });

function issue(dir: string, name: string, serial: number): void {
  openssl(['req', '-new', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`], dir);
  writeFileSync(join(dir, `${name}.ext`), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', String(serial), '-days', '2', '-out', `${name}.crt`, '-extfile', `${name}.ext`], dir);
  chmodSync(join(dir, `${name}.key`), 0o600);
}

let pki: string;
const f = (name: string) => join(pki, name);

function capture(): Logger & { lines: Array<{ level: string; msg: string }> } {
  const lines: Array<{ level: string; msg: string }> = [];
  const at = (level: string) => (_o: object, msg?: string) => void lines.push({ level, msg: msg ?? '' });
  return { lines, warn: at('warn'), error: at('error'), info: at('info'), debug: at('debug') } as never;
}

/** A directory (0700) with copies of the named files, for tests that change them. */
function workDir(files: Record<string, string>): string {
  const dir = tempDirSync('tandem-tls-work-');
  for (const [to, from] of Object.entries(files)) {
    copyFileSync(f(from), join(dir, to));
    chmodSync(join(dir, to), 0o600);
  }
  return dir;
}

beforeAll(() => {
  pki = tempDirSync('tandem-tls-unit-');
  openssl(['req', '-x509', ...EC, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=unit CA'], pki);
  issue(pki, 'one', 0x11);
  issue(pki, 'two', 0x22);
  issue(pki, 'client', 0x33);
  openssl(['pkey', '-in', 'one.key', '-aes256', '-passout', 'pass:secret', '-out', 'one-encrypted.key'], pki);
  chmodSync(f('one-encrypted.key'), 0o600);
  writeFileSync(f('garbage.crt'), 'not a certificate\n');
});

describe('loading TLS files', () => {
  it('loads a certificate, its key and a client CA, and says what the certificate is', () => {
    const m = loadServerTls({ certFile: f('one.crt'), keyFile: f('one.key'), clientCaFile: f('ca.crt') });
    expect(m.leaf?.serialNumber).toBe('11');
    expect(m.files).toEqual([f('one.crt'), f('one.key'), f('ca.crt')]);
    expect(tlsOptions(m)).toEqual({ cert: readFileSync(f('one.crt'), 'utf8'), key: readFileSync(f('one.key'), 'utf8'), ca: readFileSync(f('ca.crt'), 'utf8') });
    expect(tlsOptions(loadClientTls({ caFile: f('ca.crt') }))).toEqual({ ca: readFileSync(f('ca.crt'), 'utf8') });
  });

  it('names the file and the key at fault', () => {
    expect(thrownBy(() => loadServerTls({ certFile: f('garbage.crt'), keyFile: f('one.key') }), { kind: 'config', code: 'TLS_BAD_CERTIFICATE' }).message).toBe(
      `${f('garbage.crt')} (server.tls.certFile): no PEM certificate in it (expected "-----BEGIN CERTIFICATE-----")`,
    );
    const mismatch = thrownBy(() => loadServerTls({ certFile: f('one.crt'), keyFile: f('two.key') }), { code: 'TLS_KEY_MISMATCH' });
    expect(mismatch.message).toBe(`${f('two.key')} (server.tls.keyFile) is not the private key of the certificate in ${f('one.crt')} (server.tls.certFile)`);
    const encrypted = thrownBy(() => loadServerTls({ certFile: f('one.crt'), keyFile: f('one-encrypted.key') }), { code: 'TLS_BAD_KEY' });
    expect(encrypted.message).toMatch(/\(server\.tls\.keyFile\): the private key is encrypted/);
    expect(encrypted.hint).toMatch(/openssl pkey -in /);
    expect(thrownBy(() => loadClientTls({ caFile: f('nope.crt') }), { code: 'TLS_FILE_UNREADABLE' }).message).toBe(`TLS CA file ${f('nope.crt')} (primary.tls.caFile): no such file`);
    expect(thrownBy(() => loadServerTls({ certFile: f('one.crt'), keyFile: f('one.key'), clientCaFile: f('garbage.crt') })).message).toMatch(/\(server\.tls\.clientCaFile\): no PEM certificate/);
  });

  it('checks key files as it checks other secrets: refused when others may write, warned when others may read', () => {
    const dir = workDir({ 'c.crt': 'one.crt', 'c.key': 'one.key' });
    chmodSync(join(dir, 'c.key'), 0o644);
    const log = capture();
    loadServerTls({ certFile: join(dir, 'c.crt'), keyFile: join(dir, 'c.key') }, log);
    expect(log.lines).toEqual([{ level: 'warn', msg: 'TLS private key is readable by group or others; chmod 600 it' }]);
    chmodSync(join(dir, 'c.key'), 0o666);
    const err = thrownBy(() => loadServerTls({ certFile: join(dir, 'c.crt'), keyFile: join(dir, 'c.key') }), { code: 'FILE_UNSAFE' });
    expect(err.message).toMatch(/^TLS private key .*c\.key \(server\.tls\.keyFile\): it can be written by group or others \(mode 0666\)/);
  });
});

describe('reloading TLS files', () => {
  let open: ReloadingTls[] = [];
  afterEach(() => {
    for (const r of open) r.close();
    open = [];
  });

  it('reloads on request; a bad file keeps what is in use and logs the file', () => {
    const dir = workDir({ 'c.crt': 'one.crt', 'c.key': 'one.key' });
    const cfg = { certFile: join(dir, 'c.crt'), keyFile: join(dir, 'c.key') };
    const log = capture();
    const applied: TlsMaterial[] = [];
    const r = new ReloadingTls({ what: 'server.tls', load: () => loadServerTls(cfg, log), logger: log, apply: (m) => applied.push(m), watch: false });
    open.push(r);
    expect(r.current.leaf?.serialNumber).toBe('11');

    writeFileSync(cfg.certFile, readFileSync(f('two.crt'))); // the new certificate, the old key
    expect(r.reload('SIGHUP')).toBe(false);
    expect(r.current.leaf?.serialNumber).toBe('11');
    expect(applied).toEqual([]);
    expect(log.lines.at(-1)).toMatchObject({ level: 'error' });
    expect(log.lines.at(-1)!.msg).toContain(`server.tls: reload (SIGHUP) failed, still using the certificate loaded before: ${cfg.keyFile} (server.tls.keyFile) is not the private key`);

    writeFileSync(cfg.keyFile, readFileSync(f('two.key')));
    expect(r.reload('SIGHUP')).toBe(true);
    expect(r.current.leaf?.serialNumber).toBe('22');
    expect(applied.map((m) => m.leaf?.serialNumber)).toEqual(['22']);
    expect(log.lines.at(-1)!.msg).toMatch(/^server\.tls: reloaded \(SIGHUP\): certificate serial 22, valid until /);
    // Nothing changed: nothing applied again.
    expect(r.reload('SIGHUP')).toBe(true);
    expect(applied).toHaveLength(1);
  });

  it('reloads by itself when the files are replaced (a rename into place too)', async () => {
    const dir = workDir({ 'c.crt': 'one.crt', 'c.key': 'one.key' });
    const cfg = { certFile: join(dir, 'c.crt'), keyFile: join(dir, 'c.key') };
    const log = capture();
    const applied: string[] = [];
    const r = new ReloadingTls({ what: 'server.tls', load: () => loadServerTls(cfg, log), logger: log, apply: (m) => applied.push(m.leaf!.serialNumber), debounceMs: 100 });
    open.push(r);
    writeFileSync(join(dir, 'new.key'), readFileSync(f('two.key')), { mode: 0o600 });
    writeFileSync(join(dir, 'new.crt'), readFileSync(f('two.crt')));
    execFileSync('mv', [join(dir, 'new.key'), cfg.keyFile]);
    execFileSync('mv', [join(dir, 'new.crt'), cfg.certFile]);
    const deadline = Date.now() + 5_000;
    while (applied.length === 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    expect(applied).toEqual(['22']);
    expect(log.lines.at(-1)!.msg).toMatch(/^server\.tls: reloaded \(file change\)/);
  });
});

describe('TLS failures in words', () => {
  const err = (code: string, message = code) => Object.assign(new Error(message), { code });

  it.each([
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'TLS_UNTRUSTED_CERTIFICATE', /primary\.tls\.caFile/],
    ['SELF_SIGNED_CERT_IN_CHAIN', 'TLS_UNTRUSTED_CERTIFICATE', /primary\.tls\.caFile/],
    ['CERT_HAS_EXPIRED', 'TLS_CERTIFICATE_EXPIRED', /renew/],
    ['ERR_TLS_CERT_ALTNAME_INVALID', 'TLS_CERTIFICATE_NAME', /subjectAltName/],
    ['ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'TLS_CLIENT_CERTIFICATE_REFUSED', /primary\.tls\.certFile and primary\.tls\.keyFile/],
    ['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'TLS_CLIENT_CERTIFICATE_REFUSED', /server\.tls\.clientCaFile/],
    ['ERR_SSL_WRONG_VERSION_NUMBER', 'TLS_FAILED', /wss:\/\//],
  ])('%s is %s', (code, ours, hint) => {
    const e = describeTlsFailure(err(code), 'the primary at wss://web1:7070/v1/stream');
    expect(e?.code).toBe(ours);
    expect(e?.message).toContain('wss://web1:7070/v1/stream');
    expect(e?.hint).toMatch(hint);
  });

  it('takes a reset right after the handshake for a refused client certificate, and nothing else', () => {
    expect(describeTlsFailure(err('ECONNRESET', 'socket hang up'), 'x', 'primary.tls', { afterHandshake: true })?.code).toBe('TLS_CLIENT_CERTIFICATE_REFUSED');
    expect(describeTlsFailure(err('ECONNRESET', 'socket hang up'), 'x')).toBeNull();
    expect(describeTlsFailure(err('ECONNREFUSED'), 'x', 'primary.tls', { afterHandshake: true })).toBeNull();
  });
});

describe('TLS in the configs', () => {
  const write = (text: string) => {
    const dir = tempDirSync('tandem-tls-config-');
    const file = join(dir, 'agent.yml');
    writeFileSync(file, text);
    return file;
  };
  const PRIMARY = `site: demo
database: { url: "postgres://postgres@127.0.0.1/demo" }
paths: { config: /srv/c, security: /srv/s, files: /srv/f }
filestore: { url: "file:///var/backups/tandem" }
encryption: none
keys: { signingKeyFile: /k/signing.key }
`;
  const STANDBY = `site: demo
database: { url: "postgres://postgres@127.0.0.1/demo" }
paths: { config: /srv/c, security: /srv/s, files: /srv/f }
filestore: { url: "file:///var/backups/tandem" }
encryption: none
keys: { verifyKeyFile: /k/signing.pub }
`;

  it('reads server.tls on both agents and primary.tls on the standby, paths relative to the config file', () => {
    const p = write(`${PRIMARY}server:\n  tls: { certFile: tls/web1.crt, keyFile: tls/web1.key, clientCaFile: /etc/tandem/tls/ca.crt }\n`);
    expect(loadPrimaryConfig(p).server.tls).toEqual({ certFile: join(p, '..', 'tls/web1.crt'), keyFile: join(p, '..', 'tls/web1.key'), clientCaFile: '/etc/tandem/tls/ca.crt' });
    const s = write(`${STANDBY}primary:\n  url: wss://web1:7070\n  tls: { caFile: ca.crt, certFile: web2.crt, keyFile: web2.key }\nserver:\n  tls: { certFile: web2.crt, keyFile: web2.key }\n`);
    const c = loadStandbyConfig(s);
    expect(c.primary?.tls).toEqual({ caFile: join(s, '..', 'ca.crt'), certFile: join(s, '..', 'web2.crt'), keyFile: join(s, '..', 'web2.key') });
    expect(c.server.tls).toMatchObject({ certFile: join(s, '..', 'web2.crt'), keyFile: join(s, '..', 'web2.key') });
    expect(loadStandbyConfig(write(`${STANDBY}primary: { url: "https://web1:7070", tls: { caFile: ca.crt } }\n`)).primary?.url).toBe('https://web1:7070');
  });

  it('refuses TLS settings with a plain URL, half a client certificate, and a server.tls without its key', () => {
    const plain = thrownBy(() => loadStandbyConfig(write(`${STANDBY}primary: { url: "ws://web1:7070", tls: { caFile: ca.crt } }\n`)), { code: 'CONFIG_INVALID' });
    expect(plain.message).toMatch(/^ {2}- primary\.tls: TLS settings with a plain ws:\/\/ primary\.url would never be used: make primary\.url wss:\/\//m);
    const half = thrownBy(() => loadStandbyConfig(write(`${STANDBY}primary: { url: "wss://web1:7070", tls: { certFile: c.crt } }\n`)));
    expect(half.message).toMatch(/^ {2}- primary\.tls\.keyFile: required with certFile/m);
    const noKey = thrownBy(() => loadPrimaryConfig(write(`${PRIMARY}server: { tls: { certFile: c.crt, clientCa: ca.crt } }\n`)));
    expect(noKey.message).toMatch(/^ {2}- server\.tls\.keyFile: /m);
    expect(noKey.message).toMatch(/^ {2}- server\.tls\.clientCa: unknown key/m);
  });
});
