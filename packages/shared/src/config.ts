import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { CronExpressionParser } from 'cron-parser';
import { parseDuration } from './duration.js';
import { TandemError, isTandemError } from './errors.js';
import { parseFilestoreUrl } from './filestore/location.js';
import { expandEnvReferences } from './config-env.js';
import { databaseName } from './postgres.js';

/**
 * Configuration: YAML that operators write, validated up front and normalised into typed config.
 * Every problem is reported at once, each with its key path and what was expected. Unknown keys
 * are errors: a misspelt key silently ignored is how a backup quietly stops covering something.
 * Relative paths are resolved against the config file's directory.
 */

const siteName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'expected a site name: lowercase letters, digits, "-" or "_" (max 63)');

const nonEmpty = z.string().min(1, 'expected a non-empty string');

const postgresUrl = z.string().refine(
  (s) => {
    try {
      const u = new URL(s);
      return u.protocol === 'postgres:' || u.protocol === 'postgresql:';
    } catch {
      return false;
    }
  },
  { message: 'expected a postgres:// URL such as postgres://postgres@127.0.0.1:5432/demo' },
).refine(
  (s) => {
    try {
      return new URL(s).password === '';
    } catch {
      return true;
    }
  },
  {
    message:
      'the URL contains a password; secrets never live in the YAML: put it in database.passwordFile, PGPASSWORD or ~/.pgpass',
  },
);

/** A PostgreSQL schema name tandem can carry: also a valid unquoted identifier, with room for "__tandem_old". */
const schemaName = z
  .string()
  .regex(/^[a-z_][a-z0-9_]{0,49}$/, 'expected a schema name: lowercase letters, digits and "_", not starting with a digit (max 50)')
  .refine((s) => !s.startsWith('pg_') && s !== 'public' && s !== 'information_schema', {
    message: 'expected the site\'s own schema: not public, information_schema or a pg_ schema (leave database.schema out to carry the whole database)',
  });

const databaseSchema = z.strictObject({
  url: postgresUrl,
  passwordFile: nonEmpty.optional(),
  /** Directory holding pg_dump/pg_restore/psql; default: found on PATH. */
  binDir: nonEmpty.optional(),
  /**
   * The site is this schema of a shared database (Zotonic's dbschema): backup dumps it and what it
   * owns, apply replaces it alone. Default: the site is the whole database.
   */
  schema: schemaName.optional(),
});

/**
 * The filestore URL is parsed here, into the location openFilestore takes, so that everything wrong
 * with it (an unknown option, a bad bucket name, a file:// URL that is not absolute) is reported
 * with the rest of the config under filestore.url. `url` stays as written, for messages.
 */
const filestoreSchema = z.strictObject({ url: z.string() }).transform((f, ctx) => {
  try {
    return { url: f.url, location: parseFilestoreUrl(f.url) };
  } catch (err) {
    if (!isTandemError(err, 'config')) throw err;
    ctx.addIssue({ code: 'custom', path: ['url'], message: err.hint === undefined ? err.message : `${err.message}; ${err.hint}` });
    return z.NEVER;
  }
});

/** "30s", "5m", ... as milliseconds; min bounds the value. */
const duration = (min: number) =>
  z
    .string()
    .transform((s, ctx) => {
      const ms = parseDuration(s);
      if (ms === null || ms < min) {
        ctx.addIssue({ code: 'custom', message: `expected a duration of at least ${min / 1000}s such as "30s", "5m" or "1h"` });
        return z.NEVER;
      }
      return ms;
    });

/** host:port to listen on. */
const listenAddress = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected host:port such as 127.0.0.1:7070');

const cronExpression = z.string().refine(
  (s) => {
    try {
      CronExpressionParser.parse(s);
      return s.trim().split(/\s+/).length === 5;
    } catch {
      return false;
    }
  },
  { message: 'expected a 5-field cron expression such as "0 3 * * *" (minute hour day month weekday)' },
);

const timezone = z.string().refine(
  (tz) => {
    try {
      new Intl.DateTimeFormat('en', { timeZone: tz });
      return true;
    } catch {
      return false;
    }
  },
  { message: 'expected an IANA time zone such as Europe/Amsterdam or UTC' },
);

const compressionSchema = z.strictObject({
  level: z.number().int().min(1).max(19).default(3),
  threads: z.number().int().min(1).max(64).default(1),
  /** The files archive: auto (stored uncompressed when a sample of the files does not compress, as media does) or zstd (always compressed). */
  files: z.enum(['auto', 'zstd'], { message: 'expected "auto" (the default) or "zstd"' }).default('auto'),
});

/**
 * Roles are cluster-wide, so a dump of one database does not carry them. require (default): the
 * set names the roles it needs and the standby refuses to apply until they exist. carry: the set
 * also carries their definitions (without SUPERUSER, REPLICATION, BYPASSRLS) and, on a standby
 * configured alike, apply creates or updates them.
 */
const rolesMode = z.enum(['require', 'carry'], { message: 'expected "require" (the default) or "carry"' }).default('require');

/**
 * A daemon's server.tls: with it the server speaks HTTPS/WSS only. clientCaFile: clients must also
 * present a certificate this CA issued (mutual TLS); tokens are still required. See shared/tls.ts.
 */
const serverTlsSchema = z.strictObject({ certFile: nonEmpty, keyFile: nonEmpty, clientCaFile: nonEmpty.optional() });

/** The standby's primary.tls: the CA to trust for the primary's certificate (default: the system's), the client certificate to present. */
const clientTlsSchema = z
  .strictObject({ caFile: nonEmpty.optional(), certFile: nonEmpty.optional(), keyFile: nonEmpty.optional() })
  .superRefine((t, ctx) => {
    if (t.certFile !== undefined && t.keyFile === undefined) ctx.addIssue({ code: 'custom', path: ['keyFile'], message: 'required with certFile: the private key of the client certificate' });
    if (t.keyFile !== undefined && t.certFile === undefined) ctx.addIssue({ code: 'custom', path: ['certFile'], message: 'required with keyFile: the client certificate of that key' });
  });

