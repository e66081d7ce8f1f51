import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { Readable, type Duplex } from 'node:stream';
import {
  ARTIFACT_NAMES,
  TOOL_VERSION,
  Interrupted,
  TandemError,
  acquireLock,
  agentName,
  assertNotFenced,
  compareSets,
  listSets,
  readEpochDoc,
  artifactFileName,
  createAgeEncryptStream,
  isS3Url,
  loadFilesKeyFile,
  verifyLatest,
  verifyManifest,
  type FilesKey,
  type PageLoader,
  createTarCheck,
  createTarStream,
  databaseName,
  faultPoint,
  interruptedBy,
  layout,
  loadRecipients,
  loadSigningKeyFile,
  makeSetId,
  pgBin,
  pgEnv,
  redactUrl,
  signLatest,
  signManifest,
  spawnSource,
  withPg,
  zstdCompress,
  type ArtifactEntry,
  type ArtifactName,
  type Filestore,
  type Logger,
  type Manifest,
  type PrimaryConfig,
  type ProgressSink,
  type SetRef,
} from '@tandem/shared';
import { stateFiles, writeLastBackup } from '../state-files.js';
import { probeCompressibility } from './compressibility.js';
import { readDbMeta } from './db-meta.js';
import { primaryIdentity, readOrCreateEpoch } from './epoch.js';
import { configArchiveExcludes, refuseInBackupMode } from './sentinel.js';
import { uploadArtifact } from './upload-artifact.js';
import { baseBackupSource, clusterSystemId, labelMissing, type BackupLabelSniffer } from './base-backup.js';
import { filesObjects, type FilesObjectsRun, type FilesObjectsStats } from './files-objects.js';
import { filesIndexEntry, readStoredFilesIndex, setPageLoader } from './read-files-index.js';

export interface BackupResult {
  setId: string;
  site: string;
  epoch: number;
  createdAt: string;
  artifacts: ArtifactEntry[];
  /** Seconds per stage: db, config, security, files, commit, total. */
  durations: Record<string, number>;
  storedBytes: number;
  /** Files as content objects (keys.filesKeyFile): what was read, what was new, what was uploaded. */
  files?: FilesObjectsStats;
}

export interface BackupOptions {
  /** Files as content objects: read every file again, whatever the cache says (`--reread`). */
  reread?: boolean;
  /** Files as content objects: store every blob again in new packs (`--repair-objects`). */
  repairObjects?: boolean;
  filestore: Filestore;
  logger: Logger;
  signal?: AbortSignal;
  now?: () => Date;
  /**
   * Called as soon as latest.json names the new set, before the local bookkeeping and the clean-up
   * of leftovers (a daemon pushes `set-committed` from here). Must not throw.
   */
  onCommitted?: (latest: CommittedLatest) => void;
  /** Told the bytes each artifact's producer yields, as they are read (a terminal's progress line, the daemon's client). */
  progress?: ProgressSink;
}

/** What the new latest.json says, and the filestore's version of it. */
export interface CommittedLatest {
  setId: string;
  epoch: number;
  seq: number;
  createdAt: string;
  committedAt: string;
  version: string;
}

interface Keys {
  recipients: string[] | null;
  signingKey: KeyObject;
  /** keys.filesKeyFile: the files go as content objects and a files index (files-objects.ts). */
  filesKey: FilesKey | null;
}

function loadKeys(config: PrimaryConfig, logger: Logger): Keys {
  const signingKey = loadSigningKeyFile(config.keys.signingKeyFile, logger);
  const filesKey = config.keys.filesKeyFile === undefined ? null : loadFilesKeyFile(config.keys.filesKeyFile, logger);
  if (config.encryption === 'none') {
    logger.warn('encryption is "none": sets are uploaded unencrypted, as the config asks');
    return { recipients: null, signingKey, filesKey };
  }
  return { recipients: loadRecipients(config.keys.recipientFile!), signingKey, filesKey };
}

