/**
 * A filestore must exist and be tandem's: `tandem-primary init` writes tandem-filestore.json at its
 * root, and every command and daemon refuses a filestore without it (saying how to create it),
 * instead of creating a missing directory (an unmounted NFS mount point would otherwise fill the
 * local disk). Real agents, PostgreSQL, directory stores and s3rver.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3rver, s3rverEnv, s3rverFilestoreUrl, type S3rverHandle } from './support/s3rver.js';
import { closedPort, ensurePostgres, logRecords, messageLines, requireCommands, runPrimary, startPrimary, tmpDir, waitFor, type RunResult } from './support/site.js';
import { httpGet, startStandbyDaemon, writeDaemonConfig, appliedSetId } from './support/standby-daemon.js';
import {
  createStandbySite,
  removeStandbySite,
  runStandby,
  show,
  writeSitePrimaryConfig,
  writeStandbyConfig,
  type StandbySite,
} from './support/standby-helpers.js';

const MARKER = 'tandem-filestore.json';
const HINT = '  hint: create it with `tandem-primary init --filestore --config FILE`';
const TOKEN = 'filestore-marker-test-token-0123456789abcdef';

/** The one error line of a refused command, and its hint. */
function refusal(r: RunResult, agent: 'tandem-primary' | 'tandem-standby'): { error: string; hint: string } {
  const lines = messageLines(r.stderr);
  const error = lines.find((l) => l.startsWith(`${agent}: error: `)) ?? '';
  return { error, hint: lines.find((l) => l.startsWith('  hint: ')) ?? '' };
}

