import { pino, type Logger, type Level, type LoggerOptions } from 'pino';
import { prettyFactory } from 'pino-pretty';
import { TandemError } from './errors.js';
import { formatBytes } from './size.js';
import { writeAboveStatusLine } from './status-line.js';

export type { Logger } from 'pino';

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const FORMATS = ['auto', 'json', 'human'] as const;

/** How log lines are written: one JSON object a line, or one readable line per event. */
export type LogFormat = 'json' | 'human';

/**
 * TANDEM_LOG_FORMAT: `json`, `human`, or `auto` (unset: human when stderr is a terminal, else
 * JSON). Throws a config error naming the variable for any other value.
 */
export function logFormat(env: NodeJS.ProcessEnv = process.env): LogFormat {
  const v = env.TANDEM_LOG_FORMAT ?? '';
  if (v === '' || v === 'auto') return process.stderr.isTTY === true ? 'human' : 'json';
  if (v === 'json' || v === 'human') return v;
  throw new TandemError('config', 'LOG_FORMAT', `TANDEM_LOG_FORMAT="${v}" is not a log format`, {
    hint: `set it to one of ${FORMATS.join(', ')} (auto: human on a terminal, else JSON), or unset it`,
  });
}

/** TANDEM_LOG_LEVEL (default info); throws a config error naming the variable for an unknown level. */
export function logLevel(env: NodeJS.ProcessEnv = process.env): Level | 'silent' {
  const v = env.TANDEM_LOG_LEVEL ?? '';
  if (v === '') return 'info';
  if (LEVELS.includes(v)) return v as Level;
  throw new TandemError('config', 'LOG_LEVEL', `TANDEM_LOG_LEVEL="${v}" is not a log level`, { hint: `set it to one of ${LEVELS.join(', ')}, or unset it (info)` });
}

/**
 * One root logger per process; modules take `logger.child({ component })`. Logs go to stderr so
 * that stdout stays free for command results (set ids, --json output).
 *
 * Every line has each key once, as strict JSON consumers require: a logger's bindings (its own
 * and its parents', the pid and the program name) are not written as a prefix of their own (pino's
 * way, which repeats a key that a child binds again or a call passes again) but merged with the
 * call's own fields, the call's value winning, then written once.
 */
export function createLogger(opts: { name: string; level?: string; pretty?: boolean }): Logger {
  const level = opts.level ?? logLevel();
  if (!LEVELS.includes(level)) {
    throw new TandemError('config', 'LOG_LEVEL', `log level "${level}" is not one of ${LEVELS.join(', ')}`);
  }
  const human = opts.pretty ?? logFormat() === 'human';
  const options: LoggerOptions = {
    level: level as Level,
    base: null,
    mixin: (_obj, _num, logger) => (logger as unknown as Bound)[BOUND] ?? {},
    mixinMergeStrategy: (own: object, bound: object) => mergeFields(bound as Record<string, unknown>, own as Record<string, unknown>),
  };
  const root = human ? pino(options, humanDestination()) : pino(options, pino.destination({ fd: 2, sync: true }));
  (root as unknown as Bound)[BOUND] = { pid: process.pid, name: opts.name };
  const pinoChild = root.child as unknown; // pino's own, called on the parent below
  // Children get their bindings here rather than from pino (which would write them as a prefix).
  (root as unknown as { child: unknown }).child = function child(this: Logger & Bound, bindings: Record<string, unknown>, childOptions?: unknown) {
    const c = (pinoChild as (this: unknown, b: object, o?: unknown) => Logger & Bound).call(this, {}, childOptions);
    c[BOUND] = mergeFields(this[BOUND] ?? {}, bindings);
    return c;
  };
  return root;
}

const BOUND = Symbol('tandem.logBindings');
type Bound = { [BOUND]?: Record<string, unknown> };

/** Keys pino writes itself before the fields: a field of that name would repeat them. */
const RESERVED = new Set(['level', 'time', 'msg']);

/** `bound` then `own` (own wins, at the bound key's place); a reserved name gets a "field" suffix. */
function mergeFields(bound: Record<string, unknown>, own: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...bound };
  for (const [k, v] of Object.entries(own)) out[RESERVED.has(k) ? `${k}Field` : k] = v;
  return out;
}

// ---------------------------------------------------------------------------------------------
// The human format
// ---------------------------------------------------------------------------------------------

/** Never shown in the human format: the process, and what the operator typed (program, command, site). */
const HIDDEN = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name', 'command', 'site']);
/** Shown only when their value differs from the last line's that had them: the set an apply or backup works on. */
const CONTEXT = new Set(['setId']);
const SHORT_NAMES: Record<string, string> = { setId: 'set', bytes: 'size', storedBytes: 'stored', plainBytes: 'plain', seconds: 'took', downloadSeconds: 'download' };

const controlChars = /[\u0000-\u001f\u007f]+/g;

function fieldValue(key: string, v: unknown): string {
  if (typeof v === 'number' && /(^b|B)ytes$/.test(key)) return formatBytes(v);
  if (typeof v === 'number' && /(^s|S)econds$/.test(key)) return `${v}s`;
  if (typeof v === 'string') return /^[^\s"=\u0000-\u001f\u007f]+$/.test(v) ? v : JSON.stringify(v);
  if (Array.isArray(v) && v.every((x) => typeof x === 'string' || typeof x === 'number')) return v.length === 0 ? '[]' : v.map((x) => fieldValue('', x)).join(',');
  if (v === null || typeof v !== 'object') return String(v);
  return JSON.stringify(v);
}

/** The message, then `key=value` for each field; an error as its message (and its stack when it is not tandem's own error). */
export function humanMessageFormat(): (log: Record<string, unknown>, messageKey: string) => string {
  const lastContext = new Map<string, unknown>();
  return (log, messageKey) => {
    const parts = [String(log[messageKey] ?? '').replace(controlChars, ' ')];
    let stack = '';
    for (const [k, v] of Object.entries(log)) {
      if (HIDDEN.has(k) || v === undefined) continue;
      if (CONTEXT.has(k)) {
        if (lastContext.get(k) === v) continue;
        lastContext.set(k, v);
      }
      if ((k === 'err' || k === 'error') && v !== null && typeof v === 'object' && typeof (v as { message?: unknown }).message === 'string') {
        const e = v as { message: string; kind?: unknown; stack?: string };
        parts.push(`${k}=${JSON.stringify(e.message)}`);
        // A TandemError (it has a kind) says all in its message; anything else is a bug: its stack helps.
        if (typeof e.kind !== 'string' && typeof e.stack === 'string' && Number(log.level) >= 50) stack = `\n${e.stack}`;
        continue;
      }
      parts.push(`${SHORT_NAMES[k] ?? k}=${fieldValue(k, v)}`);
    }
    return parts.join(' ') + stack;
  };
}

/** One readable line per event on stderr, above a progress line if one is shown. */
function humanDestination(): { write(chunk: string): void } {
  const colorize = process.stderr.isTTY === true;
  const prettify = prettyFactory({
    colorize,
    translateTime: 'SYS:HH:MM:ss',
    ignore: 'pid,hostname,name',
    hideObject: true,
    messageFormat: humanMessageFormat(),
  });
  return {
    write(chunk: string) {
      const line = prettify(chunk);
      if (line) writeAboveStatusLine(line.endsWith('\n') ? line : `${line}\n`);
    },
  };
}
