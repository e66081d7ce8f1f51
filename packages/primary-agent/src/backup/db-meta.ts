import {
  DB_META_FORMAT,
  TandemError,
  dbMetaSchema,
  OBJECT_SCHEMA_SQL,
  withPg,
  type DbGrant,
  type DbMeta,
  type DbMetaRole,
  type PrimaryConfig,
  type RoleDefinition,
} from '@tandem/shared';

type Use = DbMetaRole['uses'][number];

/** An object an extension created: pg_dump writes CREATE EXTENSION for it, not its owner. */
const notMember = (catalog: string) =>
  `NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '${catalog}'::regclass AND e.objid = x.oid AND e.deptype = 'e')`;

/**
 * Reads, from the primary's catalogs, what the dump does not carry: the database's own owner,
 * grants, comment and settings, the extensions with their versions, and every role the database
 * refers to (owners, grantees, policy roles, roles with in-database settings). With
 * `database.roles: carry` it also reads those roles' definitions.
 *
 * Roles come from pg_shdepend, PostgreSQL's own record of which role each object depends on, so
 * no catalog is missed; it leaves out the bootstrap superuser (pinned), which is added when it
 * owns anything of the site.
 */
export async function readDbMeta(config: PrimaryConfig): Promise<DbMeta> {
  if (config.database.schema !== undefined) return readSchemaMeta(config, config.database.schema);
  return withPg(config.database, async (c) => {
    const db = (
      await c.query<{
        oid: number;
        name: string;
        owner: string;
        encoding: string;
        collate: string;
        ctype: string;
        has_acl: boolean;
        comment: string | null;
        settings: string[] | null;
      }>(
        `SELECT d.oid, d.datname AS name, pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS encoding,
                d.datcollate AS collate, d.datctype AS ctype, d.datacl IS NOT NULL AS has_acl,
                shobj_description(d.oid, 'pg_database') AS comment,
                (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0) AS settings
           FROM pg_database d WHERE d.datname = current_database()`,
      )
    ).rows[0]!;

    let grants: DbGrant[] | null = null;
    if (db.has_acl) {
      const r = await c.query<{ grantee: string | null; privilege: DbGrant['privilege']; grantable: boolean }>(
        `SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee,
                a.privilege_type AS privilege, a.is_grantable AS grantable
           FROM pg_database d, LATERAL aclexplode(d.datacl) WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, n)
          WHERE d.oid = $1 ORDER BY a.n`,
        [db.oid],
      );
      grants = r.rows;
    }

    const roleSettings = (
      await c.query<{ role: string; settings: string[] }>(
        `SELECT pg_get_userbyid(s.setrole) AS role, s.setconfig AS settings
           FROM pg_db_role_setting s WHERE s.setdatabase = $1 AND s.setrole <> 0 ORDER BY 1`,
        [db.oid],
      )
    ).rows;

    const extensions = (
      await c.query<{ name: string; version: string; schema: string }>(
        `SELECT e.extname AS name, e.extversion AS version, n.nspname AS schema
           FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname <> 'plpgsql' ORDER BY 1`,
      )
    ).rows;

    // Every role an object of this database (or the database itself) depends on, and how.
    const deps = await c.query<{ name: string; use: Use }>(
      `SELECT DISTINCT r.rolname AS name,
              CASE d.deptype WHEN 'o' THEN 'owner' WHEN 'r' THEN 'policy' ELSE 'grantee' END AS use
         FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
        WHERE d.refclassid = 'pg_authid'::regclass AND d.deptype IN ('o', 'a', 'r')
          AND (d.dbid = $1 OR (d.dbid = 0 AND d.classid = 'pg_database'::regclass AND d.objid = $1))
      UNION
       SELECT pg_get_userbyid(d.datdba), 'owner' FROM pg_database d WHERE d.oid = $1
      UNION
       -- the bootstrap superuser is pinned (pg_shdepend does not record it): find what it owns
       -- that the dump names an owner for (not extension members, array or row types)
       SELECT pg_get_userbyid(10), 'owner' WHERE EXISTS (
         SELECT 1 FROM pg_class x WHERE relowner = 10 AND oid >= 16384 AND ${notMember('pg_class')}
         UNION ALL SELECT 1 FROM pg_proc x WHERE proowner = 10 AND oid >= 16384 AND ${notMember('pg_proc')}
         UNION ALL SELECT 1 FROM pg_type x WHERE typowner = 10 AND oid >= 16384 AND typrelid = 0 AND typcategory <> 'A' AND ${notMember('pg_type')}
         UNION ALL SELECT 1 FROM pg_namespace x WHERE nspowner = 10 AND oid >= 16384 AND ${notMember('pg_namespace')}
         UNION ALL SELECT 1 FROM pg_largeobject_metadata WHERE lomowner = 10)`,
      [db.oid],
    );
    const uses = new Map<string, Set<Use>>();
    const add = (name: string, use: Use) => uses.set(name, (uses.get(name) ?? new Set<Use>()).add(use));
    for (const d of deps.rows) add(d.name, d.use);
    for (const s of roleSettings) add(s.role, 'settings');
    // Predefined roles (pg_read_all_data, pg_database_owner ...) exist in every cluster.
    const names = [...uses.keys()].filter((n) => !n.startsWith('pg_')).sort();

    const definitions = config.database.roles === 'carry' ? await readRoleDefinitions(c, names) : undefined;
    const meta: DbMeta = {
      format: DB_META_FORMAT,
      version: 1,
      database: {
        name: db.name,
        owner: db.owner,
        encoding: db.encoding,
        collate: db.collate,
        ctype: db.ctype,
        grants,
        comment: db.comment,
        settings: db.settings ?? [],
        roleSettings,
      },
      extensions,
      roles: names.map((name) => ({
        name,
        uses: [...uses.get(name)!].sort(),
        ...(definitions ? { definition: definitions.get(name)! } : {}),
      })),
    };
    return dbMetaSchema.parse(meta);
  });
}

