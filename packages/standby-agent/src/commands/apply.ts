import {
  TandemError,
  formatBytes,
  loadStandbyConfig,
  loadVerifyKeyFile,
  readVerifiedLatest,
  siteOption,
  openFilestore,
  requireFilestoreMarker,
  requireString,
  terminalProgress,
  withInterrupts,
  type Command,
  type Filestore,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { applyFilesDeltas, pendingDeltas } from '../apply/files-delta.js';
import { findSetAt, parseAt } from '../apply/find-at.js';
import { runApply } from '../apply/run-apply.js';

export const applyCommand: Command = {
  name: 'apply',
  summary: 'make the standby site equal to the newest committed set (or a named one)',
  help: `Usage: tandem-standby apply --config FILE [--site NAME] [--set ID | --at TIME] [--allow-older]
                            [--force] [--create-database] [--json]

Refuses on the site's primary: when epoch.json names this state directory's agent id as the
primary, or a tandem-primary daemon or backup runs with this state directory (--force or not).

Reads latest.json (or the named set's manifest) and verifies its signature and epoch; downloads
every artifact while checking its SHA-256 against the signed manifest, decrypting and
decompressing into a staging area beside the live site. Only when every artifact verified does
anything live change: the BACKUP sentinel is written (if absent), the database is restored into a
new database and swapped in by rename, config (keeping config.preserve and the sentinel),
security (files 0600, dirs 0700) and files are extracted beside the live dirs and swapped in.
Then the set is recorded as applied, what was kept for rollback is removed, and restartCommand
runs with TANDEM_MODE=backup.

With a files key (keys.filesKeyFile) and without --set/--at, the files deltas latest.json names
on top of the applied set (new and changed files the primary's daemon sent since the set) are
applied after it, file by file, as \`tandem-standby run\` applies them.

Before a byte is downloaded it checks what can be checked without the set: pg_restore (at least
the PostgreSQL version the set was dumped from), zstd and prlimit; PostgreSQL reachable, with
CREATEDB and the right to rename the live database; the live database exists (or may be created,
see --create-database); and free space for what the set's signed sizes say it puts on disk. Any
problem is refused with all of them listed, and nothing is staged.

A journal in the state dir makes this crash-safe: an apply killed at any point is finished or
rolled back by the next one, which does that first. Ctrl-C (or SIGTERM) before the switch rolls
the apply back (the last line says so; exit 130, or 143 for SIGTERM); a switch already under
way is finished first.

On a terminal, a progress line shows each artifact's download (bytes of its signed size,
percent, rate, time left); not when stderr is not a terminal or TANDEM_LOG_FORMAT=json.

A filestore without tandem-filestore.json at its root (see \`tandem-primary init --help\`) is
refused, exit 2: a missing filestore directory is never created.

Options:
  --config FILE    the standby agent's config (required)
  --site NAME      the site to apply, of a config with several (sites:,
                   sitesDir:); not needed when the config holds one site
  --set ID         apply this set instead of the newest one
  --at TIME        apply the newest set made at or before TIME: "2026-11-20 14:00" (local
                   time), "2026-11-20" (the end of that day) or "2026-11-20T13:00Z".
                   In WAL mode the cluster is seeded from that set's base backup and replays
                   the WAL up to TIME exactly (recovery_target_time), then pauses there: a hot
                   standby showing the database as it was at TIME (promote it, or apply again
                   with --force to follow the primary once more)
  --allow-older    with --set or --at: allow a set older than the applied one (a deliberate
                   roll-back to a point in time)
  --force          apply the set even if it is the one applied already; with files as content
                   objects, look at every live file (an apply otherwise skips the pages of the
                   files index the last one had, and their files, for up to a day)
  --create-database
                   create the site's database (database.url) if it does not exist; without
                   it (or database.create: true in the config, which counts on the first apply
                   only) a missing database is refused, naming it: a misspelt name must not
                   become a new database
  --json           print the result as JSON

Exit status: 0 applied (or nothing to do); 1 failed or refused (this server is the primary, the
database is missing or unreachable, no room), or the restart command failed after the set was
applied; 2 bad config or usage, or a tool is missing; 4 the set's epoch is fenced; 5 integrity (bad signature,
checksum, key or archive); 75 another apply or promote is running; 130/143 interrupted by
SIGINT/SIGTERM (rolled back).`,
  options: {
    config: { type: 'string', short: 'c' },
    site: { type: 'string' },
    set: { type: 'string' },
    at: { type: 'string' },
    'allow-older': { type: 'boolean' },
    force: { type: 'boolean' },
    'create-database': { type: 'boolean' },
    json: { type: 'boolean' },
  },
  async run({ values, logger, out }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby apply'), siteOption(values), 'tandem-standby apply');
    const named = typeof values.set === 'string' || typeof values.at === 'string';
    if (values['allow-older'] === true && !named) {
      throw new TandemError('config', 'USAGE', 'tandem-standby apply: --allow-older needs --set ID or --at TIME: only a set chosen on purpose may be older than the applied one');
    }
    if (typeof values.set === 'string' && typeof values.at === 'string') {
      throw new TandemError('config', 'USAGE', 'tandem-standby apply: give --set or --at, not both');
    }
    const at = typeof values.at === 'string' ? parseAt(values.at) : undefined;
    const filestore = openFilestore(config.filestore.location);
    try {
      await requireFilestoreMarker(filestore, { url: config.filestore.url });
      let setId = typeof values.set === 'string' ? values.set : undefined;
      if (at !== undefined) {
        setId = await findSetAt(filestore, config.site, at);
        logger.info({ at: at.toISOString(), setId }, 'newest set at or before the requested time');
      }
      const progress = terminalProgress('apply');
      const r = await withInterrupts(
        logger,
        'apply',
        (signal) =>
          runApply(config, {
            filestore,
            logger,
            setId,
            allowOlder: values['allow-older'] === true,
            force: values.force === true,
            createDatabase: values['create-database'] === true,
            ...(at !== undefined && config.database.mode === 'wal' ? { recoveryTargetTime: at } : {}),
            signal,
            progress,
          }),
        { cleanedUp: 'the apply was stopped before it changed anything live' },
      ).finally(() => progress.close());
      const a = r.applied;
      // Files deltas on top of the applied set (files as content objects): what the primary's
      // daemon sent since the set, as the standby daemon would apply them. Not with --set.
      const deltas = setId === undefined ? await applyPendingDeltas(config, filestore, logger) : null;
      if (values.json === true) {
        out(JSON.stringify({ status: r.status, recovered: r.recovered.action === 'none' ? null : { action: r.recovered.action, setId: r.recovered.setId }, ...a, ...(deltas ? { filesDeltas: { from: deltas.from, to: deltas.to, files: deltas.files } } : {}) }));
      } else if (r.status === 'already-applied') {
        out(`set ${a.setId} is already applied (since ${a.appliedAt}); nothing to do (--force applies it again)`);
      } else {
        out(`applied set ${a.setId} (epoch ${a.epoch}, created ${a.createdAt}, ${formatBytes(a.bytes)}) in ${a.durations.total ?? '?'} s`);
      }
      if (deltas && values.json !== true) out(`applied files delta(s) ${deltas.from}-${deltas.to} on top of it (${deltas.files} file(s))`);
      if (r.restartError !== undefined) {
        const msg = r.restartError instanceof Error ? r.restartError.message : String(r.restartError);
        throw new TandemError('external', 'RESTART_FAILED', `set ${a.setId} is applied and recorded, but ${msg}`, {
          hint: 'restart the site by hand once the restart command is fixed',
        });
      }
    } finally {
      await filestore.close();
    }
  },
};

/** The files deltas latest.json names on top of the applied set, applied (null: none, or no files key). */
async function applyPendingDeltas(config: StandbyConfig, filestore: Filestore, logger: Logger) {
  if (config.keys.filesKeyFile === undefined) return null;
  const verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
  const latest = (await readVerifiedLatest(filestore, config.site, verifyKey))?.latest ?? null;
  if (latest === null || (await pendingDeltas(config, latest)) === 0) return null;
  return applyFilesDeltas(config, { filestore, latest, verifyKey, logger });
}
