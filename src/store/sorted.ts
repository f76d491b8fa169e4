/** Binary search over sorted arrays (the change log's numbers, the index's slots in name order, sorted key names). */

/** The first index of sorted `values` whose value is not `before` the target (`values.length` when none). */
export function partitionPoint<T>(values: ArrayLike<T>, before: (value: T) => boolean): number {
  let low = 0;
  let high = values.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (before(values[mid] as T)) low = mid + 1;
    else high = mid;
  }
  return low;
}
