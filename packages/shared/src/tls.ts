import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { realpathSync, watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import { isIP, type createConnection as netCreateConnection } from 'node:net';
import { connect as tlsConnect, createSecureContext, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { TandemError, describeError } from './errors.js';
import type { Logger } from './logger.js';
import { readTrustedFile } from './trusted-file.js';

/**
 * TLS for the daemons (the push channel and /status cross the network between servers), loaded from
 * PEM files as pgBackRest's server and Patroni's REST API take them:
 *   - server.tls {certFile, keyFile, clientCaFile?}: the daemon's server speaks HTTPS/WSS only;
 *     with clientCaFile a client must present a certificate issued by that CA (mutual TLS), and
 *     still its token: TLS is in addition to the tokens, never instead.
 *   - primary.tls {caFile?, certFile?, keyFile?} on the standby: the CA its connections to the
 *     primary trust (default: the system's), and the client certificate they present.
 * Every file is read as readTrustedFile reads keys and tokens: owned by this agent's user or root,
 * not writable by others; a private key readable by group or others is warned about. Each file is
 * checked on its own (a PEM that does not parse, a key that is not the certificate's) so that an
 * error names the file and the key at fault.
 */
export interface ServerTlsConfig {
  certFile: string;
  keyFile: string;
  clientCaFile?: string;
}

export interface ClientTlsConfig {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
}

/** What a certificate is, for logs and status. */
export interface CertificateInfo {
  subject: string;
  serialNumber: string;
  fingerprint256: string;
  validFrom: string;
  validTo: string;
}

/** PEM text read from the files and checked: the options node:tls and ws take. */
export interface TlsMaterial {
  cert?: string;
  key?: string;
  ca?: string;
  /** The first certificate of `cert` (the leaf). */
  leaf?: CertificateInfo;
  /** Every file it was read from (watched for changes). */
  files: string[];
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

const fileHint = (key: string) =>
  `${key} must name a PEM file readable by this agent's user (owned by it or root, mode 0600 for a private key); see docs/operations.md, "TLS"`;

function readPem(file: string, key: string, what: string, secret: boolean, logger?: Logger): string {
  return readTrustedFile(file, { what, key, unreadableCode: 'TLS_FILE_UNREADABLE', hint: fileHint(key), secret, logger });
}

const badFile = (code: string, file: string, key: string, why: string, hint: string) => new TandemError('config', code, `${file} (${key}): ${why}`, { hint });

export function certificateInfo(c: X509Certificate): CertificateInfo {
  return { subject: c.subject.replace(/\n/g, ', '), serialNumber: c.serialNumber, fingerprint256: c.fingerprint256, validFrom: c.validFrom, validTo: c.validTo };
}

/** Every certificate of a PEM file (a chain or a CA bundle), the first one first. */
export function parseCertificates(pem: string, file: string, key: string): X509Certificate[] {
  const blocks = pem.match(PEM_CERT) ?? [];
  if (blocks.length === 0) {
    throw badFile('TLS_BAD_CERTIFICATE', file, key, 'no PEM certificate in it (expected "-----BEGIN CERTIFICATE-----")', 'point it at the certificate in PEM form, e.g. openssl x509 -in cert.der -inform der -out cert.pem');
  }
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      throw badFile('TLS_BAD_CERTIFICATE', file, key, `certificate ${i + 1} does not parse: ${describeError(err)}`, 'check the file: openssl x509 -noout -text -in FILE');
    }
  });
}

function parsePrivateKey(pem: string, file: string, key: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (err) {
    const encrypted = /ENCRYPTED/.test(pem) || /passphrase/i.test(describeError(err));
    throw badFile(
      'TLS_BAD_KEY',
      file,
      key,
      encrypted ? 'the private key is encrypted; tandem takes an unencrypted key (protected by its file mode)' : `not a PEM private key: ${describeError(err)}`,
      encrypted ? `openssl pkey -in ${file} -out ${file}.plain && chmod 600 ${file}.plain, then point ${key} at it` : 'check the file: openssl pkey -noout -in FILE',
    );
  }
}

