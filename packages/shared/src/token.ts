import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { TandemError } from './errors.js';

/**
 * The shared secret between a primary and its standbys (WebSocket push channel, /status, /metrics,
 * POST /v1/backup). It comes from a file (server.tokenFile / primary.tokenFile, mode 0600) or the
 * environment (TANDEM_TOKEN), never from the YAML itself. Sent only as `Authorization: Bearer`.
 */
export const TOKEN_ENV = 'TANDEM_TOKEN';
export const MIN_TOKEN_LENGTH = 16;
const TOKEN_HINT = 'make one with `openssl rand -hex 32 > ws.token && chmod 600 ws.token`; the same token goes to the primary and its standbys';

export interface LoadTokenOptions {
  /** The token file (absolute), when the config names one; it wins over the environment. */
  tokenFile?: string;
  /** Environment variable to read when there is no file (default TANDEM_TOKEN). */
  env?: string;
  /** The config key that names the file, for messages (e.g. "server.tokenFile"). */
  key?: string;
  /** Told (warn level) when the token file is readable by group or others. */
  logger?: { warn(obj: object, msg: string): void };
  /** Defaults to process.env. */
  environment?: NodeJS.ProcessEnv;
}

function checkToken(token: string, source: string): string {
  if (token === '') throw new TandemError('config', 'TOKEN_EMPTY', `${source} is empty`, { hint: TOKEN_HINT });
  if (/\s/.test(token)) throw new TandemError('config', 'TOKEN_INVALID', `${source}: the token contains whitespace`, { hint: TOKEN_HINT });
  if (token.length < MIN_TOKEN_LENGTH) {
    throw new TandemError('config', 'TOKEN_TOO_SHORT', `${source}: the token is ${token.length} characters; at least ${MIN_TOKEN_LENGTH} are required`, { hint: TOKEN_HINT });
  }
  return token;
}

/** The token from `tokenFile` (trimmed), else from the environment; a config error when neither. */
export function loadToken(opts: LoadTokenOptions): string {
  const envName = opts.env ?? TOKEN_ENV;
  const key = opts.key ?? 'server.tokenFile';
  if (opts.tokenFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(opts.tokenFile, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(err);
      throw new TandemError('config', 'TOKEN_UNREADABLE', `token file ${opts.tokenFile} (${key}): ${why}`, { hint: TOKEN_HINT });
    }
    try {
      const mode = statSync(opts.tokenFile).mode & 0o777;
      if ((mode & 0o077) !== 0) {
        opts.logger?.warn({ file: opts.tokenFile, mode: mode.toString(8) }, 'token file is readable by group or others; chmod 600 it');
      }
    } catch {
      /* it was just read; a stat failure here is not worth failing for */
    }
    return checkToken(text.trim(), `token file ${opts.tokenFile}`);
  }
  const fromEnv = (opts.environment ?? process.env)[envName];
  if (fromEnv !== undefined && fromEnv !== '') return checkToken(fromEnv.trim(), `$${envName}`);
  throw new TandemError('config', 'TOKEN_MISSING', `no token: set ${key} in the config or ${envName} in the environment`, { hint: TOKEN_HINT });
}

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** Constant-time comparison (both sides hashed first, so lengths leak nothing either). */
export function tokensEqual(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

/** The token of an `Authorization: Bearer <token>` header, or null. */
export function bearerFrom(req: { headers: IncomingHttpHeaders }): string | null {
  const h = req.headers.authorization;
  if (typeof h !== 'string') return null;
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(h);
  return m ? m[1]! : null;
}
