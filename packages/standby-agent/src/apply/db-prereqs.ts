import { TandemError, splitSetting, type DbMeta, type Logger, type RoleDefinition, type StandbyConfig } from '@tandem/shared';
import { withMaintenance, type PgClient } from './pg.js';

/** Who the standby agent is on its cluster, and what it may do. */
export interface AgentRole {
  name: string;
  superuser: boolean;
  createDb: boolean;
  createRole: boolean;
  /** Member of a role that reaches the server's files or programs (pg_execute_server_program ...). */
  serverAccess: boolean;
  serverVersionNum: number;
}

export async function readAgentRole(c: PgClient): Promise<AgentRole> {
  const r = await c.query<{ name: string; su: boolean; cdb: boolean; cr: boolean; sa: boolean; v: string }>(
    `SELECT r.rolname AS name, r.rolsuper AS su, r.rolcreatedb AS cdb, r.rolcreaterole AS cr,
            EXISTS (SELECT 1 FROM pg_roles s WHERE s.rolname IN ('pg_execute_server_program', 'pg_write_server_files', 'pg_read_server_files')
                     AND pg_has_role(r.oid, s.oid, 'USAGE')) AS sa,
            current_setting('server_version_num') AS v
       FROM pg_roles r WHERE r.rolname = session_user`,
  );
  const row = r.rows[0]!;
  return { name: row.name, superuser: row.su, createDb: row.cdb, createRole: row.cr, serverAccess: row.sa, serverVersionNum: Number(row.v) };
}

/**
 * A session with rights beyond the site's own roles: code of the site's roles must not run in it.
 * CREATEROLE counts: on PostgreSQL 15 it can grant itself pg_execute_server_program.
 */
export const isPrivileged = (a: AgentRole): boolean => a.superuser || a.createRole || a.serverAccess;

/**
 * PostgreSQL runs index expressions and materialized-view refreshes as the table's owner (not the
 * restoring role) from 14.3, 13.7, 12.11, 11.16 and 10.21 on (CVE-2022-1552). Before that, a
 * privileged restore would run the site's code with its own rights.
 */
export function ownerSafeRestore(versionNum: number): boolean {
  const major = Math.floor(versionNum / 10000);
  const minor = versionNum % 100;
  const min: Record<number, number> = { 10: 21, 11: 16, 12: 11, 13: 7, 14: 3 };
  return major >= 15 || (min[major] !== undefined && minor >= min[major]!);
}

const q = (c: PgClient, name: string) => c.escapeIdentifier(name);

/** The statement an operator can run to create a role the set needs (attributes when carried). */
export function createRoleStatement(c: PgClient, name: string, def?: RoleDefinition): string {
  if (!def) return `CREATE ROLE ${q(c, name)} LOGIN;  -- with the attributes and password it has on the primary`;
  return `CREATE ROLE ${q(c, name)} ${roleAttributes(c, def, false)};`;
}

function roleAttributes(c: PgClient, def: RoleDefinition, forAlter: boolean): string {
  const parts = [
    def.inherit ? 'INHERIT' : 'NOINHERIT',
    def.createRole ? 'CREATEROLE' : 'NOCREATEROLE',
    def.createDb ? 'CREATEDB' : 'NOCREATEDB',
    def.canLogin ? 'LOGIN' : 'NOLOGIN',
    `CONNECTION LIMIT ${def.connectionLimit}`,
    `VALID UNTIL ${c.escapeLiteral(def.validUntil ?? 'infinity')}`,
  ];
  // Never given by a set (a set is data the primary's site could have influenced).
  if (!forAlter) parts.push('NOSUPERUSER', 'NOREPLICATION', 'NOBYPASSRLS');
  if (def.password !== null) parts.push(`PASSWORD ${c.escapeLiteral(def.password)}`);
  else if (!forAlter) parts.push('PASSWORD NULL');
  return parts.join(' ');
}

/**
 * Everything that can be checked about the standby's cluster before anything live changes:
 * every role the set needs exists (or, with `database.roles: carry`, can be created), every
 * extension is available at the primary's version, and the agent's role has the rights the apply
 * needs. All problems are reported at once.
 */
