/**
 * TLS between the daemons, over real TLS with certificates made by `openssl`: the primary serves the
 * push channel and /status over HTTPS/WSS with mutual TLS (server.tls with clientCaFile), the
 * standby connects with primary.tls and serves its own /status over HTTPS. What an operator meets:
 * a standby that does not trust the primary's certificate, or whose client certificate the primary
 * refuses, says so in its status, and takes fixed files on SIGHUP; the primary's certificate is
 * rotated on SIGHUP and when its files change, and a bad new certificate leaves the old one
 * serving; tokens are still required; the commands beside each daemon reach it over TLS.
 */
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort, ensurePostgres, logRecords, requireCommands, runPrimary, sleep, startPrimary, tmpDir, waitFor, type RunningPrimary } from './support/site.js';
import { startStandbyDaemon, writeDaemonConfig, type RunningStandby } from './support/standby-daemon.js';
import { createStandbySite, removeStandbySite, runStandby, show, writeSitePrimaryConfig, type StandbySite } from './support/standby-helpers.js';
import { installCert, makeCa, serialHex, type CertFiles, type TestCa } from './support/tls-certs.js';
import { writeTokens, type TokenSet } from './support/tokens.js';

interface TlsClient {
  ca: string;
  cert?: string;
  key?: string;
}

type Answer = { status: number; body: string } | { error: string };

/** GET over HTTPS; resolves with the answer or the error code (never rejects). */
function httpsGet(listen: string, path: string, tls: TlsClient, token?: string): Promise<Answer> {
  const i = listen.lastIndexOf(':');
  return new Promise((resolve) => {
    const req = httpsRequest(
      {
        host: listen.slice(0, i),
        port: Number(listen.slice(i + 1)),
        path,
        method: 'GET',
        agent: false,
        ...tls,
        headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
        timeout: 5_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    req.end();
  });
}

/** The serial number of the certificate a new TLS connection is served. */
function servedSerial(port: number, tls: TlsClient): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername: 'localhost', ...tls }, () => {
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial);
    });
    socket.on('error', reject);
  });
}

const pem = (f: string) => readFile(f, 'utf8');

interface StandbyStatus {
  push: { connected: boolean; url: string; lastError: { code: string; message: string } | null } | null;
}

