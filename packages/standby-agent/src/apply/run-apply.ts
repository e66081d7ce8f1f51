import {
  Interrupted,
  TandemError,
  acquireLock,
  describeError,
  interruptedBy,
  isTandemError,
  isS3Url,
  loadFilesKeyFile,
  loadVerifyKeyFile,
  parseDbMeta,
  readEpochDoc,
  type Filestore,
  type LatestPointer,
  type Logger,
  type ProgressSink,
  type StandbyConfig,
} from '@tandem/shared';
import { artifactLabel } from './artifact-stream.js';
import { checkDatabasePrereqs, ensureRoles, type AgentRole } from './db-prereqs.js';
import { legacyMetaWarning } from './db-props.js';
import { faultPoint } from './fault.js';
import { finishApply, restartAfterApply } from './finish.js';
import { writeJournal, type Journal } from './journal.js';
import { identitiesFor } from './keys.js';
import { checkMaintenanceDb } from './pg.js';
import { preflight, walPreflight } from './preflight.js';
import { prepareCluster, readWalSeed, walSeedOf } from './cluster.js';
import { refuseIfPromoted } from './promoted.js';
import { recover, rollBack, rollBackUnswitchedSchema, type Recovery } from './recover.js';
import { checkSchemaPrereqs, checkSetShape } from './schema.js';
import { decide, resolveSet } from './resolve-set.js';
import { restoreDatabase } from './restore-db.js';
import { ensureSentinel } from './sentinel.js';
import { stageSet } from './stage.js';
import { readApplied, stateFiles, type AppliedState } from './state.js';
import { switchParts } from './switch.js';
import { stagingDir, targetsFor } from './targets.js';
import { wrongBoxRefusal } from './wrong-box.js';

export interface ApplyOptions {
  filestore: Filestore;
  logger: Logger;
  /** Apply this set instead of the one latest.json names. */
  setId?: string;
  /** With setId: allow a set older than the applied one. */
  allowOlder?: boolean;
  /** Apply the already-applied set again. */
  force?: boolean;
  /** Aborts staging (rolled back); once switching has begun, the apply finishes regardless. */
  signal?: AbortSignal;
  /** latest.json as just read and verified by the caller (not read again); ignored with setId. */
  latest?: LatestPointer;
  /** `--create-database`: create the site's database if it does not exist (else only database.create, on the first apply). */
  createDatabase?: boolean;
  /** Who runs it: the daemon's refusals of this server (it is the primary) stop the daemon with exit 2. */
  caller?: 'apply' | 'daemon';
  /** Told each artifact's download (a terminal's progress line). */
  progress?: ProgressSink;
  /** WAL mode (`apply --at`): seed, and replay the WAL up to this time, then pause there. */
  recoveryTargetTime?: Date;
}

export interface ApplyResult {
  status: 'applied' | 'already-applied';
  applied: AppliedState;
  recovered: Recovery;
  /** The restart command failed: the set is applied and recorded all the same. */
  restartError?: unknown;
}

