/**
 * Small stream helpers: a hashing pass-through, and child processes as streams whose success is
 * decided by the exit code, not by the end of their output.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Duplex, Transform, type TransformCallback } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { TandemError } from './errors.js';

/** Pass-through that computes the SHA-256 and the byte count of everything that flows through. */
export class HashCounter extends Transform {
  readonly #hash = createHash('sha256');
  #hex: string | undefined;
  #bytes = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#hash.update(chunk);
    this.#bytes += chunk.length;
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.#hex = this.#hash.digest('hex');
    cb();
  }

  /** Bytes seen so far (final once the stream has ended). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Lower-case hex SHA-256; only after the writable side has finished. */
  digest(): string {
    if (this.#hex === undefined) {
      throw new TandemError('internal', 'HASH_NOT_FINISHED', 'HashCounter.digest() called before the stream ended');
    }
    return this.#hex;
  }
}

export interface SpawnStreamOptions {
  /** Names the step in error messages, e.g. "pg_dump of site example". */
  label: string;
  env?: NodeJS.ProcessEnv;
  /** Debian package that provides the binary, for the MISSING_BINARY error (default: the command). */
  package?: string;
  /** Hint attached to CHILD_FAILED errors (what a failure of this step usually means). */
  hint?: string;
  /**
   * Non-zero exit codes that still mean complete output, with a warning (GNU tar's 1: "some files
   * changed while being read", normal on a live site). The stream emits 'child-warning' with the
   * stderr text.
   */
  warningExitCodes?: number[];
  /**
   * An open file descriptor for the child's stdout: its output goes straight to that file and never
   * crosses this process (the readable side then ends empty, once the child exited with 0). The
   * caller owns the descriptor and closes it after the stream ended.
   */
  stdoutFd?: number;
}

const STDERR_TAIL_BYTES = 8 * 1024;
const KILL_GRACE_MS = 5_000;
const HIGH_WATER_MARK = 128 * 1024;

/**
 * A child process as a Duplex: writes go to its stdin, its stdout is the readable side.
 *
 * The readable side ends only after the child exited with code 0 (and, for a filter, after all
 * of our input reached it), so a consumer never mistakes the output of a failing process (pg_dump
 * losing its connection half-way) for a complete stream. Any other exit, a signal, or a child that
 * quit while we were still handing it input destroys the stream with a CHILD_FAILED error carrying
 * the tail of stderr. (Bytes already in the pipe buffer when a child exits 0 cannot be checked.)
 * EPIPE on stdin is never reported by itself: the exit status is the real story.
 */
export class ChildStream extends Duplex {
  readonly pid: number | undefined;
  readonly #child: ChildProcess;
  readonly #command: string;
  readonly #opts: SpawnStreamOptions;
  #stderr: Buffer[] = [];
  #stderrBytes = 0;
  #pendingWrite: (() => void) | undefined;
  #lostInput = false;
  #exited = false;
  #exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** Writes handed to stdin whose fate (reached the pipe, or failed) is not known yet. */
  #inflight = 0;
  #inputDone = false;
  #ended = false;