function warnValidity(c: X509Certificate, file: string, key: string, logger?: Logger): void {
  const now = Date.now();
  if (Date.parse(c.validTo) < now) logger?.warn({ file, key, validTo: c.validTo }, `${key} ${file}: the certificate expired on ${c.validTo}; peers will refuse it`);
  else if (Date.parse(c.validFrom) > now) logger?.warn({ file, key, validFrom: c.validFrom }, `${key} ${file}: the certificate is not valid before ${c.validFrom}`);
}

/** A certificate (chain) and its key, checked to belong together. */
function certAndKey(certFile: string, keyFile: string, prefix: string, logger?: Logger): { cert: string; key: string; leaf: X509Certificate } {
  const cert = readPem(certFile, `${prefix}.certFile`, 'TLS certificate', false, logger);
  const leaf = parseCertificates(cert, certFile, `${prefix}.certFile`)[0]!;
  const key = readPem(keyFile, `${prefix}.keyFile`, 'TLS private key', true, logger);
  const keyObject = parsePrivateKey(key, keyFile, `${prefix}.keyFile`);
  if (!leaf.checkPrivateKey(keyObject)) {
    throw new TandemError('config', 'TLS_KEY_MISMATCH', `${keyFile} (${prefix}.keyFile) is not the private key of the certificate in ${certFile} (${prefix}.certFile)`, {
      hint: 'give the key the certificate was issued for; compare: openssl x509 -noout -pubkey -in CERT and openssl pkey -pubout -in KEY',
    });
  }
  warnValidity(leaf, certFile, `${prefix}.certFile`, logger);
  return { cert, key, leaf };
}

function caBundle(file: string, key: string, logger?: Logger): string {
  const ca = readPem(file, key, 'TLS CA file', false, logger);
  parseCertificates(ca, file, key);
  return ca;
}

/** What OpenSSL itself refuses (beyond the checks above), named by the files. */
function checkContext(m: TlsMaterial, prefix: string): void {
  try {
    createSecureContext({ cert: m.cert, key: m.key, ca: m.ca });
  } catch (err) {
    throw new TandemError('config', 'TLS_INVALID', `${prefix} (${m.files.join(', ')}): not usable for TLS: ${describeError(err)}`, { hint: fileHint(prefix) });
  }
}

/** The server's certificate, key and (mutual TLS) client CA, read and checked. */
export function loadServerTls(c: ServerTlsConfig, logger?: Logger, prefix = 'server.tls'): TlsMaterial {
  const { cert, key, leaf } = certAndKey(c.certFile, c.keyFile, prefix, logger);
  const ca = c.clientCaFile === undefined ? undefined : caBundle(c.clientCaFile, `${prefix}.clientCaFile`, logger);
  const m: TlsMaterial = { cert, key, ca, leaf: certificateInfo(leaf), files: [c.certFile, c.keyFile, ...(c.clientCaFile === undefined ? [] : [c.clientCaFile])] };
  checkContext(m, prefix);
  return m;
}

/** A client's CA to trust and client certificate, read and checked (each part optional). */
export function loadClientTls(c: ClientTlsConfig, logger?: Logger, prefix = 'primary.tls'): TlsMaterial {
  const m: TlsMaterial = { files: [] };
  if (c.caFile !== undefined) {
    m.ca = caBundle(c.caFile, `${prefix}.caFile`, logger);
    m.files.push(c.caFile);
  }
  if (c.certFile !== undefined && c.keyFile !== undefined) {
    const ck = certAndKey(c.certFile, c.keyFile, prefix, logger);
    m.cert = ck.cert;
    m.key = ck.key;
    m.leaf = certificateInfo(ck.leaf);
    m.files.push(c.certFile, c.keyFile);
  }
  checkContext(m, prefix);
  return m;
}

/** The options of node:tls / https / ws that `m` sets (nothing for what it leaves unset). */
export function tlsOptions(m: TlsMaterial): { cert?: string; key?: string; ca?: string } {
  return { ...(m.cert === undefined ? {} : { cert: m.cert }), ...(m.key === undefined ? {} : { key: m.key }), ...(m.ca === undefined ? {} : { ca: m.ca }) };
}

