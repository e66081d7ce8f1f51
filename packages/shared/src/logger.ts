import { pino, type Logger, type Level } from 'pino';
import pretty from 'pino-pretty';
import { TandemError } from './errors.js';

export type { Logger } from 'pino';

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/**
 * One root logger per process; modules take `logger.child({ component })`.
 * Logs go to stderr so that stdout stays free for command results (set ids, --json output).
 * JSON lines unless stderr is a terminal, where an operator reads them directly.
 */
export function createLogger(opts: { name: string; level?: string; pretty?: boolean }): Logger {
  const level = opts.level ?? process.env.TANDEM_LOG_LEVEL ?? 'info';
  if (!LEVELS.includes(level)) {
    throw new TandemError('config', 'LOG_LEVEL', `log level "${level}" is not one of ${LEVELS.join(', ')}`, { hint: 'set TANDEM_LOG_LEVEL to one of them, or unset it (info)' });
  }
  const usePretty = opts.pretty ?? (process.stderr.isTTY === true && process.env.TANDEM_LOG_FORMAT !== 'json');
  const base = { name: opts.name, level: level as Level, base: { pid: process.pid } };
  if (usePretty) {
    return pino(base, pretty({ destination: 2, colorize: true, translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname' }));
  }
  return pino(base, pino.destination({ fd: 2, sync: true }));
}
