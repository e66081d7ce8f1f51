/**
 * The site's own unprivileged role plants code on the primary (as SQL injection would let it):
 * functions that, when they run as a superuser, write a file with COPY ... TO (the first step to
 * COPY ... TO PROGRAM). The primary signs a faithful dump; apply must never run that code with
 * more rights than the role that planted it, whatever role the standby agent connects as.
 *
 * Each planted function also records the database and role it runs in (through a volatile helper,
 * as an immutable function may not write), so the tests prove the code did run during apply, and
 * as whom, not just that no file appeared.
 */
import { chmod, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { createSiteTree, dbUrl, ensurePostgres, initFilestore, makeKeys, requireCommands, runPrimary, tmpDir, withDb, writePrimaryConfig, type KeyFiles } from './support/site.js';
import { runStandby, show, uid } from './support/standby-helpers.js';

/**
 * A large object per call, owned by the role the code runs as (a table would not do: a parallel
 * pg_restore truncates a table it created before loading its rows).
 */
const MARKS = [
  `CREATE FUNCTION public.mark(fn text) RETURNS void LANGUAGE sql VOLATILE AS $m$ SELECT lo_from_bytea(0, convert_to(current_database() || ' ' || fn, 'UTF8')) $m$`,
];

const evil = (name: string, dir: string, returns: string, body: string) => `
  CREATE FUNCTION public.${name}(x int) RETURNS ${returns} LANGUAGE plpgsql IMMUTABLE AS $f$
  BEGIN
    PERFORM public.mark('${name}');
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
      EXECUTE format('COPY (SELECT 1) TO %L', '${dir}/${name}-' || current_user);
    END IF;
    RETURN ${body};
  END $f$`;

describe('apply runs none of the site\'s code with more rights than its role', () => {
  let root: string;
  let keys: KeyFiles;
  let drop: string[];
  const id = uid();
  const owner = `site_${id}`;
  const agent = `tandem_agent_${id}`;
  let pwned: string;

  beforeAll(async () => {
    requireCommands(['pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-restore-safety-');
    keys = await makeKeys(join(root, 'keys'));
    // Where a superuser's COPY ... TO would land: writable by the server's OS user.
    pwned = join(root, 'pwned');
    await mkdir(pwned);
    await chmod(root, 0o755);
    await chmod(pwned, 0o777);
    drop = [];
    await withDb('postgres', async (c) => {
      await c.query(`CREATE ROLE ${owner} LOGIN`);
      // The recommended standby role: no SUPERUSER, no CREATEROLE; CREATEDB and membership in the site's role.
      await c.query(`CREATE ROLE ${agent} LOGIN CREATEDB`);
      await c.query(`GRANT ${owner} TO ${agent}`);
    });
  });

  afterAll(async () => {
    for (const db of drop) await withDb('postgres', (c) => c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)).catch(() => undefined);
    await withDb('postgres', async (c) => {
      await c.query(`DROP ROLE IF EXISTS ${agent}`).catch(() => undefined);
      await c.query(`DROP ROLE IF EXISTS ${owner}`).catch(() => undefined);
    });
    if (root) await rm(root, { recursive: true, force: true });
  });

  /** Which planted functions ran while apply restored the database, and as whom. */
  const ranDuringApply = async (sdb: string) =>
    (
      await withDb(sdb, (c) =>
        c.query<{ r: string }>(
          `SELECT DISTINCT split_part(m, ' ', 2) || ' as ' || who AS r
             FROM (SELECT convert_from(lo_get(oid), 'UTF8') AS m, pg_get_userbyid(lomowner) AS who FROM pg_largeobject_metadata) x
            WHERE split_part(m, ' ', 1) = $1 ORDER BY 1`,
          [`${sdb}__tandem_new`],
        ),
      )
    ).rows.map((x) => x.r);

  /** A primary database owned by the site's role, with `plant` run AS that role; backed up once. */
  async function siteWith(
    name: string,
    plant: string[],
  ): Promise<{ standby: (url: string, database?: Record<string, unknown>) => Promise<string>; sdb: string; backupAgain: () => Promise<void> }> {
    const pdb = `tandem_rs_p_${name}_${id}`;
    const sdb = `tandem_rs_s_${name}_${id}`;
    drop.push(pdb, sdb, `${sdb}__tandem_new`, `${sdb}__tandem_old`);
    await withDb('postgres', (c) => c.query(`CREATE DATABASE ${pdb} OWNER ${owner}`));
    await withDb(pdb, async (c) => {
      await c.query(`SET ROLE ${owner}`);
      for (const sql of plant) await c.query(sql);
    });
    const sroot = join(root, name);
    const pcfg = await writePrimaryConfig(join(sroot, 'primary.yml'), {
      site: `rs${name}${id}`,
      databaseUrl: dbUrl(pdb),
      paths: await createSiteTree(join(sroot, 'primary')),
      filestoreUrl: `file://${join(sroot, 'store')}`,
      keys,
      stateDir: join(sroot, 'primary-state'),
    });
    await initFilestore(pcfg);
    const backupAgain = async () => {
      const r = await runPrimary(['backup', '--config', pcfg]);
      expect(r.code, show(r)).toBe(0);
    };
    await backupAgain();
    let n = 0;
    const standby = async (url: string, database: Record<string, unknown> = {}) => {
      const dir = join(sroot, `standby-${++n}`);
      for (const d of ['priv', 'security', 'files']) await mkdir(join(dir, d), { recursive: true });
      const file = join(dir, 'standby.yml');
      await writeFile(
        file,
        stringify({
          site: `rs${name}${id}`,
          database: { url, create: true, ...database },
          paths: { config: join(dir, 'priv'), security: join(dir, 'security'), files: join(dir, 'files') },
          filestore: { url: `file://${join(sroot, 'store')}` },
          keys: { identityFile: keys.identityFile, verifyKeyFile: keys.verifyKeyFile },
          stateDir: join(dir, 'state'),
          restartCommand: 'true',
        }),
      );
      return file;
    };
    return { standby, sdb, backupAgain };
  }

  it('index expressions and materialized views run as their owner, even with a superuser agent: nothing is written', async () => {
    const site = await siteWith('idx', [
      ...MARKS,
      evil('evil_idx', pwned, 'int', 'x'),
      'CREATE TABLE public.t (x int)',
      'INSERT INTO public.t SELECT generate_series(1, 5)',
      'CREATE INDEX t_evil ON public.t ((public.evil_idx(x)))',
      'CREATE MATERIALIZED VIEW public.mv AS SELECT public.evil_idx(x) AS y FROM public.t',
    ]);
    const cfg = await site.standby(dbUrl(site.sdb)); // as postgres, a superuser
    const r = await runStandby(['apply', '--config', cfg]);
    expect(r.code, show(r)).toBe(0);
    // The planted code did run during apply, as the site's role, and wrote nothing.
    expect(await ranDuringApply(site.sdb)).toEqual([`evil_idx as ${owner}`]);
    expect(await readdir(pwned)).toEqual([]);
    expect((await withDb(site.sdb, (c) => c.query('SELECT count(*)::int AS n FROM public.mv'))).rows).toEqual([{ n: 5 }]);
  });

  it('a CHECK constraint calling the site\'s function: a superuser agent refuses before loading a row; the recommended role applies it safely', async () => {
    const site = await siteWith('chk', [
      ...MARKS,
      evil('evil_check', pwned, 'boolean', 'true'),
      evil('evil_gen', pwned, 'int', 'x'),
      'CREATE TABLE public.c (x int CHECK (public.evil_check(x)), y int GENERATED ALWAYS AS (public.evil_gen(x)) STORED)',
      'INSERT INTO public.c (x) SELECT generate_series(1, 3)',
    ]);
    // As a superuser: refused, naming what and why; the live database is untouched (none yet), the new one dropped.
    const su = await site.standby(dbUrl(site.sdb));
    let r = await runStandby(['apply', '--config', su]);
    expect(r.code, show(r)).not.toBe(0);
    expect(r.stderr).toContain('the CHECK constraint c_x_check of table c calls evil_check(integer) (owned by the role');
    expect(r.stderr).toContain('the generated column y of table c calls evil_gen(integer)');
    expect(r.stderr).toContain('docs/operations.md');
    expect(await readdir(pwned)).toEqual([]);
    const left = await withDb('postgres', (c) => c.query('SELECT datname FROM pg_database WHERE datname LIKE $1', [`${site.sdb}%`]));
    expect(left.rows).toEqual([]);

    // As the recommended role (CREATEDB, member of the site's role, nothing more): applied; the
    // code runs, as that role, and cannot write files.
    const plain = await site.standby(dbUrl(site.sdb).replace('postgres@', `${agent}@`));
    r = await runStandby(['apply', '--config', plain]);
    expect(r.code, show(r)).toBe(0);
    expect(await ranDuringApply(site.sdb)).toEqual([`evil_check as ${agent}`, `evil_gen as ${agent}`]);
    expect(await readdir(pwned)).toEqual([]);
    const rows = await withDb(site.sdb, (c) => c.query('SELECT x, y FROM public.c ORDER BY x'));
    expect(rows.rows).toEqual([{ x: 1, y: 1 }, { x: 2, y: 2 }, { x: 3, y: 3 }]);
    const owners = await withDb(site.sdb, (c) => c.query("SELECT pg_get_userbyid(relowner) AS o FROM pg_class WHERE relname = 'c'"));
    expect(owners.rows).toEqual([{ o: owner }]);
  });

  it('database.preserveSettings keeps the standby\'s own value of a setting; the others follow the primary', async () => {
    const site = await siteWith('set', [
      'CREATE TABLE public.t (x int)',
    ]);
    const pdb = site.sdb.replace('_rs_s_', '_rs_p_');
    await withDb('postgres', async (c) => {
      await c.query(`ALTER DATABASE ${pdb} SET statement_timeout = '45s'`);
      await c.query(`ALTER DATABASE ${pdb} SET work_mem = '8MB'`);
    });
    const cfg = await site.backupAgain().then(() => site.standby(dbUrl(site.sdb), { preserveSettings: ['statement_timeout'] }));
    let r = await runStandby(['apply', '--config', cfg]);
    expect(r.code, show(r)).toBe(0);
    const settings = async () =>
      (await withDb('postgres', (c) => c.query('SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1 AND s.setrole = 0', [site.sdb]))).rows[0]
        ?.setconfig as string[] | undefined;
    // First apply: no live database to keep a value from, so the preserved setting is not set at all.
    expect(await settings()).toEqual(['work_mem=8MB']);
    await withDb('postgres', (c) => c.query(`ALTER DATABASE ${site.sdb} SET statement_timeout = '5min'`));
    r = await runStandby(['apply', '--config', cfg, '--force']);
    expect(r.code, show(r)).toBe(0);
    expect((await settings())?.sort()).toEqual(['statement_timeout=5min', 'work_mem=8MB']);
  });
});
