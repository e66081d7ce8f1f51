/**
 * Many small Zotonic-style sites on one server: each a schema of one shared database (the
 * primary's), with its own small config, security and files trees, and one config file per agent
 * holding them all (`sites:`), as an operator with one tandem-primary and one tandem-standby for
 * the whole server writes them. The standby's shared database is another database of the same
 * cluster. Site `unreachableSite` (when asked) has a database of its own on the standby, so a test
 * can make that one site's database unreachable while the shared one stays up.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { dbUrl, makeKeys, runPrimary, withDb, type KeyFiles } from './site.js';
import { writeToken } from './standby-daemon.js';

export interface ManySites {
  root: string;
  names: string[];
  schemas: string[];
  pdb: string;
  sdb: string;
  /** The standby database of the site with a database of its own, if any. */
  ownDb: string | null;
  keys: KeyFiles;
  primaryConfig: string;
  standbyConfig: string;
  primaryState: (site: string) => string;
  standbyState: (site: string) => string;
  tokens: { control: string; read: string; standby: string };
  /** Rewrites the standby config with primary.url (the primary daemon's address, known once it runs), or without. */
  writeStandbyConfig(primaryUrl: string | null): Promise<void>;
  drop(): Promise<void>;
}

export async function createManySites(
  root: string,
  n: number,
  opts: { id: string; concurrency?: number; pollInterval?: string; unreachableSite?: number; rowsPerSite?: number; standbyId?: string },
): Promise<ManySites> {
  const { id } = opts;
  const pdb = `tandem_mp_${id}`;
  const sdb = `tandem_ms_${id}`;
  const ownDb = opts.unreachableSite === undefined ? null : `${sdb}_own`;
  const names = Array.from({ length: n }, (_, i) => `m${id}-${String(i + 1).padStart(2, '0')}`);
  const schemas = names.map((_, i) => `site_${String(i + 1).padStart(2, '0')}`);
  await withDb('postgres', async (c) => {
    for (const db of [pdb, sdb, ...(ownDb ? [ownDb] : [])]) await c.query(`CREATE DATABASE ${db}`);
  });
  await withDb(pdb, async (c) => {
    await c.query('CREATE EXTENSION IF NOT EXISTS citext SCHEMA public');
    for (const s of schemas) {
      await c.query(`CREATE SCHEMA ${s}`);
      await c.query(`CREATE TABLE ${s}.rsc (id serial PRIMARY KEY, name public.citext NOT NULL, body text)`);
      await c.query(`INSERT INTO ${s}.rsc (name, body) SELECT '${s} page ' || g, repeat('x', 200) FROM generate_series(1, ${opts.rowsPerSite ?? 100}) g`);
    }
  });
  for (const db of [sdb, ...(ownDb ? [ownDb] : [])]) await withDb(db, (c) => c.query('CREATE EXTENSION IF NOT EXISTS citext SCHEMA public'));

  const keys = await makeKeys(join(root, 'keys'));
  const tokens = { control: randomBytes(24).toString('hex'), read: randomBytes(24).toString('hex'), standby: randomBytes(24).toString('hex') };
  const tokenFile = (name: string) => join(root, 'keys', `${name}.token`);
  await writeToken(tokenFile('control'), tokens.control);
  await writeToken(tokenFile('read'), tokens.read);
  await writeToken(tokenFile('standby'), tokens.standby);
  const standbyId = opts.standbyId ?? `sb${id}`;

  const tree = async (base: string, site: string) => {
    const p = { config: join(base, 'priv'), security: join(base, 'security'), files: join(base, 'files') };
    for (const d of Object.values(p)) await mkdir(d, { recursive: true });
    await writeFile(join(p.config, 'site.yml'), `site: ${site}\nhostname: ${site}.example.com\n`);
    await writeFile(join(p.security, 'site.key'), randomBytes(64).toString('base64'), { mode: 0o600 });
    await writeFile(join(p.files, 'logo.svg'), `<svg><text>${site}</text></svg>\n`);
    return p;
  };
  const primaryState = (site: string) => join(root, 'p-state', site);
  const standbyState = (site: string) => join(root, 's-state', site);
  const primarySites: unknown[] = [];
  const standbySites: unknown[] = [];
  for (const [i, site] of names.entries()) {
    primarySites.push({ site, database: { schema: schemas[i] }, paths: await tree(join(root, 'p', site), site), stateDir: primaryState(site) });
    standbySites.push({
      site,
      database: { schema: schemas[i], ...(i + 1 === opts.unreachableSite ? { url: dbUrl(ownDb!) } : {}) },
      paths: await tree(join(root, 's', site), site),
      stateDir: standbyState(site),
    });
  }
  const filestore = { url: `file://${join(root, 'store')}` };
  const primaryConfig = join(root, 'primary.yml');
  await writeFile(
    primaryConfig,
    stringify({
      database: { url: dbUrl(pdb) },
      filestore,
      keys: { recipientFile: keys.recipientFile, signingKeyFile: keys.signingKeyFile },
      server: { listen: '127.0.0.1:0', tokenFile: tokenFile('control'), readTokenFile: tokenFile('read') },
      standbys: [{ id: standbyId, tokenFile: tokenFile('standby') }],
      concurrency: opts.concurrency ?? 2,
      heartbeatInterval: '5s',
      schedule: '0 3 * * *',
      sites: primarySites,
    }),
  );
  const r = await runPrimary(['init', '--filestore', '--config', primaryConfig]);
  if (r.code !== 0) throw new Error(`init --filestore: ${r.stderr}`);
  const standbyConfig = join(root, 'standby.yml');
  const write = async (primaryUrl: string | null): Promise<void> =>
    writeFile(
      standbyConfig,
      stringify({
        database: { url: dbUrl(sdb), restoreJobs: 1 },
        filestore,
        keys: { identityFile: keys.identityFile, verifyKeyFile: keys.verifyKeyFile },
        server: { listen: '127.0.0.1:0', readTokenFile: tokenFile('read') },
        ...(primaryUrl === null ? {} : { primary: { url: primaryUrl, tokenFile: tokenFile('standby') } }),
        standbyId,
        pollInterval: opts.pollInterval ?? '60s',
        concurrency: opts.concurrency ?? 2,
        restartCommand: 'true',
        sites: standbySites,
      }),
    );
  await write(null);
  return {
    root,
    names,
    schemas,
    pdb,
    sdb,
    ownDb,
    keys,
    primaryConfig,
    standbyConfig,
    primaryState,
    standbyState,
    tokens,
    async drop() {
      await withDb('postgres', async (c) => {
        for (const db of [pdb, sdb, ...(ownDb ? [ownDb] : [])]) await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
      }).catch(() => undefined);
    },
    writeStandbyConfig: write,
  };
}
