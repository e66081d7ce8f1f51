/**
 * The standby's database is the primary's: a site laid out the usual way (its own role owning the
 * database and its tables, a read-only role with grants, default privileges, database-level and
 * role-in-database settings, comments, an extension, a large object) goes primary → set → standby
 * on ANOTHER cluster (which starts without the site's roles) → promote → failback, and owners,
 * privileges, settings and comments are compared from the catalogs at each step, on both filestores.
 */
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { catalogState } from './support/catalog-state.js';
import { startCluster, type Cluster } from './support/cluster.js';
import { startS3rver, s3rverEnv, s3rverFilestoreUrl, type S3rverHandle } from './support/s3rver.js';
import { createSiteTree, dbUrl, ensurePostgres, initFilestore, makeKeys, requireCommands, runPrimary, tmpDir, withDb, writePrimaryConfig, type KeyFiles } from './support/site.js';
import { runStandby, show, uid } from './support/standby-helpers.js';

/** The site's shape on the primary's cluster; returns the SQL that made it, for the record. */
async function createShapedSite(db: string, app: string, ro: string): Promise<void> {
  await withDb('postgres', async (c) => {
    await c.query(`CREATE ROLE ${app} LOGIN`);
    await c.query(`CREATE ROLE ${ro} LOGIN`);
    await c.query(`CREATE DATABASE ${db} OWNER ${app}`);
    await c.query(`ALTER DATABASE ${db} SET search_path = app, public`);
    await c.query(`ALTER DATABASE ${db} SET timezone = 'Asia/Tokyo'`);
    await c.query(`ALTER DATABASE ${db} SET statement_timeout = '45s'`);
    await c.query(`ALTER ROLE ${app} IN DATABASE ${db} SET work_mem = '8MB'`);
    await c.query(`COMMENT ON DATABASE ${db} IS 'the site''s database'`);
    await c.query(`REVOKE CONNECT, TEMPORARY ON DATABASE ${db} FROM PUBLIC`);
    await c.query(`GRANT CONNECT ON DATABASE ${db} TO ${ro}`);
  });
  await withDb(db, async (c) => {
    // Not the newest version: the standby must install the primary's, not its default.
    await c.query("CREATE EXTENSION citext SCHEMA public VERSION '1.5'");
    await c.query(`CREATE SCHEMA app AUTHORIZATION ${app}`);
    await c.query(`SET ROLE ${app}`);
    await c.query(`ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO ${ro}`);
    await c.query(`GRANT USAGE ON SCHEMA app TO ${ro}`);
    await c.query('CREATE TABLE app.items (id bigserial PRIMARY KEY, name public.citext NOT NULL, note text)');
    await c.query('CREATE SEQUENCE app.tickets');
    await c.query(`CREATE TABLE app.secrets (id int PRIMARY KEY, token text, label text)`);
    await c.query(`REVOKE ALL ON app.secrets FROM ${ro}`);
    await c.query(`GRANT SELECT (id, label) ON app.secrets TO ${ro}`);
    await c.query('CREATE VIEW app.item_names AS SELECT id, name FROM app.items');
    await c.query('CREATE MATERIALIZED VIEW app.item_count AS SELECT count(*) AS n FROM app.items');
    await c.query(`CREATE FUNCTION app.label(i bigint) RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'item ' || i $$`);
    await c.query('CREATE INDEX items_lower ON app.items (lower(note))');
    await c.query(`COMMENT ON TABLE app.items IS 'what the site sells'`);
    await c.query(`COMMENT ON COLUMN app.items.note IS 'free text'`);
    await c.query("INSERT INTO app.items (name, note) SELECT 'Item ' || g, 'note ' || g FROM generate_series(1, 50) g");
    await c.query("INSERT INTO app.secrets VALUES (1, 's3cr3t', 'first')");
    await c.query("SELECT lo_from_bytea(0, 'a blob of the site')");
    await c.query('RESET ROLE');
  });
}

async function dropShapedSite(dbs: string[], roles: string[], cluster?: Cluster): Promise<void> {
  for (const db of dbs) await withDb('postgres', (c) => c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)).catch(() => undefined);
  for (const r of roles) await withDb('postgres', (c) => c.query(`DROP ROLE IF EXISTS ${r}`)).catch(() => undefined);
  void cluster;
}

