/**
 * Replacing the whole data set with an archive's, all or nothing, crash-safe.
 * Every step leaves the data directory either as it was or committed to the new set:
 *
 *     stage    each entry is checked and written to `.restore-ID/KEY`; then all are fsynced (the data set is untouched)
 *     commit   the marker `.restore-ID.commit` is created and fsynced: from here on the new set wins
 *     remove   every key not in the new set is removed; the marker is renamed `.restore-ID.move`
 *     move     every staged file is renamed over its key's file; the folder, then the marker, are removed
 *
 * {@link recover}, at open, rolls a committed restore forward (remove and move
 * are idempotent) and removes an uncommitted one, and removes the private
 * folders of snapshots (`.snap-…`) a stop left. Names starting with `.` are
 * never keys, so none of these can be taken for one. Restored files keep the
 * archive's mtime (to the microsecond when a pax header gives it).
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, rename, rm, unlink } from "node:fs/promises";
import { join } from "node:path";
import { forEachLimited } from "./concurrency.ts";
import { secondsOf, writeAll } from "./files.ts";
import { isValidKey, KEY_RULE } from "../keys.ts";
import { readTar, TarFormatError, type TarEntry } from "./tar.ts";

/** Prefix of a restore's staging folder and its markers. */
const RESTORE_PREFIX = ".restore-";
/** Prefix of a snapshot's private folder (the versions it still needs). */
export const SNAPSHOT_PREFIX = ".snap-";
/** Values up to this size are read whole and written by the pool; larger ones are streamed one at a time. */
const POOLED_VALUE_BYTES = 64 * 1024;
/** Staged files written, and then fsynced, at once. */
const STAGE_CONCURRENCY = 8;
/** Keys removed or moved in at once. */
const APPLY_CONCURRENCY = 16;

/** The archive cannot be restored (not tar, cut short, or an entry that cannot be a key); nothing was changed. */
export class BadArchiveError extends Error {
  override name = "BadArchiveError";
}

/** An archive staged and fsynced in its folder, not yet committed. */
export interface Staged {
  /** The folder's name in the data directory, `.restore-ID`. */
  readonly name: string;
  /** Keys staged. */
  readonly count: number;
  /** The latest mtime among them, in µs (the store's clock goes past it). */
  readonly latestUs: number;
}

/** Called before a key's file is removed or replaced by a restore (a running snapshot may still need it). */
export type Protect = (key: string) => Promise<void>;

/**
 * Checks every entry of the archive in `source` and writes it to a new staging
 * folder, fsynced. Throws {@link BadArchiveError} for the first entry that cannot
 * be a key (or an archive that is not tar); any error removes the folder.
 */
export async function stage(dir: string, source: AsyncIterable<Uint8Array>, maxValueBytes: number): Promise<Staged> {
  const name = `${RESTORE_PREFIX}${randomBytes(6).toString("hex")}`;
  const folder = join(dir, name);
  await mkdir(folder);
  const pool = new WritePool(STAGE_CONCURRENCY);
  let count = 0;
  let latestUs = 0;
  try {
    for await (const entry of readEntries(source)) {
      count++;
      const problem = entryProblem(entry, maxValueBytes);
      if (problem) throw new BadArchiveError(badEntry(entry.name, count, problem));
      const path = join(folder, entry.name);
      latestUs = Math.max(latestUs, entry.mtimeUs);
      if (entry.size <= POOLED_VALUE_BYTES) {
        const chunks: Buffer[] = [];
        for await (const chunk of entry.body) chunks.push(chunk);
        await pool.add(() => writeFile(path, chunks, entry.mtimeUs), entry.name, count);
      } else {
        await pool.wait(entry.name, count, writeFile(path, entry.body, entry.mtimeUs));
      }
    }
    await pool.drain();
    // The body is read as fast as the files are written (a request must arrive within the server's request
    // timeout); then each file is made durable, several at once, and the folder.
    await forEachLimited(await readdir(folder), STAGE_CONCURRENCY, (key) => fsyncPath(join(folder, key)));
    await fsyncPath(folder);
    return { name, count, latestUs };
  } catch (error) {
    await pool.drain().catch(() => {});
    await rm(folder, { recursive: true, force: true });
    throw error;
  }
}

/** Removes a staged archive that will not be committed. */
export async function discard(dir: string, staged: Staged): Promise<void> {
  await rm(join(dir, staged.name), { recursive: true, force: true });
}

/**
 * Commits a staged archive: creates its marker, fsynced. From here on the new set
 * wins, even over a crash. A failure removes the staged archive and leaves the data set as it was.
 */
export async function commit(dir: string, staged: Staged): Promise<void> {
  const marker = join(dir, `${staged.name}.commit`);
  try {
    const handle = await open(marker, "wx", 0o644);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fsyncPath(dir); // the commit point
  } catch (error) {
    await unlink(marker).catch(() => {});
    await discard(dir, staged);
    throw error;
  }
}

/**
 * Applies a committed archive: removes every key not in it, then moves its files
 * in; `protect` runs before each key's file is removed or replaced. Run with no
 * write in flight; re-index after. A failure leaves the rest to {@link recover}.
 */
export function applyCommitted(dir: string, staged: Staged, protect: Protect): Promise<void> {
  return apply(dir, staged.name, "commit", protect);
}

/**
 * Finishes what a stop interrupted in `dir`, given the names there that start with `.` (`aside`): a committed
 * restore is applied, an uncommitted one removed; snapshot folders are removed. Resolves `true` when a restore was
 * applied (the keys changed: index them after this).
 */
