import { MarkerGatedFilestore, TandemError, agentName, holdHangupsUntilServing, loadStandbySites, openFilestore, parseDuration, requireString, type Command } from '@tandem/shared';
import { StandbyDaemon } from '../daemon/daemon.js';
import { loadDaemonToken, loadReadToken } from '../daemon/daemon-info.js';
import { StandbyHost } from '../daemon/host.js';
import { runUntilStopped, type StoppableDaemon } from '../daemon/lifecycle.js';

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

A config of several sites (sites:, sitesDir:) is served by this one process: each site is applied,
polled, reported and shown as above, in its own state dir (its daemon.json, locks, applied set),
and the sites share what the process has once:
- one HTTP server on server.listen: GET /status is {"sites": {"<site>": <its status>}},
  /status?site=NAME one site's (503 with why while it does not run; 404 for a name not served);
  /metrics labels every sample site="<site>" (the process metrics once); the page is per site,
  /?site=NAME (/ alone goes to the first site's);
- one push connection to the primary (primary.url with ?mux=1: every site's channel on one
  WebSocket; when it drops it is redialled once for all sites, and each says hello again);
- at most \`concurrency\` applies at once across the sites (default 2): an apply waits its turn,
  and the log says so.
One site never stops the others: a site whose start is refused (promoted, its primary, its state
dir held, ...) is logged and shown in /status, and the others run; a site's database or filestore
failing is retried for that site alone. The start fails only when no site could start.
A config of one site (even under sites:) runs exactly as before, with a push connection of its
own in the plain framing (any primary).

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
dir, or the HTTP port (server.listen) is taken; 1 other failure to start. With several sites: the
first site's refusal, only when no site could start (2 also when every site stopped, promoted).`,
  options: { config: { type: 'string', short: 'c' }, 'stop-grace': { type: 'string' } },
  async run({ values, logger }) {
    const { sites, concurrency } = loadStandbySites(requireString(values, 'config', 'tandem-standby run'));
    // The keys of the process (server, primary, filestore, standbyId ...) are the same for every site.
    const config = sites[0]!;
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
    const standbyId = agentName({ standbyId: config.standbyId });
    const daemon: StoppableDaemon =
      sites.length === 1
        ? new StandbyDaemon({ config, logger, filestore, standbyId, token, readToken, stopGraceMs })
        : new StandbyHost({ sites, concurrency, logger, filestore, standbyId, token, readToken, stopGraceMs });
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
