/**
 * `tandem-standby status --max-lag` as a Nagios plugin (the Monitoring Plugins guidelines): the
 * first line is `TANDEM <STATE> - <text> | <perfdata>`, the exit status 0 OK, 1 WARNING,
 * 2 CRITICAL, 3 UNKNOWN, and UNKNOWN for whatever keeps the check from knowing (a bad duration or
 * option, a missing config, a filestore it cannot read), never OK. Real PostgreSQL, a real
 * directory filestore and the built CLI.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { ensurePostgres, requireCommands, tmpDir } from './support/site.js';
import { apply, backup, createStandbySite, removeStandbySite, runStandby, show, writeStandbyConfig, type StandbySite } from './support/standby-helpers.js';

/**
 * One performance datum as the guidelines define it: 'label'=value[UOM];[warn];[crit];[min];[max],
 * the value a number or U (undetermined), the thresholds ranges ([@][start:][end], ~ for -inf).
 */
const PERFDATUM = /^(?:'([^']+)'|([^ '=]+))=(U|-?\d+(?:\.\d+)?)(us|ms|s|%|B|KB|MB|TB|c)?(?:;([@~\d.:-]*))?(?:;([@~\d.:-]*))?(?:;(-?\d+(?:\.\d+)?)?)?(?:;(-?\d+(?:\.\d+)?)?)?$/;
const FIRST_LINE = /^TANDEM (OK|WARNING|CRITICAL|UNKNOWN) - ([^|\n]+?)(?: \| (.+))?$/;

interface Datum {
  value: number | 'U';
  uom: string;
  warn: string | undefined;
  crit: string | undefined;
}

/** The first line, split by the guidelines' grammar; every datum must parse. */
function nagios(stdout: string): { state: string; text: string; perf: Record<string, Datum> } {
  const first = stdout.split('\n')[0]!;
  const m = FIRST_LINE.exec(first);
  if (!m) throw new Error(`not a Nagios first line: ${JSON.stringify(first)}`);
  const perf: Record<string, Datum> = {};
  for (const item of (m[3] ?? '').split(' ').filter((x) => x !== '')) {
    const d = PERFDATUM.exec(item);
    if (!d) throw new Error(`perfdata ${JSON.stringify(item)} does not follow label=value[UOM];warn;crit;min;max`);
    perf[d[1] ?? d[2]!] = { value: d[3] === 'U' ? 'U' : Number(d[3]), uom: d[4] ?? '', warn: d[5], crit: d[6] };
  }
  return { state: m[1]!, text: m[2]!, perf };
}

