import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  OBJECT_SCHEMA_SQL,
  TandemError,
  describeError,
  faultByteTrigger,
  isTandemError,
  loadIdentities,
  pgBin,
  pgEnv,
  spawnFilter,
  spawnSource,
  withPg,
  type DbMeta,
  type Logger,
  type Manifest,
  type StandbyConfig,
} from '@tandem/shared';
import { plainStages } from './artifact-stream.js';
import { isPrivileged, readAgentRole, type AgentRole } from './db-prereqs.js';
import { siteCodeSql, sqlRunningBuiltinsLiteral } from './db-props.js';
import { faultPoint } from './fault.js';
import { writeJournal, type Journal } from './journal.js';
import type { PgClient } from './pg.js';
import type { SwapOutcome } from './swap-db.js';
import type { DbNames } from './targets.js';

/**
 * database.schema: the site is one schema of a shared database (Zotonic's dbschema), and an apply
 * replaces that schema alone. The design (docs/design.md, "A site as a schema"):
 *
 * PostgreSQL cannot move a schema between databases, and pg_restore cannot restore a schema under
 * another name, so the new schema cannot be built beside the live one and renamed in. Instead the
 * switch is ONE transaction on the shared database, fed to psql:
 *
 *   BEGIN; ALTER SCHEMA s RENAME TO s__tandem_old; <the dump's schema, as SQL>; [check]; <data,
 *   indexes, constraints>; COMMIT;
 *
 * Until COMMIT the site (and every other session) sees the previous schema; after it, the new one.
 * A failed restore or a killed agent (psql loses its input before COMMIT, or its connection) rolls
 * the whole transaction back: the previous schema is exactly as it was. Nothing else in the
 * database is touched: no other schema, no database property. The price is pg_restore -j (its
 * workers need connections of their own, so they cannot share the transaction): a schema restores
 * in one session.
 *
 * The journal records the live schema's oid before the transaction starts; a roll-forward after a
 * crash tells from it whether the transaction committed (the oid is now s__tandem_old's) or not
 * (it is still s's), and runs it again only in the second case. The previous schema, kept as
 * s__tandem_old, is dropped when the apply has finished (dropOldSchema).
 */

/** Oids of the live and the kept-aside schema, null where there is none. */
async function schemaOids(c: PgClient, names: DbNames): Promise<{ live: number | null; old: number | null }> {
  const r = await c.query<{ nspname: string; oid: number }>('SELECT nspname, oid::int AS oid FROM pg_namespace WHERE nspname = ANY($1)', [[names.live, names.old]]);
  const of = (n: string) => r.rows.find((x) => x.nspname === n)?.oid ?? null;
  return { live: of(names.live), old: of(names.old) };
}

const onShared = <T>(config: StandbyConfig, names: DbNames, fn: (c: PgClient) => Promise<T>): Promise<T> => withPg(config.database, fn, names.schemaOf);

interface OutsideDependent {
  what: string;
  on: string;
}

/** Objects outside the schema that depend on objects in it: replacing the schema would drop them (CASCADE). */
async function outsideDependents(c: PgClient, schema: string): Promise<OutsideDependent[]> {
  const r = await c.query<OutsideDependent>(
    `WITH s AS (SELECT oid FROM pg_namespace WHERE nspname = $1)
     SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) AS what,
                     pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) AS on
       FROM pg_depend d, s
      WHERE d.deptype IN ('n', 'a')
        AND (${OBJECT_SCHEMA_SQL('d.refclassid', 'd.refobjid')}) = s.oid
        AND (${OBJECT_SCHEMA_SQL('d.classid', 'd.objid')}) IS DISTINCT FROM s.oid
      ORDER BY 1, 2`,
    [schema],
  );
  return r.rows;
}

/**
 * Before anything live changes: the shared database exists (checked by the preflight), every
 * extension the schema's objects use is installed in it, in the schema the primary has it in, and
 * nothing outside the site's schema depends on the live one (replacing it would take such an
 * object along). Every problem at once, each with the statement that fixes it.
 */
