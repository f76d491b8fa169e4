/** Bounded parallelism for batches of I/O (a follower's copies, clean-ups), and the store's per-key locks. */

/**
 * Runs `fn` over `items` (with each one's index) with at most `limit` calls in
 * flight, taking items in order. After the first error no new call starts; it
 * resolves once the calls in flight have ended, and rejects with that first error.
 */
export async function forEachLimited<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<unknown>,
): Promise<void> {
  const queue = items.entries(); // shared by the workers: each item is taken once
  let firstError: { error: unknown } | null = null;
  const worker = async () => {
    for (const [index, item] of queue) {
      if (firstError !== null) return;
      try {
        await fn(item, index);
      } catch (error) {
        firstError ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (firstError !== null) throw (firstError as { error: unknown }).error;
}

/** Per-key locks: operations on one key run one after the other, in the order they came. */
export class KeyLocks {
  #tails = new Map<string, Promise<unknown>>();

  /** Runs `fn` after every earlier operation on `key` (so renames land in the order the index records them). */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#tails.get(key);
    const run = before ? before.then(fn, fn) : fn();
    const settled = run.then(
      () => {},
      () => {},
    );
    this.#tails.set(key, settled);
    try {
      return await run;
    } finally {
      if (this.#tails.get(key) === settled) this.#tails.delete(key);
    }
  }

  /** True while an operation on `key` runs or waits. */
  has(key: string): boolean {
    return this.#tails.has(key);
  }

  /** Resolves once every operation started so far has ended. */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.#tails.values()]);
  }
}