  constructor(command: string, args: readonly string[], opts: SpawnStreamOptions, withStdin: boolean) {
    super({ readableHighWaterMark: HIGH_WATER_MARK, writableHighWaterMark: HIGH_WATER_MARK });
    this.#command = command;
    this.#opts = opts;
    const child = spawn(command, args, {
      stdio: [withStdin ? 'pipe' : 'ignore', opts.stdoutFd ?? 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    });
    this.#child = child;
    this.pid = child.pid;

    const stdout = child.stdout;
    stdout?.on('data', (chunk: Buffer) => {
      if (!this.destroyed && !this.push(chunk)) stdout.pause();
    });
    child.stderr!.on('data', (chunk: Buffer) => this.#keepStderr(chunk));
    // EPIPE/ECONNRESET when the child exits early: remember that input was lost and let the exit
    // status decide what to report (see #settle).
    child.stdin?.on('error', () => {
      this.#lostInput = true;
      this.#releaseWrite();
    });

    child.on('error', (err: NodeJS.ErrnoException) => this.#onSpawnError(err));
    child.on('close', (code, signal) => this.#onClose(code, signal));
    if (!withStdin) this.end();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const stdin = this.#child.stdin;
    if (!stdin || stdin.destroyed || this.#exited) {
      // The child is gone or going: drop the data; its exit status will explain why.
      if (chunk.length > 0) this.#lostInput = true;
      cb();
      this.#settle();
      return;
    }
    this.#inflight++;
    // Node destroys stdin when the child exits; writes still queued then fail here.
    const written = (err?: Error | null) => {
      this.#inflight--;
      if (err) this.#lostInput = true;
      this.#settle();
    };
    if (stdin.write(chunk, written)) {
      cb();
    } else {
      this.#pendingWrite = cb;
      stdin.once('drain', () => this.#releaseWrite());
    }
  }

  override _final(cb: (err?: Error | null) => void): void {
    const stdin = this.#child.stdin;
    if (stdin && !stdin.destroyed) stdin.end();
    this.#inputDone = true;
    cb();
    this.#settle();
  }

  override _read(): void {
    this.#child.stdout?.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#releaseWrite();
    if (!this.#exited) {
      this.#child.stdin?.destroy();
      this.#child.kill('SIGTERM');
      // A child that ignores SIGTERM must not outlive us.
      const timer = setTimeout(() => {
        if (!this.#exited) this.#child.kill('SIGKILL');
      }, KILL_GRACE_MS);
      timer.unref();
    }
    cb(err);
  }

  #releaseWrite(): void {
    const cb = this.#pendingWrite;
    this.#pendingWrite = undefined;
    cb?.();
  }

  #keepStderr(chunk: Buffer): void {
    this.#stderr.push(chunk);
    this.#stderrBytes += chunk.length;
    if (this.#stderrBytes > 2 * STDERR_TAIL_BYTES) {
      const all = Buffer.concat(this.#stderr);
      this.#stderr = [all.subarray(all.length - STDERR_TAIL_BYTES)];
      this.#stderrBytes = STDERR_TAIL_BYTES;
    }
  }

  /** How the child ended (undefined while it runs): e.g. a signal that tells why it failed. */
  get exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.#exit;
  }

  /** Last ~8 KiB of the child's stderr, trimmed. */
  get stderrTail(): string {
    const all = Buffer.concat(this.#stderr);
    return all.subarray(Math.max(0, all.length - STDERR_TAIL_BYTES)).toString('utf8').trim();
  }

  #onSpawnError(err: NodeJS.ErrnoException): void {
    this.#exited = true; // nothing to kill
    if (this.destroyed) return;
    const { label, package: pkg = this.#command } = this.#opts;
    if (err.code === 'ENOENT') {
      this.destroy(
        new TandemError(
          'config',
          'MISSING_BINARY',
          `${label}: the program '${this.#command}' was not found on PATH (Debian package '${pkg}')`,
          { hint: `install it: apt-get install ${pkg}`, cause: err },
        ),
      );
    } else {
      this.destroy(
        new TandemError('external', 'CHILD_FAILED', `${label}: could not start '${this.#command}': ${err.message}`, {
          hint: this.#opts.hint,
          cause: err,
        }),
      );
    }
  }

  #onClose(code: number | null, signal: NodeJS.Signals | null): void {
    this.#exited = true;
    this.#exit = { code, signal };
    this.#releaseWrite();
    this.#settle();
  }

  /** Decide the outcome once the exit status (and, for success, the fate of our input) is known. */
  #settle(): void {
    if (this.destroyed || this.#ended || !this.#exit) return;
    const { code, signal } = this.#exit;
    let how: string;
    const warned = code !== null && code !== 0 && (this.#opts.warningExitCodes ?? []).includes(code);
    if ((code === 0 || warned) && !this.#lostInput) {
      // Exit 0 before all our input was handed over: success only if no more input comes.
      if (!this.#inputDone || this.#inflight > 0) return;
      this.#ended = true;
      if (warned) this.emit('child-warning', `${this.#command} exited with code ${code}: ${this.stderrTail}`);
      this.push(null); // only now is the output known to be complete
      return;
    } else if (code === 0 || warned) {
      how = 'exited before reading all of its input';
    } else {
      how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    }
    const stderr = this.stderrTail;
    this.destroy(
      new TandemError(
        'external',
        'CHILD_FAILED',
        `${this.#opts.label}: ${this.#command} ${how}${stderr ? `: ${stderr}` : ' (no stderr output)'}`,
        { hint: this.#opts.hint },
      ),
    );
  }
}

/** A filter process (stdin → stdout) for use inside `stream/promises.pipeline`. */
export function spawnFilter(command: string, args: string[], opts: SpawnStreamOptions): ChildStream {
  return new ChildStream(command, args, opts, true);
}

/**
 * A producer process (no stdin), e.g. pg_dump: a Readable (its writable side is already ended).
 * Same exit-code semantics as spawnFilter.
 */
export function spawnSource(command: string, args: string[], opts: SpawnStreamOptions): ChildStream {
  return new ChildStream(command, args, opts, false);
}

/**
 * The lines of a UTF-8 text stream, without their newlines (a last line without one too). A line
 * still longer than `maxLine` characters when a piece has been split is refused by `tooLong`,
 * which must throw, before more is read: a hostile stream cannot make one line of any size.
 */
export async function* textLines(source: AsyncIterable<Buffer | string>, maxLine = Number.POSITIVE_INFINITY, tooLong: () => never = () => {
  throw new TandemError('integrity', 'LINE_TOO_LONG', `a line longer than ${maxLine} characters`);
}): AsyncGenerator<string> {
  const decoder = new StringDecoder('utf8');
  let rest = '';
  for await (const piece of source) {
    rest += typeof piece === 'string' ? piece : decoder.write(piece);
    let from = 0;
    let nl: number;
    while ((nl = rest.indexOf('\n', from)) >= 0) {
      yield rest.slice(from, nl);
      from = nl + 1;
    }
    rest = rest.slice(from);
    if (rest.length > maxLine) tooLong();
  }
  rest += decoder.end();
  if (rest !== '') yield rest;
}
