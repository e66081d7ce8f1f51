import { stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import {
  TandemError,
  formatBytes,
  freeBytes,
  isTandemError,
  pgBin,
  pgEnv,
  pgMajor,
  toolVersion,
  withPg,
  type ArtifactEntry,
  type Logger,
  type Manifest,
  type StandbyConfig,
  type ToolVersion,
} from '@tandem/shared';
import { canStream, streamsWhenStaged } from './artifact-stream.js';
import { readAgentRole, type AgentRole } from './db-prereqs.js';
import { withMaintenance } from './pg.js';
import { artifactEntries } from './stage.js';
import type { AppliedState } from './state.js';
import { DIR_PARTS, stagingRoot, type Targets } from './targets.js';

/**
 * What an apply checks before it downloads a byte: the tools it runs, PostgreSQL (reachable, the
 * agent's rights for the restore and the swap, the live database there or allowed to be created)
 * and free space for what the set's signed sizes say it will put on disk. A failure here is
 * refused with everything found at once, and nothing is staged: no journal, no staging dir.
 *
 * These are the checks that need no artifact; what needs the set's database description (roles,
 * extensions, membership in the owner roles) follows once it is staged (db-prereqs.ts).
 */
export interface PreflightOptions {
  config: StandbyConfig;
  manifest: Manifest;
  targets: Targets;
  /** The applied set (null: nothing was applied with this state dir yet: the first apply). */
  applied: AppliedState | null;
  /** `apply --create-database`: create the live database if it does not exist. */
  createDatabase: boolean;
  logger: Logger;
}

export interface PreflightResult {
  agent: AgentRole;
  /** The live database does not exist, and this apply creates it. */
  createsDatabase: boolean;
}

/** One thing found wrong, with what to do about it. */
export interface PreflightProblem {
  code: string;
  kind: 'config' | 'precondition' | 'permanent';
  message: string;
  hint: string;
}

/**
 * WAL mode: the set is a base backup, this standby's cluster takes it. The data directory must
 * exist (its settings and owner are kept), the commands that start and stop it be configured,
 * pg_verifybackup be there, and the space suffice. The database is not asked anything: it is
 * replaced whole, and may be down.
 */
export async function walPreflight(o: Pick<PreflightOptions, 'config' | 'manifest' | 'targets'>): Promise<void> {
  const { config, manifest, targets } = o;
  const problems: PreflightProblem[] = [];
  if (config.database.mode !== 'wal' || targets.cluster === undefined) {
    problems.push({ code: 'WAL_MODE_OFF', kind: 'config', message: `the set carries a base backup (WAL mode), and this standby is in dump mode (database.mode in ${config.configFile})`, hint: 'set database.mode: wal with database.dataDir, startCommand and stopCommand' });
    throw refusal(manifest, problems);
  }
  try {
    const st = await stat(config.database.dataDir!);
    if (!st.isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
  } catch (err) {
    problems.push({
      code: 'WAL_DATA_DIR',
      kind: 'config',
      message: `database.dataDir ${config.database.dataDir}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such directory' : (err as Error).message}`,
      hint: 'create the standby cluster first (initdb or pg_createcluster, as its OS user): the seed replaces its data directory and keeps its server settings and owner',
    });
  }
  const verify = config.database.binDir ? join(config.database.binDir, 'pg_verifybackup') : 'pg_verifybackup';
  const found = await toolVersion(verify, { package: 'postgresql-client-15' }).then(() => true, () => false);
  if (!found) problems.push({ code: 'TOOL_MISSING', kind: 'config', message: `pg_verifybackup not found (${verify})`, hint: 'set database.binDir to the PostgreSQL server binaries (e.g. /usr/lib/postgresql/15/bin)' });
  problems.push(...(await checkSpace(config, manifest, targets)));
  if (problems.length > 0) throw refusal(manifest, problems);
}

export async function preflight(o: PreflightOptions): Promise<PreflightResult> {
  const { config, manifest } = o;
  // Side by side: each waits on a child process or a server, not on this process.
  const [tools, db, space] = await Promise.all([checkTools(config, manifest), checkDatabase(o), checkSpace(config, manifest, o.targets)]);
  const problems = [...tools, ...db.problems, ...space];
  if (problems.length > 0) throw refusal(manifest, problems);
  if (db.createsDatabase) {
    o.logger.info(
      { database: o.targets.db.live, allowedBy: o.createDatabase ? '--create-database' : 'database.create' },
      `the database "${o.targets.db.live}" does not exist on this server: this apply creates it`,
    );
  }
  return { agent: db.agent, createsDatabase: db.createsDatabase };
}

const NOTHING_CHANGED = 'nothing was downloaded and nothing changed';

function refusal(manifest: Manifest, problems: PreflightProblem[]): TandemError {
  if (problems.length === 1) {
    const p = problems[0]!;
    return new TandemError(p.kind, p.code, `set ${manifest.setId} cannot be applied here: ${p.message}; ${NOTHING_CHANGED}`, { hint: p.hint });
  }
  // Several: the most fundamental kind decides the exit status (a bad config first).
  const kind = problems.some((p) => p.kind === 'config') ? 'config' : problems.some((p) => p.kind === 'precondition') ? 'precondition' : 'permanent';
  return new TandemError(kind, 'APPLY_PREFLIGHT', `set ${manifest.setId} cannot be applied here (${NOTHING_CHANGED}):\n${problems.map((p) => `  - ${p.message}`).join('\n')}`, {
    hint: [...new Set(problems.map((p) => p.hint))].join('; '),
  });
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/**
 * A tool's version as found, kept for a few minutes: the daemon applies again and again, and a
 * version does not change between two applies (a tool that is gone is looked for every time).
 */
const TOOL_CACHE_MS = 5 * 60_000;
const toolCache = new Map<string, { at: number; version: Promise<ToolVersion> }>();

function cachedToolVersion(command: string, opts: { package: string; env?: NodeJS.ProcessEnv }): Promise<ToolVersion> {
  const hit = toolCache.get(command);
  if (hit !== undefined && Date.now() - hit.at < TOOL_CACHE_MS) return hit.version;
  const version = toolVersion(command, opts);
  toolCache.set(command, { at: Date.now(), version });
  version.catch(() => toolCache.delete(command));
  return version;
}

/** A PostgreSQL version for comparing majors: 15 → 1500, 9.6 → 906. */
const majorRank = (major: number): number => (major >= 10 ? major * 100 : Math.round(major * 100));

/**
 * pg_restore (database.binDir, else PATH) of at least the major version of the PostgreSQL that
 * made the set (the dump's format follows the primary's pg_dump, which is at least that version),
 * zstd, and prlimit when the dump is staged as a file (restoreJobs > 1: zstd runs under its file
 * size limit).
 */
export async function checkTools(config: StandbyConfig, manifest: Manifest): Promise<PreflightProblem[]> {
  const problems: PreflightProblem[] = [];
  const bin = pgBin(config.database, 'pg_restore');
  const others: Array<[string, string]> = [['zstd', 'zstd']];
  if (config.database.restoreJobs > 1) others.push(['prlimit', 'util-linux']);
  // database.schema: the switch feeds pg_restore's SQL to psql in one transaction (schema.ts).
  if (config.database.schema !== undefined) others.push([pgBin(config.database, 'psql'), 'postgresql-client']);
  const [found, ...rest] = await Promise.all([
    cachedToolVersion(bin, { package: 'postgresql-client', env: pgEnv(config.database) }).catch((err: unknown) => toolProblem(err, bin, config)),
    ...others.map(([command, pkg]) => cachedToolVersion(command, { package: pkg }).catch((err: unknown) => toolProblem(err, command, config))),
  ]);
  if ('code' in found!) problems.push(found);
  else {
    const have = pgMajor(found.version);
    const need = pgMajor(manifest.database.serverVersion);
    if (have !== null && need !== null && majorRank(have) < majorRank(need)) {
      problems.push({
        code: 'PG_RESTORE_TOO_OLD',
        kind: 'config',
        message: `${bin} is version ${found.version}, older than the PostgreSQL ${manifest.database.serverVersion} the set was dumped from: it cannot be relied on to read that dump`,
        hint: `install the PostgreSQL ${need} client tools or newer (Debian: postgresql-client-${need}) and, unless that pg_restore comes first on PATH, set database.binDir to its directory`,
      });
    }
  }
  for (const r of rest) if ('code' in r) problems.push(r);
  return problems;
}

function toolProblem(err: unknown, command: string, config: StandbyConfig): PreflightProblem {
  if (!isTandemError(err)) throw err;
  const inBinDir = command.includes('/') && config.database.binDir !== undefined;
  return {
    code: err.code,
    kind: err.kind === 'config' ? 'config' : 'permanent',
    message: err.message,
    hint: inBinDir ? `${err.hint ?? 'install it'}, or fix database.binDir (${config.database.binDir}) in ${config.configFile}` : (err.hint ?? `install ${command}`),
  };
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

interface LiveDatabase {
  owner: string;
  /** The agent may rename and drop it (owns it, through a role it has the rights of, or is a superuser). */
  mayReplace: boolean;
}

/**
 * Connects to the maintenance database as the apply will (an unreachable server or a refused login
 * is thrown as it is: DB_CONNECT, naming the URL). Then: CREATEDB (the set is restored into a new
 * database beside the live one), the right to rename and drop the live database (the swap), and
 * the live database itself: it must exist, unless this apply may create it.
 */
export async function checkDatabase(o: Pick<PreflightOptions, 'config' | 'targets' | 'applied' | 'createDatabase'>): Promise<{
  agent: AgentRole;
  createsDatabase: boolean;
  problems: PreflightProblem[];
}> {
  const { config, targets } = o;
  if (targets.db.schemaOf !== undefined) return checkSharedDatabase(config, targets.db.schemaOf, targets.db.live);
  const live = targets.db.live;
  const { agent, existing } = await withMaintenance(config, async (c) => {
    const agent = await readAgentRole(c);
    const r = await c.query<{ owner: string; may: boolean }>(
      `SELECT pg_get_userbyid(d.datdba) AS owner, pg_has_role(session_user, d.datdba, 'USAGE') AS may FROM pg_database d WHERE d.datname = $1`,
      [live],
    );
    const row = r.rows[0];
    const existing: LiveDatabase | null = row === undefined ? null : { owner: row.owner, mayReplace: agent.superuser || row.may };
    return { agent, existing };
  });
  const problems: PreflightProblem[] = [];
  const role = JSON.stringify(agent.name);
  if (!agent.superuser && !agent.createDb) {
    problems.push({
      code: 'DB_RIGHTS',
      kind: 'precondition',
      message: `the agent's role ${role} lacks CREATEDB (the set is restored into a new database beside the live one)`,
      hint: `ALTER ROLE ${role} CREATEDB`,
    });
  }
  if (existing !== null && !existing.mayReplace) {
    problems.push({
      code: 'DB_RIGHTS',
      kind: 'precondition',
      message: `the agent's role ${role} may not rename or drop the live database "${live}" (owned by "${existing.owner}"), which the swap does`,
      hint: `GRANT ${JSON.stringify(existing.owner)} TO ${role}`,
    });
  }
  let createsDatabase = false;
  if (existing === null) {
    const missing = databaseMissing(o);
    if (missing === null) createsDatabase = true;
    else problems.push(missing);
  }
  return { agent, createsDatabase, problems };
}

/**
 * database.schema: the shared database must exist (an apply never creates it: it holds other sites
 * too), and the agent, unless a superuser, may create schemas in it and rename and drop the live
 * schema (it is a member of the schema's owner).
 */
async function checkSharedDatabase(config: StandbyConfig, database: string, schema: string): Promise<{ agent: AgentRole; createsDatabase: boolean; problems: PreflightProblem[] }> {
  const { agent, exists } = await withMaintenance(config, async (c) => ({
    agent: await readAgentRole(c),
    exists: ((await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [database])).rowCount ?? 0) > 0,
  }));
  const problems: PreflightProblem[] = [];
  const role = JSON.stringify(agent.name);
  if (!exists) {
    problems.push({
      code: 'DB_MISSING',
      kind: 'precondition',
      message: `the shared database "${database}" (database.url in ${config.configFile}) does not exist on this server; with database.schema an apply replaces one schema in it and never creates the database`,
      hint: `create it as on the primary (CREATE DATABASE ${JSON.stringify(database)} OWNER ...; and the extensions its sites use), or check database.url`,
    });
    return { agent, createsDatabase: false, problems };
  }
  if (!agent.superuser) {
    const r = await withPg(
      config.database,
      (c) =>
        c.query<{ create: boolean; owner: string | null; may: boolean | null }>(
          `SELECT has_database_privilege(session_user, current_database(), 'CREATE') AS create,
                  (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1) AS owner,
                  (SELECT pg_has_role(session_user, nspowner, 'USAGE') FROM pg_namespace WHERE nspname = $1) AS may`,
          [schema],
        ),
      database,
    );
    const row = r.rows[0]!;
    if (!row.create) {
      problems.push({ code: 'DB_RIGHTS', kind: 'precondition', message: `the agent's role ${role} may not create schemas in the database "${database}"`, hint: `GRANT CREATE ON DATABASE ${JSON.stringify(database)} TO ${role}` });
    }
    if (row.owner !== null && row.may === false) {
      problems.push({
        code: 'DB_RIGHTS',
        kind: 'precondition',
        message: `the agent's role ${role} may not rename or drop the live schema "${schema}" (owned by "${row.owner}"), which the switch does`,
        hint: `GRANT ${JSON.stringify(row.owner)} TO ${role}`,
      });
    }
  }
  return { agent, createsDatabase: false, problems };
}

/**
 * The live database does not exist: a misspelt database.url must not become a new, empty database
 * that the site then never uses. Allowed by `--create-database`, or by `database.create: true` while
 * nothing has been applied with this state dir (the first apply). Returns the refusal, or null.
 */
export function databaseMissing(o: Pick<PreflightOptions, 'config' | 'targets' | 'applied' | 'createDatabase'>): PreflightProblem | null {
  const { config, applied, targets } = o;
  if (o.createDatabase) return null;
  if (config.database.create && applied === null) return null;
  const live = targets.db.live;
  if (config.database.create) {
    return {
      code: 'DB_MISSING',
      kind: 'precondition',
      message: `the database "${live}" (database.url in ${config.configFile}) does not exist on this server, though set ${applied!.setId} was applied here before: database.create only lets the first apply create it`,
      hint: `check the database name in database.url (misspelt? renamed?); to create "${live}" anew on purpose, run \`tandem-standby apply --create-database\` once`,
    };
  }
  return {
    code: 'DB_MISSING',
    kind: 'precondition',
    message: `the database "${live}" (database.url in ${config.configFile}) does not exist on this server`,
    hint: `check the database name in database.url (misspelt?); if this is the standby's first apply, let it create "${live}": run \`tandem-standby apply --create-database\`, or set database.create: true in the config`,
  };
}

// ---------------------------------------------------------------------------------------------
// Free space
// ---------------------------------------------------------------------------------------------

interface SpaceNeed {
  /** Where it goes (a directory that may not exist yet). */
  where: string;
  bytes: number;
  what: string;
}

/**
 * What the set puts on disk, from its signed sizes, against the free space of each file system:
 * - the state dir (staging): the dump (plain with restoreJobs > 1, else its stored copy), kept
 *   until the restore, plus the largest stored copy of another artifact that is downloaded whole
 *   (removed once used; the files archive streams when it has chunk digests);
 * - beside each live dir: its archive's plain size (the new copy is unpacked beside the old).
 * Needs on one file system add up. A file system whose free space cannot be read is not judged.
 */
export async function checkSpace(config: StandbyConfig, manifest: Manifest, targets: Targets): Promise<PreflightProblem[]> {
  const entries = artifactEntries(manifest);
  const staging = stagingRoot(config.stateDir);
  const needs: SpaceNeed[] = [];
  const db = entries.db;
  if (db.kind === 'postgres-base') {
    // WAL mode: unpacked beside the live data directory (streamed, or from a stored copy).
    needs.push({ where: dirname(targets.cluster!.live), bytes: db.plainSize, what: 'the new data directory, up to' });
    if (!canStream(db)) needs.push({ where: staging, bytes: db.storedSize, what: "the base backup's stored copy" });
  } else if (config.database.restoreJobs > 1) {
    needs.push({ where: staging, bytes: db.plainSize, what: 'the dump' });
  } else {
    needs.push({ where: staging, bytes: db.storedSize, what: "the dump's stored copy" });
  }
  // What streams (the files archive with chunk digests) has no stored copy in staging.
  const transient: ArtifactEntry[] = [entries.dbmeta, entries.config, entries.security, entries.files].filter(
    (e): e is ArtifactEntry => e !== undefined && !streamsWhenStaged(e, config.database.restoreJobs),
  );
  if (config.database.restoreJobs > 1 && !canStream(db) && db.kind !== 'postgres-base') transient.push(db);
  const largest = transient.reduce<ArtifactEntry | undefined>((a, e) => (a === undefined || e.storedSize > a.storedSize ? e : a), undefined);
  if (largest !== undefined) {
    needs.push({ where: staging, bytes: largest.storedSize, what: `the stored copy of the ${largest.name} artifact while it is used` });
  }
  for (const part of DIR_PARTS) {
    const e = entries[part];
    // A files index is small; what its changed files need is checked when they are known (files-objects.ts).
    if (e.kind === 'files-index') continue;
    needs.push({ where: dirname(targets.dirs[part].live), bytes: e.plainSize, what: `the new ${part} dir, up to` });
  }

  // Group by file system (the device of the nearest existing directory).
  const groups = new Map<number, { path: string; needs: SpaceNeed[] }>();
  for (const n of needs) {
    const near = await nearestExisting(n.where);
    if (near === null) continue;
    const g = groups.get(near.dev) ?? { path: near.path, needs: [] };
    g.needs.push(n);
    groups.set(near.dev, g);
  }
  const problems: PreflightProblem[] = [];
  for (const g of groups.values()) {
    const free = await freeBytes(g.path);
    const total = g.needs.reduce((sum, n) => sum + n.bytes, 0);
    if (free === undefined || free >= total) continue;
    const where = [...new Set(g.needs.map((n) => n.where))].join(', ');
    problems.push({
      code: 'DISK_SPACE',
      kind: 'permanent',
      message: `not enough free space on the file system of ${where}: ${formatBytes(free)} free, and the apply needs ${formatBytes(total)} there (${g.needs.map((n) => `${n.what} ${formatBytes(n.bytes)}`).join('; ')})`,
      hint: `free space on the file system of ${g.path} (an apply builds the new site beside the live one), or move stateDir to a larger file system`,
    });
  }
  return problems;
}

async function nearestExisting(dir: string): Promise<{ path: string; dev: number } | null> {
  let p = resolve(dir);
  for (;;) {
    try {
      const st = await stat(p);
      return { path: p, dev: st.dev };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') return null;
    }
    const up = dirname(p);
    if (up === p) return null;
    p = up;
  }
}
