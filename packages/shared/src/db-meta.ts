import { z } from 'zod';
import { TandemError } from './errors.js';

/**
 * The `dbmeta` artifact: what a set needs, beyond the dump's own contents, for the standby's database
 * to be the primary's. `pg_dump` without `--create` leaves out the database's own properties (owner,
 * grants, comment, `ALTER DATABASE ... SET`, `ALTER ROLE ... IN DATABASE ... SET`), and roles are
 * cluster-wide, so no dump of one database carries them. The primary reads these from its catalogs
 * at backup time; the standby checks them before anything live changes and applies them to the new
 * database before the swap, so the rename keeps them.
 *
 * It travels encrypted like every artifact: settings may hold secrets, and carried roles hold
 * password verifiers.
 */
export const DB_META_FORMAT = 'tandem-db-meta';
/** A description of one database is small; anything larger is refused before it is read. */
export const MAX_DB_META_BYTES = 1 << 20;

const grantSchema = z.strictObject({
  /** null: PUBLIC. */
  grantee: z.string().nullable(),
  privilege: z.enum(['CONNECT', 'TEMPORARY', 'CREATE']),
  grantable: z.boolean(),
});

/** One entry of pg_db_role_setting.setconfig: "name=value" as PostgreSQL stores it. */
const settingSchema = z.string().regex(/^[A-Za-z_][A-Za-z0-9_.$]*=/s, 'expected name=value');

const roleDefinitionSchema = z.strictObject({
  inherit: z.boolean(),
  createRole: z.boolean(),
  createDb: z.boolean(),
  canLogin: z.boolean(),
  connectionLimit: z.number().int(),
  validUntil: z.string().nullable(),
  /** The password verifier (SCRAM-SHA-256$... or md5...), never a plain password; null: none. */
  password: z.string().nullable(),
  /** Roles (among those carried) this role is a member of. */
  memberOf: z.array(z.strictObject({ role: z.string(), admin: z.boolean() })),
  /** ALTER ROLE r SET ... for all databases. */
  settings: z.array(settingSchema),
  /** What the primary had and the standby never gets from a set (reported, not carried). */
  droppedAttributes: z.array(z.enum(['SUPERUSER', 'REPLICATION', 'BYPASSRLS'])),
});

export const roleUseSchema = z.enum(['owner', 'grantee', 'policy', 'settings']);

export const dbMetaSchema = z.strictObject({
  format: z.literal(DB_META_FORMAT),
  version: z.literal(1),
  database: z.strictObject({
    name: z.string(),
    owner: z.string(),
    encoding: z.string(),
    collate: z.string(),
    ctype: z.string(),
    /** null: the default privileges (owner all, PUBLIC CONNECT and TEMPORARY). */
    grants: z.array(grantSchema).nullable(),
    comment: z.string().nullable(),
    /** ALTER DATABASE d SET ... */
    settings: z.array(settingSchema),
    /** ALTER ROLE r IN DATABASE d SET ... */
    roleSettings: z.array(z.strictObject({ role: z.string(), settings: z.array(settingSchema) })),
  }),
  extensions: z.array(z.strictObject({ name: z.string(), version: z.string(), schema: z.string() })),
  /**
   * The set carries this one schema of a shared database (database.schema): then database holds
   * what the database is like on the primary (for information: a schema apply never changes the
   * database's own properties), extensions are those the schema's objects use, and roles those
   * the schema's objects refer to.
   */
  schema: z
    .strictObject({
      name: z.string(),
      owner: z.string(),
      /**
       * What the schema's objects use from other schemas (not from an extension, not built in):
       * a function in public a default calls, a type, a table a view reads. Qualified names.
       */
      outside: z.array(z.strictObject({ kind: z.enum(['type', 'function', 'relation']), name: z.string() })),
    })
    .optional(),
  /** Every role the set refers to, and how. */
  roles: z.array(
    z.strictObject({
      name: z.string(),
      uses: z.array(roleUseSchema),
      /** Present when the primary carries role definitions (`database.roles: carry`). */
      definition: roleDefinitionSchema.optional(),
    }),
  ),
});