/** A standby's id (standbyId on the standby, standbys[].id on the primary). */
const standbyIdSchema = z.string().regex(/^[A-Za-z0-9._-]{1,63}$/, 'expected letters, digits, ".", "_" or "-"');

/**
 * How the database travels. dump (default): each set carries a pg_dump of the site's database (any
 * PostgreSQL set-up, one database or schema of a shared cluster). wal: the site's database has a
 * cluster of its own on each server; each set carries a base backup of it, and its write-ahead log
 * goes to the filestore as PostgreSQL writes it (archive_command: `tandem-primary wal-push`), so a
 * standby replays it continuously (docs/design.md, "WAL mode").
 */
const databaseMode = z.enum(['dump', 'wal'], { message: 'expected "dump" (the default) or "wal"' }).default('dump');

/** WAL mode and a site as a schema exclude each other: a base backup is the whole cluster. */
const walNeedsWholeCluster = (d: { mode: string; schema?: string }, ctx: z.RefinementCtx): void => {
  if (d.mode === 'wal' && d.schema !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['schema'], message: 'WAL mode carries the whole cluster, not one schema: leave database.schema out, or use mode: dump' });
  }
};

export const primaryConfigSchema = z.strictObject({
  site: siteName,
  database: databaseSchema
    .extend({
      roles: rolesMode,
      mode: databaseMode,
      /**
       * WAL mode: a commit on the primary is in the filestore within this, idle or busy. The daemon
       * switches to a new WAL file (pg_switch_wal) when written WAL has waited half of it.
       */
      maxDelay: duration(1000).default(60_000),
    })
    .superRefine(walNeedsWholeCluster),
  /** sentinel: the site's BACKUP file (default <config>/BACKUP, as on the standby): a backup refuses while it exists. */
  paths: z.strictObject({ config: nonEmpty, security: nonEmpty, files: nonEmpty, sentinel: nonEmpty.optional() }),
  filestore: filestoreSchema,
  encryption: z.enum(['age', 'none'], { message: 'expected "age" (the default) or "none"' }).default('age'),
  keys: z.strictObject({ recipientFile: nonEmpty.optional(), signingKeyFile: nonEmpty, filesKeyFile: nonEmpty.optional() }),
  compression: compressionSchema.default({ level: 3, threads: 1, files: 'auto' }),
  stateDir: nonEmpty.optional(),
  hostname: nonEmpty.optional(),
  /** When `tandem-primary run` backs up; default nightly 03:00. */
  schedule: cronExpression.default('0 3 * * *'),
  /** Time zone of the schedule; default the machine's. */
  timezone: timezone.optional(),
  retention: z
    .strictObject({ daily: z.number().int().min(1).max(366).default(7), weekly: z.number().int().min(0).max(520).default(4) })
    .default({ daily: 7, weekly: 4 }),
  /**
   * /v1/stream (WebSocket), /status, /metrics, /healthz, POST /v1/backup. tokenFile: the control
   * token (POST /v1/backup, /status, /metrics; `tandem-primary backup` uses it); readTokenFile: the
   * monitoring token (/status and /metrics only: what Prometheus gets).
   */
  server: z
    .strictObject({ listen: listenAddress.default('127.0.0.1:7070'), tokenFile: nonEmpty.optional(), readTokenFile: nonEmpty.optional(), tls: serverTlsSchema.optional() })
    .default({ listen: '127.0.0.1:7070' }),
  /**
   * The standbys allowed on /v1/stream, each with a token of its own (the standby's
   * primary.tokenFile): a connection is that standby and no other, and a switchover is accepted
   * only from a standby listed here. Empty: the push channel refuses everyone (standbys poll).
   */
  standbys: z
    .array(z.strictObject({ id: standbyIdSchema, tokenFile: nonEmpty }))
    .default([])
    .refine((list) => new Set(list.map((s) => s.id)).size === list.length, { message: 'each standby id may be listed once' }),
  heartbeatInterval: duration(1000).default(30_000),
  /**
   * Files as content objects (keys.filesKeyFile): `tandem-primary run` watches paths.files and
   * commits each new or changed file, once it has stayed unchanged for `settle`, as a files delta
   * the standbys apply at once. Where the OS limit on watches is reached, the tree is scanned every
   * `scanInterval` instead (said in the log and /status).
   */
  filesWatch: z
    .strictObject({
      enabled: z.boolean().default(true),
      settle: duration(100).default(2_000),
      scanInterval: duration(1000).default(30_000),
    })
    .default({ enabled: true, settle: 2_000, scanInterval: 30_000 }),
  /** Run when this primary finds it has been fenced (a higher epoch exists), e.g. maintenance mode. */
  onFenced: nonEmpty.optional(),
  /** Run when a switchover that had stopped the site's writes (onFenced) is called off: undo it. */
  onResume: nonEmpty.optional(),
});