export async function checkSchemaPrereqs(config: StandbyConfig, names: DbNames, meta: DbMeta, setId: string, logger: Logger): Promise<void> {
  const problems: string[] = [];
  await onShared(config, names, async (c) => {
    const here = new Map(
      (
        await c.query<{ name: string; version: string; schema: string }>(
          'SELECT e.extname AS name, e.extversion AS version, n.nspname AS schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace',
        )
      ).rows.map((e) => [e.name, e]),
    );
    for (const ext of meta.extensions) {
      const got = here.get(ext.name);
      if (got === undefined) {
        problems.push(
          `the schema "${names.live}" uses the extension "${ext.name}" (in schema "${ext.schema}" on the primary), which is not installed in the database "${names.schemaOf}" here: CREATE EXTENSION ${c.escapeIdentifier(ext.name)} SCHEMA ${c.escapeIdentifier(ext.schema)};`,
        );
      } else if (got.schema !== ext.schema) {
        problems.push(
          `the extension "${ext.name}" is in schema "${got.schema}" here but in "${ext.schema}" on the primary, and the schema "${names.live}" refers to it there: ALTER EXTENSION ${c.escapeIdentifier(ext.name)} SET SCHEMA ${c.escapeIdentifier(ext.schema)};`,
        );
      } else if (got.version !== ext.version) {
        logger.warn({ extension: ext.name, here: got.version, primary: ext.version }, 'an extension the schema uses is at another version here than on the primary');
      }
    }
    // What the schema uses from other schemas of the database (a function in public ...).
    await c.query('SET search_path TO pg_catalog');
    for (const o of meta.schema?.outside ?? []) {
      const fn = o.kind === 'type' ? 'to_regtype' : o.kind === 'function' ? 'to_regprocedure' : 'to_regclass';
      const found = (await c.query<{ ok: boolean }>(`SELECT ${fn}($1) IS NOT NULL AS ok`, [o.name])).rows[0]?.ok === true;
      if (!found) {
        problems.push(`the schema "${names.live}" uses the ${o.kind === 'relation' ? 'table or view' : o.kind} ${o.name}, which does not exist in the database "${names.schemaOf}" here: create it as it is on the primary`);
      }
    }
    const deps = await outsideDependents(c, names.live);
    if (deps.length > 0) {
      problems.push(
        `objects outside the schema "${names.live}" depend on it, and replacing the schema would drop them:\n${deps.map((d) => `      ${d.what} (on ${d.on})`).join('\n')}`,
      );
    }
  });
  if (problems.length > 0) {
    throw new TandemError('precondition', 'SCHEMA_PREREQUISITES', `set ${setId} cannot replace the schema "${names.live}" of the database "${names.schemaOf}" (nothing was changed):\n${problems.map((p) => `  - ${p}`).join('\n')}`, {
      hint: 'run the statements above on the standby (a site\'s schema must not be needed by other schemas), then apply again',
    });
  }
}

/** The set carries the same kind of database part as this standby replaces. */
export function checkSetShape(config: StandbyConfig, manifest: Manifest): void {
  const theirs = manifest.database.schema;
  const ours = config.database.schema;
  if (theirs === ours) return;
  const what = (s: string | undefined) => (s === undefined ? `the whole database "${manifest.database.name}"` : `the schema "${s}"`);
  throw new TandemError(
    'config',
    'SET_SHAPE_MISMATCH',
    `set ${manifest.setId} carries ${what(theirs)}, but this standby's database.schema ${ours === undefined ? 'is not set (it replaces a whole database)' : `is "${ours}"`}`,
    { hint: `make database.schema in ${config.configFile} the same as in the primary's config` },
  );
}

/**
 * The switch of a schema (see the top of this file). Idempotent for roll-forward: when the journal
 * shows an earlier attempt and the catalogs show it committed, it is done.
 */
export async function switchSchema(config: StandbyConfig, journal: Journal, opts: { agent?: AgentRole; logger: Logger }): Promise<SwapOutcome> {
  const names = journal.targets.db;
  const sw = journal.schemaSwitch;
  if (sw === undefined) throw new TandemError('internal', 'JOURNAL_UNKNOWN', 'the apply journal has no staged dump for the schema switch', { hint: 'apply again with --force' });
  const now = await onShared(config, names, (c) => schemaOids(c, names));
  if (sw.liveOid !== undefined) {
    // An earlier attempt started the transaction: did it commit?
    if (sw.liveOid !== null && now.old === sw.liveOid) return 'already';
    if (now.live !== null && now.live !== sw.liveOid) return 'already';
  }
  // A previous schema the last apply could not drop: the live one is whole, so it can go.
  if (now.old !== null) await dropOldSchema(config, names, opts.logger);
  journal.schemaSwitch = { ...sw, liveOid: now.live };
  await writeJournal(config.stateDir, journal);
  faultPoint('schema-switch-started');
  const t0 = performance.now();
  const agent = opts.agent ?? (await onShared(config, names, readAgentRole));
  await restoreInOneTransaction(config, journal, names, now.live !== null, isPrivileged(agent), opts.logger);
  journal.durations.restore = Math.round(performance.now() - t0) / 1000;
  return now.live === null ? 'first' : 'swapped';
}

