import { TandemError, agentIdPath, loadStandbyConfig, siteOption, openFilestore, requireString, type Command } from '@tandem/shared';
import { runPromote } from '../promote/run-promote.js';

export const promoteCommand: Command = {
  name: 'promote',
  summary: 'turn this standby into the primary',
  help: `Usage: tandem-standby promote --config FILE [--site NAME] [--force] [--json]

Preflight, each check reported:
  - the last apply is complete (an unfinished one is refused even with --force: run apply);
  - the newest committed set is applied (else: how many sets and seconds of history are lost);
  - the primary's heartbeat is stale (older than heartbeatStaleAfter, default 2m) and names the
    newest committed set: a fresh one means the old primary may be alive, and promoting would
    make two primaries; none at all, or one older than the newest set, means it cannot be told.
Then fences the old primary by raising the epoch in the filestore (a conditional write: of two
servers promoting at once exactly one wins) naming this server's agent id (stateDir/agent-id),
removes the BACKUP sentinel, records the promotion in the state dir (after which apply refuses to
run here) and runs restartCommand with TANDEM_MODE=primary. A promote that would name the agent
epoch.json names already (a state dir copied from the primary) is refused, even with --force.
To back up from here, run tandem-primary with the same stateDir (the default), or copy its
agent-id file into tandem-primary's stateDir: epoch.json names the primary by that id.

A filestore without tandem-filestore.json (see \`tandem-primary init --help\`) is refused; with
--force the promote goes on without raising the epoch: nothing is written to that filestore.

Options:
  --config FILE  the standby agent's config (required)
  --site NAME    the site to promote, of a config with several (sites:,
                 sitesDir:); not needed when the config holds one site
  --force        promote even though a check failed (history unapplied, nothing applied, a
                 fresh, missing or outdated primary heartbeat, the filestore unreachable); says
                 what it overrode
  --json         print the promotion record as JSON

Exit status: 0 promoted (or already); 1 refused or failed; 2 bad config or usage;
75 an apply is running.`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby promote'), siteOption(values), 'tandem-standby promote');
    const filestore = openFilestore(config.filestore.location);
    try {
      const r = await runPromote(config, { filestore, logger, force: values.force === true });
      if (values.json === true) {
        out(JSON.stringify({ status: r.status, ...r.promoted, checks: r.checks }));
      } else if (r.status === 'already-promoted') {
        out(`site "${config.site}" was already promoted at ${r.promoted.promotedAt}; nothing to do`);
      } else {
        for (const c of r.checks) out(`  ${c.ok ? 'ok  ' : 'FAIL'}  ${c.detail}`);
        for (const c of r.overridden) out(`  overridden by --force: ${c.name}`);
        const epoch = r.epoch ? `epoch ${r.epoch.epoch}, as ${r.epoch.primaryHost}` : 'epoch NOT raised: the old primary is not fenced';
        out(`promoted site "${config.site}" to primary (${epoch}; it holds set ${r.promoted.appliedSetId ?? '(none)'})`);
        if (r.epoch?.primaryId !== undefined) {
          out(`epoch.json names this server by agent id ${r.epoch.primaryId}: run tandem-primary here with stateDir ${config.stateDir}, or copy ${agentIdPath(config.stateDir)} into its stateDir`);
        }
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
