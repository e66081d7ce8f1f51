import { appendFile, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { stringify } from 'yaml';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layout, loadSigningKeyFile, signHeartbeat } from '@tandem/shared';
import { readLatestPointer, silentPrimary, writeSignedHeartbeat } from './support/heartbeat.js';
import { parseAt } from '../packages/standby-agent/src/apply/find-at.js';
import {
  dbUrl,
  dumpDatabaseState,
  ensurePostgres,
  mutateDemoDatabase,
  runPrimary,
  sleep,
  tmpDir,
  withDb,
  writePrimaryConfig,
} from './support/site.js';
import {
  apply,
  backup,
  createStandbySite,
  removeStandbySite,
  forgeSet,
  restartLog,
  runStandby,
  show,
  writeStandbyConfig,
  type StandbySite,
} from './support/standby-helpers.js';

/** A standby config for the same site with its own name, state dir and, optionally, its own site dirs. */
async function standbyNamed(s: StandbySite, name: string, extra: Record<string, unknown> = {}): Promise<string> {
  const file = join(s.root, `standby-${name}.yml`);
  await writeStandbyConfig(s, file, { stateDir: join(s.root, `state-${name}`) });
  await appendFile(file, `standbyId: ${name}\n${Object.entries(extra).map(([k, v]) => `${k}: ${JSON.stringify(v)}\n`).join('')}`);
  return file;
}

async function epochDoc(s: StandbySite): Promise<{ epoch: number; primaryHost: string; primaryId?: string }> {
  const fs = s.openStore();
  try {
    return JSON.parse((await fs.getBuffer(layout.epoch(s.site))).body.toString('utf8')) as { epoch: number; primaryHost: string; primaryId?: string };
  } finally {
    await fs.close();
  }
}

async function latestSetId(s: StandbySite): Promise<string> {
  const fs = s.openStore();
  try {
    return (JSON.parse((await fs.getBuffer(layout.latest(s.site))).body.toString('utf8')) as { setId: string }).setId;
  } finally {
    await fs.close();
  }
}

const sites: Array<{ s: StandbySite; root: string }> = [];
beforeAll(ensurePostgres);
afterAll(async () => {
  for (const { s, root } of sites) await removeStandbySite(s, root);
});

async function newSite(): Promise<StandbySite> {
  const root = await tmpDir('tandem-failover-');
  const s = await createStandbySite(root);
  sites.push({ s, root });
  return s;
}

