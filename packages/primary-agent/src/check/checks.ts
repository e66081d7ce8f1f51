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
  type CheckDef,
  type Filestore,
  type PrimaryConfig,
  type ServerInfo,
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
    needs: ['postgres'],
    run: (ctx) => checkDumpAccess(known(ctx.config, 'the config')),
  },
  {
    name: 'roles',
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
    name: 'pg_dump',
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
