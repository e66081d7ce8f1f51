// The benchmark data: a realistic PostgreSQL database and a tree of media files, generated once and
// kept for re-runs (a marker row in the database, a marker file beside the tree).
//
// Database (BENCH_DB_GB, default 1.0, is the target of pg_database_size, indexes included):
//   customers  names, unique e-mails, timestamps, numeric balances, a jsonb profile with an address
//   articles   titles and 200-2000 byte bodies of varied words, text[] tags, jsonb meta
//   orders     jsonb line items (1-5), numeric totals, statuses, nullable timestamps and notes
//   events     an audit log: timestamps, inet, paths, jsonb payloads
// with primary keys, foreign keys, a unique index, b-tree indexes, a GIN index, a view and a
// large object. The text comes from a generated vocabulary of ~8,000 pseudo-words with a skewed
// (Zipf-like) frequency, so it compresses like prose (gzip -6: ~39% of the input; zstd -3: ~38%),
// not like pgbench's zero-filled rows. Everything is produced by INSERT ... SELECT generate_series
// in SQL, in batches on two connections: ~1 GB takes about 1-2 minutes here.
//
// Files (BENCH_FILES_MB, default 500): ~2,800 files of random (incompressible) bytes in ~100 dirs:
// thumbnails (4-64 KB), images (64 KB-2 MB), documents (1-256 KB), tiny files (<4 KB) and five
// videos (16-32 MB), plus empty dirs, a symlink and unicode names. Sizes and names come from a
// seeded PRNG, so every machine gets the same tree shape.
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { MB, MIB, databaseExists, dropDatabase, log, pgUrl, psql } from './common.mjs';

export const DATASET_VERSION = 1;

// Rows per GB of pg_database_size (calibrated on this machine kind: 1.0 gives ~1.0 GB).
const ROWS_PER_GB = { customers: 100_000, articles: 255_000, orders: 600_000, events: 930_000 };
const BATCH = 100_000;

const SCHEMA = `
CREATE TABLE customers (
  id bigint NOT NULL, name text NOT NULL, email text NOT NULL, country char(2) NOT NULL,
  created_at timestamptz NOT NULL, last_login timestamptz, balance numeric(12,2) NOT NULL,
  is_active boolean NOT NULL, profile jsonb NOT NULL);
CREATE TABLE articles (
  id bigint NOT NULL, author_id bigint NOT NULL, title text NOT NULL, body text NOT NULL,
  tags text[] NOT NULL, status text NOT NULL, published_at timestamptz NOT NULL, views integer NOT NULL,
  rating numeric(3,2), meta jsonb NOT NULL);
CREATE TABLE orders (
  id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL, currency char(3) NOT NULL,
  total numeric(12,2) NOT NULL, placed_at timestamptz NOT NULL, shipped_at timestamptz,
  items jsonb NOT NULL, note text);
CREATE TABLE events (
  id bigint NOT NULL, at timestamptz NOT NULL, kind text NOT NULL, actor_id bigint, ip inet,
  path text NOT NULL, payload jsonb NOT NULL);
`;

// The corpus: one bytea of ~53 MB of pseudo-words, read once per statement (the OFFSET 0 subquery
// is materialised), and sliced at random offsets by every row (bytea substring is O(1)).
const CORPUS_SQL = `
CREATE SCHEMA bench_gen;
SELECT setseed(0.42);
CREATE TABLE bench_gen.words AS
  WITH s AS (SELECT ARRAY['ka','lo','mi','ne','su','ta','ri','po','de','an','el','or','us','ist','ver','gen','tur',
    'mon','sal','bre','ch','qu','ex','pl','str','ion','ent','ab','ca','do','fa','ge','hi','ja','ku','le','ma','no',
    'pa','ra','se','ti','vu','wa','ze','ing','ed','er','ly','th'] AS s)
  SELECT i, string_agg(s.s[1 + floor(random() * 50)::int], '' ORDER BY j) AS w
  FROM generate_series(1, 8000) i CROSS JOIN LATERAL generate_series(1, 1 + (i % 3) + (i % 7 = 0)::int) j CROSS JOIN s
  GROUP BY i;
CREATE TABLE bench_gen.corpus AS
  SELECT convert_to(string_agg(w.w || CASE WHEN r.p < 0.07 THEN '.' WHEN r.p < 0.10 THEN ',' ELSE '' END, ' ' ORDER BY r.g), 'UTF8') AS body
  FROM (SELECT 1 + floor(8000 * power(random(), 2.5))::int AS k, random() AS p, g FROM generate_series(1, 9000000) g) r
  JOIN bench_gen.words w ON w.i = r.k;
`;