/**
 * The plain files index of the newest committed set, for rebuilding the primary's files cache; null
 * when there is none to read (no set, a set of tar files). Verified as a standby verifies:
 * latest.json and the manifest by signature, the index by its signed size and SHA-256.
 */
async function newestFilesIndex(fs: Filestore, config: PrimaryConfig, keys: Keys): Promise<{ plain: AsyncIterable<Buffer>; pages: PageLoader } | null> {
  const verifyKey = createPublicKey(keys.signingKey);
  let raw: Buffer;
  try {
    raw = (await fs.getBuffer(layout.latest(config.site))).body;
  } catch {
    return null;
  }
  const latest = verifyLatest(raw, verifyKey, 'latest.json');
  const manifest = verifyManifest((await fs.getBuffer(layout.manifest(config.site, latest.setId))).body, verifyKey, `set ${latest.setId}: manifest`);
  const entry = filesIndexEntry(manifest);
  if (entry === null) return null;
  return { plain: await readStoredFilesIndex(fs, manifest, entry, keys.filesKey!), pages: setPageLoader(fs, manifest, entry, keys.filesKey!) };
}

/** Every configured directory must exist before anything is uploaded; report all that do not. */
export async function checkPaths(config: PrimaryConfig): Promise<void> {
  const problems: string[] = [];
  for (const name of ['config', 'security', 'files'] as const) {
    const dir = config.paths[name];
    if (name === 'files' && isS3Url(dir)) continue; // a bucket: its listing fails the backup, naming it
    try {
      if (!(await stat(dir)).isDirectory()) problems.push(`paths.${name}: ${dir} is not a directory`);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      problems.push(`paths.${name}: ${dir}: ${code === 'ENOENT' ? 'no such directory' : code}`);
    }
  }
  if (problems.length > 0) {
    throw new TandemError('config', 'PATH_MISSING', problems.join('; '), { hint: `fix paths in ${config.configFile}` });
  }
}

async function nextSeq(fs: Filestore, site: string): Promise<{ seq: number; committed: Set<string> }> {
  // The sequence only has to increase; ids of existing sets (committed or not) are the ground truth.
  let max = 0;
  const committed = new Set<string>();
  for (const s of await listSets(fs, site)) {
    if (s.seq > max) max = s.seq;
    if (s.committed) committed.add(s.setId);
  }
  return { seq: max + 1, committed };
}

function artifactSource(name: ArtifactName, config: PrimaryConfig, log: Logger, dbMeta: Buffer): Readable {
  if (name === 'dbmeta') return Readable.from([dbMeta]);
  if (name === 'db') {
    // Uncompressed custom format (-Z0): pg_dump's own gzip is its bottleneck; zstd does it faster
    // and better. Custom format keeps `pg_restore -j` possible on the standby.
    // A site that is one schema of a shared database (database.schema): that schema and what it
    // owns, nothing of the other schemas (db-meta.ts refused one that holds an extension).
    const schema = config.database.schema === undefined ? [] : [`--schema=${config.database.schema}`];
    return spawnSource(pgBin(config.database, 'pg_dump'), ['-Fc', '-Z0', '-w', ...schema, `--dbname=${config.database.url}`], {
      label: 'pg_dump',
      env: pgEnv(config.database),
      package: 'postgresql-client',
    });
  }
  // The BACKUP sentinel never goes into a set, even one made while it appeared (sentinel.ts).
  const exclude = name === 'config' ? configArchiveExcludes(config) : [];
  const tar = createTarStream(config.paths[name], { label: `paths.${name} (${config.paths[name]})`, exclude });
  // A file written while it was archived is normal on a live site; the set stays consistent with
  // the dump (files are write-once), so this is worth a line in the log, not a failed backup.
  tar.on('child-warning', (text: string) => log.warn({ artifact: name, tar: text }, 'files changed while being archived'));
  return tar;
}

