import { spawn } from 'node:child_process';
import { TandemError, type Logger } from '@tandem/shared';
import { faultPoint } from './fault.js';

/** Output kept from the restart command for messages and logs: its tail is what explains a failure. */
const MAX_OUTPUT = 16 * 1024;
const TIMEOUT_MS = 10 * 60 * 1000;

export interface RestartResult {
  command: string;
  seconds: number;
  output: string;
}

/**
 * Runs the site's restartCommand through /bin/sh with TANDEM_MODE (backup|primary), TANDEM_SITE and
 * TANDEM_SET_ID in its environment. A non-zero exit, a signal or a timeout throws 'external' with the
 * command's output.
 */
export async function runRestart(
  command: string,
  env: { mode: 'backup' | 'primary'; site: string; setId: string | null },
  logger: Logger,
): Promise<RestartResult> {
  const t0 = performance.now();
  logger.info({ restartCommand: command, mode: env.mode }, 'running restartCommand');
  const child = spawn('/bin/sh', ['-c', command], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TANDEM_MODE: env.mode, TANDEM_SITE: env.site, TANDEM_SET_ID: env.setId ?? '' },
  });
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-MAX_OUTPUT);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  faultPoint('restart-running');
  const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
  const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c, s) => resolve({ code: c, signal: s }));
  }).finally(() => clearTimeout(timer));
  const seconds = Math.round(performance.now() - t0) / 1000;
  output = output.trimEnd();
  if (code !== 0) {
    const how = signal ? `was killed by ${signal}${signal === 'SIGKILL' ? ` (timeout ${TIMEOUT_MS / 1000} s?)` : ''}` : `exited with status ${code}`;
    throw new TandemError('external', 'RESTART_FAILED', `restartCommand \`${command}\` ${how}${output ? `:\n${indent(output)}` : ' (no output)'}`, {
      hint: 'fix the restart command or the site, then restart the site by hand',
    });
  }
  if (output) logger.info({ output }, 'restartCommand output');
  return { command, seconds, output };
}

const indent = (s: string) => s.split('\n').map((l) => `    ${l}`).join('\n');

/**
 * Runs one of the config's commands (database.startCommand, database.stopCommand) through /bin/sh;
 * a non-zero exit, a signal or a timeout throws 'external', naming the key and with the output.
 */
export async function runShell(command: string, key: string, logger: Logger): Promise<void> {
  logger.info({ [key]: command }, `running ${key}`);
  const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-MAX_OUTPUT);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
  const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c, s) => resolve({ code: c, signal: s }));
  }).finally(() => clearTimeout(timer));
  output = output.trimEnd();
  if (code !== 0) {
    const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
    throw new TandemError('external', 'COMMAND_FAILED', `${key} \`${command}\` ${how}${output ? `:\n${indent(output)}` : ' (no output)'}`, {
      hint: `fix ${key} in the config, or the cluster it runs`,
    });
  }
}
