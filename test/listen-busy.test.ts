/**
 * A daemon whose port is taken at start-up exits 75 (a temporary failure), naming the port, and the
 * systemd units restart on it: at boot the port may still be held by a process on its way out, and
 * a unit that gave up for good would leave the standby down. Real CLIs, a real socket holding the port.
 */
import { createServer, type Server } from 'node:net';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort, ensurePostgres, messageLines, REPO_ROOT, requireBuilt, requireCommands, runPrimary, startPrimary, STANDBY_MAIN, tmpDir, waitFor } from './support/site.js';
import { writeDaemonConfig } from './support/standby-daemon.js';
import { backup, createStandbySite, removeStandbySite, runStandby, show, writeSitePrimaryConfig, type StandbySite } from './support/standby-helpers.js';

const EX_TEMPFAIL = 75;

describe('a port in use at start-up', () => {
  let root: string;
  let s: StandbySite;
  let holder: Server;
  let port: number;

  beforeAll(async () => {
    requireBuilt();
    requireBuilt(STANDBY_MAIN);
    requireCommands(['zstd', 'tar', 'pg_dump']);
    await ensurePostgres();
    root = await tmpDir('tandem-busy-');
    s = await createStandbySite(root);
    holder = createServer();
    await new Promise<void>((res, rej) => holder.listen(0, '127.0.0.1', res).once('error', rej));
    port = (holder.address() as { port: number }).port;
  });

  afterAll(async () => {
    await new Promise<void>((res) => (holder ? holder.close(() => res()) : res()));
    await removeStandbySite(s, root);
  });

  it('makes tandem-standby run exit 75, naming the port', async () => {
    const config = await writeDaemonConfig(s, join(root, 'standby-busy.yml'), { listen: `127.0.0.1:${port}` });
    const r = await runStandby(['run', '--config', config], { env: s.env });
    expect(r.code, show(r)).toBe(EX_TEMPFAIL);
    const lines = messageLines(r.stderr);
    expect(lines[0]).toBe(`tandem-standby: error: cannot listen on 127.0.0.1:${port} (server.listen): port ${port} is in use (another daemon?)`);
    expect(lines[1]).toMatch(new RegExp(`^  hint: stop what holds port ${port} .*temporary failure`));
  });

  it('makes tandem-primary run exit 75, naming the port', async () => {
    const config = await writeSitePrimaryConfig(s, join(root, 'primary-busy.yml'), { server: { listen: `127.0.0.1:${port}` } });
    const r = await runPrimary(['run', '--config', config], { env: { ...s.env, TANDEM_TOKEN: 'busy-port-test-token-0123456789' } });
    expect(r.code, show(r)).toBe(EX_TEMPFAIL);
    expect(messageLines(r.stderr)[0]).toBe(`tandem-primary: error: cannot listen on 127.0.0.1:${port} (server.listen): port ${port} is in use (another daemon?)`);
  });

  it('leaves heartbeat.json as it is when tandem-primary run fails to start (never a false "stopped")', async () => {
    // A "stopped" heartbeat tells a standby's promote the primary is down: only a daemon that ran
    // and wrote its own heartbeats may write one. Here the real primary crashed (SIGKILL) with its
    // running heartbeat in place; daemons that fail to start must not touch it.
    const env = { ...s.env, TANDEM_TOKEN: 'busy-port-test-token-0123456789' };
    const heartbeatFile = join(root, 'store', s.site, 'heartbeat.json');
    await backup(s); // epoch 1 names this primary
    const running = await writeSitePrimaryConfig(s, join(root, 'primary-running.yml'), { heartbeatInterval: '1h', server: { listen: `127.0.0.1:${await closedPort()}` } });
    const d = startPrimary(['run', '--config', running], { env, timeoutMs: 60_000 });
    const before = await waitFor(async () => {
      if (d.child.exitCode !== null) throw new Error(`tandem-primary run exited: ${d.stderrSoFar()}`);
      const raw = await readFile(heartbeatFile).catch(() => null);
      return raw !== null && (JSON.parse(raw.toString('utf8')) as { state?: string }).state === 'running' ? raw : null;
    }, 'the daemon\'s running heartbeat', 30_000, 50);
    d.child.kill('SIGKILL');
    await d.result;

    // The port is taken: exit 75, and heartbeat.json byte for byte what the crashed daemon left.
    const busy = await writeSitePrimaryConfig(s, join(root, 'primary-busy-hb.yml'), { heartbeatInterval: '1h', server: { listen: `127.0.0.1:${port}` } });
    const r = await runPrimary(['run', '--config', busy], { env });
    expect(r.code, show(r)).toBe(EX_TEMPFAIL);
    expect(r.stderr).not.toMatch(/heartbeat\.json says stopped/);
    expect((await readFile(heartbeatFile)).equals(before), 'heartbeat.json changed').toBe(true);

    // The BACKUP sentinel is there (the site here is a standby): exit 2, heartbeat.json untouched.
    const sentinel = join(s.primary.paths.config, 'BACKUP');
    await writeFile(sentinel, 'written by hand\n');
    try {
      const b = await runPrimary(['run', '--config', running], { env });
      expect(b.code, show(b)).toBe(2);
      expect(b.stderr).toContain(`the sentinel ${sentinel} exists`);
      expect((await readFile(heartbeatFile)).equals(before), 'heartbeat.json changed').toBe(true);
    } finally {
      await rm(sentinel, { force: true });
    }
  }, 120_000);

  it('is restarted by the systemd units: exit 75 is not in RestartPreventExitStatus', async () => {
    for (const unit of ['tandem-primary.service', 'tandem-standby.service']) {
      const text = await readFile(join(REPO_ROOT, 'etc', unit), 'utf8');
      expect(text, unit).toMatch(/^Restart=on-failure$/m);
      const prevent = [...text.matchAll(/^RestartPreventExitStatus=(.*)$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/));
      expect(prevent, unit).not.toContain(String(EX_TEMPFAIL));
    }
  });
});