describe('a filestore must exist and be tandem\'s', () => {
  let root: string;
  let s: StandbySite;
  let s3: S3rverHandle | undefined;

  /** The site with its filestore at `url`: a primary and a standby config (own state dirs). */
  async function configsFor(name: string, url: string): Promise<{ primary: string; standby: string; site: StandbySite }> {
    const site: StandbySite = {
      ...s,
      filestoreUrl: url,
      primary: { ...s.primary, stateDir: join(root, `${name}-primary-state`) },
      standby: { ...s.standby, stateDir: join(root, `${name}-standby-state`) },
    };
    return {
      primary: await writeSitePrimaryConfig(site, join(root, `${name}-primary.yml`)),
      standby: await writeStandbyConfig(site, join(root, `${name}-standby.yml`)),
      site,
    };
  }

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-marker-');
    s = await createStandbySite(root);
  });

  afterAll(async () => {
    await s3?.destroy();
    await removeStandbySite(s, root);
  });

  it('refuses a missing directory in backup and apply, says how to create it, and creates nothing', async () => {
    const dir = join(root, 'nope', 'fs');
    const url = pathToFileURL(dir).href;
    const c = await configsFor('missing', url);

    const b = await runPrimary(['backup', '--config', c.primary]);
    expect(b.code, show(b)).toBe(2);
    const pb = refusal(b, 'tandem-primary');
    expect(pb.error).toContain(`filestore ${url} is not an initialised tandem filestore: the directory ${dir} does not exist`);
    expect(pb.hint).toContain(HINT);

    const a = await runStandby(['apply', '--config', c.standby]);
    expect(a.code, show(a)).toBe(2);
    const pa = refusal(a, 'tandem-standby');
    expect(pa.error).toContain(`filestore ${url} is not an initialised tandem filestore: the directory ${dir} does not exist`);
    expect(pa.hint).toContain(HINT);

    for (const cmd of [['list'], ['prune', '--dry-run']]) {
      const r = await runPrimary([...cmd, '--config', c.primary]);
      expect(r.code, show(r)).toBe(2);
      expect(refusal(r, 'tandem-primary').error).toContain('is not an initialised tandem filestore');
    }
    const v = await runStandby(['verify', '--config', c.standby]);
    expect(v.code, show(v)).toBe(2);
    expect(refusal(v, 'tandem-standby').error).toContain('is not an initialised tandem filestore');
    expect(existsSync(join(root, 'nope')), 'not even the parent was made').toBe(false);
  });

  it('refuses an existing directory without the marker (an unmounted mount point), naming it empty', async () => {
    const dir = join(root, 'mountpoint');
    await mkdir(dir);
    const c = await configsFor('empty', pathToFileURL(dir).href);
    const b = await runPrimary(['backup', '--config', c.primary]);
    expect(b.code, show(b)).toBe(2);
    expect(refusal(b, 'tandem-primary').error).toContain(`the directory ${dir} is empty, without ${MARKER}`);
    expect(await readdir(dir)).toEqual([]);

    // status: a problem, never a healthy "latest unknown, pending 0".
    const st = await runStandby(['status', '--config', c.standby, '--json']);
    const doc = JSON.parse(st.stdout) as { problems: string[]; pendingSets: number | null };
    expect(doc.problems.join('\n'), show(st)).toContain(`${MARKER}: filestore ${pathToFileURL(dir).href} is not an initialised tandem filestore`);
    expect(doc.pendingSets).toBeNull();
  });

  it('init --filestore creates the directory (0700) and the marker, then backup works; again it changes nothing', async () => {
    const dir = join(root, 'fresh-fs');
    const url = pathToFileURL(dir).href;
    const c = await configsFor('fresh', url);
    const init = await runPrimary(['init', '--filestore', '--config', c.primary]);
    expect(init.code, show(init)).toBe(0);
    expect(init.stdout).toContain(`Filestore ${url} created (${MARKER} written)`);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    const marker = JSON.parse(await readFile(join(dir, MARKER), 'utf8')) as Record<string, unknown>;
    expect(marker).toMatchObject({ format: 1, tool: 'tandem' });

    const again = await runPrimary(['init', '--filestore', '--config', c.primary, '--json']);
    expect(again.code, show(again)).toBe(0);
    expect(JSON.parse(again.stdout)).toEqual({ filestore: { url, created: false, createdAt: marker.createdAt } });

    const b = await runPrimary(['backup', '--config', c.primary]);
    expect(b.code, show(b)).toBe(0);
    expect(await readdir(join(dir, s.site, 'sets'))).toEqual([b.stdout.trim()]);
    expect(JSON.parse(await readFile(join(dir, MARKER), 'utf8'))).toEqual(marker);
  });

  it('init --filestore creates only the directory itself: a missing parent is refused, nothing is made', async () => {
    const c = await configsFor('deep', pathToFileURL(join(root, 'absent-parent', 'fs')).href);
    const r = await runPrimary(['init', '--filestore', '--config', c.primary]);
    expect(r.code, show(r)).toBe(1);
    expect(refusal(r, 'tandem-primary').error).toContain(`its parent ${join(root, 'absent-parent')} does not exist`);
    expect(existsSync(join(root, 'absent-parent'))).toBe(false);
  });

  it('init takes the filestore with the keys (--filestore-url), and refuses mixed forms', async () => {
    const dir = join(root, 'new-site-fs');
    const r = await runPrimary(['init', '--keys-dir', join(root, 'new-site-keys'), '--filestore-url', pathToFileURL(dir).href, '--json']);
    expect(r.code, show(r)).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ filestore: { url: pathToFileURL(dir).href, created: true } });
    expect(existsSync(join(dir, MARKER))).toBe(true);
    expect(existsSync(join(root, 'new-site-keys', 'signing.key'))).toBe(true);

    const keysOnly = await runPrimary(['init', '--keys-dir', join(root, 'keys-only')]);
    expect(keysOnly.stdout).toContain('then create the filestore with `tandem-primary init --filestore --config FILE`');

    const mixed = await runPrimary(['init', '--filestore', '--keys-dir', join(root, 'x')]);
    expect(mixed.code).toBe(2);
    expect(refusal(mixed, 'tandem-primary').error).toContain('tandem-primary init --filestore takes --config FILE (and --json), not --keys-dir');
    const noConfig = await runPrimary(['init', '--filestore']);
    expect(noConfig.code).toBe(2);
    expect(refusal(noConfig, 'tandem-primary').error).toContain('--config is required');
    expect(existsSync(join(root, 'x'))).toBe(false);
  });

  it('refuses a marker that is not tandem\'s (not JSON, another tool), and init does not overwrite it', async () => {
    const dir = join(root, 'tampered');
    await mkdir(dir);
    const c = await configsFor('tampered', pathToFileURL(dir).href);
    await writeFile(join(dir, MARKER), 'not json at all');
    const b = await runPrimary(['backup', '--config', c.primary]);
    expect(b.code, show(b)).toBe(2);
    expect(refusal(b, 'tandem-primary').error).toContain(`${pathToFileURL(dir).href}/${MARKER} is not a tandem filestore marker: not valid JSON`);

    await writeFile(join(dir, MARKER), '{"format":1,"tool":"restic","createdAt":"2026-11-22T03:00:00.000Z"}');
    const a = await runStandby(['apply', '--config', c.standby]);
    expect(a.code, show(a)).toBe(2);
    expect(refusal(a, 'tandem-standby').error).toContain('is not a tandem filestore marker: "tool" is "restic", not "tandem"');
    const init = await runPrimary(['init', '--filestore', '--config', c.primary]);
    expect(init.code, show(init)).toBe(2);
    expect(await readFile(join(dir, MARKER), 'utf8')).toContain('restic');
    expect(await readdir(dir)).toEqual([MARKER]);
  });

  it('refuses an S3 prefix without the marker (s3rver); init --filestore writes it there', async () => {
    s3 = await startS3rver({ buckets: ['tandem'] });
    const env = s3rverEnv();
    const url = s3rverFilestoreUrl(s3, { prefix: 'unmarked/' });
    const c = await configsFor('s3', url);
    const b = await runPrimary(['backup', '--config', c.primary], { env });
    expect(b.code, show(b)).toBe(2);
    const p = refusal(b, 'tandem-primary');
    expect(p.error).toContain(`filestore ${url} is not an initialised tandem filestore: there is no s3://tandem/unmarked/${MARKER}`);
    expect(p.hint).toContain(HINT);

    const init = await runPrimary(['init', '--filestore', '--config', c.primary], { env });
    expect(init.code, show(init)).toBe(0);
    const list = await runPrimary(['list', '--config', c.primary], { env });
    expect(list.code, show(list)).toBe(0);
    expect(list.stdout).toContain(`no sets for site "${s.site}"`);
  });

  it('promote refuses an unmarked filestore; with --force it promotes without writing to it', async () => {
    const dir = join(root, 'promote-fs');
    await mkdir(dir);
    const sroot = join(root, 'promote-site');
    const paths = { config: join(sroot, 'priv'), security: join(sroot, 'security'), files: join(sroot, 'files'), sentinel: join(sroot, 'priv', 'BACKUP') };
    for (const d of [paths.config, paths.security, paths.files]) await mkdir(d, { recursive: true });
    const site: StandbySite = { ...s, filestoreUrl: pathToFileURL(dir).href, standby: { ...s.standby, paths, stateDir: join(root, 'promote-state') } };
    const cfg = await writeStandbyConfig(site, join(root, 'promote-standby.yml'));

    const refused = await runStandby(['promote', '--config', cfg]);
    expect(refused.code, show(refused)).toBe(2);
    expect(refusal(refused, 'tandem-standby').error).toContain(`the directory ${dir} is empty`);
    expect(refusal(refused, 'tandem-standby').hint).toContain(HINT);

    const forced = await runStandby(['promote', '--force', '--config', cfg]);
    expect(forced.code, show(forced)).toBe(0);
    expect(forced.stdout).toMatch(/FAIL {2}the filestore is not usable: filestore \S+ is not an initialised tandem filestore/);
    expect(forced.stdout).toContain('epoch NOT raised');
    expect(await readdir(dir), 'nothing written to the unmarked filestore').toEqual([]);
  });

  describe('the daemons keep running on an unmarked filestore, and carry on once it is created', () => {
    let set: string;
    let c: { primary: string; standby: string; site: StandbySite };
    const storeDir = () => join(root, 'daemon-fs');

    beforeAll(async () => {
      // A filestore an earlier tandem made: sets, no marker.
      await mkdir(storeDir());
      c = await configsFor('daemon', pathToFileURL(storeDir()).href);
      expect((await runPrimary(['init', '--filestore', '--config', c.primary])).code).toBe(0);
      const b = await runPrimary(['backup', '--config', c.primary]);
      expect(b.code, show(b)).toBe(0);
      set = b.stdout.trim();
      await rename(join(storeDir(), MARKER), join(root, 'daemon-marker.bak'));
    });

    it('standby: reports the refusal in its log and /status, applies nothing, then applies once the marker is there', async () => {
      const cfg = await writeDaemonConfig(c.site, join(root, 'daemon-standby.yml'), { pollInterval: '1s', standbyId: 'marker-sb' });
      const d = await startStandbyDaemon(cfg, c.site.standby.stateDir, { TANDEM_TOKEN: TOKEN });
      try {
        const status = async () => JSON.parse((await httpGet(d.listen, '/status', TOKEN)).body) as { lastError: { code: string; message: string } | null; appliedSetId: string | null };
        const st = await waitFor(async () => {
          const v = await status();
          return v.lastError?.code === 'STORE_UNINITIALISED' ? v : null;
        }, 'the standby daemon to report the unmarked filestore');
        expect(st.lastError!.message).toContain(`the directory ${storeDir()} holds no ${MARKER}`);
        expect(st.appliedSetId).toBeNull();
        const startLog = logRecords(d.stderrSoFar()).find((l) => String(l.msg).includes('nothing is applied until it is; every poll checks again'));
        expect(startLog?.level, d.stderrSoFar()).toBe(50);
        expect(String(startLog?.msg)).toContain('tandem-primary init --filestore --config FILE');
        expect(await appliedSetId(c.site.standby.stateDir)).toBeNull();

        const init = await runPrimary(['init', '--filestore', '--config', c.primary]);
        expect(init.code, show(init)).toBe(0);
        await waitFor(async () => ((await appliedSetId(c.site.standby.stateDir)) === set ? true : null), 'the standby daemon to apply the set', 60_000, 100);
        expect(d.child.exitCode).toBeNull();
      } finally {
        await d.stop();
      }
    });

    it('primary: stays up without writing a heartbeat, reports it in /status, writes once the marker is there', async () => {
      await rm(join(storeDir(), MARKER));
      await rm(join(storeDir(), c.site.site, 'heartbeat.json'), { force: true });
      const port = await closedPort();
      const tokenFile = join(root, 'daemon-control.token');
      await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
      const cfg = await writeSitePrimaryConfig(c.site, join(root, 'daemon-primary.yml'), { heartbeatInterval: '1s', server: { listen: `127.0.0.1:${port}`, tokenFile } });
      const d = startPrimary(['run', '--config', cfg], { timeoutMs: 120_000 });
      try {
        const listen = `127.0.0.1:${port}`;
        const st = await waitFor(async () => {
          const r = await httpGet(listen, '/status', TOKEN).catch(() => null);
          if (r?.status !== 200) return null;
          const v = JSON.parse(r.body) as { heartbeat: { lastError: string | null; lastWrittenAt: string | null } };
          return v.heartbeat.lastError !== null ? v : null;
        }, 'the primary daemon to report the unmarked filestore');
        expect(st.heartbeat.lastError).toContain('is not an initialised tandem filestore');
        expect(st.heartbeat.lastWrittenAt).toBeNull();
        expect(existsSync(join(storeDir(), c.site.site, 'heartbeat.json'))).toBe(false);

        const init = await runPrimary(['init', '--filestore', '--config', c.primary]);
        expect(init.code, show(init)).toBe(0);
        await waitFor(() => existsSync(join(storeDir(), c.site.site, 'heartbeat.json')) || null, 'the primary daemon to write heartbeat.json', 30_000, 100);
        expect(d.child.exitCode).toBeNull();
      } finally {
        d.child.kill('SIGTERM');
        await d.result;
      }
    });
  });
});
