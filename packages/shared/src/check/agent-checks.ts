import type { PrimaryConfig } from '../config.js';
import { TandemError, isTandemError } from '../errors.js';
import type { Filestore } from '../filestore/filestore.js';
import { openFilestore } from '../filestore/open.js';
import { pgBin, pgEnv, type DbTarget } from '../postgres.js';
import { listSets } from '../store/sets.js';
import { requireFilestoreMarker } from '../store/marker.js';
import type { ServerTlsConfig } from '../tls.js';
import { checkServerTls, checkWritableDir, provePairing, toolVersion, type ServerInfo, type ToolVersion } from './probes.js';
import { verdict, type CheckDef, type Verdict } from './runner.js';

/**
 * The pieces of the check lists both agents build (`tandem-primary check`, `tandem-standby check`)
 * where the logic is the same: reading what an earlier check found, the answers' common forms, and
 * the checks that look at the same config keys the same way (filestore, stateDir, server.tls).
 * What differs between the agents is passed in; what is one agent's own stays in its checks.ts.
 */

/** What both agents' configs have that the shared checks look at. */
export type AgentCheckConfig = Pick<PrimaryConfig, 'configFile' | 'site' | 'encryption' | 'stateDir' | 'filestore'> & { server: { tls?: ServerTlsConfig } };

/** The part of an agent's check context the shared checks read (config) and fill in (filestore). */
export interface AgentCheckContext {
  config?: AgentCheckConfig;
  filestore?: Filestore;
}

/** What an earlier check put in the context; the runner runs a check only after those it needs passed. */
export function known<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new TandemError('internal', 'CHECK_ORDER', `check run before ${what} was known`);
  return value;
}

/** ok, or a warning listing what the loaders warned about (a secret others can read ...). */
export function withWarnings(detail: string, warnings: string[], hint?: string): Verdict {
  return warnings.length === 0 ? verdict.ok(detail) : verdict.warn(`${detail}; but ${warnings.join('; ')}`, hint);
}

/** How long ago an ISO time was, roughly: "40 s ago", "12 min ago", "5 h ago", "3 days ago". */
export function timeAgo(iso: string, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172_800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86_400)} days ago`;
}

/**
 * The config check's answer: the file and its site, as a warning when the config turns encryption
 * off (`unencrypted`: what that means for this agent, and what to do about it).
 */
export function configVerdict(config: Pick<AgentCheckConfig, 'configFile' | 'site' | 'encryption'>, unencrypted: { detail: string; hint: string }): Verdict {
  const detail = `${config.configFile} (site ${config.site})`;
  if (config.encryption === 'none') return verdict.warn(`${detail}; encryption is "none": ${unencrypted.detail}`, unencrypted.hint);
  return verdict.ok(detail);
}

/**
 * `postgres`: the agent's database answers, connected as the agent connects (`connect`, which reads
 * readServerInfo); the server's version and role go in the context for the checks after it.
 * `where`: the connection as the line names it, credentials redacted.
 */
export function postgresCheck<Ctx extends AgentCheckContext & { server?: ServerInfo }>(
  connect: (config: NonNullable<Ctx['config']>) => Promise<ServerInfo>,
  where: (config: NonNullable<Ctx['config']>) => string,
): CheckDef<Ctx> {
  return {
    name: 'postgres',
    needs: ['config'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const server = await connect(config);
      ctx.server = server;
      return `${where(config)}: PostgreSQL ${server.version} as "${server.user}"${server.superuser ? ' (superuser)' : ''}`;
    },
  };
}

/**
 * pg_dump or pg_restore, as database.binDir (or else PATH) gives it: its version, and its label for
 * a check's line ("pg_dump 15.8", with the program's path when binDir names one).
 */
export async function pgClientTool(db: DbTarget, name: 'pg_dump' | 'pg_restore'): Promise<ToolVersion & { label: string }> {
  const bin = pgBin(db, name);
  const tool = await toolVersion(bin, { package: 'postgresql-client', env: pgEnv(db) });
  return { ...tool, label: `${name} ${tool.version}${bin.includes('/') ? ` (${bin})` : ''}` };
}

/**
 * provePairing as a check's answer: null when `identities` open what `recipients` seal, else a
 * failure in the agent's own words (`mismatch`: what it means there, and what to do).
 */
export async function pairingFailure(recipients: string[], identities: string[], label: string, mismatch: { detail: string; hint: string }): Promise<Verdict | null> {
  try {
    await provePairing(recipients, identities, label);
    return null;
  } catch (err) {
    if (isTandemError(err) && err.code === 'AGE_NO_IDENTITY_MATCH') return verdict.fail(mismatch.detail, mismatch.hint);
    throw err;
  }
}

/**
 * `filestore`: filestore.url opens, holds the tandem marker, and lists the site's committed sets;
 * the open filestore is left in the context for the checks after it. `readable`: say that it was
 * read (the standby's only use of it).
 */
export function filestoreCheck<Ctx extends AgentCheckContext>(opts: { readable?: boolean } = {}): CheckDef<Ctx> {
  return {
    name: 'filestore',
    needs: ['config'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const fs = openFilestore(config.filestore.location);
      ctx.filestore = fs;
      const marker = await requireFilestoreMarker(fs, { url: config.filestore.url });
      const sets = await listSets(fs, config.site, { committedOnly: true });
      return `${fs.description}: a tandem filestore (made ${marker.createdAt.slice(0, 10)}), ${opts.readable === true ? 'readable; ' : ''}${sets.length} committed set${sets.length === 1 ? '' : 's'} of site ${config.site}`;
    },
  };
}

/** `state-dir`: stateDir is writable, or can be created. */
export function stateDirCheck<Ctx extends AgentCheckContext>(): CheckDef<Ctx> {
  return {
    name: 'state-dir',
    needs: ['config'],
    run: async (ctx) => checkWritableDir(known(ctx.config, 'the config').stateDir, 'state directory'),
  };
}

/** `tls`: the daemon's server.tls loads and its certificate is valid (checkServerTls). */
export function serverTlsCheck<Ctx extends AgentCheckContext>(): CheckDef<Ctx> {
  return {
    name: 'tls',
    needs: ['config'],
    run: (ctx) => checkServerTls(known(ctx.config, 'the config').server.tls),
  };
}

/**
 * The `when` of a check of one database mode: WAL mode's checks (database.mode: wal) are left out
 * of a dump-mode site's report, and dump mode's database path (pg_dump/pg_restore, one database's
 * rights) out of a WAL-mode site's, whose cluster travels whole.
 */
export const inDatabaseMode =
  (mode: 'dump' | 'wal') =>
  (ctx: { config?: { database: { mode?: string } } | null }): boolean =>
    (ctx.config?.database.mode === 'wal' ? 'wal' : 'dump') === mode;