export const standbyConfigSchema = z.strictObject({
  site: siteName,
  database: databaseSchema.extend({
    /** Parallel pg_restore jobs; >1 stages the decrypted dump in the state dir (pg_restore -j needs a file). */
    restoreJobs: z.number().int().min(1).max(64).default(2),
    /** Database to connect to for CREATE/ALTER/DROP DATABASE; default "postgres". */
    maintenanceDb: nonEmpty.default('postgres'),
    roles: rolesMode,
    /**
     * Settings (ALTER DATABASE ... SET, ALTER ROLE ... IN DATABASE ... SET) that keep the standby's
     * own value instead of the primary's, e.g. [statement_timeout].
     */
    preserveSettings: z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_.]*$/, 'expected a setting name such as statement_timeout')).default([]),
    /**
     * Whether the first apply may create the site's database when it does not exist yet (it is
     * otherwise refused, naming the database: a misspelt name must not become a new database).
     * Only while nothing has been applied here; `apply --create-database` allows it at any time.
     */
    create: z.boolean().default(false),
    mode: databaseMode,
    /** WAL mode: the data directory of the cluster the agent seeds and replays into (owned by the cluster's OS user). */
    dataDir: nonEmpty.optional(),
    /** WAL mode: how the agent starts and stops that cluster (run with sh -c), e.g. "systemctl start postgresql@15-site". */
    startCommand: nonEmpty.optional(),
    stopCommand: nonEmpty.optional(),
  }).superRefine((d, ctx) => {
    walNeedsWholeCluster(d, ctx);
    if (d.mode !== 'wal') {
      for (const key of ['dataDir', 'startCommand', 'stopCommand'] as const) {
        if (d[key] !== undefined) ctx.addIssue({ code: 'custom', path: [key], message: 'used in WAL mode only (database.mode: wal)' });
      }
      return;
    }
    for (const key of ['dataDir', 'startCommand', 'stopCommand'] as const) {
      if (d[key] === undefined) ctx.addIssue({ code: 'custom', path: [key], message: 'required in WAL mode: the standby manages the cluster it replays into' });
    }
  }),
  paths: z.strictObject({
    config: nonEmpty,
    security: nonEmpty,
    files: nonEmpty,
    sentinel: nonEmpty.optional(),
  }),
  config: z.strictObject({ preserve: z.array(nonEmpty).default([]) }).default({ preserve: [] }),
  filestore: filestoreSchema,
  encryption: z.enum(['age', 'none'], { message: 'expected "age" (the default) or "none"' }).default('age'),
  keys: z.strictObject({ identityFile: nonEmpty.optional(), verifyKeyFile: nonEmpty, filesKeyFile: nonEmpty.optional() }),
  restartCommand: nonEmpty.optional(),
  stateDir: nonEmpty.optional(),
  /** The primary's push channel; without it the standby relies on polling alone. */
  primary: z
    .strictObject({
      url: z.string().regex(/^(wss?|https?):\/\/[^/]+/, 'expected ws://host:port or wss://host:port (https:// is taken as wss://)'),
      tokenFile: nonEmpty.optional(),
      /** TLS toward the primary (its server.tls): needs a wss:// (or https://) url. */
      tls: clientTlsSchema.optional(),
    })
    .superRefine((p, ctx) => {
      if (p.tls !== undefined && /^(ws|http):/.test(p.url)) {
        ctx.addIssue({ code: 'custom', path: ['tls'], message: `TLS settings with a plain ${p.url.split(':')[0]}:// primary.url would never be used: make primary.url wss:// (the primary's server.tls), or remove primary.tls` });
      }
    })
    .optional(),
  pollInterval: duration(1000).default(60_000),
  /**
   * /status, /metrics, /healthz. readTokenFile: the monitoring token for /status and /metrics.
   * tokenFile is refused (standbyServerTokenFile): it used to be the shared token.
   */
  server: z
    .strictObject({ listen: listenAddress.default('127.0.0.1:7071'), readTokenFile: nonEmpty.optional(), tokenFile: nonEmpty.optional(), tls: serverTlsSchema.optional() })
    .default({ listen: '127.0.0.1:7071' }),
  /** A primary heartbeat younger than this means the primary may be alive: promote refuses. */
  heartbeatStaleAfter: duration(1000).default(120_000),
  /** Name this standby reports to the primary and in the filestore; default the host name. */
  standbyId: standbyIdSchema.optional(),
  /**
   * Bounds on what one archive (config, security, files) may unpack: entries of any type, and bytes
   * of file data (also bounded by the free space of the target's file system). A signed set is
   * still refused past these, naming the entry, before it exhausts inodes or disk.
   */
  limits: z
    .strictObject({
      maxEntries: z.number().int().min(1).default(1_000_000),
      maxBytes: z.number().int().min(1).optional(),
    })
    .default({ maxEntries: 1_000_000 }),
});

export type PrimaryConfig = z.infer<typeof primaryConfigSchema> & { configFile: string; stateDir: string; paths: { sentinel: string } };
export type StandbyConfig = z.infer<typeof standbyConfigSchema> & {
  configFile: string;
  stateDir: string;
  paths: { sentinel: string };
};

function formatPath(path: ReadonlyArray<PropertyKey>): string {
  return path.length === 0 ? '(top level)' : path.map(String).join('.');
}

/** A check across keys, run on the raw document so that its problems join the schema's. */
export type CrossCheck = (raw: Record<string, unknown>) => Array<{ path: string; message: string }>;

/** One problem of a config, at its key path (as in the document: standbys.0.tokenFile). */
interface Issue {
  path: string[];
  message: string;
}

const splitPath = (path: string): string[] => (path === '(top level)' ? [] : path.split('.'));

const isMapping = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The YAML of a config file as a plain mapping, `${NAME}` references expanded; throws when it is not YAML or not a mapping. */
function readYamlMapping(text: string, source: string, env: NodeJS.ProcessEnv): { raw: Record<string, unknown>; envProblems: Issue[] } {
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    const lines = doc.errors.map((e) => `  - ${e.message.split('\n')[0]}`);
    throw new TandemError('config', 'CONFIG_YAML', `${source}: not valid YAML:\n${lines.join('\n')}`);
  }
  const envProblems = expandEnvReferences(doc, env).map((p) => ({ path: splitPath(p.path), message: p.message }));
  const raw: unknown = doc.toJS();
  if (!isMapping(raw)) {
    throw new TandemError('config', 'CONFIG_INVALID', `${source}: expected a mapping of keys (site:, database:, ...) at the top level`);
  }
  return { raw, envProblems };
}

