/**
 * A fault-injecting HTTP proxy for the filestore-fault suite: it sits on 127.0.0.1 (random port)
 * between the agents (their s3:// URL's endpoint points at it) and a real S3 server (s3rver), and
 * answers some requests with a fault instead of (or on top of) forwarding them.
 *
 * Faults:
 *   error-500     500 InternalError (S3 XML), the request not forwarded
 *   error-503     503 ServiceUnavailable
 *   slowdown      503 SlowDown (S3's throttling answer)
 *   reset         TCP reset as soon as the request arrives
 *   reset-after   the request is forwarded and done by the server, then the client gets a reset
 *                 instead of the answer (the retry repeats an operation that already happened)
 *   cut-request   half of the request body is read, then a reset
 *   cut-response  the server's answer is cut short: status and headers, half the body, then a reset
 *                 (an empty body: half of the status line)
 *   stall         no answer at all, the connection held open until the client gives up
 *   stall-body    the status, headers and half the body, then nothing until the client gives up
 * and, independently, latency: a delay before forwarding.
 *
 * The schedule is deterministic for a seed: requests fall into classes (method, object name, part
 * number, multipart step), and the n-th "chain" of a class (consecutive attempts until one is let
 * through) gets its faults from a hash of (seed, class, n), not from arrival order or timing. So
 * an agent that makes the same requests meets the same faults, and a failure reproduces with its
 * seed. Every request is recorded (time, class, attempt within its chain, fault, outcome), which
 * is how the tests count retries and measure their backoff.
 */
