/**
 * Several sites in one config, as the built CLIs see them: --site NAME picks the site a one-shot
 * command works on (`tandem-primary list`, `tandem-standby status --json`), without it a config of
 * two sites is a usage error (exit 2) listing both names, and `check` reports each site.
 *
 * Needs: `npm run build` first (the CLIs run from packages/*-agent/dist/bundle).
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { STANDBY_MAIN, initFilestore, makeKeys, messageLines, requireBuilt, runPrimary, tmpDir, type KeyFiles, type RunResult } from './support/site.js';
import { runStandby, show } from './support/standby-helpers.js';

const SET_ID = '20260101T030000Z-e1-000001';

let root: string;
let keys: KeyFiles;
let primaryYml: string;
let standbyYml: string;

/** The two Zotonic sites of the samples: one schema each of a shared database, one state dir each. */
const siteEntries = (side: string) =>
  ['www', 'shop'].map((site) => ({
    site,
    database: { schema: site },
    paths: { config: join(root, side, site, 'priv'), security: join(root, side, site, 'security'), files: join(root, side, site, 'files') },
    stateDir: join(root, side, 'state', site),
  }));

beforeAll(async () => {
  requireBuilt();
  requireBuilt(STANDBY_MAIN);
  root = await tmpDir('tandem-sites-cli-');
  keys = await makeKeys(join(root, 'keys'));
  primaryYml = join(root, 'primary.yml');
  await writeFile(
    primaryYml,
    toYaml({
      database: { url: 'postgres://postgres@127.0.0.1:5432/tandem_sites_cli_zotonic' },
      filestore: { url: `file://${join(root, 'store')}` },
      keys: { recipientFile: keys.recipientFile, signingKeyFile: keys.signingKeyFile },
      sites: siteEntries('primary'),
    }),
  );
  standbyYml = join(root, 'standby.yml');
  await writeFile(
    standbyYml,
    toYaml({
      database: { url: 'postgres://postgres@127.0.0.1:5432/tandem_sites_cli_standby' },
      filestore: { url: `file://${join(root, 'store')}` },
      keys: { identityFile: keys.identityFile, verifyKeyFile: keys.verifyKeyFile },
      standbyId: 'web2',
      sites: siteEntries('standby'),
    }),
  );
  // The filestore the sites share, created from the two-site config without --site.
  await initFilestore(primaryYml);
  // An uncommitted set of site www only: what `list` shows tells the sites apart.
  await mkdir(join(root, 'store', 'www', 'sets', SET_ID), { recursive: true });
  await writeFile(join(root, 'store', 'www', 'sets', SET_ID, 'db.dump.zst.age'), 'partial upload');
});

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

/** The operator's message lines of a failed run: the error and its hint. */
function expectUsageError(r: RunResult, bin: string, command: string, file: string): void {
  expect(r.code, show(r)).toBe(2);
  const lines = messageLines(r.stderr);
  expect(lines[0]).toBe(`${bin}: error: ${bin} ${command}: ${file} holds 2 sites (www, shop): pass --site NAME to say which`);
  expect(lines[1]).toMatch(/^ {2}hint: .*--site www/);
  expect(r.stdout).toBe('');
}

describe('--site on the one-shot commands', () => {
  it('tandem-primary list --site NAME lists that site\'s sets', async () => {
    const www = await runPrimary(['list', '--config', primaryYml, '--site', 'www', '--json']);
    expect(www.code, show(www)).toBe(0);
    expect(JSON.parse(www.stdout)).toEqual([expect.objectContaining({ setId: SET_ID, committed: false })]);
    const shop = await runPrimary(['list', '--config', primaryYml, '--site', 'shop']);
    expect(shop.code, show(shop)).toBe(0);
    expect(shop.stdout).toBe(`no sets for site "shop" in file://${join(root, 'store')}\n`);
  });

  it('tandem-standby status --site NAME --json reports that site, from its own state dir', async () => {
    for (const site of ['www', 'shop']) {
      const r = await runStandby(['status', '--config', standbyYml, '--site', site, '--json']);
      expect(r.code, show(r)).toBe(0);
      const doc = JSON.parse(r.stdout) as { site: string; standbyId: string; appliedSetId: string | null };
      expect(doc.site).toBe(site);
      expect(doc.standbyId).toBe('web2');
      expect(doc.appliedSetId).toBeNull();
    }
  });

  it('without --site, two sites are a usage error (exit 2) naming both; an unknown name lists them', async () => {
    const [list, backup, status, apply, unknown] = await Promise.all([
      runPrimary(['list', '--config', primaryYml]),
      runPrimary(['backup', '--config', primaryYml]),
      runStandby(['status', '--config', standbyYml, '--json']),
      runStandby(['apply', '--config', standbyYml]),
      runPrimary(['prune', '--config', primaryYml, '--site', 'blog', '--dry-run']),
    ]);
    expectUsageError(list, 'tandem-primary', 'list', primaryYml);
    expectUsageError(backup, 'tandem-primary', 'backup', primaryYml);
    expectUsageError(status, 'tandem-standby', 'status', standbyYml);
    expectUsageError(apply, 'tandem-standby', 'apply', standbyYml);
    expect(unknown.code, show(unknown)).toBe(2);
    expect(messageLines(unknown.stderr)[0]).toBe(`tandem-primary: error: tandem-primary prune: --site "blog": ${primaryYml} holds no such site; its sites are www, shop`);
  });

  it('every one-shot command takes --site and says so in its --help', async () => {
    const runs = [
      ...['backup', 'list', 'prune', 'init', 'check'].map(async (cmd) => ({ what: `tandem-primary ${cmd}`, r: await runPrimary([cmd, '--help']) })),
      ...['apply', 'verify', 'status', 'promote', 'switchover', 'check'].map(async (cmd) => ({ what: `tandem-standby ${cmd}`, r: await runStandby([cmd, '--help']) })),
    ];
    for (const { what, r } of await Promise.all(runs)) expect(r.stdout, what).toMatch(/^ {2}--site NAME /m);
  });
});

describe('check with several sites', () => {
  it('without --site, a section per site; with it, that site alone', async () => {
    const all = await runPrimary(['check', '--config', primaryYml, '--json'], { timeoutMs: 120_000 });
    const doc = JSON.parse(all.stdout) as { ok: boolean; sites: Array<{ site: string; checks: Array<{ name: string; status: string; detail: string }> }> };
    expect(doc.sites.map((s) => s.site)).toEqual(['www', 'shop']);
    for (const s of doc.sites) {
      expect(s.checks[0]).toMatchObject({ name: 'config', status: 'ok', detail: `${primaryYml} (site ${s.site})` });
      expect(s.checks.find((c) => c.name === 'filestore')?.detail).toContain(`committed sets of site ${s.site}`);
    }
    const human = await runStandby(['check', '--config', standbyYml], { timeoutMs: 120_000 });
    expect(human.stdout).toMatch(/^site www:\n {2}ok {4}config/m);
    expect(human.stdout).toMatch(/^site shop:\n {2}ok {4}config/m);
    const one = await runStandby(['check', '--config', standbyYml, '--site', 'shop', '--json'], { timeoutMs: 120_000 });
    const single = JSON.parse(one.stdout) as { checks: Array<{ name: string; detail: string }> };
    expect(single.checks[0]).toMatchObject({ name: 'config', detail: `${standbyYml} (site shop)` });
  });
});
