import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { createServer } from 'node:net';
import { hostname } from 'node:os';
import {
  FENCED_HINT,
  agentName,
  captureWarnings,
  configVerdict,
  filestoreCheck,
  isTandemError,
  judge,
  keyId,
  known,
  layout,
  loadIdentities,
  loadPrimaryConfig,
  loadRecipients,
  loadSigningKeyFile,
  loadToken,
  loadVerifyKeyFile,
  namesAgent,
  pairingFailure,
  pgClientTool,
  pgMajor,
  postgresCheck,
  readAgentId,
  readEpochDoc,
  readServerInfo,
  readVerifiedLatest,
  redactUrl,
  serverTlsCheck,
  splitListen,
  stateDirCheck,
  timeAgo,
  toolVersion,
  verdict,
  withPg,
  withWarnings,
  inDatabaseMode,
  type CheckDef,
  type Filestore,
  type Finding,
  type PrimaryConfig,
  type ServerInfo,
  type Verdict,
} from '@tandem/shared';
import { readDbMeta } from '../backup/db-meta.js';
import { checkPaths } from '../backup/run-backup.js';
import { backupModeRefusal } from '../backup/sentinel.js';
import { findDaemon, probeDaemon } from '../daemon/control.js';
import { serverTokens } from '../daemon/lifecycle.js';
import { checkDumpAccess } from './db-access.js';

/**
 * `tandem-primary check`: everything a backup and the daemon need, looked at without making a
 * backup. Each check fills in what later ones use (the config, the signing key, the server's
 * version, the open filestore). Nothing is changed, except that the filestore check writes one
 * probe object and deletes it.
 */
export interface PrimaryCheckContext {
  configFile: string;
  /** --site: the site of a config with several (undefined: the only one). */
  site?: string;
  /** --identity: the age identity to prove the recipients against. */
  identityFile?: string;
  /** --verify-key: the standbys' signing.pub, to prove against the signing key. */
  verifyKeyFile?: string;
  config?: PrimaryConfig;
  signingKey?: KeyObject;
  recipients?: string[];
  server?: ServerInfo;
  filestore?: Filestore;
}

/** Whether something listens on host:port: null when the address is free (bound, then released at once). */
function addressInUse(listen: string): Promise<string | null> {
  const { host, port } = splitListen(listen);
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'EADDRINUSE' ? 'in use' : (err.code ?? err.message)));
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolve(null)));
  });
}

const walMode = inDatabaseMode('wal');
const dumpMode = inDatabaseMode('dump');

/** The PostgreSQL error of a query the role may not run (a superuser-only view or setting). */
const isPermissionDenied = (err: unknown): boolean => (err as { code?: unknown }).code === '42501';

/** What PostgreSQL answers for `names` (pg_settings): a superuser-only setting the role may not see is absent. */
async function readSettings(config: PrimaryConfig, names: string[]): Promise<Map<string, { setting: string; pendingRestart: boolean }>> {
  return withPg(config.database, async (c) => {
    const r = await c.query<{ name: string; setting: string; pending_restart: boolean }>('SELECT name, setting, pending_restart FROM pg_settings WHERE name = ANY($1)', [names]);
    return new Map(r.rows.map((row) => [row.name, { setting: row.setting, pendingRestart: row.pending_restart }]));
  });
}

/** The archive_command tandem's WAL mode needs, for a hint. */
const walPushCommand = (config: PrimaryConfig): string => `'tandem-primary wal-push --config ${config.configFile} %p %f'`;

/**
 * `wal-settings`: the server writes WAL a base backup and a standby can use, archives it, through
 * tandem, and keeps what pg_rewind needs to rejoin it after a failover.
 */
