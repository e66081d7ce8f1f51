/**
 * What someone who can write one object into the filestore, and holds no signing key, can do (every
 * standby can: it writes standbys/<id>.json and epoch.json). Each attack runs against the built CLIs
 * and a directory filestore:
 * - a 1.5 GiB latest.json, manifest, epoch.json, heartbeat.json or standby report (sparse: no disk)
 *   is refused from its size before a byte is read; the agent's peak memory is measured;
 * - latest.json naming another set while the only set's manifest is dated back by years: `prune`
 *   deletes nothing;
 * - an older, validly signed latest.json put back: the primary daemon's heartbeat goes on naming the
 *   newest set, and the standby's status, --max-lag and /metrics alarm instead of showing 0 pending.
 */
import { mkdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layout, loadVerifyKeyFile, verifyHeartbeat } from '@tandem/shared';
import { silentPrimary } from '../support/heartbeat.js';
import { closedPort, ensurePostgres, logRecords, requireCommands, runPrimary, sleep, startPrimary, tmpDir, waitFor, type RunningPrimary } from '../support/site.js';
import { apply, backup, createStandbySite, removeStandbySite, runStandby, show, writeSitePrimaryConfig, type StandbySite } from '../support/standby-helpers.js';
import { httpGet, metric, startStandbyDaemon, writeDaemonConfig, writeToken, type RunningStandby } from '../support/standby-daemon.js';

const GIB = 1024 ** 3;
const HUGE = 1.5 * GIB;
/** A CLI run that reads none of the 1.5 GiB stays far below it; reading it costs at least that. */
const MAX_RSS_BYTES = 400 * 1024 * 1024;

let root: string;
let s: StandbySite;
let store: string;
let first: string;
let rssPreload: string;

/** The object's path in the directory filestore. */
const objectPath = (key: string) => join(store, ...key.split('/'));

/** Runs the agent with a preload that records its peak RSS; returns the result and the peak in bytes. */
async function measured(agent: 'primary' | 'standby', args: string[]): Promise<{ r: Awaited<ReturnType<typeof runStandby>>; peak: number }> {
  const rssFile = join(root, `rss-${Date.now()}-${Math.random().toString(16).slice(2)}`);
  const env = { NODE_OPTIONS: `--require ${rssPreload}`, TANDEM_TEST_RSS_FILE: rssFile };
  const r = agent === 'primary' ? await runPrimary(args, { env }) : await runStandby(args, { env });
  const peak = Number(await readFile(rssFile, 'utf8')) * 1024; // resourceUsage().maxRSS is in KiB
  return { r, peak };
}

/** Replaces the object at `key` by a sparse file of `size` bytes for the duration of `fn`. */
async function withHuge(key: string, fn: () => Promise<void>, size = HUGE): Promise<void> {
  const p = objectPath(key);
  const saved = await readFile(p).catch(() => null);
  await writeFile(p, '');
  await truncate(p, size);
  try {
    await fn();
  } finally {
    if (saved === null) await rm(p, { force: true });
    else await writeFile(p, saved);
  }
}

beforeAll(async () => {
  requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
  await ensurePostgres();
  root = await tmpDir('tandem-forged-');
  s = await createStandbySite(root);
  store = fileURLToPath(s.filestoreUrl);
  rssPreload = join(root, 'max-rss.cjs');
  await writeFile(
    rssPreload,
    "process.on('exit', () => { try { require('node:fs').writeFileSync(process.env.TANDEM_TEST_RSS_FILE, String(process.resourceUsage().maxRSS)); } catch {} });\n",
  );
  first = await backup(s);
  const r = await apply(s);
  expect(r.code, show(r)).toBe(0);
});
afterAll(async () => {
  await removeStandbySite(s, root);
});

