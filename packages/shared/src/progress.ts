import { Transform, type TransformCallback } from 'node:stream';
import { formatDuration } from './duration.js';
import { logFormat } from './logger.js';
import { formatBytes, formatRate } from './size.js';
import { clearStatusLine, showStatusLine } from './status-line.js';

/**
 * Progress of the artifacts a run moves (a backup's uploads, an apply's downloads), for a person at
 * a terminal: one line on stderr, redrawn in place about four times a second, only when stderr is
 * a terminal and the log format is the human one; everywhere else the sink does nothing. A log
 * line written meanwhile goes above the progress line, which is drawn again under it
 * (status-line.ts). The daemon reports its backup's progress the same way to a `tandem-primary backup`
 * waiting on it (snapshots over POST /v1/backup), and the client draws them on its own terminal.
 */

/** One artifact under way, as drawn or sent to a client. */
export interface ArtifactProgress {
  name: string;
  bytes: number;
  /** Its size when known before it is moved (an apply: the signed stored size), else null. */
  total: number | null;
  /** Seconds since it started. */
  seconds: number;
}

export interface ProgressMeter {
  add(bytes: number): void;
  /** The artifact is done (or failed): it leaves the line. Idempotent. */
  end(): void;
}

/** Where a run reports the bytes it moves. */
export interface ProgressSink {
  begin(name: string, total?: number | null): ProgressMeter;
}

const NO_METER: ProgressMeter = { add: () => undefined, end: () => undefined };

/** Reports nowhere: the default of every run, and what a terminal sink is when there is no terminal. */
export const noProgress: ProgressSink = { begin: () => NO_METER };

/** A pass-through stream that counts the bytes flowing through it into `meter`, and ends it when it closes. */
export function meterStream(meter: ProgressMeter): Transform {
  const t = new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      meter.add(chunk.length);
      cb(null, chunk);
    },
  });
  t.once('close', () => meter.end());
  return t;
}

interface Tracked {
  name: string;
  bytes: number;
  total: number | null;
  started: number;
}

/** The artifacts under way; read as snapshots (by a terminal line, or the daemon for its client). */
export class ProgressTracker implements ProgressSink {
  private readonly active = new Map<number, Tracked>();
  private next = 0;
  private readonly listeners = new Set<() => void>();

  begin(name: string, total: number | null = null): ProgressMeter {
    const id = this.next++;
    const t: Tracked = { name, bytes: 0, total, started: performance.now() };
    this.active.set(id, t);
    this.changed();
    return {
      add: (n) => {
        t.bytes += n;
      },
      end: () => {
        if (this.active.delete(id)) this.changed();
      },
    };
  }

  snapshot(): ArtifactProgress[] {
    const now = performance.now();
    return [...this.active.values()].map((t) => ({ name: t.name, bytes: t.bytes, total: t.total, seconds: Math.round(now - t.started) / 1000 }));
  }

  /** Called when an artifact begins or ends (byte counts change too often: poll snapshot() for them). */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }
}

/** One artifact as the line shows it: "db 12.3 MiB of 40.0 MiB 31% 4.1 MiB/s ETA 7s". */
export function describeProgress(p: ArtifactProgress): string {
  const rate = p.seconds >= 0.5 ? p.bytes / p.seconds : null;
  let text = `${p.name} ${formatBytes(p.bytes)}`;
  if (p.total !== null && p.total > 0) text += ` of ${formatBytes(p.total)} ${Math.min(100, Math.floor((p.bytes / p.total) * 100))}%`;
  if (rate !== null) text += ` ${formatRate(rate)}`;
  if (rate !== null && rate > 0 && p.total !== null && p.total > p.bytes) text += ` ETA ${formatDuration(((p.total - p.bytes) / rate) * 1000)}`;
  return text;
}

/** The line for a snapshot: "<title>: <artifact> | <artifact>". */
export const progressLine = (title: string, artifacts: ArtifactProgress[]): string => `${title}: ${artifacts.map(describeProgress).join(' | ')}`;

/** Whether progress is drawn: stderr is a terminal and the logs are in the human format. */
export const progressEnabled = (): boolean => process.stderr.isTTY === true && logFormat() === 'human';

export interface TerminalProgress extends ProgressSink {
  /** Draws snapshots made elsewhere (the daemon's backup, for `tandem-primary backup`). */
  show(artifacts: ArtifactProgress[]): void;
  /** Stops drawing and removes the line. */
  close(): void;
}

const REDRAW_MS = 250;

/**
 * The progress line of a command, titled `title` ("backup", "apply"): draws the artifacts begun
 * through it (or the snapshots given to show()) until close(). A no-op without a terminal.
 */
export function terminalProgress(title: string, opts: { enabled?: boolean } = {}): TerminalProgress {
  if (!(opts.enabled ?? progressEnabled())) return { ...noProgress, show: () => undefined, close: () => undefined };
  const tracker = new ProgressTracker();
  let fed: ArtifactProgress[] | null = null;
  let closed = false;
  const draw = () => {
    if (closed) return;
    const artifacts = fed ?? tracker.snapshot();
    if (artifacts.length === 0) clearStatusLine();
    else showStatusLine(progressLine(title, artifacts));
  };
  const timer = setInterval(draw, REDRAW_MS);
  timer.unref();
  const off = tracker.onChange(draw);
  return {
    begin: (name, total) => tracker.begin(name, total),
    show: (artifacts) => {
      fed = artifacts;
    },
    close: () => {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      off();
      clearStatusLine();
    },
  };
}