export async function runBackup(config: PrimaryConfig, opts: BackupOptions): Promise<BackupResult> {
  const { filestore: fs, logger } = opts;
  const now = opts.now ?? (() => new Date());
  // This server's site is a standby (the BACKUP sentinel): nothing of it may become a set.
  await refuseInBackupMode(config, 'backup');
  const keys = loadKeys(config, logger);
  await checkPaths(config);
  const serverVersion = await withPg(config.database, async (c) => {
    const r = await c.query<{ v: string }>('select current_setting($1) as v', ['server_version']);
    return r.rows[0]?.v ?? 'unknown';
  });

  const lock = await acquireLock(stateFiles(config.stateDir).backupLock, 'backup', `a backup of site "${config.site}"`);
  const uploaded: string[] = [];
  let uploading: ArtifactName | null = null;
  const t0 = performance.now();
  let setId = '';
  let filesRun: FilesObjectsRun | undefined;
  try {
    const epoch = await readOrCreateEpoch(fs, config, logger);
    // Fencing (must): a promote elsewhere may happen while this backup runs. Check before every
    // upload, so a replaced primary stops at once instead of writing over the new one's sets.
    const self = { ...primaryIdentity(config), epoch: epoch.epoch };
    const checkFence = async () => {
      const current = await readEpochDoc(fs, config.site);
      if (current) assertNotFenced(current.doc, self, config.site);
    };
    const { seq, committed } = await nextSeq(fs, config.site);
    const created = now();
    setId = makeSetId(created, epoch.epoch, seq);
    const log = logger.child({ site: config.site, setId });
    log.info({ filestore: fs.description, database: redactUrl(config.database.url) }, 'backup started');

    const durations: Record<string, number> = {};
    const artifacts: ArtifactEntry[] = [];
    let dbMeta = Buffer.alloc(0);
    const filesIndex = keys.filesKey !== null;
    // WAL mode: the db artifact is a base backup of the whole cluster, which carries roles, grants
    // and settings itself (no dbmeta).
    const wal = config.database.mode === 'wal';
    const systemId = wal ? await clusterSystemId(config) : undefined;
    let sniffer: BackupLabelSniffer | undefined;
    // Order matters (must): the database before the files, so that files taken later are a
    // superset of what the dump references.
    for (const name of ARTIFACT_NAMES) {
      if (wal && name === 'dbmeta') continue;
      const t = performance.now();
      // The files archive is stored uncompressed when a sample of the files does not compress.
      const asIndex = name === 'files' && filesIndex;
      const compress = name !== 'files' || asIndex || config.compression.files === 'zstd' || (await filesCompress(config.paths.files, log));
      const file = wal && name === 'db' ? `db.base.tar.zst${keys.recipients !== null ? '.age' : ''}` : artifactFileName(name, keys.recipients !== null, compress, asIndex);
      const key = layout.artifact(config.site, setId, file);
      await checkFence(); // before any child process starts, so a fenced run leaves none behind
      opts.signal?.throwIfAborted();
      // Read after the dump, so that a role or grant the dump refers to is in it.
      if (name === 'dbmeta') dbMeta = Buffer.from(JSON.stringify(await readDbMeta(config)));
      const stages: Duplex[] = compress ? [zstdCompress({ level: config.compression.level, threads: config.compression.threads })] : [];
      // An entry a standby would refuse (a FIFO, a device ...) fails the backup here, named.
      if (name !== 'db' && name !== 'dbmeta' && !asIndex) stages.unshift(createTarCheck(config.paths[name], { label: `paths.${name} (${config.paths[name]})` }));
      // The index is also encrypted to the files key, so that this primary can read it back (files-objects.ts).
      if (keys.recipients) stages.push(createAgeEncryptStream(asIndex ? [...keys.recipients, keys.filesKey!.recipient] : keys.recipients));
      let source: Readable;
      if (asIndex) {
        filesRun = filesObjects({
          dir: config.paths.files,
          label: `paths.files (${config.paths.files})`,
          site: config.site,
          setId,
          stateDir: config.stateDir,
          filestore: fs,
          filesKey: keys.filesKey!,
          recipients: keys.recipients,
          logger: log,
          reread: opts.reread,
          repair: opts.repairObjects,
          committed,
          rebuild: () => newestFilesIndex(fs, config, keys),
          signal: opts.signal,
        });
        source = filesRun.source;
      } else if (wal && name === 'db') {
        const base = baseBackupSource(config, `tandem ${setId}`);
        sniffer = base.sniffer;
        source = base.source;
        stages.unshift(base.sniffer);
      } else source = artifactSource(name, config, log, dbMeta);
      uploaded.push(key);
      uploading = name;
      faultPoint(`before-artifact:${name}`);
      const progress = opts.progress?.begin(name, name === 'dbmeta' ? dbMeta.length : null);
      const r = await uploadArtifact({ filestore: fs, key, name, source, stages, signal: opts.signal, progress });
      uploading = null;
      faultPoint(`after-artifact:${name}`);
      durations[name] = round((performance.now() - t) / 1000);
      artifacts.push({
        name,
        kind: name === 'db' ? (wal ? 'postgres-base' : 'postgres-custom') : name === 'dbmeta' ? 'postgres-meta' : asIndex ? 'files-index' : 'tar',
        file,
        storedSize: r.storedSize,
        storedSha256: r.storedSha256,
        plainSize: r.plainSize,
        compression: compress ? 'zstd' : 'none',
        encryption: keys.recipients ? 'age' : 'none',
        ...(r.chunks ? { chunks: r.chunks } : {}),
      });
      if (wal && name === 'db' && sniffer?.label == null) throw labelMissing(setId);
      log.info({ artifact: name, plainBytes: r.plainSize, storedBytes: r.storedSize, seconds: durations[name], ...(asIndex ? { objects: filesRun!.stats } : {}) }, 'artifact uploaded');
    }

    // Commit (must): every artifact is uploaded before the manifest, the manifest before latest.json.
    const tc = performance.now();
    const manifest: Manifest = {
      format: 'tandem-manifest',
      version: wal ? 3 : filesIndex ? 2 : 1,
      setId,
      site: config.site,
      epoch: epoch.epoch,
      seq,
      createdAt: created.toISOString(),
      completedAt: now().toISOString(),
      primaryHost: agentName(config),
      toolVersion: TOOL_VERSION,
      database: {
        name: databaseName(config.database.url),
        serverVersion,
        ...(config.database.schema === undefined ? {} : { schema: config.database.schema }),
        ...(wal ? { mode: 'wal' as const, systemId, startLsn: sniffer!.label!.startLsn, timeline: sniffer!.label!.timeline, startWalFile: sniffer!.label!.startWalFile } : {}),
      },
      encryption: { scheme: keys.recipients ? 'age-x25519' : 'none', recipients: keys.recipients ?? [] },
      artifacts,
    };
    const manifestBytes = signManifest(manifest, keys.signingKey);
    opts.signal?.throwIfAborted();
    await checkFence();
    uploaded.push(layout.manifest(config.site, setId));
    faultPoint('before-manifest');
    await fs.putBuffer(layout.manifest(config.site, setId), manifestBytes, { contentType: 'application/json' });
    faultPoint('manifest-written');
    await checkFence();
    faultPoint('before-latest');
    const latestDoc = {
      format: 'tandem-latest' as const,
      version: 1 as const,
      site: config.site,
      setId,
      epoch: epoch.epoch,
      seq,
      createdAt: manifest.createdAt,
      committedAt: now().toISOString(),
      manifestSha256: createHash('sha256').update(manifestBytes).digest('hex'),
    };
    const latestInfo = await fs.putBuffer(layout.latest(config.site), signLatest(latestDoc, keys.signingKey), { contentType: 'application/json' });
    faultPoint('latest-written');
    try {
      opts.onCommitted?.({ setId, epoch: epoch.epoch, seq, createdAt: latestDoc.createdAt, committedAt: latestDoc.committedAt, version: latestInfo.version });
    } catch (err) {
      log.warn({ err }, 'after-commit callback failed (the set is committed)');
    }
    durations.commit = round((performance.now() - tc) / 1000);
    durations.total = round((performance.now() - t0) / 1000);
    const storedBytes = artifacts.reduce((n, a) => n + a.storedSize, 0);
    log.info({ seconds: durations.total, storedBytes }, 'backup committed');
    if (filesRun) await filesRun.commitCache().catch((err: unknown) => log.warn({ err }, 'could not record the files cache (the next backup rebuilds it)'));
    const storedTotal = storedBytes + (filesRun?.stats.storedBytes ?? 0);
    const result: BackupResult = { setId, site: config.site, epoch: epoch.epoch, createdAt: manifest.createdAt, artifacts, durations, storedBytes: storedTotal, ...(filesRun ? { files: filesRun.stats } : {}) };
    await writeLastBackup(config.stateDir, { outcome: 'ok', at: now().toISOString(), ...result });
    faultPoint('recorded');
    await removeLeftovers(fs, config.site, { setId, epoch: epoch.epoch, seq }, log);
    return result;
  } catch (err) {
    // A failed run commits nothing: remove what it uploaded, manifest first (if latest.json failed
    // after the manifest went up, the set is withdrawn rather than left committed but unannounced).
    // Best effort: a leftover without a manifest is harmless and removed by the next backup.
    await filesRun?.discardCache().catch(() => undefined);
    let kept = 0;
    for (const key of uploaded.reverse()) {
      await fs.delete(key).catch(() => kept++);
    }
    await writeLastBackup(config.stateDir, { outcome: 'failed', at: now().toISOString(), setId, error: (err as Error).message }).catch(() => undefined);
    const sig = opts.signal ? interruptedBy(opts.signal) : null;
    if (sig !== null) throw new Interrupted(sig, interruptedCleanup(setId, uploading, uploaded.length, kept), { cause: err });
    throw err;
  } finally {
    await lock.release();
  }
}