export async function recover(dir: string, aside: readonly string[]): Promise<boolean> {
  let applied = false;
  for (const name of aside) {
    if (!name.startsWith(RESTORE_PREFIX)) continue;
    const [base, phase] = [name.slice(0, name.lastIndexOf(".")), name.slice(name.lastIndexOf(".") + 1)];
    if (phase !== "commit" && phase !== "move") continue;
    await apply(dir, base, phase, async () => {});
    applied = true;
  }
  const leftovers = aside.filter((n) => n.startsWith(RESTORE_PREFIX) || n.startsWith(SNAPSHOT_PREFIX));
  for (const name of leftovers) await rm(join(dir, name), { recursive: true, force: true });
  if (leftovers.length > 0) await fsyncPath(dir);
  return applied;
}

/** The remove step (when `phase` is `commit`) and the move step of a committed restore; both can be run again. */
async function apply(dir: string, name: string, phase: "commit" | "move", protect: Protect): Promise<void> {
  const folder = join(dir, name);
  const staged = await readdir(folder).catch(ignoreMissing(null));
  if (staged === null) {
    // No staged files: not a restore this module committed. Nothing is removed on its word.
    await rm(join(dir, `${name}.${phase}`), { force: true });
    return;
  }
  if (phase === "commit") {
    const incoming = new Set(staged);
    const gone = (await readdir(dir)).filter((key) => isValidKey(key) && !incoming.has(key));
    await forEachLimited(gone, APPLY_CONCURRENCY, async (key) => {
      await protect(key);
      await unlink(join(dir, key)).catch(ignoreCodes(["ENOENT", "EISDIR", "EPERM"])); // a folder is no key
    });
    await fsyncPath(dir);
    await rename(join(dir, `${name}.commit`), join(dir, `${name}.move`));
    await fsyncPath(dir);
  }
  await forEachLimited(staged, APPLY_CONCURRENCY, async (key) => {
    await protect(key);
    // Something other than a file in the key's place (a folder) keeps it: that name is no key.
    await rename(join(folder, key), join(dir, key)).catch(ignoreCodes(["ENOENT", "EISDIR", "ENOTEMPTY", "ENOTDIR"]));
  });
  await fsyncPath(dir);
  await rm(folder, { recursive: true, force: true });
  await unlink(join(dir, `${name}.move`));
  await fsyncPath(dir);
}

/** The entries of an archive; a format error becomes a {@link BadArchiveError}. */
async function* readEntries(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntry> {
  try {
    yield* readTar(source);
  } catch (error) {
    if (!(error instanceof TarFormatError)) throw error;
    throw new BadArchiveError(`invalid archive: ${error.message}; nothing was changed`);
  }
}

/** Why `entry` cannot be restored as a key, or `null` when it can. */
function entryProblem(entry: TarEntry, maxValueBytes: number): string | null {
  if (entry.kind === "directory") return "is a directory; a mehdb archive holds one regular file per key";
  if (entry.kind === "link") return "is a link; only regular files are restored";
  if (entry.kind === "other") return "is not a regular file (a device, a FIFO or another special entry)";
  if (entry.name.includes("/")) return "is a path; a key is a plain name, in no folder";
  if (!isValidKey(entry.name)) return `is not a valid key: ${KEY_RULE}`;
  if (entry.size > maxValueBytes) return `is ${entry.size} bytes, more than MEHDB_MAX_VALUE_BYTES (${maxValueBytes})`;
  return null;
}

function badEntry(name: string, index: number, problem: string): string {
  return `invalid archive entry ${index} ${JSON.stringify(name.slice(0, 220))}: ${problem}; nothing was changed`;
}

/** Writes a new file of `chunks` with mtime `mtimeUs` (not yet fsynced: see {@link fsyncPath}). */
async function writeFile(path: string, chunks: AsyncIterable<Buffer> | Buffer[], mtimeUs: number): Promise<void> {
  const handle = await open(path, "wx", 0o644);
  try {
    for await (const chunk of chunks) await writeAll(handle, [chunk]);
    await handle.utimes(secondsOf(mtimeUs), secondsOf(mtimeUs));
  } finally {
    await handle.close();
  }
}

/** Flushes a written file, or a directory's entries, to the disk. */
async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Staged files written a few at once; the first failure is thrown by the next call. */
class WritePool {
  #limit: number;
  #running = new Set<Promise<void>>();
  #failure: { error: unknown } | null = null;

  constructor(limit: number) {
    this.#limit = limit;
  }

  /** Starts `write` once a slot is free. */
  async add(write: () => Promise<void>, name: string, index: number): Promise<void> {
    while (this.#running.size >= this.#limit) await Promise.race(this.#running);
    this.#check();
    const running: Promise<void> = write()
      .catch((error: unknown) => {
        this.#failure ??= { error: duplicate(error, name, index) };
      })
      .finally(() => this.#running.delete(running));
    this.#running.add(running);
  }

  /** Waits for one write made outside the pool (a large value, streamed). */
  async wait(name: string, index: number, write: Promise<void>): Promise<void> {
    await write.catch((error: unknown) => {
      throw duplicate(error, name, index);
    });
    this.#check();
  }

  /** Waits for every write; throws the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.#running);
    this.#check();
  }

  #check(): void {
    if (this.#failure) throw this.#failure.error;
  }
}

/** A staged name that exists already is a key the archive holds twice. */
function duplicate(error: unknown, name: string, index: number): unknown {
  if ((error as NodeJS.ErrnoException)?.code !== "EEXIST") return error;
  return new BadArchiveError(badEntry(name, index, "appears twice in the archive"));
}

function ignoreMissing<T>(fallback: T): (error: unknown) => T {
  return ignoreCodes(["ENOENT"], fallback);
}

function ignoreCodes<T>(codes: string[], fallback?: T): (error: unknown) => T {
  return (error) => {
    if (codes.includes((error as NodeJS.ErrnoException)?.code ?? "")) return fallback as T;
    throw error;
  };
}