/** The schema's and the cross check's problems with a raw document (an unknown key is one problem per key), or its data. */
function schemaIssues<S extends z.ZodType>(raw: Record<string, unknown>, schema: S, cross?: CrossCheck): { data?: z.infer<S>; issues: Issue[] } {
  const result = schema.safeParse(raw);
  const issues: Issue[] = [];
  for (const issue of result.success ? [] : result.error.issues) {
    const path = issue.path.map(String);
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) issues.push({ path: [...path, key], message: 'unknown key (misspelt, or meant for the other agent?)' });
    } else {
      issues.push({ path, message: issue.message });
    }
  }
  for (const p of cross?.(raw) ?? []) issues.push({ path: splitPath(p.path), message: p.message });
  return { data: result.success && issues.length === 0 ? result.data : undefined, issues };
}

/** The environment's problems, then the schema's (leaving out its complaint about a value whose reference could not be expanded). */
function withEnvProblems(envProblems: Issue[], issues: Issue[]): Issue[] {
  const unexpanded = new Set(envProblems.map((p) => formatPath(p.path)));
  return [...envProblems, ...issues.filter((i) => !unexpanded.has(formatPath(i.path)))];
}

/** The one error listing every problem of a config file (`lines`: "where: what", one per problem). */
function configProblems(source: string, lines: string[]): TandemError {
  return new TandemError(
    'config',
    'CONFIG_INVALID',
    `${source}: ${lines.length} problem${lines.length === 1 ? '' : 's'}:\n${lines.map((l) => `  - ${l}`).join('\n')}`,
    { hint: 'see the commented sample configs in etc/' },
  );
}

/**
 * Parse YAML and validate; throws one TandemError listing every problem with its key path.
 * `env`: where `${NAME}` in values is looked up (config-env.ts); an unset one is reported with the
 * other problems, and the schema's complaint about the unexpanded value at that path is left out.
 */
export function parseConfigText<S extends z.ZodType>(text: string, schema: S, source: string, cross?: CrossCheck, env: NodeJS.ProcessEnv = process.env): z.infer<S> {
  const { raw, envProblems } = readYamlMapping(text, source, env);
  const { data, issues } = schemaIssues(raw, schema, cross);
  const problems = withEnvProblems(envProblems, issues);
  if (problems.length > 0 || data === undefined) throw configProblems(source, problems.map((p) => `${formatPath(p.path)}: ${p.message}`));
  return data;
}

function readConfigFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(err);
    throw new TandemError('config', 'CONFIG_UNREADABLE', `config file ${file}: ${why}`, {
      hint: 'pass the path of the agent config with --config FILE',
    });
  }
}

/** Encryption is on unless the config says `encryption: none` in so many words. */
function requireKeyWhileEncrypted(raw: Record<string, unknown>, key: string, what: string): Array<{ path: string; message: string }> {
  const encryption = raw.encryption ?? 'age';
  const keys = raw.keys;
  const has = keys !== null && typeof keys === 'object' && (keys as Record<string, unknown>)[key] !== undefined;
  if (encryption !== 'age' || has) return [];
  return [{ path: `keys.${key}`, message: `required while encryption is "age" (the default): ${what}` }];
}

const abs = (base: string, p: string): string => (isAbsolute(p) ? p : resolve(base, p));
const absServerTls = (base: string, t: z.infer<typeof serverTlsSchema> | undefined) =>
  t === undefined ? undefined : { certFile: abs(base, t.certFile), keyFile: abs(base, t.keyFile), clientCaFile: t.clientCaFile === undefined ? undefined : abs(base, t.clientCaFile) };
const absClientTls = (base: string, t: z.infer<typeof clientTlsSchema> | undefined) =>
  t === undefined
    ? undefined
    : { caFile: t.caFile === undefined ? undefined : abs(base, t.caFile), certFile: t.certFile === undefined ? undefined : abs(base, t.certFile), keyFile: t.keyFile === undefined ? undefined : abs(base, t.keyFile) };

/**
 * The site's BACKUP sentinel (paths.sentinel), the same for both agents: as configured (relative to
 * the config file), else `BACKUP` in the site's config dir.
 */
export const sentinelPath = (base: string, configDir: string, configured: string | undefined): string =>
  configured ? abs(base, configured) : resolve(configDir, 'BACKUP');

export function defaultStateDir(site: string): string {
  if (process.env.TANDEM_STATE_DIR) return resolve(process.env.TANDEM_STATE_DIR, site);
  if (process.getuid?.() === 0) return `/var/lib/tandem/${site}`;
  const base = process.env.XDG_STATE_HOME ?? resolve(process.env.HOME ?? '.', '.local/state');
  return resolve(base, 'tandem', site);
}

/**
 * The directory a relative path at a key path (`keys.signingKeyFile`) resolves against: that of the
 * file that said it (a site's own file in sitesDir, else the config file).
 */
type BaseOf = (path: string) => string;

/**
 * paths.files may be an s3:// URL (the site keeps its media in a bucket; the same options and
 * credentials as filestore.url): files as content objects only (keys.filesKeyFile).
 */
export const isS3Url = (p: string): boolean => p.startsWith('s3://');

