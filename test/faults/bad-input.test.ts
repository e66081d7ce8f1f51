/**
 * Bad input: every config key missing or of a wrong type (generated from etc/*.yml), keys swapped
 * between the agents, the database going away in the middle of a dump, pg_restore failing half
 * way, read-only directories. Each: a clear error naming what is wrong, and nothing lost (nothing
 * committed on the primary, nothing live changed on the standby).
 */
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify as toYaml, parse as fromYaml } from 'yaml';
import { TandemError, loadPrimaryConfig, loadStandbyConfig } from '@tandem/shared';
import { PRIMARY_MAIN, runCommand, runPrimary, sleep, withDb, type RunResult } from '../support/site.js';
import { STANDBY_MAIN, apply, forgeSet, readPlain, removeStandbySite, show, writeStandbyConfig, type StandbySite } from '../support/standby-helpers.js';
import { Tally, errorText, expectRefused, setUpRefusalSite, type Baseline } from './support/refusal.js';
import { sample, variants, type Doc } from './support/config-variants.js';

const tally = new Tally('bad input');
let root: string;
let s: StandbySite;
let first: string;
let before: Baseline;

beforeAll(async () => {
  ({ root, s, first, before } = await setUpRefusalSite('tandem-faults-badinput-', ['pg_dump', 'pg_restore', 'unshare', 'mount']));
});

afterAll(async () => {
  tally.print();
  await removeStandbySite(s, root);
});

const storeDir = () => join(root, 'store', s.site);
const setDirs = async () => (await readdir(join(storeDir(), 'sets')).catch(() => [] as string[])).sort();

/** Primary-side "nothing lost": the same committed sets and the same latest.json as before. */
async function primarySnapshot(): Promise<{ sets: string[]; latest: string }> {
  return { sets: await setDirs(), latest: await readFile(join(storeDir(), 'latest.json'), 'utf8') };
}

// The daemon keys the samples leave out, so that every key of both schemas is exercised.
const PRIMARY_EXTRA: Doc = {
  stateDir: '/var/lib/tandem',
  hostname: 'web1',
  schedule: '0 3 * * *',
  timezone: 'UTC',
  retention: { daily: 7, weekly: 4 },
  server: { listen: '127.0.0.1:7070', tokenFile: '/etc/tandem/control.token', readTokenFile: '/etc/tandem/read.token' },
  standbys: [{ id: 'web2', tokenFile: '/etc/tandem/standby-web2.token' }],
  heartbeatInterval: '30s',
  onFenced: 'true',
  onResume: 'true',
};
const STANDBY_EXTRA: Doc = {
  stateDir: '/var/lib/tandem',
  primary: { url: 'ws://127.0.0.1:7070', tokenFile: '/etc/tandem/standby-web2.token' },
  pollInterval: '60s',
  server: { listen: '127.0.0.1:7071', readTokenFile: '/etc/tandem/read.token' },
  heartbeatStaleAfter: '2m',
  standbyId: 'web2',
  limits: { maxEntries: 1000000, maxBytes: 1099511627776 },
};

