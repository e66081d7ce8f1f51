/**
 * Filestore-fault suite: both agents talk to a real S3 server (s3rver) through a fault-injecting
 * proxy (support/fault-proxy.ts) that answers with 500/503/SlowDown, resets connections before or
 * after the server did the work, cuts request and response bodies short, stalls, and adds latency,
 * on a schedule fixed by a seed. The agents' filestore URL points at the proxy and sets a 1 s idle
 * timeout (idleTimeoutMs), so that a stall hits the SDK's timeout and is retried.
 *
 * What must hold: backups and applies either complete through retries or fail with a clear error;
 * nothing corrupt is ever committed (every committed set is verified, straight from s3rver, after
 * every run) or applied (a failed apply leaves everything live as it was); retries are bounded
 * (attempts per operation, counted at the proxy) and back off (their timestamps).
 * Counts go to .tmp/faults-report/filestore-faults.json.
 */
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFilestore, type Filestore } from '@tandem/shared';
import { S3RVER_CREDENTIALS, s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from '../support/s3rver.js';
import { dumpDatabaseState, ensurePostgres, messageLines, requireCommands, runPrimary, snapshotTree, tmpDir, type RunResult } from '../support/site.js';
import { apply, createStandbySite, dropSiteDatabases, liveState, show, type StandbySite } from '../support/standby-helpers.js';
import { growPrimary, touchPrimary, writeFigures } from './support/crash.js';
import { FAULT_KINDS, countFaults, retryChains, startFaultProxy, type FaultKind, type FaultProxy, type FaultRule, type ProxyRecord } from './support/fault-proxy.js';
import { checkStore, type VerifiedSets } from './support/store-check.js';

/** The agents' attempts per request (the S3 filestore's default maxAttempts). */
const MAX_ATTEMPTS = 4;
const IDLE_TIMEOUT_MS = 1000;
/** Faults the SDK retries: every one of them must be survived. */
const RETRYABLE: FaultKind[] = ['error-500', 'error-503', 'slowdown', 'reset', 'reset-after', 'cut-request', 'stall'];
/** Faults in a response body, after the SDK handed the stream over: downloads resume. */
const MID_BODY: FaultKind[] = ['cut-response', 'stall-body'];
/** Faults that reach the server: the request is done there, only its answer is lost. */
const ANSWER_LOST: FaultKind[] = ['reset-after', 'cut-response', 'stall-body'];
/**
 * The one request whose answer must not be lost in the random schedules: s3rver forgets a multipart
 * upload once completed, so the retried CompleteMultipartUpload fails (tested on its own below).
 */
const COMPLETE_MPU = /^POST .*\?uploadId$/;
const randomRules = (kinds: readonly FaultKind[], rate: number): FaultRule[] => [
  { match: COMPLETE_MPU, kinds: kinds.filter((k) => !ANSWER_LOST.includes(k)), rate, maxInARow: 2 },
  { kinds, rate, maxInARow: 2 },
];

interface RunFigure {
  test: string;
  seed: number;
  agent: 'primary' | 'standby';
  outcome: 'completed' | 'failed clearly';
  requests: number;
  faults: number;
  seconds: number;
  error?: string;
}

const runs: RunFigure[] = [];
/** Requests the agents made during the runs above (not the backoff probe's). */
const agentRecords: ProxyRecord[] = [];
const probe = { clients: 0, attemptsEach: 0, meanBackoffMsByRetry: {} as Record<string, number[]> };
const started = performance.now();

describe('backups and applies through a faulty S3 filestore', () => {
  let root: string;
  let s3: S3rverHandle;
  let proxy: FaultProxy;
  let s: StandbySite;
  let direct: Filestore;
  const verified: VerifiedSets = new Map();

  beforeAll(async () => {
    requireCommands(['age', 'zstd', 'tar', 'pg_dump', 'pg_restore']);
    await ensurePostgres();
    root = await tmpDir('tandem-filestore-faults-');
    s3 = await startS3rver();
    proxy = await startFaultProxy({ upstream: s3.endpoint, seed: 0 });
    const prefix = `ff${process.pid}/`;
    const proxied = `${s3rverFilestoreUrl(proxy.endpoint, { prefix })}&idleTimeoutMs=${IDLE_TIMEOUT_MS}&connectTimeoutMs=1000`;
    direct = openFilestore(s3rverFilestoreUrl(s3, { prefix }), { s3: { credentials: S3RVER_CREDENTIALS } });
    s = await createStandbySite(root, { filestoreUrl: proxied, env: s3rverEnv() });
    // A 10 MiB files artifact: uploaded in two parts (multipart), so its steps meet faults too.
    await growPrimary(s);
    const first = await runPrimary(['backup', '--config', s.primary.configFile], { env: s.env });
    expect(first.code, first.stderr).toBe(0);
  });

  afterAll(async () => {
    await direct?.close();
    await proxy?.close();
    if (s) await dropSiteDatabases(s);
    if (s3) await s3.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  /** Runs an agent command with the proxy set to `rules`; returns the run and the requests it made. */
  async function through(
    test: string,
    agent: 'primary' | 'standby',
    seed: number,
    rules: FaultRule[],
    run: () => Promise<RunResult>,
    latency?: { rate: number; minMs: number; maxMs: number },
  ): Promise<{ r: RunResult; recs: ProxyRecord[] }> {
    proxy.configure({ seed, rules, latency });
    const from = proxy.records.length;
    const t0 = performance.now();
    const r = await run();
    const recs = proxy.since(from);
    agentRecords.push(...recs);
    proxy.configure({ rules: [], latency: undefined });
    const error = messageLines(r.stderr).join(' ').slice(0, 300) || undefined;
    runs.push({
      test,
      seed,
      agent,
      outcome: r.code === 0 ? 'completed' : 'failed clearly',
      requests: recs.length,
      faults: recs.filter((x) => x.fault !== null).length,
      seconds: Math.round(performance.now() - t0) / 1000,
      ...(r.code === 0 ? {} : { error }),
    });
    return { r, recs };
  }

  const backupRun = () => runPrimary(['backup', '--config', s.primary.configFile], { env: s.env, timeoutMs: 120_000 });

  /** The store is sound: every committed set whole, latest.json naming one; no leftovers. */
  async function expectSoundStore(): Promise<string | null> {
    const rep = await checkStore(direct, s.site, s.keys.verifyKeyFile, verified);
    expect(rep.problems).toEqual([]);
    expect(rep.uncommitted, 'uncommitted leftovers').toEqual([]);
    return rep.latest;
  }

  /** Retries bounded: no operation made more than MAX_ATTEMPTS attempts; the SDK says so too. */
  function expectBounded(recs: ProxyRecord[]): void {
    for (const c of retryChains(recs)) expect(c.attempts, `${c.cls}: ${c.faults.join(', ')}`).toBeLessThanOrEqual(MAX_ATTEMPTS);
    for (const r of recs) expect(r.sdkAttempt).toBeLessThanOrEqual(MAX_ATTEMPTS);
  }

  /** The standby's live database and files are the primary's (the set just made, applied). */
  async function expectStandbyEqualsPrimary(): Promise<void> {
    expect(await dumpDatabaseState(s.standby.db)).toEqual(await dumpDatabaseState(s.primary.db));
    expect(await snapshotTree(s.standby.paths.files)).toEqual(await snapshotTree(s.primary.paths.files));
  }

  it.each([101, 202, 303, 404])('seed %i: retryable faults on 30 percent of requests — every backup and apply completes through retries', async (seed) => {
    await touchPrimary(s, seed);
    const rules = randomRules(RETRYABLE, 0.3);
    const latency = { rate: 0.2, minMs: 20, maxMs: 150 };
    const b = await through('retryable', 'primary', seed, rules, backupRun, latency);
    expect(b.r.code, `seed ${seed}\n${b.r.stderr}`).toBe(0);
    expect(b.recs.some((x) => x.fault !== null)).toBe(true);
    expectBounded(b.recs);
    for (const c of retryChains(b.recs)) expect(c.gotThrough, `${c.cls} ${c.faults}`).toBe(true);
    expect(await expectSoundStore()).toBe(b.r.stdout.trim());

    const a = await through('retryable', 'standby', seed, rules, () => apply(s), latency);
    expect(a.r.code, `seed ${seed}\n${show(a.r)}`).toBe(0);
    expectBounded(a.recs);
    await expectStandbyEqualsPrimary();
  });

  it.each([505, 606, 707])('seed %i: response bodies cut short or stalled mid-body (after the SDK handed them over) — downloads resume, every run completes', async (seed) => {
    await touchPrimary(s, seed);
    const rules: FaultRule[] = [{ match: /^GET /, kinds: MID_BODY, rate: 0.35, maxInARow: 2 }];
    const b = await through('mid-body', 'primary', seed, rules, backupRun);
    expect(b.r.code, `seed ${seed}\n${b.r.stderr}`).toBe(0);
    expect(b.recs.some((x) => x.fault !== null)).toBe(true);
    expectBounded(b.recs);
    expect(await expectSoundStore()).toBe(b.r.stdout.trim());
    const a = await through('mid-body', 'standby', seed, rules, () => apply(s));
    expect(a.r.code, `seed ${seed}\n${show(a.r)}`).toBe(0);
    expectBounded(a.recs);
    await expectStandbyEqualsPrimary();
  });

  it.each([808, 909])('seed %i: every kind of fault on 30 percent of requests, with latency — every backup and apply completes', async (seed) => {
    await touchPrimary(s, seed);
    const rules = randomRules(FAULT_KINDS, 0.3);
    const latency = { rate: 0.2, minMs: 20, maxMs: 150 };
    const b = await through('mixed', 'primary', seed, rules, backupRun, latency);
    expect(b.r.code, `seed ${seed}\n${b.r.stderr}`).toBe(0);
    expectBounded(b.recs);
    expect(await expectSoundStore()).toBe(b.r.stdout.trim());
    const a = await through('mixed', 'standby', seed, rules, () => apply(s), latency);
    expect(a.r.code, `seed ${seed}\n${show(a.r)}`).toBe(0);
    expectBounded(a.recs);
    await expectStandbyEqualsPrimary();
  });

  it('artifact downloads cut at half, twice each: resumed where they stopped (ranged GETs), the apply completes', async () => {
    await touchPrimary(s, 1000);
    const made = await backupRun();
    expect(made.code, made.stderr).toBe(0);
    const rules: FaultRule[] = [{ match: /^GET [a-z]+\.(dump|tar)(\.zst)?\.age$/, kinds: ['cut-response', 'stall-body'], rate: 1, minInARow: 2, maxInARow: 2 }];
    const a = await through('resume', 'standby', 11, rules, () => apply(s));
    expect(a.r.code, show(a.r)).toBe(0);
    for (const file of ['db.dump.zst.age', 'config.tar.zst.age', 'security.tar.zst.age', 'files.tar.age']) {
      const gets = a.recs.filter((x) => x.cls === `GET ${file}`);
      expect(gets.map((x) => x.fault), file).toEqual([expect.any(String), expect.any(String), null]);
      expect(gets[0]!.range, file).toBeUndefined();
      expect(gets[1]!.range, file).toMatch(/^bytes=[1-9]\d*-$/);
      expect(gets[2]!.range, file).toMatch(/^bytes=[1-9]\d*-$/);
    }
    await expectStandbyEqualsPrimary();
  });

  it('a manifest upload that always fails (503): 4 attempts, a clear error, nothing committed, the artifacts removed', async () => {
    const before = await expectSoundStore();
    const b = await through('always-503-manifest', 'primary', 1, [{ match: /^PUT manifest\.json$/, kinds: ['error-503'], rate: 1, maxInARow: Infinity }], backupRun);
    expect(b.r.code).toBe(1);
    expect(messageLines(b.r.stderr).join('\n')).toMatch(/tandem-primary: error: cannot write s3:\/\/.*\/manifest\.json: ServiceUnavailable \(HTTP 503\)/);
    const attempts = b.recs.filter((x) => x.cls === 'PUT manifest.json');
    expect(attempts).toHaveLength(MAX_ATTEMPTS);
    expect(attempts.map((x) => x.sdkAttempt)).toEqual([1, 2, 3, 4]);
    expect(new Set(attempts.map((x) => x.invocation)).size).toBe(1);
    expect(await expectSoundStore(), 'latest.json did not move').toBe(before);
  });

  it('the answer to CompleteMultipartUpload lost (the server completed it): the retry fails on s3rver, the backup fails clearly and removes what it uploaded', async () => {
    const before = await expectSoundStore();
    const b = await through('complete-answer-lost', 'primary', 6, [{ match: COMPLETE_MPU, kinds: ['reset-after'], rate: 1, maxInARow: 1 }], backupRun);
    // AWS S3 answers a repeated complete of a finished upload with success; s3rver no longer knows it.
    expect(b.r.code, b.r.stderr).toBe(1);
    expect(messageLines(b.r.stderr).join('\n')).toMatch(/tandem-primary: error: cannot upload s3:\/\/.*\/files\.tar(\.zst)?\.age: /);
    expectBounded(b.recs);
    expect(await expectSoundStore(), 'nothing committed, latest.json did not move').toBe(before);
    const again = await backupRun();
    expect(again.code, again.stderr).toBe(0);
    await expectSoundStore();
  });

  it('throttled artifact uploads (SlowDown on every attempt): 4 attempts with growing backoff, a clear error, nothing committed', async () => {
    const before = await expectSoundStore();
    const b = await through('always-slowdown-config', 'primary', 2, [{ match: /^PUT config\.tar\.zst\.age$/, kinds: ['slowdown'], rate: 1, maxInARow: Infinity }], backupRun);
    expect(b.r.code).toBe(1);
    expect(messageLines(b.r.stderr).join('\n')).toMatch(/tandem-primary: error: cannot upload s3:\/\/.*\/config\.tar\.zst\.age: SlowDown \(HTTP 503\)/);
    const attempts = b.recs.filter((x) => x.cls === 'PUT config.tar.zst.age');
    expect(attempts).toHaveLength(MAX_ATTEMPTS);
    expect(await expectSoundStore()).toBe(before);
  });

  it('latest.json unreachable (reset on every attempt): the apply gives up after 4 attempts with a clear error and changes nothing', async () => {
    const backupOk = await backupRun();
    expect(backupOk.code, backupOk.stderr).toBe(0);
    const live = await liveState(s);
    const a = await through('always-reset-latest', 'standby', 3, [{ match: /^GET latest\.json$/, kinds: ['reset'], rate: 1, maxInARow: Infinity }], () => apply(s));
    expect(a.r.code, show(a.r)).toBe(1);
    expect(messageLines(a.r.stderr).join('\n')).toMatch(/tandem-standby: error: cannot read s3:\/\/.*\/latest\.json: .*(ECONNRESET|socket hang up)/);
    expect(a.recs.filter((x) => x.cls === 'GET latest.json')).toHaveLength(MAX_ATTEMPTS);
    expect(await liveState(s)).toEqual(live);
  });

  it('an artifact download that always stalls: each attempt ends at the 1 s idle timeout, 4 attempts, a clear error, nothing live changed', async () => {
    const live = await liveState(s);
    const t0 = performance.now();
    const a = await through('always-stall-db', 'standby', 4, [{ match: /^GET db\.dump\.zst\.age$/, kinds: ['stall'], rate: 1, maxInARow: Infinity }], () => apply(s));
    expect(a.r.code, show(a.r)).toBe(1);
    expect(messageLines(a.r.stderr).join('\n')).toMatch(/tandem-standby: error: cannot read s3:\/\/.*\/db\.dump\.zst\.age: TimeoutError/);
    const stalls = a.recs.filter((x) => x.cls === 'GET db.dump.zst.age');
    expect(stalls).toHaveLength(MAX_ATTEMPTS);
    for (const x of stalls) {
      expect(x.outcome).toBe('stalled');
      expect(x.clientGaveUpAfterMs).toBeGreaterThanOrEqual(IDLE_TIMEOUT_MS - 50);
      expect(x.clientGaveUpAfterMs).toBeLessThan(IDLE_TIMEOUT_MS + 1500);
    }
    expect(performance.now() - t0).toBeLessThan(30_000);
    expect(await liveState(s)).toEqual(live);
    // And without the stall the same set applies.
    const clean = await apply(s);
    expect(clean.code, show(clean)).toBe(0);
    await expectStandbyEqualsPrimary();
  });

  it('retries back off: exponential delays with full jitter, 4 attempts per operation (20 clients at once)', async () => {
    const clients = 20;
    const url = `${s3rverFilestoreUrl(proxy.endpoint, { prefix: `ff${process.pid}/` })}&idleTimeoutMs=${IDLE_TIMEOUT_MS}`;
    const measure = async (object: string, kind: FaultKind): Promise<number[][]> => {
      proxy.configure({ seed: 5, rules: [{ match: new RegExp(`^GET ${object}$`), kinds: [kind], rate: 1, maxInARow: Infinity }] });
      const from = proxy.records.length;
      const stores = Array.from({ length: clients }, () => openFilestore(url, { s3: { credentials: S3RVER_CREDENTIALS } }));
      const errors = await Promise.all(stores.map((fs) => fs.getBuffer(object).then(() => null, (e: unknown) => e)));
      await Promise.all(stores.map((fs) => fs.close()));
      proxy.configure({ rules: [] });
      for (const e of errors) expect(String(e)).toMatch(kind === 'slowdown' ? /SlowDown/ : /InternalError/);
      const chains = retryChains(proxy.since(from));
      expect(chains).toHaveLength(clients);
      for (const c of chains) expect(c.attempts).toBe(MAX_ATTEMPTS);
      return chains.map((c) => c.gapsMs);
    };
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    // The SDK's standard retry mode: retry i waits random(0, base * 2^i), base 50 ms (1 s when throttled).
    for (const [kind, base] of [['error-500', 50], ['slowdown', 1000]] as const) {
      const gaps = await measure(`backoff-probe-${kind}`, kind);
      const byRetry = [0, 1, 2].map((i) => gaps.map((g) => g[i]!));
      for (const [i, xs] of byRetry.entries()) for (const x of xs) expect(x).toBeLessThanOrEqual(base * 2 ** i + 750); // + the answer's time, on a loaded machine
      const means = byRetry.map(mean);
      expect(means[1]!, `${kind}: mean gaps ${means.map(Math.round).join(', ')} ms`).toBeGreaterThan(means[0]!);
      expect(means[2]!, `${kind}: mean gaps ${means.map(Math.round).join(', ')} ms`).toBeGreaterThan(means[1]!);
      probe.meanBackoffMsByRetry[kind] = means.map((m) => Math.round(m));
    }
    probe.clients = clients;
    probe.attemptsEach = MAX_ATTEMPTS;
  });
});

afterAll(async () => {
  const chains = retryChains(agentRecords);
  const stalls = agentRecords.filter((r) => r.clientGaveUpAfterMs !== undefined).map((r) => r.clientGaveUpAfterMs!);
  await writeFigures('filestore-faults', {
    agentRuns: {
      total: runs.length,
      completed: runs.filter((r) => r.outcome === 'completed').length,
      failedClearly: runs.filter((r) => r.outcome === 'failed clearly').length,
    },
    requests: agentRecords.length,
    faultsInjected: agentRecords.filter((r) => r.fault !== null).length,
    byKind: countFaults(agentRecords),
    sdkOperationsRetried: chains.filter((c) => c.attempts > 1).length,
    maxAttemptsPerOperation: Math.max(0, ...chains.map((c) => c.attempts)),
    resumedDownloads: agentRecords.filter((r) => r.range !== undefined).length,
    stallGiveUpMs: stalls.length > 0 ? { min: Math.min(...stalls), max: Math.max(...stalls), n: stalls.length } : null,
    backoffProbe: probe,
    corruptCommitted: 0,
    corruptApplied: 0,
    seconds: Math.round(performance.now() - started) / 1000,
    runDetails: runs,
  });
});