describe('fencing', () => {
  it('of two promotes racing, exactly one wins; the old primary is then fenced and commits nothing', async () => {
    const s = await newSite();
    const first = await backup(s);
    const a = await standbyNamed(s, 'sb-a');
    const b = await standbyNamed(s, 'sb-b');
    expect((await apply(s, [], {}, a)).code).toBe(0);
    const [ra, rb] = await Promise.all([
      runStandby(['promote', '--config', a, '--force']),
      runStandby(['promote', '--config', b, '--force']),
    ]);
    const results = [ra, rb];
    const won = results.filter((r) => r.code === 0);
    const lost = results.filter((r) => r.code !== 0);
    expect(won, results.map(show).join('\n---\n')).toHaveLength(1);
    expect(lost).toHaveLength(1);
    const winner = ra.code === 0 ? 'sb-a' : 'sb-b';
    expect(lost[0]!.stderr).toContain(`another server changed epoch.json of site "${s.site}" first: ${winner} is primary in epoch 2`);
    await expect(readFile(join(s.root, `state-${winner === 'sb-a' ? 'sb-b' : 'sb-a'}`, 'promoted.json'))).rejects.toThrow(/ENOENT/);
    expect(await epochDoc(s)).toMatchObject({ epoch: 2, primaryHost: winner });

    // The old primary comes back and tries its nightly backup.
    const before = await latestSetId(s);
    const r = await runPrimary(['backup', '--config', s.primary.configFile]);
    expect(r.code, show(r)).toBe(4);
    expect(r.stderr).toMatch(new RegExp(`has been fenced: ${winner} became primary of site "${s.site}" in epoch 2 at \\S+ \\(promote --force\\); no more uploads`));
    expect(await latestSetId(s)).toBe(before);
    const list = JSON.parse((await runPrimary(['list', '--config', s.primary.configFile, '--json'])).stdout) as Array<{ setId: string }>;
    expect(list.map((x) => x.setId)).toEqual([first]);

    // With onFenced configured, the refused one-shot backup runs it (to stop the old site's writes).
    const mark = join(s.root, 'on-fenced.txt');
    const withHook = join(s.root, 'primary-onfenced.yml');
    await writeFile(withHook, `${await readFile(s.primary.configFile, 'utf8')}\nonFenced: 'echo "$TANDEM_REASON $TANDEM_SITE" > ${mark}'\n`);
    const hooked = await runPrimary(['backup', '--config', withHook]);
    expect(hooked.code, show(hooked)).toBe(4);
    expect(await readFile(mark, 'utf8')).toBe(`fenced ${s.site}\n`);
    expect(hooked.stderr).toContain('onFenced ran');
  });

  it('never applies a set forged with the old epoch after the promote', async () => {
    const s = await newSite();
    const first = await backup(s);
    const promoter = await standbyNamed(s, 'sb-new-primary');
    const follower = await standbyNamed(s, 'sb-follower');
    expect((await apply(s, [], {}, promoter)).code).toBe(0);
    expect((await apply(s, [], {}, follower)).code).toBe(0);
    await silentPrimary(s);
    expect((await runStandby(['promote', '--config', promoter])).code).toBe(0);
    // Signed with the real key, epoch 1, uploaded after the promote and named by latest.json.
    const forged = await forgeSet(s, first);
    const r = await apply(s, [], {}, follower);
    expect(r.code, show(r)).toBe(4);
    expect(r.stderr).toContain(`set ${forged} was made in epoch 1, but the filestore is at epoch 2`);
    const applied = JSON.parse(await readFile(join(s.root, 'state-sb-follower', 'applied.json'), 'utf8')) as { setId: string };
    expect(applied.setId).toBe(first);
  });
});

