// Helpers for benchmarks that run the daemons (`tandem-primary run`, `tandem-standby run`) as child
// processes, the way test/daemons.test.ts does (test/support/standby-daemon.ts, s3rver.ts): their
// JSON log lines captured from stderr, daemon.json for the bound address, /status and /metrics over
// HTTP with the token; s3rver in its own process (test/support/s3rver-launcher.mjs); and a tiny
// counting HTTP proxy in front of it, so that a benchmark can count a daemon's filestore requests
// independently of the daemon's own metrics.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, request, Agent } from 'node:http';
import os from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ROOT } from './common.mjs';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls fn until it returns a truthy value (returned) or throws after timeoutMs. */
export async function waitFor(fn, what, timeoutMs = 30_000, everyMs = 25) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/**
 * Starts `node <bin> ...args` as a daemon. Its stderr is read line by line; lines that are JSON
 * objects (the agents' pino logs) are kept in `records` (with `time`, epoch ms), the rest in `text`.
 * `waitForRecord(pred)` resolves with the first record (already seen or to come) that matches.
 */
export function startDaemon(bin, args, { env, name }) {
  const child = spawn(process.execPath, [bin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const records = [];
  const text = [];
  const waiters = [];
  let exit = null;
  const exited = new Promise((resolve) => {
    child.once('close', (code, signal) => {
      exit = { code, signal };
      for (const w of waiters.splice(0)) w.reject(new Error(`${name} exited (${code ?? signal}) while waiting for ${w.what}\n${tail()}`));
      resolve(exit);
    });
  });
  child.stdout.resume();
  createInterface({ input: child.stderr }).on('line', (line) => {
    let rec = null;
    if (line.startsWith('{')) {
      try {
        rec = JSON.parse(line);
      } catch {
        rec = null;
      }
    }
    if (rec === null) {
      text.push(line);
      if (text.length > 200) text.shift();
      return;
    }
    records.push(rec);
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i].pred(rec)) {
        waiters[i].resolve(rec);
        waiters.splice(i, 1);
      }
    }
  });
  const tail = () =>
    [...records.slice(-15).map((r) => `${r.level} ${r.msg} ${JSON.stringify({ ...r, level: undefined, time: undefined, pid: undefined, hostname: undefined, name: undefined, msg: undefined })}`), ...text.slice(-10)].join('\n');
  return {
    name,
    child,
    records,
    exited,
    get exit() {
      return exit;
    },
    tail,
    /** The first record, already logged or to come, for which pred(record) is true. */
    waitForRecord(pred, what, timeoutMs = 30_000) {
      const seen = records.find(pred);
      if (seen) return Promise.resolve(seen);
      if (exit !== null) return Promise.reject(new Error(`${name} has exited (${exit.code ?? exit.signal}); no ${what}\n${tail()}`));
      return new Promise((resolve, reject) => {
        const w = { pred, what, resolve, reject };
        waiters.push(w);
        setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) {
            waiters.splice(i, 1);
            reject(new Error(`timed out after ${timeoutMs} ms waiting for ${name} to log ${what}\n${tail()}`));
          }
        }, timeoutMs).unref();
      });
    },
    /** SIGTERM, then SIGKILL after graceMs; resolves with the exit. */
    async stop(graceMs = 15_000) {
      if (exit !== null) return exit;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

/** A running process's peak resident set so far (VmHWM in /proc), in MiB; NaN when it cannot be read. */
export function peakRssMiB(pid) {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Waits for <stateDir>/daemon.json naming this pid; returns its {pid, listen}. */
export async function daemonInfo(stateDir, daemon, timeoutMs = 30_000) {
  return waitFor(
    () => {
      if (daemon.exit !== null) throw new Error(`${daemon.name} exited (${daemon.exit.code ?? daemon.exit.signal}) before writing daemon.json\n${daemon.tail()}`);
      try {
        const v = JSON.parse(readFileSync(join(stateDir, 'daemon.json'), 'utf8'));
        return v.pid === daemon.child.pid ? v : null;
      } catch {
        return null;
      }
    },
    `${daemon.name} to write daemon.json`,
    timeoutMs,
    50,
  );
}

/** One HTTP request to host:port; resolves {status, body}. */
export function httpRequest(listen, path, { method = 'GET', token } = {}) {
  const i = listen.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const headers = token === undefined ? {} : { authorization: `Bearer ${token}` };
    if (method !== 'GET') headers['content-length'] = 0;
    const req = request({ host: listen.slice(0, i), port: Number(listen.slice(i + 1)), path, method, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample in Prometheus text, e.g. metric(text, 'tandem_standby_polls_total', { result: 'unchanged' }). */
export function metric(text, name, labels = {}) {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = {};
    for (const part of (m[3] ?? '').match(/[a-zA-Z_]+="(?:[^"\\]|\\.)*"/g) ?? []) {
      const eq = part.indexOf('=');
      have[part.slice(0, eq)] = part.slice(eq + 2, -1);
    }
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[4]);
  }
  return undefined;
}

/** The sum of all samples of a metric (every label set). */
export function metricSum(text, name) {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) sum += Number(m[3]);
  }
  return sum;
}