export async function runApply(config: StandbyConfig, opts: ApplyOptions): Promise<ApplyResult> {
  const { filestore: fs, logger } = opts;
  // A promoted server is the primary now: never turn it back into a copy of the filestore.
  await refuseIfPromoted(config, 'apply');
  // Nor is the site's primary ever applied over (wrong-box.ts), --force or not.
  const wrongBox = await wrongBoxRefusal(config, (await readEpochDoc(fs, config.site))?.doc ?? null, opts.caller ?? 'apply');
  if (wrongBox !== null) throw wrongBox;
  const targets = await targetsFor(config);
  // WAL mode replaces the cluster whole: no database is replaced from another one.
  if (config.database.mode !== 'wal') checkMaintenanceDb(config, targets.db.live);
  const verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
  const lock = await acquireLock(stateFiles(config.stateDir).lock, 'apply', `an apply or promote of site "${config.site}"`);
  try {
    const recovered = await recover(config, logger);
    const { manifest, latest } = await resolveSet(fs, config.site, verifyKey, opts.setId, opts.latest);
    checkSetShape(config, manifest);
    const log = logger.child({ site: config.site, setId: manifest.setId });
    const applied = await readApplied(config.stateDir);
    const decision = decide(manifest, applied, { named: opts.setId !== undefined, allowOlder: opts.allowOlder === true, force: opts.force === true });
    if (decision === 'already-applied' && applied !== null) {
      log.info('set already applied; nothing to do');
      // An apply killed between its record and its restart left the restart to us.
      const restart = applied.restart === 'pending' ? await restartAfterApply(config, applied, log) : {};
      return { status: 'already-applied', applied, recovered, ...restart };
    }
    const identities = identitiesFor(config, manifest, log);
    if (isS3Url(config.paths.files) && !manifest.artifacts.some((a) => a.kind === 'files-index')) {
      throw new TandemError('config', 'FILES_BUCKET_NEEDS_INDEX', `set ${manifest.setId} carries its files as a tar, and this standby's paths.files is a bucket (${config.paths.files}), which only sets of content objects are applied into; nothing was downloaded or changed`, {
        hint: 'give the primary a files key (keys.filesKeyFile) and make a new set',
      });
    }
    if (config.keys.filesKeyFile === undefined && manifest.artifacts.some((a) => a.kind === 'files-index')) {
      throw new TandemError('config', 'FILES_KEY_MISSING', `set ${manifest.setId} stores its files as content objects, and this standby has no files key (keys.filesKeyFile in ${config.configFile}); nothing was downloaded or changed`, {
        hint: "copy files.agekey from the primary's keys directory (mode 0600) and name it as keys.filesKeyFile",
      });
    }
    const walSet = manifest.database.mode === 'wal';
    if (!walSet && config.database.mode === 'wal') {
      throw new TandemError('config', 'WAL_SET_IS_DUMP', `set ${manifest.setId} carries a dump (dump mode), and this standby is in WAL mode (database.mode in ${config.configFile}); nothing was downloaded or changed`, {
        hint: 'the primary and its standbys must use the same database.mode',
      });
    }
    // WAL mode: the data directory, pg_verifybackup, free space; the database is replaced whole.
    if (walSet) await walPreflight({ config, manifest, targets });
    // WAL mode: a cluster seeded from the same cluster replays its WAL, and is newer than any base
    // backup; a new set brings config, security and files, and the database stays (--force seeds again).
    const seeded = walSet ? await readWalSeed(config.stateDir) : null;
    if (walSet && seeded?.recoveryTargetTime !== undefined && opts.force !== true && opts.recoveryTargetTime === undefined) {
      throw new TandemError('precondition', 'WAL_POINT_IN_TIME', `the cluster was seeded to a point in time (apply --at ${seeded.recoveryTargetTime}) and holds there; set ${manifest.setId} was not applied over it`, {
        hint: 'to follow the primary again: `tandem-standby apply --force` (seeds anew from the newest set)',
      });
    }
    const keepCluster = walSet && seeded !== null && seeded.systemId === manifest.database.systemId && opts.force !== true && opts.recoveryTargetTime === undefined;
    // Tools, PostgreSQL, the database's existence and free space, before a byte is downloaded.
    const checked = walSet ? null : await preflight({ config, manifest, targets, applied, createDatabase: opts.createDatabase === true, logger: log }).catch((err: unknown) => {
      if (isTandemError(err) && err.code === 'DB_CONNECT') {
        throw new TandemError(err.kind, err.code, `${err.message}; set ${manifest.setId} was not downloaded and nothing changed`, { hint: err.hint, cause: err.cause ?? err, exitCode: err.exitCode });
      }
      throw err;
    });

    const t0 = performance.now();
    let switchAgent: AgentRole | undefined;
    const journal: Journal = {
      format: 'tandem-apply-journal',
      version: 1,
      site: config.site,
      setId: manifest.setId,
      epoch: manifest.epoch,
      seq: manifest.seq,
      createdAt: manifest.createdAt,
      committedAt: latest?.committedAt ?? null,
      bytes: manifest.artifacts.reduce((n, a) => n + a.storedSize, 0),
      phase: 'staging',
      startedAt: new Date().toISOString(),
      stagingDir: stagingDir(config.stateDir, manifest.setId),
      targets,
      switched: [],
      durations: {},
    };
    log.info({ filestore: fs.description, bytes: journal.bytes }, 'apply started');
    await writeJournal(config.stateDir, journal);
    faultPoint('journal-written');
    try {
      const staged = await stageSet({
        filestore: fs,
        manifest,
        identities,
        targets,
        stagingDir: journal.stagingDir,
        restoreJobs: config.database.restoreJobs,
        filesKey: config.keys.filesKeyFile === undefined ? null : loadFilesKeyFile(config.keys.filesKeyFile, log),
        stateDir: config.stateDir,
        limits: config.limits,
        skipDb: keepCluster,
        checkAllFiles: opts.force === true,
        logger: log,
        signal: opts.signal,
        progress: opts.progress,
      });
      Object.assign(journal.durations, staged.durations);
      if (staged.filesObjects) journal.filesObjects = true;
      if ((staged.filesObjects?.patched ?? 0) > 0) journal.version = 2;
      if (walSet) {
        // WAL mode: the cluster carries its roles, grants and settings itself.
        if (await ensureSentinel(config.paths.sentinel, config.site, manifest.setId)) {
          log.info({ sentinel: config.paths.sentinel }, 'sentinel written: the site is in backup mode');
        }
        faultPoint('sentinel-written');
        if (keepCluster) {
          journal.dbKept = true;
          log.info({ seededFrom: seeded!.setId }, 'the cluster is replaying WAL of the same cluster: kept, not seeded again');
        } else {
          journal.walSeed = walSeedOf(config, manifest, opts.recoveryTargetTime);
          journal.durations.restore = await prepareCluster(config, targets.cluster!, manifest, log, opts.recoveryTargetTime);
        }
        faultPoint('db-restored');
        opts.signal?.throwIfAborted();
      } else {
      // Roles, extensions and the agent's rights, checked before anything live changes.
      const dbEntry = manifest.artifacts.find((a) => a.name === 'dbmeta');
      const meta = staged.dbMeta && dbEntry ? parseDbMeta(staged.dbMeta, artifactLabel(manifest, dbEntry)) : undefined;
      if (!meta) legacyMetaWarning(log, manifest.setId);
      const agent = meta ? await checkDatabasePrereqs(config, meta, manifest.setId, log) : checked!.agent;
      const schemaMode = targets.db.schemaOf !== undefined;
      if (schemaMode) {
        if (!meta) throw new TandemError('integrity', 'DB_META_MISSING', `set ${manifest.setId} carries the schema "${targets.db.live}" but no database description`, { hint: 'make a new set with this tandem version' });
        await checkSchemaPrereqs(config, targets.db, meta, manifest.setId, log);
      }
      // Ordering rule 4: the sentinel before the first live change.
      if (await ensureSentinel(config.paths.sentinel, config.site, manifest.setId)) {
        log.info({ sentinel: config.paths.sentinel }, 'sentinel written: the site is in backup mode');
      }
      faultPoint('sentinel-written');
      if (meta) await ensureRoles(config, meta, log);
      if (schemaMode) {
        // A schema is restored by the switch itself, in one transaction (schema.ts).
        journal.schemaSwitch = { staged: staged.db };
        switchAgent = agent;
      } else {
        journal.durations.restore = await restoreDatabase(config, targets.db, staged.db, { setId: manifest.setId, identities, logger: log, meta, agent });
        faultPoint('db-restored');
      }
      opts.signal?.throwIfAborted();
      }
    } catch (err) {
      await rollBack(config, journal, log).catch((e: unknown) =>
        log.error({ err: e }, 'could not remove everything the failed apply staged; the next apply retries'),
      );
      const sig = opts.signal ? interruptedBy(opts.signal) : null;
      if (sig !== null) throw new Interrupted(sig, `the apply of set ${manifest.setId} was rolled back: what it had staged was removed, nothing live changed`, { cause: err });
      if (opts.signal?.aborted) {
        throw new TandemError('transient', 'INTERRUPTED', `the apply of set ${manifest.setId} was ${describeError(opts.signal.reason)}: rolled back, nothing live changed`, {
          cause: err,
        });
      }
      throw err;
    }

    journal.phase = 'switching';
    await writeJournal(config.stateDir, journal);
    faultPoint('switching');
    await switchParts(config, journal, log, switchAgent).catch(rollBackUnswitchedSchema(config, journal, log));
    const fin = await finishApply(config, journal, log, t0);
    return { status: 'applied', recovered, ...fin };
  } finally {
    await lock.release();
  }
}
