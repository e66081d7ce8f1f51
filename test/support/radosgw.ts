import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { closedPort, mustRun, REPO_ROOT, runCommand, sleep } from './site.js';

/**
 * A throwaway single-node Ceph with its S3 gateway, for the tests that need a server which really
 * honours conditional PUTs (s3rver ignores them). Everything lives in a temp dir: one monitor, one
 * OSD on memstore (objects in memory, no block device), radosgw on 127.0.0.1, no cephx, no
 * systemd; the daemons run in the foreground as children of the test. About 16 s to start.
 */
export interface RadosgwHandle {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** The same credentials as environment variables, for CLI children that use the default chain. */
  env: Record<string, string>;
  /** The Ceph version the daemons report, e.g. "ceph version 16.2.15 (...) pacific (stable)". */
  version: string;
  /** Kills the daemons and removes the temp dir. */
  destroy(): Promise<void>;
}

const CREDENTIALS = { accessKeyId: 'TANDEMTEST', secretAccessKey: 'tandem-test-secret' } as const;

/**
 * Installs Ceph when missing (scripts/setup-ceph.sh, which fails loudly rather than letting the
 * test skip), then starts the cluster and creates an S3 user and the given buckets.
 */
export async function startRadosgw(opts: { buckets?: string[] } = {}): Promise<RadosgwHandle> {
  const setup = await runCommand('bash', [join(REPO_ROOT, 'scripts', 'setup-ceph.sh')], { timeoutMs: 600_000 });
  if (setup.code !== 0) throw new Error(`scripts/setup-ceph.sh exited ${setup.code ?? setup.signal}: ${setup.stderr.trim()}`);
  // The ports are picked free and then released, so another cluster started at the same moment
  // can take one first (seen once: the OSD was told "wrong fsid" by the monitor on our port).
  // A fresh start with new ports and a new fsid gets past that; three failures in a row are real.
  const failures: string[] = [];
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      return await startOnce(opts.buckets ?? ['tandem']);
    } catch (err) {
      failures.push(`attempt ${attempt}: ${(err as Error).message}`);
    }
  }
  throw new Error(`cannot start the test Ceph cluster:\n${failures.join('\n\n')}`);
}

async function startOnce(buckets: string[]): Promise<RadosgwHandle> {
  const dir = await mkdtemp(join(tmpdir(), 'tandem-ceph-'));
  const children: ChildProcess[] = [];
  // A test process that dies without destroy() must not leave daemons behind.
  const onExit = () => children.forEach((c) => c.kill('SIGKILL'));
  process.once('exit', onExit);
  const destroy = async () => {
    process.off('exit', onExit);
    await Promise.all(children.map(kill));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const conf = join(dir, 'ceph.conf');
    const [monPort, rgwPort] = [await closedPort(), await closedPort()];
    const fsid = randomUUID();
    for (const d of ['mon/a', 'osd', 'run', 'log', 'rgw']) await mkdir(join(dir, d), { recursive: true });
    await writeFile(conf, cephConf(dir, fsid, monPort));
    const ceph = (cmd: string, args: string[]) => mustRun(cmd, ['-c', conf, ...args], { timeoutMs: 60_000 });
    const daemon = (cmd: string, args: string[], name: string) => {
      const out = openSync(join(dir, 'log', `${name}.out`), 'a');
      const child = spawn(cmd, ['-c', conf, '-f', ...args], { stdio: ['ignore', out, out] });
      closeSync(out);
      children.push(child);
      return child;
    };

    await mustRun('monmaptool', ['--create', '--fsid', fsid, '--add', 'a', `v1:127.0.0.1:${monPort}`, join(dir, 'monmap')]);
    await ceph('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')]);
    const mon = daemon('ceph-mon', ['-i', 'a'], 'mon');
    const status = JSON.parse((await ceph('ceph', ['--connect-timeout', '30', 'status', '-f', 'json'])).toString()) as { fsid?: string };
    if (mon.exitCode !== null || status.fsid !== fsid) throw new Error(`the monitor on port ${monPort} is not ours (fsid ${status.fsid})`);

    const osdUuid = randomUUID();
    const osdId = (await ceph('ceph', ['--connect-timeout', '30', 'osd', 'new', osdUuid])).toString().trim();
    await mkdir(join(dir, 'osd', osdId));
    await ceph('ceph-osd', ['-i', osdId, '--mkfs', '--osd-uuid', osdUuid]);
    const osd = daemon('ceph-osd', ['-i', osdId], 'osd');
    await waitForOsd(() => ceph('ceph', ['osd', 'dump', '-f', 'json']), osd);

    const rgw = daemon('radosgw', ['-n', 'client.rgw', '--rgw_frontends', `beast endpoint=127.0.0.1:${rgwPort}`], 'rgw');
    const endpoint = `http://127.0.0.1:${rgwPort}`;
    await waitForGateway(endpoint, rgw, dir);

    await ceph('radosgw-admin', [
      '-n', 'client.admin', 'user', 'create', '--uid', 'tandem', '--display-name', 'tandem test',
      '--access-key', CREDENTIALS.accessKeyId, '--secret', CREDENTIALS.secretAccessKey,
    ]);
    const version = (await mustRun('ceph-osd', ['--version'])).toString().trim();
    const handle: RadosgwHandle = {
      endpoint,
      credentials: { ...CREDENTIALS },
      env: { AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey, AWS_REGION: 'us-east-1' },
      version,
      destroy,
    };
    for (const b of buckets) await createBucket(handle, b);
    return handle;
  } catch (err) {
    const logs = await Promise.all(['mon', 'osd', 'rgw'].map((n) => readFile(join(dir, 'log', `${n}.out`), 'utf8').catch(() => '')));
    await destroy();
    throw new Error(`${(err as Error).message}\n${logs.join('\n').slice(-3000)}`, { cause: err });
  }
}

