import type { KeyObject } from 'node:crypto';
import type { Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  judge,
  TandemError,
  captureWarnings,
  checkWritableDir,
  configVerdict,
  filestoreCheck,
  formatBytes,
  isTandemError,
  keyId,
  known,
  loadClientTls,
  loadIdentities,
  loadRecipients,
  loadStandbyConfig,
  loadVerifyKeyFile,
  pairingFailure,
  pgClientTool,
  pgMajor,
  postgresCheck,
  readEpochDoc,
  readServerInfo,
  redactUrl,
  serverTlsCheck,
  stateDirCheck,
  timeAgo,
  tlsOptions,
  toolVersion,
  verdict,
  withDatabase,
  withPg,
  withWarnings,
  inDatabaseMode,
  type CheckDef,
  type Filestore,
  type Finding,
  type LatestPointer,
  type Manifest,
  type ServerInfo,
  type StandbyConfig,
  type Verdict,
} from '@tandem/shared';
import { readWalSeed } from '../apply/cluster.js';
import { isPrivileged, ownerSafeRestore } from '../apply/db-prereqs.js';
import { checkMaintenanceDb, withMaintenance } from '../apply/pg.js';
import { checkDatabase, checkSpace, checkTools } from '../apply/preflight.js';
import { promotedRefusal } from '../apply/promoted.js';
import { resolveSet } from '../apply/resolve-set.js';
import { readApplied } from '../apply/state.js';
import { DIR_PARTS, targetsFor, type Targets } from '../apply/targets.js';
import { wrongBoxRefusal } from '../apply/wrong-box.js';
import { loadDaemonToken, loadReadToken } from '../daemon/daemon-info.js';
import { probePushChannel } from './push-probe.js';
import { checkSetNeeds } from './set-needs.js';

/**
 * `tandem-standby check`: everything an apply and the daemon need, looked at without applying (and
 * without writing anything anywhere). Each check fills in what later ones use: the config, the
 * keys, the server's version, the open filestore, the newest set.
 */
export interface StandbyCheckContext {
  configFile: string;
  /** --site: the site of a config with several (undefined: the only one). */
  site?: string;
  /** --recipient: the primary's age recipient file, to prove the identity against. */
  recipientFile?: string;
  config?: StandbyConfig;
  verifyKey?: KeyObject;
  identities?: string[];
  server?: ServerInfo;
  targets?: Targets;
  filestore?: Filestore;
  latest?: LatestPointer;
  manifest?: Manifest;
}

/** Problems found by the apply's preflight, as one failure (or ok when there are none). */
function fromProblems(problems: Array<{ message: string; hint: string }>, okDetail: string): Verdict {
  if (problems.length === 0) return verdict.ok(okDetail);
  return verdict.fail(problems.map((p) => p.message).join('; '), [...new Set(problems.map((p) => p.hint))].join('; '));
}

/** The site has no set yet (the latest check warned): nothing to measure against. */
const noSetYet = verdict.notApplicable('no set to check against yet (see the latest check)');

const walMode = inDatabaseMode('wal');
const dumpMode = inDatabaseMode('dump');

/** A user id's name (/etc/passwd), else "uid N". */
async function userName(uid: number): Promise<string> {
  const passwd = await readFile('/etc/passwd', 'utf8').catch(() => '');
  const name = passwd.split('\n').map((l) => l.split(':')).find((f) => f[2] === String(uid))?.[0];
  return name === undefined || name === '' ? `uid ${uid}` : `${name} (uid ${uid})`;
}

const octal = (mode: number): string => `0${(mode & 0o777).toString(8).padStart(3, '0')}`;

const CREATE_CLUSTER = 'create the standby cluster first (initdb or pg_createcluster, as its OS user): the seed replaces its data directory and keeps its postgresql.conf, pg_hba.conf and owner';