describe('status --max-lag, a Nagios plugin', () => {
  let root: string;
  let s: StandbySite;
  let setId: string;

  /** A copy of the standby's config with some keys changed (YAML in, YAML out). */
  async function configWith(name: string, change: (doc: Record<string, any>) => void): Promise<string> {
    const file = join(root, `${name}.yml`);
    const doc = fromYaml(await readFile(s.standby.configFile, 'utf8')) as Record<string, any>;
    change(doc);
    await writeFile(file, toYaml(doc));
    return file;
  }
  const status = (args: string[], configFile = s.standby.configFile) => runStandby(['status', '--config', configFile, ...args], { env: s.env });

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-nagios-');
    s = await createStandbySite(root);
    setId = await backup(s);
    const r = await apply(s);
    if (r.code !== 0) throw new Error(`apply failed: ${show(r)}`);
  });

  afterAll(() => removeStandbySite(s, root));

  it('OK: verdict and figures on the first line, perfdata after "|", the status after it', async () => {
    const r = await status(['--max-lag', '1h']);
    expect(r.code, show(r)).toBe(0);
    const n = nagios(r.stdout);
    expect(n.state).toBe('OK');
    expect(n.text).toMatch(/^recovery point \d+(ms|s|m) old, 0 pending$/);
    expect(n.perf.rpo).toMatchObject({ uom: 's', warn: '2880', crit: '3600' });
    expect(n.perf.rpo!.value).toBeGreaterThanOrEqual(0);
    expect(n.perf.rpo!.value).toBeLessThan(600);
    expect(n.perf.pending).toMatchObject({ value: 0, uom: '' });
    expect(n.perf.apply_lag).toMatchObject({ uom: 's' });
    // The long output: the ordinary status lines.
    const rest = r.stdout.split('\n').slice(1).join('\n');
    expect(rest).toContain(`applied         ${setId}`);
    expect(rest).toMatch(/max-lag 60m\s+OK: recovery point age \S+ is within 80% of 60m/);
    expect(rest).not.toMatch(/problem/);
    expect(r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{'))).toEqual([]);
  });

  it('--warn-lag and --max-lag are the warning and critical thresholds (the issue\'s example)', async () => {
    const r = await status(['--warn-lag', '26h', '--max-lag', '32h30m']);
    expect(r.code, show(r)).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(/^TANDEM OK - recovery point \S+ old, 0 pending \| rpo=\d+s;93600;117000 pending=0( |$)/);

    const warn = await status(['--warn-lag', '1s', '--max-lag', '1h']);
    expect(warn.code, show(warn)).toBe(1);
    const w = nagios(warn.stdout);
    expect(w.state).toBe('WARNING');
    expect(w.text).toMatch(/^recovery point \S+ old \(warning above 1s\), 0 pending$/);
    expect(w.perf.rpo).toMatchObject({ warn: '1', crit: '3600' });
  });

  it('CRITICAL when the recovery point is older than --max-lag', async () => {
    await new Promise((res) => setTimeout(res, 1_100));
    const r = await status(['--max-lag', '1s']);
    expect(r.code, show(r)).toBe(2);
    const n = nagios(r.stdout);
    expect(n.state).toBe('CRITICAL');
    expect(n.text).toMatch(/^recovery point \S+ old \(critical above 1s\), 0 pending$/);
    expect(n.perf.rpo).toMatchObject({ warn: '0.8', crit: '1', uom: 's' });
    expect(n.perf.rpo!.value).toBeGreaterThanOrEqual(1);
  });

  it('UNKNOWN when the filestore path does not exist: not healthy, not OK', async () => {
    const missing = join(root, 'not-mounted', 'filestore');
    const cfg = await configWith('missing-store', (d) => {
      d.filestore.url = `file://${missing}`;
    });
    const r = await status(['--max-lag', '26h'], cfg);
    expect(r.code, show(r)).toBe(3);
    const first = r.stdout.split('\n')[0]!;
    expect(first.startsWith('TANDEM UNKNOWN - ')).toBe(true);
    const n = nagios(r.stdout);
    expect(n.text.startsWith(`cannot read the filestore file://${missing}: the filestore directory ${missing} does not exist (a file system that is not mounted, or a mistyped filestore.url); `)).toBe(true);
    expect(n.text).toMatch(/; recovery point \S+ old, pending unknown$/);
    expect(n.perf.pending!.value).toBe('U');
    expect(n.perf.rpo!.value).not.toBe('U'); // the state dir still knows the recovery point
    expect(r.stdout).toMatch(/problem\s+filestore: the filestore directory .* does not exist/);
    expect(r.stdout).not.toMatch(/pending sets\s+0/);

    // Without --max-lag: a status (exit 0) that says what it could not read, never "0 pending".
    const plain = await status([], cfg);
    expect(plain.code, show(plain)).toBe(0);
    expect(plain.stdout).toMatch(/pending sets\s+unknown/);
    expect(plain.stdout).toMatch(/problem\s+filestore: the filestore directory .* does not exist/);
    const json = JSON.parse((await status(['--json', '--max-lag', '26h'], cfg)).stdout) as { pendingSets: unknown; maxLag: { verdict: string; reasons: string[] } };
    expect(json.pendingSets).toBeNull();
    expect(json.maxLag.verdict).toBe('unknown');
    expect(json.maxLag.reasons[0]).toMatch(/^cannot read the filestore file:/);

    // A recovery point known to be too old is CRITICAL all the same.
    const crit = await status(['--max-lag', '1s'], cfg);
    expect(crit.code, show(crit)).toBe(2);
    expect(crit.stdout.split('\n')[0]).toMatch(/^TANDEM CRITICAL - cannot read the filestore .*; recovery point \S+ old \(critical above 1s\), pending unknown \| rpo=/);
  });

  it('UNKNOWN for an empty mount point: a directory that is not the filestore this standby applied from', async () => {
    const empty = join(root, 'empty-mount');
    await mkdir(empty, { recursive: true });
    const cfg = await configWith('empty-store', (d) => {
      d.filestore.url = `file://${empty}`;
    });
    const r = await status(['--max-lag', '26h'], cfg);
    expect(r.code, show(r)).toBe(3);
    const n = nagios(r.stdout);
    expect(n.state).toBe('UNKNOWN');
    expect(n.text.startsWith(`cannot read the filestore file://${empty}: `)).toBe(true);
    expect(n.text).toMatch(/; recovery point \S+ old, pending unknown$/);
    expect(n.perf.pending!.value).toBe('U');
  });

  it('UNKNOWN for a bad duration, a missing config and a bad option; CRITICAL for a document that fails verification', async () => {
    const bad = await status(['--max-lag', '5x']);
    expect(bad.code, show(bad)).toBe(3);
    expect(bad.stdout.split('\n')[0]).toBe('TANDEM UNKNOWN - tandem-standby status: --max-lag "5x" is not a duration such as "26h", "90m" or "1d"');
    const warnOnly = await status(['--warn-lag', '2h']);
    expect(warnOnly.code, show(warnOnly)).toBe(3);
    expect(warnOnly.stdout).toMatch(/^TANDEM UNKNOWN - tandem-standby status: --warn-lag needs --max-lag/);

    const noConfig = await runStandby(['status', '--config', join(root, 'nope.yml'), '--max-lag', '26h']);
    expect(noConfig.code, show(noConfig)).toBe(3);
    expect(noConfig.stdout).toMatch(/^TANDEM UNKNOWN - .*nope\.yml/);
    const noOption = await runStandby(['status', '--max-lag', '26h']);
    expect(noOption.code, show(noOption)).toBe(3);
    expect(noOption.stdout).toMatch(/^TANDEM UNKNOWN - tandem-standby status: --config is required\nhint: /);
    const unknownOption = await runStandby(['status', '--config', s.standby.configFile, '--max-lag=26h', '--bogus']);
    expect(unknownOption.code, show(unknownOption)).toBe(3);
    expect(unknownOption.stdout).toMatch(/^TANDEM UNKNOWN - tandem-standby status: .*--bogus/);
    // Not a Nagios check without --max-lag: usage errors stay exit 2, on stderr.
    const plain = await runStandby(['status', '--config', s.standby.configFile, '--bogus']);
    expect(plain.code, show(plain)).toBe(2);
    expect(plain.stdout).toBe('');

    // applied.json that cannot be read: the recovery point is unknown, not "nothing applied".
    const state = join(root, 'garbled-state');
    await mkdir(state, { recursive: true });
    await writeFile(join(state, 'applied.json'), '{ not json');
    const garbled = await writeStandbyConfig(s, join(root, 'garbled.yml'), { stateDir: state });
    const g = await status(['--max-lag', '26h'], garbled);
    expect(g.code, show(g)).toBe(3);
    expect(g.stdout.split('\n')[0]).toMatch(/^TANDEM UNKNOWN - cannot read applied\.json \(the recovery point\): .*; recovery point unknown, \S+ pending \| rpo=U;74880;93600 /);

    // A heartbeat.json that fails verification: tampering is an alarm, not an unknown.
    const hbFile = join(s.root, 'store', s.site, 'heartbeat.json');
    await writeFile(hbFile, '{"format":"tandem-heartbeat"}');
    try {
      const t = await status(['--max-lag', '26h']);
      expect(t.code, show(t)).toBe(2);
      expect(t.stdout.split('\n')[0]).toMatch(/^TANDEM CRITICAL - heartbeat\.json fails verification: .*has no Ed25519 signature.*; recovery point \S+ old, 0 pending \| /);
    } finally {
      await rm(hbFile, { force: true });
    }
  });
});