type Client = Parameters<Parameters<typeof withPg>[1]>[0];


/**
 * database.schema: what the dump of one schema (pg_dump --schema) does not carry, and what the
 * standby must check before it replaces that schema: the schema's owner, the extensions its
 * objects use (they live outside it, often in public, and are not in the dump), and every role its
 * objects refer to. The database's own settings, grants and per-role settings are the shared
 * database's, not the site's: they are recorded as empty and never applied.
 *
 * Refused here, naming the fix: a schema that does not exist, and one holding an extension's
 * objects (pg_dump --schema leaves extensions out, so the standby would lose them).
 */
async function readSchemaMeta(config: PrimaryConfig, schema: string): Promise<DbMeta> {
  return withPg(config.database, async (c) => {
    const db = (
      await c.query<{ oid: number; name: string; owner: string; encoding: string; collate: string; ctype: string }>(
        `SELECT d.oid, d.datname AS name, pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS encoding,
                d.datcollate AS collate, d.datctype AS ctype
           FROM pg_database d WHERE d.datname = current_database()`,
      )
    ).rows[0]!;
    const ns = (await c.query<{ oid: number; owner: string }>('SELECT oid, pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = $1', [schema])).rows[0];
    if (ns === undefined) {
      throw new TandemError('config', 'SCHEMA_MISSING', `database.schema: the schema "${schema}" does not exist in the database "${db.name}"`, {
        hint: `check database.schema in ${config.configFile} (the site's dbschema), or create the schema`,
      });
    }
    const inside = (
      await c.query<{ name: string }>('SELECT extname AS name FROM pg_extension WHERE extnamespace = $1 ORDER BY 1', [ns.oid])
    ).rows.map((r) => r.name);
    if (inside.length > 0) {
      throw new TandemError(
        'config',
        'SCHEMA_HAS_EXTENSION',
        `the site's schema "${schema}" holds the extension${inside.length > 1 ? 's' : ''} ${inside.map((n) => `"${n}"`).join(', ')}: a dump of one schema leaves extensions out, so the standby would lose ${inside.length > 1 ? 'them' : 'it'}`,
        { hint: `move ${inside.length > 1 ? 'them' : 'it'} to a shared schema: ${inside.map((n) => `ALTER EXTENSION ${c.escapeIdentifier(n)} SET SCHEMA public;`).join(' ')}` },
      );
    }
    // Extensions whose members an object of the schema depends on (a column of type citext, an
    // index with one of its operator classes, a default calling one of its functions).
    const extensions = (
      await c.query<{ name: string; version: string; schema: string }>(
        `SELECT DISTINCT e.extname AS name, e.extversion AS version, n.nspname AS schema
           FROM pg_depend d
           JOIN pg_depend m ON m.classid = d.refclassid AND m.objid = d.refobjid AND m.deptype = 'e' AND m.refclassid = 'pg_extension'::regclass
           JOIN pg_extension e ON e.oid = m.refobjid JOIN pg_namespace n ON n.oid = e.extnamespace
          WHERE d.deptype IN ('n', 'a') AND (${OBJECT_SCHEMA_SQL('d.classid', 'd.objid')}) = $1 AND e.extname <> 'plpgsql'
          ORDER BY 1`,
        [ns.oid],
      )
    ).rows;
    // What the schema's objects use from other schemas, outside extensions and the catalogs, by
    // qualified name (search_path is pg_catalog alone, so that every other name is qualified).
    await c.query('SET search_path TO pg_catalog');
    const outside = (
      await c.query<{ kind: 'type' | 'function' | 'relation'; name: string }>(
        `SELECT DISTINCT CASE d.refclassid WHEN 'pg_type'::regclass THEN 'type' WHEN 'pg_proc'::regclass THEN 'function' ELSE 'relation' END AS kind,
                CASE d.refclassid WHEN 'pg_type'::regclass THEN format_type(d.refobjid, NULL)
                                  WHEN 'pg_proc'::regclass THEN d.refobjid::regprocedure::text
                                  ELSE d.refobjid::regclass::text END AS name
           FROM pg_depend d
          WHERE d.deptype = 'n' AND d.refclassid IN ('pg_type'::regclass, 'pg_proc'::regclass, 'pg_class'::regclass)
            AND (${OBJECT_SCHEMA_SQL('d.classid', 'd.objid')}) = $1
            AND (${OBJECT_SCHEMA_SQL('d.refclassid', 'd.refobjid')}) NOT IN ($1, 'pg_catalog'::regnamespace, 'information_schema'::regnamespace)
            AND NOT EXISTS (SELECT 1 FROM pg_depend m WHERE m.classid = d.refclassid AND m.objid = d.refobjid AND m.deptype = 'e')
          ORDER BY 1, 2`,
        [ns.oid],
      )
    ).rows;
    // Every role an object of the schema (or the schema itself) depends on, and how.
    const deps = await c.query<{ name: string; use: Use }>(
      `SELECT DISTINCT r.rolname AS name,
              CASE d.deptype WHEN 'o' THEN 'owner' WHEN 'r' THEN 'policy' ELSE 'grantee' END AS use
         FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
        WHERE d.refclassid = 'pg_authid'::regclass AND d.deptype IN ('o', 'a', 'r') AND d.dbid = $1
          AND (${OBJECT_SCHEMA_SQL('d.classid', 'd.objid')}) = $2
      UNION
       SELECT $3::text, 'owner'
      UNION
       SELECT pg_get_userbyid(10), 'owner' WHERE EXISTS (
         SELECT 1 FROM pg_class x WHERE relowner = 10 AND relnamespace = $2 AND ${notMember('pg_class')}
         UNION ALL SELECT 1 FROM pg_proc x WHERE proowner = 10 AND pronamespace = $2 AND ${notMember('pg_proc')}
         UNION ALL SELECT 1 FROM pg_type x WHERE typowner = 10 AND typnamespace = $2 AND typrelid = 0 AND typcategory <> 'A' AND ${notMember('pg_type')})`,
      [db.oid, ns.oid, ns.owner],
    );
    const uses = new Map<string, Set<Use>>();
    for (const d of deps.rows) uses.set(d.name, (uses.get(d.name) ?? new Set<Use>()).add(d.use));
    const names = [...uses.keys()].filter((n) => !n.startsWith('pg_')).sort();
    const definitions = config.database.roles === 'carry' ? await readRoleDefinitions(c, names) : undefined;
    const meta: DbMeta = {
      format: DB_META_FORMAT,
      version: 1,
      database: { name: db.name, owner: db.owner, encoding: db.encoding, collate: db.collate, ctype: db.ctype, grants: null, comment: null, settings: [], roleSettings: [] },
      extensions,
      schema: { name: schema, owner: ns.owner, outside },
      roles: names.map((name) => ({
        name,
        uses: [...uses.get(name)!].sort(),
        ...(definitions ? { definition: definitions.get(name)! } : {}),
      })),
    };
    return dbMetaSchema.parse(meta);
  });
}