// ---- s3rver ------------------------------------------------------------------------------------

/** s3rver's built-in account, as environment variables for the agents (the SDK's default chain). */
export const s3rverEnv = () => ({ AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1' });

/** The s3:// filestore URL for an s3rver (or a proxy in front of it) at `endpoint`. */
export function s3FilestoreUrl(endpoint, { bucket = 'tandem', prefix = '' } = {}) {
  const q = new URLSearchParams({ endpoint, region: 'us-east-1', forcePathStyle: 'true', checksums: 'when-required', conditionalWrites: 'emulated' });
  return `s3://${bucket}/${prefix}?${q}`;
}

/**
 * Starts s3rver (test/support/s3rver-launcher.mjs) in its own process on 127.0.0.1, a random port,
 * data in a temp dir. Returns {endpoint, port, stop()}; stop() kills it and removes the data.
 */
export async function startS3rver(buckets = ['tandem']) {
  const dir = mkdtempSync(join(os.tmpdir(), 'tandem-bench-s3rver-'));
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const launcher = join(ROOT, 'test', 'support', 's3rver-launcher.mjs');
  const child = spawn(process.execPath, ['--openssl-legacy-provider', launcher, dir, '0', buckets.join(',')], { stdio: ['pipe', 'pipe', 'pipe'], env, cwd: ROOT });
  let stderr = '';
  child.stderr.on('data', (d) => {
    if (stderr.length < 10_000) stderr += d;
  });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`s3rver did not start within 20 s\n${stderr}`)), 20_000);
    createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(line).port);
      } catch {
        reject(new Error(`unexpected s3rver output: ${line}`));
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`s3rver exited (${code ?? sig}) before listening\n${stderr}`));
    });
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await gone;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A counting HTTP proxy on 127.0.0.1 (random port) in front of `targetPort`: forwards every request
 * unchanged (the Host header too, so that SigV4 signatures still match) and records
 * {at, method, path, query, conditional, status} of each. `classify(r)` names a request kind:
 * 'LIST' (GET on a bucket with list-type / prefix), 'GET-conditional' (If-None-Match / If-Modified-Since),
 * 'GET', 'HEAD', 'PUT', 'DELETE', 'POST'.
 */
export async function startCountingProxy(targetPort) {
  const agent = new Agent({ keepAlive: true });
  const requests = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const rec = {
      at: Date.now(),
      method: req.method,
      path: url.pathname,
      query: url.search,
      conditional: req.headers['if-none-match'] !== undefined || req.headers['if-modified-since'] !== undefined,
      status: null,
    };
    requests.push(rec);
    const up = request({ host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers, agent }, (ur) => {
      rec.status = ur.statusCode;
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', (err) => {
      rec.status = 502;
      if (!res.headersSent) res.writeHead(502);
      res.end(String(err));
    });
    req.pipe(up);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    requests,
    count: () => requests.length,
    async close() {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}

/** The kind of an S3 request seen by the proxy (path-style addressing: /bucket/key). */
export function classify(r) {
  const q = new URLSearchParams(r.query);
  const parts = r.path.split('/').filter(Boolean);
  if (r.method === 'GET' && (q.has('list-type') || parts.length <= 1)) return 'LIST';
  if (r.method === 'GET') return r.conditional ? 'GET-conditional' : 'GET';
  return r.method;
}

/** Counts of classify() kinds, with the response status: {"GET-conditional 304": n, ...}. */
export function summarize(requests) {
  const out = {};
  for (const r of requests) {
    const k = `${classify(r)} ${r.status ?? '-'}`;
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}
