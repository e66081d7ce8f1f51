import { interruptedBy, loadPrimaryConfig, loadToken, openFilestore, requireString, withInterrupts, type Command } from '@tandem/shared';
import { PrimaryDaemon } from '../daemon/daemon.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'run the always-on primary agent: scheduled backups, retention, push to standbys',
  help: `Usage: tandem-primary run --config FILE

Runs until SIGTERM or SIGINT:
  - backs up on \`schedule\` (cron, default "0 3 * * *") in \`timezone\` (default: the machine's);
    a run missed while the daemon was down (the last successful backup is older than the most
    recent scheduled time) happens at start-up; a failed scheduled run is retried after 1, 5
    and 15 minutes unless the next scheduled run comes first;
  - after each backup: pushes \`set-committed\` to the connected standbys, then applies the
    retention rules (see \`tandem-primary prune --help\`);
  - writes <site>/heartbeat.json every \`heartbeatInterval\` (signed, like latest.json);
  - serves on \`server.listen\` (default 127.0.0.1:7070):
      /healthz     200 "ok" (no token)
      /status      JSON: last backup, next run, connected standbys and their lag
                   (monitoring or control token)
      /metrics     Prometheus text (monitoring or control token)
      /v1/backup   POST: a backup now; \`tandem-primary backup\` uses it while the daemon runs
                   (control token)
      /v1/stream   WebSocket push channel, only for the standbys listed under \`standbys:\`,
                   each with its own token
    Tokens are sent as "Authorization: Bearer <token>": the control token from
    \`server.tokenFile\` (or TANDEM_TOKEN), the monitoring token from \`server.readTokenFile\`,
    each standby's from its \`standbys[].tokenFile\`; all must differ.
  - stops backing up at once if the filestore's epoch rises above its own (another server was
    promoted): tandem_fenced becomes 1 and \`onFenced\` runs;
  - answers a listed standby's \`tandem-standby switchover\`: runs \`onFenced\` (stop the site's writes),
    takes a final backup and holds (no backups) until the standby has promoted (then fenced) or
    the switchover is called off (then \`onResume\` runs and the schedule resumes); a standby that
    disconnects before it was allowed to promote calls it off at once. Both
    \`onFenced\` and \`onResume\` must be configured for a switchover to be accepted.
On SIGTERM/SIGINT a running backup is aborted (nothing is committed) and the daemon exits 0.
stateDir/daemon.json {pid, listen, startedAt} exists while it runs.

Options:
  --config FILE  the primary agent's config (required)

Exit status: 0 stopped by a signal; 1 failed to start; 2 bad config; 75 a daemon already runs.`,
  options: { config: { type: 'string', short: 'c' } },
  async run({ values, logger }) {
    const config = loadPrimaryConfig(requireString(values, 'config', 'tandem-primary run'));
    const token = loadToken({ tokenFile: config.server.tokenFile, key: 'server.tokenFile', logger });
    // Signals are caught from here on, so that one arriving during the start-up is a clean stop too.
    return withInterrupts(
      logger,
      'daemon',
      async (signal) => {
        const filestore = openFilestore(config.filestore.location);
        let daemon: PrimaryDaemon | null = null;
        try {
          daemon = new PrimaryDaemon({ config, filestore, logger, token });
          await daemon.start();
          await new Promise<void>((resolve) => {
            if (signal.aborted) resolve();
            else signal.addEventListener('abort', () => resolve(), { once: true });
          });
          await daemon.stop(`signal ${interruptedBy(signal)}`);
          return 0;
        } catch (err) {
          await daemon?.stop('start-up failed').catch(() => undefined);
          throw err;
        } finally {
          await filestore.close();
        }
      },
      // The daemon logs its shutdown; a second signal only says what it waits for.
      { message: null, again: { log: 'second signal while shutting down: still waiting for the running backup to clean up' } },
    );
  },
};
