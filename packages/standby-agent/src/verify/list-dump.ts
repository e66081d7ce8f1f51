import { spawn } from 'node:child_process';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { TandemError, pgBin, type DbTarget } from '@tandem/shared';

/**
 * `pg_restore -l` of a dump streamed to its stdin: proves the dump is a readable custom-format archive
 * and counts its table of contents. pg_restore stops reading after the TOC; the rest of the stream is
 * still read to its end (and discarded) so that the caller's checksum covers every byte.
 */
export async function listDump(plain: Readable, db: DbTarget, label: string): Promise<{ entries: number }> {
  const child = spawn(pgBin(db, 'pg_restore'), ['-l'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString('utf8');
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString('utf8')).slice(-8192);
  });
  let running = true;
  const exited = new Promise<{ code: number | null; error?: Error }>((resolve) => {
    child.once('error', (error) => resolve({ code: null, error }));
    child.once('close', (code) => resolve({ code }));
  }).finally(() => {
    running = false;
  });
  child.stdin.on('error', () => undefined); // EPIPE once it has read the TOC: expected
  try {
    for await (const chunk of plain) {
      if (!running || child.stdin.destroyed) continue;
      // once() rejects when stdin emits 'error' (EPIPE: pg_restore has read the TOC and exited) while
      // we wait for 'drain'; that ends the wait like the exit does, and is not an error of the dump.
      if (!child.stdin.write(chunk)) await Promise.race([once(child.stdin, 'drain').catch(() => undefined), exited]);
    }
  } catch (err) {
    // The dump's stream failed (a piece that did not verify, a download cut short): pg_restore,
    // still waiting for the rest of its input, must not outlive it.
    child.kill('SIGKILL');
    child.stdin.destroy();
    await exited;
    throw err;
  }
  if (running && !child.stdin.destroyed) child.stdin.end();
  const r = await exited;
  if (r.error || r.code !== 0) {
    throw new TandemError('integrity', 'DUMP_UNREADABLE', `${label}: pg_restore -l cannot read the dump: ${r.error?.message ?? (stderr.trim() || `exit status ${r.code}`)}`);
  }
  return { entries: stdout.split('\n').filter((l) => l.trim() !== '' && !l.startsWith(';')).length };
}
