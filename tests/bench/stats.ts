/**
 * Small statistics helpers for the benchmark: percentiles, medians, rounding.
 */

/** The p-th percentile (0..100) of `values` (nearest rank on a sorted copy); null when empty. */
export function percentile(values: ArrayLike<number>, p: number): number | null {
  const n = values.length;
  if (n === 0) return null;
  const sorted = Float64Array.from(values as ArrayLike<number>).sort();
  const rank = Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1));
  return sorted[rank] ?? null;
}

/** The median of `values`; null when empty or when any value is null. */
export function median(values: ReadonlyArray<number | null>): number | null {
  if (values.length === 0 || values.some((v) => v === null)) return null;
  return percentile(values as number[], 50);
}

/** `a / b` when both are finite and b > 0, else null. */
export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  if (a == null || b == null || !Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return null;
  return a / b;
}

/** Rounds to `digits` decimals, keeping null. */
export function round(v: number | null | undefined, digits = 2): number | null {
  if (v == null || !Number.isFinite(v)) return null;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}
