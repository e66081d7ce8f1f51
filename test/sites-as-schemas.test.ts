/**
 * Zotonic's layout: sites as schemas of one shared database. Two sites (site_a, site_b) live in
 * the primary's shared database, with an extension in public that site_a uses; the standby's
 * shared database also holds a third schema of its own (site_c). Each site is backed up and
 * applied on its own; after each apply the applied schema equals the primary's, and the other
 * schemas are the very same objects with the same rows (oids and all). A kill in the middle of the
 * switch leaves one whole schema, a failed restore the previous one, and what a schema apply
 * needs from outside the schema (an extension) or would take with it (a view of another schema on
 * it) is refused before anything changes.
 */
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { schemaState } from './support/schema-state.js';
import { createSiteTree, dbUrl, ensurePostgres, makeKeys, mustRun, requireCommands, runPrimary, tmpDir, withDb, type KeyFiles } from './support/site.js';
import { runStandby, show, uid } from './support/standby-helpers.js';

const id = uid();
const pdb = `tandem_zp_${id}`;
const sdb = `tandem_zs_${id}`;
const owner = `zown_${id}`;
const reader = `zro_${id}`;
const SITES = { a: { site: `za${id}`, schema: 'site_a' }, b: { site: `zb${id}`, schema: 'site_b' } } as const;
type Site = keyof typeof SITES;

