/**
 * `tandem-primary check` and `tandem-standby check` in WAL mode, against two real PostgreSQL
 * clusters (wal-site.ts) and the real agents running as the postgres OS user: the primary's
 * wal-settings, wal-archiver and replication lines on a good set-up, then a warning when PostgreSQL
 * does not archive through tandem and a failure while archiving fails; the standby's wal-cluster
 * line before a seed (the data directory and the tools), after one (a standby in recovery that
 * replays through wal-fetch), and once its cluster was promoted by hand.
 */
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensurePostgres, requireCommands, tmpDir, waitFor } from './support/site.js';
import { show } from './support/standby-helpers.js';
import { createWalSite, type WalSite } from './support/wal-site.js';
import { checkLine as line, checkLines as lines, checkHint as hintOf } from './support/check-report.js';



describe('check in WAL mode', () => {
  let root: string;
  let s: WalSite;

  beforeAll(async () => {
    requireCommands(['zstd', 'runuser']);
    await ensurePostgres();
    root = await tmpDir('tandem-check-wal-');
    s = await createWalSite(root);
  }, 60_000);

  afterAll(async () => {
    await s?.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  const primaryCheck = () => s.primaryCli(['check', '--config', s.primary.configFile]);
  const standbyCheck = () => s.standbyCli(['check', '--config', s.standby.configFile]);

  it('passes a fresh WAL site: the primary archives through wal-push and may replicate; the standby\'s data directory and tools are in place', async () => {
    const p = await primaryCheck();
    const names = lines(p).map((l) => l.name);
    // The database checks of dump mode (db-access, roles, pg_dump) make way for WAL mode's.
    expect(names.slice(names.indexOf('postgres'), names.indexOf('postgres') + 4), show(p)).toEqual(['postgres', 'wal-settings', 'wal-archiver', 'replication']);
    expect(names.filter((n) => ['db-access', 'roles', 'pg_dump'].includes(n))).toEqual([]);
    expect(line(p, 'wal-settings')).toEqual({
      status: 'ok',
      name: 'wal-settings',
      detail: 'wal_level replica, archive_mode on, archive_command runs tandem-primary wal-push, wal_log_hints on',
    });
    expect(line(p, 'replication').status, show(p)).toBe('ok');
    expect(line(p, 'replication').detail).toMatch(/^role "postgres" may replicate \(superuser\), max_wal_senders 4, \S+pg_hba\.conf line \d+ allows replication connections$/);
    // Nothing written since initdb fills a WAL file: nothing archived yet.
    expect(line(p, 'wal-archiver')).toMatchObject({ status: 'warn', detail: expect.stringMatching(/^no WAL file archived yet/) });
    expect(hintOf(p, 'wal-archiver')).toContain('pg_switch_wal()');

    // Before the seed: the cluster is not running, and nothing says it should be.
    const sb = await standbyCheck();
    const dataDir = s.standby.cluster.dataDir;
    expect(line(sb, 'wal-cluster').status, show(sb)).toBe('ok');
    expect(line(sb, 'wal-cluster').detail).toMatch(
      new RegExp(`^${dataDir} \\(owned by postgres \\(uid \\d+\\), mode 0700\\), pg_verifybackup 15\\.\\d+, pg_rewind 15\\.\\d+, not seeded yet \\(no wal-seed\\.json in the state dir\\): the first apply seeds it$`),
    );
    expect(lines(sb).map((l) => l.name)).toContain('wal-cluster');
  });

  it('after a seed: the standby is in recovery and replays through wal-fetch; the primary has archived', async () => {
    const b = await s.primaryCli(['backup', '--config', s.primary.configFile, '--json']);
    expect(b.code, show(b)).toBe(0);
    const setId = (JSON.parse(b.stdout) as { setId: string }).setId;
    await s.standby.cluster.start();
    const a = await s.standbyCli(['apply', '--config', s.standby.configFile, '--json']);
    expect(a.code, show(a)).toBe(0);

    const sb = await standbyCheck();
    const wal = line(sb, 'wal-cluster');
    expect(wal.status, show(sb)).toBe('ok');
    expect(wal.detail).toContain(`seeded from set ${setId} `);
    expect(wal.detail).toMatch(/: a standby in recovery on postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres, restore_command runs tandem-standby wal-fetch$/);

    // The base backup switched WAL files; the one it ended in is archived.
    const p = await waitFor(
      async () => {
        const r = await primaryCheck();
        return line(r, 'wal-archiver').status === 'ok' ? r : undefined;
      },
      'the primary archives the base backup\'s WAL',
      20_000,
      500,
    );
    expect(line(p, 'wal-archiver').detail).toMatch(/^\d+ WAL files? archived since .*, the last [0-9A-F]{24}/);
  });

  it('warns when PostgreSQL does not archive through tandem, and fails while archiving fails, naming the WAL file', async () => {
    const c = s.primary.cluster;
    await c.setConf({ archive_command: "'/bin/true'" });
    await c.stop();
    await c.start();
    const p = await primaryCheck();
    expect(line(p, 'wal-settings')).toMatchObject({
      status: 'warn',
      detail: "wal_level replica, archive_mode on, wal_log_hints on; but archive_command is '/bin/true': PostgreSQL does not archive through tandem",
    });
    expect(hintOf(p, 'wal-settings')).toBe(`set archive_command = 'tandem-primary wal-push --config ${s.primary.configFile} %p %f' in postgresql.conf and reload PostgreSQL (SELECT pg_reload_conf())`);

    // An archive_command that fails: the next WAL file is not archived, and the check names it.
    await c.setConf({ archive_command: "'/bin/false'" });
    await c.query('SELECT pg_reload_conf()');
    await new Promise((r) => setTimeout(r, 500));
    const file = (await c.query<{ f: string }>('SELECT pg_walfile_name(pg_current_wal_lsn()) AS f'))[0]!.f;
    await c.query('CREATE TABLE t AS SELECT 1 AS x');
    await c.query('SELECT pg_switch_wal()');
    await waitFor(async () => (await c.query<{ w: string | null }>('SELECT last_failed_wal AS w FROM pg_stat_archiver'))[0]!.w === file || undefined, 'the archiver fails', 20_000, 250);
    const f = await primaryCheck();
    expect(f.code, show(f)).toBe(1);
    expect(line(f, 'wal-archiver').status).toBe('FAIL');
    expect(line(f, 'wal-archiver').detail).toMatch(new RegExp(`^archiving fails: WAL file ${file} failed \\d+ s ago \\(\\d+ failed attempts? since .*\\); the last one archived was [0-9A-F]{24}\\S* \\d+ s ago$`));
    expect(hintOf(f, 'wal-archiver')).toContain("PostgreSQL's log has the archive_command's error");
  });

  it('fails the standby\'s wal-cluster line once its cluster was promoted by hand', async () => {
    await s.standby.cluster.query('SELECT pg_promote()');
    const sb = await standbyCheck();
    expect(sb.code, show(sb)).toBe(1);
    expect(line(sb, 'wal-cluster').status).toBe('FAIL');
    expect(line(sb, 'wal-cluster').detail).toMatch(/^the cluster is not a standby: promoted\? \(pg_is_in_recovery\(\) is false on postgres:\/\/\S+; seeded from set \S+ .*\)$/);
    expect(hintOf(sb, 'wal-cluster')).toContain('tandem-standby apply replaces it');
  });
});
