import type { ClientRequestArgs, IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { TandemError, describeError } from './errors.js';
import type { Logger } from './logger.js';
import { HTTP_LIMITS, createBoundedServer } from './net.js';
import { ReloadingTls, loadServerTls, parseCertificates, tlsOptions, type ServerTlsConfig, type TlsMaterial } from './tls.js';
import { readTrustedFile } from './trusted-file.js';

/**
 * The daemons' server, built in one place for both agents: plain HTTP (createBoundedServer), or with
 * `server.tls` HTTPS only (WebSocket upgrades become WSS), with the same limits (HTTP_LIMITS; the
 * TLS handshake is bounded like the headers). With server.tls.clientCaFile, a client without a
 * certificate that CA issued is refused during the handshake (mutual TLS); tokens are still
 * required on every request. The certificate, key and client CA reload on SIGHUP (`tls.reload`) and
 * when their files change, for new connections; open ones keep theirs.
 */
export interface DaemonHttpServer {
  http: Server;
  /** null: plain HTTP. */
  tls: ReloadingTls | null;
  scheme: 'http' | 'https';
}

export interface DaemonHttpServerOptions {
  tls?: ServerTlsConfig;
  logger: Logger;
  /** Watch the TLS files for changes (default true). */
  watch?: boolean;
}

export function createDaemonServer(handler: (req: IncomingMessage, res: ServerResponse) => void, o: DaemonHttpServerOptions): DaemonHttpServer {
  const cfg = o.tls;
  if (cfg === undefined) return { http: createBoundedServer(handler), tls: null, scheme: 'http' };
  const mutual = cfg.clientCaFile !== undefined;
  let server: ReturnType<typeof createHttpsServer> | null = null;
  const tls = new ReloadingTls({
    what: 'server.tls',
    load: () => loadServerTls(cfg, o.logger),
    logger: o.logger,
    watch: o.watch,
    apply: (m: TlsMaterial) => server?.setSecureContext(tlsOptions(m)),
  });
  server = createHttpsServer(
    {
      ...tlsOptions(tls.current),
      requestCert: mutual,
      rejectUnauthorized: mutual,
      minVersion: 'TLSv1.2',
      handshakeTimeout: HTTP_LIMITS.headersTimeoutMs,
      headersTimeout: HTTP_LIMITS.headersTimeoutMs,
      requestTimeout: HTTP_LIMITS.requestTimeoutMs,
      keepAliveTimeout: HTTP_LIMITS.keepAliveTimeoutMs,
      connectionsCheckingInterval: HTTP_LIMITS.checkIntervalMs,
    },
    handler,
  );
  server.maxConnections = HTTP_LIMITS.maxConnections;
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket) => {
    o.logger.debug({ peer: socket.remoteAddress, code: err.code, err }, `TLS handshake failed${mutual ? ' (a client without a certificate the client CA issued is refused here)' : ''}: ${describeError(err)}`);
  });
  server.on('close', () => tls.close());
  return { http: server, tls, scheme: 'https' };
}

/**
 * How a command on this host reaches its own daemon when the daemon serves TLS. The daemon's
 * address may be one no certificate names (127.0.0.1 for a 0.0.0.0 listener), so its certificate is
 * checked by pinning instead of by name: the connection is used only if the daemon presents the
 * certificate in server.tls.certFile (same SHA-256 fingerprint). With server.tls.clientCaFile the
 * command presents that certificate and key as its client certificate (as patronictl falls back to
 * the REST API's), so under mutual TLS the server certificate must also be good for client
 * authentication (extendedKeyUsage serverAuth,clientAuth, issued by the client CA).
 * Returns the `createConnection` option for node:http's request; the token is sent only over a
 * connection that passed the check.
 */
export function localDaemonConnection(cfg: ServerTlsConfig, o: { timeoutMs?: number; logger?: Logger } = {}): NonNullable<ClientRequestArgs['createConnection']> {
  return (args, oncreate) => {
    let pin: string;
    let client: { cert?: string; key?: string } = {};
    try {
      const pem = readTrustedFile(cfg.certFile, { what: 'TLS certificate', key: 'server.tls.certFile', unreadableCode: 'TLS_FILE_UNREADABLE', hint: 'the daemon serves TLS with it', secret: false, logger: o.logger });
      pin = parseCertificates(pem, cfg.certFile, 'server.tls.certFile')[0]!.fingerprint256;
      if (cfg.clientCaFile !== undefined) {
        const key = readTrustedFile(cfg.keyFile, { what: 'TLS private key', key: 'server.tls.keyFile', unreadableCode: 'TLS_FILE_UNREADABLE', hint: 'the daemon serves TLS with it', secret: true, logger: o.logger });
        client = { cert: pem, key };
      }
    } catch (err) {
      oncreate(err as Error, undefined as unknown as Duplex);
      return undefined;
    }
    const host = String(args.host ?? '127.0.0.1');
    const socket = tlsConnect({ host, port: Number(args.port), rejectUnauthorized: false, ...client, ...(/^[\d.:]+$/.test(host) ? {} : { servername: host }) });
    let settled = false;
    const settle = (err: Error | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        socket.destroy();
        oncreate(err, undefined as unknown as Duplex);
      } else oncreate(null, socket);
    };
    const timeoutMs = o.timeoutMs ?? HTTP_LIMITS.headersTimeoutMs;
    const timer = setTimeout(() => settle(new TandemError('transient', 'DAEMON_TLS_TIMEOUT', `no TLS handshake with the daemon at ${host}:${args.port} within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    socket.once('secureConnect', () => {
      const presented = socket.getPeerCertificate().fingerprint256;
      if (presented !== pin) {
        settle(
          new TandemError('config', 'DAEMON_TLS_MISMATCH', `the server at ${host}:${args.port} did not present the certificate in server.tls.certFile ${cfg.certFile}`, {
            hint: 'is it this agent\'s daemon? a certificate replaced moments ago is taken up within a second (or on SIGHUP)',
          }),
        );
        return;
      }
      settle(null);
    });
    socket.once('error', (err) => settle(err));
    return undefined;
  };
}
