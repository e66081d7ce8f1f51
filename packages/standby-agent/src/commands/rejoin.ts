import { loadStandbyConfig, openFilestore, requireFilestoreMarker, requireString, siteOption, type Command } from '@tandem/shared';
import { rejoin } from '../wal/rejoin.js';

export const rejoinCommand: Command = {
  name: 'rejoin',
  summary: 'WAL mode: make a former primary a standby of the server that replaced it (pg_rewind, else a fresh seed)',
  help: `Usage: tandem-standby rejoin --config FILE [--site NAME] [--source URL | --seed] [--json]

Run on the former primary's server after another server was promoted, with that server's
standby config (database.mode: wal, database.dataDir, startCommand, stopCommand). Stops the
cluster, then:

  --source URL  pg_rewind winds the data directory back to where the new primary's timeline
                forked, copying what changed from the new primary (a postgres:// URL of it that
                may connect as a superuser or a role pg_rewind accepts). Needs wal_log_hints = on
                (or data checksums) on this cluster, set before it was the primary.
  --seed        no rewind: the cluster is seeded afresh from the newest set (as apply --force).

Without either, or when pg_rewind fails (the reason is logged), the cluster is seeded afresh.
Either way it ends as a hot standby replaying the new primary's WAL from the filestore, in
backup mode (the BACKUP sentinel), this server's own postgresql.conf, pg_hba.conf and
pg_ident.conf kept. Refused on the server epoch.json names as the primary.

Exit status: 0 rejoined; 1 failed (the cluster may be stopped: see the log), or this server
is the primary; 2 bad config.`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, source: { type: 'string' }, seed: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby rejoin'), siteOption(values), 'tandem-standby rejoin');
    const filestore = openFilestore(config.filestore.location);
    try {
      await requireFilestoreMarker(filestore, { url: config.filestore.url });
      const r = await rejoin(config, {
        filestore,
        logger,
        ...(typeof values.source === 'string' ? { source: values.source } : {}),
        seed: values.seed === true,
      });
      out(values.json === true ? JSON.stringify(r) : r.method === 'pg_rewind' ? 'rejoined as a standby (pg_rewind)' : `rejoined as a standby (seeded afresh: ${r.why})`);
      return 0;
    } finally {
      await filestore.close();
    }
  },
};
