/**
 * Fixtures shared by the scenario tests (backup, standby apply, promote ...).
 *
 * Everything here works on REAL things: a real PostgreSQL database on the local server, real
 * directory trees on disk, and the real `tandem-primary` CLI as built by `npm run build`
 * (packages/primary-agent/dist/bundle/tandem-primary.js, what the package installs). Nothing is
 * mocked, so a scenario test that uses these fixtures proves what an operator would see.
 *
 * Overview:
 * - PostgreSQL:  ensurePostgres(), createDemoDatabase(), mutateDemoDatabase(), dumpDatabaseState(), createEmptyDatabase(),
 *                dropDatabase(), dbUrl(), withDb()
 * - Site trees:  createSiteTree(), mutateSiteTree(), snapshotTree()
 * - CLI:         makeKeys(), writePrimaryConfig(), runPrimary(), startPrimary(), runAgent(), startAgent(),
 *                messageLines(), logRecords()
 * - Misc:        requireCommands(), requireBuilt(), runCommand(), mustRun(), sha256(), tmpDir(), closedPort(), waitFor(), sleep()
 *
 * Environment knobs:
 *   TANDEM_TEST_PG  base URL of the test server (default postgres://postgres@127.0.0.1:5432);
 *                   the fixtures connect to its `postgres` database to create/drop databases.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { stringify as toYaml } from 'yaml';

// ---------------------------------------------------------------------------------------------
// Paths and small helpers
// ---------------------------------------------------------------------------------------------

/** The monorepo root (the directory holding package.json and packages/). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The primary's command as shipped (its bundle); `npm run build` makes it. */
export const PRIMARY_MAIN = join(REPO_ROOT, 'packages', 'primary-agent', 'dist', 'bundle', 'tandem-primary.js');
/** The standby's command as shipped (for the standby's scenario tests; see startAgent/runAgent). */
export const STANDBY_MAIN = join(REPO_ROOT, 'packages', 'standby-agent', 'dist', 'bundle', 'tandem-standby.js');

