import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { TandemError, describeError } from './errors.js';

/**
 * Limits both daemons' HTTP servers share. Nothing a client sends to them takes long to send (no
 * request has a body worth waiting for), so a connection that has not sent a whole request within
 * these is cut off: an idle or trickling client, authenticated or not, holds a socket for seconds,
 * not minutes, and no more than MAX_CONNECTIONS sockets are open at once (WebSocket connections
 * included); past that, a new connection is closed at once. Answers that take long (POST
 * /v1/backup waits for the backup) are not bounded: these limits stop once the request was received.
 */
export const HTTP_LIMITS = {
  /** All headers within this after the connection opened (or after the previous response). */
  headersTimeoutMs: 10_000,
  /** The whole request within this. */
  requestTimeoutMs: 15_000,
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: 5_000,
  /** How often the server looks for connections past these limits (Node's default is 30 s). */
  checkIntervalMs: 1_000,
  /** Open sockets at most: standbys, switchover clients, Prometheus and the CLI need a handful. */
  maxConnections: 128,
} as const;

/** node:http's createServer with HTTP_LIMITS applied. */
export function createBoundedServer(handler: (req: IncomingMessage, res: ServerResponse) => void): Server {
  const http = createServer(
    {
      headersTimeout: HTTP_LIMITS.headersTimeoutMs,
      requestTimeout: HTTP_LIMITS.requestTimeoutMs,
      keepAliveTimeout: HTTP_LIMITS.keepAliveTimeoutMs,
      connectionsCheckingInterval: HTTP_LIMITS.checkIntervalMs,
    },
    handler,
  );
  http.maxConnections = HTTP_LIMITS.maxConnections;
  return http;
}

/** host:port (IPv6 in brackets) → its parts. */
export function splitListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  let host = listen.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(listen.slice(i + 1)) };
}

/** host and port to connect to for a listen address (a wildcard address means this host). */
export function connectAddress(listen: string): { host: string; port: number } {
  const { host, port } = splitListen(listen);
  if (host === '0.0.0.0' || host === '') return { host: '127.0.0.1', port };
  if (host === '::') return { host: '::1', port };
  return { host, port };
}

/**
 * Listen on host:port (`server.listen`); resolves with the address actually bound (port 0 picks one).
 * A port in use is a temporary failure (kind 'busy', exit 75): at boot it may still be held by a
 * process on its way out, and a service manager should try again rather than give up. An address
 * not (yet) on this host is temporary too: at boot it may come up after the daemon starts.
 * Permission denied and anything else is the config's fault (exit 2).
 */
export function listenOn(http: Server, listen: string): Promise<string> {
  const { host, port } = splitListen(listen);
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(listenError(listen, port, err));
    };
    http.once('error', onError);
    http.listen(port, host, () => {
      http.off('error', onError);
      const a = http.address();
      if (a === null || typeof a === 'string') return resolve(listen);
      resolve(a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);
    });
  });
}

function listenError(listen: string, port: number, err: NodeJS.ErrnoException): TandemError {
  const where = `cannot listen on ${listen} (server.listen)`;
  if (err.code === 'EADDRINUSE') {
    return new TandemError('busy', 'LISTEN_BUSY', `${where}: port ${port} is in use (another daemon?)`, {
      hint: `stop what holds port ${port} (\`ss -ltnp 'sport = :${port}'\` names it) or choose another server.listen; a service manager should retry (exit 75 is a temporary failure)`,
      cause: err,
    });
  }
  if (err.code === 'EADDRNOTAVAIL') {
    return new TandemError('busy', 'LISTEN_BUSY', `${where}: the address is not on this host (not up yet?)`, {
      hint: 'bring the interface up, or set server.listen to an address of this host; a service manager should retry (exit 75 is a temporary failure)',
      cause: err,
    });
  }
  const why = err.code === 'EACCES' ? `permission denied (port ${port})` : describeError(err);
  return new TandemError('config', 'LISTEN_FAILED', `${where}: ${why}`, { hint: 'choose another server.listen', cause: err });
}

/** Stops accepting and ends every open connection (keep-alive ones too); resolves once closed. */
export function closeServer(http: Server): Promise<void> {
  return new Promise<void>((resolve) => {
    http.close(() => resolve());
    http.closeAllConnections();
  });
}

/** Whether a process of this host is alive (EPERM: alive, but another user's). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
