import { WebSocket } from 'ws';
import { TandemError, describeError, isTandemError, parseMessage, type PrimaryHello } from '@tandem/shared';
import { classifyWsError, dialPrimary, streamUrl, type PrimaryTlsOptions } from '../daemon/push-client.js';

/**
 * One look at the primary's push channel, as the daemon's push client dials it (its URL, its bearer
 * token on the upgrade, primary.tls, its reading of a refusal): the primary says hello right after it accepted
 * the token, and that hello is all this waits for. It never says hello back, so the primary never
 * takes the connection for this standby's, and a running daemon's own connection stays as it is.
 */
export function probePushChannel(
  primaryUrl: string,
  token: string,
  site: string,
  opts: { tls?: PrimaryTlsOptions; timeoutMs?: number } = {},
): Promise<{ url: string; hello: PrimaryHello }> {
  const url = streamUrl(primaryUrl);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    let settled = false;
    const { ws, handshakeDone } = dialPrimary(url, token, { handshakeTimeoutMs: timeoutMs, tls: opts.tls });
    const done = (err: TandemError | null, hello?: PrimaryHello) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'check done');
      else ws.terminate();
      if (err !== null) reject(err);
      else resolve({ url, hello: hello! });
    };
    const timer = setTimeout(() => done(new TandemError('transient', 'PUSH_NO_HELLO', `the primary at ${url} accepted the connection but said no hello within ${timeoutMs / 1000} s`)), timeoutMs);
    ws.on('error', (err) => done(classifyWsError(err, url, handshakeDone())));
    ws.on('close', (code, reason) => done(new TandemError('transient', 'PUSH_CLOSED', `the primary at ${url} closed the connection before its hello (${code}${reason.length > 0 ? `: ${reason.toString('utf8')}` : ''})`)));
    ws.on('message', (data, isBinary) => {
      if (isBinary) return done(new TandemError('permanent', 'PROTOCOL_INVALID', `the primary at ${url} sent a binary frame`));
      try {
        const msg = parseMessage(data as Buffer, 'primary-to-standby');
        if (msg.type !== 'hello') return;
        if (msg.site !== site) {
          return done(
            new TandemError('config', 'PUSH_WRONG_SITE', `the primary at ${url} serves site "${msg.site}", not "${site}"`, { hint: 'check primary.url: it must name the primary agent of this site' }),
          );
        }
        done(null, msg);
      } catch (err) {
        if (isTandemError(err) && err.code === 'PROTOCOL_UNKNOWN_TYPE') return; // a newer primary's message
        done(isTandemError(err) ? err : new TandemError('permanent', 'PROTOCOL_INVALID', `the primary at ${url}: ${describeError(err)}`));
      }
    });
  });
}