import { createHash } from 'node:crypto';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export const FAULT_KINDS = ['error-500', 'error-503', 'slowdown', 'reset', 'reset-after', 'cut-request', 'cut-response', 'stall', 'stall-body'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultRule {
  /** Request classes this rule applies to (e.g. /^PUT manifest\.json/); default every request. */
  match?: RegExp;
  /** Faults to draw from. */
  kinds: readonly FaultKind[];
  /** Share of chains that get faults at all (0..1). */
  rate: number;
  /**
   * Faulted attempts in a row, at most (drawn from minInARow..maxInARow); default 2, below the agents' 4
   * attempts per request, so that a retry gets through. Infinity: every attempt, for ever.
   */
  maxInARow?: number;
  /** Faulted attempts in a row, at least (default 1). */
  minInARow?: number;
}

export interface ProxyRecord {
  seq: number;
  /** ms since the proxy started (or since reset()). */
  at: number;
  method: string;
  url: string;
  cls: string;
  /** 0 for the first attempt of a chain, 1 for the first retry ... */
  attempt: number;
  /** The SDK's amz-sdk-invocation-id: the same for every attempt of one operation. */
  invocation: string;
  /** The SDK's own attempt number (amz-sdk-request: attempt=N; max=M). */
  sdkAttempt: number;
  sdkMax: number;
  /** The Range header, if any (a resumed download). */
  range?: string;
  fault: FaultKind | null;
  latencyMs: number;
  /** HTTP status the client got, or what happened instead. */
  outcome: number | 'reset' | 'cut' | 'stalled' | 'error';
  /** For stalls: ms until the client gave up and closed the connection. */
  clientGaveUpAfterMs?: number;
}

export interface FaultProxyOptions {
  /** http://host:port of the real server. */
  upstream: string;
  seed: number;
  rules?: FaultRule[];
  /** Share of requests delayed, and the delay range in ms. */
  latency?: { rate: number; minMs: number; maxMs: number };
}

interface Chain {
  index: number;
  attempt: number;
  plan: FaultKind[];
}

/** Deterministic numbers in [0, 1) from a string. */
function draws(key: string, n: number): number[] {
  const h = createHash('sha256').update(key).digest();
  return Array.from({ length: n }, (_, i) => h.readUInt32BE((i * 4) % 28) / 2 ** 32);
}

/** The class of a request: method, object name (or bucket), multipart step and part number. */
export function requestClass(method: string, url: string): string {
  const u = new URL(url, 'http://x');
  const segments = u.pathname.split('/').filter(Boolean);
  let cls = `${method} ${decodeURIComponent(segments.at(-1) ?? '')}`;
  if (segments.length <= 1) cls += u.searchParams.has('list-type') ? '?list' : '';
  if (u.searchParams.has('uploads')) cls += '?uploads';
  const part = u.searchParams.get('partNumber');
  if (part !== null) cls += `#${part}`;
  else if (u.searchParams.has('uploadId')) cls += '?uploadId';
  return cls;
}

const S3_ERRORS: Record<'error-500' | 'error-503' | 'slowdown', { status: number; code: string }> = {
  'error-500': { status: 500, code: 'InternalError' },
  'error-503': { status: 503, code: 'ServiceUnavailable' },
  slowdown: { status: 503, code: 'SlowDown' },
};

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade', 'te', 'trailer']);

export class FaultProxy {
  readonly records: ProxyRecord[] = [];
  endpoint = '';
  port = 0;
  private server: Server;
  private sockets = new Set<Socket>();
  private chains = new Map<string, Chain>();
  private perClassCount = new Map<string, number>();
  private t0 = performance.now();
  private seq = 0;
  private readonly upstream: URL;
  private opts: FaultProxyOptions;

  constructor(opts: FaultProxyOptions) {
    this.opts = opts;
    this.upstream = new URL(opts.upstream);
    this.server = createServer({ keepAlive: true }, (req, res) => void this.handle(req, res));
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server.on('clientError', (_err, socket) => socket.destroy());
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve, reject) => this.server.listen(0, '127.0.0.1', resolve).once('error', reject));
    const addr = this.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('fault proxy: no address');
    this.port = addr.port;
    this.endpoint = `http://127.0.0.1:${this.port}`;
    return this;
  }

  /** New rules (and seed) from now on; chain and request counters start again, records are kept. */
  configure(opts: Partial<Pick<FaultProxyOptions, 'seed' | 'rules' | 'latency'>>): void {
    this.opts = { ...this.opts, ...opts };
    this.chains.clear();
    this.perClassCount.clear();
  }

  /** Records since `from` (an index into records, e.g. records.length before a run). */
  since(from: number): ProxyRecord[] {
    return this.records.slice(from);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** The faults of the next request of class `cls` (and which attempt of its chain it is). */
  private decide(cls: string): { fault: FaultKind | null; attempt: number; latencyMs: number } {
    const { seed, rules = [], latency } = this.opts;
    const n = this.perClassCount.get(cls) ?? 0;
    this.perClassCount.set(cls, n + 1);
    let latencyMs = 0;
    if (latency) {
      const [p, d] = draws(`${seed}|latency|${cls}|${n}`, 2);
      if (p! < latency.rate) latencyMs = Math.round(latency.minMs + d! * (latency.maxMs - latency.minMs));
    }
    let chain = this.chains.get(cls);
    if (chain === undefined) {
      chain = { index: 0, attempt: 0, plan: [] };
      this.chains.set(cls, chain);
    }
    if (chain.attempt === 0) {
      chain.plan = [];
      const rule = rules.find((r) => r.match === undefined || r.match.test(cls));
      if (rule) {
        const [p, len, ...picks] = draws(`${seed}|chain|${cls}|${chain.index}`, 7);
        if (p! < rule.rate) {
          const max = rule.maxInARow ?? 2;
          const min = Math.min(rule.minInARow ?? 1, max);
          const count = max === Infinity ? Infinity : min + Math.floor(len! * (max - min + 1));
          const kinds = rule.kinds;
          const pick = (i: number) => kinds[Math.floor((picks[i % picks.length]! + i * 0.618) % 1 * kinds.length)]!;
          chain.plan = count === Infinity ? [pick(0)] : Array.from({ length: count }, (_, i) => pick(i));
          if (count === Infinity) (chain.plan as FaultKind[] & { forever?: boolean }).forever = true;
        }
      }
    }
    const attempt = chain.attempt;
    const forever = (chain.plan as { forever?: boolean }).forever === true;
    const fault = forever ? chain.plan[0]! : (chain.plan[attempt] ?? null);
    if (fault === null) {
      chain.index++;
      chain.attempt = 0;
    } else {
      chain.attempt++;
    }
    return { fault, attempt, latencyMs };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const cls = requestClass(req.method ?? 'GET', req.url ?? '/');
    const { fault, attempt, latencyMs } = this.decide(cls);
    const rec: ProxyRecord = {
      seq: this.seq++,
      at: Math.round(performance.now() - this.t0),
      method: req.method ?? '',
      url: req.url ?? '',
      cls,
      attempt,
      invocation: String(req.headers['amz-sdk-invocation-id'] ?? ''),
      sdkAttempt: Number(/attempt=(\d+)/.exec(String(req.headers['amz-sdk-request'] ?? ''))?.[1] ?? 0),
      sdkMax: Number(/max=(\d+)/.exec(String(req.headers['amz-sdk-request'] ?? ''))?.[1] ?? 0),
      ...(req.headers.range === undefined ? {} : { range: req.headers.range }),
      fault,
      latencyMs,
      outcome: 'error',
    };
    this.records.push(rec);
    const socket = req.socket;
    const reset = () => {
      if (!socket.destroyed) socket.resetAndDestroy();
    };
    const stallUntilClientGivesUp = () => {
      rec.outcome = 'stalled';
      const since = performance.now();
      socket.once('close', () => {
        rec.clientGaveUpAfterMs = Math.round(performance.now() - since);
      });
    };
    if (latencyMs > 0) await new Promise((r) => setTimeout(r, latencyMs));

    switch (fault) {
      case 'error-500':
      case 'error-503':
      case 'slowdown': {
        const { status, code } = S3_ERRORS[fault];
        req.resume();
        const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>injected by the fault proxy</Message><RequestId>fault-${rec.seq}</RequestId></Error>`;
        res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
        res.end(body);
        rec.outcome = status;
        return;
      }
      case 'reset':
        rec.outcome = 'reset';
        reset();
        return;
      case 'cut-request': {
        rec.outcome = 'reset';
        const declared = Number(req.headers['content-length'] ?? 0);
        if (!(declared > 1)) return reset();
        let got = 0;
        req.on('data', (c: Buffer) => {
          got += c.length;
          if (got >= declared / 2) reset();
        });
        req.on('end', reset);
        return;
      }
      case 'stall':
        req.resume();
        stallUntilClientGivesUp();
        return;
      default:
        break;
    }
    this.forward(req, res, rec, fault);
  }

  private forward(req: IncomingMessage, res: ServerResponse, rec: ProxyRecord, fault: FaultKind | null): void {
    const socket = req.socket;
    const headers = { ...req.headers };
    delete headers.expect; // the 100-continue was answered here; the Host header (signed) stays as it is
    delete headers.connection;
    const up = httpRequest(
      { host: this.upstream.hostname, port: this.upstream.port, method: req.method, path: req.url, headers, agent: false },
      (upRes) => {
        const status = upRes.statusCode ?? 502;
        const outHeaders: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(upRes.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) outHeaders[k] = v;
        const length = Number(upRes.headers['content-length'] ?? NaN);
        const hasBody = req.method !== 'HEAD' && status !== 204 && status !== 304 && length !== 0;
        if (fault === 'reset-after') {
          upRes.resume();
          upRes.on('end', () => {
            rec.outcome = 'reset';
            if (!socket.destroyed) socket.resetAndDestroy();
          });
          return;
        }
        if ((fault === 'cut-response' || fault === 'stall-body') && !hasBody) {
          upRes.resume();
          upRes.on('end', () => {
            if (fault === 'stall-body') {
              rec.outcome = 'stalled';
              const since = performance.now();
              socket.once('close', () => (rec.clientGaveUpAfterMs = Math.round(performance.now() - since)));
              return;
            }
            rec.outcome = 'cut';
            socket.write(`HTTP/1.1 ${status}`, () => socket.resetAndDestroy());
          });
          return;
        }
        res.writeHead(status, upRes.statusMessage, outHeaders);
        if (fault === 'cut-response' || fault === 'stall-body') {
          const limit = Number.isFinite(length) ? Math.max(1, Math.floor(length / 2)) : 1;
          let sent = 0;
          let done = false;
          upRes.on('data', (c: Buffer) => {
            if (done) return;
            const take = c.subarray(0, Math.max(0, limit - sent));
            sent += take.length;
            if (take.length > 0) res.write(take);
            if (sent >= limit) {
              done = true;
              upRes.destroy();
              if (fault === 'cut-response') {
                rec.outcome = 'cut';
                // Let the bytes written so far go out, then reset.
                setTimeout(() => !socket.destroyed && socket.resetAndDestroy(), 20);
              } else {
                rec.outcome = 'stalled';
                const since = performance.now();
                socket.once('close', () => (rec.clientGaveUpAfterMs = Math.round(performance.now() - since)));
              }
            }
          });
          return;
        }
        rec.outcome = status;
        upRes.pipe(res);
      },
    );
    up.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-length': 0 });
        res.end();
        rec.outcome = 502;
      } else {
        socket.destroy();
        rec.outcome = 'error';
      }
    });
    req.pipe(up);
  }
}

/** Starts a proxy in front of `upstream`. */
export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  return new FaultProxy(opts).start();
}

/** Faults injected in `records`, by kind (and latency). */
export function countFaults(records: ProxyRecord[]): Record<FaultKind | 'latency', number> {
  const out = Object.fromEntries([...FAULT_KINDS, 'latency'].map((k) => [k, 0])) as Record<FaultKind | 'latency', number>;
  for (const r of records) {
    if (r.fault) out[r.fault]++;
    if (r.latencyMs > 0) out.latency++;
  }
  return out;
}

/**
 * The operations in `records` that met at least one fault, grouped by the SDK's invocation id (every
 * attempt of one operation carries the same one): the attempts made, the faults met, the gaps
 * between attempts (arrival to arrival: the faulted answer takes a millisecond or so, a stall up to
 * the client's idle timeout), and whether the last attempt got through.
 */
export interface RetryChain {
  cls: string;
  attempts: number;
  faults: FaultKind[];
  gapsMs: number[];
  gotThrough: boolean;
}

export function retryChains(records: ProxyRecord[]): RetryChain[] {
  const byOp = new Map<string, ProxyRecord[]>();
  for (const r of records) {
    const key = r.invocation || `seq-${r.seq}`;
    if (!byOp.has(key)) byOp.set(key, []);
    byOp.get(key)!.push(r);
  }
  const out: RetryChain[] = [];
  for (const recs of byOp.values()) {
    const faults = recs.filter((r) => r.fault !== null).map((r) => r.fault!);
    if (faults.length === 0) continue;
    out.push({
      cls: recs[0]!.cls,
      attempts: recs.length,
      faults,
      gapsMs: recs.slice(1).map((r, i) => r.at - recs[i]!.at),
      gotThrough: recs.at(-1)!.fault === null,
    });
  }
  return out;
}
