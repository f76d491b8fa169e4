/**
 * Waiting in tests: for a condition ({@link waitFor}), for a time
 * ({@link sleep}), for a bounded pool of tasks ({@link pool}).
 */

/**
 * Polls `check` every `intervalMs` until it returns true; fails after `timeoutMs` naming `what`. A check may
 * throw to say why it does not hold yet: the timeout's message carries the last such error.
 */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 15_000,
  intervalMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await check()) return;
      last = undefined;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      const why = last === undefined ? "" : ` (last error: ${last instanceof Error ? last.message : String(last)})`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(intervalMs);
  }
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs `task` on each of `items`, at most `limit` at a time; `worker` (0 to limit - 1) says which runner took it. */
export async function pool<T>(
  items: readonly T[],
  limit: number,
  task: (item: T, worker: number) => Promise<void>,
): Promise<void> {
  const queue = items.values(); // one iterator shared by every runner: each item is taken once
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async (_, worker) => {
    for (const item of queue) await task(item, worker);
  }));
}
