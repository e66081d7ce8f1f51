/**
 * WAL mode's db artifact: a base backup of the site's cluster, made by the real `pg_basebackup`
 * as one tar on its stdout (`-Ft -D -`), with the WAL the backup needs to be consistent inside it
 * (`-X fetch`) and PostgreSQL's own backup_manifest appended, so that a standby can restore it
 * without the WAL archive and check it with `pg_verifybackup`. It flows through the same
 * compression → encryption → SHA-256 → filestore pipeline as a dump: nothing plain touches disk.
 *
 * The tar's first entry is backup_label (PostgreSQL writes it first); it is read as it passes to
 * learn where the backup starts (WAL position, timeline), which the signed manifest records.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { join } from 'node:path';
import { TandemError, pgEnv, spawnSource, withPg, type ChildStream, type PrimaryConfig } from '@tandem/shared';

export interface BackupLabel {
  startLsn: string;
  timeline: number;
  /** The WAL file the backup starts in. */
  startWalFile: string;
}

const LABEL_LIMIT = 64 * 1024;

/** Reads backup_label out of the first tar entry as the bytes pass, and passes every byte on unchanged. */
export class BackupLabelSniffer extends Transform {
  #head: Buffer[] = [];
  #seen = 0;
  #label: BackupLabel | null = null;

  get label(): BackupLabel | null {
    return this.#label;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.#label === null && this.#seen < LABEL_LIMIT) {
      this.#head.push(chunk);
      this.#seen += chunk.length;
      this.#label = parseLabelTar(Buffer.concat(this.#head));
      if (this.#label !== null || this.#seen >= LABEL_LIMIT) this.#head = [];
    }
    cb(null, chunk);
  }
}

/** backup_label from the start of a tar stream, or null while there is not enough of it. */
export function parseLabelTar(head: Buffer): BackupLabel | null {
  if (head.length < 512) return null;
  const name = head.subarray(0, 100).toString('latin1').replace(/\0.*$/s, '');
  if (name !== 'backup_label') return null;
  const size = parseInt(head.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim(), 8);
  if (!Number.isSafeInteger(size) || head.length < 512 + size) return null;
  return parseBackupLabel(head.subarray(512, 512 + size).toString('utf8'));
}

/** "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)" and "START TIMELINE: 1". */
export function parseBackupLabel(text: string): BackupLabel | null {
  const loc = /^START WAL LOCATION: ([0-9A-F]{1,8}\/[0-9A-F]{1,8}) \(file ([0-9A-F]{24})\)$/m.exec(text);
  const tli = /^START TIMELINE: (\d+)$/m.exec(text);
  if (!loc || !tli) return null;
  return { startLsn: loc[1]!, startWalFile: loc[2]!, timeline: Number(tli[1]) };
}

const pgBaseBackupBin = (config: PrimaryConfig): string => (config.database.binDir ? join(config.database.binDir, 'pg_basebackup') : 'pg_basebackup');

/**
 * The running `pg_basebackup` as a stream of its tar, and the sniffer that learns backup_label.
 * `-c fast`: the backup starts at once (an immediate checkpoint) rather than after the next one.
 */
export function baseBackupSource(config: PrimaryConfig, label: string): { source: ChildStream; sniffer: BackupLabelSniffer } {
  const source = spawnSource(
    pgBaseBackupBin(config),
    ['-Ft', '-D', '-', '-X', 'fetch', '-c', 'fast', '-w', `--label=${label}`, `--dbname=${config.database.url}`],
    { label: 'pg_basebackup', env: pgEnv(config.database), package: 'postgresql-client' },
  );
  return { source, sniffer: new BackupLabelSniffer() };
}

/** The cluster's system id (decimal), which every WAL file of it carries. */
export async function clusterSystemId(config: PrimaryConfig): Promise<string> {
  return withPg(config.database, async (c) => {
    const r = await c.query<{ id: string }>('select system_identifier::text as id from pg_control_system()');
    const id = r.rows[0]?.id;
    if (id === undefined) throw new TandemError('permanent', 'WAL_SYSTEM_ID', 'pg_control_system() returned no system identifier');
    return id;
  });
}

/** The label the base backup ended without: it always starts with backup_label, so this is a broken stream. */
export function labelMissing(setId: string): TandemError {
  return new TandemError('permanent', 'BASE_BACKUP_NO_LABEL', `set ${setId}: the base backup did not start with backup_label; nothing was committed`, {
    hint: 'is database.url a PostgreSQL 15 server, and pg_basebackup of the same major version?',
  });
}
