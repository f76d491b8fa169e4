/**
 * What servers and data directories hold, and comparing them: every key and
 * its bytes read over HTTP ({@link snapshot}) or from the files
 * ({@link dirData}), the {@link difference} of two, and waiting until a server
 * holds what it should ({@link converged}). Also the values tests write:
 * random bytes, many small keys, values that carry their own checksum, and
 * random picks.
 */
import { createHash, randomBytes } from "node:crypto";
import { lstat, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { http } from "./http.ts";
import { tempDir } from "./mehdb.ts";
import { pool, waitFor } from "./wait.ts";

/** Keys and their values. */
export type Data = Map<string, Buffer>;

/**
 * Every key and value a server lists: `GET /keys`, then `GET /get/KEY` for each (8 at a time, kept alive).
 * Throws when a listed key is not served (so a check in {@link waitFor} tries again).
 */
export async function snapshot(base: string): Promise<Data> {
  const listing = await http(`${base}/keys`, { keepAlive: true });
  if (listing.status !== 200) throw new Error(`GET ${base}/keys answered ${listing.status}`);
  const keys = JSON.parse(listing.text) as string[];
  const values = new Map<string, Buffer>();
  await pool(keys, 8, async (key) => {
    const value = await http(`${base}/get/${encodeURIComponent(key)}`, { keepAlive: true });
    if (value.status !== 200) throw new Error(`GET ${base}/get/${key} of a listed key answered ${value.status}`);
    values.set(key, value.body);
  });
  return new Map([...values].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * Every key file of a data directory (names not starting with `.`) and its bytes, sorted by name. A file
 * removed while it is read is left out. Anything but a regular file is an error, or left out with `skipOthers`.
 */
export async function dirData(dir: string, options: { skipOthers?: boolean } = {}): Promise<Data> {
  const data: Data = new Map();
  for (const name of (await readdir(dir)).sort()) {
    if (name.startsWith(".")) continue;
    try {
      if (options.skipOthers && !(await lstat(join(dir, name))).isFile()) continue;
      data.set(name, await readFile(join(dir, name)));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error; // removed meanwhile
    }
  }
  return data;
}

/** Names in a data directory that are not keys (temporary files and the like). */
export async function strayFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name.startsWith("."));
}

/** A new temporary data directory holding `data` as key files, for mehdb to start on (removed by `stopAll`). */
export async function dataDirWith(data: Data): Promise<string> {
  const dir = await tempDir();
  await pool([...data], 256, ([key, value]) => writeFile(join(dir, key), value));
  return dir;
}

/**
 * `null` when `a` and `b` hold the same keys with the same bytes, else what differs, in one line that calls
 * them by `names`.
 */
export function difference(a: Data, b: Data, names: [string, string] = ["the first", "the second"]): string | null {
  const onlyA = [...a.keys()].filter((key) => !b.has(key));
  const onlyB = [...b.keys()].filter((key) => !a.has(key));
  const differ = [...a].filter(([key, value]) => b.get(key)?.equals(value) === false).map(([key]) => key);
  if (onlyA.length + onlyB.length + differ.length === 0) return null;
  const some = (keys: string[]) => `${keys.length} [${keys.slice(0, 5).join(", ")}${keys.length > 5 ? ", …" : ""}]`;
  return `only in ${names[0]}: ${some(onlyA)}; only in ${names[1]}: ${some(onlyB)}; different bytes: ${some(differ)}`;
}

/**
 * Waits until the server at `base` holds exactly `expected`: those keys and bytes, or, given a URL, what that
 * server holds (read again on every try). Fails with the last difference.
 */
export async function converged(base: string, expected: Data | string, timeoutMs = 20_000): Promise<void> {
  const other = typeof expected === "string" ? expected : `the ${expected.size} keys expected`;
  await waitFor(async () => {
    const want = typeof expected === "string" ? await snapshot(expected) : expected;
    const diff = difference(await snapshot(base), want, [base, other]);
    if (diff !== null) throw new Error(diff);
    return true;
  }, `${base} to hold exactly what ${other} holds`, timeoutMs);
}

/** Random bytes, every byte value possible. */
export function randomValue(size: number): Buffer {
  return randomBytes(size);
}

/** A whole number from `min` to `max`, inclusive. */
export function randomInt(min: number, max: number): number {
  return min + Math.floor(Math.random() * (max - min + 1));
}

/** One of `items`, at random; throws when there is none. */
export function pick<T>(items: readonly T[]): T {
  const item = items[randomInt(0, items.length - 1)];
  if (item === undefined) throw new Error("nothing to pick from");
  return item;
}

/** `count` keys named `PREFIX000000`… with random values of 1 to `maxSize` bytes. */
export function manyKeys(count: number, prefix = "key-", maxSize = 64): Data {
  const data: Data = new Map();
  for (let i = 0; i < count; i++) data.set(`${prefix}${String(i).padStart(6, "0")}`, randomValue(1 + (i % maxSize)));
  return data;
}

/**
 * A value that proves its own integrity: one header line `mehdb-check id=ID len=N sha256=HEX\n` followed by N
 * random bytes whose SHA-256 is HEX. `id` names the write that produced it.
 */
export function checkedValue(id: string, size: number): Buffer {
  const payload = randomBytes(size);
  const sha = createHash("sha256").update(payload).digest("hex");
  return Buffer.concat([Buffer.from(`mehdb-check id=${id} len=${size} sha256=${sha}\n`), payload]);
}

/** The `id` of a value made by {@link checkedValue}, or why it is not one (torn, empty, foreign). */
export function verifyValue(value: Buffer): { ok: true; id: string } | { ok: false; reason: string } {
  if (value.length === 0) return { ok: false, reason: "empty value" };
  const newline = value.indexOf(10);
  if (newline < 0) return { ok: false, reason: `no header line in ${value.length} bytes` };
  const line = value.subarray(0, newline).toString("latin1");
  const match = /^mehdb-check id=(\S+) len=(\d+) sha256=([0-9a-f]{64})$/.exec(line);
  if (!match) return { ok: false, reason: `bad header ${JSON.stringify(line.slice(0, 120))}` };
  const [, id = "", length, sha] = match;
  const payload = value.subarray(newline + 1);
  if (payload.length !== Number(length)) {
    return { ok: false, reason: `torn: ${payload.length} of ${length} bytes (id ${id})` };
  }
  if (createHash("sha256").update(payload).digest("hex") !== sha) {
    return { ok: false, reason: `checksum mismatch (id ${id})` };
  }
  return { ok: true, id };
}