describe('fencing by agent id, whatever the host names', () => {
  it('both agents with one host name (one machine, or a cloned image): the promote fences the old primary', async () => {
    const s = await newSite();
    const first = await backup(s);
    // Neither config names its server: both go by this machine's host name.
    expect(await readFile(s.primary.configFile, 'utf8')).not.toMatch(/hostname:/);
    expect(await readFile(s.standby.configFile, 'utf8')).not.toMatch(/standbyId:/);
    expect((await apply(s)).code).toBe(0);
    await silentPrimary(s);
    const before = await latestSetId(s);
    const p = await runStandby(['promote', '--config', s.standby.configFile]);
    expect(p.code, show(p)).toBe(0);

    // The old primary comes back: the same name as the new one, and fenced all the same (it used
    // to find itself named in the raised epoch and commit a set: two primaries).
    const r = await runPrimary(['backup', '--config', s.primary.configFile]);
    expect(r.code, show(r)).toBe(4);
    const standbyId = (await readFile(join(s.standby.stateDir, 'agent-id'), 'utf8')).trim();
    const primaryId = (await readFile(join(s.primary.stateDir, 'agent-id'), 'utf8')).trim();
    expect(standbyId).not.toBe(primaryId);
    expect(await epochDoc(s)).toMatchObject({ epoch: 2, primaryHost: hostname(), primaryId: standbyId, previous: { epoch: 1, primaryHost: hostname(), primaryId } });
    expect(r.stderr).toContain(`this primary (${hostname()} (agent ${primaryId}), epoch 1) has been fenced: ${hostname()} (agent ${standbyId}) became primary of site "${s.site}" in epoch 2`);
    expect(r.stderr).toContain(`run tandem-primary with the standby's stateDir (or a copy of its agent-id file, which holds ${standbyId})`);
    expect(await latestSetId(s)).toBe(before);
    const list = JSON.parse((await runPrimary(['list', '--config', s.primary.configFile, '--json'])).stdout) as Array<{ setId: string }>;
    expect(list.map((x) => x.setId)).toEqual([first]);

    // The promoted server backs up with the standby's state dir: the agent epoch.json names.
    const here = await writePrimaryConfig(join(s.root, 'promoted-primary.yml'), {
      site: s.site,
      databaseUrl: dbUrl(s.standby.db),
      paths: s.standby.paths,
      filestoreUrl: s.filestoreUrl,
      keys: s.keys,
      stateDir: s.standby.stateDir,
    });
    const b = await runPrimary(['backup', '--config', here]);
    expect(b.code, show(b)).toBe(0);
    expect(b.stdout.trim()).toMatch(/-e2-/);
  });

  it('refuses a promote that would name the primary it fences (a state dir copied from the primary), even with --force', async () => {
    const s = await newSite();
    await backup(s);
    expect((await apply(s)).code).toBe(0);
    // A standby made from an image of the primary, state directory and all.
    await mkdir(s.standby.stateDir, { recursive: true });
    await copyFile(join(s.primary.stateDir, 'agent-id'), join(s.standby.stateDir, 'agent-id'));
    const id = (await readFile(join(s.primary.stateDir, 'agent-id'), 'utf8')).trim();
    await silentPrimary(s);
    const p = await runStandby(['promote', '--config', s.standby.configFile, '--force']);
    expect(p.code, show(p)).toBe(1);
    expect(p.stderr).toContain(`already names agent ${id} (${hostname()}, epoch 1) as the primary, and that is this server's own agent id: raising the epoch would name the very primary it is meant to fence; nothing changed`);
    expect(p.stderr).toMatch(/hint: .*remove agent-id from the state directory here/);
    expect(await epochDoc(s)).toMatchObject({ epoch: 1, primaryId: id });
    await expect(readFile(s.standby.paths.sentinel)).resolves.toBeTruthy(); // still a standby
    await expect(readFile(join(s.standby.stateDir, 'promoted.json'))).rejects.toThrow(/ENOENT/);
    // With its own id (the copy removed) the same promote goes through and fences the primary.
    await writeFile(join(s.standby.stateDir, 'agent-id'), 'standby-own-id\n');
    const again = await runStandby(['promote', '--config', s.standby.configFile]);
    expect(again.code, show(again)).toBe(0);
    expect((await runPrimary(['backup', '--config', s.primary.configFile])).code).toBe(4);
  });
});

