/**
 * Running the built CLIs the way an operator at a terminal does: stdin, stdout and stderr on a
 * pseudo-terminal (util-linux `script`), so that `isTTY` is true and what the agents draw for a
 * person (progress lines, the human log format) can be asserted on. stdout and stderr arrive
 * merged, as on a screen.
 */
import { spawn } from 'node:child_process';
import { requireCommands } from './site.js';

export interface TerminalResult {
  code: number | null;
  /** Everything written to the terminal, control sequences included, "\r\n" line ends. */
  output: string;
}

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** `argv` (argv[0] the program) on a pseudo-terminal; env added to this process's, minus TANDEM_LOG_FORMAT unless given. */
export function runInTerminal(argv: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<TerminalResult> {
  requireCommands(['script']);
  const env: NodeJS.ProcessEnv = { ...process.env, TANDEM_LOG_FORMAT: undefined, TANDEM_LOG_LEVEL: 'info', ...opts.env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  return new Promise((resolve, reject) => {
    // -q quiet, -f flush at once, -e the command's exit status, -c the command; no typescript file.
    const child = spawn('script', ['-qfec', argv.map(quote).join(' '), '/dev/null'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => out.push(c));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output: Buffer.concat(out).toString('utf8') });
    });
  });
}

/** Without colours (ESC [ ... m), the rest of the control sequences kept. */
export const withoutColours = (s: string): string => s.replace(/\x1b\[[0-9;]*m/g, '');

/**
 * The lines a person reads once the terminal settled: each line's text after its last carriage
 * return and line erase (what a redrawn progress line left), colours removed, blank lines dropped.
 */
export function screenLines(output: string): string[] {
  return withoutColours(output)
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .map((l) => l.split(/\r\x1b\[K|\r/).at(-1) ?? '')
    .filter((l) => l.trim() !== '');
}
