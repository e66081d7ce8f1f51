import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { CronExpressionParser } from 'cron-parser';
import { parseDuration } from './duration.js';
import { TandemError, isTandemError } from './errors.js';
import { parseFilestoreUrl } from './filestore/location.js';
import { expandEnvReferences } from './config-env.js';

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

export const primaryConfigSchema = z.strictObject({
  site: siteName,
  database: databaseSchema.extend({ roles: rolesMode }),
  /** sentinel: the site's BACKUP file (default <config>/BACKUP, as on the standby): a backup refuses while it exists. */
  paths: z.strictObject({ config: nonEmpty, security: nonEmpty, files: nonEmpty, sentinel: nonEmpty.optional() }),
  filestore: filestoreSchema,
  encryption: z.enum(['age', 'none'], { message: 'expected "age" (the default) or "none"' }).default('age'),
  keys: z.strictObject({ recipientFile: nonEmpty.optional(), signingKeyFile: nonEmpty }),
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
  keys: z.strictObject({ identityFile: nonEmpty.optional(), verifyKeyFile: nonEmpty }),
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

/** Parse YAML and validate; throws one TandemError listing every problem with its key path. */
/** A check across keys, run on the raw document so that its problems join the schema's. */
export type CrossCheck = (raw: Record<string, unknown>) => Array<{ path: string; message: string }>;

/**
 * `env`: where `${NAME}` in values is looked up (config-env.ts); an unset one is reported with the
 * other problems, and the schema's complaint about the unexpanded value at that path is left out.
 */
export function parseConfigText<S extends z.ZodType>(text: string, schema: S, source: string, cross?: CrossCheck, env: NodeJS.ProcessEnv = process.env): z.infer<S> {
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    const lines = doc.errors.map((e) => `  - ${e.message.split('\n')[0]}`);
    throw new TandemError('config', 'CONFIG_YAML', `${source}: not valid YAML:\n${lines.join('\n')}`);
  }
  const envProblems = expandEnvReferences(doc, env);
  const raw: unknown = doc.toJS();
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new TandemError('config', 'CONFIG_INVALID', `${source}: expected a mapping of keys (site:, database:, ...) at the top level`);
  }
  const result = schema.safeParse(raw);
  const crossProblems = (cross?.(raw as Record<string, unknown>) ?? []).map((p) => `  - ${p.path}: ${p.message}`);
  if (!result.success || crossProblems.length > 0 || envProblems.length > 0) {
    const problems: string[] = envProblems.map((p) => `  - ${p.path}: ${p.message}`);
    const unexpanded = new Set(envProblems.map((p) => p.path));
    for (const issue of result.success ? [] : result.error.issues) {
      if (unexpanded.has(formatPath(issue.path))) continue;
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys) {
          problems.push(`  - ${formatPath([...issue.path, key])}: unknown key (misspelt, or meant for the other agent?)`);
        }
      } else {
        problems.push(`  - ${formatPath(issue.path)}: ${issue.message}`);
      }
    }
    problems.push(...crossProblems);
    throw new TandemError(
      'config',
      'CONFIG_INVALID',
      `${source}: ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n${problems.join('\n')}`,
      { hint: 'see the commented sample configs in etc/' },
    );
  }
  return result.data;
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
const absOpt = (base: string, p: string | undefined): string | undefined => (p === undefined ? undefined : abs(base, p));
const absServerTls = (base: string, t: z.infer<typeof serverTlsSchema> | undefined) =>
  t === undefined ? undefined : { certFile: abs(base, t.certFile), keyFile: abs(base, t.keyFile), clientCaFile: absOpt(base, t.clientCaFile) };
const absClientTls = (base: string, t: z.infer<typeof clientTlsSchema> | undefined) =>
  t === undefined ? undefined : { caFile: absOpt(base, t.caFile), certFile: absOpt(base, t.certFile), keyFile: absOpt(base, t.keyFile) };

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

export function loadPrimaryConfig(file: string): PrimaryConfig {
  const configFile = resolve(file);
  const c = parseConfigText(readConfigFile(configFile), primaryConfigSchema, configFile, (raw) =>
    requireKeyWhileEncrypted(raw, 'recipientFile', 'run `tandem-primary init --keys-dir DIR`, or say `encryption: none` to upload unencrypted sets'),
  );
  const base = dirname(configFile);
  return {
    ...c,
    configFile,
    database: { ...c.database, passwordFile: absOpt(base, c.database.passwordFile), binDir: absOpt(base, c.database.binDir) },
    paths: {
      config: abs(base, c.paths.config),
      security: abs(base, c.paths.security),
      files: abs(base, c.paths.files),
      sentinel: sentinelPath(base, abs(base, c.paths.config), c.paths.sentinel),
    },
    keys: { recipientFile: absOpt(base, c.keys.recipientFile), signingKeyFile: abs(base, c.keys.signingKeyFile) },
    server: { ...c.server, tokenFile: absOpt(base, c.server.tokenFile), readTokenFile: absOpt(base, c.server.readTokenFile), tls: absServerTls(base, c.server.tls) },
    standbys: c.standbys.map((sb) => ({ id: sb.id, tokenFile: abs(base, sb.tokenFile) })),
    stateDir: c.stateDir ? abs(base, c.stateDir) : defaultStateDir(c.site),
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

export function loadStandbyConfig(file: string): StandbyConfig {
  const configFile = resolve(file);
  const c = parseConfigText(readConfigFile(configFile), standbyConfigSchema, configFile, (raw) => [
    ...requireKeyWhileEncrypted(raw, 'identityFile', 'copy backup.agekey made by `tandem-primary init` to this server (mode 0600)'),
    ...standbyServerTokenFile(raw),
  ]);
  const base = dirname(configFile);
  const config = abs(base, c.paths.config);
  return {
    ...c,
    configFile,
    database: { ...c.database, passwordFile: absOpt(base, c.database.passwordFile), binDir: absOpt(base, c.database.binDir) },
    paths: {
      config,
      security: abs(base, c.paths.security),
      files: abs(base, c.paths.files),
      sentinel: sentinelPath(base, config, c.paths.sentinel),
    },
    keys: { identityFile: absOpt(base, c.keys.identityFile), verifyKeyFile: abs(base, c.keys.verifyKeyFile) },
    primary: c.primary ? { ...c.primary, tokenFile: absOpt(base, c.primary.tokenFile), tls: absClientTls(base, c.primary.tls) } : undefined,
    server: { listen: c.server.listen, readTokenFile: absOpt(base, c.server.readTokenFile), tls: absServerTls(base, c.server.tls) },
    stateDir: c.stateDir ? abs(base, c.stateDir) : defaultStateDir(c.site),
  };
}
