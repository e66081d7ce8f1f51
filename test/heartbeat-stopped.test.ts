/**
 * A clean primary shutdown marks its heartbeat stopped: `tandem-primary run` stopped with SIGTERM
 * writes a last, signed heartbeat.json saying "stopped", `tandem-standby status` says so, and
 * `tandem-standby promote` goes ahead at once, without --force and without waiting for the
 * heartbeat to go stale (heartbeatStaleAfter is 10 minutes here). A daemon started again writes
 * running heartbeats over it: promote refuses until it stops again. Real PostgreSQL, a directory
 * filestore, the built CLIs.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadVerifyKeyFile, verifyHeartbeat, type Heartbeat } from '@tandem/shared';
import { closedPort, ensurePostgres, logRecords, requireCommands, startPrimary, tmpDir, waitFor, type RunningPrimary } from './support/site.js';
import { apply, backup, createStandbySite, removeStandbySite, runStandby, show, writeSitePrimaryConfig, writeStandbyConfig, type StandbySite } from './support/standby-helpers.js';

const STALE_AFTER_MS = 10 * 60_000;

describe('a clean primary shutdown', () => {
  let root: string;
  let s: StandbySite;
  let daemonConfig: string;
  let standbyConfig: string;
  let setId: string;
  let daemon: RunningPrimary | undefined;

  const heartbeatFile = () => join(s.root, 'store', s.site, 'heartbeat.json');
  const readHeartbeat = async (): Promise<Heartbeat | null> => {
    const raw = await readFile(heartbeatFile()).catch(() => null);
    return raw === null ? null : verifyHeartbeat(raw, loadVerifyKeyFile(s.keys.verifyKeyFile), 'heartbeat.json');
  };
  const status = () => runStandby(['status', '--config', standbyConfig], { env: s.env });

  /** `tandem-primary run`, once its first heartbeat (written after this call) is in the filestore. */
  async function startDaemon(): Promise<RunningPrimary> {
    const since = Date.now();
    const d = startPrimary(['run', '--config', daemonConfig], { env: s.env, timeoutMs: 300_000 });
    await waitFor(async () => {
      if (d.child.exitCode !== null) throw new Error(`tandem-primary run exited: ${d.stderrSoFar()}`);
      const hb = await readHeartbeat();
      return hb !== null && hb.state === 'running' && Date.parse(hb.at) >= since - 1_000 ? hb : null;
    }, 'a running heartbeat from the daemon', 60_000, 100);
    return d;
  }

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-hb-stopped-');
    s = await createStandbySite(root);
    const tokenFile = join(root, 'control.token');
    await writeFile(tokenFile, 'c0ffee00d15ea5e5a11ce0b0b0c0ffee42424242\n', { mode: 0o600 });
    daemonConfig = await writeSitePrimaryConfig(s, join(root, 'primary-daemon.yml'), {
      hostname: 'web1',
      heartbeatInterval: '1s',
      server: { listen: `127.0.0.1:${await closedPort()}`, tokenFile },
    });
    standbyConfig = await writeStandbyConfig(s, join(root, 'standby-hb.yml'));
    await writeFile(standbyConfig, `${await readFile(standbyConfig, 'utf8')}heartbeatStaleAfter: 10m\n`);
    setId = await backup(s);
    const r = await apply(s, [], {}, standbyConfig);
    if (r.code !== 0) throw new Error(`apply failed: ${show(r)}`);
  });

  afterAll(async () => {
    if (daemon && daemon.child.exitCode === null) {
      daemon.child.kill('SIGKILL');
      await daemon.result;
    }
    await removeStandbySite(s, root);
  });

  it('writes a signed "stopped" heartbeat on SIGTERM; status says so and promote goes ahead at once, unless a daemon runs again', async () => {
    daemon = await startDaemon();
    // While it runs, its heartbeat is fresh: promote refuses (it would wait 10 minutes for staleness).
    const refused = await runStandby(['promote', '--config', standbyConfig], { env: s.env });
    expect(refused.code, show(refused)).toBe(1);
    expect(refused.stderr).toMatch(/FAIL {2}the primary's heartbeat is fresh: \S+ old \(from web1, epoch 1\), stale only after 10m/);

    const tStop = Date.now();
    daemon.child.kill('SIGTERM');
    const stopped = await daemon.result;
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(logRecords(stopped.stderr).some((l) => String(l.msg).startsWith('heartbeat.json says stopped'))).toBe(true);

    // heartbeat.json, verified with the standby's key: the daemon's last word.
    const hb = (await readHeartbeat())!;
    expect(hb).toMatchObject({ format: 'tandem-heartbeat', version: 1, site: s.site, epoch: 1, primaryHost: 'web1', state: 'stopped', nextBackupAt: null });
    expect(hb.latest?.setId).toBe(setId);
    expect(Date.parse(hb.at)).toBeGreaterThanOrEqual(tStop - 2_000);

    const st = await status();
    expect(st.code, show(st)).toBe(0);
    expect(st.stdout).toMatch(new RegExp(`primary\\s+stopped cleanly at ${hb.at.replace(/\.\d{3}Z$/, 'Z')} \\(\\S+ ago, web1, epoch 1: its daemon's last heartbeat\\)`));

    // Started again, the daemon's running heartbeats replace the stopped one: refused again.
    daemon = await startDaemon();
    const again = await runStandby(['promote', '--config', standbyConfig], { env: s.env });
    expect(again.code, show(again)).toBe(1);
    expect(again.stderr).toMatch(/FAIL {2}the primary's heartbeat is fresh/);
    daemon.child.kill('SIGTERM');
    expect((await daemon.result).code).toBe(0);
    const last = (await readHeartbeat())!;
    expect(last.state).toBe('stopped');
    expect(Date.parse(last.at)).toBeGreaterThan(Date.parse(hb.at));

    // Without --force, and without waiting out heartbeatStaleAfter.
    const t0 = Date.now();
    const p = await runStandby(['promote', '--config', standbyConfig], { env: s.env });
    const took = Date.now() - t0;
    expect(p.code, show(p)).toBe(0);
    expect(p.stdout).toContain(`ok    the primary stopped cleanly at ${last.at}`);
    expect(p.stdout).toContain('and names the newest set');
    expect(p.stdout).not.toContain('overridden by --force');
    expect(p.stdout).toContain('promoted site');
    expect(took).toBeLessThan(STALE_AFTER_MS / 5);
    expect(Date.now() - Date.parse(last.at)).toBeLessThan(STALE_AFTER_MS); // the heartbeat was never stale
  });
});
