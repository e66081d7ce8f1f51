import { MarkerGatedFilestore, TandemError, agentName, holdHangupsUntilServing, loadStandbyConfig, openFilestore, parseDuration, requireString, type Command } from '@tandem/shared';
import { StandbyDaemon } from '../daemon/daemon.js';
import { loadDaemonToken, loadReadToken } from '../daemon/daemon-info.js';
import { runUntilStopped } from '../daemon/lifecycle.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'the standby daemon: apply what the primary commits (push and polling), serve /status and /metrics',
  help: `Usage: tandem-standby run --config FILE [--stop-grace DURATION]

Runs until stopped (SIGTERM/SIGINT), keeping this site a standby in backup mode:

- At start: refuses if promote ran here (promoted.json: this server is the primary now), and on
  the site's primary (epoch.json names this state directory's agent id, or a tandem-primary
  daemon or backup runs with it; checked again before every apply); writes the BACKUP sentinel; finishes or rolls back an interrupted apply (the journal), as apply does.
- Applies the newest committed set whenever the primary commits one: at once on a push over the
  WebSocket (primary.url, /v1/stream), and by polling latest.json with a conditional GET every
  pollInterval (±10% jitter; an idle standby makes exactly one conditional GET per poll, no LIST).
  One apply at a time; never the same set twice, never an older one. After each apply it writes
  <site>/standbys/<standbyId>.json to the filestore (retention keeps that set) and reports
  \`applied\` to the primary.
- Filestore errors and a lost push channel are retried with capped, jittered exponential backoff and
  shown in /status and /metrics; the daemon does not exit for them.
- HTTP on server.listen: GET /healthz (no auth), /status (JSON) and /metrics (Prometheus), both
  with \`Authorization: Bearer <token>\`: the monitoring token (server.readTokenFile), or this
  standby's own token for the primary (primary.tokenFile). Without any token, /status and /metrics
  are served without auth, and only on a loopback address. With server.tls: HTTPS only.
  The status page for a browser at / (the lag over the last 24 h, the sets applied, the last
  apply's stages, the push channel, what is wrong) and the JSON it draws from, /status/history,
  take what /status takes; a login form, or /?token=TOKEN once, sets a read-only session cookie.
- primary.url wss:// (or https://) with primary.tls: the CA to trust for the primary's
  certificate, and the client certificate to present (mutual TLS). SIGHUP (\`systemctl reload
  tandem-standby\` under the unit), or a change to the files of server.tls or primary.tls,
  reloads them for new connections (a waiting push channel redials at once); a reload that
  fails keeps what is in use and is logged.
- Writes stateDir/daemon.json {pid, listen} while it runs (\`tandem-standby status\` reads it).

On SIGTERM/SIGINT it stops taking work; an apply in progress may finish within the stop grace
period, after which it is aborted (staging rolls back; a switch under way finishes). A second
signal aborts at once. If even that does not end the apply, the daemon exits and leaves it to the
journal: the next start finishes or rolls it back.

A filestore without tandem-filestore.json (see \`tandem-primary init --help\`), or one that cannot
be read, is logged at start and shown in /status; the daemon runs on, writes nothing to it, and
every poll checks again until it is there.

Options:
  --config FILE           the standby agent's config (required)
  --stop-grace DURATION   how long a stop waits for an apply in progress (default 60s)

Exit status: 0 stopped by a signal; 2 bad config or usage, or this server was promoted or is the
site's primary (do not restart it as a standby); 75 a temporary failure: another \`tandem-standby run\` holds this state
dir, or the HTTP port (server.listen) is taken; 1 other failure to start.`,
  options: { config: { type: 'string', short: 'c' }, 'stop-grace': { type: 'string' } },
  async run({ values, logger }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby run'));
    let stopGraceMs = 60_000;
    if (values['stop-grace'] !== undefined) {
      const ms = typeof values['stop-grace'] === 'string' ? parseDuration(values['stop-grace']) : null;
      if (ms === null) throw new TandemError('config', 'USAGE', `tandem-standby run: --stop-grace ${JSON.stringify(values['stop-grace'])} is not a duration such as "60s" or "5m"`);
      stopGraceMs = ms;
    }
    const token = loadDaemonToken(config, logger);
    const readToken = loadReadToken(config, logger, token);
    // The filestore's marker is read once, at start (not awaited: the daemon serves first); until it
    // is there, every filestore operation of the daemon fails with why, and tries again.
    const filestore = new MarkerGatedFilestore(openFilestore(config.filestore.location), { url: config.filestore.url });
    const daemon = new StandbyDaemon({ config, logger, filestore, standbyId: agentName({ standbyId: config.standbyId }), token, readToken, stopGraceMs });
    void filestore.checkAtStart(logger, 'nothing is applied until it is; every poll checks again');

    // 'left-running': an apply ignored even its abort (a stuck child process). Its journal makes the
    // next start finish or roll it back; the CLI frame ends the process should the apply keep it alive.
    const releaseHangups = holdHangupsUntilServing(logger);
    try {
      await runUntilStopped(daemon, logger);
    } finally {
      releaseHangups();
    }
    return 0;
  },
};