describe('bad input: configs', () => {
  for (const agent of ['primary', 'standby'] as const) {
    it(`every ${agent} config key missing, of each wrong type, or misspelt`, async () => {
      const load = agent === 'primary' ? loadPrimaryConfig : loadStandbyConfig;
      const base = { ...sample(agent), ...(agent === 'primary' ? PRIMARY_EXTRA : STANDBY_EXTRA) };
      const file = join(root, `variant-${agent}.yml`);
      await writeFile(file, toYaml(base));
      expect(() => load(file)).not.toThrow(); // the widened sample itself is valid
      const counts = { refused: 0, defaulted: 0 };
      for (const v of variants(base)) {
        await writeFile(file, toYaml(v.doc));
        let err: unknown;
        try {
          load(file);
        } catch (e) {
          err = e;
        }
        const label = `${agent}: ${v.kind} ${v.path}${v.kind === 'wrong type' ? ` = ${JSON.stringify(v.value)}` : ''}`;
        if (err === undefined) {
          // Only an optional key (or one with a default) may be left out.
          expect(v.kind, `${label} was accepted`).toBe('missing');
          counts.defaulted++;
          tally.add(`${agent} config: key left out, default used (accepted)`);
          continue;
        }
        expect(err, label).toBeInstanceOf(TandemError);
        const e = err as TandemError;
        expect(e.kind, label).toBe('config');
        expect(e.message, label).toContain(file);
        // The message names the key path (an unknown key by its own name; a missing parent may be named by its child).
        const last = v.path.split('.').at(-1)!;
        expect(e.message, label).toMatch(new RegExp(`(^|\\s|\\.)${last.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\b`, 'm'));
        counts.refused++;
        tally.add(`${agent} config: ${v.kind} (refused, key named)`);
      }
      console.log(`[bad input] ${agent} config variants: ${counts.refused} refused naming the key, ${counts.defaulted} left-out optional keys accepted with their default`);
    });
  }

  it('bad values of the right type are refused with the key named', async () => {
    const cases: Array<['primary' | 'standby', string, (d: Doc) => void]> = [
      ['primary', 'site', (d) => (d.site = 'not a site name!')],
      ['primary', 'database.url', (d) => ((d.database as Doc).url = 'postgres://u:secret@127.0.0.1/demo')],
      ['primary', 'database.url', (d) => ((d.database as Doc).url = 'mysql://127.0.0.1/demo')],
      ['primary', 'filestore.url', (d) => ((d.filestore as Doc).url = 'ftp://example.com/x')],
      ['primary', 'encryption', (d) => (d.encryption = 'rot13')],
      ['primary', 'compression.level', (d) => ((d.compression as Doc).level = 20)],
      ['primary', 'compression.threads', (d) => ((d.compression as Doc).threads = 0)],
      ['primary', 'schedule', (d) => (d.schedule = '99 * * * *')],
      ['primary', 'timezone', (d) => (d.timezone = 'Mars/Olympus_Mons')],
      ['primary', 'retention.daily', (d) => ((d.retention as Doc).daily = 0)],
      ['primary', 'server.listen', (d) => ((d.server as Doc).listen = 'everywhere')],
      ['primary', 'heartbeatInterval', (d) => (d.heartbeatInterval = '1ms')],
      ['primary', 'keys.recipientFile', (d) => delete (d.keys as Doc).recipientFile],
      ['standby', 'database.restoreJobs', (d) => ((d.database as Doc).restoreJobs = 0)],
      ['standby', 'database.restoreJobs', (d) => ((d.database as Doc).restoreJobs = 1.5)],
      ['standby', 'primary.url', (d) => ((d.primary as Doc).url = 'ftp://127.0.0.1:7070')], // http(s):// is taken as ws(s)://
      ['standby', 'pollInterval', (d) => (d.pollInterval = 'often')],
      ['standby', 'standbyId', (d) => (d.standbyId = 'web 2/../x')],
      ['standby', 'limits.maxEntries', (d) => ((d.limits as Doc).maxEntries = 0)],
      ['standby', 'keys.identityFile', (d) => delete (d.keys as Doc).identityFile],
      ['standby', 'config.preserve', (d) => ((d.config as Doc).preserve = [''])],
    ];
    const file = join(root, 'bad-value.yml');
    for (const [agent, path, edit] of cases) {
      const doc = structuredClone({ ...sample(agent), ...(agent === 'primary' ? PRIMARY_EXTRA : STANDBY_EXTRA) }) as Doc;
      edit(doc);
      await writeFile(file, toYaml(doc));
      const load = agent === 'primary' ? loadPrimaryConfig : loadStandbyConfig;
      expect(() => load(file), `${agent} ${path}`).toThrow(new RegExp(path.replace(/\./g, '\\.')));
      tally.add('config: bad value of the right type (refused, key named)');
    }
  });

  it('the CLIs exit 2 with the key named, and change nothing', async () => {
    const p0 = await primarySnapshot();
    const pdoc = fromYaml(await readFile(s.primary.configFile, 'utf8')) as Doc;
    const sdoc = fromYaml(await readFile(s.standby.configFile, 'utf8')) as Doc;
    const cases: Array<['primary' | 'standby', string, Doc]> = [
      ['primary', 'database', { ...pdoc, database: 'postgres://127.0.0.1/x' }],
      ['primary', 'paths.files', { ...pdoc, paths: { ...(pdoc.paths as Doc), files: 42 } }],
      ['primary', 'retentionx', { ...pdoc, retentionx: { daily: 1 } }],
      ['primary', 'keys.signingKeyFile', { ...pdoc, keys: { recipientFile: (pdoc.keys as Doc).recipientFile } }],
      ['standby', 'database.restoreJobs', { ...sdoc, database: { ...(sdoc.database as Doc), restoreJobs: 'two' } }],
      ['standby', 'keys.verifyKeyFile', { ...sdoc, keys: { identityFile: (sdoc.keys as Doc).identityFile } }],
      ['standby', 'paths', { ...sdoc, paths: ['a', 'b'] }],
      ['standby', 'stateDirx', { ...sdoc, stateDirx: '/tmp' }],
    ];
    for (const [agent, path, doc] of cases) {
      const file = join(root, `cli-${agent}.yml`);
      await writeFile(file, toYaml(doc));
      const r = agent === 'primary' ? await runPrimary(['backup', '--config', file], { env: s.env }) : await apply(s, [], {}, file);
      expect(r.code, show(r)).toBe(2);
      expect(errorText(r), show(r)).toMatch(new RegExp(`^tandem-${agent}: error: .*${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`, 'm'));
      expect(r.stderr, show(r)).toContain(path);
      tally.add('config: bad config through the CLI (exit 2, key named)');
    }
    expect(await primarySnapshot()).toEqual(p0);
    await expectRefused(s, before, { code: 2, signal: null, stdout: '', stderr: 'tandem-standby: error: (checked above)', timedOut: false }, []);
  });
});

