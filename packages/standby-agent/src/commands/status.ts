import { TandemError, loadStandbyConfig, parseDuration, siteOption, requireString, type Command, type CommandContext } from '@tandem/shared';
import { gatherStatus } from '../daemon/gather-status.js';
import { WARN_FRACTION } from '../daemon/lag.js';
import { NAGIOS_EXIT, nagiosCheck, nagiosFirstLine, nagiosUnknown, type LagThresholds } from '../daemon/nagios.js';
import { formatStatus } from '../daemon/status-doc.js';

/** With --max-lag or --warn-lag the command is a Nagios check: every failure is UNKNOWN (3) on stdout. */
const nagiosMode = (args: string[]): boolean => args.some((a) => /^--(max|warn)-lag(=|$)/.test(a));

function durationOption(values: CommandContext['values'], key: 'max-lag' | 'warn-lag'): number | null {
  const v = values[key];
  if (v === undefined) return null;
  const ms = typeof v === 'string' ? parseDuration(v) : null;
  if (ms === null || ms <= 0) {
    throw new TandemError('config', 'USAGE', `tandem-standby status: --${key} ${JSON.stringify(v)} is not a duration such as "26h", "90m" or "1d"`, {
      hint: 'a number and a unit (ms, s, m, h, d), or several: "1h30m"',
    });
  }
  return ms / 1000;
}

/** The thresholds of the check, or null without --max-lag (a plain status). */
function thresholds(values: CommandContext['values']): LagThresholds | null {
  const crit = durationOption(values, 'max-lag');
  const warn = durationOption(values, 'warn-lag');
  if (crit === null && warn === null) return null;
  if (crit === null) {
    throw new TandemError('config', 'USAGE', 'tandem-standby status: --warn-lag needs --max-lag (the critical threshold)', { hint: 'e.g. --warn-lag 26h --max-lag 32h' });
  }
  if (warn !== null && warn >= crit) {
    throw new TandemError('config', 'USAGE', `tandem-standby status: --warn-lag ${values['warn-lag'] as string} must be shorter than --max-lag ${values['max-lag'] as string}`, {
      hint: 'WARNING is for a recovery point older than --warn-lag, CRITICAL for one older than --max-lag',
    });
  }
  return { warnSeconds: warn ?? Math.round(WARN_FRACTION * crit * 1000) / 1000, critSeconds: crit };
}

export const statusCommand: Command = {
  name: 'status',
  summary: 'replication lag and health of this standby (with or without the daemon); a Nagios check with --max-lag',
  help: `Usage: tandem-standby status --config FILE [--site NAME] [--json]
                             [--max-lag DURATION [--warn-lag DURATION]]

Shows what this standby holds and how far behind it is, from the state dir and the filestore, and,
while \`tandem-standby run\` runs, from the daemon (push channel, polling, last error):

  recovery point age   now − creation time of the newest applied set: what a failover now would lose
  apply lag            applied time − committed time of that set
  pending sets         committed sets newer than the applied one (one LIST of the filestore)
  primary heartbeat    age of the primary's newest heartbeat (idle primary vs dead primary), or
                       "stopped cleanly at T" when its daemon shut down and said so
  STALE latest         the primary's signed heartbeat names a newer set than latest.json: an old
                       latest.json was put back, and this standby would not see new sets
  problem              a part that could not be read (state dir, key, filestore): its figures are
                       unknown, never shown as healthy

A filestore without tandem-filestore.json (see \`tandem-primary init --help\`) is a problem, as is
one that cannot be read: nothing is read from it, and its figures are unknown.

Options:
  --config FILE        the standby agent's config (required)
  --site NAME          the site to report on, of a config with several (sites:,
                       sitesDir:); not needed when the config holds one site
  --json               print the status as JSON (appliedSetId, appliedAt, latestSetId,
                       recoveryPointAgeSeconds, applyLagSeconds, pendingSets,
                       primaryHeartbeatAgeSeconds, daemon, push, lastError, problems, and with
                       --max-lag maxLag {seconds, warnAboveSeconds, verdict, reasons})
  --max-lag DURATION   a Nagios check of the recovery point age: CRITICAL beyond DURATION (e.g. 26h)
  --warn-lag DURATION  WARNING beyond DURATION (default 80% of --max-lag); needs --max-lag

With --max-lag (or --warn-lag) it is a Nagios plugin. The first line is the verdict, the figures
and the performance data:

  TANDEM OK - recovery point 3h12m old, 0 pending | rpo=11520s;74880;93600 pending=0 apply_lag=40s

(rpo is the recovery point age, with the warning and critical thresholds; \`U\` when unknown); the
lines after it are the status above. What is wrong comes first on the first line, e.g.
\`TANDEM UNKNOWN - cannot read the filestore file:///x: ...\`.

Exit status: without --max-lag 0 (also when parts could not be read: see "problem" lines), 2 bad
config or usage. With --max-lag, as the Nagios plugin guidelines say: 0 OK; 1 WARNING (the
recovery point is older than --warn-lag); 2 CRITICAL (older than --max-lag, nothing applied yet, a
STALE latest.json, or a filestore document that fails verification); 3 UNKNOWN (a bad option or
duration, a missing or bad config, applied.json, the verify key or the filestore cannot be read,
including a filestore directory that does not exist). A recovery point known to be too old is
CRITICAL even while the filestore cannot be read.`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, json: { type: 'boolean' }, 'max-lag': { type: 'string' }, 'warn-lag': { type: 'string' } },
  reportError(err, args, out) {
    if (!nagiosMode(args)) return undefined;
    for (const line of nagiosUnknown(err)) out(line);
    return NAGIOS_EXIT.unknown;
  },
  async run({ values, logger, out }) {
    const limits = thresholds(values);
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby status'), siteOption(values), 'tandem-standby status');
    const { doc, gaps } = await gatherStatus(config, logger);
    if (limits === null) {
      if (values.json === true) out(JSON.stringify(doc, null, 2));
      else for (const line of formatStatus(doc)) out(line);
      return 0;
    }
    const check = nagiosCheck(doc, gaps, limits);
    doc.maxLag = { seconds: limits.critSeconds, warnAboveSeconds: limits.warnSeconds, verdict: check.state, reasons: check.reasons };
    if (values.json === true) out(JSON.stringify(doc, null, 2));
    else {
      out(nagiosFirstLine(check));
      for (const line of formatStatus(doc)) out(line);
    }
    return NAGIOS_EXIT[check.state];
  },
};