/** Base URL of the PostgreSQL server the scenario tests use (no database name). */
export const PG_BASE_URL = (process.env.TANDEM_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432').replace(/\/+$/, '');

/** The URL of database `name` on the test server. */
export const dbUrl = (name: string): string => `${PG_BASE_URL}/${encodeURIComponent(name)}`;

export const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

/** A fresh temporary directory (the caller removes it, e.g. in afterAll). */
export const tmpDir = (prefix = 'tandem-test-'): Promise<string> => mkdtemp(join(tmpdir(), prefix));

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a truthy value; throws `what` on timeout. */
export async function waitFor<T>(fn: () => T | Promise<T>, what: string, timeoutMs = 30_000, everyMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export { closedPort } from './ports.js';

/** Fail loudly (not skip) when a CLI the scenario tests depend on is missing. */
export function requireCommands(names: string[]): void {
  const missing = names.filter((n) => spawnSync('sh', ['-c', `command -v ${n}`], { stdio: 'ignore' }).status !== 0);
  if (missing.length > 0) {
    throw new Error(
      `the scenario tests need ${missing.join(', ')} on PATH (Debian: apt-get install age zstd tar postgresql-client); .ci/run installs them`,
    );
  }
}

/** A bundle's metafile (scripts/bundle.mjs writes it beside the command): each output file's sources and exports. */
export interface BundleMeta {
  outputs: Record<string, { inputs: Record<string, unknown>; exports: string[] }>;
}
export function readBundleMeta(mainJs: string): BundleMeta {
  return JSON.parse(readFileSync(join(dirname(mainJs), 'meta.json'), 'utf8')) as BundleMeta;
}

/**
 * Fail loudly (not skip) when an agent's command has not been built, or was bundled before the
 * last compile (`npx tsc -b` alone leaves the bundle as it was): `npm run build` does both.
 */
export function requireBuilt(mainJs = PRIMARY_MAIN): void {
  if (!existsSync(mainJs)) throw new Error(`${mainJs} is missing: build first with \`npm run build\``);
  const bundled = statSync(mainJs).mtimeMs;
  for (const pkg of ['shared', 'primary-agent', 'standby-agent']) {
    const dist = join(REPO_ROOT, 'packages', pkg, 'dist');
    for (const f of readdirSync(dist, { recursive: true }) as string[]) {
      if (!f.endsWith('.js') || f.startsWith('bundle')) continue;
      if (statSync(join(dist, f)).mtimeMs > bundled) throw new Error(`${mainJs} is older than ${join(dist, f)}: build again with \`npm run build\``);
    }
  }
}

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/**
 * Run an external command (age, zstd, tar, pg_restore ...) with optional stdin, collecting stdout as
 * bytes. Never rejects on a non-zero exit: callers assert on `code` (and see `stderr` in the diff).
 */
export function runCommand(
  cmd: string,
  args: string[],
  opts: { input?: Buffer | string; cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<CommandResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.on('error', () => undefined); // the command may exit before reading all of stdin
    child.stdin.end(opts.input ?? '');
  });
}

/** Like runCommand, but throws (with the command's stderr) unless it exits 0; returns stdout. */
export async function mustRun(cmd: string, args: string[], opts: Parameters<typeof runCommand>[2] = {}): Promise<Buffer> {
  const r = await runCommand(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/** Run `fn` with a client connected to database `name` (session in UTC, ISO dates). */
export async function withDb<T>(name: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: dbUrl(name), connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    await client.query("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3; SET bytea_output = 'hex'");
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Guard for scenario tests: throws (so the suite FAILS, never silently skips) when the PostgreSQL
 * server is unreachable, saying how to start it.
 */
export async function ensurePostgres(): Promise<void> {
  try {
    const v = await withDb('postgres', async (c) => (await c.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]?.v);
    if (!v) throw new Error('no server_version');
  } catch (err) {
    throw new Error(
      `PostgreSQL is not reachable at ${PG_BASE_URL} (${(err as Error).message}); the scenario tests need a real server. ` +
        'Start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start` (or set TANDEM_TEST_PG).',
    );
  }
}

const ident = (s: string): string => `"${s.replace(/"/g, '""')}"`;

/** Drop database `name` if it exists, disconnecting anyone still connected. */
export async function dropDatabase(name: string): Promise<void> {
  await withDb('postgres', (c) => c.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`));
}

/** Create an empty database (dropping any previous one of that name). */
export async function createEmptyDatabase(name: string): Promise<void> {
  await dropDatabase(name);
  await withDb('postgres', (c) => c.query(`CREATE DATABASE ${ident(name)} TEMPLATE template0 ENCODING 'UTF8'`));
}

/** Strings that break naive encoders: emoji (astral plane, ZWJ), CJK, combining marks, RTL, NUL-free controls. */
export const UNICODE_SAMPLES = [
  'Zoë’s café 🦄',
  '東京都渋谷区 — 日本語のテキスト',
  'e\u0301 a\u0308 n\u0303 (combining marks, not precomposed)',
  '👩‍👩‍👧‍👦 family ZWJ sequence, 🇳🇱 flag',
  'مرحبا بالعالم (RTL)',
  'tab\there, newline\nthere, quote " and backslash \\',
] as const;

/**
 * Create (drop first) and fill the demo database. Contents, all deterministic for a given `rows`:
 * - schema public:
 *   - `rsc`: identity PK, text (unicode), jsonb, timestamptz, bytea with zero bytes, numeric, an index
 *   - `medium`: serial PK, references a large object (oid column), filename with unicode
 *   - function `public.rsc_label(bigint) returns text`
 * - schema shop:
 *   - `product` (text PK), `orders` (serial PK, FK to product, index on placed_at)
 *   - standalone sequence `shop.invoice_no`, setval to 41999
 *   - view `shop.order_totals`
 * - one large object per `medium` row (lo_from_bytea), with zero bytes in it.
 */
export async function createDemoDatabase(name: string, opts: { rows?: number } = {}): Promise<void> {
  const rows = opts.rows ?? 200;
  await createEmptyDatabase(name);
  await withDb(name, async (c) => {
    await c.query('BEGIN');
    await c.query(`
      CREATE SCHEMA shop;

      CREATE TABLE public.rsc (
        id        bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name      text NOT NULL UNIQUE,
        title     text,
        props     jsonb NOT NULL DEFAULT '{}',
        created   timestamptz NOT NULL,
        modified  timestamptz,
        data      bytea,
        score     numeric(14,4)
      );
      CREATE INDEX rsc_created_idx ON public.rsc (created);
      CREATE INDEX rsc_props_gin ON public.rsc USING gin (props);

      CREATE TABLE public.medium (
        id        serial PRIMARY KEY,
        rsc_id    bigint REFERENCES public.rsc(id) ON DELETE CASCADE,
        filename  text NOT NULL,
        mime      text NOT NULL,
        blob      oid NOT NULL
      );

      CREATE FUNCTION public.rsc_label(rid bigint) RETURNS text
        LANGUAGE sql STABLE
        AS $$ SELECT coalesce(title, name) || ' #' || id FROM public.rsc WHERE id = rid $$;

      CREATE TABLE shop.product (
        sku    text PRIMARY KEY,
        name   text NOT NULL,
        price  numeric(10,2) NOT NULL,
        attrs  jsonb
      );

      CREATE TABLE shop.orders (
        id          serial PRIMARY KEY,
        sku         text NOT NULL REFERENCES shop.product(sku),
        qty         integer NOT NULL CHECK (qty > 0),
        placed_at   timestamptz NOT NULL,
        invoice_no  bigint,
        note        text
      );
      CREATE INDEX orders_placed_idx ON shop.orders (placed_at);

      CREATE SEQUENCE shop.invoice_no START 1000;

      CREATE VIEW shop.order_totals AS
        SELECT p.sku, p.name, sum(o.qty) AS qty, sum(o.qty * p.price) AS total
          FROM shop.product p JOIN shop.orders o ON o.sku = p.sku
         GROUP BY p.sku, p.name;
    `);

    // rsc: unicode text, nested jsonb, timestamps, bytea with zero bytes, numerics.
    await c.query(
      `INSERT INTO public.rsc (name, title, props, created, modified, data, score)
       SELECT 'rsc_' || g,
              ($2::text[])[1 + g % array_length($2::text[], 1)] || ' ' || g,
              jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'ü', '猫'), 'nested', jsonb_build_object('ok', g % 2 = 0, 'v', g * 1.5),
                                 'text', ($2::text[])[1 + (g + 1) % array_length($2::text[], 1)]),
              timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes 11.123456 seconds',
              CASE WHEN g % 3 = 0 THEN NULL ELSE timestamptz '2024-06-01 12:00:00+02' + g * interval '1 hour' END,
              '\\x00'::bytea || decode(md5(g::text), 'hex') || '\\x0000ff00'::bytea,
              round((g * 3.14159265)::numeric, 4)
         FROM generate_series(1, $1::int) g`,
      [rows, UNICODE_SAMPLES],
    );

    // Large objects referenced from public.medium: one per 20 rsc rows, at least two.
    const media = Math.max(2, Math.floor(rows / 20));
    await c.query(
      `INSERT INTO public.medium (rsc_id, filename, mime, blob)
       SELECT g, 'photo-' || g || '-ü日本.jpg', 'image/jpeg',
              lo_from_bytea(0, '\\x00ffd8ffe000'::bytea || decode(repeat(md5(g::text), 64), 'hex') || '\\x0000'::bytea)
         FROM generate_series(1, $1::int) g`,
      [media],
    );

    await c.query(
      `INSERT INTO shop.product (sku, name, price, attrs)
       SELECT 'SKU-' || lpad(g::text, 4, '0'), ($1::text[])[1 + g % array_length($1::text[], 1)], (g * 1.25)::numeric(10,2),
              CASE WHEN g % 4 = 0 THEN NULL ELSE jsonb_build_object('color', 'blau', 'size', g) END
         FROM generate_series(1, 25) g`,
      [UNICODE_SAMPLES],
    );
    await c.query(
      `INSERT INTO shop.orders (sku, qty, placed_at, invoice_no, note)
       SELECT 'SKU-' || lpad((1 + g % 25)::text, 4, '0'), 1 + g % 7,
              timestamptz '2025-02-03 04:05:06.789+00' + g * interval '1 day 3 minutes',
              nextval('shop.invoice_no'),
              CASE WHEN g % 5 = 0 THEN 'rush 🚚' ELSE NULL END
         FROM generate_series(1, $1::int) g`,
      [rows],
    );
    // A non-trivial sequence value that only a dump with SEQUENCE SET carries over.
    await c.query(`SELECT setval('shop.invoice_no', 41999)`);
    await c.query('COMMIT');
    await c.query('ANALYZE');
  });
}

/**
 * Change the demo database the way a live site would between two backups: update, insert and
 * delete rows in both schemas, advance the standalone sequence, add a large object.
 */
export async function mutateDemoDatabase(name: string): Promise<void> {
  await withDb(name, async (c) => {
    await c.query('BEGIN');
    await c.query(`UPDATE public.rsc SET title = title || ' (edited ✏️)', modified = timestamptz '2026-01-02 03:04:05+00',
                          props = props || '{"edited": true}' WHERE id % 10 = 1`);
    await c.query(`DELETE FROM public.rsc WHERE id % 10 = 7 AND id NOT IN (SELECT rsc_id FROM public.medium WHERE rsc_id IS NOT NULL)`);
    await c.query(`INSERT INTO public.rsc (name, title, props, created, data, score)
                   VALUES ('rsc_new_1', '新しいページ', '{"new": 1}', timestamptz '2026-01-02 00:00:00+00', '\\x000102'::bytea, 1.0001),
                          ('rsc_new_2', 'noch eine Seite 🎉', '{"new": 2}', timestamptz '2026-01-02 00:00:01+00', NULL, NULL)`);
    await c.query(`INSERT INTO public.medium (rsc_id, filename, mime, blob)
                   SELECT id, 'added-after-mutation.bin', 'application/octet-stream',
                          lo_from_bytea(0, '\\x0000deadbeef00'::bytea || convert_to('mutated ✔', 'UTF8'))
                     FROM public.rsc WHERE name = 'rsc_new_1'`);
    await c.query(`UPDATE shop.product SET price = price + 0.99 WHERE sku = 'SKU-0001'`);
    await c.query(`INSERT INTO shop.orders (sku, qty, placed_at, invoice_no, note)
                   VALUES ('SKU-0002', 3, timestamptz '2026-01-02 10:00:00+00', nextval('shop.invoice_no'), 'after mutation')`);
    await c.query(`DELETE FROM shop.orders WHERE id = (SELECT min(id) FROM shop.orders)`);
    await c.query(`SELECT setval('shop.invoice_no', nextval('shop.invoice_no') + 500)`);
    await c.query('COMMIT');
  });
}

export interface DatabaseState {
  /** "schema.table" → every row as text (`t::text`), ordered by primary key. */
  tables: Record<string, string[]>;
  /** "schema.sequence" → last_value (null if never used), including identity/serial sequences. */
  sequences: Record<string, string | null>;
  /** large object oid → sha256 of its contents. */
  largeObjects: Record<string, string>;
  /** "schema.view" → definition. */
  views: Record<string, string>;
  /** "schema.index" → CREATE INDEX statement. */
  indexes: Record<string, string>;
  /** "schema.function(args)" → CREATE FUNCTION statement. */
  functions: Record<string, string>;
}

const USER_SCHEMAS = `n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'`;

/**
 * A comparable snapshot of a database's user-visible state. Two databases with equal snapshots hold
 * the same rows, sequence positions, large objects, views, indexes and functions. Use with
 * `expect(dumpDatabaseState(a)).toEqual(dumpDatabaseState(b))`.
 */
export async function dumpDatabaseState(name: string): Promise<DatabaseState> {
  return withDb(name, async (c) => {
    const state: DatabaseState = { tables: {}, sequences: {}, largeObjects: {}, views: {}, indexes: {}, functions: {} };
    const tables = await c.query<{ schema: string; name: string; pk: string[] | null }>(
      `SELECT n.nspname AS schema, t.relname AS name,
              (SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                WHERE i.indrelid = t.oid AND i.indisprimary) AS pk
         FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE t.relkind IN ('r', 'p') AND ${USER_SCHEMAS}
        ORDER BY 1, 2`,
    );
    for (const t of tables.rows) {
      const rel = `${ident(t.schema)}.${ident(t.name)}`;
      const order = t.pk && t.pk.length > 0 ? t.pk.map((col) => `t.${ident(col)}`).join(', ') : 't::text';
      const r = await c.query<{ row: string }>(`SELECT t::text AS row FROM ${rel} t ORDER BY ${order}`);
      state.tables[`${t.schema}.${t.name}`] = r.rows.map((x) => x.row);
    }
    const seqs = await c.query<{ schemaname: string; sequencename: string; last_value: string | null }>(
      `SELECT schemaname, sequencename, last_value::text AS last_value FROM pg_sequences ORDER BY 1, 2`,
    );
    for (const s of seqs.rows) state.sequences[`${s.schemaname}.${s.sequencename}`] = s.last_value;
    const los = await c.query<{ oid: string; sha: string }>(
      `SELECT oid::text AS oid, encode(sha256(lo_get(oid)), 'hex') AS sha FROM pg_largeobject_metadata ORDER BY oid`,
    );
    for (const l of los.rows) state.largeObjects[l.oid] = l.sha;
    const views = await c.query<{ schemaname: string; viewname: string; definition: string }>(
      `SELECT schemaname, viewname, definition FROM pg_views WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2`,
    );
    for (const v of views.rows) state.views[`${v.schemaname}.${v.viewname}`] = v.definition;
    const idx = await c.query<{ schemaname: string; indexname: string; indexdef: string }>(
      `SELECT schemaname, indexname, indexdef FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2`,
    );
    for (const i of idx.rows) state.indexes[`${i.schemaname}.${i.indexname}`] = i.indexdef;
    const fns = await c.query<{ sig: string; def: string }>(
      `SELECT p.oid::regprocedure::text AS sig, pg_get_functiondef(p.oid) AS def
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE ${USER_SCHEMAS} AND p.prokind = 'f'
        ORDER BY 1`,
    );
    for (const f of fns.rows) state.functions[f.sig] = f.def;
    return state;
  });
}

// ---------------------------------------------------------------------------------------------
// Site trees
// ---------------------------------------------------------------------------------------------

export interface SitePaths {
  /** The site's config dir (`priv/`, holding config.d/). */
  config: string;
  /** Certificates and secrets. */
  security: string;
  /** Media files. */
  files: string;
}

/** A name longer than the 100 bytes of a classic ustar name field (needs PAX/GNU long names). */
export const LONG_NAME = `${'a-very-long-file-name-'.repeat(6)}that-goes-past-the-ustar-limit.txt`;
/** Fixed mtime given to some files, so that mtime preservation can be checked. */
export const FIXED_MTIME = new Date('2021-03-04T05:06:07Z');

async function put(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, data);
  await chmod(file, mode);
}

/**
 * Create a site's three trees under `root` and return their paths:
 *
 * ```
 * root/priv/config.d/site.yml, db.yml          root/priv/zotonic_site.config
 * root/security/cert.pem (0644)  key.pem (0600)  ca/chain.pem  private/api-token (0600)
 * root/files/
 *   archive/2024/05/photo-1.jpg, photo-2.jpg   nested dirs, FIXED_MTIME
 *   empty-dir/                                 an empty directory
 *   bin/resize.sh                              0755 script
 *   latest.jpg -> archive/2024/05/photo-1.jpg  relative symlink inside the tree
 *   docs/über/日本語ファイル.txt, emoji-🦄.txt, café (combining) .txt
 *   my holiday photo (1).txt                   spaces and parentheses
 *   deep/.../LONG_NAME                         a name > 100 chars in a path > 200 chars
 *   big/random-1mb.bin                         1 MiB of random bytes
 *   .hidden                                    a dot file
 * ```
 * Directories get mode 0755 except security/private (0700).
 */
export async function createSiteTree(root: string): Promise<SitePaths> {
  const paths: SitePaths = { config: join(root, 'priv'), security: join(root, 'security'), files: join(root, 'files') };

  await put(
    join(paths.config, 'config.d', 'site.yml'),
    'site: demo\nhostname: demo.example.com\nlanguages: [en, nl, ja]\nsmtp:\n  relay: true\n',
  );
  await put(join(paths.config, 'config.d', 'db.yml'), 'dbhost: 127.0.0.1\ndbport: 5432\ndbdatabase: demo\ndbuser: zotonic\n');
  await put(join(paths.config, 'zotonic_site.config'), '[{hostname, "demo.example.com"}, {install_modules, [mod_backup]}].\n');

  const { privateKey } = generateKeyPairSync('ed25519');
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const fakeCert = `-----BEGIN CERTIFICATE-----\n${randomBytes(300).toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE-----\n`;
  await put(join(paths.security, 'cert.pem'), fakeCert, 0o644);
  await put(join(paths.security, 'key.pem'), keyPem, 0o600);
  await put(join(paths.security, 'ca', 'chain.pem'), fakeCert + fakeCert, 0o644);
  await put(join(paths.security, 'private', 'api-token'), `${randomBytes(24).toString('hex')}\n`, 0o600);
  await chmod(join(paths.security, 'private'), 0o700);

  const f = paths.files;
  await put(join(f, 'archive', '2024', '05', 'photo-1.jpg'), Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0]), randomBytes(20_000)]));
  await put(join(f, 'archive', '2024', '05', 'photo-2.jpg'), randomBytes(3_000));
  await utimes(join(f, 'archive', '2024', '05', 'photo-1.jpg'), FIXED_MTIME, FIXED_MTIME);
  await mkdir(join(f, 'empty-dir'), { recursive: true });
  await put(join(f, 'bin', 'resize.sh'), '#!/bin/sh\nexec convert "$1" -resize 50% "$2"\n', 0o755);
  await symlink(join('archive', '2024', '05', 'photo-1.jpg'), join(f, 'latest.jpg'));
  await put(join(f, 'docs', 'über', '日本語ファイル.txt'), 'こんにちは世界\n');
  await put(join(f, 'docs', 'emoji-🦄.txt'), 'unicorn 🦄\n');
  await put(join(f, 'docs', 'cafe\u0301.txt'), 'combining acute accent in the name\n');
  await put(join(f, 'my holiday photo (1).txt'), 'spaces in the name\n');
  await put(join(f, 'deep', 'nested-directory-level-one', 'nested-directory-level-two', 'nested-directory-level-three', LONG_NAME), 'long name\n');
  await put(join(f, 'big', 'random-1mb.bin'), randomBytes(1024 * 1024));
  await put(join(f, '.hidden'), 'dot file\n');
  await utimes(join(f, 'docs', 'emoji-🦄.txt'), FIXED_MTIME, FIXED_MTIME);
  return paths;
}

