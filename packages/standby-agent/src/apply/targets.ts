import { realpath } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { TandemError, databaseName, isS3Url, type StandbyConfig } from '@tandem/shared';

/**
 * The names of everything an apply creates beside the live site: a part is staged under its "next"
 * name and the live one is kept under its "old" name until the apply has finished.
 */
export type DirPartName = 'config' | 'security' | 'files';
export type PartName = 'db' | DirPartName;
export const DIR_PARTS: readonly DirPartName[] = ['config', 'security', 'files'];
/** The order in which parts are switched (and rolled forward). */
export const PART_ORDER: readonly PartName[] = ['db', ...DIR_PARTS];

export interface Names {
  live: string;
  next: string;
  old: string;
}

/**
 * The database part. schemaOf: the site is one schema of the shared database of that name
 * (database.schema), and live/next/old are schema names in it; else they are database names.
 */
export interface DbNames extends Names {
  schemaOf?: string;
}

export interface Targets {
  db: DbNames;
  dirs: Record<DirPartName, Names>;
  /** WAL mode: the cluster's data directory (database.dataDir), swapped whole by a seed (cluster.ts). */
  cluster?: Names;
}

/** PostgreSQL silently truncates identifiers to 63 bytes; a truncated name could hit another database. */
const MAX_IDENT_BYTES = 63;

export function dbNames(live: string): Names {
  const names = { live, next: `${live}__tandem_new`, old: `${live}__tandem_old` };
  if (Buffer.byteLength(names.old) > MAX_IDENT_BYTES) {
    throw new TandemError('config', 'DB_NAME_TOO_LONG', `database name "${live}" is too long: tandem needs room for "${live}__tandem_old" (63 bytes at most)`, {
      hint: 'use a database name of at most 50 bytes in database.url',
    });
  }
  return names;
}

export function dirNames(live: string): Names {
  const parent = dirname(live);
  const base = basename(live);
  return { live, next: join(parent, `${base}.tandem-new`), old: join(parent, `${base}.tandem-old`) };
}

/** A live dir that is a symlink is replaced where it really is, so next and old share its file system. */
async function real(p: string): Promise<string> {
  try {
    return await realpath(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return p;
    throw err;
  }
}

/** database.schema: the schema's names in the shared database (schema.ts). */
export function schemaNames(schema: string, database: string): DbNames {
  return { live: schema, next: `${schema}__tandem_new`, old: `${schema}__tandem_old`, schemaOf: database };
}

export async function targetsFor(config: StandbyConfig): Promise<Targets> {
  const database = databaseName(config.database.url);
  return {
    ...(config.database.mode === 'wal' ? { cluster: dirNames(await real(config.database.dataDir!)) } : {}),
    db: config.database.schema === undefined ? dbNames(database) : schemaNames(config.database.schema, database),
    dirs: {
      config: dirNames(await real(config.paths.config)),
      security: dirNames(await real(config.paths.security)),
      // A bucket (s3://) is updated object by object; its staging lives in the state dir.
      files: isS3Url(config.paths.files)
        ? { live: config.paths.files, next: join(config.stateDir, 'files-bucket.tandem-new'), old: join(config.stateDir, 'files-bucket.tandem-old') }
        : dirNames(await real(config.paths.files)),
    },
  };
}

export const stagingRoot = (stateDir: string): string => join(stateDir, 'staging');
export const stagingDir = (stateDir: string, setId: string): string => join(stagingRoot(stateDir), setId);