function normalisePrimary(c: z.infer<typeof primaryConfigSchema>, configFile: string, baseOf: BaseOf): PrimaryConfig {
  const at = (path: string, p: string): string => abs(baseOf(path), p);
  const atOpt = (path: string, p: string | undefined): string | undefined => (p === undefined ? undefined : at(path, p));
  const config = at('paths.config', c.paths.config);
  return {
    ...c,
    configFile,
    database: { ...c.database, passwordFile: atOpt('database.passwordFile', c.database.passwordFile), binDir: atOpt('database.binDir', c.database.binDir) },
    paths: {
      config,
      security: at('paths.security', c.paths.security),
      files: isS3Url(c.paths.files) ? c.paths.files : at('paths.files', c.paths.files),
      sentinel: sentinelPath(baseOf('paths.sentinel'), config, c.paths.sentinel),
    },
    keys: { recipientFile: atOpt('keys.recipientFile', c.keys.recipientFile), signingKeyFile: at('keys.signingKeyFile', c.keys.signingKeyFile), filesKeyFile: atOpt('keys.filesKeyFile', c.keys.filesKeyFile) },
    server: {
      ...c.server,
      tokenFile: atOpt('server.tokenFile', c.server.tokenFile),
      readTokenFile: atOpt('server.readTokenFile', c.server.readTokenFile),
      tls: absServerTls(baseOf('server.tls'), c.server.tls),
    },
    standbys: c.standbys.map((sb) => ({ id: sb.id, tokenFile: at('standbys', sb.tokenFile) })),
    stateDir: c.stateDir ? at('stateDir', c.stateDir) : defaultStateDir(c.site),
  };
}

/** The standby's server.tokenFile was the shared token; its /status and /metrics now take the monitoring token. */
function standbyServerTokenFile(raw: Record<string, unknown>): Array<{ path: string; message: string }> {
  const server = raw.server;
  if (server === null || typeof server !== 'object' || (server as Record<string, unknown>).tokenFile === undefined) return [];
  return [
    {
      path: 'server.tokenFile',
      message:
        'no longer used on the standby: /status and /metrics take the monitoring token, server.readTokenFile; the token this standby presents to the primary is primary.tokenFile (see docs/operations.md, "Tokens")',
    },
  ];
}

function normaliseStandby(c: z.infer<typeof standbyConfigSchema>, configFile: string, baseOf: BaseOf): StandbyConfig {
  const at = (path: string, p: string): string => abs(baseOf(path), p);
  const atOpt = (path: string, p: string | undefined): string | undefined => (p === undefined ? undefined : at(path, p));
  const config = at('paths.config', c.paths.config);
  return {
    ...c,
    configFile,
    database: {
      ...c.database,
      passwordFile: atOpt('database.passwordFile', c.database.passwordFile),
      binDir: atOpt('database.binDir', c.database.binDir),
      dataDir: atOpt('database.dataDir', c.database.dataDir),
    },
    paths: {
      config,
      security: at('paths.security', c.paths.security),
      files: isS3Url(c.paths.files) ? c.paths.files : at('paths.files', c.paths.files),
      sentinel: sentinelPath(baseOf('paths.sentinel'), config, c.paths.sentinel),
    },
    keys: { identityFile: atOpt('keys.identityFile', c.keys.identityFile), verifyKeyFile: at('keys.verifyKeyFile', c.keys.verifyKeyFile), filesKeyFile: atOpt('keys.filesKeyFile', c.keys.filesKeyFile) },
    primary: c.primary ? { ...c.primary, tokenFile: atOpt('primary.tokenFile', c.primary.tokenFile), tls: absClientTls(baseOf('primary.tls'), c.primary.tls) } : undefined,
    server: { listen: c.server.listen, readTokenFile: atOpt('server.readTokenFile', c.server.readTokenFile), tls: absServerTls(baseOf('server.tls'), c.server.tls) },
    stateDir: c.stateDir ? at('stateDir', c.stateDir) : defaultStateDir(c.site),
  };
}

/*
 * Several sites in one config (a Zotonic server serves many sites, each usually one schema of a
 * shared database). The config says `sites:` (a list of site entries) and/or `sitesDir:` (a
 * directory, relative to the config file, of *.yml / *.yaml files, one site entry each, read in
 * name order) instead of a top-level `site:`. Everything at the top level is shared; a site entry
 * holds `site:` and any per-site key. A site's config is the top level deep-merged with its entry
 * (mappings key by key; lists and scalars replaced), then validated and normalised as a one-site
 * config, relative paths resolving against the file that said them. The keys of the process (its
 * server, its peers, its filestore) are said once, at the top level.
 */

/** What a config file holds: its sites (one for a one-site config), and the limits of the process that serves them. */
export interface SitesConfig<C> {
  configFile: string;
  /** How many backups (primary) or applies (standby) run at once across the sites: top-level `concurrency`, default 2. */
  concurrency: number;
  sites: C[];
}

export type PrimarySites = SitesConfig<PrimaryConfig>;
export type StandbySites = SitesConfig<StandbyConfig>;

const DEFAULT_CONCURRENCY = 2;
const concurrencySchema = z.number().int().min(1).max(16).default(DEFAULT_CONCURRENCY);

/** Keys of the process that serves the sites: said once, at the top level, never in a site entry. */
export const PRIMARY_TOP_LEVEL_KEYS = ['server', 'standbys', 'heartbeatInterval', 'filestore'] as const;
export const STANDBY_TOP_LEVEL_KEYS = ['server', 'primary', 'pollInterval', 'standbyId', 'filestore', 'heartbeatStaleAfter'] as const;

/** Top-level keys that are not a site's: they say where the sites are and how many run at once. */
const SITES_KEYS = ['sites', 'sitesDir', 'concurrency'] as const;

interface Side<S extends z.ZodType, C> {
  schema: S;
  cross: CrossCheck;
  topLevelOnly: readonly string[];
  normalise(c: z.infer<S>, configFile: string, baseOf: BaseOf): C;
}