describe('promote preflight', () => {
  it('refuses while the primary heartbeat is fresh, reports every check, and --force says what it overrode', async () => {
    const s = await newSite();
    await backup(s);
    const cfg = await standbyNamed(s, 'sb-hb', { heartbeatStaleAfter: '5m' });
    expect((await apply(s, [], {}, cfg)).code).toBe(0);
    const fs = s.openStore();
    try {
      const hb = { format: 'tandem-heartbeat' as const, version: 1 as const, site: s.site, epoch: 1, primaryHost: 'web1', at: new Date().toISOString(), lastBackup: null, nextBackupAt: null };
      await fs.putBuffer(layout.heartbeat(s.site), signHeartbeat(hb, loadSigningKeyFile(s.keys.signingKeyFile)));
    } finally {
      await fs.close();
    }
    const refused = await runStandby(['promote', '--config', cfg]);
    expect(refused.code, show(refused)).toBe(1);
    expect(refused.stderr).toContain('ok    the last apply is complete');
    expect(refused.stderr).toMatch(/ok {4}the newest committed set \S+ is applied/);
    expect(refused.stderr).toMatch(/FAIL {2}the primary's heartbeat is fresh: \d+m?s old \(from web1, epoch 1\), stale only after 5m; the primary may be alive/);
    expect(await epochDoc(s)).toMatchObject({ epoch: 1 });
    await expect(readFile(join(s.standby.paths.config, 'BACKUP'))).resolves.toBeTruthy();

    const forced = await runStandby(['promote', '--config', cfg, '--force']);
    expect(forced.code, show(forced)).toBe(0);
    expect(forced.stdout).toContain('overridden by --force: primary-silent');
    expect(await epochDoc(s)).toMatchObject({ epoch: 2, primaryHost: 'sb-hb' });
  });
});

describe('promote preflight: a missing or replayed heartbeat is unknown, not silent', () => {
  it('refuses without a heartbeat, and with a stale one that names an older set than latest.json; --force overrides', async () => {
    const s = await newSite();
    const first = await backup(s);
    const cfg = await standbyNamed(s, 'sb-replay');
    expect((await apply(s, [], {}, cfg)).code).toBe(0);
    const old = await readLatestPointer(s);
    const oldHeartbeat = await writeSignedHeartbeat(s, { ageMs: 10 * 60_000 });

    // No heartbeat at all: a primary run from cron, or heartbeat.json removed. Not "silent".
    const fs = s.openStore();
    try {
      await fs.delete(layout.heartbeat(s.site));
    } finally {
      await fs.close();
    }
    const missing = await runStandby(['promote', '--config', cfg]);
    expect(missing.code, show(missing)).toBe(1);
    expect(missing.stderr).toMatch(/FAIL {2}unknown whether the primary is alive: there is no \S+\/heartbeat\.json in the filestore/);
    expect(await epochDoc(s)).toMatchObject({ epoch: 1 });

    // The primary goes on: a newer set, applied here too.
    const second = await backup(s);
    expect(second).not.toBe(first);
    expect((await apply(s, [], {}, cfg)).code).toBe(0);
    // Someone puts the old (validly signed, now stale) heartbeat back to make the primary look dead.
    const replayed = await writeSignedHeartbeat(s, { ageMs: Date.now() - Date.parse(oldHeartbeat.at), latest: old });
    expect(replayed.latest?.setId).toBe(first);
    const refused = await runStandby(['promote', '--config', cfg]);
    expect(refused.code, show(refused)).toBe(1);
    expect(refused.stderr).toMatch(/ok {4}the newest committed set \S+ is applied/);
    expect(refused.stderr).toContain(`FAIL  unknown whether the primary is alive: its heartbeat is stale`);
    expect(refused.stderr).toContain(`names set ${first} as the newest, while set ${second} was committed since: an old heartbeat.json was put back (replayed)`);
    expect(await epochDoc(s)).toMatchObject({ epoch: 1 });

    // A stale heartbeat that names the newest set is the primary's last word: silent.
    await silentPrimary(s);
    const ok = await runStandby(['promote', '--config', cfg, '--json']);
    expect(ok.code, show(ok)).toBe(0);
    const checks = (JSON.parse(ok.stdout) as { checks: Array<{ name: string; ok: boolean; detail: string }> }).checks;
    expect(checks.find((c) => c.name === 'primary-silent')).toMatchObject({ ok: true, detail: expect.stringMatching(/stale: .* and names the newest set/) });
  });

  it('--force promotes without a heartbeat and says what it overrode', async () => {
    const s = await newSite();
    await backup(s);
    const cfg = await standbyNamed(s, 'sb-noheart');
    expect((await apply(s, [], {}, cfg)).code).toBe(0);
    const forced = await runStandby(['promote', '--config', cfg, '--force']);
    expect(forced.code, show(forced)).toBe(0);
    expect(forced.stdout).toMatch(/FAIL {2}unknown whether the primary is alive/);
    expect(forced.stdout).toContain('overridden by --force: primary-silent');
    expect(await epochDoc(s)).toMatchObject({ epoch: 2, primaryHost: 'sb-noheart' });
  });
});

describe('failover and failback', () => {
  it('round trips: no set lost, none applied twice, writes on each primary reach the other', async () => {
    const s = await newSite();
    const set1 = await backup(s); // site A is primary (epoch 1)
    const bStandby = await standbyNamed(s, 'site-b');
    expect((await apply(s, [], {}, bStandby)).code).toBe(0);

    // A dies; B is promoted and starts backing up as the new primary, same keys and state dir
    // (its agent id is what epoch.json now names).
    await silentPrimary(s);
    const promoteB = await runStandby(['promote', '--config', bStandby]);
    expect(promoteB.code, show(promoteB)).toBe(0);
    expect(promoteB.stdout).toContain('epoch 2, as site-b');
    expect(promoteB.stdout).toContain(`run tandem-primary here with stateDir ${join(s.root, 'state-site-b')}`);
    const bPrimary = await writePrimaryConfig(join(s.root, 'b-primary.yml'), {
      site: s.site,
      databaseUrl: dbUrl(s.standby.db),
      paths: s.standby.paths,
      filestoreUrl: s.filestoreUrl,
      keys: s.keys,
      stateDir: join(s.root, 'state-site-b'),
      extra: { hostname: 'site-b' },
    });
    await withDb(s.standby.db, (c) => c.query("INSERT INTO public.rsc (name, title, created) VALUES ('written-on-b', 'after failover', now())"));
    const r2 = await runPrimary(['backup', '--config', bPrimary]);
    expect(r2.code, show(r2)).toBe(0);
    const set2 = r2.stdout.trim();
    expect(set2).toMatch(/-e2-/);

    // A comes back as a standby of B and catches up.
    const aStandby = join(s.root, 'a-standby.yml');
    await writeFile(
      aStandby,
      stringify({
        site: s.site,
        standbyId: 'site-a',
        database: { url: dbUrl(s.primary.db) },
        paths: { config: s.primary.paths.config, security: s.primary.paths.security, files: s.primary.paths.files },
        filestore: { url: s.filestoreUrl },
        keys: { identityFile: s.keys.identityFile, verifyKeyFile: s.keys.verifyKeyFile },
        stateDir: s.primary.stateDir, // A's one state dir, as both agents of a server share by default
        restartCommand: `echo "$TANDEM_MODE $TANDEM_SET_ID" >> '${join(s.root, 'a-restart.log')}'`,
      }),
    );
    const aApply = await runStandby(['apply', '--config', aStandby]);
    expect(aApply.code, show(aApply)).toBe(0);
    expect(await dumpDatabaseState(s.primary.db)).toEqual(await dumpDatabaseState(s.standby.db));
    const onA = await withDb(s.primary.db, (c) => c.query("SELECT title FROM public.rsc WHERE name = 'written-on-b'"));
    expect(onA.rows).toEqual([{ title: 'after failover' }]);
    // The old primary config on A is refused: A's site is a standby now (the BACKUP sentinel).
    const onStandbyA = await runPrimary(['backup', '--config', s.primary.configFile]);
    expect(onStandbyA.code, show(onStandbyA)).toBe(1);
    expect(onStandbyA.stderr).toContain(`the sentinel ${join(s.primary.paths.config, 'BACKUP')} exists`);
    // Applying again is a no-op: never twice.
    const again = await runStandby(['apply', '--config', aStandby, '--json']);
    expect(JSON.parse(again.stdout)).toMatchObject({ status: 'already-applied', setId: set2 });

    // Failback: B stops; A is promoted (epoch 3) and backs up as primary again.
    await silentPrimary(s);
    const promoteA = await runStandby(['promote', '--config', aStandby]);
    expect(promoteA.code, show(promoteA)).toBe(0);
    expect(await epochDoc(s)).toMatchObject({ epoch: 3, primaryHost: 'site-a' });
    const aPrimary = join(s.root, 'a-primary.yml');
    await writeFile(aPrimary, `${await readFile(s.primary.configFile, 'utf8')}hostname: site-a\n`);
    await mutateDemoDatabase(s.primary.db);
    const r3 = await runPrimary(['backup', '--config', aPrimary]);
    expect(r3.code, show(r3)).toBe(0);
    const set3 = r3.stdout.trim();
    expect(set3).toMatch(/-e3-/);
    // B, as primary of epoch 2, is fenced now.
    const fencedB = await runPrimary(['backup', '--config', bPrimary]);
    expect(fencedB.code).toBe(4);
    expect(fencedB.stderr).toContain('site-a became primary');

    const list = JSON.parse((await runPrimary(['list', '--config', aPrimary, '--json'])).stdout) as Array<{ setId: string; committed: boolean }>;
    expect(list.filter((x) => x.committed).map((x) => x.setId)).toEqual([set1, set2, set3]);
    expect(await readFile(join(s.root, 'a-restart.log'), 'utf8')).toBe(`backup ${set2}\nprimary ${set2}\n`);
    expect(await restartLog(s)).toEqual([`backup ${set1}`, `primary ${set1}`]); // B's
  });
});

describe('apply --at', () => {
  it('parses operator times strictly', () => {
    expect(parseAt('2026-11-20T13:00Z').toISOString()).toBe('2026-11-20T13:00:00.000Z');
    expect(parseAt('2026-11-20 14:00').getTime()).toBe(new Date(2026, 10, 20, 14, 0, 0).getTime());
    expect(parseAt('2026-11-20').getTime()).toBe(new Date(2026, 10, 20, 23, 59, 59).getTime());
    expect(() => parseAt('yesterday')).toThrow(/--at "yesterday": expected a time such as/);
    expect(() => parseAt('2026-13-45 99:00')).toThrow(/expected a time/);
  });

  it('applies the newest set at or before the time, older ones only with --allow-older', async () => {
    const s = await newSite();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      if (i > 0) await sleep(1100); // set ids carry whole seconds
      await withDb(s.primary.db, (c) => c.query("INSERT INTO public.rsc (name, title, created) VALUES ($1, 'point in time', now())", [`pit-${i}`]));
      ids.push(await backup(s));
    }
    const time = (id: string) => `${id.slice(0, 4)}-${id.slice(4, 6)}-${id.slice(6, 8)}T${id.slice(9, 11)}:${id.slice(11, 13)}:${id.slice(13, 15)}Z`;
    const at = (id: string) => new Date(Date.parse(time(id)) + 500).toISOString();
    const r1 = await apply(s, ['--at', at(ids[1]!), '--json']);
    expect(r1.code, show(r1)).toBe(0);
    expect(JSON.parse(r1.stdout)).toMatchObject({ setId: ids[1] });
    const rows = await withDb(s.standby.db, (c) => c.query("SELECT name FROM public.rsc WHERE name LIKE 'pit-%' ORDER BY name"));
    expect(rows.rows.map((r) => r.name)).toEqual(['pit-0', 'pit-1']);
    expect((await apply(s, ['--json'])).code).toBe(0); // newest
    const older = await apply(s, ['--at', at(ids[0]!)]);
    expect(older.code).not.toBe(0);
    expect(older.stderr).toMatch(/older/);
    const rolled = await apply(s, ['--at', at(ids[0]!), '--allow-older', '--json']);
    expect(rolled.code, show(rolled)).toBe(0);
    expect(JSON.parse(rolled.stdout)).toMatchObject({ setId: ids[0] });
    const none = await apply(s, ['--at', '2001-01-01T00:00Z']);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain(`no committed set of site "${s.site}" was made at or before 2001-01-01T00:00:00.000Z; the oldest is ${ids[0]}`);
  });
});

