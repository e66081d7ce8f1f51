/**
 * The fast subset (part of `npm test`) of the tamper, hostile-archive, bad-input suites in
 * test/faults/ (`npm run test:faults` runs them whole): a flipped byte in every artifact, a handful
 * of hostile entries, a 10 GiB entry stopped at its header by limits.maxBytes, every config key
 * missing / of a wrong type / misspelt, and a read-only live directory.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { ARTIFACT_NAMES, TandemError, artifactFileName, loadPrimaryConfig, loadStandbyConfig } from '@tandem/shared';
import { runCommand } from './support/site.js';
import { STANDBY_MAIN, apply, forgeSet, removeStandbySite, writeStandbyConfig, type StandbySite } from './support/standby-helpers.js';
import { forgeStored } from './faults/support/forge.js';
import { expectRefused, setUpRefusalSite, type Baseline } from './faults/support/refusal.js';
import { sealStream, tarBuffer, tarChunks } from './faults/support/tar.js';
import { bombBytes, bytesUnder, sealToSize, watchDisk, zstdBomb } from './faults/support/replace.js';
import { sample, variants } from './faults/support/config-variants.js';

let root: string;
let s: StandbySite;
let first: string;
let before: Baseline;

beforeAll(async () => {
  ({ root, s, first, before } = await setUpRefusalSite('tandem-faults-fast-refusals-', ['pg_dump', 'pg_restore', 'unshare', 'mount']));
});

afterAll(async () => {
  await removeStandbySite(s, root);
});

describe('faults, fast subset (tamper, hostile archives, bad input)', () => {
  it('a flipped byte in every artifact is refused naming set and artifact', async () => {
    for (const name of ARTIFACT_NAMES) {
      const id = await forgeSet(s, first, {
        damage: {
          [name]: (b: Buffer) => {
            const c = Buffer.from(b);
            c[Math.floor(c.length / 2)]! ^= 0x5a;
            return c;
          },
        },
      });
      await expectRefused(s, before, await apply(s), [`set ${id}: ${name} artifact (${artifactFileName(name, true, name !== 'files')})`]);
    }
  });

  it('a zstd bomb put in place of the db artifact (no key needed) writes no more than its stored size', async () => {
    const id = await forgeSet(s, first);
    const manifest = JSON.parse(await readFile(join(root, 'store', s.site, 'sets', id, 'manifest.json'), 'utf8')) as { artifacts: Array<{ name: string; storedSize: number }> };
    const { storedSize } = manifest.artifacts.find((a) => a.name === 'db')!;
    const bomb = zstdBomb(Math.min(8192, Math.floor((storedSize - 600) / 4)) * 128 * 1024);
    expect(bombBytes(bomb)).toBeGreaterThan(100 * storedSize);
    await writeFile(join(root, 'store', s.site, 'sets', id, artifactFileName('db', true)), await sealToSize(s, bomb, storedSize));
    const base = bytesUnder(s.standby.stateDir);
    const w = await watchDisk({ bytesUnder: s.standby.stateDir, pathsUnder: join(root, 'standby'), names: /tandem-new/ }, apply(s));
    await expectRefused(s, before, w.result, [`set ${id}: db artifact`, 'SHA-256 of the stored bytes']);
    expect(w.maxBytes - base).toBeLessThanOrEqual(storedSize + 16 * 1024);
  });

  it('hostile entries are refused naming the entry; nothing outside is written', async () => {
    const cases: Array<[Parameters<typeof tarBuffer>[0], string]> = [
      [[{ name: '../escape.txt', type: '0', data: 'x' }], '../escape.txt'],
      [[{ name: './evil', type: '2', linkname: '../outside' }, { name: './evil/pwned.txt', type: '0', data: 'x' }], './evil/pwned.txt'],
      [[{ name: 'innocent.txt', type: '0', data: 'x', pax: { path: '../pax-escape.txt' } }], '../pax-escape.txt'],
      [[{ name: './fifo', type: '6' }], './fifo'],
    ];
    for (const [entries, entry] of cases) {
      const tar = await tarBuffer([{ name: './', type: '5' }, ...entries]);
      const id = await forgeSet(s, first, { plain: { files: tar } });
      await expectRefused(s, before, await apply(s), [`set ${id}: files artifact`, `refusing archive entry ${JSON.stringify(entry)}`]);
    }
  });

  it('an entry claiming 10 GiB is refused at its header by limits.maxBytes', async () => {
    // The header and no data: the refusal must come before a byte of it is read.
    const sealed = await sealStream(s, tarChunks([{ name: './', type: '5' }, { name: './big.bin', type: '0', data: '', size: 10 * 2 ** 30, pax: { size: String(10 * 2 ** 30) } }]));
    const id = await forgeStored(s, first, { files: sealed });
    const cfg = await writeStandbyConfig(s, join(root, 'max-bytes.yml'));
    const doc = fromYaml(await readFile(cfg, 'utf8')) as Record<string, unknown>;
    doc.limits = { maxBytes: 2 ** 30 };
    await writeFile(cfg, toYaml(doc));
    await expectRefused(s, before, await apply(s, [], {}, cfg), [`set ${id}: files artifact`, /\(maxBytes\) at "\.\/big\.bin"/]);
  });

  it('every sample config key missing, of a wrong type, or misspelt: refused naming the key (or defaulted when optional)', async () => {
    for (const agent of ['primary', 'standby'] as const) {
      const load = agent === 'primary' ? loadPrimaryConfig : loadStandbyConfig;
      const file = join(root, `v-${agent}.yml`);
      for (const v of variants(sample(agent))) {
        await writeFile(file, toYaml(v.doc));
        let err: unknown;
        try {
          load(file);
        } catch (e) {
          err = e;
        }
        if (err === undefined) {
          expect(v.kind, `${agent} ${v.kind} ${v.path} accepted`).toBe('missing');
          continue;
        }
        expect(err, `${agent} ${v.path}`).toBeInstanceOf(TandemError);
        expect((err as TandemError).message, `${agent} ${v.kind} ${v.path}`).toContain(v.path.split('.').at(-1)!);
      }
    }
  });

  it('a read-only live directory: a clear error, nothing live changed', async () => {
    await forgeSet(s, first);
    const dir = join(root, 'standby');
    const ns = process.getuid?.() === 0 ? ['-m'] : ['-r', '-m'];
    const script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99; shift; exec "$@"';
    const o = await runCommand('unshare', [...ns, 'sh', '-c', script, 'sh', dir, process.execPath, STANDBY_MAIN, 'apply', '--config', s.standby.configFile], {
      env: { ...process.env, TANDEM_LOG_FORMAT: 'json' },
    });
    expect(o.code, o.stderr).not.toBe(99);
    await expectRefused(s, before, { code: o.code, signal: o.signal, stdout: o.stdout.toString(), stderr: o.stderr, timedOut: false }, [/read-only file system/, dir]);
  });
});
