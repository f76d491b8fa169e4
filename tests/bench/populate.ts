/**
 * Pre-populates a data directory by writing key files directly (one file per key,
 * named by the key, holding the value), which is much faster than N PUTs.
 * Used only for the start-up, memory and catch-up figures; the output says so.
 */

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Workload } from "./load.ts";

/** Pre-populated keys are this prefix and the key's number, zero-padded to {@link POPULATED_KEY_DIGITS} digits. */
export const POPULATED_KEY_PREFIX = "pre-";
export const POPULATED_KEY_DIGITS = 6;

/** The key name of entry `i` of a pre-populated set. */
export function populatedKey(i: number): string {
  return `${POPULATED_KEY_PREFIX}${String(i).padStart(POPULATED_KEY_DIGITS, "0")}`;
}

/**
 * Writes `n` keys of `valueBytes` bytes each into `dir` (created if needed), then {@link flushToDisk}; returns ms
 * taken.
 */
export function populate(dir: string, n: number, valueBytes: number): number {
  const t0 = performance.now();
  mkdirSync(dir, { recursive: true });
  const filler = "v".repeat(valueBytes);
  for (let i = 0; i < n; i++) {
    const key = populatedKey(i);
    const value = `${key}:${filler}`.slice(0, valueBytes);
    writeFileSync(join(dir, key), value);
  }
  flushToDisk(dir);
  return performance.now() - t0;
}

/**
 * Writes what the kernel still holds for `dir`'s file system to the disk (`sync -f`), so that a start measured
 * next reads names, not alongside the write-back of files just made: a pod restarts on files already on its volume.
 */
export function flushToDisk(dir: string): void {
  execFileSync("sync", ["-f", dir]);
}

/**
 * The mixed load over `keys` pre-populated keys: random GETs, random PUTs of `valueBytes`, random GETs again,
 * each workload named `prefix` + its part (`get-random`, `put-random`, `get-random-again`).
 */
export function mixedLoadWorkloads(keys: number, valueBytes: number, prefix = ""): Workload[] {
  const base = { keys, valueBytes, keyDigits: POPULATED_KEY_DIGITS, random: true };
  return [
    { ...base, name: `${prefix}get-random`, method: "GET", path: `/get/${POPULATED_KEY_PREFIX}` },
    { ...base, name: `${prefix}put-random`, method: "PUT", path: `/set/${POPULATED_KEY_PREFIX}` },
    { ...base, name: `${prefix}get-random-again`, method: "GET", path: `/get/${POPULATED_KEY_PREFIX}` },
  ];
}
