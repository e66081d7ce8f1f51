import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { closedPort } from './ports.js';

const LAUNCHER = fileURLToPath(new URL('./s3rver-launcher.mjs', import.meta.url));

/** s3rver's built-in account; pass as `openFilestore(url, { s3: { credentials: S3RVER_CREDENTIALS } })`. */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

/** The same credentials as environment variables, for child processes that use the default chain. */
export const s3rverEnv = (): Record<string, string> => ({
  AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
  AWS_REGION: 'us-east-1',
});

export interface S3rverHandle {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  port: number;
  /** Where s3rver keeps buckets and objects; survives stop()/restart(). */
  dir: string;
  /** Kills the server (like a crash); data stays for restart(). */
  stop(): Promise<void>;
  /** Starts it again on the same port with the same data. */
  restart(): Promise<void>;
  /** stop() and delete the data directory. */
  destroy(): Promise<void>;
}

/**
 * Starts s3rver as a separate process on 127.0.0.1 (a free port unless given), so tests talk
 * to it over real HTTP through the real SDK and can stop it to simulate an outage.
 */
export async function startS3rver(opts: { buckets?: string[]; port?: number } = {}): Promise<S3rverHandle> {
  const buckets = opts.buckets ?? ['tandem'];
  const dir = await mkdtemp(path.join(tmpdir(), 'tandem-s3rver-'));
  // A port out of the ephemeral range (closedPort), so a restart finds it still free.
  const first = await launch(dir, opts.port ?? (await closedPort()), buckets);
  const port = first.port;
  let child: ChildProcess | undefined = first.child;

  const stop = async () => {
    const c = child;
    if (c === undefined) return;
    child = undefined;
    await kill(c);
  };
  const handle: S3rverHandle = {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    dir,
    stop,
    async restart() {
      await stop();
      // The port was just released; a brief retry covers a slow kernel.
      for (let attempt = 0; ; attempt++) {
        try {
          ({ child } = await launch(dir, port, buckets));
          return;
        } catch (err) {
          if (attempt >= 10) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    },
    async destroy() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return handle;
}

let bucketUrlCounter = 0;

/**
 * The s3:// filestore URL for s3rver. s3rver needs path-style addressing and no SDK checksums,
 * and it ignores conditional-PUT headers, hence conditionalWrites=emulated by default.
 * Pass `prefix: 'unique'` for a fresh prefix per call.
 */
export function s3rverFilestoreUrl(
  server: { endpoint: string } | string,
  opts: { bucket?: string; prefix?: string; conditionalWrites?: 'native' | 'emulated' } = {},
): string {
  const endpoint = typeof server === 'string' ? server : server.endpoint;
  const prefix = opts.prefix === 'unique' ? `t${process.pid}-${++bucketUrlCounter}/` : (opts.prefix ?? '');
  const q = new URLSearchParams({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: 'true',
    checksums: 'when-required',
    conditionalWrites: opts.conditionalWrites ?? 'emulated',
  });
  return `s3://${opts.bucket ?? 'tandem'}/${prefix}?${q}`;
}

async function launch(dir: string, port: number, buckets: string[]): Promise<{ child: ChildProcess; port: number }> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS; // the test runner's loaders have no business in the server
  const child = spawn(process.execPath, ['--openssl-legacy-provider', LAUNCHER, dir, String(port), buckets.join(',')], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env,
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 10_000) stderr += d.toString();
  });
  try {
    const bound = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('s3rver did not start within 20 s')), 20_000);
      const done = (fn: () => void) => {
        clearTimeout(timer);
        fn();
      };
      createInterface({ input: child.stdout! }).once('line', (line) => {
        try {
          const { port: p } = JSON.parse(line) as { port: number };
          done(() => resolve(p));
        } catch {
          done(() => reject(new Error(`unexpected s3rver output: ${line}`)));
        }
      });
      child.once('exit', (code, sig) => done(() => reject(new Error(`s3rver exited (${code ?? sig}) before listening`))));
      child.once('error', (err) => done(() => reject(err)));
    });
    return { child, port: bound };
  } catch (err) {
    await kill(child);
    throw new Error(`${(err as Error).message}\n${stderr}`.trim(), { cause: err });
  }
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}
