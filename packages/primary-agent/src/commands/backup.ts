import { loadPrimaryConfig, openFilestore, requireString, type Command } from '@tandem/shared';
import { runBackup } from '../backup/run-backup.js';

export const backupCommand: Command = {
  name: 'backup',
  summary: 'make one backup set now and commit it to the filestore',
  help: `Usage: tandem-primary backup --config FILE [--json]

Dumps the database (pg_dump, custom format), archives the config, security and files
directories, compresses (zstd), encrypts (age) and uploads each artifact, then commits the set
by writing its signed manifest and moving latest.json to it. On any failure nothing is
committed and the exit status is non-zero.

Options:
  --config FILE  the primary agent's config (required)
  --json         print {"setId", "artifacts", "durations"} as JSON instead of the set id

Exit status: 0 committed; 1 failed; 2 bad config or usage; 75 another backup is running.`,
  options: { config: { type: 'string', short: 'c' }, json: { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadPrimaryConfig(requireString(values, 'config', 'tandem-primary backup'));
    const filestore = openFilestore(config.filestore.url);
    const ac = new AbortController();
    const stop = (sig: NodeJS.Signals) => {
      logger.warn({ signal: sig }, 'interrupted: aborting the backup; nothing will be committed');
      ac.abort(new Error(`interrupted by ${sig}`));
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    try {
      const r = await runBackup(config, { filestore, logger, signal: ac.signal });
      if (values.json === true) {
        out(JSON.stringify({ setId: r.setId, site: r.site, epoch: r.epoch, createdAt: r.createdAt, storedBytes: r.storedBytes, artifacts: r.artifacts, durations: r.durations }));
      } else {
        out(r.setId);
      }
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      await filestore.close();
    }
  },
};
