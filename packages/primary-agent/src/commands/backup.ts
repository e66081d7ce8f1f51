import { FencedError, interruptedBy, isTandemError, loadPrimaryConfig, onFencedEnv, siteOption, loadToken, openFilestore, requireFilestoreMarker, progressEnabled, requireString, terminalProgress, withInterrupts, type Command, type Logger, type PrimaryConfig } from '@tandem/shared';
import { runBackup, type BackupResult } from '../backup/run-backup.js';
import { DaemonUnreachable, findDaemon, requestBackup } from '../daemon/control.js';
import { runHook } from '../hooks.js';

/** What `backup` prints, the same whether the set was made here or by the daemon. */
export function formatBackupResult(r: BackupResult, json: boolean): string {
  if (!json) return r.setId;
  return JSON.stringify({ setId: r.setId, site: r.site, epoch: r.epoch, createdAt: r.createdAt, storedBytes: r.storedBytes, artifacts: r.artifacts, durations: r.durations, ...(r.files ? { files: r.files } : {}) });
}

async function runLocal(config: PrimaryConfig, logger: Logger, reread: boolean, repairObjects = false): Promise<BackupResult> {
  const filestore = openFilestore(config.filestore.location);
  try {
    await requireFilestoreMarker(filestore, { url: config.filestore.url });
    // A second Ctrl-C ends the process at once, leaving the upload's clean-up to the next backup.
    const progress = terminalProgress('backup');
    try {
      return await withInterrupts(logger, 'backup', (signal) => runBackup(config, { filestore, logger, signal, progress, reread, repairObjects }), {
        message: 'interrupted: aborting the backup; nothing will be committed',
        again: 'default',
        cleanedUp: 'the backup was aborted; nothing was committed',
      });
    } finally {
      progress.close();
    }
  } catch (err) {
    // Another server is the primary now: stop this site's writes, as the daemon would (not when
    // this server never was the primary: its site is not the primary's).
    if (isTandemError(err) && err.kind === 'fenced' && config.onFenced && !(err instanceof FencedError && err.neverPrimary)) {
      const fence = err instanceof FencedError ? err : null;
      const r = await runHook(config.onFenced, onFencedEnv({ reason: 'fenced', site: config.site, epoch: fence?.epoch ?? null, filestoreEpoch: fence?.filestoreEpoch ?? null }));
      if (r.ok) logger.info({ onFenced: config.onFenced }, 'onFenced ran');
      else logger.error({ onFenced: config.onFenced, error: r.error }, 'onFenced failed');
    }
    throw err;
  } finally {
    await filestore.close();
  }
}

/**
 * The running daemon's result, or null when there is no daemon (or it cannot be reached, with a
 * warning): the caller then backs up locally.
 */
async function viaDaemon(config: PrimaryConfig, logger: Logger): Promise<BackupResult | null> {
  const daemon = await findDaemon(config.stateDir);
  if (daemon === null) return null;
  let token: string;
  try {
    token = loadToken({ tokenFile: config.server.tokenFile, key: 'server.tokenFile', logger });
  } catch (err) {
    logger.warn({ daemonPid: daemon.pid, err }, 'a daemon is running, but no token to talk to it: backing up locally (its standbys get no push)');
    return null;
  }
  logger.info({ daemonPid: daemon.pid, listen: daemon.listen }, 'a tandem-primary daemon is running: it makes the backup');
  // The daemon's progress, drawn here (on a terminal only: else the daemon is not asked for it).
  const progress = terminalProgress('backup (daemon)');
  try {
    return await withInterrupts(
      logger,
      'wait for the daemon',
      (signal) => {
        // Ctrl-C stops waiting; the daemon carries on with the backup (as a scheduled run would).
        signal.addEventListener(
          'abort',
          () => {
            const sig = interruptedBy(signal);
            if (sig === null) return;
            progress.close();
            process.stderr.write(`tandem-primary: ${sig}: no longer waiting; the daemon (pid ${daemon.pid}) finishes the backup; see \`tandem-primary list\`\n`);
            process.kill(process.pid, sig); // die of the signal, as without a handler (it ran once)
          },
          { once: true },
        );
        return requestBackup(daemon, token, { onProgress: progressEnabled() ? progress.show : undefined, tls: config.server.tls });
      },
      { message: null, again: 'default' },
    );
  } catch (err) {
    if (err instanceof DaemonUnreachable) {
      logger.warn({ daemonPid: daemon.pid, err }, 'the daemon cannot be reached: backing up locally instead');
      return null;
    }
    throw err;
  } finally {
    progress.close();
  }
}

