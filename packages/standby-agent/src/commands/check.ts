import { loadStandbySites, optionalPath, requireString, runSiteChecks, siteOption, sitesToCheck, type Command } from '@tandem/shared';
import { standbyChecks, type StandbyCheckContext } from '../check/checks.js';

export const checkCommand: Command = {
  name: 'check',
  summary: 'check the set-up without applying: config, keys, filestore, newest set, database, tools, push channel',
  help: `Usage: tandem-standby check --config FILE [--site NAME] [--recipient FILE] [--json]

Looks at everything an apply and the daemon need, one line per check, and changes nothing
(nothing is written anywhere, not even in the state dir):
  config      the config parses and validates
  verify-key  keys.verifyKeyFile: mode, owner, an Ed25519 public key
  identity    keys.identityFile: mode, owner, age identities
  filestore   reachable and readable, and a tandem filestore (its marker); the site's sets
  latest      latest.json, the newest set's manifest and the epoch verify as an apply verifies
              them: proof that the verify key is the primary's signing key's public half
  pairing     the identity opens what the primary's recipients seal (those the newest set's
              signed manifest lists, or --recipient FILE)
  mode        this server is a standby: not promoted, and not the primary epoch.json names
  postgres    the maintenance database answers; the server's version and the role
  db-rights   the role may create databases and replace the site's database (and create roles
              with database.roles: carry); whether the site's database exists
  set-needs   the newest set's roles and extensions are in place here (its database description,
              decrypted in memory)
  tools       pg_restore (not older than the PostgreSQL the set was dumped from), zstd, prlimit
  space       room for the newest set in the state dir and beside the site's dirs
  state-dir   stateDir is writable (or can be created)
  site-dirs   the directories the site's dirs are swapped in, and the BACKUP sentinel's, are
              writable
  tokens      primary.tokenFile and server.readTokenFile load and differ
  tls         with server.tls: this daemon's certificate and key load and belong together; a
              warning when the certificate ends within 14 days, a failure when it is not valid now
  push        with primary.url: the primary accepts this standby's token and says hello, over
              wss:// with primary.tls as the daemon dials it (the check never says hello back: a
              running daemon's connection is left alone)

In WAL mode (database.mode: wal) also, after tools:
  wal-cluster  database.dataDir is a directory of mode 0700 or 0750, owned by the cluster's OS
               user (not root), which this agent runs as (or root), in a directory it can
               write; pg_verifybackup found (database.binDir, else PATH; a failure without it)
               and pg_rewind (a warning without it); once seeded (wal-seed.json in the state
               dir): the cluster answers on database.url, is in recovery (a standby: a failure
               if it was promoted), is the cluster the seed made, and its restore_command runs
               tandem-standby wal-fetch

Each line reads "ok", "warn", "FAIL" or "skip" (not applicable, or a check it needs failed),
then the check's name and what it found; a failure or warning has a hint line under it.

Options:
  --config FILE     the standby agent's config (required)
  --site NAME       check only this site of a config with several (sites:, sitesDir:);
                    without it, each site is checked in a section of its own
  --recipient FILE  the primary's age recipient file (backup.agepub) to prove the identity
                    against, e.g. before the first set exists
  --json            print {"ok", "checks": [{"name", "status", "detail", "hint"}]} instead
                    (several sites: {"ok", "sites": [{"site", "ok", "checks"}]})

Exit status: 0 no check failed (warnings allowed); 1 a check failed (of any site).`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, recipient: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, out }) {
    const configFile = requireString(values, 'config', 'tandem-standby check');
    const ctxFor = (site: string | undefined): StandbyCheckContext => ({ configFile, site, recipientFile: optionalPath(values.recipient) });
    return runSiteChecks(standbyChecks, sitesToCheck(configFile, siteOption(values), loadStandbySites), ctxFor, { values, out });
  },
};
