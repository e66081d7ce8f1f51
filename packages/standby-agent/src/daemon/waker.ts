/**
 * The daemon loop's sleep between two rounds, cut short by a wake: a push, a change event of
 * latest.json, a stop. A wake while the loop is busy is kept for the next sleep, which then returns
 * at once: a push that arrives during an apply queues one re-check.
 */
export class Waker {
  #reason: string | null = null;
  #resolve: (() => void) | null = null;
  #timer: NodeJS.Timeout | null = null;

  wake(reason: string): void {
    this.#reason ??= reason;
    this.#resolve?.();
  }

  /**
   * Sleeps `ms` unless a wake came meanwhile (or `skip`, e.g. stopping); resolves with the reason it
   * woke ('timer' when the time ran out). `onSleep` learns when the sleep will end, if it sleeps.
   */
  async sleep(ms: number, skip: boolean, onSleep?: (until: Date) => void): Promise<string> {
    if (this.#reason === null && !skip) {
      onSleep?.(new Date(Date.now() + ms));
      await new Promise<void>((resolve) => {
        this.#resolve = resolve;
        this.#timer = setTimeout(() => {
          this.#reason ??= 'timer';
          resolve();
        }, ms);
      });
      if (this.#timer) clearTimeout(this.#timer);
      this.#timer = null;
      this.#resolve = null;
    }
    const r = this.#reason ?? 'timer';
    this.#reason = null;
    return r;
  }
}
