/**
 * One daemon pair for a server of twenty sites (Zotonic's layout: a schema each in one shared
 * database). One `tandem-primary run` and one `tandem-standby run`, each with one config holding
 * all twenty: every site is backed up and applied, over one push connection; then one site's
 * database on the standby becomes unreachable, and the other nineteen keep applying new sets while
 * that one reports its failure. Both daemons' memory is printed (bench/sites.mjs measures it).
 */
import { readFile, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createManySites, type ManySites } from './support/many-sites.js';
import { PRIMARY_MAIN, STANDBY_MAIN, ensurePostgres, requireCommands, startAgent, tmpDir, waitFor, withDb, type RunningPrimary } from './support/site.js';
import { uid } from './support/standby-helpers.js';

const N = 20;
const UNREACHABLE = 20;

function http(method: string, url: string, token: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers: { authorization: `Bearer ${token}` } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function readJson<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

function rssOf(pid: number): { rssMiB: number; peakMiB: number } {
  const text = spawnSync('cat', [`/proc/${pid}/status`]).stdout.toString();
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rssMiB: Math.round(kb('VmRSS') / 1024), peakMiB: Math.round(kb('VmHWM') / 1024) };
}

describe(`one daemon pair serving ${N} sites`, () => {
  let root: string;
  let m: ManySites;
  let primary: RunningPrimary | null = null;
  let standby: RunningPrimary | null = null;
  let primaryListen = '';
  let standbyListen = '';

  beforeAll(async () => {
    requireCommands(['pg_dump', 'pg_restore', 'psql']);
    await ensurePostgres();
    root = await tmpDir('tandem-sites-daemons-');
    m = await createManySites(root, N, { id: uid(), concurrency: 3, pollInterval: '5s', unreachableSite: UNREACHABLE });
  }, 120_000);

  afterAll(async () => {
    for (const p of [standby, primary]) {
      if (p !== null && p.child.exitCode === null) {
        p.child.kill('SIGTERM');
        await p.result;
      }
    }
    await m?.drop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  const applied = async (site: string) => (await readJson<{ setId: string }>(join(m.standbyState(site), 'applied.json')))?.setId ?? null;
  const latest = async (site: string) => (await readJson<{ setId: string }>(join(root, 'store', site, 'latest.json')))?.setId ?? null;
  const backUp = async (names: string[]) => {
    const results = await Promise.all(names.map((s) => http('POST', `http://${primaryListen}/v1/backup?site=${s}`, m.tokens.control)));
    for (const [i, r] of results.entries()) expect(r.status, `${names[i]}: ${r.body}`).toBe(200);
  };

  it('backs up and applies every site, over one push connection', async () => {
    primary = startAgent(PRIMARY_MAIN, ['run', '--config', m.primaryConfig], { timeoutMs: 600_000 });
    primaryListen = (await waitFor(() => readJson<{ listen: string }>(join(m.primaryState(m.names[0]!), 'daemon.json')), 'the primary daemon', 60_000)).listen;
    // Every site's daemon.json names the one server.
    for (const s of m.names) expect((await readJson<{ listen: string }>(join(m.primaryState(s), 'daemon.json')))?.listen).toBe(primaryListen);
    await m.writeStandbyConfig(`ws://${primaryListen}`);
    standby = startAgent(STANDBY_MAIN, ['run', '--config', m.standbyConfig], { timeoutMs: 600_000 });
    standbyListen = (await waitFor(() => readJson<{ listen: string }>(join(m.standbyState(m.names[0]!), 'daemon.json')), 'the standby daemon', 60_000)).listen;

    // A site without a set is backed up at once when the daemon starts (a missed run), all
    // twenty through the primary's concurrency limit; the standby applies each as it is pushed.
    await waitFor(async () => {
      for (const s of m.names) if ((await applied(s)) === null || (await applied(s)) !== (await latest(s))) return null;
      return true;
    }, `all ${N} sites backed up and applied`, 300_000, 500);

    // Each standby schema holds its site's rows, and only its own.
    for (const schema of m.schemas) {
      const db = schema === m.schemas[UNREACHABLE - 1] ? m.ownDb! : m.sdb;
      const n = await withDb(db, async (c) => (await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${schema}.rsc WHERE name LIKE '${schema} page %'`)).rows[0]!.n);
      expect(n, schema).toBe(100);
    }

    // One WebSocket from the standby process to the primary, whatever the number of sites.
    const port = primaryListen.split(':').pop();
    const ss = spawnSync('ss', ['-Htnp', 'state', 'established', `( dport = :${port} )`]);
    if (ss.status === 0) {
      const mine = ss.stdout.toString().split('\n').filter((l) => l.includes(`pid=${standby!.child.pid},`));
      expect(mine.length, ss.stdout.toString()).toBe(1);
    }
    const pStatus = JSON.parse((await http('GET', `http://${primaryListen}/status`, m.tokens.read)).body) as { sites: Record<string, { standbys: unknown[] }> };
    expect(Object.keys(pStatus.sites).sort()).toEqual([...m.names].sort());
    for (const s of m.names) expect(pStatus.sites[s]!.standbys, s).toHaveLength(1);

    const p = rssOf(primary.child.pid!);
    const sb = rssOf(standby.child.pid!);
    console.log(`${N} sites: tandem-primary RSS ${p.rssMiB} MiB (peak ${p.peakMiB} MiB), tandem-standby RSS ${sb.rssMiB} MiB (peak ${sb.peakMiB} MiB)`);
  }, 400_000);

  it("one site's database unreachable: the other sites keep applying, that one says why", async () => {
    const own = m.ownDb!;
    await withDb('postgres', async (c) => {
      await c.query(`ALTER DATABASE ${own} WITH ALLOW_CONNECTIONS false`);
      await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [own]);
    });
    const before = await applied(m.names[UNREACHABLE - 1]!);
    // New sets of that site and of five others (all twenty again would only take longer).
    const round = [0, 1, 2, 3, 4, UNREACHABLE - 1];
    await withDb(m.pdb, async (c) => {
      for (const i of round) await c.query(`INSERT INTO ${m.schemas[i]}.rsc (name, body) VALUES ('${m.schemas[i]} second', 'after')`);
    });
    await backUp(round.map((i) => m.names[i]!));
    const others = round.filter((i) => i + 1 !== UNREACHABLE).map((i) => m.names[i]!);
    await waitFor(async () => {
      for (const s of others) if ((await applied(s)) !== (await latest(s))) return null;
      return true;
    }, 'the other sites applied', 240_000, 500);
    for (const schema of round.filter((i) => i + 1 !== UNREACHABLE).map((i) => m.schemas[i]!)) {
      const n = await withDb(m.sdb, async (c) => (await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${schema}.rsc`)).rows[0]!.n);
      expect(n, schema).toBe(101);
    }
    const bad = m.names[UNREACHABLE - 1]!;
    expect(await applied(bad)).toBe(before);
    const st = await waitFor(async () => {
      const r = await http('GET', `http://${standbyListen}/status?site=${bad}`, m.tokens.read);
      const text = r.body;
      return r.status === 200 && /does not accept connections|DB_CONNECT|not currently accepting/i.test(text) ? text : null;
    }, `the status of ${bad} naming its database failure`, 120_000, 500);
    expect(st).toContain(bad);
    expect(standby!.child.exitCode).toBeNull();
    expect(primary!.child.exitCode).toBeNull();
    const metrics = (await http('GET', `http://${standbyListen}/metrics`, m.tokens.read)).body;
    for (const s of m.names) expect(metrics).toContain(`site="${s}"`);
    await withDb('postgres', (c) => c.query(`ALTER DATABASE ${own} WITH ALLOW_CONNECTIONS true`));
  }, 400_000);
});
