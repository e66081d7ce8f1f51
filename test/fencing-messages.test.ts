/**
 * What a refused backup says: a replaced primary names the epoch it held and the newer one (also
 * when epoch.json has moved on twice and no longer names it at all), and a server that was never
 * the primary (a standby's host running `tandem-primary backup`) is told it is not the site's
 * primary, not that it was fenced, and its onFenced does not run. The daemon on such a server says
 * the same and writes no heartbeat. Real PostgreSQL, a directory filestore, the built CLI.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { raiseEpoch } from '@tandem/shared';
import { closedPort, ensurePostgres, logRecords, messageLines, requireCommands, runPrimary, startPrimary, tmpDir, waitFor } from './support/site.js';
import { backup, createStandbySite, removeStandbySite, show, writeSitePrimaryConfig, type StandbySite } from './support/standby-helpers.js';

describe('fencing messages', () => {
  let root: string;
  let s: StandbySite;
  let primaryId: string;
  let since: string;

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-fencing-msg-');
    s = await createStandbySite(root);
    await writeSitePrimaryConfig(s, s.primary.configFile, { hostname: 'web1' });
    await backup(s); // epoch 1 names this primary
    primaryId = (await readFile(join(s.primary.stateDir, 'agent-id'), 'utf8')).trim();
    // Promoted twice since (web2, then web3): epoch.json names neither web1 nor, as the one before, it.
    const fs = s.openStore();
    try {
      await raiseEpoch(fs, s.site, { id: 'agent-web2', host: 'web2' }, 'promote', { expect: 1 });
      since = (await raiseEpoch(fs, s.site, { id: 'agent-web3', host: 'web3' }, 'switchover', { expect: 2 })).since;
    } finally {
      await fs.close();
    }
  });

  afterAll(() => removeStandbySite(s, root));

  it('a replaced primary names the epoch it held and the newer one, and runs onFenced', async () => {
    const held = JSON.parse(await readFile(join(s.primary.stateDir, 'held-epoch.json'), 'utf8')) as Record<string, { epoch: number; agentId: string }>;
    expect(held[s.site]).toMatchObject({ epoch: 1, agentId: primaryId });

    const mark = join(root, 'on-fenced-web1.txt');
    const cfg = await writeSitePrimaryConfig(s, join(root, 'primary-hook.yml'), { hostname: 'web1', onFenced: `echo "$TANDEM_EPOCH $TANDEM_FILESTORE_EPOCH" > '${mark}'` });
    const r = await runPrimary(['backup', '--config', cfg]);
    expect(r.code, show(r)).toBe(4);
    expect(messageLines(r.stderr)[0]).toBe(
      `tandem-primary: error: this primary (web1, epoch 1) has been fenced: web3 became primary of site "${s.site}" in epoch 3 at ${since} (switchover); no more uploads`,
    );
    expect(await readFile(mark, 'utf8')).toBe('1 3\n');
  });

  it('a server that never was the primary is told so, and its onFenced does not run', async () => {
    // The standby's server: its own state directory (agent id), the site's primary config.
    const state = join(root, 'standby-host-state');
    const mark = join(root, 'on-fenced-sb.txt');
    const cfg = await writeSitePrimaryConfig(s, join(root, 'standby-host-primary.yml'), { hostname: 'sb1', stateDir: state, onFenced: `touch '${mark}'` });
    const r = await runPrimary(['backup', '--config', cfg]);
    expect(r.code, show(r)).toBe(4);
    const id = (await readFile(join(state, 'agent-id'), 'utf8')).trim();
    const [error, hint] = messageLines(r.stderr);
    expect(error).toBe(
      `tandem-primary: error: this server is not the site's primary: epoch 3 of site "${s.site}" names web3 (agent agent-web3) as the primary (since ${since}, switchover), ` +
        `and this agent, sb1 (agent ${id}), has never been the primary of this site; nothing is uploaded`,
    );
    expect(error).not.toContain('fenced');
    expect(hint).toBe(
      "  hint: back up on the primary (web3); if this is the server that was promoted, run tandem-primary with the standby's stateDir (or a copy of its agent-id file, which holds agent-web3)",
    );
    expect(existsSync(mark)).toBe(false);

    // Its daemon says the same, writes no heartbeat and does not run onFenced either.
    const tokenFile = join(root, 'control.token');
    await writeFile(tokenFile, 'c0ffee00d15ea5e5a11ce0b0b0c0ffee42424242\n', { mode: 0o600 });
    const dcfg = await writeSitePrimaryConfig(s, join(root, 'standby-host-daemon.yml'), {
      hostname: 'sb1',
      stateDir: state,
      onFenced: `touch '${mark}'`,
      heartbeatInterval: '1s',
      server: { listen: `127.0.0.1:${await closedPort()}`, tokenFile },
    });
    const d = startPrimary(['run', '--config', dcfg], { timeoutMs: 120_000 });
    try {
      const rec = await waitFor(() => logRecords(d.stderrSoFar()).find((l) => String(l.msg).startsWith('NOT THE PRIMARY')), 'the daemon saying it is not the primary', 60_000, 100);
      expect(String(rec.why)).toMatch(/^this server is not the site's primary: epoch 3 /);
    } finally {
      d.child.kill('SIGTERM');
    }
    const done = await d.result;
    expect(done.code, done.stderr).toBe(0);
    expect(existsSync(mark)).toBe(false);
    expect(existsSync(join(root, 'store', s.site, 'heartbeat.json'))).toBe(false);
  });
});