/**
 * What the data directory itself must be for a seed and for PostgreSQL: a directory, owned by the
 * cluster's OS user (not root: PostgreSQL does not run as root), which this agent can give the
 * seed's files (it runs as that user, or as root), with a mode PostgreSQL starts on (0700, 0750),
 * in a directory the agent can write (the seed is unpacked beside it and swapped in by rename).
 */
async function dataDirFindings(dataDir: string, fine: string[], found: Finding[]): Promise<void> {
  let st: Stats;
  try {
    st = await stat(dataDir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    found.push({
      level: 'fail',
      message: `database.dataDir ${dataDir}: ${code === 'ENOENT' ? 'no such directory' : (err as Error).message}`,
      hint: code === 'ENOENT' ? CREATE_CLUSTER : "run the agent as the cluster's OS user (PostgreSQL runs its restore_command, tandem-standby wal-fetch, as that user too)",
    });
    return;
  }
  if (!st.isDirectory()) {
    found.push({ level: 'fail', message: `database.dataDir ${dataDir} is not a directory`, hint: CREATE_CLUSTER });
    return;
  }
  const owner = await userName(st.uid);
  fine.push(`${dataDir} (owned by ${owner}, mode ${octal(st.mode)})`);
  if (st.uid === 0) {
    found.push({ level: 'fail', message: `database.dataDir ${dataDir} is owned by root: PostgreSQL never runs as root, so it is no cluster's data directory`, hint: 'point database.dataDir at the data directory of the standby cluster (SHOW data_directory), owned by its OS user' });
  }
  const me = process.geteuid?.();
  if (me !== undefined && me !== 0 && me !== st.uid) {
    found.push({
      level: 'fail',
      message: `this agent runs as ${await userName(me)}, not as ${owner}, who owns database.dataDir ${dataDir}: a seed could not give the new data directory to the cluster's user`,
      hint: `run the agent as ${owner.replace(/ \(uid \d+\)$/, '')} (PostgreSQL runs its restore_command, tandem-standby wal-fetch, as that user too)`,
    });
  }
  const mode = st.mode & 0o777;
  if (mode !== 0o700 && mode !== 0o750) {
    found.push({ level: 'fail', message: `database.dataDir ${dataDir} has mode ${octal(mode)}: PostgreSQL starts only on a data directory of mode 0700 or 0750`, hint: `chmod 0700 ${dataDir}` });
  }
  try {
    await checkWritableDir(dirname(dataDir), "the data directory's parent");
  } catch (err) {
    if (!isTandemError(err)) throw err;
    found.push({ level: 'fail', message: `${err.message}: a seed unpacks beside the data directory and swaps it in by rename`, hint: err.hint ?? "run the agent as the cluster's OS user" });
  }
}

/** The tools of a seed (pg_verifybackup: without it, no seed) and of a rejoin (pg_rewind: without it, a rejoin seeds afresh). */
async function walToolFindings(config: StandbyConfig, fine: string[], found: Finding[]): Promise<void> {
  const bin = (name: string): string => (config.database.binDir ? join(config.database.binDir, name) : name);
  const where = "set database.binDir to the PostgreSQL binaries of the cluster's version (e.g. /usr/lib/postgresql/15/bin): Debian installs them there, not on PATH";
  for (const [name, pkg, level, without] of [
    ['pg_verifybackup', 'postgresql-client', 'fail', 'a seed checks every base backup with it before anything live changes, and refuses without it'],
    ['pg_rewind', 'postgresql', 'warn', 'tandem-standby rejoin cannot wind this server back after a failover, and seeds it afresh instead'],
  ] as const) {
    try {
      const tool = await toolVersion(bin(name), { package: pkg });
      fine.push(`${name} ${tool.version}`);
    } catch (err) {
      if (!isTandemError(err)) throw err;
      found.push({ level, message: `${err.message}: ${without}`, hint: where });
    }
  }
}

const isPermissionDenied = (err: unknown): boolean => (err as { code?: unknown }).code === '42501';

/**
 * Once seeded (wal-seed.json): the cluster answers on database.url, is still a standby (in
 * recovery), is the cluster the seed made (its system id), and replays through wal-fetch.
 */
async function seededFindings(config: StandbyConfig, fine: string[], found: Finding[]): Promise<void> {
  const seed = await readWalSeed(config.stateDir);
  if (seed === null) {
    fine.push('not seeded yet (no wal-seed.json in the state dir): the first apply seeds it');
    return;
  }
  const where = redactUrl(config.database.url);
  const seeded = `seeded from set ${seed.setId} ${timeAgo(seed.seededAt)}`;
  try {
    await withPg(config.database, async (c) => {
      const inRecovery = (await c.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r;
      if (!inRecovery) {
        found.push({
          level: 'fail',
          message: `the cluster is not a standby: promoted? (pg_is_in_recovery() is false on ${where}; ${seeded})`,
          hint: 'if this server is the site\'s primary now (tandem-standby promote), run tandem-primary here instead; if the cluster was promoted by hand, seed it again: tandem-standby apply replaces it with the newest set',
        });
        return;
      }
      let system: string | undefined;
      try {
        system = (await c.query<{ id: string }>('SELECT system_identifier::text AS id FROM pg_control_system()')).rows[0]!.id;
      } catch (err) {
        if (!isPermissionDenied(err)) throw err;
      }
      if (system !== undefined && system !== seed.systemId) {
        found.push({
          level: 'fail',
          message: `the cluster on ${where} is system ${system}, but set ${seed.setId} seeded system ${seed.systemId} (wal-seed.json): wal-fetch refuses this cluster's WAL`,
          hint: 'the data directory was replaced since the seed: seed it again (tandem-standby apply)',
        });
      }
      let restore: string | undefined;
      try {
        restore = (await c.query<{ restore_command: string }>('SHOW restore_command')).rows[0]!.restore_command;
      } catch (err) {
        if (!isPermissionDenied(err)) throw err;
        found.push({ level: 'warn', message: `restore_command is not readable by this role on ${where}: whether the cluster replays through tandem is not known`, hint: 'connect as a superuser, or GRANT pg_read_all_settings to the role of database.url' });
      }
      if (restore !== undefined && !restore.includes('wal-fetch')) {
        found.push({
          level: 'fail',
          message: `restore_command is '${restore}': the cluster does not replay the site's WAL from the filestore through tandem`,
          hint: `the seed sets restore_command in ${join(config.database.dataDir!, 'postgresql.auto.conf')}: remove the setting that overrides it (postgresql.conf, a later ALTER SYSTEM) and restart the cluster, or seed it again (tandem-standby apply)`,
        });
      }
      const target = seed.recoveryTargetTime === undefined ? '' : `; the replay stops at ${seed.recoveryTargetTime} (apply --at)`;
      fine.push(`${seeded}: a standby in recovery on ${where}${restore?.includes('wal-fetch') === true ? ', restore_command runs tandem-standby wal-fetch' : ''}${target}`);
    });
  } catch (err) {
    if (!isTandemError(err) || err.code !== 'DB_CONNECT') throw err;
    found.push({ level: 'fail', message: `${err.message}: the cluster ${seeded} does not answer`, hint: "start it (database.startCommand) and see PostgreSQL's log: it replays nothing meanwhile" });
  }
}

export const standbyChecks: Array<CheckDef<StandbyCheckContext>> = [
  {
    name: 'config',
    async run(ctx) {
      const config = loadStandbyConfig(ctx.configFile, ctx.site, 'tandem-standby check');
      ctx.config = config;
      ctx.targets = await targetsFor(config);
      return configVerdict(config, { detail: 'unencrypted sets are accepted', hint: 'remove `encryption: none` unless the primary is meant to upload unencrypted sets' });
    },
  },
  {
    name: 'verify-key',
    needs: ['config'],
    run(ctx) {
      const file = known(ctx.config, 'the config').keys.verifyKeyFile;
      ctx.verifyKey = loadVerifyKeyFile(file);
      return `${file} (key id ${keyId(ctx.verifyKey)}); the latest check proves it against the primary's signatures`;
    },
  },
  {
    name: 'identity',
    needs: ['config'],
    run(ctx) {
      const config = known(ctx.config, 'the config');
      if (config.encryption === 'none') return verdict.notApplicable('encryption is "none": no identity is needed');
      const file = known(config.keys.identityFile, 'keys.identityFile');
      const w = captureWarnings();
      ctx.identities = loadIdentities(file, w.logger);
      return withWarnings(`${file} (${ctx.identities.length} identit${ctx.identities.length === 1 ? 'y' : 'ies'})`, w.warnings(), `chmod 600 ${file}`);
    },
  },
  filestoreCheck({ readable: true }),
  {
    name: 'latest',
    needs: ['filestore', 'verify-key'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const fs = known(ctx.filestore, 'the filestore');
      try {
        // latest.json, its manifest and the epoch, verified as an apply verifies them.
        const { manifest, latest } = await resolveSet(fs, config.site, known(ctx.verifyKey, 'the verify key'));
        ctx.manifest = manifest;
        ctx.latest = latest ?? undefined;
        const when = latest === null ? '' : `, committed ${timeAgo(latest.committedAt)}`;
        return `latest set ${manifest.setId} (epoch ${manifest.epoch}${when}) and its manifest verify with the verify key`;
      } catch (err) {
        if (isTandemError(err) && err.code === 'NO_SETS') return verdict.warn(`${err.message}; the verify key can be proved once it has one`, err.hint);
        if (isTandemError(err) && err.code === 'DOC_FOREIGN_KEY') {
          throw new TandemError('config', err.code, `${err.message}: keys.verifyKeyFile does not match the primary's signing key`, {
            hint: "copy the signing.pub made together with the primary's keys.signingKeyFile to keys.verifyKeyFile",
          });
        }
        throw err;
      }
    },
  },
  {
    name: 'pairing',
    needs: ['identity'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const identityFile = known(config.keys.identityFile, 'keys.identityFile');
      let recipients: string[];
      let source: string;
      if (ctx.recipientFile !== undefined) {
        recipients = loadRecipients(ctx.recipientFile);
        source = ctx.recipientFile;
      } else if (ctx.manifest !== undefined && ctx.manifest.encryption.recipients.length > 0) {
        // The recipients the primary sealed the newest set to, as its signed manifest lists them.
        recipients = ctx.manifest.encryption.recipients;
        source = `the recipient${recipients.length === 1 ? '' : 's'} of set ${ctx.manifest.setId}`;
      } else {
        const why = ctx.manifest === undefined ? 'the newest set could not be read (see the latest check)' : `set ${ctx.manifest.setId} is not encrypted`;
        return verdict.notApplicable(`no --recipient FILE given, and ${why}: nothing to prove the identity against`);
      }
      const mismatch = await pairingFailure(recipients, known(ctx.identities, 'the identities'), identityFile, {
        detail: `${identityFile} cannot open what ${source} seals: this standby could not decrypt the primary's sets`,
        hint: "keys.identityFile must be the backup.agekey made together with the primary's keys.recipientFile (backup.agepub)",
      });
      return mismatch ?? `${identityFile} opens what ${source} seals`;
    },
  },
  {
    name: 'mode',
    needs: ['filestore'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const promoted = await promotedRefusal(config, 'apply');
      if (promoted !== null) throw promoted;
      const epoch = (await readEpochDoc(known(ctx.filestore, 'the filestore'), config.site))?.doc ?? null;
      const wrongBox = await wrongBoxRefusal(config, epoch, 'apply');
      if (wrongBox !== null) throw wrongBox;
      return epoch === null ? 'a standby: not promoted; the site has no epoch yet' : `a standby: not promoted; epoch ${epoch.epoch} names ${epoch.primaryHost} the primary`;
    },
  },
  postgresCheck(
    (config) => withMaintenance(config, readServerInfo),
    (config) => `${redactUrl(withDatabase(config.database.url, config.database.maintenanceDb))} (database.maintenanceDb)`,
  ),
  {
    name: 'db-rights',
    when: dumpMode,
    needs: ['postgres'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const targets = known(ctx.targets, 'the targets');
      const live = targets.db.live;
      checkMaintenanceDb(config, live);
      const applied = await readApplied(config.stateDir);
      // The apply's own preflight of the database: CREATEDB, the right to swap the live database, and that it exists.
      const db = await checkDatabase({ config, targets, applied, createDatabase: false });
      const agent = db.agent;
      const missing = db.problems.filter((p) => p.code === 'DB_MISSING');
      const problems: Array<{ message: string; hint: string }> = db.problems.filter((p) => p.code !== 'DB_MISSING');
      if (isPrivileged(agent) && !ownerSafeRestore(agent.serverVersionNum)) {
        problems.push({
          message: `the agent's role "${agent.name}" has rights beyond the site's (superuser, CREATEROLE or server file access) on a PostgreSQL release that runs the site's index expressions with the restoring role's rights`,
          hint: 'upgrade PostgreSQL to a current minor release, or connect the standby agent as a role without those rights',
        });
      }
      if (config.database.roles === 'carry' && !agent.superuser && !agent.createRole) {
        problems.push({
          message: `database.roles is "carry", but the agent's role "${agent.name}" has neither SUPERUSER nor CREATEROLE to create the roles a set carries`,
          hint: `ALTER ROLE "${agent.name}" CREATEROLE, or create the roles by hand and set database.roles: require`,
        });
      }
      const rights = agent.superuser ? 'is a superuser' : `has CREATEDB${agent.createRole ? ' and CREATEROLE' : ''}`;
      const existing = db.createsDatabase ? `database "${live}" does not exist yet; the first apply creates it (database.create)` : missing.length === 0 ? `may replace database "${live}"` : '';
      if (problems.length > 0) return fromProblems(problems, '');
      if (missing.length > 0) {
        // A standby before its first apply: the apply refuses unless told to create the database.
        const m = missing[0]!;
        return applied === null ? verdict.warn(`role "${agent.name}" ${rights}; ${m.message}`, m.hint) : verdict.fail(`role "${agent.name}" ${rights}; ${m.message}`, m.hint);
      }
      return `role "${agent.name}" ${rights}; ${existing}`;
    },
  },
  {
    name: 'set-needs',
    when: dumpMode,
    needs: ['db-rights', 'latest'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const manifest = ctx.manifest;
      if (manifest === undefined) return noSetYet;
      const w = captureWarnings();
      const r = await checkSetNeeds(config, known(ctx.filestore, 'the filestore'), manifest, w.logger);
      if ('unknown' in r) return verdict.notApplicable(r.unknown);
      const roles = r.meta.roles.length;
      const exts = r.meta.extensions.length;
      return `set ${manifest.setId} can be restored here: its ${roles} role${roles === 1 ? '' : 's'} and ${exts} extension${exts === 1 ? '' : 's'} are in place (database description decrypted and read)`;
    },
  },
  {
    name: 'tools',
    needs: ['config'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const restore = await pgClientTool(config.database, 'pg_restore');
      const zstd = await toolVersion('zstd', { package: 'zstd' });
      const parts = [restore.label, `zstd ${zstd.version}`];
      if (config.database.restoreJobs > 1) parts.push(`prlimit ${(await toolVersion('prlimit', { package: 'util-linux' })).version}`);
      // Against the PostgreSQL the newest set was dumped from, as the apply's preflight judges it.
      if (ctx.manifest !== undefined) {
        const problems = await checkTools(config, ctx.manifest);
        if (problems.length > 0) return fromProblems(problems, '');
        parts.push(`the newest set was dumped from PostgreSQL ${ctx.manifest.database.serverVersion.split(' ')[0]}`);
      }
      const have = pgMajor(restore.version);
      const server = ctx.server;
      if (server !== undefined && server.major !== null && have !== null && have < server.major) {
        return verdict.warn(
          `${parts.join(', ')}; pg_restore is older than this server (PostgreSQL ${server.version})`,
          `install the PostgreSQL ${server.major} client tools (postgresql-client-${server.major}) and set database.binDir unless they come first on PATH`,
        );
      }
      return parts.join(', ');
    },
  },
  {
    name: 'wal-cluster',
    needs: ['config'],
    when: walMode,
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const fine: string[] = [];
      const found: Finding[] = [];
      await dataDirFindings(known(config.database.dataDir, 'database.dataDir'), fine, found);
      await walToolFindings(config, fine, found);
      await seededFindings(config, fine, found);
      return judge(fine, found);
    },
  },
  {
    name: 'space',
    needs: ['latest'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const manifest = ctx.manifest;
      if (manifest === undefined) return noSetYet;
      const problems = await checkSpace(config, manifest, known(ctx.targets, 'the targets'));
      const stored = manifest.artifacts.reduce((n, a) => n + a.storedSize, 0);
      const plain = manifest.artifacts.reduce((n, a) => n + a.plainSize, 0);
      return fromProblems(problems, `room for set ${manifest.setId} (${formatBytes(stored)} stored, ${formatBytes(plain)} unpacked) in the state dir and beside the site's dirs`);
    },
  },
  stateDirCheck(),
  {
    name: 'site-dirs',
    needs: ['config'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      const targets = known(ctx.targets, 'the targets');
      // An apply builds each part beside the live one and swaps by rename; the sentinel goes in its own directory.
      const dirs = new Set([...DIR_PARTS.map((p) => dirname(targets.dirs[p].live)), dirname(config.paths.sentinel)]);
      for (const d of dirs) await checkWritableDir(d, d === dirname(config.paths.sentinel) ? 'the BACKUP sentinel\'s directory' : "the site directories' parent");
      return `${[...dirs].join(', ')} writable, or can be created (the site's dirs are swapped there; the BACKUP sentinel goes to ${config.paths.sentinel})`;
    },
  },
  {
    name: 'tokens',
    needs: ['config'],
    run(ctx) {
      const config = known(ctx.config, 'the config');
      const w = captureWarnings();
      const push = loadDaemonToken(config, w.logger);
      const read = loadReadToken(config, w.logger, push);
      const parts = [push === null ? 'no push token (polling only)' : 'push token (primary.tokenFile)', ...(read === null ? [] : ['monitoring token (server.readTokenFile)'])];
      return withWarnings(parts.join(', ') + (push !== null && read !== null ? ', different' : ''), w.warnings(), 'chmod 600 the token files');
    },
  },
  serverTlsCheck(),
  {
    name: 'push',
    needs: ['tokens'],
    async run(ctx) {
      const config = known(ctx.config, 'the config');
      if (config.primary === undefined) return verdict.notApplicable(`no primary.url: this standby polls the filestore every ${config.pollInterval / 1000} s`);
      const token = loadDaemonToken(config);
      const tls = config.primary.tls === undefined ? undefined : tlsOptions(loadClientTls(config.primary.tls));
      const { url, hello } = await probePushChannel(config.primary.url, token!, config.site, { tls });
      const epoch = hello.epoch === null ? 'epoch not known yet' : `epoch ${hello.epoch}`;
      return `${url}: the primary accepted the token and said hello (site ${hello.site}, ${epoch}, latest ${hello.latestSetId ?? 'none yet'})`;
    },
  },
];
