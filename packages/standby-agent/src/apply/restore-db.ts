import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  TandemError,
  describeError,
  faultByteTrigger,
  isTandemError,
  spawnFilter,
  spawnSource,
  pgBin,
  pgEnv,
  withDatabase,
  type DbMeta,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { isPrivileged, type AgentRole } from './db-prereqs.js';
import { writeDataOffsets } from './dump-offsets.js';
import { applyDatabaseProperties, preinstallExtensions, refuseSiteCodeInDataLoad } from './db-props.js';
import { plainStages } from './artifact-stream.js';
import { faultPoint } from './fault.js';
import { dropDatabase, withMaintenance } from './pg.js';
import type { StagedDb } from './stage.js';
import type { Names } from './targets.js';

/**
 * Restores the staged dump into a fresh database named `names.next`, beside the live one, with the
 * primary's owners and grants (pg_restore without --no-owner/--no-acl): the site's roles own their
 * objects, so PostgreSQL runs index expressions and materialized-view refreshes as those owners,
 * never as the agent. The new database takes the primary's owner and the live one's encoding and
 * locale; its settings, grants and comment follow once the data is in (applyDatabaseProperties).
 *
 * When the agent's session has rights beyond the site's roles, the restore runs in two steps:
 * the schema first, then a check that loading the data runs none of the site's code in that
 * session (refuseSiteCodeInDataLoad), then data and indexes. On failure the new database is
 * dropped and pg_restore's stderr is in the error; the live database is never touched here.
 */
export async function restoreDatabase(
  config: StandbyConfig,
  names: Names,
  staged: StagedDb,
  opts: { setId: string; identities: string[]; logger: Logger; meta?: DbMeta; agent: AgentRole },
): Promise<number> {
  const t0 = performance.now();
  // The staged dump's data offsets (dump-offsets.ts) are written while the new database is created
  // (a parallel restore of a dump without them reads through it to find each table's data); they
  // are in before pg_restore first opens the file.
  const offsets = staged.form === 'plain' && config.database.restoreJobs > 1 ? dataOffsets(staged.file, opts.logger) : undefined;
  offsets?.catch(() => undefined); // awaited below; not an unhandled rejection meanwhile
  try {
    await createNext(config, names, opts.meta, opts.logger);
  } catch (err) {
    await offsets?.catch(() => undefined);
    throw err;
  }
  faultPoint('restore-db-created');
  try {
    if (opts.meta) await preinstallExtensions(config, names, opts.meta);
    await offsets;
    if (isPrivileged(opts.agent)) {
      await runPgRestore(config, names, staged, opts, ['--section=pre-data']);
      await refuseSiteCodeInDataLoad(config, names, opts.setId, opts.agent.name);
      await runPgRestore(config, names, staged, opts, ['--section=data', '--section=post-data']);
    } else {
      await runPgRestore(config, names, staged, opts, []);
    }
    if (opts.meta) await applyDatabaseProperties(config, names, opts.meta, opts.logger);
  } catch (err) {
    await withMaintenance(config, (c) => dropDatabase(c, names.next)).catch((e: unknown) =>
      opts.logger.warn({ err: e, database: names.next }, 'could not drop the half-restored database; the next apply drops it'),
    );
    throw err;
  }
  return Math.round(performance.now() - t0) / 1000;
}

async function dataOffsets(file: string, logger: Logger): Promise<void> {
  const t0 = performance.now();
  const r = await writeDataOffsets(file);
  const seconds = Math.round(performance.now() - t0) / 1000;
  if (r.skipped !== undefined) logger.debug({ file, seconds, why: r.skipped }, 'the staged dump was left without data offsets; pg_restore finds the data by reading through it');
  else logger.debug({ file, seconds, entries: r.written }, 'data offsets written into the staged dump');
}