export interface ReloadingTlsOptions {
  /** The config key, for logs ("server.tls", "primary.tls"). */
  what: string;
  /** Reads and checks the files (loadServerTls, loadClientTls); throws naming the file at fault. */
  load(): TlsMaterial;
  logger: Logger;
  /** Takes a reloaded, changed material into use (e.g. server.setSecureContext); `current` is already the new one. */
  apply?(m: TlsMaterial): void;
  /** Watch the files' directories and reload when something in them changes (default true). */
  watch?: boolean;
  /** Quiet time after the last change before reloading (default 500 ms): a cert and key written one after the other are one reload. */
  debounceMs?: number;
}

const sameMaterial = (a: TlsMaterial, b: TlsMaterial) => a.cert === b.cert && a.key === b.key && a.ca === b.ca;

/**
 * TLS files kept current: loaded at construction (a bad file stops the start, named), reloaded on
 * request (SIGHUP) and when a file changes (the directories are watched: a file replaced by a
 * rename, or a symlink swapped as certbot and Kubernetes do, is seen too). A reload that fails (a
 * PEM that does not parse, a key that does not match, a file half-written) keeps what is in use and
 * logs an error naming the file; the next change or SIGHUP tries again.
 */
export class ReloadingTls {
  private material: TlsMaterial;
  private readonly watchers: FSWatcher[] = [];
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private readonly o: ReloadingTlsOptions) {
    this.material = o.load();
    if (o.watch !== false) this.watchFiles();
  }

  get current(): TlsMaterial {
    return this.material;
  }

  /** Reads the files again; true when they are in use now (changed or not), false when the old ones stay. */
  reload(trigger: string): boolean {
    const log = this.o.logger;
    let next: TlsMaterial;
    try {
      next = this.o.load();
    } catch (err) {
      log.error({ err, code: (err as TandemError).code, trigger, what: this.o.what }, `${this.o.what}: reload (${trigger}) failed, still using the certificate loaded before: ${describeError(err)}`);
      return false;
    }
    if (sameMaterial(next, this.material)) {
      log.debug({ trigger, what: this.o.what }, `${this.o.what}: files unchanged`);
      return true;
    }
    const before = this.material;
    this.material = next;
    try {
      this.o.apply?.(next);
    } catch (err) {
      this.material = before;
      log.error({ err, trigger, what: this.o.what }, `${this.o.what}: reload (${trigger}) failed, still using the certificate loaded before: ${describeError(err)}`);
      return false;
    }
    log.info(
      { trigger, what: this.o.what, serialNumber: next.leaf?.serialNumber ?? null, validTo: next.leaf?.validTo ?? null, files: next.files },
      `${this.o.what}: reloaded (${trigger})${next.leaf ? `: certificate serial ${next.leaf.serialNumber}, valid until ${next.leaf.validTo}` : ''}`,
    );
    return true;
  }

  private watchFiles(): void {
    const dirs = new Set<string>();
    for (const f of this.material.files) {
      dirs.add(dirname(f));
      try {
        dirs.add(dirname(realpathSync(f)));
      } catch {
        /* read a moment ago; the named directory is watched anyway */
      }
    }
    for (const dir of dirs) {
      try {
        const w = watch(dir, { persistent: false }, () => this.changed());
        w.on('error', (err) => this.o.logger.warn({ err, dir }, `${this.o.what}: stopped watching ${dir} for certificate changes; SIGHUP still reloads`));
        this.watchers.push(w);
      } catch (err) {
        this.o.logger.warn({ err, dir }, `${this.o.what}: cannot watch ${dir} for certificate changes (${describeError(err)}); SIGHUP reloads`);
      }
    }
  }

  private changed(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.closed) this.reload('file change');
    }, this.o.debounceMs ?? 500);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const w of this.watchers.splice(0)) w.close();
  }
}

/**
 * A client's TLS connection that notes when its handshake completed, for ws's (and node:http's)
 * `createConnection` option (wss:// only). Under TLS 1.3 a server refuses a client certificate
 * after the client considers the handshake done, and over a fast path the refusal often arrives as
 * a bare connection reset: a reset right after a completed handshake is how such a refusal looks
 * (describeTlsFailure's `afterHandshake`).
 */
