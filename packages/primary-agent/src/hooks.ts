import { spawn } from 'node:child_process';
import { describeError, formatDuration } from '@tandem/shared';

/** How long onFenced/onResume may run before they are killed (default). */
export const HOOK_TIMEOUT_MS = 5 * 60_000;

export interface HookResult {
  ok: boolean;
  error: string | null;
}

/**
 * Runs an operator's hook command (`sh -c`, onFenced/onResume) to its end, with `env` added to the
 * environment; killed after `timeoutMs`. Never throws: the result says what went wrong, with the
 * tail of the command's stderr.
 */
export function runHook(command: string, env: Record<string, string>, timeoutMs = HOOK_TIMEOUT_MS): Promise<HookResult> {
  return new Promise((resolve) => {
    const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 4000) stderr += d.toString('utf8');
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ ok: false, error: `could not be started: ${describeError(err)}` });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve({ ok: true, error: null });
      const how = signal ? `was killed by ${signal}${signal === 'SIGKILL' ? ` (timeout ${formatDuration(timeoutMs)}?)` : ''}` : `exited with status ${code}`;
      const tail = stderr.trim();
      resolve({ ok: false, error: `${how}${tail ? `: ${tail.slice(-1000)}` : ''}` });
    });
  });
}
