import { setTimeout as sleep } from 'node:timers/promises';
import { TandemError, type Logger, type StandbyConfig } from '@tandem/shared';
import { faultPoint } from './fault.js';
import { databaseExists, dropDatabase, withMaintenance, type PgClient } from './pg.js';
import type { Names } from './targets.js';

export type SwapOutcome = 'swapped' | 'first' | 'already';

const OBJECT_IN_USE = '55006';
const ATTEMPTS = 5;

/**
 * Puts the restored database in place of the live one: block new connections to the live database,
 * end the site's sessions, then rename live → old and next → live in ONE transaction, so the name
 * always belongs to the previous set's database or the new one's, never to neither. The old one is
 * kept (without connections) until the apply has finished.
 *
 * Idempotent, for roll-forward after a crash: no "next" but a live database means this is done.
 */
export async function swapDatabase(config: StandbyConfig, names: Names, logger: Logger): Promise<SwapOutcome> {
  return withMaintenance(config, async (c) => {
    const q = (n: string) => c.escapeIdentifier(n);
    if (!(await databaseExists(c, names.next))) {
      if (await databaseExists(c, names.live)) return 'already';
      throw new TandemError('internal', 'DB_SWAP_LOST', `neither the database "${names.live}" nor the restored "${names.next}" exists`, {
        hint: 'apply the set again with --force',
      });
    }
    // A leftover of an apply whose cleanup did not run: the live database is intact, so it can go.
    await dropDatabase(c, names.old);
    if (!(await databaseExists(c, names.live))) {
      await c.query(`ALTER DATABASE ${q(names.next)} RENAME TO ${q(names.live)}`);
      return 'first';
    }
    await c.query(`ALTER DATABASE ${q(names.live)} WITH ALLOW_CONNECTIONS false`);
    faultPoint('db-blocked');
    try {
      for (let attempt = 1; ; attempt++) {
        const ended = await endSessions(c, names.live);
        if (ended > 0) logger.info({ database: names.live, sessions: ended }, "ended the site's database sessions");
        try {
          await c.query('BEGIN');
          await c.query(`ALTER DATABASE ${q(names.live)} RENAME TO ${q(names.old)}`);
          await c.query(`ALTER DATABASE ${q(names.next)} RENAME TO ${q(names.live)}`);
          await c.query('COMMIT');
          return 'swapped';
        } catch (err) {
          await c.query('ROLLBACK').catch(() => undefined);
          if ((err as { code?: string }).code !== OBJECT_IN_USE || attempt >= ATTEMPTS) throw err;
          await sleep(200 * attempt);
        }
      }
    } catch (err) {
      // Nothing was renamed: let the site back into its (old) database.
      await c.query(`ALTER DATABASE ${q(names.live)} WITH ALLOW_CONNECTIONS true`).catch(() => undefined);
      throw new TandemError('external', 'DB_SWAP_FAILED', `could not swap the restored database "${names.next}" in for "${names.live}": ${(err as Error).message}`, {
        cause: err,
        hint: 'the live database is unchanged; run apply again',
      });
    }
  });
}

/** Terminates every other session on `db` and waits (up to ~5 s) until they are gone; returns how many it ended. */
async function endSessions(c: PgClient, db: string): Promise<number> {
  const r = await c.query<{ ok: boolean }>(
    'SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
    [db],
  );
  for (let i = 0; i < 100; i++) {
    const left = await c.query<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [db]);
    if (left.rows[0]?.n === '0') break;
    await sleep(50);
  }
  return r.rowCount ?? 0;
}

export async function dropOldDatabase(config: StandbyConfig, names: Names): Promise<void> {
  await withMaintenance(config, (c) => dropDatabase(c, names.old));
}

export async function dropNextDatabase(config: StandbyConfig, names: Names): Promise<void> {
  await withMaintenance(config, (c) => dropDatabase(c, names.next));
}
