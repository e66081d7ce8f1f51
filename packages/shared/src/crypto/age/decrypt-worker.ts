/**
 * The worker side of createAgeDecryptWorkerStream (decrypt-offthread.ts): runs an ordinary age
 * decrypt stream on this thread and sends its plaintext back in batches of about 1 MiB.
 *
 * Messages in: { data: Uint8Array } (ownership transferred) and { end: true }.
 * Messages out: { data: Uint8Array, ack: number } (plaintext, and how many input messages are done),
 * { ack: number } (input consumed, no output yet), { done: true }, and
 * { error: { kind, code, message, hint } }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { isTandemError } from '../../errors.js';
import { createAgeDecryptStream } from './decrypt.js';

const BATCH = 1 << 20;
const port = parentPort!;
const { identities, label } = workerData as { identities: string[]; label?: string };

let pending: Buffer[] = [];
let pendingBytes = 0;
let acked = 0;
let received = 0;
let failed = false;

const flush = (): void => {
  if (pendingBytes === 0) {
    if (acked < received) port.postMessage({ ack: (acked = received) });
    return;
  }
  const out = pending.length === 1 && pending[0]!.byteOffset === 0 && pending[0]!.byteLength === pending[0]!.buffer.byteLength ? pending[0]! : Buffer.concat(pending, pendingBytes);
  pending = [];
  pendingBytes = 0;
  const view = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  acked = received;
  port.postMessage({ data: view, ack: acked }, [view.buffer as ArrayBuffer]);
};

const fail = (err: unknown): void => {
  if (failed) return;
  failed = true;
  const e = err as Error & { kind?: string; code?: string; hint?: string };
  port.postMessage({ error: { kind: isTandemError(err) ? e.kind : 'internal', code: e.code ?? 'AGE_WORKER', message: e.message, hint: e.hint } });
};

let decrypt: ReturnType<typeof createAgeDecryptStream>;
try {
  decrypt = createAgeDecryptStream(identities, { label });
} catch (err) {
  fail(err);
  throw err;
}
decrypt.on('data', (pt: Buffer) => {
  pending.push(pt);
  pendingBytes += pt.length;
  if (pendingBytes >= BATCH) flush();
});
decrypt.on('error', fail);
decrypt.on('end', () => {
  if (failed) return;
  flush();
  port.postMessage({ done: true });
});

port.on('message', (m: { data?: Uint8Array; end?: boolean }) => {
  if (failed) return;
  if (m.data) {
    received++;
    decrypt.write(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength));
    // What one input piece produced goes back now, so the reader never waits on a half batch.
    flush();
  } else if (m.end) {
    decrypt.end();
  }
});
