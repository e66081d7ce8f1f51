import { TandemError, splitSetting, withPg, type DbMeta, type Logger, type StandbyConfig } from '@tandem/shared';
import { isPreserved, setClause } from './db-prereqs.js';
import { databaseExists, withMaintenance, type PgClient } from './pg.js';
import type { Names } from './targets.js';

/**
 * Makes the restored (not yet live) database carry the primary's own properties: its settings,
 * the per-role settings in it, its grants, its comment, and its extensions at the primary's
 * versions. Runs after pg_restore (a setting such as default_transaction_read_only or a short
 * statement_timeout must not apply to the restore itself) and before the swap, so the rename
 * keeps all of it. Settings listed in database.preserveSettings keep the live database's value.
 */
export async function applyDatabaseProperties(config: StandbyConfig, names: Names, meta: DbMeta, logger: Logger): Promise<void> {
  await withMaintenance(config, async (c) => {
    const db = c.escapeIdentifier(names.next);
    const live = (await databaseExists(c, names.live)) ? await liveSettings(c, names.live) : new Map<string, string[]>();

    // ALTER DATABASE ... SET (setrole 0 in pg_db_role_setting) and ALTER ROLE ... IN DATABASE ... SET.
    const wanted = new Map<string, string[]>([['', meta.database.settings]]);
    for (const rs of meta.database.roleSettings) wanted.set(rs.role, rs.settings);
    for (const role of new Set([...wanted.keys(), ...live.keys()])) {
      const fromPrimary = (wanted.get(role) ?? []).filter((s) => !isPreserved(config, splitSetting(s)[0]));
      const kept = (live.get(role) ?? []).filter((s) => isPreserved(config, splitSetting(s)[0]));
      for (const s of [...fromPrimary, ...kept]) {
        const [name, value] = splitSetting(s);
        const target = role === '' ? `DATABASE ${db}` : `ROLE ${c.escapeIdentifier(role)} IN DATABASE ${db}`;
        await c.query(`ALTER ${target} ${setClause(c, name, value)}`);
      }
    }

    if (meta.database.grants !== null) {
      await c.query(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC, ${c.escapeIdentifier(meta.database.owner)}`);
      for (const g of meta.database.grants) {
        const to = g.grantee === null ? 'PUBLIC' : c.escapeIdentifier(g.grantee);
        await c.query(`GRANT ${g.privilege} ON DATABASE ${db} TO ${to}${g.grantable ? ' WITH GRANT OPTION' : ''}`);
      }
    }
    await c.query(`COMMENT ON DATABASE ${db} IS ${meta.database.comment === null ? 'NULL' : c.escapeLiteral(meta.database.comment)}`);
  });

  // pg_dump's CREATE EXTENSION names no version: bring each to the primary's.
  if (meta.extensions.length === 0) return;
  await withPg(
    config.database,
    async (c) => {
      const here = new Map((await c.query<{ extname: string; extversion: string }>('SELECT extname, extversion FROM pg_extension')).rows.map((r) => [r.extname, r.extversion]));
      for (const ext of meta.extensions) {
        const v = here.get(ext.name);
        if (v === undefined || v === ext.version) continue;
        await c.query(`ALTER EXTENSION ${c.escapeIdentifier(ext.name)} UPDATE TO ${c.escapeLiteral(ext.version)}`);
        logger.info({ extension: ext.name, from: v, to: ext.version }, "extension updated to the primary's version");
      }
    },
    names.next,
  );
}

/**
 * pg_dump writes `CREATE EXTENSION IF NOT EXISTS x WITH SCHEMA s`, no version: an extension in a
 * schema every new database has (public) is installed here first at the primary's version, so the
 * restore finds it. Others are brought to the version afterwards (applyDatabaseProperties).
 */
export async function preinstallExtensions(config: StandbyConfig, names: Names, meta: DbMeta): Promise<void> {
  const wanted = meta.extensions.filter((e) => e.schema === 'public');
  if (wanted.length === 0) return;
  await withPg(
    config.database,
    async (c) => {
      for (const ext of wanted) {
        await c.query(`CREATE EXTENSION IF NOT EXISTS ${c.escapeIdentifier(ext.name)} WITH SCHEMA public VERSION ${c.escapeLiteral(ext.version)} CASCADE`);
      }
    },
    names.next,
  );
}

async function liveSettings(c: PgClient, live: string): Promise<Map<string, string[]>> {
  const r = await c.query<{ role: string; settings: string[] }>(
    `SELECT CASE WHEN s.setrole = 0 THEN '' ELSE pg_get_userbyid(s.setrole) END AS role, s.setconfig AS settings
       FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1`,
    [live],
  );
  return new Map(r.rows.map((row) => [row.role, row.settings]));
}

/** Builtin functions that run SQL given to them as text (or read a named table or view). */
const SQL_RUNNING_BUILTINS = [
  'query_to_xml',
  'query_to_xmlschema',
  'query_to_xml_and_xmlschema',
  'table_to_xml',
  'table_to_xmlschema',
  'table_to_xml_and_xmlschema',
  'cursor_to_xml',
  'cursor_to_xmlschema',
  'schema_to_xml',
  'schema_to_xmlschema',
  'schema_to_xml_and_xmlschema',
  'database_to_xml',
  'database_to_xmlschema',
  'database_to_xml_and_xmlschema',
  'ts_stat',
  'ts_rewrite',
];

/**
 * Finds what loading the data would run of the site's code: CHECK constraints of tables and
 * domains, generated columns and partition keys calling a function a non-superuser owns, one
 * PUBLIC may not execute, or a builtin that runs SQL text. Columns what, fn, owner, why. `builtins`
 * is the SQL of the text[] of SQL_RUNNING_BUILTINS; `schema`, the SQL of a schema's oid: only that
 * schema's objects (database.schema), else the whole database.
 */
export function siteCodeSql(builtins: string, schema?: string): string {
  const inSchema = (rel: string) => (schema === undefined ? '' : ` AND (SELECT relnamespace FROM pg_class WHERE oid = ${rel}) = ${schema}`);
  return `WITH exprs AS (
             SELECT d.refclassid, d.refobjid,
                    CASE WHEN c.contypid <> 0 THEN format('the CHECK constraint %I of domain %s', c.conname, c.contypid::regtype)
                         ELSE format('the CHECK constraint %I of table %s', c.conname, c.conrelid::regclass) END AS what
               FROM pg_constraint c JOIN pg_depend d ON d.classid = 'pg_constraint'::regclass AND d.objid = c.oid
              WHERE c.contype = 'c'${schema === undefined ? '' : ` AND c.connamespace = ${schema}`}
             UNION ALL
             SELECT d.refclassid, d.refobjid, format('the generated column %I of table %s', att.attname, a.adrelid::regclass)
               FROM pg_attrdef a
               JOIN pg_attribute att ON att.attrelid = a.adrelid AND att.attnum = a.adnum AND att.attgenerated <> ''
               JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = a.oid${inSchema('a.adrelid')}
             UNION ALL
             SELECT d.refclassid, d.refobjid, format('the partition key of table %s', p.partrelid::regclass)
               FROM pg_partitioned_table p
               JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = p.partrelid AND d.objsubid = 0${inSchema('p.partrelid')}
           ), fns AS (
             SELECT refobjid AS fn, what FROM exprs WHERE refclassid = 'pg_proc'::regclass
             UNION ALL
             SELECT o.oprcode::oid, e.what FROM exprs e JOIN pg_operator o ON e.refclassid = 'pg_operator'::regclass AND o.oid = e.refobjid
           )
           SELECT DISTINCT f.what, p.oid::regprocedure::text AS fn, pg_get_userbyid(p.proowner) AS owner,
                  CASE WHEN NOT r.rolsuper THEN 'owned by the role ' || quote_ident(r.rolname)
                       WHEN p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY(${builtins}) THEN 'runs SQL given to it as text'
                       ELSE 'a privileged function PUBLIC may not execute' END AS why
             FROM fns f JOIN pg_proc p ON p.oid = f.fn JOIN pg_roles r ON r.oid = p.proowner
            WHERE NOT r.rolsuper
               OR (p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY(${builtins}))
               OR (p.proacl IS NOT NULL AND NOT EXISTS (
                     SELECT 1 FROM aclexplode(p.proacl) x WHERE x.grantee = 0 AND x.privilege_type = 'EXECUTE'))
            ORDER BY 1, 2`;
}

/** SQL_RUNNING_BUILTINS as an array literal, for a statement that cannot take parameters. */
export const sqlRunningBuiltinsLiteral = (): string => `ARRAY[${SQL_RUNNING_BUILTINS.map((n) => `'${n}'`).join(', ')}]::text[]`;

/**
 * Loading the data runs some of the site's expressions in the restoring session itself, not as the
 * table's owner: CHECK constraints (of tables and domains), generated columns and partition keys.
 * When that session has rights beyond the site's roles (a superuser, CREATEROLE, server file
 * access), a function from one of the site's roles in such an expression would run with them.
 * Called after the pre-data section is restored (no data yet, so nothing of the site has run):
 * refuses, naming each expression and function, when any such expression calls a function that a
 * site role owns, that PUBLIC may not execute (a privileged builtin such as lo_export or
 * pg_read_file), or a builtin that runs SQL text.
 */
export async function refuseSiteCodeInDataLoad(config: StandbyConfig, names: Names, setId: string, agentName: string): Promise<void> {
  const found = await withPg(
    config.database,
    async (c) =>
      (
        await c.query<{ what: string; fn: string; owner: string; why: string }>(
          siteCodeSql('$1'),
          [SQL_RUNNING_BUILTINS],
        )
      ).rows,
    names.next,
  );
  if (found.length === 0) return;
  throw new TandemError(
    'precondition',
    'DB_RESTORE_UNSAFE',
    `set ${setId} was not restored: loading its data would run the site's code with the rights of the agent's role "${agentName}" (a superuser, CREATEROLE or server file access), which the site's own roles do not have:\n${found
      .map((f) => `    ${f.what} calls ${f.fn} (${f.why})`)
      .join('\n')}\nThe live database is untouched; the new one was dropped.`,
    {
      hint: 'connect the standby agent as a role without SUPERUSER or CREATEROLE that has CREATEDB and membership in the roles owning the site (docs/operations.md, "The standby\'s database role")',
    },
  );
}

/** For sets made by an earlier tandem, which carry no database description. */
export function legacyMetaWarning(logger: Logger, setId: string): void {
  logger.warn({ setId }, 'the set has no database description (made by an earlier tandem): owners and grants come from the dump, database-level settings and grants are not carried, roles are not checked');
}
