import { statSync } from 'node:fs';
import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { layout, type Logger } from '@tandem/shared';

/**
 * For a directory filestore: wakes the standby the moment `<root>/<site>/latest.json` is written,
 * whoever wrote it (a primary daemon, a cron-driven `tandem-primary backup`, a copy by hand), so a
 * set is applied at once even without the push channel. Only a hint, like the push: the wake runs
 * the usual conditional read of latest.json, and polling goes on regardless (a network file system
 * may deliver no change events at all for writes made on another server).
 *
 * Watches the filestore root to depth 1 and ignores everything but the site directory and its
 * latest.json: no watch on the sets, however many there are.
 */
export class LatestWatcher {
  readonly #root: string;
  readonly #siteDir: string;
  readonly #latest: string;
  readonly #log: Logger;
  readonly #onChange: () => void;
  #watcher: FSWatcher | null = null;
  #starting: Promise<boolean> | null = null;
  #failed = false;

  constructor(opts: { root: string; site: string; logger: Logger; onChange: () => void }) {
    this.#root = path.resolve(opts.root);
    this.#latest = path.join(this.#root, layout.latest(opts.site));
    this.#siteDir = path.dirname(this.#latest);
    this.#log = opts.logger;
    this.#onChange = opts.onChange;
  }

  get watching(): boolean {
    return this.#watcher !== null;
  }

  /**
   * Starts watching once the filestore directory exists; true when watching. Cheap to call again
   * (each poll does, until it exists). After a watcher error it gives up: polling only.
   */
  start(): Promise<boolean> {
    if (this.#watcher !== null) return Promise.resolve(true);
    if (this.#failed) return Promise.resolve(false);
    if (!isDir(this.#root)) return Promise.resolve(false);
    this.#starting ??= this.#start().finally(() => (this.#starting = null));
    return this.#starting;
  }

  async #start(): Promise<boolean> {
    const keep = new Set([this.#root, this.#siteDir, this.#latest]);
    const w = watch(this.#root, { ignoreInitial: true, depth: 1, ignored: (p: string) => !keep.has(path.resolve(p)) });
    w.on('all', (event, p) => {
      if ((event === 'add' || event === 'change') && path.resolve(p) === this.#latest) this.#onChange();
    });
    w.on('error', (err) => {
      // E.g. ENOSPC: the system's inotify watch limit (fs.inotify.max_user_watches) is reached.
      this.#log.warn({ err, path: this.#latest }, 'watching latest.json failed: polling only');
      this.#failed = true;
      void this.stop();
    });
    await new Promise<void>((resolve) => w.once('ready', () => resolve()));
    if (this.#failed) return false;
    this.#watcher = w;
    this.#log.info({ path: this.#latest }, 'watching latest.json in the filestore directory: a new set is applied as soon as it is committed');
    return true;
  }

  async stop(): Promise<void> {
    const w = this.#watcher;
    this.#watcher = null;
    await w?.close().catch(() => undefined);
  }
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