const X = `(SELECT body || ''::bytea AS b, length(body) AS n FROM bench_gen.corpus OFFSET 0) x`;
/** Random text of `len` bytes (an SQL expression) from the corpus. */
const txt = (len) => `convert_from(substring(x.b from 1 + floor(random() * (x.n - 4000))::int for ${len}), 'UTF8')`;
const pick = (arr) => `(ARRAY[${arr.map((s) => `'${s}'`).join(',')}])[1 + floor(random() * ${arr.length})::int]`;

function insertSql(table, lo, hi, counts) {
  const g = `generate_series(${lo}, ${hi}) g`;
  switch (table) {
    case 'customers':
      return `INSERT INTO customers SELECT g,
        initcap(${txt('8 + floor(random() * 14)::int')}),
        'user' || g || '.' || substr(md5(g::text), 1, 6) || '@' || ${pick(['example.com', 'mail.example', 'post.test', 'corp.example', 'web.example'])},
        ${pick(['NL', 'DE', 'BE', 'FR', 'GB', 'US', 'SE', 'ES', 'IT', 'PL'])},
        timestamptz '2012-01-01' + random() * interval '4000 days',
        CASE WHEN random() < 0.8 THEN timestamptz '2024-01-01' + random() * interval '600 days' END,
        round((random() * 5000 - 500)::numeric, 2),
        random() < 0.9,
        jsonb_build_object('lang', ${pick(['en', 'nl', 'de', 'fr', 'sv'])}, 'newsletter', random() < 0.3,
          'theme', ${pick(['light', 'dark', 'auto'])}, 'score', floor(random() * 1000)::int,
          'address', jsonb_build_object('street', initcap(${txt('10 + floor(random() * 15)::int')}) || ' ' || (1 + floor(random() * 300)::int),
            'city', initcap(${txt('5 + floor(random() * 9)::int')}), 'zip', lpad(floor(random() * 99999)::int::text, 5, '0')),
          'interests', to_jsonb(ARRAY(SELECT 'topic-' || floor(power(random(), 2) * 80)::int FROM generate_series(1, 1 + g % 4) WHERE g IS NOT NULL)))
        FROM ${X}, ${g}`;
    case 'articles':
      return `INSERT INTO articles SELECT g,
        1 + floor(random() * ${counts.customers})::int,
        initcap(${txt('20 + floor(random() * 60)::int')}),
        ${txt('200 + floor(random() * 1800)::int')},
        ARRAY(SELECT 'tag' || floor(power(random(), 2) * 300)::int FROM generate_series(1, 1 + g % 5) WHERE g IS NOT NULL),
        ${pick(['draft', 'published', 'published', 'published', 'archived'])},
        timestamptz '2015-01-01' + random() * interval '3650 days',
        floor(power(random(), 3) * 100000)::int,
        CASE WHEN random() < 0.7 THEN round((1 + random() * 4)::numeric, 2) END,
        jsonb_build_object('lang', ${pick(['en', 'nl', 'de', 'fr'])}, 'words', 30 + floor(random() * 300)::int,
          'featured', random() < 0.1, 'source', 'import-' || floor(random() * 20)::int, 'rev', 1 + floor(random() * 9)::int)
        FROM ${X}, ${g}`;
    case 'orders':
      return `INSERT INTO orders SELECT g,
        1 + floor(random() * ${counts.customers})::int,
        ${pick(['new', 'paid', 'shipped', 'shipped', 'shipped', 'delivered', 'delivered', 'cancelled', 'refunded'])},
        ${pick(['EUR', 'EUR', 'EUR', 'USD', 'GBP', 'SEK'])},
        round((5 + power(random(), 2) * 900)::numeric, 2),
        timestamptz '2019-01-01' + random() * interval '2000 days',
        CASE WHEN random() < 0.7 THEN timestamptz '2019-01-03' + random() * interval '2000 days' END,
        (SELECT jsonb_agg(jsonb_build_object('line', i, 'sku', 'SKU-' || lpad(floor(random() * 50000)::int::text, 6, '0'),
            'qty', 1 + floor(random() * 4)::int, 'price', round((1 + random() * 200)::numeric, 2),
            'name', initcap(${txt('8 + floor(random() * 24)::int')})))
          FROM generate_series(1, 1 + g % 5) i WHERE g IS NOT NULL),
        CASE WHEN random() < 0.15 THEN ${txt('20 + floor(random() * 200)::int')} END
        FROM ${X}, ${g}`;
    case 'events':
      return `INSERT INTO events SELECT g,
        timestamptz '2024-01-01' + (g::float8 / ${counts.events}) * interval '600 days' + random() * interval '1 hour',
        ${pick(['login', 'logout', 'view', 'view', 'view', 'view', 'search', 'purchase', 'edit', 'upload'])},
        CASE WHEN random() < 0.85 THEN 1 + floor(random() * ${counts.customers})::int END,
        ('10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int)::inet,
        '/' || ${pick(['page', 'article', 'shop', 'media', 'account', 'search'])} || '/' || floor(random() * 100000)::int,
        jsonb_build_object('status', ${pick(['200', '200', '200', '200', '304', '404', '500'])}::int, 'ms', floor(power(random(), 3) * 2000)::int,
          'ua', ${pick(['Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0', 'Mozilla/5.0 (Macintosh) Safari/605.1.15', 'Mozilla/5.0 (Windows NT 10.0) Chrome/130.0', 'curl/8.5.0', 'Googlebot/2.1'])},
          'q', CASE WHEN random() < 0.2 THEN ${txt('4 + floor(random() * 20)::int')} END)
        FROM ${X}, ${g}`;
    default:
      throw new Error(table);
  }
}

