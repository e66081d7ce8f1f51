import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { RESERVED_NAME, isTandemError, type Logger } from '@tandem/shared';

/**
 * What the primary daemon sees change in paths.files, settled: a path is handed on once it has
 * stayed unchanged for `settleMs` (chokidar's awaitWriteFinish: a file still being written is not
 * taken half way), in batches (a burst of thousands of files from an unzipped upload becomes a few
 * deltas, not thousands). Added and changed files, directories and symlinks; removals are not
 * carried (they wait for the next set). A batch the writer cannot take now (a backup running:
 * "busy") or that failed is tried again later, merged with what came meanwhile.
 *
 * When the OS limit on watches is reached (ENOSPC from inotify, fs.inotify.max_user_watches), the
 * tree is scanned every `scanIntervalMs` instead, a path handed on when two scans in a row saw the
 * same size, mtime and inode for it; the log says so once, and `mode` says so in /status.
 */
export interface FilesWatchOptions {
  dir: string;
  settleMs: number;
  scanIntervalMs: number;
  logger: Logger;
  /** Commits a batch (relative paths); rejects with kind 'busy' to be retried, anything else is logged and retried. */
  onBatch: (paths: string[]) => Promise<void>;
  /** Paths per batch. */
  batchSize?: number;
}

const RETRY_MS = 2_000;
const GATHER_MS = 200;

export class FilesWatcher {
  mode: 'watch' | 'scan' | 'stopped' = 'stopped';
  /** Paths seen settled, not committed yet. */
  readonly pending = new Set<string>();
  lastError: string | null = null;
  #watcher: FSWatcher | null = null;
  #timer: NodeJS.Timeout | null = null;
  #scanTimer: NodeJS.Timeout | null = null;
  #running: Promise<void> | null = null;
  #stopped = false;
  #lastScan: Map<string, string> | null = null;
  readonly #root: string;

  constructor(private readonly o: FilesWatchOptions) {
    this.#root = path.resolve(o.dir);
  }

  async start(): Promise<void> {
    this.#stopped = false;
    if (process.env.TANDEM_FAULT_WATCH_LIMIT === '1') {
      // Crash and fault tests only: behave as when inotify refuses another watch.
      this.#toScan(Object.assign(new Error('ENOSPC: System limit for number of file watchers reached (fault injected)'), { code: 'ENOSPC' }));
      return;
    }
    const w = watch(this.#root, {
      ignoreInitial: true,
      followSymlinks: false,
      awaitWriteFinish: { stabilityThreshold: this.o.settleMs, pollInterval: Math.min(100, this.o.settleMs) },
      ignored: (p: string) => RESERVED_NAME.test(path.basename(p)),
    });
    this.#watcher = w;
    w.on('all', (event, p) => {
      if (event === 'add' || event === 'change' || event === 'addDir') this.#seen(p);
      if (event === 'addDir') this.#recheck(p);
    });
    w.on('error', (err) => this.#toScan(err as Error));
    await new Promise<void>((resolve) => w.once('ready', () => resolve()));
    if (this.mode === 'stopped') this.mode = 'watch';
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.mode = 'stopped';
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#scanTimer) clearTimeout(this.#scanTimer);
    await this.#watcher?.close().catch(() => undefined);
    this.#watcher = null;
    await this.#running?.catch(() => undefined);
  }