describe('a 1.5 GiB small document is refused from its size, before a byte is read', () => {
  const tooLarge = (key: string) => `${key} is ${HUGE} bytes, more than the 1048576 bytes a tandem document may have`;

  it('latest.json: status reports it, apply and prune refuse it (exit 5), list marks nothing; none reads it', async () => {
    const key = layout.latest(s.site);
    await withHuge(key, async () => {
      const st = await measured('standby', ['status', '--json', '--config', s.standby.configFile]);
      expect(st.r.code, show(st.r)).toBe(0);
      const doc = JSON.parse(st.r.stdout) as { problems: string[]; latestSetId: string | null; appliedSetId: string };
      expect(doc.problems.join('\n')).toContain(tooLarge(key));
      expect(doc).toMatchObject({ latestSetId: null, appliedSetId: first });
      expect(st.peak).toBeLessThan(MAX_RSS_BYTES);

      const ap = await measured('standby', ['apply', '--config', s.standby.configFile]);
      expect(ap.r.code, show(ap.r)).toBe(5);
      expect(ap.r.stderr).toContain(tooLarge(key));
      expect(ap.peak).toBeLessThan(MAX_RSS_BYTES);

      const pr = await measured('primary', ['prune', '--dry-run', '--config', s.primary.configFile]);
      expect(pr.r.code, show(pr.r)).toBe(5);
      expect(pr.r.stderr).toMatch(/retention: cannot read .*latest\.json: .* more than the 1048576 bytes .*; deleting nothing/);
      expect(pr.peak).toBeLessThan(MAX_RSS_BYTES);

      const ls = await measured('primary', ['list', '--json', '--config', s.primary.configFile]);
      expect(ls.r.code, show(ls.r)).toBe(0);
      expect((JSON.parse(ls.r.stdout) as Array<{ latest: boolean }>).some((x) => x.latest)).toBe(false);
      expect(logRecords(ls.r.stderr).some((l) => String(l.msg).includes('latest.json does not verify: no set is marked latest'))).toBe(true);
      expect(ls.peak).toBeLessThan(MAX_RSS_BYTES);
    });
  });

  it('a manifest, epoch.json, heartbeat.json and a standby report: refused (or, a report, ignored), memory bounded', async () => {
    const manifest = layout.manifest(s.site, first);
    await withHuge(manifest, async () => {
      const ap = await measured('standby', ['apply', '--force', '--set', first, '--config', s.standby.configFile]);
      expect(ap.r.code, show(ap.r)).toBe(5);
      expect(ap.r.stderr).toContain(tooLarge(manifest));
      expect(ap.peak).toBeLessThan(MAX_RSS_BYTES);
    });

    const epoch = layout.epoch(s.site);
    await withHuge(epoch, async () => {
      const b = await measured('primary', ['backup', '--config', s.primary.configFile]);
      expect(b.r.code, show(b.r)).toBe(5);
      expect(b.r.stderr).toContain(tooLarge(epoch));
      expect(b.peak).toBeLessThan(MAX_RSS_BYTES);
    });

    const heartbeat = layout.heartbeat(s.site);
    await silentPrimary(s);
    await withHuge(heartbeat, async () => {
      const st = await measured('standby', ['status', '--json', '--config', s.standby.configFile]);
      expect((JSON.parse(st.r.stdout) as { problems: string[] }).problems.join('\n')).toContain(tooLarge(heartbeat));
      expect(st.peak).toBeLessThan(MAX_RSS_BYTES);
      const pr = await measured('standby', ['promote', '--config', s.standby.configFile]);
      expect(pr.r.code, show(pr.r)).toBe(1);
      expect(pr.r.stderr).toMatch(/FAIL {2}cannot read the primary's heartbeat: \S+\/heartbeat\.json is 1610612736 bytes, more than the 1048576 bytes/);
      expect(pr.peak).toBeLessThan(MAX_RSS_BYTES);
    });

    const report = layout.standby(s.site, 'intruder');
    await mkdir(dirname(objectPath(report)), { recursive: true });
    await writeFile(objectPath(report), '{}');
    await withHuge(report, async () => {
      const pr = await measured('primary', ['prune', '--dry-run', '--json', '--config', s.primary.configFile]);
      expect(pr.r.code, show(pr.r)).toBe(0);
      expect((JSON.parse(pr.r.stdout) as { keep: Array<{ setId: string }> }).keep.map((k) => k.setId)).toContain(first);
      expect((logRecords(pr.r.stderr).find((l) => l.msg === 'retention: ignoring an unreadable standby report')?.err as { message?: string } | undefined)?.message).toContain(tooLarge(report));
      expect(pr.peak).toBeLessThan(MAX_RSS_BYTES);
    });
    await rm(objectPath(report), { force: true });
  });
});

describe('retention decides from signed data only', () => {
  it('prune --dry-run: latest.json naming another set and the only set dated back would have deleted it; now nothing', async () => {
    const latestKey = layout.latest(s.site);
    const manifestKey = layout.manifest(s.site, first);
    const savedLatest = await readFile(objectPath(latestKey), 'utf8');
    const savedManifest = await readFile(objectPath(manifestKey), 'utf8');
    try {
      // Both edited in place, signatures left as they were.
      await writeFile(objectPath(latestKey), savedLatest.replace(first, '20010101T000000Z-e1-999999'));
      await writeFile(objectPath(manifestKey), savedManifest.replace(/"createdAt": "[^"]+"/, '"createdAt": "2001-01-01T00:00:00.000Z"'));
      const dry = await runPrimary(['prune', '--dry-run', '--config', s.primary.configFile]);
      expect(dry.code, show(dry)).toBe(5);
      expect(dry.stderr).toMatch(/retention: cannot read .*latest\.json: .*latest\.json: signature does not match its content \(tampered or damaged\); deleting nothing/);
      expect(dry.stdout).not.toContain('would delete');

      // latest.json restored, the manifest still edited: the set is reported, not deleted.
      await writeFile(objectPath(latestKey), savedLatest);
      const real = await runPrimary(['prune', '--config', s.primary.configFile]);
      expect(real.code, show(real)).toBe(0);
      expect(real.stdout).toMatch(new RegExp(`KEEP, UNVERIFIED  ${first}  latest\\.json names it; UNVERIFIED: its manifest does not verify`));
      expect(real.stdout).toContain('1 set(s) whose manifest does not verify: kept, not deleted; look at them');
      expect(await readFile(objectPath(manifestKey), 'utf8')).toContain('2001-01-01');
    } finally {
      await writeFile(objectPath(latestKey), savedLatest);
      await writeFile(objectPath(manifestKey), savedManifest);
    }
  });
});

describe('freshness: an older latest.json put back', () => {
  let primary: RunningPrimary | undefined;
  let standby: RunningStandby | undefined;
  afterAll(async () => {
    for (const d of [standby, primary]) {
      if (d && d.child.exitCode === null && d.child.signalCode === null) {
        d.child.kill('SIGTERM');
        await d.result;
      }
    }
  });

  it('the primary heartbeat keeps naming the newest set; status, --max-lag and the standby metric alarm', async () => {
    const verifyKey = loadVerifyKeyFile(s.keys.verifyKeyFile);
    const readHeartbeat = async () => verifyHeartbeat(await readFile(objectPath(layout.heartbeat(s.site))), verifyKey, 'heartbeat.json');
    const oldLatest = await readFile(objectPath(layout.latest(s.site)));

    const port = await closedPort();
    const tokenFile = await writeToken(join(root, 'control.token'), 'c'.repeat(64));
    const daemonConfig = await writeSitePrimaryConfig(s, join(root, 'primary-daemon.yml'), {
      schedule: '0 0 1 1 *',
      timezone: 'UTC',
      heartbeatInterval: '1s',
      server: { listen: `127.0.0.1:${port}`, tokenFile },
    });
    primary = startPrimary(['run', '--config', daemonConfig], { timeoutMs: 300_000 });
    await waitFor(async () => (await httpGet(`127.0.0.1:${port}`, '/healthz').catch(() => null))?.status === 200, 'the primary daemon to listen', 30_000, 50);
    const b = await runPrimary(['backup', '--config', daemonConfig]);
    expect(b.code, show(b)).toBe(0);
    const second = b.stdout.trim();
    const hb = await waitFor(async () => {
      const h = await readHeartbeat().catch(() => null);
      return h?.latest?.setId === second ? h : null;
    }, 'a heartbeat naming the new set');
    expect(hb.latest).toMatchObject({ setId: second, epoch: 1 });

    // The replay: latest.json of the first set, signed by the real key, put back.
    const replayedAt = Date.now();
    await writeFile(objectPath(layout.latest(s.site)), oldLatest);
    // The primary notices and its heartbeats go on naming the newest set.
    await waitFor(() => logRecords(primary!.stderrSoFar()).some((l) => String(l.msg).includes(`an old latest.json was put back (replayed); heartbeats keep naming ${second}`)), 'the primary to notice the replay');
    const after = await waitFor(async () => {
      const h = await readHeartbeat().catch(() => null);
      return h !== null && Date.parse(h.at) > replayedAt + 1_000 ? h : null;
    }, 'a heartbeat written after the replay');
    expect(after.latest?.setId).toBe(second);
    primary.child.kill('SIGTERM');
    await primary.result;

    // The standby: latest.json names the applied set, which used to read as "0 pending".
    await sleep(Math.max(0, Date.parse(hb.latest!.committedAt) + 6_000 - Date.now())); // past the clock allowance
    const st = await runStandby(['status', '--json', '--config', s.standby.configFile]);
    expect(st.code, show(st)).toBe(0);
    const doc = JSON.parse(st.stdout) as Record<string, unknown>;
    expect(doc).toMatchObject({ appliedSetId: first, latestSetId: first, heartbeatNewerSetId: second, pendingSets: 1 });
    const text = await runStandby(['status', '--config', s.standby.configFile]);
    expect(text.stdout).toMatch(new RegExp(`STALE latest +the primary's signed heartbeat names set ${second}, newer than latest\\.json's ${first}`));
    const nagios = await runStandby(['status', '--max-lag', '26h', '--config', s.standby.configFile]);
    expect(nagios.code, show(nagios)).toBe(2);
    expect(nagios.stdout).toContain(`CRITICAL: latest.json hides set ${second} and newer`);

    // The standby daemon: polling latest.json, it would apply nothing; its metric says why.
    const readToken = 'r'.repeat(64);
    const readTokenFile = await writeToken(join(root, 'read.token'), readToken);
    const sbConfig = await writeDaemonConfig(s, join(root, 'standby-daemon.yml'), { pollInterval: '1s', standbyId: 'sb-fresh', readTokenFile });
    standby = await startStandbyDaemon(sbConfig, s.standby.stateDir);
    const stale = await waitFor(async () => {
      const m = await httpGet(standby!.listen, '/metrics', readToken);
      // The pending count needs a listing of the sets, done after the poll that found latest.json
      // stale: unknown (NaN) for a moment, then 1.
      return m.status === 200 && metric(m.body, 'tandem_standby_latest_stale') === 1 && metric(m.body, 'tandem_standby_pending_sets') === 1 ? m.body : null;
    }, 'tandem_standby_latest_stale 1 and tandem_standby_pending_sets 1', 20_000, 250);
    expect(metric(stale, 'tandem_standby_pending_sets')).toBe(1);
    const status = JSON.parse((await httpGet(standby.listen, '/status', readToken)).body) as Record<string, unknown>;
    expect(status).toMatchObject({ appliedSetId: first, latestSetId: first, heartbeatNewerSetId: second });
    await standby.stop();
  });
});
