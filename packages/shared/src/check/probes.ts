import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, stat, statfs } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pino, type Logger } from 'pino';
import { createAgeDecryptStream, createAgeEncryptStream } from '../crypto/age/index.js';
import { TandemError } from '../errors.js';
import type { withPg } from '../postgres.js';
import { formatBytes } from '../size.js';
import { loadServerTls, type ServerTlsConfig } from '../tls.js';
import { verdict, type Verdict } from './runner.js';

/**
 * What the checks of both agents look at the same way: tool versions, PostgreSQL server facts,
 * directories that must be writable, free space, and whether an age identity opens what a recipient
 * seals. Nothing here writes anything.
 */

/**
 * A logger that keeps the warnings it is given instead of printing them: the key and token loaders
 * warn (a secret readable by others) rather than fail, and a check reports that as its warning.
 */
export function captureWarnings(): { logger: Logger; warnings: () => string[] } {
  const seen: string[] = [];
  const logger = pino(
    { level: 'warn', base: null, timestamp: false },
    {
      write(line: string) {
        try {
          const rec = JSON.parse(line) as { msg?: unknown };
          if (typeof rec.msg === 'string') seen.push(rec.msg);
        } catch {
          seen.push(line.trim());
        }
      },
    },
  );
  return { logger, warnings: () => [...seen] };
}

export interface ToolVersion {
  /** "15.8", "1.5.4". */
  version: string;
  /** The first line the tool printed. */
  line: string;
}

/**
 * `command --version`: the version the tool reports. A tool that is not there is a config error
 * naming the Debian package that has it.
 */
export function toolVersion(command: string, opts: { package: string; env?: NodeJS.ProcessEnv; args?: string[] }): Promise<ToolVersion> {
  return new Promise((resolvePromise, reject) => {
    execFile(command, opts.args ?? ['--version'], { env: opts.env ?? process.env, timeout: 10_000, maxBuffer: 64 * 1024 }, (err, stdout, stderr) => {
      const code = (err as NodeJS.ErrnoException | null)?.code;
      if (code === 'ENOENT') {
        reject(new TandemError('config', 'MISSING_BINARY', `the program '${command}' was not found${command.includes('/') ? '' : ' on PATH'} (Debian package '${opts.package}')`, { hint: `install it: apt-get install ${opts.package}` }));
        return;
      }
      if (err) {
        reject(new TandemError('external', 'TOOL_FAILED', `${command} --version failed: ${(stderr || err.message).trim().split('\n')[0]}`, { cause: err }));
        return;
      }
      const line = `${stdout}${stderr}`.trim().split('\n')[0] ?? '';
      const m = /(\d+\.\d+(?:\.\d+)?)/.exec(line);
      resolvePromise({ version: m ? m[1]! : 'unknown', line });
    });
  });
}

/** The major version of a PostgreSQL version string ("15.8 (Debian ...)" → 15, "9.6.24" → 9.6); null if none. */
export function pgMajor(version: string): number | null {
  const m = /^(\d+)(?:\.(\d+))?/.exec(version.trim());
  if (!m) return null;
  const major = Number(m[1]);
  return major < 10 && m[2] !== undefined ? Number(`${major}.${m[2]}`) : major;
}

type PgClient = Parameters<Parameters<typeof withPg>[1]>[0];

export interface ServerInfo {
  /** server_version: "15.8 (Debian 15.8-0+deb12u1)". */
  version: string;
  major: number | null;
  /** The role the session runs as. */
  user: string;
  superuser: boolean;
}

export async function readServerInfo(c: PgClient): Promise<ServerInfo> {
  const r = await c.query<{ v: string; u: string; su: boolean }>(
    `SELECT current_setting('server_version') AS v, session_user AS u, (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) AS su`,
  );
  const row = r.rows[0]!;
  return { version: row.v, major: pgMajor(row.v), user: row.u, superuser: row.su === true };
}

/** The directory itself if it exists, else its nearest existing ancestor. */
async function nearestExisting(dir: string): Promise<{ path: string; exists: boolean }> {
  let p = resolve(dir);
  for (;;) {
    try {
      await stat(p);
      return { path: p, exists: p === resolve(dir) };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
    }
    const up = dirname(p);
    if (up === p) return { path: p, exists: false };
    p = up;
  }
}

/**
 * Whether this process could create files in `dir` (or create `dir` itself, where the agent
 * creates it on first use): "exists, writable" or "created on first use under ANCESTOR". Throws a
 * config error naming the directory when it could not.
 */
