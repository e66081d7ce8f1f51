/**
 * At most `max` tasks at once, the others waiting in the order they came: how one agent serving
 * several sites keeps its backups (or applies) from all running at the same moment.
 */
export class Limiter {
  private running = 0;
  private readonly queue: Array<() => void> = [];

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`a limit of ${max}: expected a whole number of at least 1`);
  }

  get active(): number {
    return this.running;
  }

  get waiting(): number {
    return this.queue.length;
  }

  /** Runs `fn` when a slot is free; `onWait` is told when it has to wait first. */
  async run<T>(fn: () => Promise<T>, onWait?: (ahead: number) => void): Promise<T> {
    if (this.running >= this.max) {
      onWait?.(this.queue.length + 1);
      await new Promise<void>((resolve) => this.queue.push(resolve));
    } else {
      this.running++;
    }
    try {
      return await fn();
    } finally {
      const next = this.queue.shift();
      if (next !== undefined) next(); // the slot passes on
      else this.running--;
    }
  }
}
