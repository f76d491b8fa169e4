/**
 * The store's file helpers: reading a data directory's names in slices, a
 * value's temporary file, whole writes and reads of a handle, mtimes to the microsecond, the shared directory
 * fsync, and the error codes the store tells apart.
 */
import { closeSync, constants, fstatSync, fsync, futimesSync, openSync, writeSync, type BigIntStats } from "node:fs";
import { open, opendir, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { setImmediate as nextTurn } from "node:timers/promises";
import { ValueTooLargeError, type Staged } from "./types.ts";

/** Prefix of temporary files; no key starts with `.`. */
export const TMP_PREFIX = ".tmp-";
/** How a value's file is opened: never through a link, and never blocking on a FIFO put in a key's place. */
export const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
/** Bytes of a value gathered before they are written (with one `writev`). */
const WRITE_BATCH_BYTES = 256 * 1024;
/** Directory entries read between two turns of the event loop (the server answers in between). */
const SLICE_ENTRIES = 4096;

/**
 * One slice of a directory's names: its regular files, the names of leftover temporary files, and the other names
 * that start with `.` (no key does: a restore's staging, a snapshot's folder).
 */
export interface NameSlice {
  files: string[];
  leftovers: string[];
  aside: string[];
}

/**
 * The names of `dir`, a slice at a time, with a turn of the event loop between
 * slices. File types come from the directory entries (Node `lstat`s only the
 * entries whose type the file system leaves unknown): no `stat` per file.
 */
export async function* readNames(dir: string): AsyncGenerator<NameSlice> {
  const handle = await opendir(dir, { bufferSize: SLICE_ENTRIES });
  try {
    for (let done = false; !done; ) {
      const slice: NameSlice = { files: [], leftovers: [], aside: [] };
      for (let i = 0; i < SLICE_ENTRIES; i++) {
        const entry = handle.readSync();
        if (entry === null) {
          done = true;
          break;
        }
        if (entry.name.startsWith(TMP_PREFIX)) slice.leftovers.push(entry.name);
        else if (entry.name.startsWith(".")) slice.aside.push(entry.name);
        else if (entry.isFile()) slice.files.push(entry.name);
      }
      yield slice;
      if (!done) await nextTurn();
    }
  } finally {
    handle.closeSync();
  }
}

/** A file's mtime in whole microseconds (nanoseconds cut), from exact stats. */
export function microseconds(stats: BigIntStats): number {
  return Number(stats.mtimeNs / 1000n);
}

/**
 * The seconds to give `utimes` for an mtime of `us` microseconds: the middle of that microsecond, so that
 * the float's rounding and libuv's cut to whole microseconds both land on it.
 */
export function secondsOf(us: number): number {
  return (us + 0.5) / 1e6;
}

/** What {@link writeTemp} wrote: the size, the mtime and inode the file system kept, the bytes when small. */
export interface Written {
  size: number;
  mtimeUs: number;
  ino: number;
  /** The bytes, when the value has at most `keepBytes`; else `null`. */
  cached: Buffer | null;
}

/**
 * Streams `body` into the new file `path` (chunks gathered into `writev`s of up
 * to {@link WRITE_BATCH_BYTES}), gives it the mtime `mtimeUs`, fsyncs and closes
 * it. More than `maxBytes` throws {@link ValueTooLargeError}; on any error the file is removed.
 */
export async function writeTemp(
  path: string,
  body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: { maxBytes: number; mtimeUs: number | ((fileUs: number) => number); keepBytes: number },
): Promise<Written> {
  // The file is opened once the first chunk is in hand: a stream left unread while it opens joins the chunks
  // that arrive meanwhile into one new buffer (Node 24), and that garbage, 64 KiB a write, set off full GCs.
  let handle: FileHandle | null = null;
  let closed = false;
  try {
    let size = 0;
    let kept: Uint8Array[] | null = options.keepBytes > 0 ? [] : null;
    let pending: Uint8Array[] = [];
    let pendingBytes = 0;
    for await (const chunk of body) {
      handle ??= await open(path, "wx", 0o644);
      size += chunk.length;
      if (size > options.maxBytes) throw new ValueTooLargeError(`value is larger than ${options.maxBytes} bytes`);
      if (kept && size <= options.keepBytes) kept.push(chunk);
      else kept = null;
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes >= WRITE_BATCH_BYTES) {
        await writeAll(handle, pending);
        pending = [];
        pendingBytes = 0;
      }
    }
    handle ??= await open(path, "wx", 0o644);
    if (pendingBytes > 0) await writeAll(handle, pending);
    // The version's mtime makes its entity tag, set before the fsync: a copy's is given (the leader's); a new
    // version's is what the file system gave it unless the store's clock says otherwise (no utimes then).
    const { mtimeUs } = options;
    let stats: BigIntStats | null = null;
    let wanted = 0;
    if (typeof mtimeUs === "number") wanted = mtimeUs;
    else wanted = mtimeUs(microseconds((stats = await handle.stat({ bigint: true }))));
    if (stats === null || wanted !== microseconds(stats)) {
      await handle.utimes(secondsOf(wanted), secondsOf(wanted));
      stats = null;
    }
    await handle.sync();
    stats ??= await handle.stat({ bigint: true }); // what the file system kept is the truth
    closed = true;
    await handle.close();
    const cached = kept && Buffer.concat(kept, size);
    return { size, mtimeUs: microseconds(stats), ino: Number(stats.ino), cached };
  } catch (error) {
    if (!handle) throw error;
    if (!closed) await handle.close().catch(() => {});
    await unlink(path).catch(() => {});
    throw error;
  }
}

