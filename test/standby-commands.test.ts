/**
 * decrypt, verify and promote beyond the round trip: refusals, partial output, the restore drill
 * on a damaged set, the apply lock, and a failing restart command.
 */
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensurePostgres, makeKeys, mustRun, requireCommands, runCommand, tmpDir, type KeyFiles } from './support/site.js';
import {
  STANDBY_MAIN,
  apply,
  backup,
  createStandbySite,
  dropSiteDatabases,
  forgeSet,
  liveState,
  restartLog,
  runStandby,
  show,
  writeStandbyConfig,
  type StandbySite,
} from './support/standby-helpers.js';

describe('standby commands', () => {
  let root: string;
  let s: StandbySite;
  let other: KeyFiles;
  let first: string;
  const artifact = (setId: string, file: string) => join(root, 'store', s.site, 'sets', setId, file);

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-standby-cmd-');
    s = await createStandbySite(root);
    other = await makeKeys(join(root, 'other-keys'));
    first = await backup(s);
  });

  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  describe('decrypt', () => {
    it('writes what `age -d` writes, and the dump inside is readable', async () => {
      const input = artifact(first, 'db.dump.zst.age');
      const out = join(root, 'db.dump.zst');
      const r = await runStandby(['decrypt', '--identity', s.keys.identityFile, input, '-o', out]);
      expect(r.code, show(r)).toBe(0);
      const reference = await mustRun('age', ['-d', '-i', s.keys.identityFile, input]);
      expect((await readFile(out)).equals(reference)).toBe(true);
      const dump = await mustRun('zstd', ['-d', '-c', out]);
      const toc = await mustRun('pg_restore', ['-l'], { input: dump });
      expect(toc.toString()).toMatch(/TABLE DATA shop orders/);

      const toStdout = await runCommand(process.execPath, [STANDBY_MAIN, 'decrypt', '-i', s.keys.identityFile, input]);
      expect(toStdout.code, toStdout.stderr).toBe(0);
      expect(toStdout.stdout.equals(reference)).toBe(true);
    });

    it('leaves no output behind on a wrong key or a damaged file', async () => {
      const input = artifact(first, 'files.tar.age');
      const dir = join(root, 'decrypt-out');
      await rm(dir, { recursive: true, force: true });
      await mustRun('mkdir', ['-p', dir]);
      const wrong = await runStandby(['decrypt', '--identity', other.identityFile, input, '-o', join(dir, 'files.tar')]);
      expect(wrong.code, show(wrong)).toBe(5);
      expect(wrong.stderr).toMatch(/this key cannot decrypt it: it was encrypted for another recipient\?/);
      const damaged = Buffer.from(await readFile(input));
      damaged[damaged.length - 5_000]! ^= 0x40;
      await writeFile(join(root, 'damaged.age'), damaged);
      const bad = await runStandby(['decrypt', '--identity', s.keys.identityFile, join(root, 'damaged.age'), '-o', join(dir, 'files.tar')]);
      expect(bad.code, show(bad)).toBe(5);
      expect(bad.stderr).toMatch(/failed authentication/);
      const truncated = await runStandby(['decrypt', '--identity', s.keys.identityFile, '-o', join(dir, 'files.tar'), join(root, 'missing.age')]);
      expect(truncated.code, show(truncated)).toBe(2);
      expect(await readdir(dir)).toEqual([]);
    });
  });

  describe('verify', () => {
    it('passes a good set and lists every problem of a damaged one, touching nothing', async () => {
      const ok = await runStandby(['verify', '--config', s.standby.configFile, '--set', first]);
      expect(ok.code, show(ok)).toBe(0);
      expect(ok.stdout).toMatch(new RegExp(`set ${first} .*: OK`));
      expect(ok.stdout).toMatch(/ok {3}db .* TOC entries/);

      const damagedId = await forgeSet(s, first, {
        damage: {
          config: (b) => b.subarray(0, b.length - 1),
          files: (b) => {
            const c = Buffer.from(b);
            c[c.length - 100]! ^= 1;
            return c;
          },
        },
      });
      const before = await liveState(s);
      const bad = await runStandby(['verify', '--config', s.standby.configFile, '--json']);
      expect(bad.code, show(bad)).toBe(5);
      const report = JSON.parse(bad.stdout) as { ok: boolean; setId: string; artifacts: Array<{ name: string; ok: boolean; error?: string }> };
      expect(report.setId).toBe(damagedId);
      expect(report.artifacts.map((a) => [a.name, a.ok])).toEqual([['db', true], ['dbmeta', true], ['config', false], ['security', true], ['files', false]]);
      expect(report.artifacts[2]!.error).toContain(`set ${damagedId}: config artifact`);
      expect(bad.stderr).toMatch(/config, files failed the drill/);
      expect(await liveState(s)).toEqual(before);
    });
  });

  describe('apply and promote preflight', () => {
    it('takes turns through the lock', async () => {
      // A lock held by a live process (this test runner) on this host.
      const lock = join(s.standby.stateDir, 'apply.lock');
      await mustRun('mkdir', ['-p', s.standby.stateDir]);
      await writeFile(lock, JSON.stringify({ pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), purpose: 'apply' }));
      try {
        const r = await apply(s, ['--set', first]);
        expect(r.code, show(r)).toBe(75);
        expect(r.stderr).toMatch(/is already running/);
        const p = await runStandby(['promote', '--config', s.standby.configFile, '--force']);
        expect(p.code, show(p)).toBe(75);
      } finally {
        await rm(lock, { force: true });
      }
    });

    it('records the set when the restart command fails, and says so', async () => {
      const cfg = await writeStandbyConfig(s, join(root, 'failing-restart.yml'), { restartCommand: 'echo "site did not come up" >&2; exit 3' });
      const r = await apply(s, ['--set', first], {}, cfg);
      expect(r.code, show(r)).toBe(1);
      expect(r.stdout).toContain(`applied set ${first}`);
      expect(r.stderr).toMatch(new RegExp(`set ${first} is applied and recorded, but restartCommand .* exited with status 3:\\n\\s+site did not come up`));
      const applied = JSON.parse(await readFile(join(s.standby.stateDir, 'applied.json'), 'utf8')) as { setId: string; restart: string };
      expect(applied).toMatchObject({ setId: first, restart: 'failed' });
    });

    it('promote refuses an unfinished apply, then unapplied history, unless forced', async () => {
      const second = await backup(s);
      const killed = await apply(s, [], { TANDEM_FAULT_KILL_AT: 'config-swapped' });
      expect(killed.signal, show(killed)).toBe('SIGKILL');
      const p1 = await runStandby(['promote', '--config', s.standby.configFile]);
      expect(p1.code, show(p1)).toBe(1);
      expect(p1.stderr).toContain(`an apply of set ${second} is unfinished (phase switching)`);
      const p1f = await runStandby(['promote', '--config', s.standby.configFile, '--force']);
      expect(p1f.code, show(p1f)).toBe(1); // --force does not override a half-switched site

      const done = await apply(s);
      expect(done.code, show(done)).toBe(0);
      const third = await backup(s);
      const p2 = await runStandby(['promote', '--config', s.standby.configFile]);
      expect(p2.code, show(p2)).toBe(1);
      expect(p2.stderr).toMatch(/FAIL {2}1 committed set\(s\), \d+ seconds of primary history are not applied/);
      expect(p2.stderr).toContain(`newest ${third}`);
      await readFile(s.standby.paths.sentinel); // still a standby

      const p3 = await runStandby(['promote', '--config', s.standby.configFile, '--force', '--json']);
      expect(p3.code, show(p3)).toBe(0);
      expect(JSON.parse(p3.stdout)).toMatchObject({ status: 'promoted', appliedSetId: second, forced: true, unapplied: { sets: 1 } });
      await expect(readFile(s.standby.paths.sentinel)).rejects.toThrow(/ENOENT/);
      expect((await restartLog(s)).at(-1)).toBe(`primary ${second}`);
      const again = await runStandby(['promote', '--config', s.standby.configFile]);
      expect(again.code, show(again)).toBe(0);
      expect(again.stdout).toContain('already promoted');
    });
  });
});
