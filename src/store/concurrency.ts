/** Bounded parallelism for batches of I/O (start-up scans, a follower's copies). */

/**
 * Runs `fn` over `items` with at most `limit` calls in flight. After the first
 * error no new call starts; it resolves once the calls in flight have ended,
 * and rejects with that first error.
 */
export async function forEachLimited<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<unknown>,
): Promise<void> {
  const queue = items.values(); // shared by the workers: each item is taken once
  let firstError: { error: unknown } | null = null;
  const worker = async () => {
    for (const item of queue) {
      if (firstError !== null) return;
      try {
        await fn(item);
      } catch (error) {
        firstError ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (firstError !== null) throw (firstError as { error: unknown }).error;
}
