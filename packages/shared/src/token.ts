import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { TandemError } from './errors.js';
import { readTrustedFile } from './trusted-file.js';

/**
 * The daemons' bearer tokens. Each says what its holder may do (docs/design.md, "Tokens"):
 *   - the primary's control token (server.tokenFile, or TANDEM_TOKEN): POST /v1/backup, /status, /metrics;
 *   - a monitoring token (server.readTokenFile, on either agent): /status and /metrics only;
 *   - one token per standby (the primary's standbys[].tokenFile = that standby's primary.tokenFile):
 *     the push channel /v1/stream and a switchover, as that standby and no other.
 * A token comes from a file (mode 0600, refused when others could have written it) or, for the
 * control token, the environment; never from the YAML itself. Sent only as `Authorization: Bearer`.
 */
export const TOKEN_ENV = 'TANDEM_TOKEN';
export const MIN_TOKEN_LENGTH = 16;
const TOKEN_HINT = 'make one with `openssl rand -hex 32 > FILE && chmod 600 FILE`, or let `tandem-primary init` write them (it says which file goes where)';

export interface LoadTokenOptions {
  /** The token file (absolute), when the config names one; it wins over the environment. */
  tokenFile?: string;
  /** Environment variable to read when there is no file (default TANDEM_TOKEN); null: none. */
  env?: string | null;
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
  const envName = opts.env === undefined ? TOKEN_ENV : opts.env;
  const key = opts.key ?? 'server.tokenFile';
  if (opts.tokenFile !== undefined) {
    const text = readTrustedFile(opts.tokenFile, { what: 'token file', key, unreadableCode: 'TOKEN_UNREADABLE', hint: TOKEN_HINT, secret: true, logger: opts.logger });
    return checkToken(text.trim(), `token file ${opts.tokenFile}`);
  }
  const fromEnv = envName === null ? undefined : (opts.environment ?? process.env)[envName];
  if (envName !== null && fromEnv !== undefined && fromEnv !== '') return checkToken(fromEnv.trim(), `$${envName}`);
  const where = envName === null ? `set ${key} in the config` : `set ${key} in the config or ${envName} in the environment`;
  throw new TandemError('config', 'TOKEN_MISSING', `no token: ${where}`, { hint: TOKEN_HINT });
}

/**
 * Every token of one agent must be different: a monitoring token equal to a control or standby
 * token would hand Prometheus (and whoever reads its config) the control. `tokens` maps the config
 * key to the token; the first two keys sharing a token are named.
 */
export function requireDistinctTokens(tokens: Array<{ key: string; token: string }>, configFile: string): void {
  for (let i = 0; i < tokens.length; i++) {
    for (let j = i + 1; j < tokens.length; j++) {
      if (tokensEqual(tokens[i]!.token, tokens[j]!.token)) {
        throw new TandemError('config', 'TOKEN_REUSED', `${configFile}: ${tokens[i]!.key} and ${tokens[j]!.key} hold the same token; each must be different, since each grants something else`, {
          hint: 'make a new one for one of them (openssl rand -hex 32 > FILE && chmod 600 FILE); `tandem-primary init` writes a set of distinct tokens',
        });
      }
    }
  }
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
