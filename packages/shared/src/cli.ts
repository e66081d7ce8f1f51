import { parseArgs, type ParseArgsConfig } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { TandemError, describeError } from './errors.js';
import { Interrupted } from './interrupts.js';
import { createLogger, type Logger } from './logger.js';
import { clearStatusLine } from './status-line.js';

/**
 * The command-line frame shared by both agents: subcommand dispatch, --help on every command,
 * and the one place where thrown errors become a message and an exit code. Commands throw or
 * return their exit code; they never call process.exit.
 */
export type Options = NonNullable<ParseArgsConfig['options']>;

export interface CommandContext {
  values: Record<string, string | boolean | Array<string | boolean> | undefined>;
  positionals: string[];
  logger: Logger;
  out: (line: string) => void;
}

export interface Command {
  name: string;
  summary: string;
  /** Full help: usage line, description, options. */
  help: string;
  options: Options;
  positionals?: { min: number; max: number };
  /** Returns the exit code (default 0). */
  run(ctx: CommandContext): Promise<number | void>;
  /**
   * A command that reports failure its own way (a monitoring plugin's first line and exit status):
   * called instead of the frame's message when its arguments cannot be parsed, the environment is
   * bad or `run` throws, with the raw arguments and stdout. Returns the exit code, or undefined to
   * leave the error to the frame.
   */
  reportError?(err: unknown, args: string[], out: (line: string) => void): number | undefined;
}

const stdoutLine = (line: string): void => void process.stdout.write(`${line}\n`);

/** A usage error (unknown option, missing value, wrong argument count) as the error a command's reportError gets. */
const usageError = (p: Program, cmd: Command, message: string): TandemError =>
  new TandemError('config', 'USAGE', `${p.bin} ${cmd.name}: ${message}`, { hint: `see \`${p.bin} ${cmd.name} --help\`` });

/**
 * A command whose module is loaded only when it runs (or help lists it): a one-shot command does not
 * load what the daemon needs (the WebSocket server, the metrics registry, the watcher, the
 * scheduler): less memory for a backup, a shorter start for a wal-push PostgreSQL runs per file.
 */
export interface LazyCommand {
  name: string;
  load(): Promise<Command>;
}

export interface Program {
  bin: string;
  version: string;
  description: string;
  commands: Array<Command | LazyCommand>;
}

async function loadCommand(c: Command | LazyCommand): Promise<Command> {
  if (!('load' in c)) return c;
  const cmd = await c.load();
  if (cmd.name !== c.name) throw new TandemError('internal', 'COMMAND_NAME', `command "${c.name}" loaded a module for "${cmd.name}"`);
  return cmd;
}

async function programHelp(p: Program): Promise<string> {
  const commands = await Promise.all(p.commands.map(loadCommand));
  const width = Math.max(...commands.map((c) => c.name.length));
  const lines = commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`);
  return `${p.bin} ${p.version}: ${p.description}\n\nUsage: ${p.bin} <command> [options]\n\nCommands:\n${lines.join('\n')}\n\nRun \`${p.bin} <command> --help\` for a command's options.\nEnvironment: TANDEM_LOG_LEVEL (info), TANDEM_LOG_FORMAT (auto: human on a terminal, else json; json; human), TANDEM_STATE_DIR.\nA command stopped by Ctrl-C or SIGTERM cleans up, says what it cleaned up, and exits 130 (SIGINT) or 143 (SIGTERM).\n`;
}

export function formatError(bin: string, err: unknown): string {
  // Not a failure: one line, what was cleaned up.
  if (err instanceof Interrupted) return `${bin}: ${err.message}`;
  if (err instanceof TandemError) {
    let text = `${bin}: error: ${err.message}`;
    if (err.hint) text += `\n  hint: ${err.hint}`;
    return text;
  }
  return `${bin}: internal error: ${describeError(err)}\n  this is a bug in tandem; the log above has details`;
}

