import { TandemError, agentName, loadStandbyConfig, openFilestore, parseDuration, requireString, type Command } from '@tandem/shared';
import { StandbyDaemon } from '../daemon/daemon.js';
import { loadDaemonToken, loadReadToken } from '../daemon/daemon-info.js';
import { runUntilStopped } from '../daemon/lifecycle.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'the standby daemon: apply what the primary commits (push and polling), serve /status and /metrics',
  help: `Usage: tandem-standby run --config FILE [--stop-grace DURATION]

Runs until stopped (SIGTERM/SIGINT), keeping this site a standby in backup mode:

- At start: refuses if promote ran here (promoted.json: this server is the primary now); writes the
  BACKUP sentinel; finishes or rolls back an interrupted apply (the journal), as apply does.
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
  are served without auth, and only on a loopback address.
- Writes stateDir/daemon.json {pid, listen} while it runs (\`tandem-standby status\` reads it).

On SIGTERM/SIGINT it stops taking work; an apply in progress may finish within the stop grace
period, after which it is aborted (staging rolls back; a switch under way finishes). A second
signal aborts at once. If even that does not end the apply, the daemon exits and leaves it to the
journal: the next start finishes or rolls it back.

Options:
  --config FILE           the standby agent's config (required)
  --stop-grace DURATION   how long a stop waits for an apply in progress (default 60s)

Exit status: 0 stopped by a signal; 2 bad config or usage, or this server was promoted (do not
restart it as a standby); 75 another \`tandem-standby run\` holds this state dir; 1 other failure
to start (e.g. the HTTP port is taken).`,
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
    const filestore = openFilestore(config.filestore.location);
    const daemon = new StandbyDaemon({ config, logger, filestore, standbyId: agentName({ standbyId: config.standbyId }), token, readToken, stopGraceMs });

    // 'left-running': an apply ignored even its abort (a stuck child process). Its journal makes the
    // next start finish or roll it back; the CLI frame ends the process should the apply keep it alive.
    await runUntilStopped(daemon, logger);
    return 0;
  },
};
