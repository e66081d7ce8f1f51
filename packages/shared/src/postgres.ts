import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { TandemError } from './errors.js';

/** Connection details shared by the pg client and the pg_dump/pg_restore child processes. */
export interface DbTarget {
  url: string;
  passwordFile?: string;
  binDir?: string;
}

function password(db: DbTarget): string | undefined {
  if (!db.passwordFile) return undefined;
  try {
    return readFileSync(db.passwordFile, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new TandemError('config', 'DB_PASSWORD_FILE', `database.passwordFile ${db.passwordFile}: ${(err as Error).message}`);
  }
}

/** Environment for pg_* children: PG* variables and ~/.pgpass keep working; a password file wins. */
export function pgEnv(db: DbTarget): NodeJS.ProcessEnv {
  const pw = password(db);
  return pw === undefined ? { ...process.env } : { ...process.env, PGPASSWORD: pw };
}

export const pgBin = (db: DbTarget, name: 'pg_dump' | 'pg_restore' | 'psql'): string =>
  db.binDir ? join(db.binDir, name) : name;

/** The URL with the database name replaced (for connecting to the maintenance database). */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

export function databaseName(url: string): string {
  return decodeURIComponent(new URL(url).pathname.replace(/^\//, '')) || process.env.PGDATABASE || new URL(url).username || 'postgres';
}

/** The URL without credentials, for messages. */
export function redactUrl(url: string): string {
  const u = new URL(url);
  u.password = '';
  return u.toString();
}

export function describePgError(err: unknown, url: string): TandemError {
  const e = err as { code?: string; message?: string };
  const where = redactUrl(url);
  let msg: string;
  let hint: string | undefined;
  switch (e.code) {
    case 'ECONNREFUSED':
      msg = `database ${where}: connection refused`;
      hint = 'is PostgreSQL running and listening there? (pg_lsclusters; systemctl status postgresql)';
      break;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      msg = `database ${where}: host not found`;
      break;
    case '3D000':
      msg = `database ${where}: ${e.message}`;
      hint = 'check database.url in the config';
      break;
    case '28P01':
    case '28000':
      msg = `database ${where}: authentication failed: ${e.message}`;
      hint = 'set the password in database.passwordFile, PGPASSWORD or ~/.pgpass';
      break;
    default:
      msg = `database ${where}: ${e.message ?? String(err)}`;
  }
  return new TandemError('external', 'DB_CONNECT', msg, { hint, cause: err });
}

/** Run `fn` with a connected client; connection problems become one clear TandemError. */
export async function withPg<T>(db: DbTarget, fn: (client: pg.Client) => Promise<T>, database?: string): Promise<T> {
  const url = database === undefined ? db.url : withDatabase(db.url, database);
  const client = new pg.Client({ connectionString: url, password: password(db), connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw describePgError(err, url);
  }
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}
