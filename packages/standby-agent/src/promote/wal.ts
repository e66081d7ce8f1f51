/**
 * Promote in WAL mode: the preflight asks whether everything the primary stored has been replayed,
 * and the promote itself ends recovery with PostgreSQL's own pg_promote() once the epoch is raised
 * (the old primary fenced: it stores no more WAL).
 *
 * "Everything replayed": the filestore holds no WAL file after the newest one this standby handed
 * to PostgreSQL (wal-replay.json), and none was refused since. (PostgreSQL replays a file as soon
 * as it has it; its replay position is shown, not compared.)
 */
import pg from 'pg';
import { TandemError, describeError, nextSegmentName, parseSegmentSize, pgEnv, type Filestore, type Logger, type StandbyConfig } from '@tandem/shared';
import { readWalReplay } from '../wal/replay-state.js';
import type { Check } from './preflight.js';

async function withCluster<T>(config: StandbyConfig, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: config.database.url, password: pgEnv(config.database).PGPASSWORD, connectionTimeoutMillis: 10_000 });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

export async function walReplayedCheck(config: StandbyConfig, fs: Filestore): Promise<Check> {
  try {
    const replay = await readWalReplay(config.stateDir);
    const { inRecovery, segmentBytes, replayFile } = await withCluster(config, async (c) => {
      const r = await c.query<{ rec: boolean; seg: string; lsn: string | null }>(
        "select pg_is_in_recovery() as rec, current_setting('wal_segment_size')::text as seg, pg_last_wal_replay_lsn()::text as lsn",
      );
      const row = r.rows[0]!;
      return { inRecovery: row.rec, segmentBytes: parseSegmentSize(row.seg), replayFile: row.lsn };
    });
    if (!inRecovery) return { name: 'wal-replayed', ok: false, detail: 'the cluster is not in recovery: it is not a standby (promoted already, or not seeded)' };
    const last = replay.last;
    if (last === undefined) return { name: 'wal-replayed', ok: false, detail: 'no WAL file has been replayed from the filestore yet (just seeded?)' };
    const next = nextSegmentName(last.name.slice(0, 24), segmentBytes);
    if (next !== null && (await fs.stat(`${config.site}/wal/${next}.json`)) !== null) {
      return { name: 'wal-replayed', ok: false, detail: `WAL file ${next} is in the filestore and not replayed yet (last replayed ${last.name}): wait for the replay, it runs on its own` };
    }
    if (replay.refused !== undefined && Date.parse(replay.refused.at) > Date.parse(last.at)) {
      return { name: 'wal-replayed', ok: false, detail: `WAL file ${replay.refused.name} was refused (${replay.refused.code}): the replay is stuck before it` };
    }
    return { name: 'wal-replayed', ok: true, detail: `every WAL file in the filestore is replayed (the newest, ${last.name}, stored ${last.archivedAt}; replay position ${replayFile ?? 'unknown'})` };
  } catch (err) {
    return { name: 'wal-replayed', ok: false, detail: `cannot tell whether all WAL is replayed: ${describeError(err)}` };
  }
}

/** Ends recovery: pg_promote(wait => true), and checks the cluster left it. */
export async function promoteCluster(config: StandbyConfig, logger: Logger): Promise<void> {
  await withCluster(config, async (c) => {
    const rec = (await c.query<{ rec: boolean }>('select pg_is_in_recovery() as rec')).rows[0]!.rec;
    if (!rec) {
      logger.info('the cluster is not in recovery: promoted already');
      return;
    }
    const ok = (await c.query<{ ok: boolean }>('select pg_promote(true, 120) as ok')).rows[0]!.ok;
    if (!ok) {
      throw new TandemError('external', 'PG_PROMOTE_FAILED', `pg_promote() did not end recovery of the cluster in ${config.database.dataDir} within 120 s`, {
        hint: "look at PostgreSQL's log; the epoch is raised (the old primary is fenced): once the cause is fixed, run promote again: it finishes this promote",
      });
    }
    const wal = (await c.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f')).rows[0]?.f;
    logger.info({ timeline: wal === undefined ? null : parseInt(wal.slice(0, 8), 16) }, 'PostgreSQL promoted (pg_promote): the cluster takes writes');
  });
}