const POST_SQL = [
  // two workers run these lists in parallel
  [
    'ALTER TABLE articles ADD PRIMARY KEY (id)',
    'CREATE INDEX articles_author_idx ON articles (author_id)',
    'CREATE INDEX articles_published_idx ON articles (published_at)',
    'CREATE INDEX articles_tags_gin ON articles USING gin (tags)',
    'ALTER TABLE customers ADD PRIMARY KEY (id)',
    'CREATE UNIQUE INDEX customers_email_key ON customers (email)',
  ],
  [
    'ALTER TABLE orders ADD PRIMARY KEY (id)',
    'CREATE INDEX orders_customer_idx ON orders (customer_id)',
    'CREATE INDEX orders_placed_idx ON orders (placed_at)',
    'ALTER TABLE events ADD PRIMARY KEY (id)',
    'CREATE INDEX events_at_idx ON events (at)',
    'CREATE INDEX events_actor_idx ON events (actor_id)',
  ],
];

const FINAL_SQL = `
ALTER TABLE articles ADD CONSTRAINT articles_author_fk FOREIGN KEY (author_id) REFERENCES customers (id);
ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);
CREATE SEQUENCE order_no START 1000;
SELECT setval('order_no', 424242);
CREATE VIEW recent_orders AS SELECT o.id, c.name, o.total, o.placed_at FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.placed_at > timestamptz '2024-06-01';
SELECT lo_from_bytea(0, substring(body from 1 for 1000000)) FROM bench_gen.corpus;
DROP SCHEMA bench_gen CASCADE;
CREATE TABLE bench_meta (version int NOT NULL, gb numeric NOT NULL, generated_at timestamptz NOT NULL DEFAULT now(), generate_seconds numeric);
`;

function rowCounts(gb) {
  const c = {};
  for (const [t, n] of Object.entries(ROWS_PER_GB)) c[t] = Math.max(1000, Math.round(n * gb));
  return c;
}

