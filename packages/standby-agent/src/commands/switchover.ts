import { Interrupted, TandemError, formatDuration, interruptedBy, loadStandbyConfig, openFilestore, parseDuration, requireFilestoreMarker, requireString, siteOption, withInterrupts, type Command } from '@tandem/shared';
import { describePrimaryAfter, runSwitchover, type SwitchoverOutcome } from '../switchover/run-switchover.js';

const MIN_TIMEOUT_MS = 30_000;
const MAX_TIMEOUT_MS = 3_600_000;

export const switchoverCommand: Command = {
  name: 'switchover',
  summary: 'planned change of primary without data loss: final backup there, then apply and promote here',
  help: `Usage: tandem-standby switchover --config FILE [--timeout DURATION] [--json] [--site NAME]

A planned change of primary that loses no committed transaction. This standby:

  1. checks, changing nothing: not promoted, no unfinished apply, primary.url and a token, its
     keys fit the primary's sets;
  2. asks the primary (over primary.url, /v1/stream, with the token) for a switchover. The
     primary waits for a backup that is running, runs its onFenced command (which must stop the
     site's writes, e.g. maintenance mode), makes a final backup and holds: no more backups;
  3. applies exactly that final set;
  4. promotes: the usual preflight (a fresh primary heartbeat is expected here: the primary holds
     for this switchover), raises the epoch (fencing the old primary), removes the sentinel and
     runs restartCommand with TANDEM_MODE=primary;
  5. tells the primary, which reads epoch.json at once and is fenced (onFenced is not run twice).

Each step is printed as it happens. If a step fails, the switchover is called off: the primary
runs its onResume command (undoing onFenced), resumes its schedule and stays the primary; this
standby stays a standby (a failed apply rolls back). The failed step is named. If the primary
cannot be told (the connection is lost while it holds), it calls the switchover off by itself
when its hold times out, unless the epoch was raised by then.

The primary's config needs onFenced and onResume. To back up from here afterwards, run
tandem-primary with \`hostname:\` set to this standby's standbyId (see \`promote --help\`).

A filestore without tandem-filestore.json at its root (see \`tandem-primary init --help\`) is
refused, exit 2: a missing filestore directory is never created.

Options:
  --config FILE         the standby agent's config (required)
  --site NAME           the site to switch over, of a config with several (sites:,
                        sitesDir:); not needed when the config holds one site
  --timeout DURATION    how long the primary may hold (writes stopped) for this standby to
                        apply and promote, and how long to wait for its final backup
                        (default 10m, at least 30s, at most 1h)
  --json                print the outcome (steps, set, epoch, failed step) as JSON

Ctrl-C (or SIGTERM) before the promote calls the switchover off: the primary is told, and the
command waits for it to confirm (onResume ran), then ends with one line saying what became of the
primary, exit 130 (143 for SIGTERM). Once the promote has begun it is finished, not abandoned.

Exit status: 0 switched over; 1 refused or failed (the message names the step and what became
of the primary); 2 bad config or usage, or the primary refused the token; 130/143 interrupted
(SIGINT/SIGTERM) and called off.`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, timeout: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby switchover'), siteOption(values), 'tandem-standby switchover');
    let timeoutMs = 10 * 60_000;
    if (values.timeout !== undefined) {
      const ms = typeof values.timeout === 'string' ? parseDuration(values.timeout) : null;
      if (ms === null || ms < MIN_TIMEOUT_MS || ms > MAX_TIMEOUT_MS) {
        throw new TandemError('config', 'USAGE', `tandem-standby switchover: --timeout ${JSON.stringify(values.timeout)}: expected a duration from 30s to 1h, such as "10m"`);
      }
      timeoutMs = ms;
    }
    const json = values.json === true;
    // Ctrl-C calls the switchover off (the primary resumes) unless the promote has begun, which is
    // finished: runSwitchover decides; here the interrupted outcome becomes the command's last line.
    return withInterrupts(
      logger,
      'switchover',
      async (signal) => {
        const filestore = openFilestore(config.filestore.location);
        let asked = false;
        let o: SwitchoverOutcome;
        try {
          await requireFilestoreMarker(filestore, { url: config.filestore.url });
          o = await runSwitchover(config, {
            filestore,
            logger,
            timeoutMs,
            signal,
            onEvent: (e) => {
              if (e.step === 'request') asked = true;
              if (!json) out(`${e.side}: ${e.detail}`);
            },
          });
        } catch (err) {
          const sig = interruptedBy(signal);
          if (sig === null) throw err;
          throw new Interrupted(
            sig,
            asked
              ? "the switchover was stopped after the primary was asked for it; check the primary's /status (its switchover object) and log"
              : 'the switchover was stopped before the primary was asked for it: nothing changed',
            { cause: err },
          );
        } finally {
          await filestore.close();
        }
        return finish(o, json, out, interruptedBy(signal));
      },
      { message: 'interrupted: calling the switchover off (unless the promote has begun)', again: { log: 'another signal: still calling the switchover off (waiting for the primary to confirm), or finishing a promote already begun' } },
    );
  },
};

/** The outcome as the command's output and exit status; `interrupted`: the signal that stopped it, if one did. */
function finish(o: SwitchoverOutcome, json: boolean, out: (line: string) => void, interrupted: NodeJS.Signals | null): number {
  if (json) out(JSON.stringify(o));
  if (o.status === 'done') {
    // A signal after the promote had begun: the switchover was finished, as it must be.
    if (!json) {
      out(
        `switchover of site "${o.site}" done in ${formatDuration(o.seconds * 1000)}: ${o.standbyId} is the primary now (epoch ${o.epoch}, set ${o.setId}); ` +
          `${describePrimaryAfter(o)}, its writes stopped before ${o.walFile === null ? 'the final backup' : `its last WAL file ${o.walFile}, replayed here`}: no committed transaction was lost`,
      );
    }
    if (o.restartError !== null) {
      throw new TandemError('external', 'RESTART_FAILED', `the switchover is done (this server is the primary), but ${o.restartError}`, {
        hint: 'restart the site by hand once the restart command is fixed',
      });
    }
    return 0;
  }
  const here = o.failedStep === 'promote' ? 'this server did not become the primary' : 'this server is still a standby';
  if (interrupted !== null) {
    throw new Interrupted(interrupted, `the switchover was called off at step "${o.failedStep ?? '?'}": ${describePrimaryAfter(o)}; ${here}`);
  }
  throw new TandemError(
    'precondition',
    'SWITCHOVER_FAILED',
    `switchover of site "${o.site}" failed at step "${o.failedStep ?? '?'}": ${o.error ?? 'unknown error'}\n  ${describePrimaryAfter(o)}; ${here}`,
    { hint: o.primary === 'resumed' || o.primary === 'unchanged' ? 'fix what failed and run the switchover again' : "check the primary's /status (its `switchover` object) and log" },
  );
}