export async function checkWritableDir(dir: string, what: string): Promise<string> {
  const near = await nearestExisting(dir);
  const st = await stat(near.path);
  if (!st.isDirectory()) {
    throw new TandemError('config', 'DIR_NOT_DIRECTORY', `${what} ${dir}: ${near.path} is not a directory`, { hint: `fix the path of the ${what}` });
  }
  try {
    await access(near.path, constants.W_OK | constants.X_OK);
  } catch {
    const named = near.exists ? dir : `${dir} does not exist and ${near.path}`;
    throw new TandemError('config', 'DIR_NOT_WRITABLE', `${what} ${named} is not writable by this user (uid ${process.geteuid?.() ?? '?'})`, {
      hint: near.exists ? `chown the directory to the agent's user, or run the agent as its owner` : `create ${dir} (mode 0700) owned by the agent's user`,
    });
  }
  return near.exists ? `${dir} writable` : `${dir} does not exist yet; ${near.path} is writable, so it is created on first use`;
}

/**
 * Whether the file system that holds `dir` (or would hold it) has `need` bytes free for this user:
 * the detail names both; a config error when it has not.
 */
export async function checkFreeSpace(dir: string, need: number, forWhat: string): Promise<string> {
  const near = await nearestExisting(dir);
  const s = await statfs(near.path);
  const free = s.bavail * s.bsize;
  if (free < need) {
    throw new TandemError('permanent', 'DISK_SPACE', `${formatBytes(free)} free on the file system of ${near.path}, but ${forWhat} needs ${formatBytes(need)}`, {
      hint: `free space there, or point the state directory at a larger file system`,
    });
  }
  return `${formatBytes(free)} free on the file system of ${near.path}; ${forWhat} needs ${formatBytes(need)}`;
}

/**
 * Seals a few random bytes to `recipients` and opens them with `identities`: proof that the key
 * pair belongs together. Throws the decryption's error (AGE_NO_IDENTITY_MATCH) when it does not.
 */
export async function provePairing(recipients: string[], identities: string[], label: string): Promise<void> {
  const plain = randomBytes(32);
  const sealed: Buffer[] = [];
  await pipeline(Readable.from([plain]), createAgeEncryptStream(recipients), async function* (src: AsyncIterable<Buffer>) {
    for await (const c of src) sealed.push(c);
  });
  const opened: Buffer[] = [];
  await pipeline(Readable.from([Buffer.concat(sealed)]), createAgeDecryptStream(identities, { label }), async function* (src: AsyncIterable<Buffer>) {
    for await (const c of src) opened.push(c);
  });
  if (!Buffer.concat(opened).equals(plain)) {
    throw new TandemError('integrity', 'PAIRING_MISMATCH', `${label}: opened, but to other bytes than were sealed`);
  }
}

/** A certificate that ends sooner than this is warned about. */
const CERT_WARN_MS = 14 * 86_400_000;

/**
 * A daemon's server.tls: its certificate and key load and belong together (loadServerTls, as the
 * daemon loads them), and the certificate is valid now and for the next 14 days.
 */
export function checkServerTls(tls: ServerTlsConfig | undefined, now = new Date()): Verdict {
  if (tls === undefined) return verdict.notApplicable('no server.tls: the daemon speaks plain HTTP (keep server.listen on a trusted network)');
  const { logger, warnings } = captureWarnings();
  const m = loadServerTls(tls, logger);
  const leaf = m.leaf!;
  const to = new Date(leaf.validTo);
  const from = new Date(leaf.validFrom);
  const what = `${tls.certFile} (${leaf.subject.replace(/\n/g, ', ')}, valid until ${to.toISOString().slice(0, 10)})${tls.clientCaFile === undefined ? '' : `, clients need a certificate of ${tls.clientCaFile}`}`;
  const renew = `renew the certificate (${tls.certFile}); the daemon reloads it on change or SIGHUP`;
  if (to.getTime() <= now.getTime()) return verdict.fail(`${what}: expired`, renew);
  if (from.getTime() > now.getTime()) return verdict.fail(`${what}: not valid before ${from.toISOString()}`, "check this server's clock, or the certificate's dates");
  if (to.getTime() - now.getTime() < CERT_WARN_MS) return verdict.warn(`${what}: ends in ${Math.ceil((to.getTime() - now.getTime()) / 86_400_000)} days`, renew);
  const w = warnings();
  return w.length === 0 ? verdict.ok(what) : verdict.warn(`${what}; but ${w.join('; ')}`, `chmod 600 ${tls.keyFile}`);
}