export interface TrackedTlsConnect {
  /** Typed as ws and node:http type the option; it is called with the connection's options. */
  createConnection: typeof netCreateConnection;
  readonly handshakeDone: boolean;
}

export function trackTlsHandshake(): TrackedTlsConnect {
  let done = false;
  return {
    get handshakeDone() {
      return done;
    },
    createConnection: ((options: ConnectionOptions): TLSSocket => {
      const host = options.host ?? 'localhost';
      // As ws does: SNI with a host name, none with an IP address.
      const socket = tlsConnect({ ...options, path: undefined, servername: options.servername ?? (isIP(host) ? '' : host) } as ConnectionOptions);
      socket.once('secureConnect', () => {
        done = true;
      });
      return socket;
    }) as unknown as typeof netCreateConnection,
  };
}

/**
 * A TLS failure of a client connection, in words an operator can act on, or null when `err` is not
 * one. `url` is where it connected; `key` the client's config key ("primary.tls"); `afterHandshake`:
 * the TLS handshake had completed (trackTlsHandshake) when the connection failed.
 */
export function describeTlsFailure(err: unknown, url: string, key = 'primary.tls', ctx: { afterHandshake?: boolean } = {}): TandemError | null {
  const code = (err as NodeJS.ErrnoException | undefined)?.code ?? '';
  const message = describeError(err);
  if (ctx.afterHandshake === true && (code === 'ECONNRESET' || /socket hang up/.test(message))) {
    return new TandemError('config', 'TLS_CLIENT_CERTIFICATE_REFUSED', `${url} refused this client's TLS certificate: it closed the connection right after the TLS handshake, without an answer (${code || message}), as a server with mutual TLS does with a client certificate its CA did not issue`, {
      hint: `set ${key}.certFile and ${key}.keyFile to a client certificate issued by the CA in the server's server.tls.clientCaFile`,
    });
  }
  const untrusted = new Set([
    'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    'UNABLE_TO_GET_ISSUER_CERT',
    'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
    'SELF_SIGNED_CERT_IN_CHAIN',
    'DEPTH_ZERO_SELF_SIGNED_CERT',
    'CERT_SIGNATURE_FAILURE',
    'CERT_UNTRUSTED',
    'CERT_REJECTED',
  ]);
  if (untrusted.has(code)) {
    return new TandemError('config', 'TLS_UNTRUSTED_CERTIFICATE', `the certificate ${url} presented is not trusted (${code}: ${message})`, {
      hint: `set ${key}.caFile to the CA that issued the server's certificate (its server.tls.certFile)`,
    });
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    return new TandemError('config', 'TLS_CERTIFICATE_EXPIRED', `the certificate ${url} presented is ${code === 'CERT_HAS_EXPIRED' ? 'expired' : 'not valid yet'} (${message})`, {
      hint: "renew the server's certificate (server.tls.certFile there); it reloads on change or SIGHUP",
    });
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return new TandemError('config', 'TLS_CERTIFICATE_NAME', `the certificate ${url} presented does not name that host (${message})`, {
      hint: "the host in the URL must be in the certificate's subjectAltName (DNS or IP)",
    });
  }
  if (/^ERR_SSL_.*ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_EXPIRED|ACCESS_DENIED)$/.test(code)) {
    return new TandemError('config', 'TLS_CLIENT_CERTIFICATE_REFUSED', `${url} refused this client's TLS certificate (${code}): it requires one its CA issued (mutual TLS)`, {
      hint: `set ${key}.certFile and ${key}.keyFile to a client certificate issued by the CA in the server's server.tls.clientCaFile`,
    });
  }
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || code === 'EPROTO') {
    return new TandemError('config', 'TLS_FAILED', `TLS with ${url} failed (${code}: ${message})`, {
      hint: `does the URL's scheme match the server (wss:// or https:// for a server with server.tls)? check ${key}`,
    });
  }
  return null;
}