async function connect(db) {
  const c = new pg.Client({ connectionString: pgUrl(db) });
  await c.connect();
  await c.query("SET work_mem = '256MB'; SET synchronous_commit = off; SET jit = off; SET maintenance_work_mem = '256MB'");
  return c;
}

/** The existing dataset's marker, or null when the database is missing or was made differently. */
function marker(db) {
  if (!databaseExists(db)) return null;
  try {
    const row = psql(db, 'SELECT version, gb FROM bench_meta LIMIT 1');
    if (!row) return null;
    const [version, gb] = row.split('|');
    return { version: Number(version), gb: Number(gb) };
  } catch {
    return null;
  }
}

/**
 * Makes sure database `db` holds the dataset for `gb`; generates it when missing or different.
 * Returns its description (sizes, rows).
 */
export async function ensureDatabase(db, gb) {
  const m = marker(db);
  if (m && m.version === DATASET_VERSION && Math.abs(m.gb - gb) < 1e-9) {
    log(`database ${db} already holds dataset v${DATASET_VERSION} for BENCH_DB_GB=${gb}: not regenerating`);
  } else {
    await generateDatabase(db, gb);
  }
  return describeDatabase(db);
}

export function describeDatabase(db) {
  const size = Number(psql(db, 'SELECT pg_database_size(current_database())'));
  const rows = {};
  for (const t of Object.keys(ROWS_PER_GB)) rows[t] = Number(psql(db, `SELECT count(*) FROM ${t}`));
  const heap = Number(psql(db, `SELECT sum(pg_table_size(c.oid)) FROM pg_class c WHERE relname IN ('customers','articles','orders','events')`));
  return { name: db, size, heap, rows };
}

