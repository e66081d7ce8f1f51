/**
 * The commented multi-site samples (etc/primary-sites.yml, etc/standby-sites.yml) load as they
 * stand, and take the test the one-site samples take (faults-fast-refusals, faults/bad-input):
 * every key removed, given a value of each wrong type, or misspelt is refused naming the key (or
 * defaulted when optional); here also every key of every site entry, named with its entry.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { TandemError, loadPrimarySites, loadStandbySites } from '@tandem/shared';
import { REPO_ROOT } from './support/site.js';
import { variants, type Doc } from './faults/support/config-variants.js';

const SAMPLES = { primary: join(REPO_ROOT, 'etc', 'primary-sites.yml'), standby: join(REPO_ROOT, 'etc', 'standby-sites.yml') };
const LOAD = { primary: loadPrimarySites, standby: loadStandbySites };

/** The sample with every comment and blank line removed, parsed (as config-variants.ts reads etc/primary.yml). */
async function sample(agent: 'primary' | 'standby'): Promise<Doc> {
  const text = (await readFile(SAMPLES[agent], 'utf8'))
    .split('\n')
    .map((l) => l.replace(/\s+#.*$/, ''))
    .filter((l) => !/^\s*#/.test(l) && l.trim() !== '')
    .join('\n');
  return fromYaml(text) as Doc;
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-sample-sites-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the multi-site sample configs', () => {
  it.each(['primary', 'standby'] as const)('etc/%s-sites.yml: two Zotonic sites, one schema each of the shared zotonic database', (agent) => {
    const all = LOAD[agent](SAMPLES[agent]);
    expect(all.sites.map((s) => s.site)).toEqual(['www', 'shop']);
    expect(all.concurrency).toBe(2);
    for (const s of all.sites) {
      expect(new URL(s.database.url).pathname).toBe('/zotonic');
      expect(s.database.schema).toBe(s.site);
      expect(s.filestore.url).toBe('file:///var/backups/tandem');
      expect(s.paths.config).toContain(`/${s.site}/`);
    }
  });

  it.each(['primary', 'standby'] as const)('etc/%s-sites.yml: every key missing, of a wrong type, or misspelt is refused naming it (or defaulted)', async (agent) => {
    const base = await sample(agent);
    const file = join(dir, `${agent}.yml`);
    await writeFile(file, toYaml(base));
    expect(() => LOAD[agent](file)).not.toThrow();
    const sites = base.sites as Doc[];
    // The top level's keys (sites: as a whole), then each key of each site entry, put back in its place.
    const cases = [
      ...variants(base).map((v) => ({ ...v, where: '' })),
      ...sites.flatMap((entry, i) =>
        variants(entry).map((v) => ({ ...v, where: `sites[${i}].`, doc: { ...base, sites: sites.map((e, j) => (j === i ? v.doc : e)) } })),
      ),
    ];
    let refused = 0;
    for (const v of cases) {
      await writeFile(file, toYaml(v.doc));
      let err: unknown;
      try {
        LOAD[agent](file);
      } catch (e) {
        err = e;
      }
      const label = `${agent}: ${v.kind} ${v.where}${v.path}`;
      if (err === undefined) {
        expect(v.kind, `${label} was accepted`).toBe('missing');
        continue;
      }
      expect(err, label).toBeInstanceOf(TandemError);
      const e = err as TandemError;
      expect(e.kind, label).toBe('config');
      expect(e.message, label).toContain(file);
      const last = escape(v.path.split('.').at(-1)!);
      expect(e.message, label).toMatch(new RegExp(`(^|\\s|\\.)${last}\\b`, 'm'));
      // A site entry's own problem is named with its entry.
      if (v.where !== '' && v.kind !== 'missing') expect(e.message, label).toMatch(new RegExp(`^ {2}- ${escape(v.where)}${escape(v.path)}: `, 'm'));
      refused++;
    }
    expect(refused).toBeGreaterThan(40);
  });
});
