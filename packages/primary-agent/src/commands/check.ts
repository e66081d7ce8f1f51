import { loadPrimarySites, optionalPath, requireString, runSiteChecks, siteOption, sitesToCheck, type Command } from '@tandem/shared';
import { primaryChecks, type PrimaryCheckContext } from '../check/checks.js';

export const checkCommand: Command = {
  name: 'check',
  summary: 'check the set-up without making a backup: config, keys, database, tools, filestore, daemon',
  help: `Usage: tandem-primary check --config FILE [--site NAME] [--identity FILE] [--verify-key FILE] [--json]

Looks at everything a backup and the daemon need, one line per check, and changes nothing:
  config       the config parses and validates
  paths        the config, security and files directories exist; no BACKUP sentinel (a
               standby's site is never backed up)
  signing-key  keys.signingKeyFile: mode, owner, an Ed25519 private key
  verify-key   with --verify-key: that file is the signing key's public half
  recipients   keys.recipientFile: mode, owner, age recipients
  pairing      with --identity: the identity opens what the recipients seal
  postgres     database.url answers; the server's version and the role
  db-access    the role can read everything pg_dump reads (schemas, tables, sequences, large
               objects, tables with row level security)
  roles        the roles the database refers to, read as a backup reads them (database.roles:
               carry needs a superuser)
  pg_dump      found, and not older than the server
  zstd         found
  filestore    reachable, and a tandem filestore (its marker); the site's committed sets
  store-write  one probe object (tandem-check-*.probe at the top of the filestore) written, read
               back and deleted: the only thing check writes, and it leaves nothing behind
  latest       latest.json verifies with the signing key (else standbys refuse the next set)
  epoch        epoch.json names this agent the primary (else backups are refused as fenced)
  state-dir    stateDir is writable (or can be created)
  tokens       the daemon's tokens load and differ from each other
  tls          with server.tls: the certificate and key load and belong together; a warning
               when the certificate ends within 14 days, a failure when it is not valid now
  listen       server.listen is free, or this site's daemon serves it (reached over TLS, with
               server.tls, as the commands beside the daemon reach it)

In WAL mode (database.mode: wal) also, after roles:
  wal-settings  wal_level replica or logical, archive_mode on or always; a warning when
                archive_command does not run tandem-primary wal-push (PostgreSQL does not
                archive through tandem), or when neither wal_log_hints nor data checksums are
                on (pg_rewind could not rejoin this server after a failover)
  wal-archiver  pg_stat_archiver: a failure while archiving fails (naming the WAL file that
                failed), a warning while no WAL file has been archived yet
  replication   the role may replicate (REPLICATION or superuser: pg_basebackup makes each
                set's base backup), max_wal_senders is not 0, and, where the role may read
                pg_hba_file_rules, pg_hba.conf has a replication line

Each line reads "ok", "warn", "FAIL" or "skip" (not applicable, or a check it needs failed),
then the check's name and what it found; a failure or warning has a hint line under it.

Options:
  --config FILE      the primary agent's config (required)
  --site NAME        check only this site of a config with several (sites:, sitesDir:);
                     without it, each site is checked in a section of its own
  --identity FILE    an age identity (backup.agekey) to prove against keys.recipientFile
  --verify-key FILE  a verify key (signing.pub) to prove against keys.signingKeyFile
  --json             print {"ok", "checks": [{"name", "status", "detail", "hint"}]} instead
                     (several sites: {"ok", "sites": [{"site", "ok", "checks"}]})

Exit status: 0 no check failed (warnings allowed); 1 a check failed (of any site).`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, identity: { type: 'string', short: 'i' }, 'verify-key': { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, out }) {
    const configFile = requireString(values, 'config', 'tandem-primary check');
    const ctxFor = (site: string | undefined): PrimaryCheckContext => ({
      configFile,
      site,
      identityFile: optionalPath(values.identity),
      verifyKeyFile: optionalPath(values['verify-key']),
    });
    return runSiteChecks(primaryChecks, sitesToCheck(configFile, siteOption(values), loadPrimarySites), ctxFor, { values, out });
  },
};