async function generateDatabase(db, gb) {
  const t0 = performance.now();
  const counts = rowCounts(gb);
  log(`generating database ${db} (BENCH_DB_GB=${gb}: ${Object.entries(counts).map(([t, n]) => `${n} ${t}`).join(', ')}); takes a few minutes per GB`);
  dropDatabase(db);
  psql('postgres', `CREATE DATABASE "${db}"`);
  const a = await connect(db);
  const b = await connect(db);
  try {
    await a.query(SCHEMA);
    await a.query(CORPUS_SQL);
    log(`  vocabulary and corpus ready (${((performance.now() - t0) / 1000).toFixed(1)} s)`);

    // Batches of every table, shared by two workers (2 cores).
    const queue = [];
    for (const [table, n] of Object.entries(counts)) {
      for (let lo = 1; lo <= n; lo += BATCH) queue.push({ table, lo, hi: Math.min(n, lo + BATCH - 1) });
    }
    const total = queue.length;
    let done = 0;
    const worker = async (c) => {
      for (let job = queue.shift(); job; job = queue.shift()) {
        await c.query(insertSql(job.table, job.lo, job.hi, counts));
        done++;
        if (done % 5 === 0 || done === total) log(`  rows: ${done}/${total} batches (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
      }
    };
    await Promise.all([worker(a), worker(b)]);

    await Promise.all(POST_SQL.map(async (list, i) => {
      const c = i === 0 ? a : b;
      for (const sql of list) await c.query(sql);
    }));
    log(`  indexes built (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
    await a.query(FINAL_SQL);
    // Freeze and analyse, so that no later read (pg_dump's first run) pays for hint bits.
    await Promise.all([a.query('VACUUM (FREEZE, ANALYZE) articles, customers'), b.query('VACUUM (FREEZE, ANALYZE) orders, events')]);
    await a.query('CHECKPOINT');
    const secs = (performance.now() - t0) / 1000;
    await a.query('INSERT INTO bench_meta (version, gb, generate_seconds) VALUES ($1, $2, $3)', [DATASET_VERSION, gb, secs.toFixed(1)]);
    log(`  database ${db} generated in ${secs.toFixed(0)} s`);
  } catch (err) {
    await a.end().catch(() => undefined);
    await b.end().catch(() => undefined);
    dropDatabase(db); // never leave a half-made dataset that a re-run would take for complete
    throw err;
  }
  await a.end();
  await b.end();
}

// ---------------------------------------------------------------------------------------------
// Files tree

/** Small seeded PRNG (mulberry32): the tree's shape is the same on every run and machine. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function planTree(totalBytes) {
  const rnd = prng(20261122);
  const logUniform = (lo, hi) => Math.round(Math.exp(Math.log(lo) + rnd() * (Math.log(hi) - Math.log(lo))));
  const kinds = [
    { n: 1500, lo: 4 << 10, hi: 64 << 10, ext: 'thumb.jpg' },
    { n: 600, lo: 64 << 10, hi: 2 << 20, ext: 'jpg' },
    { n: 400, lo: 1 << 10, hi: 256 << 10, ext: 'pdf' },
    { n: 300, lo: 10, hi: 4 << 10, ext: 'txt' },
    { n: 5, lo: 16 << 20, hi: 32 << 20, ext: 'mp4' },
  ];
  const files = [];
  let i = 0;
  for (const k of kinds) {
    for (let j = 0; j < k.n; j++, i++) {
      const year = 2018 + Math.floor(rnd() * 8);
      const month = String(1 + Math.floor(rnd() * 12)).padStart(2, '0');
      const dir = k.ext === 'txt' ? `notes/${String.fromCharCode(97 + Math.floor(rnd() * 8))}` : `media/${year}/${month}`;
      const name = i % 97 === 0 ? `café-Ünïcode ${i}.${k.ext}` : `${(i * 2654435761 >>> 0).toString(36)}-${i}.${k.ext}`;
      files.push({ path: `${dir}/${name}`, size: logUniform(k.lo, k.hi) });
    }
  }
  const sum = files.reduce((n, f) => n + f.size, 0);
  const scale = totalBytes / sum;
  for (const f of files) f.size = Math.max(1, Math.round(f.size * scale));
  return files;
}

/**
 * Makes sure `dir` holds the files tree of `mb` MB (decimal); generated when missing or different.
 * The marker is `${dir}.json` (beside the tree, so it is not part of what is backed up).
 */
export function ensureFilesTree(dir, mb) {
  const markerFile = `${dir}.json`;
  const want = { version: DATASET_VERSION, mb };
  if (existsSync(markerFile) && existsSync(dir)) {
    try {
      const have = JSON.parse(readFileSync(markerFile, 'utf8'));
      if (have.version === want.version && have.mb === want.mb) {
        log(`files tree ${dir} already generated (${mb} MB): not regenerating`);
        return have;
      }
    } catch {
      /* regenerate */
    }
  }
  const t0 = performance.now();
  log(`generating files tree ${dir} (${mb} MB of random bytes)`);
  rmSync(markerFile, { force: true });
  rmSync(dir, { recursive: true, force: true });
  const files = planTree(mb * MB);
  const buf = Buffer.allocUnsafe(Math.max(...files.map((f) => f.size)));
  const dirs = new Set();
  for (const f of files) {
    const d = join(dir, f.path, '..');
    if (!dirs.has(d)) {
      mkdirSync(d, { recursive: true });
      dirs.add(d);
    }
    const fd = openSync(join(dir, f.path), 'wx');
    for (let off = 0; off < f.size; off += 8 * MIB) {
      const len = Math.min(8 * MIB, f.size - off);
      randomFillSync(buf, 0, len);
      writeSync(fd, buf, 0, len);
    }
    closeSync(fd);
  }
  for (const e of ['media/empty', 'uploads/tmp/empty']) mkdirSync(join(dir, e), { recursive: true });
  symlinkSync(files[1].path, join(dir, 'cover.thumb.jpg'));
  const info = { ...want, files: files.length, bytes: files.reduce((n, f) => n + f.size, 0), seconds: Number(((performance.now() - t0) / 1000).toFixed(1)) };
  writeFileSync(markerFile, JSON.stringify(info, null, 2));
  log(`  ${info.files} files, ${info.bytes} bytes in ${info.seconds} s`);
  return info;
}