/** Files in a bucket are carried only as content objects: the files key is required with an s3:// paths.files. */
function s3FilesNeedFilesKey(raw: Record<string, unknown>): Array<{ path: string; message: string }> {
  const files = (raw.paths as Record<string, unknown> | undefined)?.files;
  const keys = raw.keys as Record<string, unknown> | undefined;
  if (typeof files !== 'string' || !isS3Url(files) || keys?.filesKeyFile !== undefined) return [];
  return [{ path: 'paths.files', message: 'an s3:// bucket of files needs keys.filesKeyFile (files as content objects): run `tandem-primary init --keys-dir DIR` for files.agekey' }];
}

const primarySide: Side<typeof primaryConfigSchema, PrimaryConfig> = {
  schema: primaryConfigSchema,
  cross: (raw) => [
    ...requireKeyWhileEncrypted(raw, 'recipientFile', 'run `tandem-primary init --keys-dir DIR`, or say `encryption: none` to upload unencrypted sets'),
    ...s3FilesNeedFilesKey(raw),
  ],
  topLevelOnly: PRIMARY_TOP_LEVEL_KEYS,
  normalise: normalisePrimary,
};

const standbySide: Side<typeof standbyConfigSchema, StandbyConfig> = {
  schema: standbyConfigSchema,
  cross: (raw) => [
    ...requireKeyWhileEncrypted(raw, 'identityFile', 'copy backup.agekey made by `tandem-primary init` to this server (mode 0600)'),
    ...standbyServerTokenFile(raw),
  ],
  topLevelOnly: STANDBY_TOP_LEVEL_KEYS,
  normalise: normaliseStandby,
};

/** A site entry: where it was said, how its problems are named, and what it says. */
interface SiteEntry {
  /** "sites[1]" or, for a file in sitesDir, that file as sitesDir names it ("sites.d/b.yml"). */
  label: string;
  /** The file in sitesDir it came from; undefined for an entry of `sites:`. */
  file?: string;
  raw: Record<string, unknown>;
  /** Problems expanding `${NAME}` in it, at paths within the entry. */
  envProblems: Issue[];
}

/** "sites[1].database.url" or "sites.d/b.yml: database.url". */
function entryWhere(entry: SiteEntry, path: string[]): string {
  if (entry.file === undefined) return path.length === 0 ? entry.label : `${entry.label}.${path.join('.')}`;
  return `${entry.label}: ${formatPath(path)}`;
}

/** The value at a key path of a document, or undefined. */
function valueAt(doc: unknown, path: readonly string[]): unknown {
  let cur: unknown = doc;
  for (const key of path) {
    if (!isMapping(cur)) return undefined;
    cur = cur[key];
  }
  return cur;
}

/**
 * Which side said the value at `path` of a merged site config: the entry when it set that key (or a
 * value above it that is not a mapping), else the top level when it did; a key neither said (a
 * required one missing) is the site's.
 */
function saidBy(path: readonly string[], entry: Record<string, unknown>, top: Record<string, unknown>): 'entry' | 'top' {
  const owns = (doc: Record<string, unknown>): boolean => {
    for (let i = 1; i <= path.length; i++) {
      const v = valueAt(doc, path.slice(0, i));
      if (v === undefined) return false;
      if (i === path.length || !isMapping(v)) return true;
    }
    return false;
  };
  if (owns(entry)) return 'entry';
  return owns(top) ? 'top' : 'entry';
}

/**
 * Mappings merged key by key; anything else (a list, a scalar) in `over` replaces what `base` has.
 * `clashes` gets the key paths where `over` has a mapping and `base` something else.
 */
function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>, clashes: string[][] = [], at: string[] = []): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    if (isMapping(v) && b !== undefined && !isMapping(b)) clashes.push([...at, k]);
    out[k] = isMapping(b) && isMapping(v) ? deepMerge(b, v, clashes, [...at, k]) : v;
  }
  return out;
}

/** The site entries of sitesDir, each file parsed (its problems, such as YAML that does not parse, in `problems`). */
function readSitesDir(value: unknown, configFile: string, env: NodeJS.ProcessEnv, problems: string[]): SiteEntry[] {
  if (typeof value !== 'string' || value === '') {
    problems.push('sitesDir: expected the path of a directory (relative to this file) holding one *.yml file per site');
    return [];
  }
  const dir = abs(dirname(configFile), value);
  let names: string[];
  try {
    names = readdirSync(dir, { withFileTypes: true })
      .filter((d) => /\.ya?ml$/.test(d.name) && !d.name.startsWith('.'))
      .filter((d) => d.isFile() || (d.isSymbolicLink() && statSync(join(dir, d.name), { throwIfNoEntry: false })?.isFile() === true))
      .map((d) => d.name)
      .sort();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such directory' : code === 'ENOTDIR' ? 'not a directory' : code === 'EACCES' ? 'permission denied' : String(err);
    problems.push(`sitesDir: ${dir}: ${why}`);
    return [];
  }
  const entries: SiteEntry[] = [];
  for (const name of names) {
    const file = join(dir, name);
    const label = isAbsolute(value) ? file : join(value, name);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      problems.push(`${label}: ${code === 'EACCES' ? 'permission denied' : String(err)}`);
      continue;
    }
    try {
      const { raw, envProblems } = readYamlMapping(text, label, env);
      entries.push({ label, file, raw, envProblems });
    } catch (err) {
      if (!isTandemError(err, 'config')) throw err;
      // "label: not valid YAML:\n  - line" as one problem of the config.
      problems.push(err.message.replace(/:\n {2}- /g, ': ').replace(/\n {2}- /g, '; '));
    }
  }
  return entries;
}

/** The site entries of `sites:`, each a mapping; `${NAME}` problems at sites.N.* go to entry N. */
function readSitesList(value: unknown, envProblems: Issue[], problems: string[]): SiteEntry[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) {
    problems.push('sites: expected a list of site entries, each a mapping with site: and the keys that differ for that site');
    return [];
  }
  const entries: SiteEntry[] = [];
  value.forEach((raw: unknown, i) => {
    const label = `sites[${i}]`;
    if (!isMapping(raw)) {
      problems.push(`${label}: expected a mapping with site: and the keys that differ for that site`);
      return;
    }
    const own = envProblems.filter((p) => p.path[0] === 'sites' && p.path[1] === String(i)).map((p) => ({ path: p.path.slice(2), message: p.message }));
    entries.push({ label, raw, envProblems: own });
  });
  return entries;
}