async function readRoleDefinitions(c: Client, names: string[]): Promise<Map<string, RoleDefinition>> {
  // Password verifiers are in pg_authid, which only a superuser may read.
  const su = await c.query<{ ok: boolean }>('SELECT rolsuper AS ok FROM pg_roles WHERE rolname = current_user');
  if (!su.rows[0]?.ok) {
    throw new TandemError('config', 'ROLES_CARRY_PRIVILEGE', 'database.roles is "carry", but the primary agent does not connect as a superuser, so it cannot read the roles\' password verifiers (pg_authid)', {
      hint: 'connect the primary agent as a superuser (database.url), or set database.roles: require and create the roles on the standby by hand',
    });
  }
  const r = await c.query<{
    name: string;
    super: boolean;
    inherit: boolean;
    createrole: boolean;
    createdb: boolean;
    canlogin: boolean;
    replication: boolean;
    bypassrls: boolean;
    connlimit: number;
    validuntil: string | null;
    password: string | null;
    settings: string[] | null;
  }>(
    `SELECT a.rolname AS name, a.rolsuper AS super, a.rolinherit AS inherit, a.rolcreaterole AS createrole,
            a.rolcreatedb AS createdb, a.rolcanlogin AS canlogin, a.rolreplication AS replication,
            a.rolbypassrls AS bypassrls, a.rolconnlimit AS connlimit,
            to_char(a.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS validuntil,
            a.rolpassword AS password,
            (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = a.oid AND s.setdatabase = 0) AS settings
       FROM pg_authid a WHERE a.rolname = ANY($1)`,
    [names],
  );
  const members = await c.query<{ member: string; role: string; admin: boolean }>(
    `SELECT pg_get_userbyid(m.member) AS member, pg_get_userbyid(m.roleid) AS role, m.admin_option AS admin
       FROM pg_auth_members m
      WHERE pg_get_userbyid(m.member) = ANY($1) AND pg_get_userbyid(m.roleid) = ANY($1) ORDER BY 1, 2`,
    [names],
  );
  const out = new Map<string, RoleDefinition>();
  for (const row of r.rows) {
    const dropped: RoleDefinition['droppedAttributes'] = [];
    if (row.super) dropped.push('SUPERUSER');
    if (row.replication) dropped.push('REPLICATION');
    if (row.bypassrls) dropped.push('BYPASSRLS');
    out.set(row.name, {
      inherit: row.inherit,
      createRole: row.createrole,
      createDb: row.createdb,
      canLogin: row.canlogin,
      connectionLimit: row.connlimit,
      validUntil: row.validuntil === 'infinity' ? null : row.validuntil,
      password: row.password,
      memberOf: members.rows.filter((m) => m.member === row.name).map((m) => ({ role: m.role, admin: m.admin })),
      settings: row.settings ?? [],
      droppedAttributes: dropped,
    });
  }
  return out;
}