describe('bad input: keys swapped between primary and standby', () => {
  it('each key file given in the other role is refused, naming the file', async () => {
    const k = s.keys;
    const p0 = await primarySnapshot();
    const pdoc = fromYaml(await readFile(s.primary.configFile, 'utf8')) as Doc;
    const primaryCases: Array<[string, Doc, RegExp]> = [
      ['identity (private age key) as recipientFile', { ...pdoc, keys: { recipientFile: k.identityFile, signingKeyFile: k.signingKeyFile } }, new RegExp(k.identityFile)],
      ['signing.pub as recipientFile', { ...pdoc, keys: { recipientFile: k.verifyKeyFile, signingKeyFile: k.signingKeyFile } }, new RegExp(k.verifyKeyFile)],
      ['signing.pub as signingKeyFile', { ...pdoc, keys: { recipientFile: k.recipientFile, signingKeyFile: k.verifyKeyFile } }, new RegExp(k.verifyKeyFile)],
      ['the age identity as signingKeyFile', { ...pdoc, keys: { recipientFile: k.recipientFile, signingKeyFile: k.identityFile } }, new RegExp(k.identityFile)],
      ['the standby config given to the primary', fromYaml(await readFile(s.standby.configFile, 'utf8')) as Doc, /identityFile|verifyKeyFile|restartCommand|unknown|unrecognized/i],
    ];
    for (const [what, doc, names] of primaryCases) {
      const file = join(root, 'swapped-primary.yml');
      await writeFile(file, toYaml(doc));
      const r = await runPrimary(['backup', '--config', file], { env: s.env });
      expect(r.code, `${what}\n${show(r)}`).not.toBe(0);
      expect(r.code, `${what}\n${show(r)}`).not.toBeNull();
      expect(errorText(r), `${what}\n${show(r)}`).toMatch(names);
      expect(await primarySnapshot(), what).toEqual(p0);
      tally.add('primary given a standby key or config (refused, nothing committed)');
    }

    await forgeSet(s, first); // a genuine new set, so that only the keys stand in the way
    const standbyCases: Array<[string, { identityFile?: string; verifyKeyFile?: string }, RegExp]> = [
      ['the recipient (public age key) as identityFile', { identityFile: k.recipientFile }, new RegExp(k.recipientFile)],
      ['signing.key as identityFile', { identityFile: k.signingKeyFile }, new RegExp(k.signingKeyFile)],
      ['signing.key (private) as verifyKeyFile', { verifyKeyFile: k.signingKeyFile }, new RegExp(k.signingKeyFile)],
      ['the age identity as verifyKeyFile', { verifyKeyFile: k.identityFile }, new RegExp(k.identityFile)],
    ];
    for (const [what, keys, names] of standbyCases) {
      const cfg = await writeStandbyConfig(s, join(root, 'swapped-standby.yml'), keys);
      try {
        await expectRefused(s, before, await apply(s, [], {}, cfg), [names]);
      } catch (e) {
        throw new Error(`${what}: ${(e as Error).message}`);
      }
      tally.add('standby given a primary key (refused, nothing live changed)');
    }
    const primaryAsStandby = await apply(s, [], {}, s.primary.configFile);
    await expectRefused(s, before, primaryAsStandby, [/recipientFile|signingKeyFile|compression|unknown|unrecognized/i]);
    expect(primaryAsStandby.code).toBe(2);
    tally.add('standby given the primary config (refused, nothing live changed)');
  });
});