/** A URL's database target: host, port and database name, as written (no name resolution). */
function databaseTarget(url: string): { key: string; text: string } {
  const u = new URL(url);
  const host = (u.searchParams.get('host') ?? decodeURIComponent(u.hostname)).toLowerCase() || 'localhost';
  const port = u.port || u.searchParams.get('port') || '5432';
  const name = databaseName(url);
  return { key: `${host}\n${port}\n${name}`, text: `database "${name}" on ${host}:${port}` };
}

/** `inner` is `outer` or a directory under it. */
function within(inner: string, outer: string): boolean {
  const r = relative(outer, inner);
  return r === '' || (!r.startsWith('..') && !isAbsolute(r));
}

type SiteShape = Pick<PrimaryConfig, 'site' | 'stateDir'> & { database: { url: string; schema?: string }; paths: { config: string; security: string; files: string } };

/**
 * Problems between sites: a name, a state directory or a database target used twice; directories
 * that are the same or one inside the other. Each is reported at the later site, naming the earlier.
 */
function crossSiteProblems(sites: Array<{ entry: SiteEntry; config: SiteShape }>): string[] {
  const problems: string[] = [];
  const dirKeys = ['config', 'security', 'files'] as const;
  sites.forEach(({ entry, config: c }, i) => {
    for (const { entry: oe, config: o } of sites.slice(0, i)) {
      const them = `site "${o.site}" (${oe.label})`;
      if (o.site === c.site) {
        problems.push(`${entryWhere(entry, ['site'])}: "${c.site}" is the name of ${oe.label} too: each site needs a name of its own`);
        continue;
      }
      if (resolve(o.stateDir) === resolve(c.stateDir)) {
        problems.push(`${entryWhere(entry, ['stateDir'])}: ${resolve(c.stateDir)} is also the state directory of ${them}: each site needs its own (its lock, applied set and agent id live there)`);
      }
      const t = databaseTarget(c.database.url);
      if (t.key === databaseTarget(o.database.url).key) {
        const mine = c.database.schema;
        const theirs = o.database.schema;
        if (mine !== undefined && mine === theirs) {
          problems.push(`${entryWhere(entry, ['database', 'schema'])}: schema "${mine}" of ${t.text} is also that of ${them}: give each site a schema of its own`);
        } else if (mine === undefined) {
          problems.push(`${entryWhere(entry, ['database'])}: the whole ${t.text} (no database.schema) is also used by ${them}${theirs === undefined ? '' : `, schema "${theirs}"`}: give each site its own database.schema, or its own database`);
        } else if (theirs === undefined) {
          problems.push(`${entryWhere(entry, ['database'])}: ${t.text} is used whole by ${them} (it has no database.schema): give that site its database.schema too, or this one its own database`);
        }
      }
      for (const k of dirKeys) {
        for (const ok of dirKeys) {
          const mine = resolve(c.paths[k]);
          const theirs = resolve(o.paths[ok]);
          const how = mine === theirs ? 'is also' : within(mine, theirs) ? 'is inside' : within(theirs, mine) ? 'contains' : null;
          if (how === null) continue;
          problems.push(`${entryWhere(entry, ['paths', k])}: ${mine} ${how} paths.${ok}${mine === theirs ? '' : ` ${theirs}`} of ${them}: the directories of two sites must be apart (a backup of one would carry the other's files, an apply would replace them)`);
        }
      }
    }
  });
  return problems;
}

