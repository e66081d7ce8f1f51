import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirFilestore } from '../filestore/dir-filestore.js';
import { parseFilestoreUrl } from '../filestore/location.js';
import type { Filestore } from '../filestore/filestore.js';
import { writeFilestoreMarker } from '../store/marker.js';
import { thrownBy } from '../testing/helpers.js';
import { configVerdict, filestoreCheck, known, timeAgo, withWarnings, type AgentCheckConfig, type AgentCheckContext } from './agent-checks.js';
import { optionalPath, runCheckCommand } from './command.js';
import { runChecks, verdict, type CheckDef } from './runner.js';

describe('the checks both agents share', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'tandem-agent-checks-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('known: what an earlier check found, or an internal error naming what was missing', () => {
    expect(known('x', 'the config')).toBe('x');
    const err = thrownBy(() => known(undefined, 'the config'), { code: 'CHECK_ORDER' });
    expect(err.message).toBe('check run before the config was known');
  });

  it('timeAgo: seconds, minutes, hours, then days', () => {
    const now = Date.parse('2024-05-10T12:00:00Z');
    const before = (s: number) => new Date(now - s * 1000).toISOString();
    expect(timeAgo(before(119), now)).toBe('119 s ago');
    expect(timeAgo(before(120), now)).toBe('2 min ago');
    expect(timeAgo(before(7200), now)).toBe('2 h ago');
    expect(timeAgo(before(3 * 86_400), now)).toBe('3 days ago');
    expect(timeAgo(new Date(now + 5000).toISOString(), now)).toBe('0 s ago');
  });

  it('withWarnings and configVerdict: ok, or a warning carrying what the agent says about it', () => {
    expect(withWarnings('key.pem', [])).toEqual(verdict.ok('key.pem'));
    expect(withWarnings('key.pem', ['readable by others'], 'chmod 600 key.pem')).toEqual(verdict.warn('key.pem; but readable by others', 'chmod 600 key.pem'));
    const cfg = { configFile: '/etc/tandem/primary.yml', site: 'www', encryption: 'age' as const };
    const unencrypted = { detail: 'sets are uploaded unencrypted', hint: 'remove it' };
    expect(configVerdict(cfg, unencrypted)).toEqual(verdict.ok('/etc/tandem/primary.yml (site www)'));
    expect(configVerdict({ ...cfg, encryption: 'none' }, unencrypted)).toEqual(
      verdict.warn('/etc/tandem/primary.yml (site www); encryption is "none": sets are uploaded unencrypted', 'remove it'),
    );
  });

  it('filestoreCheck: a marked filestore, its committed sets, left open in the context (the standby says it was read)', async () => {
    const dir = join(root, 'store');
    await writeFilestoreMarker(new DirFilestore(dir));
    const url = `file://${dir}`;
    const config = { configFile: 'c.yml', site: 'www', encryption: 'age', stateDir: root, filestore: { url, location: parseFilestoreUrl(url) }, server: {} } as AgentCheckConfig;
    const config0: CheckDef<AgentCheckContext> = { name: 'config', run: () => 'ok' };
    for (const [opts, part] of [[{}, '), 0 committed sets'], [{ readable: true }, '), readable; 0 committed sets']] as const) {
      const ctx: AgentCheckContext = { config };
      const [, r] = await runChecks([config0, filestoreCheck<AgentCheckContext>(opts)], ctx);
      expect(r).toMatchObject({ name: 'filestore', status: 'ok' });
      expect(r!.detail).toContain(`${part} of site www`);
      expect(ctx.filestore).toBeDefined();
      await ctx.filestore!.close();
    }
  });

  it('runCheckCommand: the report (or --json), the exit status, and the filestore closed', async () => {
    let closed = 0;
    const filestore = { close: async () => void closed++ } as unknown as Filestore;
    const checks: Array<CheckDef<{ filestore?: Filestore }>> = [
      { name: 'config', run: () => 'fine' },
      { name: 'tls', run: () => verdict.fail('expired', 'renew it') },
    ];
    const human: string[] = [];
    expect(await runCheckCommand(checks, { filestore }, { values: {}, out: (l) => human.push(l) })).toBe(1);
    expect(human[0]).toMatch(/^ok {4}config {2}fine$/);
    expect(human.at(-1)).toBe('CHECK FAILED: 1 ok, 0 warnings, 1 failed, 0 skipped');
    const json: string[] = [];
    expect(await runCheckCommand(checks.slice(0, 1), { filestore }, { values: { json: true }, out: (l) => json.push(l) })).toBe(0);
    expect(JSON.parse(json[0]!)).toEqual({ ok: true, checks: [{ name: 'config', status: 'ok', detail: 'fine' }] });
    expect(closed).toBe(2);
    expect(optionalPath('')).toBeUndefined();
    expect(optionalPath('rel/file')).toBe(join(process.cwd(), 'rel/file'));
  });
});