export type DbMeta = z.infer<typeof dbMetaSchema>;
export type DbMetaRole = DbMeta['roles'][number];
export type RoleDefinition = z.infer<typeof roleDefinitionSchema>;
export type DbGrant = z.infer<typeof grantSchema>;

export function parseDbMeta(raw: Buffer, label: string): DbMeta {
  if (raw.length > MAX_DB_META_BYTES) {
    throw new TandemError('integrity', 'DB_META_INVALID', `${label}: ${raw.length} bytes, more than the ${MAX_DB_META_BYTES} a database description can be`);
  }
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new TandemError('integrity', 'DB_META_INVALID', `${label}: not JSON (${(err as Error).message})`);
  }
  const r = dbMetaSchema.safeParse(body);
  if (!r.success) {
    const first = r.error.issues[0];
    const where = first ? `${first.path.join('.') || '(top level)'}: ${first.message}` : 'invalid';
    throw new TandemError('integrity', 'DB_META_INVALID', `${label}: not a valid database description (${where})`, {
      hint: 'the set was made by a newer or faulty tandem primary; upgrade this agent or apply another set',
    });
  }
  return r.data;
}

/** "name=value" → [name, value] (values may contain "="). */
export function splitSetting(entry: string): [string, string] {
  const i = entry.indexOf('=');
  return [entry.slice(0, i), entry.slice(i + 1)];
}

/**
 * The schema an object of the current database lives in, from its catalog and oid (the object
 * classes pg_dump --schema takes along with a schema); NULL for any other class.
 */
export const OBJECT_SCHEMA_SQL = (classid: string, objid: string) => `CASE ${classid}
    WHEN 'pg_namespace'::regclass THEN ${objid}
    WHEN 'pg_class'::regclass THEN (SELECT relnamespace FROM pg_class WHERE oid = ${objid})
    WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = ${objid})
    WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = ${objid})
    WHEN 'pg_default_acl'::regclass THEN (SELECT defaclnamespace FROM pg_default_acl WHERE oid = ${objid})
    WHEN 'pg_policy'::regclass THEN (SELECT c.relnamespace FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.oid = ${objid})
    WHEN 'pg_constraint'::regclass THEN (SELECT connamespace FROM pg_constraint WHERE oid = ${objid})
    WHEN 'pg_attrdef'::regclass THEN (SELECT c.relnamespace FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid WHERE a.oid = ${objid})
    WHEN 'pg_rewrite'::regclass THEN (SELECT c.relnamespace FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = ${objid})
    WHEN 'pg_trigger'::regclass THEN (SELECT c.relnamespace FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.oid = ${objid})
    WHEN 'pg_collation'::regclass THEN (SELECT collnamespace FROM pg_collation WHERE oid = ${objid})
    WHEN 'pg_conversion'::regclass THEN (SELECT connamespace FROM pg_conversion WHERE oid = ${objid})
    WHEN 'pg_operator'::regclass THEN (SELECT oprnamespace FROM pg_operator WHERE oid = ${objid})
    WHEN 'pg_opclass'::regclass THEN (SELECT opcnamespace FROM pg_opclass WHERE oid = ${objid})
    WHEN 'pg_opfamily'::regclass THEN (SELECT opfnamespace FROM pg_opfamily WHERE oid = ${objid})
    WHEN 'pg_ts_config'::regclass THEN (SELECT cfgnamespace FROM pg_ts_config WHERE oid = ${objid})
    WHEN 'pg_ts_dict'::regclass THEN (SELECT dictnamespace FROM pg_ts_dict WHERE oid = ${objid})
    WHEN 'pg_statistic_ext'::regclass THEN (SELECT stxnamespace FROM pg_statistic_ext WHERE oid = ${objid})
  END`;
