/** Bounded parallelism for batches of I/O (start-up scans, a follower's copies). */

/**
 * Runs `fn` over `items` with at most `limit` calls in flight. After the first
 * error no new call starts; it resolves once the calls in flight have ended,
 * and rejects with that first error.
 */
export async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  let firstError: { error: unknown } | null = null;
  const worker = async () => {
    while (firstError === null && next < items.length) {
      try {
        await fn(items[next++]);
      } catch (error) {
        firstError ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (firstError !== null) throw (firstError as { error: unknown }).error;
}
