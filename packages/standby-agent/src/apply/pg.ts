import { TandemError, withPg, type StandbyConfig } from '@tandem/shared';

/** The pg client handed out by withPg (the standby package has no direct dependency on pg). */
export type PgClient = Parameters<Parameters<typeof withPg>[1]>[0];

/** Run `fn` on the maintenance database, where CREATE/ALTER/DROP DATABASE of the site's database happen. */
export function withMaintenance<T>(config: StandbyConfig, fn: (c: PgClient) => Promise<T>): Promise<T> {
  return withPg(config.database, fn, config.database.maintenanceDb);
}

export async function databaseExists(c: PgClient, name: string): Promise<boolean> {
  const r = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
  return (r.rowCount ?? 0) > 0;
}

export async function dropDatabase(c: PgClient, name: string): Promise<void> {
  await c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)} WITH (FORCE)`);
}

export function checkMaintenanceDb(config: StandbyConfig, live: string): void {
  // A schema of a shared database is replaced inside that database: no database is swapped.
  if (config.database.schema !== undefined) return;
  if (live === config.database.maintenanceDb) {
    throw new TandemError(
      'config',
      'DB_IS_MAINTENANCE',
      `database.url names the database "${live}", which is also the maintenance database: tandem replaces the site's database as a whole and must work from another one`,
      { hint: 'give the site its own database, or set database.maintenanceDb' },
    );
  }
}
