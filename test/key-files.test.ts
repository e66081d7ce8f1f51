/**
 * Issue 11, item 7: the keys directory and the key files are integrity-critical, public ones too.
 * `tandem-primary init` into an existing world-writable directory makes it 0700 and writes every key
 * and token 0600; a local user who replaces backup.agepub with their own recipient (or makes it
 * writable for everyone) gets no backup encrypted to their key: the primary refuses the file, names
 * it, and commits nothing.
 *
 * Needs: `npm run build` first, PostgreSQL on 127.0.0.1:5432 (or TANDEM_TEST_PG), pg_dump on PATH.
 */
import { statSync } from 'node:fs';
import { chmod, chown, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateAgeKeyPair } from '@tandem/shared';
import { createDemoDatabase, createSiteTree, dbUrl, dropDatabase, ensurePostgres, initFilestore, requireBuilt, requireCommands, runPrimary, tmpDir, writePrimaryConfig } from './support/site.js';

const DB = `tandem_keyfiles_${process.pid}`;
const OTHER_UID = 65534; // nobody
let work: string;

beforeAll(async () => {
  requireCommands(['pg_dump']);
  requireBuilt();
  await ensurePostgres();
  work = await tmpDir('tandem-keyfiles-');
  await createDemoDatabase(DB, { rows: 10 });
});

afterAll(async () => {
  await dropDatabase(DB).catch(() => undefined);
  if (work) await rm(work, { recursive: true, force: true });
});

describe('tandem-primary init', () => {
  it('makes an existing 0777 keys directory 0700 and writes the tokens each role needs, saying which file goes where', async () => {
    const dir = join(work, 'open-keys');
    await mkdir(dir);
    await chmod(dir, 0o777);
    const r = await runPrimary(['init', '--keys-dir', dir, '--standby', 'web2', '--standby', 'web3']);
    expect(r.code, r.stderr).toBe(0);
    expect((await stat(dir)).mode & 0o7777).toBe(0o700);
    const files = (await readdir(dir)).sort();
    expect(files).toEqual(['backup.agekey', 'backup.agepub', 'control.token', 'files.agekey', 'read.token', 'signing.key', 'signing.pub', 'standby-web2.token', 'standby-web3.token']);
    expect(r.stdout).toContain(`primary  keys.filesKeyFile:     ${join(dir, 'files.agekey')}   (the same file on every standby)`);
    for (const f of files) expect(statSync(join(dir, f)).mode & 0o7777, f).toBe(0o600);
    expect(r.stdout).toContain(`primary  server.tokenFile:      ${join(dir, 'control.token')}   (control: stays on the primary)`);
    expect(r.stdout).toContain(`primary  server.readTokenFile:  ${join(dir, 'read.token')}   (monitoring: give it to Prometheus)`);
    expect(r.stdout).toContain(`      - id: web2\n        tokenFile: ${join(dir, 'standby-web2.token')}`);
    expect(r.stdout).toContain(`  standby  primary.tokenFile:     ${join(dir, 'standby-web3.token')}   (copy to standby web3 only)`);
    const bad = await runPrimary(['init', '--keys-dir', join(work, 'bad-id'), '--standby', '../x']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--standby "../x" is not a standby id');
  });

  it("refuses a keys directory another user owns", async () => {
    if (process.geteuid?.() !== 0) return; // only root can give a directory away
    const dir = join(work, 'theirs');
    await mkdir(dir, { mode: 0o755 });
    await chown(dir, OTHER_UID, OTHER_UID);
    const r = await runPrimary(['init', '--keys-dir', dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${dir} is owned by uid ${OTHER_UID}`);
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('a replaced public key', () => {
  let config: string;
  let keys: string;
  let store: string;

  beforeAll(async () => {
    keys = join(work, 'keys');
    expect((await runPrimary(['init', '--keys-dir', keys])).code).toBe(0);
    store = join(work, 'store');
    config = await writePrimaryConfig(join(work, 'primary.yml'), {
      site: 'demo',
      databaseUrl: dbUrl(DB),
      paths: await createSiteTree(join(work, 'site')),
      filestoreUrl: pathToFileURL(store).href,
      keys: { signingKeyFile: join(keys, 'signing.key'), recipientFile: join(keys, 'backup.agepub') },
      stateDir: join(work, 'state'),
    });
    await initFilestore(config);
  });

  const sets = async () => (await readdir(join(store, 'demo', 'sets')).catch(() => [] as string[])).length;

  it("is refused when another local user owns it: no set is encrypted to the attacker's key", async () => {
    if (process.geteuid?.() !== 0) return; // only root can give a file away
    const recipient = join(keys, 'backup.agepub');
    // What the attacker leaves behind: their own recipient, in a file they own.
    const attacker = generateAgeKeyPair();
    await rm(recipient);
    await writeFile(recipient, `${attacker.recipient}\n`, { mode: 0o644 });
    await chown(recipient, OTHER_UID, OTHER_UID);
    const r = await runPrimary(['backup', '--config', config, '--local']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(`age recipient file ${recipient}: it is owned by uid ${OTHER_UID}, not by this agent's user (uid 0) or root; refusing to use it`);
    expect(await sets()).toBe(0);
  });

  it('is refused when others can write it, and used again once it is 0600 and ours', async () => {
    const recipient = join(keys, 'backup.agepub');
    expect((await runPrimary(['init', '--keys-dir', keys, '--force'])).code).toBe(0);
    await chmod(recipient, 0o666);
    const r = await runPrimary(['backup', '--config', config, '--local']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(`age recipient file ${recipient}: it can be written by group or others (mode 0666)`);
    expect(r.stderr).toContain(`hint: chmod 600 ${recipient}`);
    expect(await sets()).toBe(0);

    // And a keys directory others can write is refused the same way.
    await chmod(recipient, 0o600);
    await chmod(keys, 0o777);
    const d = await runPrimary(['backup', '--config', config, '--local']);
    expect(d.code, d.stderr).toBe(2);
    expect(d.stderr).toContain(`its directory ${keys} can be written by group or others (mode 0777)`);
    expect(await sets()).toBe(0);

    await chmod(keys, 0o700);
    const ok = await runPrimary(['backup', '--config', config, '--local']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(await sets()).toBe(1);
  });
});