/**
 * Change the trees made by `createSiteTree(root)` as a live site would: add, change and delete
 * files in all three trees, change a mode, and repoint the symlink.
 */
export async function mutateSiteTree(root: string): Promise<void> {
  const f = join(root, 'files');
  await put(join(root, 'priv', 'config.d', 'site.yml'), 'site: demo\nhostname: www.demo.example.com\nlanguages: [en, nl, ja, de]\n');
  await put(join(root, 'priv', 'config.d', 'new-module.yml'), 'mod_new: { enabled: true }\n');
  await put(join(root, 'security', 'cert.pem'), `-----BEGIN CERTIFICATE-----\n${randomBytes(120).toString('base64')}\n-----END CERTIFICATE-----\n`);
  await put(join(f, 'archive', '2025', '01', 'new-upload ✨.png'), randomBytes(5_000));
  await put(join(f, 'docs', 'emoji-🦄.txt'), 'unicorn 🦄, edited\n');
  await rm(join(f, 'my holiday photo (1).txt'));
  await rm(join(f, 'archive', '2024', '05', 'photo-2.jpg'));
  await chmod(join(f, 'bin', 'resize.sh'), 0o700);
  await rm(join(f, 'latest.jpg'));
  await symlink(join('archive', '2025', '01', 'new-upload ✨.png'), join(f, 'latest.jpg'));
}

