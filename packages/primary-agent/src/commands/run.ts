import { loadPrimaryConfig, loadToken, openFilestore, requireString, type Command } from '@tandem/shared';
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
    let stopRequested: string | null = null;
    let daemon: PrimaryDaemon | null = null;
    let wake: () => void = () => undefined;
    const stopped = new Promise<void>((resolve) => {
      wake = resolve;
    });
    const onSignal = (sig: NodeJS.Signals) => {
      if (stopRequested !== null) {
        logger.warn({ signal: sig }, 'second signal while shutting down: still waiting for the running backup to clean up');
        return;
      }
      stopRequested = sig;
      wake();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const filestore = openFilestore(config.filestore.url);
    try {
      daemon = new PrimaryDaemon({ config, filestore, logger, token });
      await daemon.start();
      await stopped;
      await daemon.stop(`signal ${stopRequested}`);
      // Everything the daemon opened is closed now. Should anything else still hold the event loop
      // (a child process a library failed to reap), a daemon must still exit: the unref'd timer
      // only fires in that case, with the exit code already set by the CLI frame.
      setTimeout(() => {
        logger.warn('handles still open 5 s after shutdown; exiting anyway');
        process.exit();
      }, 5_000).unref();
      return 0;
    } catch (err) {
      await daemon?.stop('start-up failed').catch(() => undefined);
      throw err;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      await filestore.close();
    }
  },
};
