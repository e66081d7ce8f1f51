/**
 * Bad input gets a clear error and changes nothing: every refusal names the set (and the artifact
 * where there is one), and the live standby (database rows, config, security, files, applied
 * record, what lies beside the live dirs) is exactly as before, with no staging left behind.
 */
import { lstat, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { dropDatabase, ensurePostgres, makeKeys, requireCommands, runCommand, tmpDir, type KeyFiles, type RunResult } from './support/site.js';
import {
  STANDBY_MAIN,
  apply,
  backup,
  createStandbySite,
  dropSiteDatabases,
  expectNoLeftovers,
  forgeSet,
  liveState,
  pointLatestAt,
  rawTar,
  readPlain,
  restartLog,
  show,
  writeStandbyConfig,
  type LiveState,
  type RawTarEntry,
  type StandbySite,
} from './support/standby-helpers.js';

describe('apply refuses bad input and changes nothing', () => {
  let root: string;
  let s: StandbySite;
  let other: KeyFiles;
  let first: string;
  let before: LiveState;
  let restarts: number;

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore', 'unshare']);
    await ensurePostgres();
    root = await tmpDir('tandem-standby-ref-');
    s = await createStandbySite(root);
    other = await makeKeys(join(root, 'other-keys'));
    first = await backup(s);
    const r = await apply(s);
    expect(r.code, show(r)).toBe(0);
    await mkdir(join(root, 'standby', 'outside'));
    await writeFile(join(root, 'standby', 'outside', 'target.txt'), 'must not change\n');
  });

  beforeEach(async () => {
    before = await liveState(s);
    restarts = (await restartLog(s)).length;
  });

  afterAll(async () => {
    if (s) await dropSiteDatabases(s);
    if (root) await rm(root, { recursive: true, force: true });
  });

  /** The run failed with all of `patterns` in its message, and nothing live changed. */
  async function expectRefused(r: RunResult, patterns: Array<RegExp | string>): Promise<void> {
    expect(r.code, show(r)).not.toBe(0);
    expect(r.signal).toBeNull();
    const message = r.stderr.split('\n').filter((l) => l.startsWith('tandem-standby') || l.startsWith('  ')).join('\n');
    for (const p of patterns) expect(message, show(r)).toMatch(typeof p === 'string' ? new RegExp(escape(p)) : p);
    expect(await liveState(s)).toEqual(before);
    expect(await expectNoLeftovers(s)).toEqual([]);
    expect(await restartLog(s)).toHaveLength(restarts);
    expect(await readdir(join(root, 'standby', 'outside'))).toEqual(['target.txt']);
    expect(await readFile(join(root, 'standby', 'outside', 'target.txt'), 'utf8')).toBe('must not change\n');
  }
  const escape = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  it('a wrong identity', async () => {
    const id = await forgeSet(s, first);
    const cfg = await writeStandbyConfig(s, join(root, 'wrong-identity.yml'), { identityFile: other.identityFile });
    await expectRefused(await apply(s, [], {}, cfg), [`this standby's key cannot decrypt set ${id} (db artifact`, 'encrypted for another recipient?']);
  });

  it('a wrong verify key', async () => {
    await forgeSet(s, first);
    const cfg = await writeStandbyConfig(s, join(root, 'wrong-verify.yml'), { verifyKeyFile: other.verifyKeyFile });
    await expectRefused(await apply(s, [], {}, cfg), [/latest\.json: signed by key \S+, but this agent trusts key/]);
  });

  // In the age header a flipped byte looks like "another recipient" to age; the checksum says what it is.
  // The dump streams (each signed piece verified before use); archives, and a dump of a set
  // without chunk digests (made before they existed), are downloaded and hashed whole before use.
  it.each([
    ['files', 'in the middle of the files artifact', (b: Buffer) => Math.floor(b.length / 2), false],
    ['db', 'in the age header of the db artifact', () => 100, false],
    ['db', 'in the age header of the db artifact, a set without chunk digests', () => 100, true],
  ] as const)('a flipped byte %s (%s)', async (name, _where, at, wholeOnly) => {
    const id = await forgeSet(s, first, {
      wholeOnly,
      damage: {
        [name]: (b: Buffer) => {
          const c = Buffer.from(b);
          c[at(c)]! ^= 0x01;
          return c;
        },
      },
    });
    await expectRefused(await apply(s), [`set ${id}: ${name} artifact (${name === 'db' ? 'db.dump.zst' : 'files.tar'}.age): SHA-256 of the stored bytes is`, 'corrupt or tampered with']);
  });

  it('a truncated artifact', async () => {
    const id = await forgeSet(s, first, { damage: { config: (b) => b.subarray(0, b.length - 100) } });
    await expectRefused(await apply(s), [`set ${id}: config artifact (config.tar.zst.age)`, 'truncated or replaced']);
  });

  it('a missing artifact', async () => {
    const id = await forgeSet(s, first, { omit: ['security'] });
    await expectRefused(await apply(s), [`set ${id}: security artifact (security.tar.zst.age) is missing`]);
  });

  it('a manifest edited after signing', async () => {
    const id = await forgeSet(s, first, { editManifest: (raw) => Buffer.from(raw.toString('utf8').replace('"primaryHost": "', '"primaryHost": "x')) });
    await expectRefused(await apply(s), [`set ${id}: manifest.json: signature does not match`]);
  });

  it('a manifest re-signed with another key', async () => {
    const id = await forgeSet(s, first, { manifestKeyFile: other.signingKeyFile });
    await expectRefused(await apply(s), [`set ${id}: manifest.json: signed by key`, 'but this agent trusts key']);
  });

  it('a set from a fenced epoch', async () => {
    const id = await forgeSet(s, first);
    const epochFile = join(root, 'store', s.site, 'epoch.json');
    const saved = await readFile(epochFile);
    await writeFile(epochFile, JSON.stringify({ format: 'tandem-epoch', version: 1, epoch: 2, primaryHost: 'new-primary', since: new Date().toISOString() }));
    try {
      await expectRefused(await apply(s), [`set ${id} was made in epoch 1, but the filestore is at epoch 2`]);
    } finally {
      await writeFile(epochFile, saved);
    }
  });

  it('an unencrypted set where encryption is expected', async () => {
    const id = await forgeSet(s, first, { unencrypted: true });
    await expectRefused(await apply(s), [`set ${id} is not encrypted, but this standby expects age-encrypted sets`]);
  });

  it('a pg_restore failure shows its stderr and keeps the old database', async () => {
    const dump = await readPlain(s, first, 'db');
    const id = await forgeSet(s, first, { plain: { db: dump.subarray(0, Math.floor(dump.length * 0.6)) } });
    const r = await apply(s);
    await expectRefused(r, [`pg_restore of set ${id} into the new database`, 'is untouched', /pg_restore: error:/]);
  });

  /** Apply with a 2 MiB tmpfs as the state dir (in a private mount namespace): room for the set's stored archives, not for a 3 MiB dump. */
  async function applyOnTinyDisk(): Promise<RunResult> {
    const tiny = join(root, 'tiny-state');
    await mkdir(tiny, { recursive: true });
    const cfg = await writeStandbyConfig(s, join(root, 'tiny.yml'), { stateDir: tiny, restoreJobs: 2 });
    const script = 'mount -t tmpfs -o size=2m tmpfs "$1" || exit 99; "$2" "$3" apply --config "$4"; rc=$?; echo "left:[$(ls -A "$1/staging" 2>/dev/null)][$(ls -A "$1" | grep -v staging)]"; exit $rc';
    const ns = process.getuid?.() === 0 ? ['-m'] : ['-r', '-m'];
    const out = await runCommand('unshare', [...ns, 'sh', '-c', script, 'sh', tiny, process.execPath, STANDBY_MAIN, cfg], {
      env: { ...process.env, TANDEM_LOG_FORMAT: 'json' },
    });
    const r: RunResult = { code: out.code, signal: out.signal, stdout: out.stdout.toString('utf8'), stderr: out.stderr, timedOut: false };
    if (r.code === 99 || /unshare failed/.test(r.stderr)) {
      throw new Error(`this test simulates a full disk with a 2 MiB tmpfs in a private mount namespace and needs \`unshare -m\` (root) or unprivileged user namespaces:\n${show(r)}`);
    }
    expect(r.stdout.trim().split('\n').at(-1)).toBe('left:[][]'); // neither staging nor journal nor lock
    return r;
  }

  it('a dump too large for the staging disk is refused before the download, and live is intact', async () => {
    const id = await forgeSet(s, first, { plain: { db: Buffer.concat([Buffer.from('PGDMP'), Buffer.alloc(3 << 20, 'x')]) } });
    await expectRefused(await applyOnTinyDisk(), [
      `set ${id} cannot be applied here: not enough free space on the file system of`,
      /: [\d.]+ (B|KiB|MiB) free, and the apply needs [\d.]+ MiB there \(the dump 3\.0 MiB; the stored copy of the security artifact while it is used [\d.]+ (B|KiB)\)/,
      'nothing was downloaded and nothing changed',
    ]);
  });

  it('a signed size that lies about the dump stops zstd at that size, before the disk fills; staging removed, live intact', async () => {
    const id = await forgeSet(s, first, { plain: { db: Buffer.concat([Buffer.from('PGDMP'), Buffer.alloc(3 << 20, 'x')]) }, claimPlainSize: { db: 1000 } });
    const r = await applyOnTinyDisk();
    await expectRefused(r, [`set ${id}: db artifact (db.dump.zst.age): decompresses to more than 1000 bytes, the signed manifest says 1000`]);
    expect(r.stderr).not.toMatch(/the dump needs|not enough free space/);
  });

  it('an artifact that decompresses to more than its signed size is refused, naming the set and artifact', async () => {
    const id = await forgeSet(s, first, { claimPlainSize: { files: 1000 } });
    await expectRefused(await apply(s), [`set ${id}: files artifact`, 'decompresses to more than 1000 bytes, the signed manifest says 1000']);
  });

  describe('archive entries that would escape their target', () => {
    const outside = () => join(root, 'standby', 'outside');
    const cases: Array<[string, () => RawTarEntry[], RegExp]> = [
      ['a ".." path', () => [{ name: '../outside/escape.txt', type: 'file', data: 'pwned' }], /refusing archive entry "\.\.\/outside\/escape\.txt": path contains '\.\.'/],
      ['an absolute path', () => [{ name: join(outside(), 'abs.txt'), type: 'file', data: 'pwned' }], /path is absolute/],
      [
        'a symlink out and a write through it',
        () => [
          { name: './evil', type: 'symlink', linkname: outside() },
          { name: './evil/pwned.txt', type: 'file', data: 'pwned' },
        ],
        /refusing archive entry "\.\/evil\/pwned\.txt": path passes through the symlink "evil"/,
      ],
      [
        'a relative symlink out and a write through it',
        () => [
          { name: './evil', type: 'symlink', linkname: '../outside' },
          { name: './evil/pwned.txt', type: 'file', data: 'pwned' },
        ],
        /refusing archive entry "\.\/evil\/pwned\.txt": path passes through the symlink "evil"/,
      ],
      ['a hardlink out', () => [{ name: './hl', type: 'hardlink', linkname: join(outside(), 'target.txt') }], /hardlink target .* is absolute/],
      ['a device file', () => [{ name: './null', type: 'chardev' }], /CharacterDevice entries are not allowed/],
    ];
    it.each(cases)('%s', async (_what, entries, why) => {
      const tar = rawTar([{ name: './', type: 'dir' }, { name: './ok.txt', type: 'file', data: 'fine\n' }, ...entries()]);
      const id = await forgeSet(s, first, { plain: { files: tar } });
      await expectRefused(await apply(s), [`set ${id}: files artifact (files.tar.zst.age)`, why]);
      await expect(lstat(join(outside(), 'pwned.txt'))).rejects.toThrow(/ENOENT/);
    });
  });

  // Last: this one applies a set, on purpose.
  it('an older set is refused unless named with --allow-older', async () => {
    // A set without chunk digests (made before they existed) still applies: verified whole first.
    const newer = await forgeSet(s, first, { wholeOnly: true });
    const ok = await apply(s);
    expect(ok.code, show(ok)).toBe(0);
    before = await liveState(s);
    restarts = (await restartLog(s)).length;

    await pointLatestAt(s, first);
    await expectRefused(await apply(s), [`set ${first} (epoch 1, seq 1) is older than the applied set ${newer}`]);
    await expectRefused(await apply(s, ['--set', first]), [`is older than the applied set ${newer}`, /--allow-older/]);
    const back = await apply(s, ['--set', first, '--allow-older', '--json']);
    expect(back.code, show(back)).toBe(0);
    expect(JSON.parse(back.stdout)).toMatchObject({ status: 'applied', setId: first });
  });

  afterAll(async () => {
    if (s) await dropDatabase(`${s.standby.db}__tandem_new`).catch(() => undefined);
  });
});