  /**
   * A new directory is read again once what is written into it had time to settle: files created
   * in it between its creation and its watch starting (a burst under load) give no event of their
   * own. What is found and was not handed on with the same size, mtime and inode is handed on now.
   */
  #recheck(abs: string): void {
    const t = setTimeout(() => {
      void (async () => {
        const walk = async (dir: string): Promise<void> => {
          for (const d of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
            if (RESERVED_NAME.test(d.name)) continue;
            const full = path.join(dir, d.name);
            const rel = path.relative(this.#root, full).split(path.sep).join('/');
            const sig = await signature(full);
            if (sig !== null && this.#sent.get(rel) !== sig) this.#seen(full);
            if (d.isDirectory()) await walk(full);
          }
        };
        await walk(path.resolve(abs));
      })();
    }, this.o.settleMs * 2 + 1000);
    t.unref?.();
  }

  #seen(abs: string): void {
    const rel = path.relative(this.#root, path.resolve(abs)).split(path.sep).join('/');
    if (rel === '' || rel.startsWith('..')) return;
    this.pending.add(rel);
    this.#schedule(GATHER_MS);
  }

  #schedule(ms: number): void {
    if (this.#stopped || this.#timer || this.#running) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      // Paths that arrive while a drain is under way are taken by it, or by the next one, never left.
      this.#running ??= this.#drain().finally(() => {
        this.#running = null;
        if (this.pending.size > 0) this.#schedule(GATHER_MS);
      });
    }, ms);
    this.#timer.unref?.();
  }

  async #drain(): Promise<void> {
    const size = this.o.batchSize ?? 1000;
    while (this.pending.size > 0 && !this.#stopped) {
      const batch = [...this.pending].slice(0, size);
      for (const p of batch) this.pending.delete(p);
      try {
        const sigs = await Promise.all(batch.map((p) => signature(path.join(this.#root, p))));
        await this.o.onBatch(batch);
        if (this.#sent.size > 200_000) this.#sent.clear(); // bounded: at worst a recheck sends a file again
        batch.forEach((p, i) => (sigs[i] === null ? this.#sent.delete(p) : this.#sent.set(p, sigs[i]!)));
        this.lastError = null;
      } catch (err) {
        for (const p of batch) this.pending.add(p);
        if (!(isTandemError(err) && err.kind === 'busy')) {
          this.lastError = (err as Error).message;
          this.o.logger.warn({ err, paths: batch.length }, 'files delta failed: trying again shortly');
        }
        this.#schedule(RETRY_MS);
        return;
      }
    }
  }

  #toScan(err: Error): void {
    if (this.mode === 'scan' || this.#stopped) return;
    this.mode = 'scan';
    void this.#watcher?.close().catch(() => undefined);
    this.#watcher = null;
    const limit = (err as NodeJS.ErrnoException).code === 'ENOSPC';
    this.o.logger.warn(
      { err, scanIntervalSeconds: this.o.scanIntervalMs / 1000 },
      limit
        ? `the OS limit on file watches is reached (raise fs.inotify.max_user_watches): scanning ${this.#root} every ${this.o.scanIntervalMs / 1000} s instead`
        : `watching ${this.#root} failed: scanning it every ${this.o.scanIntervalMs / 1000} s instead`,
    );
    const tick = async () => {
      if (this.#stopped) return;
      try {
        await this.#scan();
      } catch (e) {
        this.o.logger.warn({ err: e }, 'scanning the files failed: trying again at the next scan');
      }
      if (!this.#stopped) {
        this.#scanTimer = setTimeout(() => void tick(), this.o.scanIntervalMs);
        this.#scanTimer.unref?.();
      }
    };
    void tick();
  }

  /** One scan: what changed since the scan before and stayed so for this one is handed on. */
  async #scan(): Promise<void> {
    const now = new Map<string, string>();
    const walk = async (rel: string): Promise<void> => {
      for (const d of await readdir(rel === '' ? this.#root : path.join(this.#root, rel), { withFileTypes: true }).catch(() => [])) {
        if (RESERVED_NAME.test(d.name)) continue;
        const p = rel === '' ? d.name : `${rel}/${d.name}`;
        const st = await lstat(path.join(this.#root, p), { bigint: true }).catch(() => null);
        if (st === null) continue;
        now.set(p, `${st.size}:${st.mtimeNs}:${st.ino}:${st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : 'f'}`);
        if (st.isDirectory()) await walk(p);
      }
    };
    await walk('');
    const before = this.#lastScan;
    const prev = this.#prevScan;
    this.#prevScan = before;
    this.#lastScan = now;
    if (before === null) return; // the first scan is the baseline: the set holds what it found
    for (const [p, sig] of now) {
      // Changed since the scan two back, and the same in the last two: settled.
      if (before.get(p) === sig && prev !== null && prev.get(p) !== sig) this.pending.add(p);
    }
    if (this.pending.size > 0) this.#schedule(0);
  }

  #prevScan: Map<string, string> | null = null;
  /** What was handed on, by path: its size, mtime and inode then (a recheck skips what did not change). */
  readonly #sent = new Map<string, string>();
}

async function signature(full: string): Promise<string | null> {
  const st = await lstat(full, { bigint: true }).catch(() => null);
  return st === null ? null : `${st.size}:${st.mtimeNs}:${st.ino}`;
}
