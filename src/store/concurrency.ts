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

/** Called under a key's lock before each operation on it; what it resolves with is called once the operation ended. */
export type LockHook = (key: string) => Promise<() => void>;

/** Per-key locks: operations on one key run one after the other, in the order they came. */
export class KeyLocks {
  #tails = new Map<string, Promise<unknown>>();
  #hook: LockHook | undefined;

  /** `hook`, when given, runs under the lock before each operation (the snapshots' hook, `snapshot.ts`). */
  constructor(hook?: LockHook) {
    this.#hook = hook;
  }

  /** Runs `fn` after every earlier operation on `key` (so renames land in the order the index records them). */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#tails.get(key);
    const hook = this.#hook;
    const op = hook ? () => hook(key).then((done) => fn().finally(done)) : fn;
    const run = before ? before.then(op, op) : op();
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