async function restoreInOneTransaction(config: StandbyConfig, journal: Journal, names: DbNames, hasLive: boolean, privileged: boolean, logger: Logger): Promise<void> {
  const staged = journal.schemaSwitch!.staged;
  const setId = journal.setId;
  const q = (n: string) => `"${n.replace(/"/g, '""')}"`;
  const env = pgEnv(config.database);
  // The age identities of a stored copy, read once for every pass over it.
  const identities = staged.form === 'stored' && staged.entry.encryption === 'age' ? loadIdentities(config.keys.identityFile!, logger) : [];
  const restoreOut = (sections: string[]): AsyncIterable<Buffer> => {
    const args = ['--exit-on-error', '--file=-', ...sections];
    const opts = { label: `pg_restore of set ${setId}`, env, package: 'postgresql-client' };
    if (staged.form === 'plain') return spawnSource(pgBin(config.database, 'pg_restore'), [...args, staged.file], opts);
    const out = new PassThrough();
    pipeline([
      ...plainStages(staged.file, staged.entry, identities, `set ${setId}: db artifact (${staged.entry.file})`),
      spawnFilter(pgBin(config.database, 'pg_restore'), args, opts),
      out,
    ]).catch((err: unknown) => out.destroy(err as Error));
    return out;
  };
  /**
   * The schema's definitions alone (pre-data). From the stored copy, pg_restore reads the table of
   * contents at the front of the dump and exits 0 without reading the data behind it; its SQL goes
   * to a file in the staging dir (definitions, no rows) so that stopping early loses nothing.
   */
  const preData = async (): Promise<AsyncIterable<Buffer>> => {
    if (staged.form === 'plain') return restoreOut(['--section=pre-data']);
    const file = join(journal.stagingDir, 'pre-data.sql');
    await rm(file, { force: true });
    const restore = spawnFilter(pgBin(config.database, 'pg_restore'), ['--exit-on-error', '--section=pre-data', `--file=${file}`], {
      label: `pg_restore of set ${setId}`,
      env,
      package: 'postgresql-client',
    });
    try {
      await pipeline([...plainStages(staged.file, staged.entry, identities, `set ${setId}: db artifact (${staged.entry.file})`), restore, new Writable({ write: (_c, _e, cb) => cb() })]);
    } catch (err) {
      if (restore.exitStatus?.code !== 0) throw err;
    }
    const out = createReadStream(file);
    out.once('close', () => void rm(file, { force: true }));
    return out;
  };
  async function* script(): AsyncGenerator<Buffer | string> {
    yield 'BEGIN;\n';
    if (hasLive) yield `ALTER SCHEMA ${q(names.live)} RENAME TO ${q(names.old)};\n`;
    if (privileged) {
      // The schema first (no site code runs), then a check of what loading the data would run.
      yield* restrictedSql(await preData(), `pg_restore of set ${setId}`);
      yield siteCodeCheck(names.live);
      yield* restrictedSql(restoreOut(['--section=data', '--section=post-data']), `pg_restore of set ${setId}`);
    } else {
      yield* restrictedSql(restoreOut([]), `pg_restore of set ${setId}`);
    }
    // Only once every statement before it was handed over: a cut-off script never commits.
    yield 'COMMIT;\n';
  }
  const psql = spawnFilter(
    pgBin(config.database, 'psql'),
    ['--no-psqlrc', '--quiet', '--set=ON_ERROR_STOP=1', `--dbname=${urlOf(config, names)}`],
    { label: `the switch of schema "${names.live}"`, env, package: 'postgresql-client' },
  );
  logger.debug({ schema: names.live, database: names.schemaOf, privileged }, 'schema switch started (one transaction)');
  try {
    await pipeline([Readable.from(script()), ...faultByteTrigger('restore:db'), psql, new Writable({ write: (_c, _e, cb) => cb() })]);
  } catch (err) {
    if (isTandemError(err, 'config')) throw err;
    const stderr = psql.stderrTail;
    const unsafe = /tandem-site-code/.exec(stderr);
    if (unsafe) {
      const detail = stderr.split('\n').filter((l) => l.startsWith('DETAIL:') || l.startsWith('the ') || /^\s/.test(l)).map((l) => `    ${l.replace(/^DETAIL:\s*/, '').trim()}`).join('\n');
      throw new TandemError(
        'precondition',
        'DB_RESTORE_UNSAFE',
        `set ${setId} was not restored: loading its data would run the site's code with the rights of the agent's role (a superuser, CREATEROLE or server file access), which the site's own roles do not have:\n${detail}\nThe transaction was rolled back: the schema "${names.live}" is as it was.`,
        { hint: 'connect the standby agent as a role without SUPERUSER or CREATEROLE that has membership in the roles owning the site (docs/operations.md, "The standby\'s database role")' },
      );
    }
    throw new TandemError(
      'external',
      'SCHEMA_RESTORE_FAILED',
      `the restore of set ${setId} into the schema "${names.live}" of the database "${names.schemaOf}" failed and was rolled back; the previous schema is as it was:\n${indent(stderr || describeError(err))}`,
      { hint: 'fix what psql/pg_restore says (a missing role, extension or object outside the schema) and apply again', cause: err },
    );
  }
  faultPoint('schema-committed');
}