function loadSites<S extends z.ZodType, C extends SiteShape>(file: string, side: Side<S, C>): SitesConfig<C> {
  const configFile = resolve(file);
  const env = process.env;
  const { raw, envProblems } = readYamlMapping(readConfigFile(configFile), configFile, env);
  const problems: string[] = [];
  const topEnv = envProblems.filter((p) => p.path[0] !== 'sites');

  const conc = concurrencySchema.safeParse(raw.concurrency);
  const concurrency = conc.success ? conc.data : DEFAULT_CONCURRENCY;
  const concProblems = conc.success || topEnv.some((p) => p.path[0] === 'concurrency') ? [] : conc.error.issues.map((i) => `concurrency: ${i.message} (how many sites back up or apply at once)`);
  const baseDir = dirname(configFile);

  if (raw.sites === undefined && raw.sitesDir === undefined) {
    // One site, said at the top level: as it always was.
    const { concurrency: _, ...single } = raw;
    const { data, issues } = schemaIssues(single, side.schema, side.cross);
    for (const i of issues) {
      if (i.path.length === 1 && i.path[0] === 'site' && single.site === undefined) {
        i.message = "required: the site's name (for several sites in one file, list them under sites: or in the files of sitesDir:)";
      }
    }
    const all = [...withEnvProblems(envProblems, issues).map((p) => `${formatPath(p.path)}: ${p.message}`), ...concProblems];
    if (all.length > 0 || data === undefined) throw configProblems(configFile, all);
    return { configFile, concurrency, sites: [side.normalise(data, configFile, () => baseDir)] };
  }

  // Several sites: the top level is what they share.
  const said = [raw.sites !== undefined ? 'sites:' : null, raw.sitesDir !== undefined ? 'sitesDir:' : null].filter((k) => k !== null).join(' and ');
  if (raw.site !== undefined) {
    problems.push(`site: a top-level site: (one site) and ${said} (several) cannot both be said: move site: and the keys of that site into a site entry`);
  }
  const top: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (k !== 'site' && !(SITES_KEYS as readonly string[]).includes(k)) top[k] = v;
  }
  const entries = [...readSitesList(raw.sites, envProblems, problems), ...(raw.sitesDir === undefined ? [] : readSitesDir(raw.sitesDir, configFile, env, problems))];
  if (entries.length === 0 && problems.length === 0) {
    const where = [raw.sites !== undefined ? 'sites: lists none' : null, raw.sitesDir !== undefined ? `sitesDir: ${abs(baseDir, String(raw.sitesDir))} holds no *.yml or *.yaml file` : null];
    problems.push(`${raw.sites !== undefined ? 'sites' : 'sitesDir'}: no site is configured (${where.filter((w) => w !== null).join('; ')}): give each site an entry (site: NAME and the keys that differ for it)`);
  }
  const topUnexpanded = new Set(topEnv.map((p) => formatPath(p.path)));
  const topProblems = new Set<string>(topEnv.map((p) => `${formatPath(p.path)}: ${p.message}`));
  const siteProblems: string[] = [];
  const loaded: Array<{ entry: SiteEntry; config: C }> = [];

  for (const entry of entries) {
    const own: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(entry.raw)) {
      if (side.topLevelOnly.includes(k)) {
        siteProblems.push(`${entryWhere(entry, [k])}: said once, at the top level: it belongs to the agent, which serves every site of this file (move it out of the site entry)`);
      } else if ((SITES_KEYS as readonly string[]).includes(k)) {
        siteProblems.push(`${entryWhere(entry, [k])}: said once, at the top level of ${configFile}, not in a site entry`);
      } else {
        own[k] = v;
      }
    }
    const clashes: string[][] = [];
    const merged = deepMerge(top, own, clashes);
    for (const c of clashes) topProblems.add(`${formatPath(c)}: expected a mapping of keys, which the ${formatPath(c)}: of a site entry is merged into`);
    const underClash = (path: string[]): boolean => clashes.some((c) => c.every((k, i) => path[i] === k));
    const { data, issues } = schemaIssues(merged, side.schema, side.cross);
    const entryUnexpanded = new Set(entry.envProblems.map((p) => formatPath(p.path)));
    for (const p of entry.envProblems) siteProblems.push(`${entryWhere(entry, p.path)}: ${p.message}`);
    for (const issue of issues) {
      if (issue.path.length === 1 && issue.path[0] === 'site' && own.site === undefined) issue.message = "required: the site's name";
      // A key of the process is the top level's, also when it is missing.
      if (!side.topLevelOnly.includes(issue.path[0] ?? '') && saidBy(issue.path, own, top) === 'entry') {
        if (!entryUnexpanded.has(formatPath(issue.path))) siteProblems.push(`${entryWhere(entry, issue.path)}: ${issue.message}`);
      } else if (!topUnexpanded.has(formatPath(issue.path)) && !underClash(issue.path)) {
        topProblems.add(`${formatPath(issue.path)}: ${issue.message}`);
      }
    }
    if (data === undefined || issues.length > 0 || entry.envProblems.length > 0) continue;
    const entryDir = entry.file === undefined ? baseDir : dirname(entry.file);
    const baseOf: BaseOf = (path) => (valueAt(own, path.split('.')) !== undefined ? entryDir : baseDir);
    loaded.push({ entry, config: side.normalise(data, configFile, baseOf) });
  }

  const all = [...problems, ...concProblems, ...topProblems, ...siteProblems, ...crossSiteProblems(loaded)];
  if (all.length > 0) throw configProblems(configFile, all);
  return { configFile, concurrency, sites: loaded.map((l) => l.config) };
}

/** The primary's sites in a config file: one for a one-site config (top-level site:), else those of sites: and sitesDir:. */
export function loadPrimarySites(file: string): PrimarySites {
  return loadSites(file, primarySide);
}

/** The standby's sites in a config file, as loadPrimarySites. */
export function loadStandbySites(file: string): StandbySites {
  return loadSites(file, standbySide);
}

/**
 * The site a command works on: the one named (--site NAME), or the only one. Several sites and no
 * name, or a name the config does not hold, is a usage error listing the names.
 */
export function selectSite<C extends { site: string; configFile?: string }>(sites: C[], name: string | undefined, command: string): C {
  const names = sites.map((s) => s.site).join(', ');
  const file = sites[0]?.configFile ?? 'the config';
  if (name === undefined) {
    if (sites.length === 1) return sites[0]!;
    throw new TandemError('config', 'USAGE', `${command}: ${file} holds ${sites.length} sites (${names}): pass --site NAME to say which`, {
      hint: `e.g. ${command} --site ${sites[0]?.site ?? 'NAME'} ...; see \`${command} --help\``,
    });
  }
  const found = sites.find((s) => s.site === name);
  if (found !== undefined) return found;
  throw new TandemError('config', 'UNKNOWN_SITE', `${command}: --site ${JSON.stringify(name)}: ${file} holds no such site; its site${sites.length === 1 ? ' is' : 's are'} ${names}`, {
    hint: 'pass one of those names to --site',
  });
}

/** A command's --site NAME, or undefined when it was not given. */
export const siteOption = (values: Record<string, unknown>): string | undefined => (typeof values.site === 'string' ? values.site : undefined);

/** One site of the primary's config: the one `site` names, or the only one (see selectSite). */
export function loadPrimaryConfig(file: string, site?: string, command = 'tandem-primary'): PrimaryConfig {
  return selectSite(loadPrimarySites(file).sites, site, command);
}

/** One site of the standby's config: the one `site` names, or the only one (see selectSite). */
export function loadStandbyConfig(file: string, site?: string, command = 'tandem-standby'): StandbyConfig {
  return selectSite(loadStandbySites(file).sites, site, command);
}