/**
 * Writes a value already in memory, with its mtime given (a follower's copy), into the new file `path` as
 * {@link writeTemp} does, but with direct calls for all but the fsync: a call on libuv's pool costs two thread
 * hand-offs, and such a copy made seven of them (half the follower's CPU in a catch-up). More than `maxBytes`
 * throws {@link ValueTooLargeError}; on any error the file is removed.
 */
export async function writeTempDirect(
  path: string,
  chunks: readonly Uint8Array[],
  options: { maxBytes: number; mtimeUs: number; keepBytes: number },
): Promise<Written> {
  let size = 0;
  for (const chunk of chunks) size += chunk.length;
  if (size > options.maxBytes) throw new ValueTooLargeError(`value is larger than ${options.maxBytes} bytes`);
  const fd = openSync(path, "wx", 0o644);
  let closed = false;
  try {
    for (const chunk of chunks) {
      for (let at = 0; at < chunk.length; ) at += writeSync(fd, chunk, at); // writes may be short
    }
    futimesSync(fd, secondsOf(options.mtimeUs), secondsOf(options.mtimeUs));
    await new Promise<void>((resolve, reject) => fsync(fd, (error) => (error ? reject(error) : resolve())));
    const stats = fstatSync(fd, { bigint: true }); // what the file system kept is the truth
    closed = true;
    closeSync(fd);
    const cached = size <= options.keepBytes ? Buffer.concat(chunks, size) : null;
    return { size, mtimeUs: microseconds(stats), ino: Number(stats.ino), cached };
  } catch (error) {
    try {
      if (!closed) closeSync(fd);
    } catch {
      // the first error is the one to tell
    }
    await unlink(path).catch(() => {});
    throw error;
  }
}

/** Gives the closed file `path` the mtime `mtimeUs`, fsynced; resolves with the mtime the file system kept. */
export async function restamp(path: string, mtimeUs: number): Promise<number> {
  const handle = await open(path, "r+");
  try {
    const seconds = secondsOf(mtimeUs);
    await handle.utimes(seconds, seconds);
    await handle.sync();
    return microseconds(await handle.stat({ bigint: true }));
  } finally {
    await handle.close();
  }
}

/** Writes all of `chunks`, however many calls it takes (writes may be short). */
export async function writeAll(handle: FileHandle, chunks: Uint8Array[]): Promise<void> {
  let rest = chunks;
  while (rest.length > 0) {
    let { bytesWritten } = await handle.writev(rest);
    let whole = 0; // chunks written whole
    for (const chunk of rest) {
      if (bytesWritten < chunk.length) break;
      bytesWritten -= chunk.length;
      whole++;
    }
    rest = rest.slice(whole);
    const [first] = rest;
    if (first && bytesWritten > 0) rest[0] = first.subarray(bytesWritten);
  }
}

/** Removes the temporary files of values staged but not renamed. */
export async function removeAll(staged: readonly (Staged | undefined)[]): Promise<void> {
  for (const s of staged) if (s) await unlink(s.tmp).catch(() => {});
}

/** Checks that `dir` takes new files (creates and removes the file `name`): `null` when it does, else why. */
export async function probeWritable(dir: string, name: string): Promise<string | null> {
  const probe = join(dir, name);
  try {
    const handle = await open(probe, "w");
    await handle.close();
    await unlink(probe);
    return null;
  } catch (error) {
    return `data directory ${dir} is not writable: ${(error as NodeJS.ErrnoException).code ?? String(error)}`;
  }
}

/** Reads the first `size` bytes of a file in one buffer; `null` when it has fewer. */
export async function readExactly(handle: FileHandle, size: number): Promise<Buffer | null> {
  const buffer = Buffer.allocUnsafeSlow(size); // not a slice of the shared pool: the cache may keep it
  let filled = 0;
  while (filled < size) {
    const { bytesRead } = await handle.read(buffer, filled, size - filled, filled);
    if (bytesRead === 0) return null;
    filled += bytesRead;
  }
  return buffer;
}

/** One directory fsync at a time; callers that arrive while one runs share the next. Attach the handle first. */
export class DirFsync {
  #handle: FileHandle | null = null;
  #running: Promise<void> | null = null;
  #queued: Promise<void> | null = null;

  /** Gives it the directory's handle (when the store opens). */
  attach(handle: FileHandle): void {
    this.#handle = handle;
  }

  sync(): Promise<void> {
    if (this.#queued) return this.#queued;
    if (!this.#running) return this.#start();
    this.#queued = this.#running
      .catch(() => {})
      .then(() => {
        this.#queued = null;
        return this.#start();
      });
    return this.#queued;
  }

  async close(): Promise<void> {
    await (this.#queued ?? this.#running)?.catch(() => {});
    await this.#handle?.close();
    this.#handle = null;
  }

  #start(): Promise<void> {
    const handle = this.#handle;
    if (!handle) return Promise.reject(new Error("the store is not open"));
    const run = handle.sync().finally(() => {
      if (this.#running === run) this.#running = null;
    });
    this.#running = run;
    return run;
  }
}

export function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException)?.code === "ENOENT";
}

/**
 * What opening something that is not a regular file with {@link READ_FLAGS} throws: a link (`ELOOP`), a socket
 * (`ENXIO`).
 */
export function isNotAFile(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException)?.code;
  return code === "ELOOP" || code === "ENXIO";
}

/** Errors of a rename that concern only this key: something other than a file is in the way. */
export function isInTheWay(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException)?.code;
  return code === "EISDIR" || code === "ENOTEMPTY" || code === "ENOTDIR";
}

export function ignoreMissing(error: unknown): undefined {
  if (isMissing(error)) return undefined;
  throw error;
}