describe.each(['dir', 's3'] as const)("the standby's database is the primary's (%s filestore)", (kind) => {
  let root: string;
  let b: Cluster;
  let s3: S3rverHandle | undefined;
  let keys: KeyFiles;
  const id = uid();
  const site = `fid${id}`;
  const app = `app_${id}`;
  const ro = `ro_${id}`;
  const pdb = `tandem_fid_p_${id}`;
  const sdb = `tandem_fid_s_${id}`;
  let filestoreUrl: string;
  let env: NodeJS.ProcessEnv = {};

  beforeAll(async () => {
    requireCommands(['pg_dump', 'pg_restore', 'runuser']);
    await ensurePostgres();
    root = await tmpDir('tandem-fidelity-');
    b = await startCluster();
    if (kind === 's3') {
      s3 = await startS3rver();
      filestoreUrl = s3rverFilestoreUrl(s3, { prefix: 'unique' });
      env = s3rverEnv();
    } else {
      filestoreUrl = `file://${join(root, 'store')}`;
    }
    keys = await makeKeys(join(root, 'keys'));
    await createShapedSite(pdb, app, ro);
  });

  afterAll(async () => {
    await dropShapedSite([pdb, `${pdb}__tandem_new`, `${pdb}__tandem_old`], [app, ro]);
    await b?.stop();
    await s3?.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  /** `state` names the agent: two configs with one state dir are one primary. */
  async function primaryConfig(name: string, state: string, url: string, paths: Awaited<ReturnType<typeof createSiteTree>>, roles: 'require' | 'carry', extra: Record<string, unknown> = {}) {
    const file = join(root, `${name}.yml`);
    await writePrimaryConfig(file, { site, databaseUrl: url, paths, filestoreUrl, keys, stateDir: join(root, `${state}-state`), extra });
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.replace(/^database:\n(  url: .*\n)/m, `database:\n$1  roles: ${roles}\n`));
    await initFilestore(file, env);
    return file;
  }

  async function standbyConfig(name: string, url: string, sroot: string, roles: 'require' | 'carry', extra: Record<string, unknown> = {}) {
    const file = join(root, `${name}.yml`);
    for (const d of ['priv', 'security', 'files']) await mkdir(join(sroot, d), { recursive: true });
    await writeFile(
      file,
      stringify({
        site,
        database: { url, roles, create: true },
        paths: { config: join(sroot, 'priv'), security: join(sroot, 'security'), files: join(sroot, 'files') },
        filestore: { url: filestoreUrl },
        keys: { identityFile: keys.identityFile, verifyKeyFile: keys.verifyKeyFile },
        stateDir: join(root, `${name}-state`),
        restartCommand: 'true',
        ...extra,
      }),
    );
    return file;
  }

  it('carries owners, grants, settings, comments and roles; refuses a missing role first; keeps it all through promote and failback', async () => {
    const ppaths = await createSiteTree(join(root, 'primary'));
    const sroot = join(root, 'standby');

    // 1. roles: require (the default). The standby's cluster lacks both roles: refused before any change.
    const pRequire = await primaryConfig('p-require', 'a-primary', dbUrl(pdb), ppaths, 'require');
    let r = await runPrimary(['backup', '--config', pRequire], { env });
    expect(r.code, show(r)).toBe(0);
    const sRequire = await standbyConfig('s-require', b.url(sdb), sroot, 'require');
    r = await runStandby(['apply', '--config', sRequire], { env });
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toContain(`"${app}" (owner, settings)`);
    expect(r.stderr).toContain(`"${ro}" (grantee)`);
    expect(r.stderr).toContain(`CREATE ROLE "${app}" LOGIN;`);
    expect(r.stderr).toContain('nothing was changed');
    // Nothing live: no database, no sentinel, no role.
    expect((await b.query('postgres', 'SELECT datname FROM pg_database WHERE datname LIKE $1', [`${sdb}%`])).rowCount).toBe(0);
    await expect(stat(join(sroot, 'priv', 'BACKUP'))).rejects.toThrow(/ENOENT/);
    expect((await b.query('postgres', 'SELECT 1 FROM pg_roles WHERE rolname = ANY($1)', [[app, ro]])).rowCount).toBe(0);

    // 2. The standby asks to carry roles, the set does not carry them: refused, saying so.
    const sCarry = await standbyConfig('s-carry', b.url(sdb), sroot, 'carry');
    r = await runStandby(['apply', '--config', sCarry], { env });
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toMatch(/carries no role definitions/);

    // 3. Both carry: the roles are created, the database is the primary's.
    await withDb('postgres', (c) => c.query(`ALTER ROLE ${app} PASSWORD 'app-password' CONNECTION LIMIT 40`));
    const pCarry = await primaryConfig('p-carry', 'a-primary', dbUrl(pdb), ppaths, 'carry');
    r = await runPrimary(['backup', '--config', pCarry], { env });
    expect(r.code, show(r)).toBe(0);
    r = await runStandby(['apply', '--config', sCarry], { env });
    expect(r.code, show(r)).toBe(0);
    const roleOf = (url: string, name: string) =>
      withDbUrl(url, async (c) => (await c.query('SELECT rolcanlogin, rolconnlimit, rolsuper, rolpassword FROM pg_authid WHERE rolname = $1', [name])).rows[0]);
    expect(await roleOf(b.url('postgres'), app)).toEqual(await roleOf(dbUrl('postgres'), app));
    const primaryState = await catalogState(dbUrl(pdb));
    expect(primaryState.database.settings).toEqual(['TimeZone=Asia/Tokyo', 'search_path=app, public', 'statement_timeout=45s']);
    expect(primaryState.database.roleSettings).toEqual([`${app}: work_mem=8MB`]);
    expect(primaryState.objects.length).toBeGreaterThan(10);
    expect(primaryState.extensions).toContain('citext 1.5');
    expect(await catalogState(b.url(sdb))).toEqual(primaryState);

    // 4. Promote; the site's own roles use their database on the new primary.
    r = await runStandby(['promote', '--config', sCarry, '--force'], { env });
    expect(r.code, show(r)).toBe(0);
    await b.query(sdb, "INSERT INTO items (name, note) VALUES ('written by the site', 'after failover') RETURNING id", [], app);
    expect((await b.query(sdb, "SELECT current_setting('TimeZone') AS tz, current_setting('work_mem') AS wm", [], app)).rows[0]).toEqual({
      tz: 'Asia/Tokyo',
      wm: '8MB',
    });
    expect((await b.query(sdb, 'SELECT count(*)::int AS n FROM items', [], ro)).rows[0]).toEqual({ n: 51 });
    expect((await b.query(sdb, 'SELECT id, label FROM secrets', [], ro)).rows).toEqual([{ id: 1, label: 'first' }]);
    await expect(b.query(sdb, 'SELECT token FROM secrets', [], ro)).rejects.toThrow(/permission denied/);
    await expect(b.query(sdb, "INSERT INTO items (name) VALUES ('x')", [], ro)).rejects.toThrow(/permission denied/);

    // 5. Failback: the new primary backs up, the old one applies its set, and is equal again.
    const bPrimary = await primaryConfig('b-primary', 's-carry', b.url(sdb), await createSiteTree(join(root, 'b-site')), 'carry');
    r = await runPrimary(['backup', '--config', bPrimary], { env });
    expect(r.code, show(r)).toBe(0);
    const aStandby = await standbyConfig('a-standby', dbUrl(pdb), join(root, 'a-standby-site'), 'carry', { standbyId: `${site}-a` });
    r = await runStandby(['apply', '--config', aStandby], { env });
    expect(r.code, show(r)).toBe(0);
    const back = await catalogState(dbUrl(pdb));
    expect(back).toEqual(await catalogState(b.url(sdb)));
    expect(back).toEqual({ ...primaryState, largeObjects: back.largeObjects });
    expect((await withDbUrl(dbUrl(pdb), (c) => c.query("SELECT note FROM app.items WHERE name = 'written by the site'"))).rows).toEqual([{ note: 'after failover' }]);
  });
});

async function withDbUrl<T>(url: string, fn: (c: import('pg').Client) => Promise<T>): Promise<T> {
  const { default: pg } = await import('pg');
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}
