/**
 * What a daemon has seen lately, for its status page (GET /status/history): a ring buffer of
 * samples, taken once a minute and whenever something that matters changed, that keeps the last
 * 24 h; and a short list of events (sets applied, backups run). In memory only, and small (a few
 * thousand samples of a few numbers each at most): a restarted daemon starts afresh.
 */
export const HISTORY_WINDOW_MS = 24 * 3_600_000;
export const SAMPLE_EVERY_MS = 60_000;

/** One sample: `t` is its time (ms since the epoch). */
export type Sampled<S> = S & { t: number };

export interface SampleRingOptions {
  /** How far back samples are kept (default 24 h). */
  windowMs?: number;
  /** At most this many samples (default: one a minute over the window, twice over). */
  capacity?: number;
  now?: () => number;
}

export class SampleRing<S extends object> {
  readonly windowMs: number;
  readonly capacity: number;
  readonly #buf: Array<Sampled<S> | undefined>;
  readonly #now: () => number;
  #start = 0;
  #size = 0;
  #lastKey: string | null = null;

  /** `key`: what counts as a change; a sample whose key differs from the last one's is always taken. */
  constructor(
    private readonly key: (s: S) => string,
    opts: SampleRingOptions = {},
  ) {
    this.windowMs = opts.windowMs ?? HISTORY_WINDOW_MS;
    this.capacity = opts.capacity ?? Math.max(16, Math.ceil((2 * this.windowMs) / SAMPLE_EVERY_MS));
    this.#buf = new Array<Sampled<S> | undefined>(this.capacity);
    this.#now = opts.now ?? Date.now;
  }

  get size(): number {
    this.#prune(this.#now());
    return this.#size;
  }

  /**
   * Takes the sample when `force` (the minute timer) or when it differs from the last one (its key);
   * returns whether it was taken. Past the capacity the oldest sample goes.
   */
  offer(s: S, force = false): boolean {
    const k = this.key(s);
    if (!force && k === this.#lastKey) return false;
    const t = this.#now();
    this.#prune(t);
    this.#lastKey = k;
    const at = (this.#start + this.#size) % this.capacity;
    this.#buf[at] = { ...s, t };
    if (this.#size < this.capacity) this.#size++;
    else this.#start = (this.#start + 1) % this.capacity;
    return true;
  }

  /** The samples of the window, oldest first. */
  list(): Array<Sampled<S>> {
    this.#prune(this.#now());
    const out: Array<Sampled<S>> = [];
    for (let i = 0; i < this.#size; i++) out.push(this.#buf[(this.#start + i) % this.capacity]!);
    return out;
  }

  #prune(now: number): void {
    const from = now - this.windowMs;
    while (this.#size > 0 && this.#buf[this.#start]!.t < from) {
      this.#buf[this.#start] = undefined;
      this.#start = (this.#start + 1) % this.capacity;
      this.#size--;
    }
  }
}

/** The newest `max` events, newest first; an event with the key of one already listed replaces it. */
export class EventList<E> {
  #items: E[] = [];

  constructor(
    private readonly max: number,
    private readonly key: (e: E) => string,
  ) {}

  add(e: E): void {
    const k = this.key(e);
    this.#items = [e, ...this.#items.filter((x) => this.key(x) !== k)].slice(0, this.max);
  }

  has(key: string): boolean {
    return this.#items.some((x) => this.key(x) === key);
  }

  list(): E[] {
    return [...this.#items];
  }
}

/** Calls `fn` every `everyMs` (default a minute) without keeping the process alive. */
export function startSampling(fn: () => void, everyMs = SAMPLE_EVERY_MS): { stop(): void } {
  const timer = setInterval(fn, everyMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
