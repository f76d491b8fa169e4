/**
 * Snapshots and restores of a whole store ({@link Snapshots}, one per store).
 *
 * A snapshot is taken at a moment when no change is in flight (new changes wait
 * at the store's hook for that instant only, until the ones already past it are
 * in the index): its keys are the index's sorted list then, its cursor the
 * store's. It then reads the files in name order (see `archive`), while writes go
 * on. A change to a key it has not opened yet first hard-links the version it
 * replaces into the snapshot's private folder (`.snap-ID`), where the snapshot
 * reads it instead: an open file, or a link, keeps the version the snapshot was
 * taken with, so the archive holds exactly the data set at its cursor. The folder
 * goes when the snapshot ends (or at the next open).
 *
 * A restore stages the archive (`restore.ts`), then, with every change held at
 * the hook and none in flight, commits and applies it and has the store index
 * the directory again under a new epoch.
 */
import { randomBytes } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, read, readSync } from "node:fs";
import { link, mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { setImmediate } from "node:timers/promises";
import { promisify } from "node:util";
import { microseconds } from "./files.ts";
import { applyCommitted, commit, discard, SNAPSHOT_PREFIX, stage } from "./restore.ts";
import { partitionPoint } from "./sorted.ts";
import { END_OF_ARCHIVE, fileHeader, padding } from "./tar.ts";

/** What snapshots and restores need of the store (`store.ts` has it). */
export interface SnapshotSource {
  readonly dir: string;
  /** The change-feed cursor now. */
  readonly cursor: string;
  /** Keys stored. */
  readonly count: number;
  /** Every key, sorted; the array is not changed afterwards (a change makes a new one). */
  list(): readonly string[];
  /** Forgets the index and indexes the data directory again, under a new epoch; its clock goes past `clockUs`. */
  reindex(clockUs: number): Promise<void>;
}

/** Options of {@link Snapshots.restore}. */
export interface RestoreOptions {
  /** Largest value an entry may hold. */
  maxValueBytes: number;
  /**
   * Judged before the archive is read and again right before the commit, with no write in flight: `null` to go
   * ahead, else one line saying why not. Default none.
   */
  precondition?: (now: { cursor: string; count: number }) => string | null;
}

/** A restore's precondition did not hold; nothing was changed. The message is the reason. */
export class RestorePreconditionError extends Error {
  override name = "RestorePreconditionError";
}

/** Too many snapshots are being read at once. */
export class SnapshotsBusyError extends Error {
  override name = "SnapshotsBusyError";
}

const readAsync = promisify(read);
/** Snapshots read at once; more are refused ({@link SnapshotsBusyError}). */
const MAX_SNAPSHOTS = 4;
/** Longest run of synchronous reads before the server serves other requests, in ms. */
const SLICE_MS = 2;
/** Values up to this size are read whole when opened; larger ones are streamed. */
const WHOLE_VALUE_BYTES = 64 * 1024;
/** Bytes gathered before the archive hands them on. */
const OUT_BYTES = 64 * 1024;
/** How a snapshot opens a key's file: never through a link, never blocking on a FIFO. */
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** The snapshots and restores of one store. */
export class Snapshots {
  #source: SnapshotSource;
  /** Changes past the hook whose index update has not happened yet. */
  #inFlight = 0;
  #whenIdle: (() => void) | null = null;
  /** Set while a snapshot is being taken or a restore applied: changes wait at the hook. */
  #gate: Promise<void> | null = null;
  #views = new Set<SnapshotView>();

  constructor(source: SnapshotSource) {
    this.#source = source;
  }

  /**
   * The store's hook, called under `key`'s lock before the step that makes a
   * change visible (a rename over its file, an unlink): waits while a snapshot is
   * being taken or a restore applied, keeps the version a running snapshot still
   * needs, and returns what to call once the index has the change (or it failed).
   */
  async changing(key: string): Promise<() => void> {
    while (this.#gate) await this.#gate;
    this.#inFlight++;
    await this.#keep(key);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.#inFlight === 0) this.#whenIdle?.();
    };
  }

  /**
   * Takes a snapshot now, or as soon as the changes in flight are in the index.
   * `cursor` is asked at that instant: the cursor it is consistent at, or `null`
   * when the store is not at one (then there is no snapshot: `null`).
   */
  async begin(cursor: () => string | null): Promise<SnapshotView | null> {
    if (this.#views.size >= MAX_SNAPSHOTS) throw new SnapshotsBusyError(`${MAX_SNAPSHOTS} snapshots are being read`);
    const take = () => {
      const at = cursor();
      if (at === null) return null;
      const view: SnapshotView = new SnapshotView(this.#source.dir, this.#source.list(), at, () =>
        this.#views.delete(view),
      );
      this.#views.add(view);
      return view;
    };
    // With nothing in flight, the snapshot is taken synchronously: a caller that waited for a quiet moment gets it.
    return this.#gate === null && this.#inFlight === 0 ? take() : this.#exclusive(take);
  }

  /**
   * Replaces the whole data set with the archive in `body`: stages it, then, with
   * every change held, judges the precondition, commits, applies and re-indexes
   * (a new epoch). Resolves with the number of keys and the new cursor. Throws
   * `BadArchiveError` (restore.ts) or {@link RestorePreconditionError} with
   * nothing changed, or the file system's error (`ENOSPC`: nothing changed).
   */
  async restore(body: AsyncIterable<Uint8Array>, options: RestoreOptions): Promise<{ count: number; cursor: string }> {
    const source = this.#source;
    const judge = () => options.precondition?.({ cursor: source.cursor, count: source.count }) ?? null;
    const early = judge();
    if (early !== null) throw new RestorePreconditionError(early);
    const staged = await stage(source.dir, body, options.maxValueBytes);
    return this.#exclusive(async () => {
      const failed = judge();
      if (failed !== null) {
        await discard(source.dir, staged);
        throw new RestorePreconditionError(failed);
      }
      await commit(source.dir, staged);
      try {
        await applyCommitted(source.dir, staged, (key) => this.#keep(key));
      } finally {
        await source.reindex(staged.latestUs);
      }
      return { count: staged.count, cursor: source.cursor };
    });
  }

  /** Lets running snapshots keep the current version of `key` before it is replaced or removed. */
  async #keep(key: string): Promise<void> {
    for (const view of this.#views) await view.keep(key);
  }

  /** Runs `fn` with every change held at the hook and none in flight (one at a time). */
  async #exclusive<T>(fn: () => Promise<T> | T): Promise<T> {
    while (this.#gate) await this.#gate;
    let open!: () => void;
    this.#gate = new Promise<void>((resolve) => (open = resolve));
    try {
      if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#whenIdle = resolve));
      this.#whenIdle = null;
      return await fn();
    } finally {
      this.#gate = null;
      open();
    }
  }
}

/** One key's version, opened: its bytes when small, else its open file. */
interface Opened {
  key: string;
  size: number;
  mtimeUs: number;
  body?: Buffer;
  fd?: number;
}

/** One snapshot being read: the keys and cursor it was taken at, and the versions it keeps. */
export class SnapshotView {
  /** The cursor the snapshot is consistent at. */
  readonly cursor: string;
  /** Keys left out because their file was gone (removed behind the store's back). */
  missing = 0;
  #dir: string;
  #keys: readonly string[];
  #folder: string;
  #ready: Promise<unknown>;
  /** Keys from this index on may not be opened yet: a change to one of them keeps its version. */
  #low = 0;
  /** Versions kept: key → path of its link in the private folder. */
  #kept = new Map<string, string>();
  #links = 0;
  #failure: unknown = null;
  #closed = false;
  #release: () => void;

  constructor(dir: string, keys: readonly string[], cursor: string, release: () => void) {
    this.#dir = dir;
    this.#keys = keys;
    this.cursor = cursor;
    this.#release = release;
    this.#folder = join(dir, `${SNAPSHOT_PREFIX}${randomBytes(6).toString("hex")}`);
    this.#ready = mkdir(this.#folder).catch((error: unknown) => (this.#failure ??= error));
  }

  /** Number of keys in the snapshot (those found gone are left out, see {@link SnapshotView.missing}). */
  get count(): number {
    return this.#keys.length;
  }

  /** Before `key`'s file is replaced or removed: hard-links it into the private folder if this snapshot needs it. */
  async keep(key: string): Promise<void> {
    if (this.#closed || this.#failure !== null || this.#kept.has(key)) return;
    const at = partitionPoint(this.#keys, (name) => name < key);
    if (at < this.#low || this.#keys[at] !== key) return;
    const path = join(this.#folder, String(++this.#links));
    try {
      await this.#ready;
      await link(join(this.#dir, key), path);
      this.#kept.set(key, path);
    } catch (error) {
      // A file already gone leaves nothing to keep; any other failure ends the snapshot, never the write.
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") this.#failure ??= error;
    }
  }

  /**
   * The tar archive, in chunks; ending or leaving the iteration early releases the snapshot. Files are opened and
   * small values read with synchronous calls (a few microseconds each from the page cache, a quarter of the cost of
   * a round trip through the thread pool), in slices of at most {@link SLICE_MS} between which the server serves
   * other requests; larger values are streamed asynchronously.
   */
  async *archive(): AsyncGenerator<Buffer> {
    const keys = this.#keys;
    const out = new Gather();
    try {
      await this.#ready;
      let sliceEnd = performance.now() + SLICE_MS;
      for (let i = 0; i < keys.length; i++) {
        if (this.#failure !== null) throw this.#failure;
        const item = this.#open(keys[i] as string);
        this.#low = i + 1; // opened: its version is held by the descriptor or read already
        if (item === null) {
          this.missing++;
          continue;
        }
        yield* out.add(fileHeader(item.key, item.size, item.mtimeUs));
        if (item.body) yield* out.add(item.body);
        else if (item.fd !== undefined) {
          yield* out.flush();
          yield* streamFile(item.fd, item.size);
        }
        yield* out.add(padding(item.size));
        if (performance.now() > sliceEnd) {
          await setImmediate();
          sliceEnd = performance.now() + SLICE_MS;
        }
      }
      yield* out.add(END_OF_ARCHIVE);
      yield* out.flush();
    } finally {
      await this.close();
    }
  }

  /** Ends the snapshot: no more versions are kept, and the private folder is removed. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#release();
    await this.#ready;
    await rm(this.#folder, { recursive: true, force: true }).catch(() => {}); // else removed at the next open
  }

  /** Opens the version of `key` the snapshot holds (the kept link, else the key's file); `null` when gone. */
  #open(key: string): Opened | null {
    let fd: number;
    try {
      fd = openSync(this.#kept.get(key) ?? join(this.#dir, key), READ_FLAGS);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ELOOP" || code === "ENXIO") return null; // gone, or not a file
      throw error;
    }
    let keep = false;
    try {
      const stats = fstatSync(fd, { bigint: true });
      if (!stats.isFile()) return null;
      const opened: Opened = { key, size: Number(stats.size), mtimeUs: microseconds(stats) };
      if (opened.size > WHOLE_VALUE_BYTES) {
        keep = true; // streamFile closes it
        return { ...opened, fd };
      }
      const body = Buffer.allocUnsafe(opened.size);
      for (let filled = 0; filled < body.length; ) {
        const read = readSync(fd, body, filled, body.length - filled, filled);
        if (read === 0) throw new Error(`${key}: its file is shorter than when it was opened`);
        filled += read;
      }
      return { ...opened, body };
    } finally {
      if (!keep) closeSync(fd);
    }
  }
}

/** Gathers small pieces into chunks of about {@link OUT_BYTES}. */
class Gather {
  #parts: Buffer[] = [];
  #bytes = 0;

  *add(part: Buffer): Generator<Buffer> {
    if (part.length === 0) return;
    this.#parts.push(part);
    this.#bytes += part.length;
    if (this.#bytes >= OUT_BYTES) yield* this.flush();
  }

  *flush(): Generator<Buffer> {
    if (this.#bytes === 0) return;
    const chunk = Buffer.concat(this.#parts, this.#bytes);
    this.#parts = [];
    this.#bytes = 0;
    yield chunk;
  }
}

/** The first `size` bytes of an open file, in chunks read asynchronously; closes it. */
async function* streamFile(fd: number, size: number): AsyncGenerator<Buffer> {
  try {
    for (let at = 0; at < size; ) {
      const chunk = Buffer.allocUnsafe(Math.min(OUT_BYTES, size - at));
      for (let filled = 0; filled < chunk.length; ) {
        const { bytesRead } = await readAsync(fd, chunk, filled, chunk.length - filled, at + filled);
        if (bytesRead === 0) throw new Error("a file of the snapshot is shorter than when it was opened");
        filled += bytesRead;
      }
      at += chunk.length;
      yield chunk;
    }
  } finally {
    closeSync(fd);
  }
}