export async function runCli(p: Program, argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(await programHelp(p));
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-V') {
    process.stdout.write(`${p.version}\n`);
    return 0;
  }
  const entry = p.commands.find((c) => c.name === name);
  if (!entry) {
    process.stderr.write(`${p.bin}: unknown command "${name}"\n\n${await programHelp(p)}`);
    return 2;
  }
  const cmd = await loadCommand(entry);
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${cmd.help.trimEnd()}\n`);
    return 0;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options: cmd.options, allowPositionals: true, strict: true });
  } catch (err) {
    const own = cmd.reportError?.(usageError(p, cmd, describeError(err)), rest, stdoutLine);
    if (own !== undefined) return own;
    process.stderr.write(`${p.bin} ${cmd.name}: ${describeError(err)}\n  see \`${p.bin} ${cmd.name} --help\`\n`);
    return 2;
  }
  const pos = cmd.positionals ?? { min: 0, max: 0 };
  if (parsed.positionals.length < pos.min || parsed.positionals.length > pos.max) {
    const want = pos.min === pos.max ? `${pos.min}` : `${pos.min} to ${pos.max}`;
    const own = cmd.reportError?.(usageError(p, cmd, `expected ${want} argument(s), got ${parsed.positionals.length}`), rest, stdoutLine);
    if (own !== undefined) return own;
    process.stderr.write(
      `${p.bin} ${cmd.name}: expected ${want} argument(s), got ${parsed.positionals.length}\n  see \`${p.bin} ${cmd.name} --help\`\n`,
    );
    return 2;
  }
  let logger: Logger;
  try {
    logger = createLogger({ name: p.bin }); // TANDEM_LOG_LEVEL, TANDEM_LOG_FORMAT: a bad value is a usage error
  } catch (err) {
    const own = cmd.reportError?.(err, rest, stdoutLine);
    if (own !== undefined) return own;
    process.stderr.write(`${formatError(p.bin, err)}\n`);
    return err instanceof TandemError ? err.exitCode : 70;
  }
  try {
    const code = await cmd.run({
      values: parsed.values,
      positionals: parsed.positionals,
      logger: logger.child({ command: cmd.name }),
      out: (line) => process.stdout.write(`${line}\n`),
    });
    return code ?? 0;
  } catch (err) {
    if (err instanceof Interrupted) {
      logger.debug({ err, signal: err.signal }, 'command interrupted');
    } else if (err instanceof TandemError) {
      logger.debug({ err, code: err.code, kind: err.kind }, 'command failed');
    } else {
      logger.error({ err }, 'unexpected failure');
    }
    clearStatusLine();
    const own = cmd.reportError?.(err, rest, stdoutLine);
    if (own !== undefined) return own;
    process.stderr.write(`${formatError(p.bin, err)}\n`);
    return err instanceof TandemError ? err.exitCode : 70;
  } finally {
    clearStatusLine();
  }
}

/**
 * What the commands' first line adds to GLIBC_TUNABLES for their own process (`#!/usr/bin/env -S
 * GLIBC_TUNABLES=glibc.malloc.hugetlb=1:${GLIBC_TUNABLES} node`): malloc asks for transparent huge
 * pages (2 MiB) for its memory where the kernel offers them on request (THP "madvise", Debian's
 * default). Memory a process touches for the first time costs a fault per page: on the virtual
 * machines measured, 0.7-0.9 ms per MiB in 4 KiB pages against 0.13-0.15 ms in 2 MiB pages, and an
 * apply's buffers (packs, decrypted chunks, tar blocks) are mostly that. A kernel without THP, or a
 * libc without the tunable (before glibc 2.35, musl), ignores it.
 */
export const OWN_TUNABLES = 'glibc.malloc.hugetlb=1:';
/**
 * tandem-primary's first line fixes malloc's mmap threshold at 1 MiB as well. Left to itself glibc
 * raises the threshold to the size of the largest mapped block freed (a pack's 12 MiB arena), after
 * which such blocks come from the heap, where they and the small buffers between them fragment it
 * in huge pages: the backup of a 1% rewrite of 100,000 small files peaked at 187-200 MiB, 164-168
 * with the threshold fixed, as fast (the backups of the bench trees and database the same or
 * faster). Not for tandem-standby: its full apply of 500 MB of media was slower with it.
 */
export const PRIMARY_OWN_TUNABLES = 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576:';

/**
 * GLIBC_TUNABLES as it was before the first line added to it, for the commands this one starts
 * (pg_restore, zstd, a restart command, the site itself): they get the operator's environment,
 * not the agent's tuning. undefined: the variable was not set.
 */
export function operatorTunables(v: string | undefined): string | undefined {
  if (v === undefined) return v;
  const own = [PRIMARY_OWN_TUNABLES, OWN_TUNABLES].find((t) => v.startsWith(t));
  if (own === undefined) return v;
  const rest = v.slice(own.length);
  return rest === '' ? undefined : rest;
}