async function walSettings(config: PrimaryConfig): Promise<Verdict> {
  const s = await readSettings(config, ['wal_level', 'archive_mode', 'archive_command', 'archive_library', 'wal_log_hints', 'data_checksums']);
  const value = (name: string): string | undefined => s.get(name)?.setting;
  // A setting changed in postgresql.conf but not yet in effect: PostgreSQL waits for a restart.
  const restart = (name: string, set: string): string =>
    s.get(name)?.pendingRestart === true ? `postgresql.conf already changes ${name}, which takes effect at the next restart: make sure it says ${set}, and restart PostgreSQL` : `set ${set} in postgresql.conf and restart PostgreSQL`;
  const fine: string[] = [];
  const found: Finding[] = [];

  const level = value('wal_level') ?? 'unknown';
  if (level === 'replica' || level === 'logical') fine.push(`wal_level ${level}`);
  else found.push({ level: 'fail', message: `wal_level is ${level}: base backups and WAL archiving need replica (or logical)`, hint: restart('wal_level', 'wal_level = replica') });

  const mode = value('archive_mode') ?? 'unknown';
  if (mode === 'on' || mode === 'always') fine.push(`archive_mode ${mode}`);
  else {
    found.push({
      level: 'fail',
      message: `archive_mode is ${mode}: PostgreSQL archives no WAL, so the standbys replay nothing written after the newest set`,
      hint: restart('archive_mode', `archive_mode = on and archive_command = ${walPushCommand(config)}`),
    });
  }

  const command = value('archive_command');
  const library = value('archive_library') ?? '';
  const reload = `set archive_command = ${walPushCommand(config)} in postgresql.conf and reload PostgreSQL (SELECT pg_reload_conf())`;
  if (library !== '') {
    found.push({ level: 'warn', message: `archive_library is '${library}': PostgreSQL archives through it, not through tandem (archive_command is not used)`, hint: `set archive_library = '' and archive_command = ${walPushCommand(config)} in postgresql.conf, and reload PostgreSQL (SELECT pg_reload_conf())` });
  } else if (command === undefined) {
    found.push({
      level: 'warn',
      message: 'archive_command is not readable by this role: whether PostgreSQL archives through tandem is not known',
      hint: 'connect as a superuser, or GRANT pg_read_all_settings to the role of database.url',
    });
  } else if (command.includes('wal-push')) {
    fine.push('archive_command runs tandem-primary wal-push');
  } else {
    // archive_mode on with an empty archive_command: PostgreSQL keeps every WAL file, archiving none.
    const kept = command === '' && (mode === 'on' || mode === 'always') ? ' (and keeps every WAL file in pg_wal meanwhile)' : '';
    found.push({ level: 'warn', message: `archive_command is '${command}': PostgreSQL does not archive through tandem${kept}`, hint: reload });
  }

  const hints = value('wal_log_hints');
  const checksums = value('data_checksums');
  if (hints === 'on') fine.push('wal_log_hints on');
  else if (checksums === 'on') fine.push('data checksums on');
  else {
    found.push({
      level: 'warn',
      message: 'wal_log_hints is off and data checksums are off: pg_rewind will not be able to rejoin this server after a failover (tandem-standby rejoin falls back to a full seed)',
      hint: 'set wal_log_hints = on in postgresql.conf and restart PostgreSQL (or turn on data checksums: pg_checksums --enable, with the cluster stopped)',
    });
  }
  return judge(fine, found);
}

interface ArchiverRow {
  archived_count: string;
  last_archived_wal: string | null;
  last_archived_time: Date | null;
  failed_count: string;
  last_failed_wal: string | null;
  last_failed_time: Date | null;
  stats_reset: Date | null;
}

