import { createReadStream } from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  TandemError,
  createAgeDecryptStream,
  describeError,
  faultByteTrigger,
  isTandemError,
  spawnFilter,
  spawnSource,
  pgBin,
  pgEnv,
  withDatabase,
  zstdDecompress,
  type Logger,
  type StandbyConfig,
} from '@tandem/shared';
import { faultPoint } from './fault.js';
import { dropDatabase, withMaintenance } from './pg.js';
import type { StagedDb } from './stage.js';
import type { Names } from './targets.js';

/**
 * Restores the staged dump into a fresh database named `names.next`, beside the live one. The new
 * database takes the live one's owner, encoding and locale (the standby's settings, not the
 * primary's); objects are owned by the restoring user (--no-owner) and no grants are copied
 * (--no-acl). On failure the new database is dropped and pg_restore's stderr is in the error; the
 * live database is never touched here.
 */
export async function restoreDatabase(
  config: StandbyConfig,
  names: Names,
  staged: StagedDb,
  opts: { setId: string; identities: string[]; logger: Logger },
): Promise<number> {
  const t0 = performance.now();
  await createNext(config, names, opts.logger);
  faultPoint('restore-db-created');
  try {
    await runPgRestore(config, names, staged, opts);
  } catch (err) {
    await withMaintenance(config, (c) => dropDatabase(c, names.next)).catch((e: unknown) =>
      opts.logger.warn({ err: e, database: names.next }, 'could not drop the half-restored database; the next apply drops it'),
    );
    throw err;
  }
  return Math.round(performance.now() - t0) / 1000;
}

async function createNext(config: StandbyConfig, names: Names, logger: Logger): Promise<void> {
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
    if (row) {
      sql += ` OWNER ${c.escapeIdentifier(row.owner)} ENCODING ${c.escapeLiteral(row.encoding)}`;
      sql += ` LC_COLLATE ${c.escapeLiteral(row.collate)} LC_CTYPE ${c.escapeLiteral(row.ctype)}`;
      if (row.settings && row.settings.length > 0) {
        logger.warn(
          { database: names.live, settings: row.settings },
          'the live database has ALTER DATABASE ... SET settings; the restored database does not carry them over (set them with the role or in postgresql.conf)',
        );
      }
    }
    await c.query(sql);
  });
}

async function runPgRestore(
  config: StandbyConfig,
  names: Names,
  staged: StagedDb,
  opts: { setId: string; identities: string[]; logger: Logger },
): Promise<void> {
  const jobs = staged.form === 'plain' ? config.database.restoreJobs : 1;
  const args = ['--no-owner', '--no-acl', '--exit-on-error', `--dbname=${withDatabase(config.database.url, names.next)}`];
  if (jobs > 1) args.push(`--jobs=${jobs}`);
  if (staged.form === 'plain') args.push(staged.file);
  const spawnOpts = { label: `pg_restore of set ${opts.setId}`, env: pgEnv(config.database), package: 'postgresql-client' };
  const bin = pgBin(config.database, 'pg_restore');
  opts.logger.info({ database: names.next, jobs }, 'pg_restore started');
  // pg_restore writes nothing to stdout with -d; its stream ends only after it exited 0.
  const restore = staged.form === 'plain' ? spawnSource(bin, args, spawnOpts) : spawnFilter(bin, args, spawnOpts);
  faultPoint('restore-started');
  const stages: Array<NodeJS.ReadableStream | NodeJS.ReadWriteStream | NodeJS.WritableStream> = [];
  if (staged.form === 'stored') {
    stages.push(createReadStream(staged.file));
    if (staged.entry.encryption === 'age') stages.push(createAgeDecryptStream(opts.identities, { label: staged.file }));
    stages.push(zstdDecompress());
    // Crash tests only: TANDEM_FAULT_KILL_AT=restore:db:<bytes> kills while pg_restore reads its input.
    stages.push(...faultByteTrigger('restore:db'));
  }
  try {
    await pipeline([...stages, restore, new Writable({ write: (_chunk, _enc, cb) => cb() })]);
  } catch (err) {
    if (isTandemError(err, 'config')) throw err; // pg_restore not installed
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