describe('TLS between the daemons (certificates from openssl, mutual TLS)', () => {
  let root: string;
  let s: StandbySite;
  let ca: TestCa;
  let other: TestCa;
  let tokens: TokenSet;
  let port: number;
  let primary: RunningPrimary | undefined;
  let standby: RunningStandby | undefined;
  /** What the primary serves (server.tls), replaced in place by the rotation steps. */
  let served: CertFiles;
  /** The standby's primary.tls files, replaced in place. */
  let trustFile: string;
  let clientFiles: CertFiles;
  /** A client of the primary with the right CA and a client certificate it issued. */
  let goodClient: TlsClient;
  let caPem: string;
  const primaryListen = () => `127.0.0.1:${port}`;

  const standbyStatus = async (): Promise<StandbyStatus> => {
    const r = await httpsGet(standby!.listen, '/status', { ca: caPem }, tokens.standbys['standby-1']!.token);
    if (!('status' in r) || r.status !== 200) throw new Error(`standby /status: ${JSON.stringify(r)}`);
    return JSON.parse(r.body) as StandbyStatus;
  };

  beforeAll(async () => {
    requireCommands(['openssl', 'age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-tls-');
    s = await createStandbySite(root);
    ca = await makeCa(join(root, 'pki'), 'tandem-test-ca');
    other = await makeCa(join(root, 'pki-other'), 'some-other-ca');
    caPem = await pem(ca.cert);
    tokens = await writeTokens(join(root, 'tokens'), 'tls', ['standby-1']);
    port = await closedPort();

    // The primary's served certificate (serial 0x1001), in a directory of its own.
    const servedDir = join(root, 'served');
    await mkdir(servedDir, { mode: 0o700 });
    served = { cert: join(servedDir, 'primary.crt'), key: join(servedDir, 'primary.key') };
    await installCert(await ca.issue('server-1001', { serial: 0x1001, kind: 'server' }), served);
    const standbyServer = await ca.issue('standby-server', { serial: 0x5005, kind: 'server' });
    const good = await ca.issue('client-standby-1', { serial: 0x7007, kind: 'client' });
    goodClient = { ca: caPem, cert: await pem(good.cert), key: await pem(good.key) };

    // The standby starts trusting the wrong CA and holding a client certificate the primary does not accept.
    const clientDir = join(root, 'client');
    await mkdir(clientDir, { mode: 0o700 });
    trustFile = join(clientDir, 'primary-ca.crt');
    clientFiles = { cert: join(clientDir, 'client.crt'), key: join(clientDir, 'client.key') };
    await writeFile(trustFile, await pem(other.cert));
    await installCert(await other.issue('client-from-other-ca', { serial: 0x6006, kind: 'client' }), clientFiles);

    await writeSitePrimaryConfig(s, s.primary.configFile, {
      schedule: '0 0 1 1 *',
      timezone: 'UTC',
      heartbeatInterval: '1s',
      server: { ...tokens.primaryServer(primaryListen()), tls: { certFile: served.cert, keyFile: served.key, clientCaFile: ca.cert } },
      standbys: tokens.primaryStandbys(),
    });
    await writeDaemonConfig(s, s.standby.configFile, {
      pollInterval: '60s',
      standbyId: 'standby-1',
      primary: { url: `wss://127.0.0.1:${port}`, tokenFile: tokens.standbys['standby-1']!.file },
    });
    const doc = fromYaml(await readFile(s.standby.configFile, 'utf8')) as { primary: Record<string, unknown>; server: Record<string, unknown> };
    doc.primary.tls = { caFile: trustFile, certFile: clientFiles.cert, keyFile: clientFiles.key };
    doc.server.tls = { certFile: standbyServer.cert, keyFile: standbyServer.key };
    // A filestore of its own, empty: this standby applies nothing (the push channel is what is tested).
    await mkdir(join(root, 'standby-store'));
    (doc as Record<string, unknown>).filestore = { url: `file://${join(root, 'standby-store')}` };
    await writeFile(s.standby.configFile, toYaml(doc));
  });

  afterAll(async () => {
    for (const d of [standby, primary]) {
      if (d && d.child.exitCode === null && d.child.signalCode === null) {
        d.child.kill('SIGKILL');
        await d.result;
      }
    }
    await removeStandbySite(s, root);
  });

  it('serves the push channel over WSS; a standby says what is wrong with its certificates and takes fixed ones on SIGHUP', async () => {
    primary = startPrimary(['run', '--config', s.primary.configFile], { timeoutMs: 300_000 });
    await waitFor(async () => {
      const r = await httpsGet(primaryListen(), '/healthz', goodClient);
      return 'status' in r && r.status === 200;
    }, 'the primary daemon to serve HTTPS', 30_000, 50);

    standby = await startStandbyDaemon(s.standby.configFile, s.standby.stateDir);
    // It does not trust the primary's certificate (primary.tls.caFile is another CA's).
    let st = await waitFor(async () => {
      const x = await standbyStatus();
      return x.push?.lastError?.code === 'TLS_UNTRUSTED_CERTIFICATE' ? x : null;
    }, 'the standby to report the untrusted certificate');
    expect(st.push!.connected).toBe(false);
    expect(st.push!.url).toMatch(/^wss:\/\/127\.0\.0\.1:\d+\/v1\/stream$/);
    expect(st.push!.lastError!.message).toMatch(/certificate .* is not trusted/);
    // `tandem-standby status` beside the daemon reaches it over TLS and shows the same.
    const cli = await runStandby(['status', '--config', s.standby.configFile]);
    expect(cli.stdout, show(cli)).toMatch(/push channel\s+DOWN since .*is not trusted/);

    // The right CA, SIGHUP: now the primary refuses the client certificate (another CA issued it).
    await writeFile(trustFile, caPem);
    standby.child.kill('SIGHUP');
    st = await waitFor(async () => {
      const x = await standbyStatus();
      return x.push?.lastError?.code === 'TLS_CLIENT_CERTIFICATE_REFUSED' ? x : null;
    }, 'the standby to report its refused client certificate');
    expect(st.push!.lastError!.message).toMatch(/refused this client's TLS certificate/);

    // A client certificate the primary's client CA issued, SIGHUP: connected.
    await installCert(await ca.issue('client-standby-1b', { serial: 0x7008, kind: 'client' }), clientFiles);
    standby.child.kill('SIGHUP');
    await waitFor(async () => (await standbyStatus()).push?.connected === true, 'the push channel to connect over WSS');
    const r = await httpsGet(primaryListen(), '/status', goodClient, tokens.read.token);
    expect('status' in r && r.status, JSON.stringify(r)).toBe(200);
    const ps = JSON.parse((r as { body: string }).body) as { standbys: Array<{ standbyId: string | null }> };
    expect(ps.standbys.map((x) => x.standbyId)).toContain('standby-1');
    expect(standby.child.exitCode, 'SIGHUP must not stop the standby').toBeNull();
    expect(logRecords(standby.stderrSoFar()).some((l) => /^primary\.tls: reloaded \(SIGHUP\)/.test(String(l.msg)))).toBe(true);
  });

  it('still wants a token, and refuses a client without a certificate its CA issued', async () => {
    const noToken = await httpsGet(primaryListen(), '/status', goodClient);
    expect('status' in noToken && noToken.status).toBe(401);
    const noCert = await httpsGet(primaryListen(), '/status', { ca: caPem }, tokens.read.token);
    expect('error' in noCert, JSON.stringify(noCert)).toBe(true);
    expect((noCert as { error: string }).error).toMatch(/CERTIFICATE_REQUIRED|ECONNRESET|socket hang up/i);
    const standbysCert = { ca: caPem, cert: await pem(clientFiles.cert), key: await pem(clientFiles.key) };
    expect(await httpsGet(primaryListen(), '/healthz', standbysCert)).toEqual({ status: 200, body: 'ok\n' });
    const wrongCa = await other.issue('client-wrong', { serial: 0x6007, kind: 'client' });
    const refused = await httpsGet(primaryListen(), '/healthz', { ca: caPem, cert: await pem(wrongCa.cert), key: await pem(wrongCa.key) });
    expect('error' in refused, JSON.stringify(refused)).toBe(true);
    // The standby's own /status is HTTPS too, with its token.
    const sb = await httpsGet(standby!.listen, '/status', { ca: caPem });
    expect('status' in sb && sb.status).toBe(401);
  });

  it('rotates the certificate on SIGHUP and when the files change; a bad one leaves the old one serving', async () => {
    expect(await servedSerial(port, goodClient)).toBe(serialHex(0x1001));

    await installCert(await ca.issue('server-2002', { serial: 0x2002, kind: 'server' }), served);
    primary!.child.kill('SIGHUP');
    await waitFor(async () => (await servedSerial(port, goodClient)) === serialHex(0x2002), 'the new certificate after SIGHUP', 10_000, 50);
    // The log line may reach stderr a moment after the new certificate is served.
    await waitFor(() => logRecords(primary!.stderrSoFar()).some((l) => String(l.msg).startsWith('server.tls: reloaded (SIGHUP): certificate serial 2002')) || undefined, 'the reload is logged', 10_000, 50);

    // No signal: the files' change is enough.
    await installCert(await ca.issue('server-3003', { serial: 0x3003, kind: 'server' }), served);
    await waitFor(async () => (await servedSerial(port, goodClient)) === serialHex(0x3003), 'the new certificate after the files changed', 10_000, 50);

    // A certificate that does not parse: the old one keeps serving, the error names the file.
    const before = primary!.stderrSoFar().length;
    await writeFile(served.cert, 'this is not a certificate\n');
    primary!.child.kill('SIGHUP');
    const failed = await waitFor(
      () => logRecords(primary!.stderrSoFar().slice(before)).find((l) => l.level === 50 && /server\.tls: reload \(SIGHUP\) failed/.test(String(l.msg))),
      'the failed reload to be logged',
      10_000,
    );
    expect(String(failed.msg)).toContain(`${served.cert} (server.tls.certFile): no PEM certificate in it`);
    // A certificate with another key: refused too.
    const mismatched = await ca.issue('server-4004', { serial: 0x4004, kind: 'server' });
    await writeFile(served.cert, await pem(mismatched.cert));
    await sleep(1_500); // past the change debounce
    expect(primary!.stderrSoFar().slice(before)).toMatch(/is not the private key of the certificate in/);
    expect(await servedSerial(port, goodClient)).toBe(serialHex(0x3003));
    expect(primary!.child.exitCode, 'a bad certificate must not stop the daemon').toBeNull();
    expect((await standbyStatus()).push?.connected).toBe(true);

    // Fixed again: served at once on SIGHUP.
    await installCert(mismatched, served);
    primary!.child.kill('SIGHUP');
    await waitFor(async () => (await servedSerial(port, goodClient)) === serialHex(0x4004), 'the fixed certificate', 10_000, 50);
  });

  it('lets `tandem-primary backup` reach the TLS daemon, which makes the set', async () => {
    const r = await runPrimary(['backup', '--config', s.primary.configFile], { timeoutMs: 120_000 });
    expect(r.code, show(r)).toBe(0);
    const recs = logRecords(r.stderr);
    expect(recs.some((l) => /a tandem-primary daemon is running: it makes the backup/.test(String(l.msg))), show(r)).toBe(true);
    expect(recs.some((l) => /backing up locally/.test(String(l.msg))), show(r)).toBe(false);
  });

  it('lets both `check` commands reach the TLS daemon: the push line ok with primary.tls, the certificate failure named with a wrong CA', async () => {
    /** The status and detail of one check line of a human report. */
    const checkLine = (stdout: string, name: string) => {
      const m = new RegExp(`^(ok|warn|FAIL|skip) {2,}${name} {2,}(.*)$`, 'm').exec(stdout);
      return m === null ? null : { status: m[1]!, detail: m[2]! };
    };
    // The standby's check dials wss:// with its primary.tls (CA, client certificate), as its push client does.
    const good = await runStandby(['check', '--config', s.standby.configFile]);
    expect(checkLine(good.stdout, 'push'), show(good)).toEqual({
      status: 'ok',
      detail: expect.stringMatching(new RegExp(`^wss://127\\.0\\.0\\.1:${port}/v1/stream: the primary accepted the token and said hello \\(site ${s.site},`)),
    });

    // Trusting another CA: the push line names the certificate, not a bare connection failure.
    const sdoc = fromYaml(await readFile(s.standby.configFile, 'utf8')) as { primary: { tls: Record<string, string> } };
    const wrongCaFile = join(root, 'client', 'wrong-ca.crt');
    await writeFile(wrongCaFile, await pem(other.cert));
    sdoc.primary.tls.caFile = wrongCaFile;
    const wrongConf = join(root, 'standby-check-wrong-ca.yml');
    await writeFile(wrongConf, toYaml(sdoc));
    const bad = await runStandby(['check', '--config', wrongConf]);
    expect(bad.code, show(bad)).toBe(1);
    expect(checkLine(bad.stdout, 'push'), show(bad)).toEqual({ status: 'FAIL', detail: expect.stringMatching(new RegExp(`^the certificate the primary at wss://127\\.0\\.0\\.1:${port}/v1/stream presented is not trusted \\([A-Z_]+: `)) });
    expect(bad.stdout).toMatch(/hint: set primary\.tls\.caFile to the CA that issued the server's certificate/);

    // The primary's check finds its own daemon over TLS (with its server.tls, mutual TLS included).
    const p = await runPrimary(['check', '--config', s.primary.configFile], { timeoutMs: 60_000 });
    expect(checkLine(p.stdout, 'listen'), show(p)).toEqual({ status: 'ok', detail: expect.stringMatching(new RegExp(`^the daemon \\(pid ${primary!.child.pid}\\) serves 127\\.0\\.0\\.1:${port}$`)) });
  });

  it('refuses to start with a key file others can write, or a CA file that is not there, naming it', async () => {
    const loose = join(root, 'served', 'loose.key');
    await writeFile(loose, await pem(served.key));
    await chmod(loose, 0o666);
    const pdoc = fromYaml(await readFile(s.primary.configFile, 'utf8')) as { server: { tls: Record<string, string> } };
    pdoc.server.tls.keyFile = loose;
    const pconf = join(root, 'primary-loose.yml');
    await writeFile(pconf, toYaml(pdoc));
    const p = await runPrimary(['run', '--config', pconf]);
    expect(p.code, show(p)).toBe(2);
    expect(p.stderr).toContain(`TLS private key ${loose} (server.tls.keyFile): it can be written by group or others (mode 0666)`);

    const sdoc = fromYaml(await readFile(s.standby.configFile, 'utf8')) as { primary: { tls: Record<string, string> }; stateDir: string };
    sdoc.primary.tls.caFile = join(root, 'client', 'missing-ca.crt');
    sdoc.stateDir = join(root, 'standby-state-2'); // the running daemon holds the first one
    const sconf = join(root, 'standby-missing-ca.yml');
    await writeFile(sconf, toYaml(sdoc));
    const sb = await runStandby(['run', '--config', sconf]);
    expect(sb.code, show(sb)).toBe(2);
    expect(sb.stderr).toContain(`TLS CA file ${join(root, 'client', 'missing-ca.crt')} (primary.tls.caFile): no such file`);
  });

  it('both daemons stop cleanly', async () => {
    const sr = await standby!.stop('SIGTERM');
    expect(sr.code, show(sr)).toBe(0);
    primary!.child.kill('SIGTERM');
    const pr = await primary!.result;
    expect(pr.code, show(pr)).toBe(0);
    await rm(join(root, 'pki-other'), { recursive: true, force: true });
  });
});
