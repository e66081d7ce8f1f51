import { TandemError, withPg, type PrimaryConfig } from '@tandem/shared';

type PgClient = Parameters<Parameters<typeof withPg>[1]>[0];

/** Where the dump reads: every schema but the system's. */
const ALL_USER_SCHEMAS = `n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'`;

/** database.schema: the dump reads that schema alone (and no large objects: pg_dump --schema leaves them out). */
const schemaFilter = (c: PgClient, schema: string | undefined): string =>
  schema === undefined ? ALL_USER_SCHEMAS : `n.nspname = ${c.escapeLiteral(schema)}`;

/** At most this many names per kind of problem in the message. */
const SHOW = 5;

const plural = (n: number, what: string): string => `${n} ${what}${n === 1 ? '' : 's'}`;

const list = (names: string[]): string => (names.length > SHOW ? `${names.slice(0, SHOW).join(', ')} and ${names.length - SHOW} more` : names.join(', '));

/**
 * Whether the agent's role can read everything `pg_dump` reads: USAGE on every schema, SELECT on
 * every table and sequence (a table with row level security only as its owner or with BYPASSRLS:
 * pg_dump turns row security off and fails on such a table otherwise), and every large object.
 * A superuser can; a member of pg_read_all_data can read the tables and sequences, but not the
 * large objects (unless lo_compat_privileges is on). Returns what it
 * looked at; throws one error listing every problem. Reads the catalogs only.
 */
export async function checkDumpAccess(config: PrimaryConfig): Promise<string> {
  return withPg(config.database, async (c) => {
    const who = (
      await c.query<{ u: string; su: boolean; bypass: boolean; readall: boolean; locompat: string }>(
        `SELECT session_user AS u, r.rolsuper AS su, r.rolbypassrls AS bypass,
                EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = 'pg_read_all_data' AND pg_has_role(session_user, a.oid, 'USAGE')) AS readall,
                current_setting('lo_compat_privileges') AS locompat
           FROM pg_roles r WHERE r.rolname = session_user`,
      )
    ).rows[0]!;
    const inDump = schemaFilter(c, config.database.schema);
    const counts = await countObjects(c, inDump, config.database.schema === undefined);
    const what = [plural(counts.tables, 'table'), plural(counts.sequences, 'sequence'), plural(counts.largeObjects, 'large object')].join(', ');
    if (who.su) return `role "${who.u}" is a superuser: it can read everything pg_dump reads (${what})`;

    const problems: string[] = [];
    const connect = (await c.query<{ ok: boolean }>(`SELECT has_database_privilege(current_database(), 'CONNECT') AS ok`)).rows[0]!.ok;
    if (!connect) problems.push('no CONNECT on the database');
    const schemas = await names(c, `SELECT n.nspname AS name FROM pg_namespace n WHERE ${inDump} AND NOT has_schema_privilege(n.oid, 'USAGE') ORDER BY 1`);
    if (schemas.length > 0) problems.push(`no USAGE on schema${schemas.length > 1 ? 's' : ''} ${list(schemas)}`);
    if (!who.readall) {
      const tables = await names(
        c,
        `SELECT format('%I.%I', n.nspname, t.relname) AS name FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
          WHERE t.relkind IN ('r', 'p', 'S') AND ${inDump} AND NOT has_table_privilege(t.oid, 'SELECT') ORDER BY 1`,
      );
      if (tables.length > 0) problems.push(`no SELECT on ${list(tables)}`);
    }
    // pg_read_all_data does not cover large objects.
    const los = who.locompat === 'on' || config.database.schema !== undefined ? 0 : await unreadableLargeObjects(c);
    if (los > 0) problems.push(`no SELECT on ${plural(los, 'large object')}`);
    if (!who.bypass) {
      const rls = await names(
        c,
        `SELECT format('%I.%I', n.nspname, t.relname) AS name FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
          WHERE t.relkind IN ('r', 'p') AND t.relrowsecurity AND ${inDump} AND NOT pg_has_role(session_user, t.relowner, 'USAGE') ORDER BY 1`,
      );
      if (rls.length > 0) problems.push(`row level security on ${list(rls)}, which pg_dump reads only as their owner or with BYPASSRLS`);
    }
    if (problems.length > 0) {
      throw new TandemError('config', 'DB_DUMP_ACCESS', `role "${who.u}" cannot read everything pg_dump reads: ${problems.join('; ')}`, {
        hint: `connect as the database's owner or a superuser (database.url), or GRANT pg_read_all_data TO "${who.u}" (and SELECT on the large objects, BYPASSRLS for tables with row level security)`,
      });
    }
    return `role "${who.u}" can read everything pg_dump reads (${what})`;
  });
}

/** Large objects the session may not read: neither owned through its roles nor granted SELECT. */
async function unreadableLargeObjects(c: PgClient): Promise<number> {
  const r = await c.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_largeobject_metadata l
      WHERE NOT pg_has_role(session_user, l.lomowner, 'USAGE')
        AND NOT EXISTS (SELECT 1 FROM aclexplode(l.lomacl) a
                         WHERE a.privilege_type = 'SELECT' AND (a.grantee = 0 OR pg_has_role(session_user, a.grantee, 'USAGE')))`,
  );
  return Number(r.rows[0]!.n);
}

async function names(c: PgClient, sql: string): Promise<string[]> {
  return (await c.query<{ name: string }>(sql)).rows.map((r) => r.name);
}

async function countObjects(c: PgClient, where: string, largeObjects: boolean): Promise<{ tables: number; sequences: number; largeObjects: number }> {
  const r = await c.query<{ tables: string; sequences: string; los: string }>(
    `SELECT count(*) FILTER (WHERE t.relkind IN ('r', 'p')) AS tables, count(*) FILTER (WHERE t.relkind = 'S') AS sequences,
            ${largeObjects ? '(SELECT count(*) FROM pg_largeobject_metadata)' : '0'} AS los
       FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace WHERE ${where}`,
  );
  const row = r.rows[0]!;
  return { tables: Number(row.tables), sequences: Number(row.sequences), largeObjects: Number(row.los) };
}