describe('bad input: the database and pg_restore failing', () => {
  it('pg_restore failing part way (dumps cut at 4 points) keeps the old database', async () => {
    const dump = await readPlain(s, first, 'db');
    for (const frac of [0.1, 0.35, 0.6, 0.95]) {
      const id = await forgeSet(s, first, { plain: { db: dump.subarray(0, Math.floor(dump.length * frac)) } });
      await expectRefused(s, before, await apply(s), [`pg_restore of set ${id} into the new database`, 'is untouched', /pg_restore: error:/]);
      tally.add('pg_restore failing part way (truncated dump)');
    }
    // A dump whose middle is overwritten with garbage (same length, valid header).
    const garbled = Buffer.from(dump);
    garbled.fill(0x7f, Math.floor(dump.length * 0.4), Math.floor(dump.length * 0.6));
    const id = await forgeSet(s, first, { plain: { db: garbled } });
    await expectRefused(s, before, await apply(s), [`pg_restore of set ${id} into the new database`, 'is untouched']);
    tally.add('pg_restore failing part way (garbled dump)');
  });

  it('the database backend terminated in the middle of pg_dump: clear error, nothing committed, the next backup works', async () => {
    // A table big enough that the dump takes a moment.
    await withDb(s.primary.db, (c) => c.query(`CREATE TABLE big AS SELECT g AS id, md5(g::text) || repeat('x', 200) AS pad FROM generate_series(1, 1500000) g`));
    try {
      const p0 = await primarySnapshot();
      for (let round = 0; round < 2; round++) {
        const run = runPrimary(['backup', '--config', s.primary.configFile], { env: s.env, timeoutMs: 120_000 });
        let killed = 0;
        const deadline = Date.now() + 60_000;
        while (killed === 0 && Date.now() < deadline) {
          const rows = await withDb('postgres', (c) =>
            c.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'pg_dump' AND query ILIKE '%COPY%big%'`, [s.primary.db]),
          );
          for (const row of rows.rows) {
            await withDb('postgres', (c) => c.query('SELECT pg_terminate_backend($1)', [row.pid]));
            killed++;
          }
          if (killed === 0) await sleep(10);
        }
        const r = await run;
        expect(killed, `pg_dump's backend was never seen dumping the big table\n${show(r)}`).toBeGreaterThan(0);
        expect(r.code, show(r)).toBe(1);
        expect(errorText(r), show(r)).toMatch(/pg_dump/);
        expect(errorText(r), show(r)).toMatch(/terminat|connection|server closed|exit/i);
        const now = await primarySnapshot();
        const extra = now.sets.filter((d) => !p0.sets.includes(d));
        const left = await Promise.all(extra.map(async (d) => `${d}: [${(await readdir(join(storeDir(), 'sets', d))).join(', ')}]`));
        // Nothing committed, latest.json untouched, and no artifact bytes left behind (the directory
        // store may keep the new set's empty directory: no manifest, so it does not exist for any
        // reader, and the next successful backup removes it).
        expect(now.latest).toBe(p0.latest);
        for (const d of extra) expect(await readdir(join(storeDir(), 'sets', d)), `left in the filestore: ${left.join('; ')}\n${show(r)}`).toEqual([]);
        tally.add('database backend terminated mid-dump (nothing committed)');
      }
      const ok = await runPrimary(['backup', '--config', s.primary.configFile], { env: s.env, timeoutMs: 120_000 });
      expect(ok.code, show(ok)).toBe(0);
      expect((await primarySnapshot()).sets).toEqual([...p0.sets, ok.stdout.trim()].sort()); // the leftovers are gone
    } finally {
      await withDb(s.primary.db, (c) => c.query('DROP TABLE IF EXISTS big'));
    }
  });
});

/** Runs a command with `dir` bind-mounted read-only in a private mount namespace. */
async function withReadOnly(dir: string, args: string[]): Promise<RunResult> {
  const ns = process.getuid?.() === 0 ? ['-m'] : ['-r', '-m'];
  const script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99; shift; exec "$@"';
  const o = await runCommand('unshare', [...ns, 'sh', '-c', script, 'sh', dir, ...args], { env: { ...process.env, TANDEM_LOG_FORMAT: 'json', ...s.env }, timeoutMs: 120_000 });
  if (o.code === 99) throw new Error(`a read-only bind mount needs \`unshare -m\` (root): ${o.stderr}`);
  return { code: o.code, signal: o.signal, stdout: o.stdout.toString('utf8'), stderr: o.stderr, timedOut: false };
}

describe('bad input: read-only directories', () => {
  it('the standby: live dirs\' parent, and the state dir, read-only', async () => {
    const id = await forgeSet(s, first);
    for (const dir of [join(root, 'standby'), s.standby.stateDir]) {
      const r = await withReadOnly(dir, [process.execPath, STANDBY_MAIN, 'apply', '--config', s.standby.configFile]);
      await expectRefused(s, before, r, [/read-only|EROFS/i, dir]);
      expect(errorText(r)).not.toMatch(/at .*\.js:\d+/); // a message, not a stack trace
      tally.add('standby: read-only directory (refused, nothing live changed)');
    }
    expect(id).not.toBe('');
  });

  it('the primary: filestore and state dir read-only', async () => {
    const p0 = await primarySnapshot();
    for (const dir of [join(root, 'store'), s.primary.stateDir]) {
      await mkdir(dir, { recursive: true });
      const r = await withReadOnly(dir, [process.execPath, PRIMARY_MAIN, 'backup', '--config', s.primary.configFile]);
      expect(r.code, show(r)).not.toBe(0);
      expect(errorText(r), show(r)).toMatch(/read-only|EROFS/i);
      expect(errorText(r), show(r)).toContain(dir);
      expect(await primarySnapshot()).toEqual(p0);
      tally.add('primary: read-only directory (refused, nothing committed)');
    }
  });
});