describe('sites as schemas of one shared database', () => {
  let root: string;
  let keys: KeyFiles;
  let filestoreUrl: string;
  const primaryFile: Record<string, string> = {};
  const standbyFile: Record<string, string> = {};

  beforeAll(async () => {
    requireCommands(['pg_dump', 'pg_restore', 'psql']);
    await ensurePostgres();
    root = await tmpDir('tandem-schemas-');
    keys = await makeKeys(join(root, 'keys'));
    filestoreUrl = `file://${join(root, 'store')}`;
    await withDb('postgres', async (c) => {
      await c.query(`CREATE ROLE ${owner} LOGIN`);
      await c.query(`CREATE ROLE ${reader} LOGIN`);
      await c.query(`CREATE DATABASE ${pdb}`);
      await c.query(`CREATE DATABASE ${sdb}`);
    });
    await withDb(pdb, async (c) => {
      await c.query('CREATE EXTENSION citext SCHEMA public');
      await c.query(`CREATE SCHEMA site_a AUTHORIZATION ${owner}`);
      await c.query(`GRANT USAGE ON SCHEMA site_a TO ${reader}`);
      await c.query(`SET ROLE ${owner}`);
      await c.query(`ALTER DEFAULT PRIVILEGES IN SCHEMA site_a GRANT SELECT ON TABLES TO ${reader}`);
      await c.query('CREATE TABLE site_a.rsc (id serial PRIMARY KEY, name public.citext UNIQUE NOT NULL, props jsonb)');
      await c.query("CREATE FUNCTION site_a.label(i int) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'rsc ' || i $$");
      await c.query('CREATE VIEW site_a.rsc_names AS SELECT id, site_a.label(id) AS label, name FROM site_a.rsc');
      await c.query("COMMENT ON TABLE site_a.rsc IS 'resources of site a'");
      await c.query("INSERT INTO site_a.rsc (name, props) SELECT 'Page ' || g, jsonb_build_object('n', g) FROM generate_series(1, 200) g");
      await c.query('RESET ROLE');
      await c.query('CREATE SCHEMA site_b');
      await c.query('CREATE TABLE site_b.rsc (id bigserial PRIMARY KEY, title text NOT NULL)');
      await c.query('CREATE INDEX rsc_title ON site_b.rsc (lower(title))');
      // Larger than a pipe holds: restored from its stored copy (restoreJobs 1), pg_restore stops
      // reading the definitions long before the end of the dump.
      await c.query("INSERT INTO site_b.rsc (title) SELECT 'B ' || g || repeat(' words', 8) FROM generate_series(1, 20000) g");
    });
    await withDb(sdb, async (c) => {
      await c.query('CREATE SCHEMA site_c');
      await c.query('CREATE TABLE site_c.rsc (id int PRIMARY KEY, body text)');
      await c.query("INSERT INTO site_c.rsc SELECT g, 'standby only ' || g FROM generate_series(1, 50) g");
    });
    for (const k of Object.keys(SITES) as Site[]) {
      const { site, schema } = SITES[k];
      const ppaths = await createSiteTree(join(root, `p-${k}`));
      primaryFile[k] = join(root, `primary-${k}.yml`);
      await writeFile(
        primaryFile[k],
        stringify({
          site,
          database: { url: dbUrl(pdb), schema },
          paths: ppaths,
          filestore: { url: filestoreUrl },
          keys: { recipientFile: keys.recipientFile, signingKeyFile: keys.signingKeyFile },
          stateDir: join(root, `p-${k}-state`),
        }),
      );
      const sroot = join(root, `s-${k}`);
      for (const d of ['priv', 'security', 'files']) await mkdir(join(sroot, d), { recursive: true });
      standbyFile[k] = join(root, `standby-${k}.yml`);
      await writeFile(
        standbyFile[k],
        stringify({
          site,
          database: { url: dbUrl(sdb), schema, restoreJobs: k === 'a' ? 2 : 1 },
          paths: { config: join(sroot, 'priv'), security: join(sroot, 'security'), files: join(sroot, 'files') },
          filestore: { url: filestoreUrl },
          keys: { identityFile: keys.identityFile, verifyKeyFile: keys.verifyKeyFile },
          stateDir: join(root, `s-${k}-state`),
          restartCommand: 'true',
        }),
      );
    }
    const r = await runPrimary(['init', '--filestore', '--config', primaryFile.a!]);
    expect(r.code, show(r)).toBe(0);
  });

  afterAll(async () => {
    await withDb('postgres', async (c) => {
      for (const db of [pdb, sdb]) await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
      for (const r of [owner, reader]) await c.query(`DROP ROLE IF EXISTS ${r}`);
    }).catch(() => undefined);
    if (root) await rm(root, { recursive: true, force: true });
  });

  const backup = async (k: Site) => {
    const r = await runPrimary(['backup', '--config', primaryFile[k]!]);
    expect(r.code, show(r)).toBe(0);
  };
  const apply = (k: Site, env: NodeJS.ProcessEnv = {}) => runStandby(['apply', '--config', standbyFile[k]!], { env });
  const primary = (schema: string) => schemaState(dbUrl(pdb), schema);
  const standby = (schema: string, oids = false) => schemaState(dbUrl(sdb), schema, { oids });
  const schemasHere = async () => (await withDb(sdb, (c) => c.query<{ n: string }>("SELECT nspname AS n FROM pg_namespace WHERE nspname LIKE 'site_%' ORDER BY 1"))).rows.map((r) => r.n);

  it('a set carries its schema and nothing of the other schemas', async () => {
    await backup('a');
    const setDir = join(root, 'store', SITES.a.site, 'sets');
    const sets = await readdir(setDir);
    expect(sets).toHaveLength(1);
    const manifest = JSON.parse(await readFile(join(setDir, sets[0]!, 'manifest.json'), 'utf8')) as { database: { schema?: string } };
    expect(manifest.database.schema).toBe('site_a');
    // The dump's table of contents, from the real pg_restore of the decrypted artifact.
    const toc = (
      await mustRun('bash', ['-c', `age -d -i "$1" "$2" | zstd -d -q -c | pg_restore --list`, 'toc', keys.identityFile, join(setDir, sets[0]!, 'db.dump.zst.age')])
    ).toString();
    expect(toc).toMatch(/SCHEMA - site_a /);
    expect(toc).toMatch(/TABLE site_a rsc /);
    expect(toc).not.toMatch(/site_b|EXTENSION/);
  });

  it('refuses before any change when the shared database lacks an extension the schema uses', async () => {
    const beforeC = await standby('site_c', true);
    let r = await apply('a');
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toContain('CREATE EXTENSION "citext" SCHEMA "public";');
    expect(r.stderr).toContain('nothing was changed');
    expect(await schemasHere()).toEqual(['site_c']);
    expect(await standby('site_c', true)).toEqual(beforeC);
    await withDb(sdb, (c) => c.query('CREATE EXTENSION citext SCHEMA public'));
  });

  it('applies each site into its own schema; the other schemas stay the very same objects and rows', async () => {
    const beforeC = await standby('site_c', true);
    let r = await apply('a');
    expect(r.code, show(r)).toBe(0);
    expect(await standby('site_a')).toEqual(await primary('site_a'));
    expect(await standby('site_c', true)).toEqual(beforeC);
    expect(await schemasHere()).toEqual(['site_a', 'site_c']);

    await backup('b');
    const beforeA = await standby('site_a', true);
    r = await apply('b');
    expect(r.code, show(r)).toBe(0);
    expect(await standby('site_b')).toEqual(await primary('site_b'));
    expect(await standby('site_a', true)).toEqual(beforeA);
    expect(await standby('site_c', true)).toEqual(beforeC);

    // A newer set of a: a replaced, b and c untouched; grants work for the site's reader.
    await withDb(pdb, (c) => c.query("UPDATE site_a.rsc SET props = props || '{\"v\": 2}' WHERE id % 3 = 0; DELETE FROM site_a.rsc WHERE id > 190"));
    await backup('a');
    const beforeB = await standby('site_b', true);
    r = await apply('a');
    expect(r.code, show(r)).toBe(0);
    expect(await standby('site_a')).toEqual(await primary('site_a'));
    expect(await standby('site_b', true)).toEqual(beforeB);
    expect(await standby('site_c', true)).toEqual(beforeC);
    expect(await schemasHere()).toEqual(['site_a', 'site_b', 'site_c']);
    const n = await withDb(sdb, async (c) => {
      await c.query(`SET ROLE ${reader}`);
      return (await c.query<{ n: number }>('SELECT count(*)::int AS n FROM site_a.rsc_names')).rows[0]!.n;
    });
    expect(n).toBe(190);
  });

  it('refuses to replace a schema another schema depends on, naming the object', async () => {
    await withDb(sdb, (c) => c.query('CREATE VIEW site_c.borrowed AS SELECT id FROM site_a.rsc'));
    await withDb(pdb, (c) => c.query("INSERT INTO site_a.rsc (name) VALUES ('one more')"));
    await backup('a');
    const beforeA = await standby('site_a', true);
    const r = await apply('a');
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toContain('view site_c.borrowed');
    expect(await standby('site_a', true)).toEqual(beforeA);
    await withDb(sdb, (c) => c.query('DROP VIEW site_c.borrowed'));
  });

  it('a kill in the middle of the switch leaves the previous schema whole; the next apply finishes', async () => {
    const beforeA = await standby('site_a', true);
    const beforeB = await standby('site_b', true);
    const beforeC = await standby('site_c', true);
    // Killed while psql is fed the restore (restoreJobs 2: a plain staged dump), 4 KB in.
    let r = await apply('a', { TANDEM_FAULT_KILL_AT: 'restore:db:4000' });
    expect(r.signal ?? r.code, show(r)).toBe('SIGKILL');
    expect(await standby('site_a', true)).toEqual(beforeA);
    expect(await schemasHere()).toEqual(['site_a', 'site_b', 'site_c']);
    r = await apply('a');
    expect(r.code, show(r)).toBe(0);
    expect(r.stderr).toMatch(/interrupted while switching/);
    expect(await standby('site_a')).toEqual(await primary('site_a'));
    expect(await standby('site_b', true)).toEqual(beforeB);
    expect(await standby('site_c', true)).toEqual(beforeC);

    // Killed right after the commit, before the journal knew: the roll-forward sees it committed.
    await withDb(pdb, (c) => c.query("INSERT INTO site_a.rsc (name) VALUES ('after the kill')"));
    await backup('a');
    r = await apply('a', { TANDEM_FAULT_KILL_AT: 'schema-committed' });
    expect(r.signal ?? r.code, show(r)).toBe('SIGKILL');
    expect(await standby('site_a')).toEqual(await primary('site_a'));
    expect(await schemasHere()).toEqual(['site_a', 'site_a__tandem_old', 'site_b', 'site_c']);
    r = await apply('a');
    expect(r.code, show(r)).toBe(0);
    expect(await schemasHere()).toEqual(['site_a', 'site_b', 'site_c']);
    expect(await standby('site_a')).toEqual(await primary('site_a'));
    expect(await standby('site_c', true)).toEqual(beforeC);
  });

  it('names what the schema uses outside it (a function in public) when the standby lacks it, before any change', async () => {
    await withDb(pdb, async (c) => {
      await c.query("CREATE FUNCTION public.zs_default() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$");
      await c.query('ALTER TABLE site_b.rsc ADD COLUMN tag text DEFAULT public.zs_default()');
    });
    await backup('b');
    const beforeB = await standby('site_b', true);
    let r = await apply('b');
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toContain('uses the function public.zs_default(), which does not exist');
    expect(r.stderr).toContain('nothing was changed');
    expect(await standby('site_b', true)).toEqual(beforeB);
    await withDb(sdb, (c) => c.query("CREATE FUNCTION public.zs_default() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$"));
    r = await apply('b');
    expect(r.code, show(r)).toBe(0);
    expect(await standby('site_b')).toEqual(await primary('site_b'));
  });

  it('a restore that fails leaves the previous schema exactly as it was, and nothing staged', async () => {
    // A check both databases have, but whose function here says no to the primary's rows: the
    // restore fails half-way through loading them.
    await withDb(pdb, async (c) => {
      await c.query('CREATE FUNCTION public.zs_ok(text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT true $$');
      await c.query('ALTER TABLE site_b.rsc ADD CONSTRAINT title_ok CHECK (public.zs_ok(title))');
      await c.query("INSERT INTO site_b.rsc (title) VALUES ('one more')");
    });
    await withDb(sdb, (c) => c.query("CREATE FUNCTION public.zs_ok(text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT $1 NOT LIKE 'B 1%' $$"));
    await backup('b');
    const beforeB = await standby('site_b', true);
    const beforeA = await standby('site_a', true);
    let r = await apply('b');
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toMatch(/rolled back; the previous schema is as it was/);
    expect(r.stderr).toMatch(/title_ok/);
    expect(await standby('site_b', true)).toEqual(beforeB);
    expect(await standby('site_a', true)).toEqual(beforeA);
    expect(await schemasHere()).toEqual(['site_a', 'site_b', 'site_c']);
    expect(await readdir(join(root, 's-b-state'))).not.toContain('journal.json');
    expect(await readdir(join(root, 's-b-state', 'staging'))).toEqual([]);
    await withDb(sdb, (c) => c.query('CREATE OR REPLACE FUNCTION public.zs_ok(text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT true $$'));
    r = await apply('b');
    expect(r.code, show(r)).toBe(0);
    expect(await standby('site_b')).toEqual(await primary('site_b'));
  });

  it("refuses a set whose shape differs from the standby's: a schema set where a whole database is replaced", async () => {
    const whole = join(root, 'standby-whole.yml');
    const doc = parse(await readFile(standbyFile.a!, 'utf8')) as { database: Record<string, unknown> };
    delete doc.database.schema;
    doc.database.url = dbUrl(`${sdb}_whole`);
    await writeFile(whole, stringify(doc));
    const r = await runStandby(['apply', '--config', whole]);
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toContain('carries the schema "site_a", but this standby\'s database.schema is not set');
  });

  it("refuses, with a superuser agent, a schema whose data load would run the site's own code", async () => {
    await withDb(pdb, async (c) => {
      await c.query(`SET ROLE ${owner}`);
      await c.query('ALTER TABLE site_a.rsc ADD CONSTRAINT labelled CHECK (site_a.label(id) IS NOT NULL)');
    });
    await backup('a');
    const beforeA = await standby('site_a', true);
    const r = await apply('a');
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toContain('calls site_a.label(integer)');
    expect(r.stderr).toMatch(/transaction was rolled back/);
    expect(await standby('site_a', true)).toEqual(beforeA);
    expect(await schemasHere()).toEqual(['site_a', 'site_b', 'site_c']);
  });

  it("tandem-primary check looks at what the dump of the site's schema reads, not the other sites' schemas", async () => {
    // The site's own role reads site_a (it owns it) and nothing of site_b.
    const doc = parse(await readFile(primaryFile.a!, 'utf8')) as { database: Record<string, unknown> };
    doc.database.url = dbUrl(pdb).replace('postgres@', `${owner}@`);
    const asOwner = join(root, 'primary-a-owner.yml');
    await writeFile(asOwner, stringify(doc));
    const dbAccess = async (file: string) => {
      const r = await runPrimary(['check', '--config', file, '--json'], { timeoutMs: 120_000 });
      return (JSON.parse(r.stdout) as { checks: Array<{ name: string; status: string; detail: string }> }).checks.find((c) => c.name === 'db-access')!;
    };
    const mine = await dbAccess(asOwner);
    expect(mine.status, mine.detail).toBe('ok');
    expect(mine.detail).toMatch(/\b1 table\b/);
    // The same role and the whole database: site_b is out of its reach, and the check says so.
    delete doc.database.schema;
    const whole = join(root, 'primary-whole-owner.yml');
    await writeFile(whole, stringify({ ...doc, stateDir: join(root, 'p-whole-state') }));
    const all = await dbAccess(whole);
    expect(all.status).toBe('fail');
    expect(all.detail).toContain('site_b');
  });
});