/** Entry point helper: run, flush, exit with the code. */
export function main(p: Program): void {
  const tunables = operatorTunables(process.env.GLIBC_TUNABLES);
  if (tunables === undefined) delete process.env.GLIBC_TUNABLES;
  else process.env.GLIBC_TUNABLES = tunables;
  // The AWS SDK prints a 9-line NodeVersionSupportWarning to stderr on every S3 run under Node 20,
  // burying the agent's one-line error (and filling cron mail). Node 20 is a supported target;
  // an operator who wants the warning back can set the variable to "false".
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  boundHeapGrowth();
  let settled = false;
  // A command waiting on something that can never happen (a promise nobody settles) ends with an
  // empty event loop, which Node reports as exit status 0: never let that pass for success.
  process.once('beforeExit', () => {
    if (settled) return;
    process.stderr.write(`${p.bin}: internal error: the command stopped before it finished (an operation never completed)\n  this is a bug in tandem; the log above shows how far it got\n`);
    process.exitCode = 70;
  });
  runCli(p, process.argv.slice(2)).then(
    (code) => {
      settled = true;
      exitWhenIdle(p.bin, code);
    },
    (err: unknown) => {
      settled = true;
      process.stderr.write(`${formatError(p.bin, err)}\n`);
      exitWhenIdle(p.bin, 70);
    },
  );
}

/**
 * The agents' JS heap holds little that lives (~20 MB while 100,000 files are backed up: the blob
 * table and the packs' bytes are outside it) but makes much that dies after a while (each file's
 * entry waits for its pack to be stored, so it outlives the young generation). V8 lets the old
 * generation grow to up to four times what was live at the last full collection before it collects
 * again: ~70 MB of heap there, most of it garbage. Three times is set here: that backup peaks ~25 MB
 * lower, and a backup of large files (few objects, many buffers) still runs ~4 full collections, not
 * the ~40 that twice what is live costs it. TANDEM_HEAP_GROWTH=v8 leaves V8's own policy; a number
 * sets the percentage (100: twice what is live, for a machine short of memory, at the cost of time).
 */
function boundHeapGrowth(): void {
  if (process.env.TANDEM_HEAP_GROWTH === 'v8') return;
  try {
    setFlagsFromString(`--heap-growing-percent=${/^\d+$/.test(process.env.TANDEM_HEAP_GROWTH ?? '') ? process.env.TANDEM_HEAP_GROWTH : 200}`);
  } catch {
    // A runtime without the flag: V8's own policy.
  }
}

/**
 * For a command about to make an object or a line for each of very many entries (an apply of an
 * index of tens of thousands of files): the heap is collected when it reaches twice what lives,
 * not three times, from now on in this process. Per-entry garbage, not buffers, is then what grows
 * the heap, and the extra collections are cheap: the first apply of 100,000 small files peaked at
 * 202-208 MiB with three times and 160-167 MiB with twice, in about the same time (a tree of large
 * files, whose buffers make the collections many, stays with three times). Left alone when
 * TANDEM_HEAP_GROWTH is set.
 */
export function tightenHeapGrowth(): void {
  if (process.env.TANDEM_HEAP_GROWTH !== undefined && process.env.TANDEM_HEAP_GROWTH !== '') return;
  try {
    setFlagsFromString('--heap-growing-percent=100');
  } catch {
    // A runtime without the flag: as it was.
  }
}

/** How long a finished command's process may stay alive before it is ended with the command's exit code. */
const EXIT_GRACE_MS = 5_000;

/**
 * The command has finished and closed what it opened: the process ends when the event loop is empty,
 * with `code`. Should something still hold the loop (a leaked handle, a child process a library
 * failed to reap, an apply that ignored even its abort and is left to its journal), the process
 * must end all the same: the unref'd timer fires only in that case. This is the one place that
 * calls process.exit.
 */
function exitWhenIdle(bin: string, code: number): void {
  process.exitCode = code;
  setTimeout(() => {
    process.stderr.write(`${bin}: still running ${EXIT_GRACE_MS / 1000} s after the command finished (an open handle or child process); exiting anyway\n`);
    process.exit(code);
  }, EXIT_GRACE_MS).unref();
}

export function requireString(values: CommandContext['values'], key: string, cmd: string): string {
  const v = values[key];
  if (typeof v !== 'string' || v === '') {
    throw new TandemError('config', 'MISSING_OPTION', `${cmd}: --${key} is required`, { hint: `see \`${cmd} --help\`` });
  }
  return v;
}