export const backupCommand: Command = {
  name: 'backup',
  summary: 'make one backup set now and commit it to the filestore',
  help: `Usage: tandem-primary backup --config FILE [--site NAME] [--json] [--local] [--reread] [--repair-objects]

Dumps the database (pg_dump, custom format), archives the config, security and files
directories, compresses (zstd), encrypts (age) and uploads each artifact, then commits the set
by writing its signed manifest and moving latest.json to it. On any failure nothing is
committed and the exit status is non-zero.

While \`tandem-primary run\` runs for this config (stateDir/daemon.json names it), the daemon
makes the backup (POST /v1/backup with the server token), so that its standbys get the push
and two backups never overlap; the output is the same. If the daemon cannot be reached, the
backup runs here, with a warning.

On a terminal, a progress line shows each artifact as it is read (bytes, rate), the daemon's
when the daemon makes the backup; not when stderr is not a terminal or TANDEM_LOG_FORMAT=json.
Ctrl-C (or SIGTERM) aborts a backup made here: what it uploaded is removed, nothing is
committed, and the last line says so (exit 130, or 143 for SIGTERM). Waiting on the daemon,
Ctrl-C only stops waiting: the daemon finishes the backup.

The filestore must have been created by \`tandem-primary init\` (its tandem-filestore.json): one
without it is refused, exit 2, saying how to create it; a missing filestore directory (a file
system that is not mounted) is never created.

Refused (exit 1) while the site's BACKUP sentinel exists (paths.sentinel, default
<paths.config>/BACKUP): the site on this server is a standby. The sentinel is never archived.

Refused (exit 4) when epoch.json names another server as the primary: a replaced primary is told
the epoch it held and the one that replaced it, and runs onFenced; a server that never was the
site's primary (its agent id never named) is told so, and onFenced does not run.

Options:
  --config FILE  the primary agent's config (required)
  --site NAME    the site to back up, of a config with several (sites:, sitesDir:); not
                 needed when the config holds one site
  --json         print {"setId", "artifacts", "durations"} as JSON instead of the set id
  --local        back up in this process even while the daemon runs
  --reread       with a files key (keys.filesKeyFile): read every file again, not only those
                 whose size, mtime or inode changed (implies --local)
  --repair-objects  with a files key: store every file's content again in new objects,
                 whatever the filestore holds (after \`tandem-standby verify --read-data\` found
                 an object missing or damaged; the next sets use the new ones) (implies --local)

Exit status: 0 committed; 1 failed (or refused: a standby's site); 2 bad config or usage; 4 fenced (or not the site's primary); 75 another backup is running;
130/143 interrupted by SIGINT/SIGTERM (nothing committed).`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, json: { type: 'boolean' }, local: { type: 'boolean' }, reread: { type: 'boolean' }, 'repair-objects': { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadPrimaryConfig(requireString(values, 'config', 'tandem-primary backup'), siteOption(values), 'tandem-primary backup');
    const reread = values.reread === true;
    const repair = values['repair-objects'] === true;
    const r = (values.local === true || reread || repair ? null : await viaDaemon(config, logger)) ?? (await runLocal(config, logger, reread, repair));
    out(formatBackupResult(r, values.json === true));
  },
};