/**
 * The s3:// filestore URL for the gateway: path-style, the SDK's default checksums (Pacific's
 * gateway stores streamed and multipart uploads byte for byte with them), and native conditional
 * writes (the default, written out). Pass `prefix: 'unique'` for a fresh prefix per call.
 */
export function radosgwFilestoreUrl(rgw: RadosgwHandle, opts: { bucket?: string; prefix?: string } = {}): string {
  const prefix = opts.prefix === 'unique' ? `t${process.pid}-${++urlCounter}/` : (opts.prefix ?? '');
  const q = new URLSearchParams({
    endpoint: rgw.endpoint,
    region: 'us-east-1',
    forcePathStyle: 'true',
    conditionalWrites: 'native',
  });
  return `s3://${opts.bucket ?? 'tandem'}/${prefix}?${q}`;
}
let urlCounter = 0;

/** One of everything, sized for a test: pools of one replica and 8 PGs, a small memstore. */
function cephConf(dir: string, fsid: string, monPort: number): string {
  return `[global]
fsid = ${fsid}
mon host = v1:127.0.0.1:${monPort}
public addr = 127.0.0.1
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
log file = ${dir}/log/$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
[mon]
mon data = ${dir}/mon/$id
[osd]
osd data = ${dir}/osd/$id
osd objectstore = memstore
memstore device bytes = 536870912
[client.rgw]
rgw data = ${dir}/rgw
rgw thread pool size = 16
`;
}

async function waitForOsd(dump: () => Promise<Buffer>, osd: ChildProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (osd.exitCode !== null || osd.signalCode !== null) throw new Error(`ceph-osd exited (${osd.exitCode ?? osd.signalCode}) before it was up`);
    const map = JSON.parse((await dump()).toString()) as { osds?: { up?: number }[] };
    if (map.osds?.[0]?.up === 1) return;
    if (Date.now() > deadline) throw new Error('the OSD was not up within 60 s');
    await sleep(250);
  }
}

async function waitForGateway(endpoint: string, rgw: ChildProcess, dir: string): Promise<void> {
  // radosgw creates its pools on first start and only then listens: about 10 s here.
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (rgw.exitCode !== null || rgw.signalCode !== null) {
      throw new Error(`radosgw exited (${rgw.exitCode ?? rgw.signalCode}) before listening; its log is ${join(dir, 'log', 'client.rgw.log')}`);
    }
    try {
      const res = await fetch(`${endpoint}/`, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`radosgw did not answer on ${endpoint} within 60 s`);
    await sleep(250);
  }
}

async function createBucket(rgw: RadosgwHandle, bucket: string): Promise<void> {
  const client = new S3Client({ endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: rgw.credentials });
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } finally {
    client.destroy();
  }
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL'); // throwaway data in memory: nothing to shut down cleanly
  await exited;
}