export async function checkDatabasePrereqs(config: StandbyConfig, meta: DbMeta, setId: string, logger: Logger): Promise<AgentRole> {
  return withMaintenance(config, async (c) => {
    const agent = await readAgentRole(c);
    const problems: string[] = [];
    const hints: string[] = [];

    if (isPrivileged(agent) && !ownerSafeRestore(agent.serverVersionNum)) {
      throw new TandemError(
        'config',
        'DB_RESTORE_UNSAFE',
        `the standby agent connects as "${agent.name}", a role with rights beyond the site's (superuser, CREATEROLE or server file access), to a PostgreSQL server (version number ${agent.serverVersionNum}) that runs index expressions and materialized-view refreshes with the restoring role's rights: a function the site's own role planted would run with those rights during apply`,
        { hint: 'upgrade PostgreSQL to a current minor release (14.3, 13.7, 12.11 or later), or connect the standby agent as a role without those rights (docs/operations.md, "The standby\'s database role")' },
      );
    }

    const existing = new Set(
      (await c.query<{ rolname: string }>('SELECT rolname FROM pg_roles WHERE rolname = ANY($1)', [meta.roles.map((r) => r.name)])).rows.map((r) => r.rolname),
    );
    const missing = meta.roles.filter((r) => !existing.has(r.name));
    const carry = config.database.roles === 'carry';
    if (carry && meta.roles.some((r) => r.definition === undefined)) {
      problems.push(`database.roles is "carry", but set ${setId} carries no role definitions`);
      hints.push('set database.roles: carry in the primary\'s config too (and make a new set), or set database.roles: require here');
    } else if (missing.length > 0 && !carry) {
      problems.push(
        `the set needs role${missing.length > 1 ? 's' : ''} that do${missing.length > 1 ? '' : 'es'} not exist on this server: ${missing
          .map((r) => `"${r.name}" (${r.uses.join(', ')})`)
          .join(', ')}; create ${missing.length > 1 ? 'them' : 'it'} with:\n${missing.map((r) => `    ${createRoleStatement(c, r.name, r.definition)}`).join('\n')}`,
      );
      hints.push('create the roles (roles are cluster-wide, a dump does not carry them), or set database.roles: carry on both agents');
    }
    if (carry && (missing.length > 0 || meta.roles.length > 0) && !agent.superuser && !agent.createRole) {
      problems.push(`database.roles is "carry", but the agent's role "${agent.name}" has neither SUPERUSER nor CREATEROLE, so it cannot create or update roles`);
      hints.push(`ALTER ROLE ${q(c, agent.name)} CREATEROLE, or create the roles by hand and set database.roles: require`);
    }

    // Extensions at the primary's versions: installable here, or reachable by an update path.
    // (A schema of a shared database uses the extensions installed there: schema.ts checks them.)
    for (const ext of meta.schema === undefined ? meta.extensions : []) {
      const r = await c.query<{ def: string | null; has: boolean; path: boolean }>(
        `SELECT (SELECT default_version FROM pg_available_extensions WHERE name = $1) AS def,
                EXISTS (SELECT 1 FROM pg_available_extension_versions WHERE name = $1 AND version = $2) AS has,
                EXISTS (SELECT 1 FROM pg_extension_update_paths($1) p
                         WHERE p.target = $2 AND p.source = (SELECT default_version FROM pg_available_extensions WHERE name = $1) AND p.path IS NOT NULL) AS path`,
        [ext.name, ext.version],
      ).catch(() => ({ rows: [{ def: null, has: false, path: false }] }));
      const row = r.rows[0]!;
      if (row.def === null) {
        problems.push(`extension "${ext.name}" (version ${ext.version} on the primary) is not installed on this server`);
        hints.push(`install the package that provides the ${ext.name} extension`);
      } else if (!row.has) {
        problems.push(`extension "${ext.name}" is at version ${ext.version} on the primary; this server has ${row.def} and not ${ext.version}`);
        hints.push(`install the same version of the ${ext.name} extension as on the primary`);
      } else if (row.def !== ext.version && !row.path && ext.schema !== 'public') {
        // In public (which every new database has) it is installed at that version before the
        // restore; elsewhere its schema comes with the restore and only an update path helps.
        problems.push(`extension "${ext.name}": this server installs version ${row.def} and has no update path to the primary's ${ext.version}`);
        hints.push(`install the same version of the ${ext.name} extension as on the primary`);
      }
    }

    // The rights the apply itself needs, when the agent is not a superuser.
    if (!agent.superuser) {
      if (!agent.createDb && meta.schema === undefined) {
        problems.push(`the agent's role "${agent.name}" lacks CREATEDB (the set is restored into a new database)`);
        hints.push(`ALTER ROLE ${q(c, agent.name)} CREATEDB`);
      }
      const owners = meta.roles.filter((r) => r.uses.includes('owner') && existing.has(r.name)).map((r) => r.name);
      const notMember = (
        await c.query<{ rolname: string }>(
          `SELECT rolname FROM pg_roles WHERE rolname = ANY($1) AND NOT pg_has_role(session_user, oid, 'MEMBER')`,
          [owners],
        )
      ).rows.map((r) => r.rolname);
      if (notMember.length > 0) {
        problems.push(`the agent's role "${agent.name}" is not a member of ${notMember.map((n) => `"${n}"`).join(', ')}, which own${notMember.length > 1 ? '' : 's'} objects in the set`);
        hints.push(`GRANT ${notMember.map((n) => q(c, n)).join(', ')} TO ${q(c, agent.name)}`);
      }
      const others = meta.database.roleSettings.filter((s) => s.role !== agent.name && !preservedOnly(config, s.settings));
      if (others.length > 0 && !agent.createRole) {
        problems.push(`the set has per-role settings in the database (ALTER ROLE ... IN DATABASE ... SET) for ${others.map((s) => `"${s.role}"`).join(', ')}, which only a role with CREATEROLE can set`);
        hints.push(`ALTER ROLE ${q(c, agent.name)} CREATEROLE, or list those settings in database.preserveSettings`);
      }
    }

    if (problems.length > 0) {
      throw new TandemError('precondition', 'DB_PREREQUISITES', `set ${setId} cannot be applied to this server's PostgreSQL (nothing was changed):\n${problems.map((p) => `  - ${p}`).join('\n')}`, {
        hint: [...new Set(hints)].join('; '),
      });
    }
    if (missing.length > 0) logger.info({ roles: missing.map((r) => r.name) }, 'roles the set needs will be created (database.roles: carry)');
    return agent;
  });
}

