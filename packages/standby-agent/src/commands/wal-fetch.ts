import { chmod, mkdir, readdir, realpath, rm, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import {
  TandemError,
  fetchWalFile,
  isTandemError,
  loadIdentities,
  loadStandbyConfig,
  loadVerifyKeyFile,
  openFilestore,
  readEpochDoc,
  requireFilestoreMarker,
  requireString,
  siteOption,
  type Command,
  type Logger,
  type StandbyConfig,
  type WalDoc,
} from '@tandem/shared';
import { readWalSeed } from '../apply/cluster.js';
import { recordRefused, recordRestored } from '../wal/replay-state.js';

/**
 * `restore_command` of a standby in WAL mode. PostgreSQL runs it, in the data directory, for every
 * WAL file it wants next; exit 0 means the file is at PATH, anything else "not there (yet)", and
 * PostgreSQL asks again later. So:
 * - a file not in the filestore yet: exit 1, silently (a caught-up standby asks every few seconds);
 * - a file whose signed document, body, cluster or epoch does not check out: refused, nothing
 *   written at PATH, exit 1 as well (PostgreSQL keeps waiting, it does not replay it), and raised:
 *   logged, recorded in wal-replay.json for `status` and `/metrics`;
 * - a good file: verified before a byte of it is written where PostgreSQL reads (wal-file.ts), then
 *   renamed into place; exit 0.
 *
 * The epoch rule: the document names the epoch its primary held. A file stored in an older epoch
 * than epoch.json's after that epoch began was stored by a primary already replaced (fenced, but
 * not yet knowing it, or a forged replay): refused. One from a newer epoch than epoch.json's names
 * a primary the filestore does not know: refused.
 */
export async function walFetch(config: StandbyConfig, name: string, target: string, logger: Logger): Promise<'restored' | 'missing'> {
  if (config.database.mode !== 'wal') {
    throw new TandemError('config', 'WAL_MODE_OFF', `site "${config.site}" is not in WAL mode (database.mode in ${config.configFile} is "${config.database.mode}")`, {
      hint: 'set database.mode: wal, or remove restore_command from the cluster',
    });
  }
  const seed = await readWalSeed(config.stateDir);
  if (seed === null) {
    throw new TandemError('precondition', 'WAL_NOT_SEEDED', `site "${config.site}" has no seed recorded in ${config.stateDir} (wal-seed.json): this cluster was not seeded by tandem-standby apply`, {
      hint: 'run `tandem-standby apply` (it seeds the cluster from the newest base backup)',
    });
  }
  const filestore = openFilestore(config.filestore.location);
  try {
    await requireFilestoreMarker(filestore, { url: config.filestore.url });
    const staging = join(config.stateDir, 'wal-staging');
    await mkdir(staging, { recursive: true, mode: 0o700 });
    await chmod(staging, 0o700);
    await removeStale(staging);
    const epochDoc = (await readEpochDoc(filestore, config.site))?.doc ?? null;
    const identities = config.encryption === 'none' || config.keys.identityFile === undefined ? [] : loadIdentities(config.keys.identityFile, logger);
    try {
      const r = await fetchWalFile({
        filestore,
        site: config.site,
        name,
        verifyKey: loadVerifyKeyFile(config.keys.verifyKeyFile),
        identities,
        stagingDir: staging,
        target,
        expect: { systemId: seed.systemId },
        accept: (doc: WalDoc) => checkEpoch(doc, epochDoc),
      });
      if (r.status === 'missing') return 'missing';
      // What promote's preflight reads as "handed to PostgreSQL": only PostgreSQL's own call says so.
      if (await runByPostgres(config.database.dataDir)) {
        await recordRestored(config.stateDir, { name, archivedAt: r.doc.archivedAt, at: new Date().toISOString(), epoch: r.doc.epoch });
      } else {
        logger.info({ wal: name, target }, 'fetched by hand (not run in the data directory, as PostgreSQL runs restore_command): not recorded as handed to PostgreSQL');
      }
      return 'restored';
    } catch (err) {
      if (isTandemError(err) && err.kind === 'integrity') {
        logger.error({ wal: name, code: err.code, err }, 'WAL file refused: not handed to PostgreSQL');
        await recordRefused(config.stateDir, { name, at: new Date().toISOString(), code: err.code, error: err.message }).catch(() => undefined);
      }
      throw err;
    }
  } finally {
    await filestore.close();
  }
}

/**
 * PostgreSQL runs restore_command in the cluster's data directory. A run anywhere else is by hand
 * (an operator trying a file out): its file never reached PostgreSQL, so it must not count as
 * replayed, or promote's preflight could pass while PostgreSQL still lacks WAL the filestore has.
 */
async function runByPostgres(dataDir: string | undefined): Promise<boolean> {
  if (dataDir === undefined) return false;
  try {
    return (await realpath(process.cwd())) === (await realpath(dataDir));
  } catch {
    return false;
  }
}

/** What a killed wal-fetch left in its staging dir (each run uses a file of its own): gone after 10 minutes. */
async function removeStale(dir: string): Promise<void> {
  const before = Date.now() - 10 * 60_000;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const p = join(dir, name);
    const st = await stat(p).catch(() => null);
    if (st !== null && st.mtimeMs < before) await rm(p, { force: true }).catch(() => undefined);
  }
}