/** `wal-archiver`: pg_stat_archiver: whether archive_command succeeds, and when it last did. */
async function walArchiver(config: PrimaryConfig): Promise<Verdict> {
  const a = await withPg(config.database, async (c) => (await c.query<ArchiverRow>('SELECT * FROM pg_stat_archiver')).rows[0]!);
  const ago = (t: Date): string => timeAgo(t.toISOString());
  const since = a.stats_reset === null ? '' : ` since ${a.stats_reset.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
  const failed = Number(a.failed_count);
  if (a.last_failed_time !== null && (a.last_archived_time === null || a.last_failed_time.getTime() > a.last_archived_time.getTime())) {
    const last = a.last_archived_wal === null ? `no WAL file archived${since}` : `the last one archived was ${a.last_archived_wal} ${ago(a.last_archived_time!)}`;
    return verdict.fail(
      `archiving fails: WAL file ${a.last_failed_wal ?? '?'} failed ${ago(a.last_failed_time)} (${failed} failed attempt${failed === 1 ? '' : 's'}${since}); ${last}`,
      "PostgreSQL's log has the archive_command's error (run it by hand as PostgreSQL's OS user to see it); PostgreSQL retries the file and keeps the WAL in pg_wal until it succeeds, and the standbys replay nothing after it",
    );
  }
  if (a.last_archived_wal === null) {
    return verdict.warn(
      `no WAL file archived yet${since}`,
      "a WAL file is archived once it is full or switched: `tandem-primary run` switches within database.maxDelay (SELECT pg_switch_wal() switches now); if one was and this stays, see PostgreSQL's log",
    );
  }
  const archived = Number(a.archived_count);
  const before = failed === 0 ? '' : `; ${failed} failed attempt${failed === 1 ? '' : 's'} before it, the last ${ago(a.last_failed_time!)}`;
  return verdict.ok(`${archived} WAL file${archived === 1 ? '' : 's'} archived${since}, the last ${a.last_archived_wal} ${ago(a.last_archived_time!)}${before}`);
}

/**
 * `replication`: pg_basebackup (each set's base backup) can connect: the role may replicate, the
 * server has a WAL sender for it, and (where the role may read pg_hba_file_rules) pg_hba.conf has
 * a replication line.
 */
async function replication(config: PrimaryConfig): Promise<Verdict> {
  return withPg(config.database, async (c) => {
    const who = (
      await c.query<{ u: string; su: boolean; repl: boolean; senders: string }>(
        `SELECT session_user AS u, r.rolsuper AS su, r.rolreplication AS repl, current_setting('max_wal_senders') AS senders FROM pg_roles r WHERE r.rolname = session_user`,
      )
    ).rows[0]!;
    const fine: string[] = [];
    const found: Finding[] = [];
    if (who.su || who.repl) fine.push(`role "${who.u}" may replicate (${who.su ? 'superuser' : 'REPLICATION'})`);
    else {
      found.push({
        level: 'fail',
        message: `role "${who.u}" may not replicate (neither REPLICATION nor a superuser): pg_basebackup, which makes each set's base backup, is refused`,
        hint: `ALTER ROLE "${who.u}" REPLICATION, or connect as a superuser (database.url)`,
      });
    }
    const senders = Number(who.senders);
    if (senders > 0) fine.push(`max_wal_senders ${senders}`);
    else found.push({ level: 'fail', message: 'max_wal_senders is 0: pg_basebackup needs a WAL sender', hint: 'set max_wal_senders = 10 (the default) in postgresql.conf and restart PostgreSQL' });

    // pg_hba_file_rules is for superusers (and those granted it): without it, nothing is said.
    let rules: Array<{ line_number: number; user_name: string[] | null }> | undefined;
    try {
      rules = (
        await c.query<{ line_number: number; user_name: string[] | null }>(
          `SELECT line_number, user_name FROM pg_hba_file_rules WHERE error IS NULL AND auth_method <> 'reject' AND 'replication' = ANY(database) ORDER BY line_number`,
        )
      ).rows;
    } catch (err) {
      if (!isPermissionDenied(err)) throw err;
    }
    if (rules !== undefined) {
      let file = 'pg_hba.conf';
      try {
        file = (await c.query<{ f: string }>(`SELECT current_setting('hba_file') AS f`)).rows[0]!.f;
      } catch (err) {
        if (!isPermissionDenied(err)) throw err;
      }
      const add = `add a line such as \`host replication ${who.u} ADDRESS scram-sha-256\` (ADDRESS: where this agent connects from; \`local replication ${who.u} peer\` over the Unix socket) to ${file} and reload PostgreSQL (SELECT pg_reload_conf())`;
      const mine = rules.filter((r) => r.user_name === null || r.user_name.some((u) => u === 'all' || u === who.u || u.startsWith('+') || u.startsWith('@')));
      if (rules.length === 0) {
        found.push({ level: 'fail', message: `${file} has no replication line: PostgreSQL refuses pg_basebackup's connection`, hint: add });
      } else if (mine.length === 0) {
        found.push({ level: 'warn', message: `the replication lines of ${file} (line ${rules.map((r) => r.line_number).join(', ')}) name other roles than "${who.u}": PostgreSQL would refuse pg_basebackup's connection`, hint: add });
      } else {
        fine.push(`${file} line ${mine[0]!.line_number} allows replication connections`);
      }
    }
    return judge(fine, found);
  });
}