/** Sets older (compareSets) than the one just committed that never got a manifest: crashed or killed runs. */
async function removeLeftovers(fs: Filestore, site: string, current: SetRef, log: Logger): Promise<void> {
  for (const s of await listSets(fs, site)) {
    if (s.committed || compareSets(s, current) >= 0) continue;
    log.info({ leftover: s.setId, objects: s.objects.length }, 'removing uncommitted leftover of an earlier, interrupted backup');
    for (const o of s.objects) await fs.delete(o.key).catch((err: unknown) => log.warn({ err, key: o.key }, 'could not remove leftover'));
  }
}

/** What an interrupted backup cleaned up, in words. */
function interruptedCleanup(setId: string, during: ArtifactName | null, begun: number, kept: number): string {
  if (setId === '' || begun === 0) return 'the backup was aborted before it uploaded anything; nothing was committed';
  const removed = `the ${begun} object(s) it had begun uploading for set ${setId} were removed${kept > 0 ? `, but for ${kept} that the next backup removes` : ''}`;
  return `the backup was aborted${during ? ` during the ${during} artifact` : ''}; nothing was committed, and ${removed}`;
}

const round = (s: number) => Math.round(s * 1000) / 1000;

/** Whether to compress the files archive (compression.files: auto), from a sample of the files. */
async function filesCompress(dir: string, log: Logger): Promise<boolean> {
  const v = await probeCompressibility(dir);
  log.debug({ sampledBytes: v.sampled, deflatedBytes: v.deflated, sampledFiles: v.files, compress: v.compress }, 'files compressibility sampled');
  return v.compress;
}
