/**
 * What a follower's `?after=` reads wait for: the end of the poller's next
 * tick. The poller calls {@link SyncWaits.started} when a tick starts and the
 * function it returns when the tick ends.
 */
export class SyncWaits {
  #waiting = new Set<{ resolve: () => void; timer: NodeJS.Timeout }>();
  #closed = false;

  /**
   * Resolves when the next tick that starts within `maxStartMs` has ended; at
   * `maxStartMs` when none started by then; at once after {@link SyncWaits.close}.
   */
  next(maxStartMs: number): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const waiter = {
        resolve,
        timer: setTimeout(() => {
          this.#waiting.delete(waiter);
          resolve();
        }, maxStartMs),
      };
      this.#waiting.add(waiter);
    });
  }

  /** A tick starts: whoever waits now waits for its end. Returns what to call when it ends. */
  started(): () => void {
    if (this.#waiting.size === 0) return noop;
    const waiters = [...this.#waiting];
    this.#waiting.clear();
    for (const waiter of waiters) clearTimeout(waiter.timer);
    return () => {
      for (const waiter of waiters) waiter.resolve();
    };
  }

  /** The poller stopped: lets everyone who waits for a tick to start go, now and from now on. */
  close(): void {
    this.#closed = true;
    for (const waiter of this.#waiting) {
      clearTimeout(waiter.timer);
      waiter.resolve();
    }
    this.#waiting.clear();
  }
}

function noop(): void {}