export interface TreeEntry {
  /** Path relative to the snapshot root, '/'-separated. */
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  /** Permission bits (mode & 0o7777). Not compared for symlinks (always 0o777 on Linux). */
  mode: number;
  size?: number;
  sha256?: string;
  /** Symlink target as stored (not resolved). */
  target?: string;
  /** mtime in whole seconds (files only), when asked for. */
  mtime?: number;
}

/**
 * Everything about a tree that a restore must reproduce: paths, types, modes, sizes, content
 * hashes, symlink targets (and with `{ mtimes: true }` file mtimes in whole seconds). The root
 * itself is not included. Entries are sorted by path, so two snapshots compare with toEqual.
 */
export async function snapshotTree(dir: string, opts: { mtimes?: boolean } = {}): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  async function walk(abs: string): Promise<void> {
    for (const name of await readdir(abs)) {
      const p = join(abs, name);
      const st = await lstat(p);
      const path = relative(dir, p).split(sep).join('/');
      if (st.isSymbolicLink()) {
        out.push({ path, type: 'symlink', mode: 0o777, target: await readlink(p) });
      } else if (st.isDirectory()) {
        out.push({ path, type: 'dir', mode: st.mode & 0o7777 });
        await walk(p);
      } else if (st.isFile()) {
        const e: TreeEntry = { path, type: 'file', mode: st.mode & 0o7777, size: st.size, sha256: sha256(await readFile(p)) };
        if (opts.mtimes) e.mtime = Math.floor(st.mtimeMs / 1000);
        out.push(e);
      } else {
        out.push({ path, type: 'other', mode: st.mode & 0o7777 });
      }
    }
  }
  await walk(dir);
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

