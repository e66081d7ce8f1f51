import { MarkerGatedFilestore, holdHangupsUntilServing, interruptedBy, loadPrimarySites, loadToken, openFilestore, requireString, withInterrupts, type Command } from '@tandem/shared';
import { PrimaryHost } from '../daemon/host.js';

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
                   (monitoring or control token); with several sites {"sites": {NAME: ...}},
                   and ?site=NAME that site's alone
      /metrics     Prometheus text (monitoring or control token); with several sites every
                   series carries site="NAME", and tandem_site_running{site} says which run
      /            the status page for a browser: backups, the age of the newest set and each
                   standby's lag over the last 24 h, what is wrong (the tokens /status takes;
                   a login form, or /?token=TOKEN once, sets a read-only session cookie)
      /status/history  JSON the page draws from: 24 h of samples, backups, problems (as /status)
      /v1/backup   POST: a backup now; \`tandem-primary backup\` uses it while the daemon runs
                   (control token); ?site=NAME says which site (required with several)
      /v1/stream   WebSocket push channel, only for the standbys listed under \`standbys:\`,
                   each with its own token; one connection (?mux=1) carries several sites
    Tokens are sent as "Authorization: Bearer <token>": the control token from
    \`server.tokenFile\` (or TANDEM_TOKEN), the monitoring token from \`server.readTokenFile\`,
    each standby's from its \`standbys[].tokenFile\`; all must differ.
    With \`server.tls\` (certFile, keyFile, optional clientCaFile) it serves HTTPS and WSS only;
    with clientCaFile every client must also present a certificate that CA issued (mutual TLS).
    SIGHUP (\`systemctl reload tandem-primary\` under the unit), or a change to those files,
    reloads them for new connections; a reload that fails keeps the certificate in use and is
    logged.
  - stops backing up at once if the filestore's epoch rises above its own (another server was
    promoted): tandem_fenced becomes 1 and \`onFenced\` runs;
  - answers a listed standby's \`tandem-standby switchover\`: runs \`onFenced\` (stop the site's writes),
    takes a final backup and holds (no backups) until the standby has promoted (then fenced) or
    the switchover is called off (then \`onResume\` runs and the schedule resumes); a standby that
    disconnects before it was allowed to promote calls it off at once. Both
    \`onFenced\` and \`onResume\` must be configured for a switchover to be accepted.
On SIGTERM/SIGINT a running backup is aborted (nothing is committed), a last heartbeat.json saying
"stopped" is written (a standby's promote then need not wait for it to go stale) and the daemon
exits 0.
stateDir/daemon.json {pid, listen, startedAt} exists while it runs.

A filestore without tandem-filestore.json (see \`tandem-primary init --help\`), or one that cannot
be read, is logged at start; the daemon runs on, writes nothing to it, and checks again at every
heartbeat and backup until it is there.

A config of several sites (sites:, sitesDir:) is served by this one process: each site has its
own schedule, backups, heartbeat, fencing, standbys' channels and stateDir (daemon.json, lock);
the server, its tokens and the standbys are shared, and at most \`concurrency\` (default 2)
backups run at once across the sites (the others wait for a slot; the log says so). The status
page (/) shows one site: /?site=NAME, else the first.

Options:
  --config FILE  the primary agent's config (required)

Refuses to start (exit 2) while the site's BACKUP sentinel exists (paths.sentinel, default
<paths.config>/BACKUP): the site on this server is a standby, and a backup of it would become the
newest set; each backup, scheduled or requested, checks it again. With several sites, a site
whose start is refused (or fails) is logged and shown in /status, and the others run: the daemon
exits with that refusal's status only when no site could start.

Exit status: 0 stopped by a signal; 1 failed to start; 2 bad config, or the site here is a
standby; 75 a temporary failure: a daemon already runs, or the HTTP port (server.listen) is taken.`,
  options: { config: { type: 'string', short: 'c' } },
  async run({ values, logger }) {
    const { sites, concurrency } = loadPrimarySites(requireString(values, 'config', 'tandem-primary run'));
    // server, standbys, filestore and heartbeatInterval are top-level keys: the same for every site.
    const config = sites[0]!;
    const token = loadToken({ tokenFile: config.server.tokenFile, key: 'server.tokenFile', logger });
    const releaseHangups = holdHangupsUntilServing(logger);
    // Signals are caught from here on, so that one arriving during the start-up is a clean stop too.
    return withInterrupts(
      logger,
      'daemon',
      async (signal) => {
        // The filestore's marker is read once, at start (not awaited: the daemon serves first);
        // until it is there, every filestore operation of the daemon fails with why, and tries again.
        const filestore = new MarkerGatedFilestore(openFilestore(config.filestore.location), { url: config.filestore.url });
        void filestore.checkAtStart(logger, 'nothing is backed up and no heartbeat is written until it is; every heartbeat and backup checks again');
        let daemon: PrimaryHost | null = null;
        try {
          daemon = new PrimaryHost({ sites, concurrency, filestore, logger, token });
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
          releaseHangups();
        }
      },
      // The daemon logs its shutdown; a second signal only says what it waits for.
      { message: null, again: { log: 'second signal while shutting down: still waiting for the running backup to clean up' } },
    );
  },
};
