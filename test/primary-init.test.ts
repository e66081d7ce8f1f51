/**
 * `tandem-primary init`, run as the built CLI: the key files and the daemon tokens it writes (modes,
 * formats, usable by the real `age`), and its refusal to overwrite them without --force.
 *
 * Needs: `npm run build` first (the CLI runs from packages/primary-agent/dist/bundle), and age, age-keygen on PATH.
 */
import { statSync } from 'node:fs';
import { chmod, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadToken } from '@tandem/shared';
import { PRIMARY_MAIN, mustRun, requireBuilt, requireCommands, runCommand, runPrimary, tmpDir } from './support/site.js';
import { expectOneErrorLine } from './support/primary-site.js';

let work: string;

beforeAll(async () => {
  requireCommands(['age', 'age-keygen']);
  requireBuilt();
  work = await tmpDir('tandem-primary-init-test-');
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('init', () => {
  it('writes the key files and the daemon tokens 0600, refuses to overwrite without --force, and the keys work with age', async () => {
    const dir = join(work, 'init-keys');
    // Even with a permissive umask the private keys end up 0600.
    const first = await runCommand('sh', ['-c', `umask 000 && exec "${process.execPath}" "${PRIMARY_MAIN}" init --keys-dir "${dir}"`]);
    expect(first.code, first.stderr).toBe(0);
    const out = first.stdout.toString('utf8');
    const names = ['backup.agekey', 'backup.agepub', 'signing.key', 'signing.pub', 'control.token', 'read.token', 'standby.token'];
    for (const n of names) {
      expect(statSync(join(dir, n)).mode & 0o777, n).toBe(0o600);
      expect(out).toContain(join(dir, n));
    }
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect(out).toMatch(/losing it means losing the backups/);
    expect(out).toMatch(/standby.*backup\.agekey/);

    const identity = await readFile(join(dir, 'backup.agekey'), 'utf8');
    const recipient = (await readFile(join(dir, 'backup.agepub'), 'utf8')).trim();
    expect(identity).toMatch(/^AGE-SECRET-KEY-1[0-9A-Z]+$/m);
    expect(recipient).toMatch(/^age1[0-9a-z]+$/);
    expect((await mustRun('age-keygen', ['-y', join(dir, 'backup.agekey')])).toString().trim()).toBe(recipient);
    expect(await readFile(join(dir, 'signing.key'), 'utf8')).toMatch(/-----BEGIN PRIVATE KEY-----/);
    expect(await readFile(join(dir, 'signing.pub'), 'utf8')).toMatch(/-----BEGIN PUBLIC KEY-----/);
    // The tokens load as the daemons load them (a 32-byte secret, no whitespace).
    for (const t of ['control.token', 'read.token', 'standby.token']) expect(loadToken({ tokenFile: join(dir, t) })).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const ct = await mustRun('age', ['-r', recipient], { input: 'secret' });
    expect((await mustRun('age', ['-d', '-i', join(dir, 'backup.agekey')], { input: ct })).toString()).toBe('secret');

    const before = await Promise.all(names.map((n) => readFile(join(dir, n))));
    const again = await runPrimary(['init', '--keys-dir', dir]);
    expect(again.code).toBe(2);
    expectOneErrorLine(again, /refusing to overwrite/);
    expect(await Promise.all(names.map((n) => readFile(join(dir, n))))).toEqual(before);

    // One existing key file is enough to refuse.
    await rm(join(dir, 'signing.pub'));
    await chmod(join(dir, 'backup.agekey'), 0o600);
    expect((await runPrimary(['init', '--keys-dir', dir])).code).toBe(2);
    expect(await readFile(join(dir, 'backup.agekey'))).toEqual(before[0]);

    const forced = await runPrimary(['init', '--keys-dir', dir, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    const after = await Promise.all(names.map((n) => readFile(join(dir, n))));
    for (let i = 0; i < names.length; i++) {
      expect(after[i]!.equals(before[i]!), `${names[i]} replaced`).toBe(false);
      expect(statSync(join(dir, names[i]!)).mode & 0o777).toBe(0o600);
    }
  });
});
