/**
 * What makes a database "the primary's" beyond its rows, read from the catalogs so two databases
 * can be compared with toEqual: owners, privileges (object, column, default, database), comments,
 * database-level and role-in-database settings, extensions and their versions. Role names, not
 * OIDs, so databases on different clusters compare.
 */
import pg from 'pg';

const USER_NS = `n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp_%' AND n.nspname NOT LIKE 'pg_toast_temp_%'`;

export interface CatalogState {
  database: { owner: string; acl: string[] | null; settings: string[]; roleSettings: string[]; comment: string | null };
  objects: string[];
  columnAcls: string[];
  defaultAcls: string[];
  comments: string[];
  extensions: string[];
  largeObjects: string[];
}

const sortAcl = (acl: string[] | null): string => (acl === null ? 'default' : [...acl].sort().join(' '));

/**
 * An explicit ACL equal to the owner's default privileges means the same as none (NULL), and
 * pg_dump writes neither: both read as "default".
 */
const norm = (acl: string, kind: string, owner: string) =>
  `CASE WHEN ${acl} IS NULL OR (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(${acl}) x) = (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(acldefault(${kind}, ${owner})) x) THEN NULL ELSE ${acl}::text[] END`;

export async function catalogState(url: string): Promise<CatalogState> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const q = async <R extends pg.QueryResultRow>(sql: string) => (await c.query<R>(sql)).rows;
    const db = (
      await q<{ owner: string; acl: string[] | null; settings: string[] | null; comment: string | null }>(
        `SELECT pg_get_userbyid(d.datdba) AS owner, d.datacl::text[] AS acl,
                (SELECT setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0) AS settings,
                shobj_description(d.oid, 'pg_database') AS comment
           FROM pg_database d WHERE d.datname = current_database()`,
      )
    )[0]!;
    const roleSettings = (
      await q<{ r: string }>(
        `SELECT pg_get_userbyid(s.setrole) || ': ' || array_to_string(s.setconfig, ' | ') AS r
           FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
          WHERE d.datname = current_database() AND s.setrole <> 0 ORDER BY 1`,
      )
    ).map((r) => r.r);
    const objects = await q<{ id: string; owner: string; acl: string[] | null }>(
      `SELECT pg_describe_object('pg_class'::regclass, c.oid, 0) AS id, pg_get_userbyid(c.relowner) AS owner, ${norm('c.relacl', `CASE WHEN c.relkind = 'S' THEN 's'::"char" ELSE 'r'::"char" END`, 'c.relowner')} AS acl
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ${USER_NS}
       UNION ALL
       SELECT pg_describe_object('pg_proc'::regclass, p.oid, 0), pg_get_userbyid(p.proowner), ${norm('p.proacl', `'f'::"char"`, 'p.proowner')}
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ${USER_NS}
       UNION ALL
       SELECT pg_describe_object('pg_type'::regclass, t.oid, 0), pg_get_userbyid(t.typowner), ${norm('t.typacl', `'T'::"char"`, 't.typowner')}
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE ${USER_NS}
       UNION ALL
       SELECT pg_describe_object('pg_namespace'::regclass, n.oid, 0), pg_get_userbyid(n.nspowner), ${norm('n.nspacl', `'n'::"char"`, 'n.nspowner')}
         FROM pg_namespace n WHERE ${USER_NS}`,
    );
    const columnAcls = await q<{ id: string; acl: string[] }>(
      `SELECT pg_describe_object('pg_class'::regclass, a.attrelid, a.attnum) AS id, a.attacl::text[] AS acl
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE a.attacl IS NOT NULL AND ${USER_NS}`,
    );
    const defaultAcls = await q<{ id: string; acl: string[] }>(
      `SELECT pg_get_userbyid(d.defaclrole) || ' ' || coalesce(n.nspname, '*') || ' ' || d.defaclobjtype::text AS id, d.defaclacl::text[] AS acl
         FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace`,
    );
    const comments = await q<{ c: string }>(
      `SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid) || ' = ' || d.description AS c
         FROM pg_description d WHERE d.objoid >= 16384 ORDER BY 1`,
    );
    const extensions = await q<{ e: string }>(`SELECT extname || ' ' || extversion AS e FROM pg_extension ORDER BY 1`);
    const los = await q<{ l: string }>(
      `SELECT pg_get_userbyid(lomowner) || ' ' || coalesce(array_to_string(lomacl::text[], ' '), 'default') || ' x' || count(*) AS l
         FROM pg_largeobject_metadata GROUP BY lomowner, lomacl ORDER BY 1`,
    );
    return {
      database: { owner: db.owner, acl: db.acl ? [...db.acl].sort() : null, settings: [...(db.settings ?? [])].sort(), roleSettings, comment: db.comment },
      objects: objects.map((o) => `${o.id} owner=${o.owner} acl=${sortAcl(o.acl)}`).sort(),
      columnAcls: columnAcls.map((o) => `${o.id} acl=${sortAcl(o.acl)}`).sort(),
      defaultAcls: defaultAcls.map((o) => `${o.id} acl=${sortAcl(o.acl)}`).sort(),
      comments: comments.map((r) => r.c),
      extensions: extensions.map((r) => r.e),
      largeObjects: los.map((r) => r.l),
    };
  } finally {
    await c.end();
  }
}