export const primaryChecks: Array<CheckDef<PrimaryCheckContext>> = [
  {
    name: 'config',
    run(ctx) {
      const config = loadPrimaryConfig(ctx.configFile, ctx.site, 'tandem-primary check');
      ctx.config = config;
      return configVerdict(config, { detail: 'sets are uploaded unencrypted', hint: 'remove `encryption: none` unless the filestore is as private as the site itself' });
    },
  },
  {
    name: 'paths',
    needs: ['config'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      await checkPaths(config);
      // The site here is a standby in backup mode (its BACKUP sentinel): a backup would refuse.
      const refusal = await backupModeRefusal(config, 'backup');
      if (refusal !== null) throw refusal;
      return `${config.paths.config}, ${config.paths.security}, ${config.paths.files} exist; no BACKUP sentinel`;
    },
  },
  {
    name: 'signing-key',
    needs: ['config'],
    run(ctx) {
      const config = known(ctx.config, 'the config');
      const w = captureWarnings();
      ctx.signingKey = loadSigningKeyFile(config.keys.signingKeyFile, w.logger);
      return withWarnings(`${config.keys.signingKeyFile} (key id ${keyId(ctx.signingKey)})`, w.warnings(), `chmod 600 ${config.keys.signingKeyFile}`);
    },
  },
  {
    name: 'verify-key',
    needs: ['signing-key'],
    run(ctx) {
      if (ctx.verifyKeyFile === undefined) return verifyKeyNotGiven;
      const mine = keyId(known(ctx.signingKey, 'the signing key'));
      const theirs = keyId(loadVerifyKeyFile(ctx.verifyKeyFile));
      if (theirs !== mine) {
        return verdict.fail(
          `${ctx.verifyKeyFile} (key id ${theirs}) is not the public half of the signing key (key id ${mine}): a standby that trusts it refuses every set`,
          'copy the signing.pub made together with keys.signingKeyFile to the standbys (keys.verifyKeyFile)',
        );
      }
      return `${ctx.verifyKeyFile} is the public half of the signing key (key id ${mine})`;
    },
  },
  {
    name: 'recipients',
    needs: ['config'],
    run(ctx) {
      const config = known(ctx.config, 'the config');
      if (config.encryption === 'none') return verdict.notApplicable('encryption is "none": nothing is encrypted');
      const file = known(config.keys.recipientFile, 'keys.recipientFile');
      ctx.recipients = loadRecipients(file);
      return `${file} (${ctx.recipients.length} recipient${ctx.recipients.length === 1 ? '' : 's'})`;
    },
  },
  {
    name: 'pairing',
    needs: ['recipients'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const recipientFile = known(config.keys.recipientFile, 'keys.recipientFile');
      if (ctx.identityFile === undefined) {
        return verdict.notApplicable('no --identity FILE given: the identity lives on the standbys, whose check proves it against the newest set');
      }
      const w = captureWarnings();
      const identities = loadIdentities(ctx.identityFile, w.logger);
      const mismatch = await pairingFailure(known(ctx.recipients, 'the recipients'), identities, ctx.identityFile, {
        detail: `${ctx.identityFile} cannot open what ${recipientFile} seals: they are not one key pair`,
        hint: `the standbys' keys.identityFile must be the backup.agekey made with this backup.agepub (\`age-keygen -y ${ctx.identityFile}\` prints the recipient it opens)`,
      });
      if (mismatch !== null) return mismatch;
      return withWarnings(`${ctx.identityFile} opens what ${recipientFile} seals`, w.warnings(), `chmod 600 ${ctx.identityFile}`);
    },
  },
  postgresCheck(
    (config) => withPg(config.database, readServerInfo),
    (config) => redactUrl(config.database.url),
  ),
  {
    name: 'db-access',
    when: dumpMode,
    needs: ['postgres'],
    run: (ctx) => checkDumpAccess(known(ctx.config, 'the config')),
  },
  {
    name: 'roles',
    when: dumpMode,
    needs: ['postgres'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      // What a backup reads beside the dump (the dbmeta artifact), read the same way.
      const meta = await readDbMeta(config);
      const names = meta.roles.map((r) => r.name);
      const shown = names.length > 6 ? `${names.slice(0, 6).join(', ')} ...` : names.join(', ');
      const mode = config.database.roles === 'carry' ? 'carried with their definitions (database.roles: carry)' : 'which each standby must have (database.roles: require)';
      return `${names.length} role${names.length === 1 ? '' : 's'} the database refers to${names.length > 0 ? ` (${shown})` : ''}, ${mode}`;
    },
  },
  {
    name: 'wal-settings',
    needs: ['postgres'],
    when: walMode,
    run: (ctx) => walSettings(known(ctx.config, 'the config')),
  },
  {
    name: 'wal-archiver',
    needs: ['postgres'],
    when: walMode,
    run: (ctx) => walArchiver(known(ctx.config, 'the config')),
  },
  {
    name: 'replication',
    needs: ['postgres'],
    when: walMode,
    run: (ctx) => replication(known(ctx.config, 'the config')),
  },
  {
    name: 'pg_dump',
    when: dumpMode,
    needs: ['config'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const tool = await pgClientTool(config.database, 'pg_dump');
      const server = ctx.server;
      if (server === undefined || server.major === null) return verdict.warn(`${tool.label}; the server's version is not known (see the postgres check), so it was not compared`);
      const major = pgMajor(tool.version);
      if (major === null || major < server.major) {
        return verdict.fail(
          `${tool.label} is older than the server (PostgreSQL ${server.version}): pg_dump refuses to dump a newer server`,
          `install the client of PostgreSQL ${server.major} or newer (postgresql-client-${server.major}) and point database.binDir at its bin directory if it is not first on PATH`,
        );
      }
      return `${tool.label}, not older than the server (PostgreSQL ${server.version.split(' ')[0]})`;
    },
  },
  {
    name: 'zstd',
    async run() {
      const tool = await toolVersion('zstd', { package: 'zstd' });
      return `zstd ${tool.version}`;
    },
  },
  filestoreCheck(),
  {
    name: 'store-write',
    needs: ['filestore'],
    async run(ctx) {
      const fs = known(ctx.filestore, 'the filestore');
      const key = layout.checkProbe(`${agentName(known(ctx.config, 'the config'), hostname())}-${process.pid}-${randomBytes(4).toString('hex')}`);
      const body = randomBytes(64);
      try {
        await fs.putBuffer(key, body, { contentType: 'application/octet-stream' });
        const back = await fs.getBuffer(key);
        if (!back.body.equals(body)) {
          return verdict.fail(`${fs.description}/${key}: read back other bytes than were written`, 'the filestore does not keep what it is given: check the storage');
        }
      } finally {
        await fs.delete(key);
      }
      if ((await fs.stat(key)) !== null) return verdict.fail(`${fs.description}/${key}: still there after it was deleted`, 'retention cannot remove old sets from this filestore: check its delete permission');
      return `${fs.description}: wrote, read back and deleted ${key}`;
    },
  },
  {
    name: 'latest',
    needs: ['filestore', 'signing-key'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const fs = known(ctx.filestore, 'the filestore');
      try {
        const found = await readVerifiedLatest(fs, config.site, createPublicKey(known(ctx.signingKey, 'the signing key')));
        if (found === null) return `site ${config.site} has no set yet: the first backup makes one`;
        return `latest set ${found.latest.setId} (committed ${timeAgo(found.latest.committedAt)}) verifies with the signing key`;
      } catch (err) {
        if (!isTandemError(err, 'integrity')) throw err;
        return verdict.warn(
          `${err.message}: the sets so far were signed with another key, so standbys that trust it refuse the next set`,
          'if the signing key was replaced on purpose, copy its signing.pub to every standby (keys.verifyKeyFile) before the next backup',
        );
      }
    },
  },
  {
    name: 'epoch',
    needs: ['filestore'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const found = await readEpochDoc(known(ctx.filestore, 'the filestore'), config.site);
      if (found === null) return `site ${config.site} has no epoch.json yet: the first backup names this agent the primary (epoch 1)`;
      const doc = found.doc;
      const self = { id: readAgentId(config.stateDir) ?? '', host: agentName(config) };
      if (namesAgent(doc, self)) return `epoch ${doc.epoch} names this agent (${self.host}) the primary`;
      const them = `${doc.primaryHost}${doc.primaryId === undefined ? '' : ` (agent ${doc.primaryId})`}`;
      const me = `${self.host}, agent ${self.id === '' ? 'without an id yet' : self.id}`;
      return verdict.fail(`epoch.json names ${them} the primary of site ${config.site} in epoch ${doc.epoch}, not this agent (${me}): a backup from here is refused as fenced`, FENCED_HINT);
    },
  },
  stateDirCheck(),
  {
    name: 'tokens',
    needs: ['config'],
    run(ctx) {
      const config = known(ctx.config, 'the config');
      const w = captureWarnings();
      let control: string;
      try {
        control = loadToken({ tokenFile: config.server.tokenFile, key: 'server.tokenFile', logger: w.logger });
      } catch (err) {
        if (!isTandemError(err) || err.code !== 'TOKEN_MISSING') throw err;
        return verdict.warn('no control token (server.tokenFile, TANDEM_TOKEN): `tandem-primary run` does not start without one; one-shot backups need none', err.hint);
      }
      const tokens = serverTokens(config, control, w.logger);
      const parts = [
        'control token',
        ...(tokens.read === null ? [] : ['monitoring token']),
        `${tokens.standbys.length} standby token${tokens.standbys.length === 1 ? '' : 's'}${tokens.standbys.length > 0 ? ` (${tokens.standbys.map((s) => s.id).join(', ')})` : ''}`,
      ];
      return withWarnings(`${parts.join(', ')}, all different`, w.warnings(), 'list each standby under standbys: with its own token file (`tandem-primary init --standby ID` writes one)');
    },
  },
  serverTlsCheck(),
  {
    name: 'listen',
    needs: ['config'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const listen = config.server.listen;
      const daemon = await findDaemon(config.stateDir);
      if (daemon !== null && (await probeDaemon(daemon.listen, 2000, config.server.tls))) return `the daemon (pid ${daemon.pid}) serves ${daemon.listen}`;
      const busy = await addressInUse(listen);
      if (busy === null) return `${listen} (server.listen) is free; no daemon runs for this state directory`;
      return verdict.warn(`${listen} (server.listen): ${busy}, and not by this site's daemon: \`tandem-primary run\` cannot listen there`, 'stop what holds the address, or choose another server.listen');
    },
  },
];

const verifyKeyNotGiven = verdict.notApplicable("no --verify-key FILE given: each standby's check proves its verify key against the newest set");
