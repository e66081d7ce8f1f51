import { isAbsolute, join, resolve } from 'node:path';
import {
  TandemError,
  controlSystemId,
  isTandemError,
  loadPrimaryConfig,
  loadRecipients,
  loadSigningKeyFile,
  openFilestore,
  requireFilestoreMarker,
  requireString,
  siteOption,
  storeWalFile,
  writeFileAtomic,
  type Command,
  type Logger,
  type PrimaryConfig,
} from '@tandem/shared';
import { primaryIdentity, readOrCreateEpoch } from '../backup/epoch.js';

/**
 * `archive_command` of a site in WAL mode. PostgreSQL runs it, in the cluster's data directory,
 * for every WAL file (segment, partial segment, timeline or backup history) once it is complete,
 * and keeps the file until the command exits 0. So this command exits 0 only when the file is in
 * the filestore, committed by its signed document, or was already there with the same content;
 * anything else (the filestore unreachable, this server fenced, a different file already stored
 * under the name) exits non-zero and PostgreSQL retries later, keeping the WAL: nothing is lost
 * while the agent or the filestore is down.
 *
 * Fencing (must): the epoch is read before every file. A primary that another server replaced
 * stores nothing more; the refusal is logged (PostgreSQL's log, where archive_command's output
 * goes), recorded in wal-archive.json (the daemon's /status and metrics), and visible in
 * pg_stat_archiver's failed_count.
 */
export interface WalArchiveRecord {
  /** The last file stored (or found stored), and when. */
  last?: { name: string; at: string; epoch: number; status: 'stored' | 'already-stored' };
  /** The last refusal, and when; cleared by the next success. */
  failed?: { name: string; at: string; code: string; error: string; fenced: boolean };
}

export const walArchiveFile = (stateDir: string): string => join(stateDir, 'wal-archive.json');

async function record(config: PrimaryConfig, update: WalArchiveRecord): Promise<void> {
  await writeFileAtomic(walArchiveFile(config.stateDir), `${JSON.stringify(update)}\n`).catch(() => undefined);
}

export async function walPush(config: PrimaryConfig, path: string, name: string, logger: Logger, opts: { dataDir?: string } = {}): Promise<'stored' | 'already-stored'> {
  if (config.database.mode !== 'wal') {
    throw new TandemError('config', 'WAL_MODE_OFF', `site "${config.site}" is not in WAL mode (database.mode in ${config.configFile} is "${config.database.mode}"); nothing was stored`, {
      hint: 'set database.mode: wal, or remove archive_command from postgresql.conf',
    });
  }
  const dataDir = opts.dataDir ?? process.cwd();
  const filestore = openFilestore(config.filestore.location);
  try {
    await requireFilestoreMarker(filestore, { url: config.filestore.url });
    const epoch = await readOrCreateEpoch(filestore, config, logger);
    const systemId = await controlSystemId(dataDir).catch((err: unknown) => {
      throw new TandemError('config', 'WAL_DATA_DIR', `cannot read the cluster's system id from ${join(dataDir, 'global/pg_control')}: ${(err as Error).message}`, {
        hint: 'PostgreSQL runs archive_command in the data directory; run by hand, pass --data-dir',
      });
    });
    const recipients = config.encryption === 'none' ? null : loadRecipients(config.keys.recipientFile!);
    const r = await storeWalFile({
      filestore,
      site: config.site,
      path: isAbsolute(path) ? path : resolve(dataDir, path),
      name,
      epoch: epoch.epoch,
      primaryId: primaryIdentity(config).id,
      systemId,
      recipients,
      signingKey: loadSigningKeyFile(config.keys.signingKeyFile),
    });
    await record(config, { last: { name, at: new Date().toISOString(), epoch: epoch.epoch, status: r.status } });
    return r.status;
  } catch (err) {
    const fenced = isTandemError(err) && err.kind === 'fenced';
    await record(config, {
      failed: { name, at: new Date().toISOString(), code: isTandemError(err) ? err.code : 'ERROR', error: (err as Error).message, fenced },
    });
    throw err;
  } finally {
    await filestore.close();
  }
}

export const walPushCommand: Command = {
  name: 'wal-push',
  summary: "PostgreSQL's archive_command in WAL mode: store one WAL file in the filestore",
  help: `Usage: tandem-primary wal-push --config FILE [--site NAME] [--data-dir DIR] PATH NAME

The archive_command of a site in WAL mode (database.mode: wal), in postgresql.conf:

  archive_mode = on
  archive_command = 'tandem-primary wal-push --config /etc/tandem/primary.yml %p %f'

Stores the WAL file PATH (PostgreSQL's %p, relative to the data directory) under NAME (%f) in
the filestore: zstd, encrypted to the site's recipients, and committed by a document signed with
the signing key that names the site, the cluster (system id), the epoch and the file's SHA-256.
A standby replays only files whose document verifies.

Exit 0 only when the file is stored (or was already stored with the same content): PostgreSQL
keeps the file, and retries, until then. Non-zero when the filestore cannot be reached, when this
server has been fenced (another server was promoted: nothing more is stored, by design; see
\`tandem-primary run\`'s /status and the metric tandem_wal_archive_failing), or when a different
file is already stored under NAME. The outcome is recorded in the state directory
(wal-archive.json) for the daemon's /status and metrics.

Options:
  --config FILE    the primary agent's config (required)
  --site NAME      the site, of a config with several
  --data-dir DIR   the cluster's data directory (default: the working directory, which is where
                   PostgreSQL runs archive_command)

Exit status: 0 stored; 1 not stored (PostgreSQL retries); 2 bad config or usage; 4 fenced.`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, 'data-dir': { type: 'string' } },
  positionals: { min: 2, max: 2 },
  async run({ values, positionals, logger, out }) {
    const config = loadPrimaryConfig(requireString(values, 'config', 'tandem-primary wal-push'), siteOption(values), 'tandem-primary wal-push');
    const [path, name] = positionals as [string, string];
    const dataDir = typeof values['data-dir'] === 'string' ? resolve(values['data-dir']) : undefined;
    const status = await walPush(config, path, name, logger, { dataDir });
    out(`${name}: ${status}`);
    return 0;
  },
};
