import { TandemError, loadStandbyConfig, parseDuration, requireString, type Command } from '@tandem/shared';
import { gatherStatus } from '../daemon/gather-status.js';
import { WARN_FRACTION, judgeLag, verdictExitCode } from '../daemon/lag.js';
import { formatStatus } from '../daemon/status-doc.js';

export const statusCommand: Command = {
  name: 'status',
  summary: 'replication lag and health of this standby (with or without the daemon)',
  help: `Usage: tandem-standby status --config FILE [--json] [--max-lag DURATION]

Shows what this standby holds and how far behind it is, from the state dir and the filestore, and,
while \`tandem-standby run\` runs, from the daemon (push channel, polling, last error):

  recovery point age   now − creation time of the newest applied set: what a failover now would lose
  apply lag            applied time − committed time of that set
  pending sets         committed sets newer than the applied one (one LIST of the filestore)
  primary heartbeat    age of the primary's newest heartbeat (idle primary vs dead primary)
  STALE latest         the primary's signed heartbeat names a newer set than latest.json: an old
                       latest.json was put back, and this standby would not see new sets

Options:
  --config FILE       the standby agent's config (required)
  --json              print the status as JSON (appliedSetId, appliedAt, latestSetId,
                      recoveryPointAgeSeconds, applyLagSeconds, pendingSets,
                      primaryHeartbeatAgeSeconds, daemon, push, lastError, ...)
  --max-lag DURATION  check the recovery point age against DURATION (e.g. 26h), Nagios style

Exit status: without --max-lag 0 (also when parts could not be read: see "problem" lines), 2 bad
config or usage. With --max-lag: 0 OK (age at most 80% of DURATION), 1 WARNING (above 80%),
2 CRITICAL (beyond DURATION, nothing applied yet, or a STALE latest.json). The recovery point age
needs only the state dir, so the check works while the filestore is unreachable.`,
  options: { config: { type: 'string', short: 'c' }, json: { type: 'boolean' }, 'max-lag': { type: 'string' } },
  async run({ values, logger, out }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby status'));
    let maxLagSeconds: number | null = null;
    if (values['max-lag'] !== undefined) {
      const ms = typeof values['max-lag'] === 'string' ? parseDuration(values['max-lag']) : null;
      if (ms === null || ms <= 0) {
        throw new TandemError('config', 'USAGE', `tandem-standby status: --max-lag ${JSON.stringify(values['max-lag'])} is not a duration such as "26h", "90m" or "1d"`);
      }
      maxLagSeconds = ms / 1000;
    }
    const doc = await gatherStatus(config, logger);
    let code = 0;
    if (maxLagSeconds !== null) {
      const verdict = judgeLag(doc.recoveryPointAgeSeconds, maxLagSeconds, doc.heartbeatNewerSetId);
      doc.maxLag = { seconds: maxLagSeconds, warnAboveSeconds: Math.round(WARN_FRACTION * maxLagSeconds * 1000) / 1000, verdict };
      code = verdictExitCode(verdict);
    }
    if (values.json === true) out(JSON.stringify(doc, null, 2));
    else for (const line of formatStatus(doc)) out(line);
    return code;
  },
};
