/**
 * Hostile archives: sets signed with the site's own key (so signature and hash checks pass and only
 * the extractor stands between the archive and the standby) whose tar streams try to escape the
 * target, plant special files, or exhaust inodes, disk or memory. Each: refused with the entry named,
 * nothing written outside the target, nothing live changed, resources bounded.
 */
import { spawnSync } from 'node:child_process';
import { lstat, mkdir, readdir, readlink, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { artifactFileName } from '@tandem/shared';
import { runCommand, runPrimary, type RunResult } from '../support/site.js';
import { STANDBY_MAIN, apply, forgeSet, removeStandbySite, show, writeStandbyConfig, type StandbySite } from '../support/standby-helpers.js';
import { forgeStored } from './support/forge.js';
import { Tally, escapeRe, expectRefused, outsideDir, setUpRefusalSite, type Baseline } from './support/refusal.js';
import { sealStream, tarBuffer, tarChunks, type HostileEntry } from './support/tar.js';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { readFile, writeFile } from 'node:fs/promises';

const tally = new Tally('hostile archives');
let root: string;
let s: StandbySite;
let first: string;
let before: Baseline;
let rootListing: string[];

beforeAll(async () => {
  ({ root, s, first, before } = await setUpRefusalSite('tandem-faults-hostile-', ['pg_dump', 'pg_restore', 'unshare']));
  rootListing = (await readdir(root)).sort();
});

afterAll(async () => {
  tally.print();
  await removeStandbySite(s, root);
});

/** Nothing appeared anywhere near the target: the work dir's top level is as it was, and no escape file exists. */
async function expectNothingOutside(): Promise<void> {
  const now = (await readdir(root)).sort().filter((n) => !n.endsWith('.yml') && n !== 'small');
  expect(now).toEqual(rootListing.filter((n) => !n.endsWith('.yml')));
  for (const dir of [root, join(root, 'standby'), outsideDir(s), '/tmp']) {
    for (const n of ['escape.txt', 'abs.txt', 'pwned.txt', 'pax-escape.txt', 'gnu-escape.txt', 'hl.txt']) {
      await expect(lstat(join(dir, n)), `${dir}/${n}`).rejects.toThrow(/ENOENT/);
    }
  }
}

type Case = [what: string, entries: () => HostileEntry[], entry: string, why: RegExp];
const out = () => outsideDir(s);
const cases = (): Case[] => [
  ['a ".." path', () => [{ name: '../escape.txt', type: '0', data: 'pwned' }], '../escape.txt', /'\.\.'/],
  ['a ".." after a name', () => [{ name: 'a/../../escape.txt', type: '0', data: 'pwned' }], 'a/../../escape.txt', /'\.\.'/],
  ['a deep ".." climb', () => [{ name: './a/b/../../../outside/escape.txt', type: '0', data: 'pwned' }], './a/b/../../../outside/escape.txt', /'\.\.'/],
  ['a ".." directory entry', () => [{ name: '../', type: '5' }], '../', /'\.\.'/],
  ['an absolute path', () => [{ name: join(out(), 'abs.txt'), type: '0', data: 'pwned' }], join(out(), 'abs.txt'), /absolute/],
  ['an absolute path to /tmp', () => [{ name: '/tmp/escape.txt', type: '0', data: 'pwned' }], '/tmp/escape.txt', /absolute/],
  ['a pax path with ".."', () => [{ name: 'innocent.txt', type: '0', data: 'pwned', pax: { path: '../pax-escape.txt' } }], '../pax-escape.txt', /'\.\.'/],
  ['a pax path that is absolute', () => [{ name: 'innocent.txt', type: '0', data: 'pwned', pax: { path: join(out(), 'pax-escape.txt') } }], join(out(), 'pax-escape.txt'), /absolute/],
  ['a GNU long name with ".."', () => [{ name: '././@LongLink', type: 'L', data: '../gnu-escape.txt\0' }, { name: 'innocent.txt', type: '0', data: 'pwned' }], '../gnu-escape.txt', /'\.\.'/],
  // Symlinks are carried whatever their target; what must never happen is a write through one.
  [
    'an absolute symlink out and a write through it',
    () => [
      { name: './evil', type: '2', linkname: out() },
      { name: './evil/pwned.txt', type: '0', data: 'pwned' },
    ],
    './evil/pwned.txt',
    /passes through the symlink "evil"/,
  ],
  [
    'a relative symlink out and a write through it',
    () => [
      { name: './evil', type: '2', linkname: '../outside' },
      { name: './evil/pwned.txt', type: '0', data: 'pwned' },
    ],
    './evil/pwned.txt',
    /passes through the symlink "evil"/,
  ],
  [
    'a symlink chain that climbs out (a -> ., b -> a/..) and a write through it',
    () => [
      { name: './a', type: '2', linkname: '.' },
      { name: './b', type: '2', linkname: 'a/..' },
      { name: './b/outside/pwned.txt', type: '0', data: 'pwned' },
    ],
    './b/outside/pwned.txt',
    /passes through the symlink "b"/,
  ],
  [
    'a symlink via pax linkpath out and a write through it',
    () => [
      { name: './evil', type: '2', linkname: 'x', pax: { linkpath: '../../../../../../tmp' } },
      { name: './evil/pwned.txt', type: '0', data: 'pwned' },
    ],
    './evil/pwned.txt',
    /passes through the symlink "evil"/,
  ],
  [
    'an absolute symlink out and a directory made through it',
    () => [
      { name: './evil', type: '2', linkname: out() },
      { name: './evil/sub/', type: '5' },
    ],
    './evil/sub/',
    /passes through the symlink "evil"/,
  ],
  [
    'an absolute symlink out and a hardlink to a file behind it',
    () => [
      { name: './evil', type: '2', linkname: out() },
      { name: './hl.txt', type: '1', linkname: './evil/target.txt' },
    ],
    './hl.txt',
    /hardlink target .* passes through the symlink "evil"/,
  ],
  [
    'an absolute symlink to a file, then that file again as a regular file',
    () => [
      { name: './evil', type: '2', linkname: join(out(), 'target.txt') },
      { name: './evil', type: '0', data: 'pwned' },
    ],
    './evil',
    /is the symlink "evil"/,
  ],
  [
    'a file written through an inside symlink to a dir',
    () => [
      { name: './sub/', type: '5' },
      { name: './d', type: '2', linkname: 'sub' },
      { name: './d/pwned.txt', type: '0', data: 'pwned' },
    ],
    './d/pwned.txt',
    /passes through the symlink/,
  ],
  [
    'a file replacing a symlink',
    () => [
      { name: './link', type: '2', linkname: 'ok.txt' },
      { name: './link', type: '0', data: 'pwned' },
    ],
    './link',
    /symlink/,
  ],
  ['an absolute hardlink', () => [{ name: './hl.txt', type: '1', linkname: join(out(), 'target.txt') }], './hl.txt', /hardlink target .* absolute/],
  ['a ".." hardlink', () => [{ name: './hl.txt', type: '1', linkname: '../outside/target.txt' }], './hl.txt', /hardlink target/],
  [
    'a hardlink to a symlink',
    () => [
      { name: './l', type: '2', linkname: 'ok.txt' },
      { name: './hl.txt', type: '1', linkname: './l' },
    ],
    './hl.txt',
    /hardlink target/,
  ],
  ['a hardlink via pax linkpath out', () => [{ name: './hl.txt', type: '1', linkname: 'ok.txt', pax: { linkpath: '/etc/passwd' } }], './hl.txt', /hardlink target .* absolute/],
  ['a character device', () => [{ name: './null', type: '3' }], './null', /CharacterDevice entries are not allowed/],
  ['a block device', () => [{ name: './sda', type: '4' }], './sda', /BlockDevice entries are not allowed/],
  ['a fifo', () => [{ name: './fifo', type: '6' }], './fifo', /FIFO entries are not allowed/],
];

describe('hostile archives: entries that would escape or plant special files', () => {
  for (const artifact of ['files', 'config', 'security'] as const) {
    it(`25 hostile entries in the ${artifact} artifact`, async () => {
      const all = cases();
      expect(all).toHaveLength(25);
      for (const [what, entries, entry, why] of all) {
        const tar = await tarBuffer([{ name: './', type: '5' }, { name: './ok.txt', type: '0', data: 'fine\n' }, ...entries()]);
        const id = await forgeSet(s, first, { plain: { [artifact]: tar } });
        const r = await apply(s);
        try {
          await expectRefused(s, before, r, [`set ${id}: ${artifact} artifact (${artifactFileName(artifact, true)})`, `refusing archive entry ${JSON.stringify(entry)}`, why]);
          await expectNothingOutside();
        } catch (e) {
          throw new Error(`${what} (${artifact}): ${(e as Error).message}`);
        }
        tally.add(`${what}`);
      }
    });
  }
});

/** Runs `tandem-standby apply` under /usr/bin/time (optionally in a private mount namespace with a tmpfs); returns the run and its peak RSS. */
async function applyMeasured(cfg: string, tmpfs?: { dir: string; size: string }, extra: string[] = []): Promise<{ r: RunResult; rssMiB: number; seconds: number }> {
  const started = Date.now();
  const cmd = tmpfs
    ? ['unshare', ...(process.getuid?.() === 0 ? ['-m'] : ['-r', '-m']), 'sh', '-c', `mount -t tmpfs -o size=${tmpfs.size} tmpfs "$1" || exit 99; shift; exec "$@"`, 'sh', tmpfs.dir]
    : [];
  const args = [...cmd, '/usr/bin/time', '-f', 'maxrss_kb=%M', process.execPath, STANDBY_MAIN, 'apply', '--config', cfg, ...extra];
  const o = await runCommand(args[0]!, args.slice(1), { env: { ...process.env, TANDEM_LOG_FORMAT: 'json' }, timeoutMs: 120_000 });
  const seconds = (Date.now() - started) / 1000;
  const m = /maxrss_kb=(\d+)/.exec(o.stderr);
  if (o.code === 99) throw new Error(`mounting a tmpfs needs \`unshare -m\` (root): ${o.stderr}`);
  expect(m, o.stderr).not.toBeNull();
  return { r: { code: o.code, signal: o.signal, stdout: o.stdout.toString('utf8'), stderr: o.stderr, timedOut: false }, rssMiB: Number(m![1]) / 1024, seconds };
}

async function configWith(name: string, edit: (doc: Record<string, any>) => void): Promise<string> {
  const file = await writeStandbyConfig(s, join(root, name));
  const doc = fromYaml(await readFile(file, 'utf8')) as Record<string, any>;
  edit(doc);
  await writeFile(file, toYaml(doc));
  return file;
}

describe('hostile archives: resource exhaustion', () => {
  it('a million tiny entries stop at limits.maxEntries, in bounded memory', async () => {
    const N = 1_000_000;
    const entries = function* (): Generator<HostileEntry> {
      yield { name: './', type: '5' };
      for (let i = 0; i < N; i++) yield { name: `./m/${String(i).padStart(7, '0')}`, type: '0', data: '' };
    };
    const sealed = await sealStream(s, tarChunks(entries()));
    const id = await forgeStored(s, first, { files: sealed });
    const cfg = await configWith('max-entries.yml', (d) => {
      d.limits = { maxEntries: 20_000 };
    });
    const { r, rssMiB, seconds } = await applyMeasured(cfg);
    console.log(`[hostile archives] ${N} entries (${(sealed.plainSize / 2 ** 20).toFixed(0)} MiB of tar, ${(sealed.stored.length / 2 ** 20).toFixed(1)} MiB stored): refused in ${seconds.toFixed(1)} s, peak RSS ${rssMiB.toFixed(0)} MiB`);
    await expectRefused(s, before, r, [`set ${id}: files artifact`, /more than 20000 entries \(maxEntries\) at "\.\/m\/0019999"/]);
    await expectNothingOutside();
    expect(rssMiB).toBeLessThan(400);
    expect(seconds).toBeLessThan(60);
    tally.add('a million tiny entries (limits.maxEntries)');
  });

  describe('a 10 GiB entry (a pax size, generated zeros; never written)', () => {
    let id: string;
    /** The same archive in a set that signs a plain size of 32 MiB: the preflight finds room for that on the 64 MiB file system, the extractor's header check must refuse. */
    let lyingId: string;
    beforeAll(async () => {
      const big = 10 * 2 ** 30;
      const sealed = await sealStream(
        s,
        tarChunks([
          { name: './', type: '5' },
          { name: './ok.txt', type: '0', data: 'fine\n' },
          { name: './big.bin', type: '0', zeros: big, pax: { size: String(big) } },
        ]),
      );
      expect(sealed.plainSize).toBeGreaterThan(big);
      lyingId = await forgeStored(s, first, { files: { stored: sealed.stored, plainSize: 32 << 20 } });
      id = await forgeStored(s, first, { files: sealed }); // the newest: what a plain apply takes
      console.log(`[hostile archives] 10 GiB entry: ${(sealed.stored.length / 2 ** 20).toFixed(2)} MiB stored`);
    }, 300_000);

    it('is refused at its header by limits.maxBytes', async () => {
      const cfg = await configWith('max-bytes.yml', (d) => {
        d.limits = { maxBytes: 2 ** 30 };
      });
      const { r, rssMiB, seconds } = await applyMeasured(cfg);
      console.log(`[hostile archives] 10 GiB entry vs limits.maxBytes=1 GiB: refused in ${seconds.toFixed(1)} s, peak RSS ${rssMiB.toFixed(0)} MiB`);
      await expectRefused(s, before, r, [`set ${id}: files artifact`, /more than 1073741824 bytes of file data \(maxBytes\) at "\.\/big\.bin"/]);
      await expectNothingOutside();
      expect(rssMiB).toBeLessThan(400);
      expect(seconds).toBeLessThan(30);
      tally.add('a 10 GiB entry (limits.maxBytes)');
    });

    it('is refused at its header by the free space of the target file system (default config)', async () => {
      const small = join(root, 'small');
      await mkdir(small, { recursive: true });
      const cfg = await configWith('small-files.yml', (d) => {
        d.paths.files = join(small, 'files');
      });
      // Signed honestly (10 GiB of plain data), the set is refused before any download by the
      // preflight's free-space check.
      const honest = await applyMeasured(cfg, { dir: small, size: '64m' });
      await expectRefused(s, before, honest.r, [/not enough free space on the file system of .*the new files dir, up to 10\.0 GiB/]);
      // Signed with a plain size that fits, it gets as far as the extractor, which refuses the
      // entry at its header.
      const { r, rssMiB, seconds } = await applyMeasured(cfg, { dir: small, size: '64m' }, ['--set', lyingId, '--allow-older']);
      console.log(`[hostile archives] 10 GiB entry vs a 64 MiB file system: refused in ${seconds.toFixed(1)} s, peak RSS ${rssMiB.toFixed(0)} MiB`);
      await expectRefused(s, before, r, [`set ${lyingId}: files artifact`, new RegExp(`bytes of file data .* at ${escapeRe('"./big.bin"')}`)]);
      await expectNothingOutside();
      expect(rssMiB).toBeLessThan(400);
      expect(seconds).toBeLessThan(30);
      tally.add('a 10 GiB entry (free space)');
    });
  });
});

/**
 * Symlinks are carried as symlinks whatever their target (absolute links to shared mounts are normal
 * in media directories), and what a standby would refuse is found by the primary at backup time.
 * Last: these apply sets on purpose.
 */
describe('symlinks to anywhere, and what the primary refuses to back up', () => {
  const storeListing = async () => (await readdir(join(root, 'store', s.site, 'sets'), { recursive: true })).sort();

  it('a FIFO in the files dir fails the backup naming it, and nothing is committed', async () => {
    const fifo = join(s.primary.paths.files, 'queue.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const latest = await readFile(join(root, 'store', s.site, 'latest.json'));
    const sets = await storeListing();
    try {
      const r = await runPrimary(['backup', '--config', s.primary.configFile], { env: s.env });
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(`paths.files (${s.primary.paths.files}): "./queue.fifo" (${fifo}) cannot be backed up: FIFO entries are not allowed`);
      expect(r.stderr).toMatch(/nothing was committed/);
      expect(await readFile(join(root, 'store', s.site, 'latest.json'))).toEqual(latest);
      expect(await storeListing()).toEqual(sets);
    } finally {
      await rm(fifo, { force: true });
    }
    tally.add('FIFO on the primary (refused at backup time)');
  });

  it('absolute and escaping symlinks are backed up and applied as links; nothing outside is written', async () => {
    const files = s.primary.paths.files;
    await symlink('/srv/shared/media/archive', join(files, 'shared-archive'));
    await symlink(out(), join(files, 'to-outside'));
    await symlink('../../../../etc', join(files, 'climbs-out'));
    const r = await runPrimary(['backup', '--config', s.primary.configFile], { env: s.env });
    expect(r.code, r.stderr).toBe(0);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    const live = s.standby.paths.files;
    expect(await readlink(join(live, 'shared-archive'))).toBe('/srv/shared/media/archive');
    expect(await readlink(join(live, 'to-outside'))).toBe(out());
    expect(await readlink(join(live, 'climbs-out'))).toBe('../../../../etc');
    expect(await readdir(out())).toEqual(['target.txt']);
    await expectNothingOutside();
    tally.add('absolute and escaping symlinks carried (primary to standby)');
  });

  it('a symlink where the standby keeps preserved config is replaced, never written through', async () => {
    // config.preserve keeps config.d/db.yml; the set's config.d is a link to the outside dir.
    const tar = await tarBuffer([
      { name: './', type: '5' },
      { name: './site.conf', type: '0', data: 'from the set\n' },
      { name: './config.d', type: '2', linkname: out() },
    ]);
    await forgeSet(s, first, { plain: { config: tar } });
    const r = await apply(s);
    expect(r.code, show(r)).toBe(0);
    const cfg = s.standby.paths.config;
    expect((await lstat(join(cfg, 'config.d'))).isDirectory()).toBe(true);
    expect(await readFile(join(cfg, 'config.d', 'db.yml'), 'utf8')).toMatch(/standby-db\.local/);
    expect(await readdir(out())).toEqual(['target.txt']);
    await expectNothingOutside();
    tally.add('symlink in the way of preserved config (replaced, not followed)');
  });
});