/** How far into pg_restore's SQL its `\restrict` line must come (only comments and blank lines before it). */
const RESTRICT_WITHIN_BYTES = 64 * 1024;

/**
 * pg_restore's SQL, passed on only when it starts (after its header comments) with `\restrict
 * <key>`: with it, psql refuses every meta-command until the matching `\unrestrict`, so an object
 * name the site's own role crafted with a newline and `\! command` in it (CVE-2025-8714) cannot
 * make psql run anything. pg_restore writes it from PostgreSQL 13.22, 14.19, 15.14, 16.10 and 17.6
 * on; an older one is refused before psql has seen a byte of its output.
 */
export async function* restrictedSql(source: AsyncIterable<Buffer | string>, what: string): AsyncGenerator<Buffer> {
  let head = Buffer.alloc(0);
  let checked = false;
  for await (const piece of source) {
    const chunk = typeof piece === 'string' ? Buffer.from(piece) : piece;
    if (checked) {
      yield chunk;
      continue;
    }
    head = Buffer.concat([head, chunk]);
    const text = head.toString('latin1');
    const lines = text.split('\n');
    const complete = lines.slice(0, -1);
    const first = complete.find((l) => l.trim() !== '' && !l.startsWith('--'));
    if (first === undefined && head.length < RESTRICT_WITHIN_BYTES) continue;
    if (first === undefined || !/^\\restrict [A-Za-z0-9]+\r?$/.test(first)) throw unrestricted(what);
    checked = true;
    yield head;
  }
  if (!checked && head.length > 0) throw unrestricted(what);
}

const unrestricted = (what: string) =>
  new TandemError(
    'config',
    'PG_RESTORE_UNRESTRICTED',
    `${what}: pg_restore does not guard its SQL output against psql meta-commands (no \\restrict line): a schema apply feeds that output to psql, where a crafted object name could run a command`,
    { hint: 'install current PostgreSQL client tools (13.22, 14.19, 15.14, 16.10, 17.6 or later) and, unless they come first on PATH, point database.binDir at them' },
  );

/** A DO block that raises `tandem-site-code` (the finds as DETAIL) when loading the data would run site code. */
function siteCodeCheck(schema: string): string {
  const ns = `(SELECT oid FROM pg_namespace WHERE nspname = '${schema.replace(/'/g, "''")}')`;
  return `DO $tandem$
DECLARE found text;
BEGIN
  SELECT string_agg(format('%s calls %s (%s)', q.what, q.fn, q.why), E'\\n') INTO found
    FROM (${siteCodeSql(sqlRunningBuiltinsLiteral(), ns)}) q;
  IF found IS NOT NULL THEN
    RAISE EXCEPTION 'tandem-site-code' USING DETAIL = found;
  END IF;
END
$tandem$;
`;
}

function urlOf(config: StandbyConfig, names: DbNames): string {
  const u = new URL(config.database.url);
  u.pathname = `/${encodeURIComponent(names.schemaOf!)}`;
  return u.toString();
}

const LOCK_NOT_AVAILABLE = '55P03';

/**
 * Drops the previous schema kept aside by a switch. Sessions still reading its tables (they began
 * before the switch) are ended; an object outside the schema that came to depend on it in the
 * meantime keeps it (never dropped along: logged, for the operator).
 */
export async function dropOldSchema(config: StandbyConfig, names: DbNames, logger: Logger): Promise<void> {
  await onShared(config, names, async (c) => {
    const exists = await c.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [names.old]);
    if ((exists.rowCount ?? 0) === 0) return;
    const deps = await outsideDependents(c, names.old);
    if (deps.length > 0) {
      logger.warn({ schema: names.old, dependents: deps.map((d) => d.what) }, 'the previous schema was kept: objects outside it depend on it; drop them, then DROP SCHEMA ... CASCADE');
      return;
    }
    for (let attempt = 1; ; attempt++) {
      const holders = await c.query<{ pid: number }>(
        `SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_class r ON r.oid = l.relation
          WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND r.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1) AND l.pid <> pg_backend_pid()`,
        [names.old],
      );
      for (const h of holders.rows) await c.query('SELECT pg_terminate_backend($1)', [h.pid]);
      if (holders.rows.length > 0) logger.info({ schema: names.old, sessions: holders.rows.length }, 'ended sessions still reading the previous schema');
      try {
        await c.query("SET lock_timeout = '5s'");
        await c.query(`DROP SCHEMA ${c.escapeIdentifier(names.old)} CASCADE`);
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== LOCK_NOT_AVAILABLE || attempt >= 5) throw err;
        await sleep(200 * attempt);
      }
    }
  });
}

const indent = (text: string) => text.split('\n').map((l) => `    ${l}`).join('\n');
