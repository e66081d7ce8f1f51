import { TandemError, loadStandbyConfig, openFilestore, requireString, type Command } from '@tandem/shared';
import { runPromote } from '../promote/run-promote.js';

export const promoteCommand: Command = {
  name: 'promote',
  summary: 'turn this standby into the primary',
  help: `Usage: tandem-standby promote --config FILE [--force] [--json]

Preflight: refuses while an apply is unfinished (run apply to finish or roll it back), and
refuses when the filestore holds committed sets newer than the applied one, saying how many and
how many seconds of primary history they span. Then removes the BACKUP sentinel, records the
promotion in the state dir (after which apply refuses to run here) and runs restartCommand with
TANDEM_MODE=primary.

Options:
  --config FILE  the standby agent's config (required)
  --force        promote even though history is unapplied, nothing was ever applied, or the
                 filestore cannot be reached to check
  --json         print the promotion record as JSON

Exit status: 0 promoted (or already); 1 refused or failed; 2 bad config or usage;
75 an apply is running.`,
  options: { config: { type: 'string', short: 'c' }, force: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby promote'));
    const filestore = openFilestore(config.filestore.url);
    try {
      const r = await runPromote(config, { filestore, logger, force: values.force === true });
      if (values.json === true) {
        out(JSON.stringify({ status: r.status, ...r.promoted }));
      } else if (r.status === 'already-promoted') {
        out(`site "${config.site}" was already promoted at ${r.promoted.promotedAt}; nothing to do`);
      } else {
        out(`promoted site "${config.site}" to primary (it holds set ${r.promoted.appliedSetId ?? '(none)'})`);
      }
      if (r.restartError !== undefined) {
        const msg = r.restartError instanceof Error ? r.restartError.message : String(r.restartError);
        throw new TandemError('external', 'RESTART_FAILED', `the site is promoted (sentinel removed, recorded), but ${msg}`, {
          hint: 'restart the site by hand once the restart command is fixed',
        });
      }
    } finally {
      await filestore.close();
    }
  },
};