// ---------------------------------------------------------------------------------------------
// The primary CLI
// ---------------------------------------------------------------------------------------------

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when runPrimary killed the process at `timeoutMs`. */
  timedOut: boolean;
}

export interface RunOptions {
  /** Added to (and overriding) the test process's environment. */
  env?: NodeJS.ProcessEnv;
  /** SIGKILL after this long and resolve with timedOut: true (default 60 s). */
  timeoutMs?: number;
  cwd?: string;
}

/** Environment for CLI children: JSON logs (stderr is a pipe anyway), info level. */
function cliEnv(extra?: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...process.env, TANDEM_LOG_FORMAT: 'json', TANDEM_LOG_LEVEL: 'info', ...extra };
}

export interface RunningPrimary {
  child: ChildProcess;
  /** Resolves when the process has exited; never rejects on a non-zero exit. */
  result: Promise<RunResult>;
  /** stderr received so far. */
  stderrSoFar(): string;
}

/** Start `node PRIMARY_MAIN ...args` without waiting (for kill/lock tests). */
export function startPrimary(args: string[], opts: RunOptions = {}): RunningPrimary {
  return startAgent(PRIMARY_MAIN, args, opts);
}

/** Start any built agent entry point (PRIMARY_MAIN, STANDBY_MAIN) with `node`, without waiting. */
export function startAgent(mainJs: string, args: string[], opts: RunOptions = {}): RunningPrimary {
  const child = spawn(process.execPath, [mainJs, ...args], {
    cwd: opts.cwd ?? REPO_ROOT,
    env: cliEnv(opts.env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  child.stderr!.on('data', (c: Buffer) => err.push(c));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, opts.timeoutMs ?? 60_000);
  const result = new Promise<RunResult>((res, rej) => {
    child.once('error', (e) => {
      clearTimeout(timer);
      rej(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      res({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
  });
  return { child, result, stderrSoFar: () => Buffer.concat(err).toString('utf8') };
}

/**
 * Run `tandem-primary ...args` (the built CLI) and resolve {code, stdout, stderr}; never rejects on
 * a non-zero exit, so tests assert on the exit code and the wording themselves.
 */
export function runPrimary(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return startPrimary(args, opts).result;
}

/** runPrimary for any built agent entry point, e.g. `runAgent(STANDBY_MAIN, ['apply', ...])`. */
export function runAgent(mainJs: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return startAgent(mainJs, args, opts).result;
}

/**
 * stderr lines that are not JSON log records: what an operator reads as the command's message
 * (e.g. "tandem-primary: error: ..." and its "  hint: ..." line).
 */
export function messageLines(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((l) => l.trim() !== '')
    .filter((l) => {
      if (!l.startsWith('{')) return true;
      try {
        JSON.parse(l);
        return false;
      } catch {
        return true;
      }
    });
}

/** JSON log records written to stderr by a CLI run (TANDEM_LOG_FORMAT=json). */
export function logRecords(stderr: string): Array<Record<string, unknown>> {
  const recs: Array<Record<string, unknown>> = [];
  for (const l of stderr.split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      recs.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      /* not a log record */
    }
  }
  return recs;
}

export interface KeyFiles {
  dir: string;
  /** age identity (private): the standby's. */
  identityFile: string;
  /** age recipient (public): the primary's keys.recipientFile. */
  recipientFile: string;
  /** Ed25519 private key: the primary's keys.signingKeyFile. */
  signingKeyFile: string;
  /** Ed25519 public key: the standby's keys.verifyKeyFile. */
  verifyKeyFile: string;
  /** The files key (age identity): keys.filesKeyFile of both agents, when the files are content objects. */
  filesKeyFile: string;
}

/**
 * Create the filestore a primary config names (its tandem-filestore.json marker; for a directory
 * the directory itself) with the real `tandem-primary init --filestore --config FILE`, the one
 * supported way; throws if it fails. `env`: S3 credentials, as for the agents.
 */
export async function initFilestore(configFile: string, env: NodeJS.ProcessEnv = {}): Promise<void> {
  const r = await runPrimary(['init', '--filestore', '--config', configFile], { env });
  if (r.code !== 0) throw new Error(`tandem-primary init --filestore --config ${configFile} exited ${r.code}: ${r.stderr}`);
}

/** Generate a site's keys with the real `tandem-primary init --keys-dir DIR`; throws if it fails. */
export async function makeKeys(dir: string): Promise<KeyFiles> {
  const r = await runPrimary(['init', '--keys-dir', dir]);
  if (r.code !== 0) throw new Error(`tandem-primary init --keys-dir ${dir} exited ${r.code}: ${r.stderr}`);
  return {
    dir,
    identityFile: join(dir, 'backup.agekey'),
    recipientFile: join(dir, 'backup.agepub'),
    signingKeyFile: join(dir, 'signing.key'),
    verifyKeyFile: join(dir, 'signing.pub'),
    filesKeyFile: join(dir, 'files.agekey'),
  };
}

export interface PrimaryConfigInput {
  site: string;
  /** Full postgres:// URL (see dbUrl()). */
  databaseUrl: string;
  paths: SitePaths;
  /** file:///abs or s3://bucket/prefix?... */
  filestoreUrl: string;
  keys: Pick<KeyFiles, 'signingKeyFile'> & Partial<Pick<KeyFiles, 'recipientFile'>>;
  /** keys.filesKeyFile: the files as content objects. */
  filesKeyFile?: string;
  /** Written only when given: omit to test the default. */
  encryption?: 'age' | 'none';
  /** Per-test state dir (lock file, last-backup.json); strongly recommended in tests. */
  stateDir?: string;
  /** Extra or overriding top-level keys, written as given (for tests of bad configs). */
  extra?: Record<string, unknown>;
}

/** Write a primary agent YAML config to `file` (dirs created) and return `file`. */
export async function writePrimaryConfig(file: string, c: PrimaryConfigInput): Promise<string> {
  const doc: Record<string, unknown> = {
    site: c.site,
    database: { url: c.databaseUrl },
    paths: { config: c.paths.config, security: c.paths.security, files: c.paths.files },
    filestore: { url: c.filestoreUrl },
    ...(c.encryption === undefined ? {} : { encryption: c.encryption }),
    keys: {
      ...(c.keys.recipientFile === undefined ? {} : { recipientFile: c.keys.recipientFile }),
      signingKeyFile: c.keys.signingKeyFile,
      ...(c.filesKeyFile === undefined ? {} : { filesKeyFile: c.filesKeyFile }),
    },
    ...(c.stateDir === undefined ? {} : { stateDir: c.stateDir }),
    ...c.extra,
  };
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, toYaml(doc));
  return file;
}