async function createNext(config: StandbyConfig, names: Names, meta: DbMeta | undefined, logger: Logger): Promise<void> {
  await withMaintenance(config, async (c) => {
    await dropDatabase(c, names.next);
    const live = await c.query<{ owner: string; encoding: string; collate: string; ctype: string; settings: string[] | null }>(
      `SELECT pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS encoding,
              d.datcollate AS collate, d.datctype AS ctype,
              (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0) AS settings
         FROM pg_database d WHERE d.datname = $1`,
      [names.live],
    );
    const row = live.rows[0];
    let sql = `CREATE DATABASE ${c.escapeIdentifier(names.next)} TEMPLATE template0`;
    // The primary's owner; the encoding and locale of the live database (this server's), or of the
    // primary's database on the first apply.
    const owner = meta?.database.owner ?? row?.owner;
    if (owner !== undefined) sql += ` OWNER ${c.escapeIdentifier(owner)}`;
    const enc = row ?? meta?.database;
    if (enc) {
      sql += ` ENCODING ${c.escapeLiteral(enc.encoding)}`;
      sql += ` LC_COLLATE ${c.escapeLiteral(enc.collate)} LC_CTYPE ${c.escapeLiteral(enc.ctype)}`;
    }
    if (!meta && row?.settings && row.settings.length > 0) {
      logger.warn(
        { database: names.live, settings: row.settings },
        'the live database has ALTER DATABASE ... SET settings; a set without a database description does not carry them over',
      );
    }
    await c.query(sql);
  });
}

async function runPgRestore(
  config: StandbyConfig,
  names: Names,
  staged: StagedDb,
  opts: { setId: string; identities: string[]; logger: Logger },
  sections: string[],
): Promise<void> {
  const preDataOnly = sections.length === 1 && sections[0] === '--section=pre-data';
  const jobs = staged.form === 'plain' && !preDataOnly ? config.database.restoreJobs : 1;
  // Owners and grants as on the primary (no --no-owner, no --no-acl): see restoreDatabase.
  const args = ['--exit-on-error', ...sections, `--dbname=${withDatabase(config.database.url, names.next)}`];
  if (jobs > 1) args.push(`--jobs=${jobs}`);
  if (staged.form === 'plain') args.push(staged.file);
  const spawnOpts = { label: `pg_restore of set ${opts.setId}`, env: pgEnv(config.database), package: 'postgresql-client' };
  const bin = pgBin(config.database, 'pg_restore');
  opts.logger.debug({ database: names.next, jobs, sections: sections.length > 0 ? sections.map((a) => a.slice(10)) : 'all' }, 'pg_restore started');
  // pg_restore writes nothing to stdout with -d; its stream ends only after it exited 0.
  const restore = staged.form === 'plain' ? spawnSource(bin, args, spawnOpts) : spawnFilter(bin, args, spawnOpts);
  faultPoint('restore-started');
  const stages: Array<NodeJS.ReadableStream | NodeJS.ReadWriteStream | NodeJS.WritableStream> = [];
  if (staged.form === 'stored') {
    // The stored copy was verified against the signed manifest when it was staged; decoding it
    // again stops at the signed plain size.
    stages.push(...plainStages(staged.file, staged.entry, opts.identities, `set ${opts.setId}: db artifact (${staged.entry.file})`));
    // Crash tests only: TANDEM_FAULT_KILL_AT=restore:db:<bytes> kills while pg_restore reads its input.
    stages.push(...faultByteTrigger('restore:db'));
  }
  try {
    await pipeline([...stages, restore, new Writable({ write: (_chunk, _enc, cb) => cb() })]);
  } catch (err) {
    if (isTandemError(err, 'config')) throw err; // pg_restore not installed
    // The schema alone, read from stdin: pg_restore has all it needs once it has read the table of
    // contents at the front of the dump and exits 0 without reading the data behind it.
    if (preDataOnly && staged.form === 'stored' && restore.exitStatus?.code === 0) return;
    throw new TandemError(
      'external',
      'PG_RESTORE_FAILED',
      `pg_restore of set ${opts.setId} into the new database "${names.next}" failed; the live database "${names.live}" is untouched:\n${indent(restore.stderrTail || describeError(err))}`,
      { hint: 'the new database was dropped; fix what pg_restore says (missing role, extension, disk space ...) and apply again', cause: err },
    );
  }
  if (restore.stderrTail) opts.logger.warn({ stderr: restore.stderrTail }, 'pg_restore wrote warnings');
}

const indent = (text: string) => text.split('\n').map((l) => `    ${l}`).join('\n');
