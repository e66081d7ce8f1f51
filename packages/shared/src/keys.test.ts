import { chmod, chown, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatIdentityFile, generateAgeKeyPair } from './crypto/age/index.js';
import { generateSigningKeyPair } from './crypto/sign.js';
import { loadIdentities, loadRecipients, loadSigningKeyFile, loadVerifyKeyFile } from './keys.js';
import { thrownBy } from './testing/helpers.js';
import { loadToken } from './token.js';

/**
 * Key and token files are refused when anyone but this agent's user (or root) could have chosen
 * their content: writable by group or others, owned by another user, or in a directory others can
 * write. Public keys too: a replaced backup.agepub gets every later set encrypted to someone else.
 */
const OTHER_UID = 65534; // nobody
const isRoot = process.geteuid?.() === 0;
let root: string;
const age = generateAgeKeyPair();
const sig = generateSigningKeyPair();

/** A keys dir (0700) with the four key files and a token (0600). */
async function keysDir(name: string): Promise<Record<'agekey' | 'agepub' | 'signingKey' | 'signingPub' | 'token', string>> {
  const dir = join(root, name);
  await mkdir(dir, { mode: 0o700 });
  const files = {
    agekey: join(dir, 'backup.agekey'),
    agepub: join(dir, 'backup.agepub'),
    signingKey: join(dir, 'signing.key'),
    signingPub: join(dir, 'signing.pub'),
    token: join(dir, 'control.token'),
  };
  await writeFile(files.agekey, formatIdentityFile(age, new Date()), { mode: 0o600 });
  await writeFile(files.agepub, `${age.recipient}\n`, { mode: 0o600 });
  await writeFile(files.signingKey, sig.privateKeyPem, { mode: 0o600 });
  await writeFile(files.signingPub, sig.publicKeyPem, { mode: 0o600 });
  await writeFile(files.token, 'a3f1c2d4e5f60718293a4b5c6d7e8f90\n', { mode: 0o600 });
  return files;
}

const loaders = (f: Awaited<ReturnType<typeof keysDir>>) => [
  ['backup.agepub', () => loadRecipients(f.agepub)],
  ['backup.agekey', () => loadIdentities(f.agekey)],
  ['signing.key', () => loadSigningKeyFile(f.signingKey)],
  ['signing.pub', () => loadVerifyKeyFile(f.signingPub)],
  ['control.token', () => loadToken({ tokenFile: f.token, key: 'server.tokenFile' })],
] as const;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tandem-keys-'));
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe('key and token files', () => {
  it('load from a 0700 directory, each file 0600 and ours', async () => {
    const f = await keysDir('ok');
    for (const [, load] of loaders(f)) expect(load).not.toThrow();
    expect(loadRecipients(f.agepub)).toEqual([age.recipient]);
  });

  it('are refused, public ones too, when group or others can write them', async () => {
    const f = await keysDir('writable');
    for (const [name, load] of loaders(f)) {
      const file = join(root, 'writable', name);
      for (const mode of [0o666, 0o620, 0o602]) {
        await chmod(file, mode);
        const e = thrownBy(load);
        expect(e.code).toBe('FILE_UNSAFE');
        expect(e.message).toContain(`${file}`);
        expect(e.message).toContain(`can be written by group or others (mode 0${mode.toString(8)})`);
        expect(e.hint).toContain(`chmod 600 ${file}`);
      }
      await chmod(file, 0o600);
      expect(load).not.toThrow();
    }
  });

  it('are refused when another user owns them (a replaced backup.agepub)', async () => {
    if (!isRoot) return; // only root can give a file away
    const f = await keysDir('owned');
    // Another local user's recipient, as if they had swapped the file.
    const attacker = generateAgeKeyPair();
    await writeFile(f.agepub, `${attacker.recipient}\n`);
    await chown(f.agepub, OTHER_UID, OTHER_UID);
    const e = thrownBy(() => loadRecipients(f.agepub));
    expect(e.code).toBe('FILE_UNSAFE');
    expect(e.message).toBe(`age recipient file ${f.agepub}: it is owned by uid ${OTHER_UID}, not by this agent's user (uid 0) or root; refusing to use it, since whoever can change it decides what this agent trusts`);
    for (const [name, load] of loaders(f)) {
      const file = join(root, 'owned', name);
      await chown(file, OTHER_UID, OTHER_UID);
      expect(thrownBy(load).message).toContain(`is owned by uid ${OTHER_UID}`);
    }
  });

  it('are refused when their directory can be written by group or others (without the sticky bit), or another user owns it', async () => {
    const f = await keysDir('open-dir');
    const dir = join(root, 'open-dir');
    await chmod(dir, 0o777);
    for (const [, load] of loaders(f)) {
      const e = thrownBy(load);
      expect(e.message).toContain(`its directory ${dir} can be written by group or others (mode 0777): anyone who can write it can replace the file`);
      expect(e.hint).toContain(`chmod 700 ${dir}`);
    }
    await chmod(dir, 0o1777); // sticky, like /tmp: others cannot replace our file
    for (const [, load] of loaders(f)) expect(load).not.toThrow();
    await chmod(dir, 0o755);
    for (const [, load] of loaders(f)) expect(load).not.toThrow();
    if (isRoot) {
      await chown(dir, OTHER_UID, OTHER_UID);
      for (const [, load] of loaders(f)) expect(thrownBy(load).message).toContain(`its directory ${dir} is owned by uid ${OTHER_UID}`);
      await chown(dir, 0, 0);
    }
  });

  it('through a symlink: the directory of the real file counts too', async () => {
    const f = await keysDir('real');
    const openDir = join(root, 'open-real');
    await mkdir(openDir, { mode: 0o700 });
    await chmod(openDir, 0o777);
    const moved = join(openDir, 'backup.agepub');
    await writeFile(moved, `${age.recipient}\n`, { mode: 0o600 });
    await rm(f.agepub);
    await symlink(moved, f.agepub);
    expect(thrownBy(() => loadRecipients(f.agepub)).message).toContain(`its directory ${openDir} can be written by group or others`);
  });

  it('warn, but still load, when a private key or token is readable by group or others', async () => {
    const f = await keysDir('readable');
    const warnings: string[] = [];
    const logger = { warn: (_o: object, msg: string) => warnings.push(msg) } as never;
    await chmod(f.signingKey, 0o640);
    await chmod(f.agekey, 0o644);
    await chmod(f.agepub, 0o644);
    expect(() => loadSigningKeyFile(f.signingKey, logger)).not.toThrow();
    expect(() => loadIdentities(f.agekey, logger)).not.toThrow();
    expect(() => loadRecipients(f.agepub)).not.toThrow();
    expect(warnings).toEqual(['signing key file is readable by group or others; chmod 600 it', 'age identity file is readable by group or others; chmod 600 it']);
  });
});