export function checkEpoch(doc: WalDoc, epochDoc: { epoch: number; since?: string } | null): void {
  if (epochDoc === null) return;
  if (doc.epoch > epochDoc.epoch) {
    throw new TandemError('integrity', 'WAL_EPOCH_AHEAD', `WAL file ${doc.name}: stored in epoch ${doc.epoch}, and epoch.json says ${epochDoc.epoch}: a primary the filestore does not know; refused`);
  }
  const since = epochDoc.since === undefined ? NaN : Date.parse(epochDoc.since);
  if (doc.epoch < epochDoc.epoch && Date.parse(doc.archivedAt) > since) {
    throw new TandemError(
      'integrity',
      'WAL_FENCED_PRIMARY',
      `WAL file ${doc.name}: stored in epoch ${doc.epoch} at ${doc.archivedAt}, after epoch ${epochDoc.epoch} began (${epochDoc.since}): written by a primary that had been replaced; refused`,
    );
  }
}

export const walFetchCommand: Command = {
  name: 'wal-fetch',
  summary: "PostgreSQL's restore_command in WAL mode: one verified WAL file from the filestore",
  help: `Usage: tandem-standby wal-fetch --config FILE [--site NAME] NAME PATH

The restore_command of a standby in WAL mode (database.mode: wal). \`tandem-standby apply\`
writes it into the seeded cluster's postgresql.auto.conf:

  restore_command = 'tandem-standby wal-fetch --config /etc/tandem/standby.yml --site S %f %p'

Fetches the WAL file NAME (%f) from the filestore and writes it to PATH (%p, relative to the data
directory), only after its signed document verified with keys.verifyKeyFile, it names this site,
this name, the cluster this standby was seeded from (system id) and an epoch that is not a
replaced primary's, and its bytes matched the signed SHA-256 and sizes. Nothing is written at
PATH otherwise.

Exit 0 restored; 1 not in the filestore yet (PostgreSQL asks again), or refused (logged, and
recorded for \`tandem-standby status\` and /metrics: tandem_standby_wal_refused); 2 bad config.

Options:
  --config FILE  the standby agent's config (required)
  --site NAME    the site, of a config with several
  --spool DIR    where \`tandem-standby run\` puts WAL files it fetched and verified ahead
                 (<stateDir>/wal-spool): a file found there is moved into place at once, without
                 loading the agent; any other goes the full way described above`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, spool: { type: 'string' } },
  positionals: { min: 2, max: 2 },
  async run({ values, positionals, logger }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby wal-fetch'), siteOption(values), 'tandem-standby wal-fetch');
    const [name, path] = positionals as [string, string];
    const target = isAbsolute(path) ? path : resolve(process.cwd(), path);
    const r = await walFetch(config, name, target, logger);
    // PostgreSQL reads only the exit status; "not there yet" is no error and prints nothing.
    if (r === 'restored') logger.debug({ wal: name }, 'restored');
    return r === 'restored' ? 0 : 1;
  },
};