const preservedOnly = (config: StandbyConfig, settings: string[]): boolean =>
  settings.every((s) => isPreserved(config, splitSetting(s)[0]));

export const isPreserved = (config: StandbyConfig, name: string): boolean =>
  config.database.preserveSettings.some((p) => p.toLowerCase() === name.toLowerCase());

/**
 * `database.roles: carry`: creates the roles the set needs and brings existing ones to the
 * primary's attributes, password and memberships. A role that is a superuser here, and the
 * agent's own role, are left alone: a set never changes who administers this server.
 */
export async function ensureRoles(config: StandbyConfig, meta: DbMeta, logger: Logger): Promise<void> {
  if (config.database.roles !== 'carry') return;
  await withMaintenance(config, async (c) => {
    const here = new Map(
      (await c.query<{ rolname: string; rolsuper: boolean }>('SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY($1)', [meta.roles.map((r) => r.name)])).rows.map((r) => [
        r.rolname,
        r.rolsuper,
      ]),
    );
    const self = (await c.query<{ u: string }>('SELECT session_user AS u')).rows[0]!.u;
    const managed: string[] = [];
    for (const role of meta.roles) {
      const def = role.definition!;
      if (def.droppedAttributes.length > 0) {
        logger.warn({ role: role.name, attributes: def.droppedAttributes }, 'the role has attributes on the primary that a set never carries; grant them by hand if the site needs them');
      }
      if (!here.has(role.name)) {
        await c.query(`CREATE ROLE ${q(c, role.name)} ${roleAttributes(c, def, false)}`);
        logger.info({ role: role.name }, 'role created');
      } else if (here.get(role.name) || role.name === self) {
        logger.info({ role: role.name }, 'role left as it is (a superuser here, or the agent itself)');
        continue;
      } else {
        await c.query(`ALTER ROLE ${q(c, role.name)} ${roleAttributes(c, def, true)}`);
      }
      managed.push(role.name);
      // Role-wide settings (ALTER ROLE r SET), except those this server keeps its own.
      const current = (
        await c.query<{ s: string[] | null }>('SELECT setconfig AS s FROM pg_db_role_setting WHERE setdatabase = 0 AND setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)', [role.name])
      ).rows[0]?.s ?? [];
      for (const s of current) {
        const [name] = splitSetting(s);
        if (!isPreserved(config, name)) await c.query(`ALTER ROLE ${q(c, role.name)} RESET ${q(c, name)}`);
      }
      for (const s of def.settings) {
        const [name, value] = splitSetting(s);
        if (!isPreserved(config, name)) await c.query(`ALTER ROLE ${q(c, role.name)} ${setClause(c, name, value)}`);
      }
    }
    for (const role of meta.roles) {
      if (!managed.includes(role.name)) continue;
      for (const m of role.definition!.memberOf) {
        await c.query(`GRANT ${q(c, m.role)} TO ${q(c, role.name)}${m.admin ? ' WITH ADMIN OPTION' : ''}`);
      }
    }
  });
}

/** Settings whose value is a list of names: stored as "a, b", set as 'a', 'b' (as pg_dump does). */
const LIST_SETTINGS = new Set(['local_preload_libraries', 'search_path', 'session_preload_libraries', 'shared_preload_libraries', 'temp_tablespaces', 'unix_socket_directories']);

/** `SET name TO value` for a stored "name=value", quoted the way pg_dump quotes it. */
export function setClause(c: PgClient, name: string, value: string): string {
  if (LIST_SETTINGS.has(name.toLowerCase())) {
    const items = splitGucList(value);
    return `SET ${q(c, name)} TO ${items.length === 0 ? "''" : items.map((i) => c.escapeLiteral(i)).join(', ')}`;
  }
  return `SET ${q(c, name)} TO ${c.escapeLiteral(value)}`;
}

/** PostgreSQL's SplitGUCList: comma-separated, double-quoted items keep commas, "" is a quote. */
export function splitGucList(value: string): string[] {
  const out: string[] = [];
  let i = 0;
  const s = value;
  while (i < s.length) {
    while (i < s.length && /\s/.test(s[i]!)) i++;
    if (i >= s.length) break;
    let item = '';
    if (s[i] === '"') {
      i++;
      for (;;) {
        if (i >= s.length) break;
        if (s[i] === '"') {
          if (s[i + 1] === '"') {
            item += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        item += s[i++];
      }
      while (i < s.length && s[i] !== ',') i++;
    } else {
      while (i < s.length && s[i] !== ',') item += s[i++];
      item = item.trim();
    }
    out.push(item);
    if (s[i] === ',') i++;
  }
  return out;
}
