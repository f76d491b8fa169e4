/**
 * The store: every key is one file in the data directory, named for the key.
 *
 * A write streams the value into a temporary file (`.tmp-…`, a name no key
 * can have), fsyncs it, renames it over the key's file and fsyncs the
 * directory before it resolves: a crash at any instant leaves each key with its
 * old or its new value, never a torn one. Writes that finish together share
 * one directory fsync (group commit), and {@link Store.putMany} writes a batch
 * with one directory fsync (a follower's copies). Temporary files never leave
 * this module, and each is closed (fsynced) before the next value of a batch is
 * written: a batch holds one descriptor per value in flight, not one per value.
 * Leftover temporary files are removed when the store opens.
 *
 * In memory the store keeps an index (key → size, mtime, version, inode), a
 * bounded cache of small values (the files stay the truth), and a change log
 * that followers read through {@link Store.changes}: a cursor `EPOCH-SEQ`, where
 * the epoch is new every time the store opens.
 *
 * Only regular files are keys: links are never followed, at start (`lstat`) or
 * when read (`O_NOFOLLOW`). A read describes the file it actually opened: it
 * finds the entry by the inode of its open handle (the index's, a write being
 * renamed in, or a recently replaced one), so an entity tag, size or mtime is
 * never paired with another version's bytes and a concurrent write never makes
 * a read fail.
 */
import { randomBytes } from "node:crypto";
import { constants, createReadStream, lstatSync, readdirSync, type ReadStream, type Stats } from "node:fs";
import { mkdir, open, rename, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { forEachLimited } from "./concurrency.ts";
import { DEFAULTS } from "../config.ts";
import { isValidKey } from "../keys.ts";
import { partitionPoint } from "./sorted.ts";
import { formatCursor, parseCursor, type Changes, type ListedKey, type ListingPage } from "../protocol.ts";
import { recover } from "./restore.ts";
import { Snapshots } from "./snapshot.ts";

/** What the store knows of one key. Replaced, never changed, on every write. */
export interface Entry {
  /** Size of the value in bytes. */
  readonly size: number;
  /** Modification time of the file, in whole milliseconds. */
  readonly mtimeMs: number;
  /**
   * The change number that wrote it (unique within one epoch; negative for a file the store did not write, see {@link
   * Store.get}).
   */
  readonly seq: number;
  /** The inode of its file: how a read knows which version it opened. */
  readonly ino: number;
}

/** A value read from the store: its bytes when small, else a stream of the file. */
export type Value =
  { entry: Entry; body: Buffer; stream?: undefined } | { entry: Entry; body?: undefined; stream: ReadStream };

/** Options of {@link Store.open}. */
export interface StoreOptions {
  /**
   * Bytes of small values kept in memory (each counted with 512 B of overhead). Default `DEFAULTS.cacheBytes` (8 MiB);
   * 0 turns the cache off.
   */
  cacheBytes?: number;
  /** Largest value the cache holds. Default 64 KiB. */
  cacheValueBytes?: number;
  /** Deletions remembered for the change feed before followers must list in full. Default 100 000. */
  maxTombstones?: number;
}

/** Options of {@link Store.put}. */
export interface PutOptions {
  /** Largest value accepted; more bytes throw {@link ValueTooLargeError}. */
  maxBytes: number;
  /** Modification time to give the file (a follower keeps its leader's). Default: now. */
  mtimeMs?: number;
  /** Keep a small value (≤ 4 KiB) in the cache right away. Default true; a follower's copies wait to be read. */
  cache?: boolean;
  /**
   * Judged in the key's lock right before the write becomes visible: a reason makes it fail with {@link
   * PreconditionFailedError}. Default none.
   */
  precondition?: Precondition;
}

/** A check of a conditional write: `null` to go ahead, else one line saying why not. */
export type Precondition = (current: Entry | undefined) => string | null;

/** A write's or delete's precondition did not hold; nothing was changed. The message is the reason. */
export class PreconditionFailedError extends Error {
  override name = "PreconditionFailedError";
}

/** One value of a batch write; see {@link Store.putMany}. */
export interface PutItem {
  key: string;
  /** The bytes: chunks, possibly arriving over time. */
  body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
  /** Modification time to give the file (a follower keeps its leader's). Default: now. */
  mtimeMs?: number;
  /** Judged in the key's lock right before the value becomes visible (see {@link PutOptions}). Default none. */
  precondition?: Precondition;
}

/** Options of {@link Store.putMany}. */
export interface PutManyOptions {
  /** Largest value accepted; a larger one is not written ({@link ValueTooLargeError} in its result). */
  maxBytes: number;
  /** Keep small values (≤ 4 KiB) in the cache right away. Default true; a follower's copies wait to be read. */
  cache?: boolean;
  /**
   * Values written at once, each with one temporary file open while it is written. Default 1: items are
   * taken in order and each body is read to its end before the next item is taken (bodies may share one stream).
   */
  concurrency?: number;
}

/**
 * What {@link Store.putMany} did with one item: its new entry, or why this key
 * cannot be held here (a {@link ValueTooLargeError}, or something other than a
 * file in the way: `EISDIR`, `ENOTEMPTY`, `ENOTDIR`); the other items are written all the same.
 */
export type PutResult =
  { key: string; entry: Entry; error?: undefined } | { key: string; entry?: undefined; error: Error };

/** A value written and fsynced in its (closed) temporary file, not yet renamed over its key's file. */
interface Staged {
  readonly key: string;
  readonly tmp: string;
  readonly size: number;
  readonly mtimeMs: number;
  /** The temporary file's inode (it keeps it when renamed). */
  readonly ino: number;
  /** The bytes, kept when the value goes to the cache on commit; `null` when it does not. */
  readonly cached: Buffer | null;
  readonly precondition: Precondition | undefined;
}

/** The value was larger than allowed; nothing was stored. */
export class ValueTooLargeError extends Error {
  override name = "ValueTooLargeError";
}

/** Values up to this size go to the cache when written; larger ones (up to the cache's limit) when first read. */
const CACHE_ON_WRITE_BYTES = 4 * 1024;
/** Bytes of a value gathered before they are written (with one `writev`). */
const WRITE_BATCH_BYTES = 256 * 1024;
/**
 * What the cache counts for each value on top of its bytes: the objects that hold it. Measured
 * in heap snapshots of a leader with 100 000 keys: about 450 B per cached 50-byte value (the
 * Buffer and its ArrayBuffer, the backing store, the cache's node, its key, its headers, the Map's slot).
 */
const CACHE_ENTRY_OVERHEAD = 512;
/** Values larger than this are streamed from the file instead of read whole. */
const STREAM_THRESHOLD = 1024 * 1024;
/** Prefix of temporary files; no key starts with `.`. */
const TMP_PREFIX = ".tmp-";
/** How a value's file is opened: never through a link, and never blocking on a FIFO put in a key's place. */
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
/** Replaced or deleted versions remembered by inode, for reads that opened them just before. */
const RECENT_VERSIONS = 1024;
/** Opens of a key whose file the store cannot name (replaced many times meanwhile) before it is served as found. */
const READ_ATTEMPTS = 3;

/** One key per file in a directory; create with {@link Store.open}. */
export class Store {
  /** The data directory. */
  readonly dir: string;
  /** Snapshots and restores of this store (`snapshot.ts`); it hooks into every change (see `#locked`). */
  readonly snapshots: Snapshots = new Snapshots(this);

  #epoch: string;
  #options: StoreOptions;
  #index = new Map<string, Entry>();
  #sorted: string[] | null = null;
  #bytes = 0;
  #seq = 0;
  /** Changes after `#floor`, oldest first: key names, with `#logSeq` their change numbers. */
  #logKeys: string[] = [];
  #logSeq: number[] = [];
  #floor = 0;
  #maxTombstones: number;
  #cache: ValueCache;
  #locks = new Map<string, Promise<unknown>>();
  #dirFsync: DirFsync;
  #tmpCount = 0;
  /** Files being renamed over their key's file, by inode: readers may open them before the index names them. */
  #renaming = new Map<number, { key: string; landed: Promise<Entry | null> }>();
  /** Versions replaced or deleted lately, by inode (oldest first), for readers that opened them before. */
  #recent = new Map<number, { key: string; entry: Entry }>();
  /** Files found at a key's path that the store did not write (see {@link Store.get}). */
  #strays = 0;
  #changed: { promise: Promise<void>; resolve: () => void } | null = null;

  private constructor(dir: string, dirHandle: FileHandle, options: StoreOptions) {
    this.dir = dir;
    this.#options = options;
    this.#epoch = randomBytes(6).toString("hex");
    this.#dirFsync = new DirFsync(dirHandle);
    const cacheBytes = options.cacheBytes ?? DEFAULTS.cacheBytes;
    this.#cache = new ValueCache(cacheBytes, Math.min(options.cacheValueBytes ?? 64 * 1024, cacheBytes));
    this.#maxTombstones = options.maxTombstones ?? 100_000;
  }

  /**
   * Opens (and creates) the data directory: removes leftover temporary files and
   * indexes every file whose name is a valid key. Other names are left alone.
   */
  static async open(dir: string, options: StoreOptions = {}): Promise<Store> {
    await mkdir(dir, { recursive: true });
    await recover(dir); // [snapshot hook] finishes a committed restore, removes an unfinished one and snapshot folders
    const store = new Store(dir, await open(dir, "r"), options);
    // The scan is synchronous: nothing else runs before the store is open, and
    // 100 000 stat calls take a tenth of the time they take through the thread pool.
    const names = readdirSync(dir);
    const leftovers = names.filter((name) => name.startsWith(TMP_PREFIX));
    await forEachLimited(leftovers, 32, (name) => unlink(join(dir, name)).catch(ignoreMissing));
    store.#scan(names);
    if (leftovers.length > 0) await store.#dirFsync.sync();
    return store;
  }

  /** Indexes every file among `names` (of the data directory) whose name is a valid key. */
  #scan(names: readonly string[]): void {
    for (const key of names) {
      if (!isValidKey(key)) continue;
      // lstat: a link is not a key, wherever it points.
      const stats = lstatSync(join(this.dir, key), { throwIfNoEntry: false });
      if (stats?.isFile()) this.#set(key, this.#entry(stats.size, Math.round(stats.mtimeMs), stats.ino), false);
    }
    this.#floor = this.#seq;
  }

  /**
   * [snapshot hook] After a restore replaced the files (no change in flight): forgets the index, the change log
   * and the cache, and indexes the directory again under a new epoch, so followers reconcile in full.
   */
  async reindex(): Promise<void> {
    this.#epoch = randomBytes(6).toString("hex");
    this.#index = new Map();
    this.#sorted = null;
    this.#bytes = this.#seq = this.#floor = 0;
    this.#logKeys = [];
    this.#logSeq = [];
    this.#recent.clear();
    const cacheBytes = this.#options.cacheBytes ?? DEFAULTS.cacheBytes;
    this.#cache = new ValueCache(cacheBytes, Math.min(this.#options.cacheValueBytes ?? 64 * 1024, cacheBytes));
    this.#scan(readdirSync(this.dir));
    this.#changed?.resolve(); // wakes held watches: everything changed
    this.#changed = null;
  }

  /** Changes every time the store opens or is restored; part of every cursor and entity tag. */
  get epoch(): string {
    return this.#epoch;
  }

  /** Number of keys stored. */
  get count(): number {
    return this.#index.size;
  }

  /** Total bytes of all values. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The strong entity tag of an entry: unique for its value, within and across epochs. */
  etag(entry: Entry): string {
    return `"${this.epoch}-${entry.seq.toString(36)}"`;
  }

  /** The entry of `key`, or `undefined` when absent. */
  stat(key: string): Entry | undefined {
    return this.#index.get(key);
  }

  /** The value of `key` when it is in the cache (no I/O, no allocation), else `undefined`. */
  cached(key: string): CachedValue | undefined {
    const entry = this.#index.get(key);
    return entry && this.#cache.hit(key, entry);
  }

  /**
   * Reads `key`: its bytes (values up to 1 MiB) or a stream of its file, with
   * the entry of exactly those bytes; `null` when absent. A write of the same
   * key meanwhile never makes it fail: it answers the old or the new value.
   * A key whose file was replaced behind the store's back by something that is
   * not a regular file (a link, a directory) reads as absent; a regular file
   * the store did not write is served with an entry of its own (a tag no
   * version shares).
   */
  async get(key: string): Promise<Value | null> {
    const current = this.#index.get(key);
    if (!current) return null;
    const body = this.#cache.get(key, current);
    if (body) return { entry: current, body };
    for (let attempt = 1; ; attempt++) {
      let handle: FileHandle;
      try {
        handle = await open(join(this.dir, key), READ_FLAGS);
      } catch (error) {
        if (isMissing(error) || isNotAFile(error)) return null; // deleted meanwhile, or a link / socket in its place
        throw error;
      }
      let keep = false;
      try {
        const stats = await handle.stat();
        if (!stats.isFile()) return null;
        let entry = await this.#opened(key, stats);
        if (!entry) {
          if (attempt < READ_ATTEMPTS) continue;
          entry = { size: stats.size, mtimeMs: Math.round(stats.mtimeMs), seq: -++this.#strays, ino: stats.ino };
        }
        if (entry.size > STREAM_THRESHOLD) {
          keep = true; // the stream closes the handle
          return { entry, stream: createReadStream("", { fd: handle, start: 0, end: entry.size - 1 }) };
        }
        const bytes = await readExactly(handle, entry.size);
        if (!bytes) {
          if (attempt < READ_ATTEMPTS) continue; // cut short behind the store's back
          throw new Error(`key ${key}: its file is shorter than the ${entry.size} bytes it had`);
        }
        if (entry === this.#index.get(key)) this.#cache.set(key, entry, bytes);
        return { entry, body: bytes };
      } finally {
        if (!keep) await handle.close();
      }
    }
  }

  /**
   * The entry of the file a read opened for `key` (by its inode): the index's, one
   * being renamed in (waits until it is named), or one replaced lately; `undefined`
   * when the store cannot tell.
   */
  async #opened(key: string, stats: Stats): Promise<Entry | undefined> {
    const matches = (entry: Entry | null | undefined): entry is Entry =>
      !!entry && entry.ino === stats.ino && entry.size === stats.size;
    const current = this.#index.get(key);
    if (matches(current)) return current;
    const renaming = this.#renaming.get(stats.ino);
    if (renaming?.key === key) {
      const landed = await renaming.landed;
      if (matches(landed)) return landed;
    }
    const recent = this.#recent.get(stats.ino);
    if (recent?.key === key && matches(recent.entry)) return recent.entry;
    return undefined;
  }

  /**
   * Stores `body` as the value of `key`, durably, and resolves with its entry
   * once the value is on disk (file and directory fsynced). On any error the old
   * value stays and no temporary file is left.
   */
  async put(key: string, body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, options: PutOptions): Promise<Entry> {
    const [result] = await this.putMany(
      [{ key, body, mtimeMs: options.mtimeMs, precondition: options.precondition }],
      options,
    );
    if (!result?.entry) throw result?.error ?? new Error(`the write of ${key} gave no result`);
    return result.entry;
  }

  /**
   * Stores a batch of values, each as durably and atomically as {@link Store.put},
   * with one directory fsync for the batch: every value is written to its own
   * temporary file, fsynced and closed (one descriptor per value in flight), then
   * each is renamed over its key's file (in item order), then the directory is
   * fsynced; it resolves once all of that is on disk, with one result per item in
   * item order. A key this store cannot hold (see {@link PutResult}) gets its
   * error in its result and keeps its old value; the rest is written. Any other
   * error (a body that fails, a full disk, no descriptor left) rejects: then no
   * value that was not yet renamed is written, and no temporary file is left.
   */
  async putMany(items: AsyncIterable<PutItem> | Iterable<PutItem>, options: PutManyOptions): Promise<PutResult[]> {
    const staged: (Staged | undefined)[] = [];
    const results: (PutResult | undefined)[] = [];
    const pull = serialPull(items);
    let failed: { error: unknown } | null = null;
    const worker = async () => {
      while (failed === null) {
        const next = await pull();
        if (next.done) return;
        const { index, value: item } = next;
        try {
          staged[index] = await this.#stage(item, options);
        } catch (error) {
          if (!(error instanceof ValueTooLargeError)) throw error;
          results[index] = { key: item.key, error };
        }
      }
    };
    const workers = Array.from({ length: Math.max(1, options.concurrency ?? 1) }, () =>
      worker().catch((error: unknown) => {
        failed ??= { error };
      }),
    );
    await Promise.all(workers);
    if (failed !== null) {
      await pull.stop();
      await removeAll(staged);
      throw (failed as { error: unknown }).error;
    }
    let renamed = 0;
    try {
      for (let i = 0; i < staged.length; i++) {
        const s = staged[i];
        if (!s) continue;
        staged[i] = undefined; // from here on, renamed or removed: not left for the clean-up below
        try {
          results[i] = { key: s.key, entry: await this.#locked(s.key, () => this.#install(s)) };
          renamed++;
        } catch (error) {
          await unlink(s.tmp).catch(() => {});
          if (!isInTheWay(error)) throw error;
          results[i] = { key: s.key, error: error as Error };
        }
      }
    } catch (error) {
      await removeAll(staged);
      if (renamed > 0) await this.#dirFsync.sync().catch(() => {});
      throw error;
    }
    if (renamed > 0) await this.#dirFsync.sync();
    return results as PutResult[];
  }

  /**
   * Makes a staged value the value of its key: renames its temporary file over
   * the key's file and records the new entry. The one step of a write that makes
   * it visible; run under the key's lock, so renames land in the order the index records.
   */
  async #install(s: Staged): Promise<Entry> {
    const failed = s.precondition?.(this.#index.get(s.key)); // check and write in one step
    if (failed) throw new PreconditionFailedError(failed);
    // A reader may open the new file before the index names it: it finds it here by inode.
    const landed = this.#renamingIn(s.key, s.ino);
    let entry: Entry | null = null;
    try {
      await rename(s.tmp, join(this.dir, s.key));
      entry = this.#entry(s.size, s.mtimeMs, s.ino);
      this.#set(s.key, entry);
      if (s.cached) this.#cache.set(s.key, entry, s.cached);
      return entry;
    } finally {
      landed(entry);
    }
  }

  /**
   * The first half of a write: streams the item's body into a new temporary file,
   * sets its mtime, fsyncs and closes it. On any error the file is removed.
   */
  async #stage(item: PutItem, options: PutManyOptions): Promise<Staged> {
    const tmp = join(this.dir, `${TMP_PREFIX}${this.epoch}-${++this.#tmpCount}`);
    const handle = await open(tmp, "wx", 0o644);
    let closed = false;
    try {
      // Chunks are written in batches of up to WRITE_BATCH_BYTES: one system call for most values.
      let size = 0;
      let cached: Uint8Array[] | null = options.cache === false ? null : [];
      let pending: Uint8Array[] = [];
      let pendingBytes = 0;
      for await (const chunk of item.body) {
        size += chunk.length;
        if (size > options.maxBytes) throw new ValueTooLargeError(`value is larger than ${options.maxBytes} bytes`);
        if (cached && size <= CACHE_ON_WRITE_BYTES) cached.push(chunk);
        else cached = null;
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= WRITE_BATCH_BYTES) {
          await writeAll(handle, pending);
          pending = [];
          pendingBytes = 0;
        }
      }
      if (pendingBytes > 0) await writeAll(handle, pending);
      // The leader's mtime, in whole milliseconds, is set before the fsync (the quick check compares it).
      const given = item.mtimeMs === undefined ? undefined : Math.round(item.mtimeMs);
      if (given !== undefined) await handle.utimes(given / 1000, given / 1000);
      await handle.sync();
      const stats = await handle.stat();
      closed = true;
      await handle.close();
      const mtimeMs = given ?? Math.round(stats.mtimeMs);
      const value = cached && Buffer.concat(cached, size);
      return { key: item.key, tmp, size, mtimeMs, ino: stats.ino, cached: value, precondition: item.precondition };
    } catch (error) {
      if (!closed) await handle.close().catch(() => {});
      await unlink(tmp).catch(() => {});
      throw error;
    }
  }

  /**
   * Removes `key` durably; resolves `false` when it was absent. `precondition` is judged as in {@link PutOptions} (not
   * when absent).
   */
  async delete(key: string, options: { precondition?: Precondition } = {}): Promise<boolean> {
    const removed = await this.#locked(key, async () => {
      if (!this.#index.has(key)) return false;
      const failed = options.precondition?.(this.#index.get(key)); // check and delete in one step
      if (failed) throw new PreconditionFailedError(failed);
      try {
        await unlink(join(this.dir, key));
      } catch (error) {
        if (!isMissing(error)) throw error;
      }
      this.#remove(key);
      return true;
    });
    if (removed) await this.#dirFsync.sync();
    return removed;
  }

  /** The change-feed cursor now, `EPOCH-SEQ`: every change made so far is visible at it. */
  get cursor(): string {
    return formatCursor(this.epoch, this.#seq);
  }

  /** The cursor at which the write that made `entry` is visible. */
  cursorOf(entry: Entry): string {
    return formatCursor(this.epoch, entry.seq);
  }

  /** Resolves at the store's next change (a value written or a key removed), for held watches. */
  nextChange(): Promise<void> {
    if (!this.#changed) {
      let resolve!: () => void;
      const promise = new Promise<void>((done) => (resolve = done));
      this.#changed = { promise, resolve };
    }
    return this.#changed.promise;
  }

  /** Every key, sorted. */
  list(): readonly string[] {
    this.#sorted ??= [...this.#index.keys()].sort();
    return this.#sorted;
  }

  /**
   * What changed since `cursor` (from an earlier answer): the keys written and
   * deleted since. A missing, foreign (other epoch) or too old cursor gets the
   * full listing instead, with `full: true`. With `page`, a full listing is one
   * page of keys sorted by name with `next` set, and an incremental answer
   * longer than `page.limit` becomes the first such page.
   */
  changes(cursor: string | null, page?: ListingPage): Changes {
    const next = formatCursor(this.epoch, this.#seq);
    const since = page?.from !== undefined ? null : seqOf(cursor, this.epoch);
    if (since === null || since < this.#floor || since > this.#seq) return this.#fullListing(next, page);
    const keys: ListedKey[] = [];
    const deleted: string[] = [];
    if (since === this.#seq) return { cursor: next, full: false, keys, deleted };
    const seen = new Set<string>();
    for (const key of this.#logKeys.slice(partitionPoint(this.#logSeq, (seq) => seq <= since))) {
      if (seen.has(key)) continue;
      seen.add(key);
      if (page && seen.size > page.limit) return this.#fullListing(next, page);
      const entry = this.#index.get(key);
      if (entry) keys.push([key, entry.size, entry.mtimeMs]);
      else deleted.push(key);
    }
    return { cursor: next, full: false, keys, deleted };
  }

  /** Every key (unpaged, in index order), or one page of them sorted by name. */
  #fullListing(cursor: string, page: ListingPage | undefined): Changes {
    const keys: ListedKey[] = [];
    if (!page) {
      for (const [key, entry] of this.#index) keys.push([key, entry.size, entry.mtimeMs]);
      return { cursor, full: true, keys, deleted: [] };
    }
    const names = this.list();
    const { from } = page;
    const start = from === undefined ? 0 : partitionPoint(names, (name) => name <= from);
    const end = Math.min(names.length, start + page.limit);
    for (const name of names.slice(start, end)) {
      const entry = this.#index.get(name);
      if (entry) keys.push([name, entry.size, entry.mtimeMs]);
    }
    return { cursor, full: true, keys, deleted: [], next: end < names.length ? (names[end - 1] ?? null) : null };
  }

  /**
   * How many changes were made since `cursor` (a missing or foreign one counts every change of this epoch, the keys
   * found at open included).
   */
  changesSince(cursor: string | null): number {
    return Math.max(0, this.#seq - (seqOf(cursor, this.epoch) ?? 0));
  }

  /**
   * Checks that the directory takes new files (creates and removes a probe file):
   * `null` when it does, else the reason in one line.
   */
  async probeWritable(): Promise<string | null> {
    const probe = join(this.dir, `${TMP_PREFIX}probe-${this.epoch}-${++this.#tmpCount}`);
    try {
      const handle = await open(probe, "w");
      await handle.close();
      await unlink(probe);
      return null;
    } catch (error) {
      return `data directory ${this.dir} is not writable: ${(error as NodeJS.ErrnoException).code ?? String(error)}`;
    }
  }

  /** Waits for writes in flight, then releases the directory handle. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.#locks.values()]);
    await this.#dirFsync.close();
  }

  #entry(size: number, mtimeMs: number, ino: number): Entry {
    const seq = ++this.#seq;
    return { size, mtimeMs, seq, ino };
  }

  /**
   * Registers the file of inode `ino` as being renamed over `key`'s file; call
   * the function returned with its entry once the index names it (`null` when
   * the rename failed). Readers that open it meanwhile wait for that entry.
   */
  #renamingIn(key: string, ino: number): (entry: Entry | null) => void {
    let resolve!: (entry: Entry | null) => void;
    const record = { key, landed: new Promise<Entry | null>((r) => (resolve = r)) };
    this.#renaming.set(ino, record);
    return (entry) => {
      if (this.#renaming.get(ino) === record) this.#renaming.delete(ino);
      resolve(entry);
    };
  }

  /** Remembers a version that was replaced or deleted, for reads that opened its file just before. */
  #superseded(key: string, entry: Entry): void {
    this.#recent.delete(entry.ino); // re-inserted last: an older version that had this inode is forgotten first
    this.#recent.set(entry.ino, { key, entry });
    const [oldest] = this.#recent.keys(); // a Map iterates in insertion order
    if (this.#recent.size > RECENT_VERSIONS && oldest !== undefined) this.#recent.delete(oldest);
  }

  #set(key: string, entry: Entry, logged = true): void {
    const old = this.#index.get(key);
    if (old) {
      this.#bytes -= old.size;
      this.#superseded(key, old);
    } else this.#sorted = null;
    this.#index.set(key, entry);
    this.#bytes += entry.size;
    this.#cache.delete(key);
    if (logged) this.#log(key, entry.seq);
  }

  #remove(key: string): void {
    const old = this.#index.get(key);
    if (!old) return;
    this.#index.delete(key);
    this.#bytes -= old.size;
    this.#superseded(key, old);
    this.#sorted = null;
    this.#cache.delete(key);
    this.#log(key, ++this.#seq);
  }

  #log(key: string, seq: number): void {
    this.#logKeys.push(key);
    this.#logSeq.push(seq);
    this.#changed?.resolve(); // wakes held watches
    this.#changed = null;
    if (this.#logKeys.length > 2 * this.#index.size + this.#maxTombstones + 1024) this.#compactLog();
  }

  /** Keeps the newest change per key, and at most `maxTombstones` deletions (raising the floor). */
  #compactLog(): void {
    const newest = new Map<string, number>();
    this.#logKeys.forEach((key, i) => newest.set(key, this.#logSeq[i] ?? 0));
    let tombstones = 0;
    for (const key of newest.keys()) if (!this.#index.has(key)) tombstones++;
    const keys: string[] = [];
    const seqs: number[] = [];
    this.#logKeys.forEach((key, i) => {
      const seq = this.#logSeq[i] ?? 0;
      if (newest.get(key) !== seq) return;
      if (!this.#index.has(key) && tombstones > this.#maxTombstones) {
        tombstones--;
        this.#floor = seq;
        return;
      }
      keys.push(key);
      seqs.push(seq);
    });
    this.#logKeys = keys;
    this.#logSeq = seqs;
  }

  /** Runs `fn` after every earlier locked operation on `key` (renames land in the order the index records). */
  async #locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#locks.get(key);
    // [snapshot hook] every change passes the snapshots' hook first, and tells it once the index has it.
    const hooked = async () => {
      const done = await this.snapshots.changing(key);
      try {
        return await fn();
      } finally {
        done();
      }
    };
    const run = before ? before.then(hooked, hooked) : hooked();
    const settled = run.then(
      () => {},
      () => {},
    );
    this.#locks.set(key, settled);
    try {
      return await run;
    } finally {
      if (this.#locks.get(key) === settled) this.#locks.delete(key);
    }
  }
}

/** One directory fsync at a time; callers that arrive while one runs share the next. */
class DirFsync {
  #handle: FileHandle;
  #running: Promise<void> | null = null;
  #queued: Promise<void> | null = null;

  constructor(handle: FileHandle) {
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
    await this.#handle.close();
  }

  #start(): Promise<void> {
    const run = this.#handle.sync().finally(() => {
      if (this.#running === run) this.#running = null;
    });
    this.#running = run;
    return run;
  }
}

/** A value held by the cache: the bytes of one entry. */
export interface CachedValue {
  readonly entry: Entry;
  readonly body: Buffer;
  /** A slot for the server: the headers of this value's answer, made on its first GET. */
  headers?: string[];
}

/** A cached value in the cache's recency list. */
interface CacheNode extends CachedValue {
  readonly key: string;
  newer: CacheNode | null;
  older: CacheNode | null;
}

/**
 * Least-recently-used cache of small values, bounded in bytes, checked against the entry.
 *
 * Recency is a linked list beside the Map, not the Map's insertion order: moving a key to the
 * end of a V8 Map (delete, then set) leaves a deleted slot in that key's hash chain each time,
 * so a hot key's next set walks every earlier one until the table is rebuilt (measured: 1.7 µs
 * per hit with 1 000 entries, 117 µs with 55 000), and taking the oldest key by iterating
 * skips every slot deleted at the front. Here a hit moves two pointers and the Map only
 * changes when a key comes in or goes out.
 */
class ValueCache {
  readonly maxValueBytes: number;
  #maxBytes: number;
  #bytes = 0;
  #nodes = new Map<string, CacheNode>();
  #newest: CacheNode | null = null;
  #oldest: CacheNode | null = null;

  constructor(maxBytes: number, maxValueBytes: number) {
    this.#maxBytes = maxBytes;
    this.maxValueBytes = maxBytes > 0 ? maxValueBytes : -1;
  }

  /** The cached value of `key` when it holds `entry`'s bytes; marks it most recently used. */
  hit(key: string, entry: Entry): CachedValue | undefined {
    const node = this.#nodes.get(key);
    if (!node || node.entry !== entry) return undefined;
    if (node !== this.#newest) {
      this.#unlink(node);
      this.#push(node);
    }
    return node;
  }

  /** The bytes of `key` when they are `entry`'s. */
  get(key: string, entry: Entry): Buffer | undefined {
    return this.hit(key, entry)?.body;
  }

  set(key: string, entry: Entry, body: Buffer): void {
    if (body.length > this.maxValueBytes) return;
    this.delete(key);
    const node: CacheNode = { key, entry, body, headers: undefined, newer: null, older: null };
    this.#nodes.set(key, node);
    this.#push(node);
    this.#bytes += body.length + CACHE_ENTRY_OVERHEAD;
    while (this.#bytes > this.#maxBytes && this.#oldest) this.delete(this.#oldest.key);
  }

  delete(key: string): void {
    const node = this.#nodes.get(key);
    if (!node) return;
    this.#nodes.delete(key);
    this.#unlink(node);
    this.#bytes -= node.body.length + CACHE_ENTRY_OVERHEAD;
  }

  #push(node: CacheNode): void {
    node.older = this.#newest;
    node.newer = null;
    if (this.#newest) this.#newest.newer = node;
    else this.#oldest = node;
    this.#newest = node;
  }

  #unlink(node: CacheNode): void {
    if (node.newer) node.newer.older = node.older;
    else this.#newest = node.older;
    if (node.older) node.older.newer = node.newer;
    else this.#oldest = node.newer;
    node.newer = node.older = null;
  }
}

/** Writes all of `chunks`, however many calls it takes (writes may be short). */
async function writeAll(handle: FileHandle, chunks: Uint8Array[]): Promise<void> {
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

/** Reads the first `size` bytes of a file in one buffer; `null` when it has fewer. */
async function readExactly(handle: FileHandle, size: number): Promise<Buffer | null> {
  const buffer = Buffer.allocUnsafeSlow(size); // not a slice of the shared pool: the cache may keep it
  let filled = 0;
  while (filled < size) {
    const { bytesRead } = await handle.read(buffer, filled, size - filled, filled);
    if (bytesRead === 0) return null;
    filled += bytesRead;
  }
  return buffer;
}

/** The seq of `cursor` when it is of this `epoch`; `null` when absent, malformed or of another epoch. */
function seqOf(cursor: string | null, epoch: string): number | null {
  const parsed = parseCursor(cursor);
  return parsed?.epoch === epoch ? parsed.seq : null;
}

/** Errors of a rename that concern only this key: something other than a file is in the way. */
function isInTheWay(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException)?.code;
  return code === "EISDIR" || code === "ENOTEMPTY" || code === "ENOTDIR";
}

/** Removes the temporary files of values staged but not renamed. */
async function removeAll(staged: readonly (Staged | undefined)[]): Promise<void> {
  for (const s of staged) if (s) await unlink(s.tmp).catch(() => {});
}

/**
 * Takes items one at a time from `items`, for several workers: each call waits for
 * the one before (an async iterator must not be advanced twice at once) and numbers
 * the items in order. `stop()` ends the iteration early (a generator's clean-up runs).
 */
function serialPull<T>(items: AsyncIterable<T> | Iterable<T>) {
  const iterator: AsyncIterator<T> | Iterator<T> =
    Symbol.asyncIterator in items
      ? (items as AsyncIterable<T>)[Symbol.asyncIterator]()
      : (items as Iterable<T>)[Symbol.iterator]();
  let last: Promise<unknown> = Promise.resolve();
  let count = 0;
  let done = false;
  const pull = (): Promise<{ done: true } | { done: false; index: number; value: T }> => {
    const next = last.then(async () => {
      if (done) return { done: true } as const;
      const result = await iterator.next();
      if (result.done) {
        done = true;
        return { done: true } as const;
      }
      return { done: false, index: count++, value: result.value } as const;
    });
    last = next.catch(() => {});
    return next;
  };
  pull.stop = async () => {
    await last;
    if (done) return;
    done = true;
    try {
      await iterator.return?.();
    } catch {
      // the source's own clean-up failed: nothing more to do
    }
  };
  return pull;
}

function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException)?.code === "ENOENT";
}

/**
 * What opening something that is not a regular file with {@link READ_FLAGS} throws: a link (`ELOOP`), a socket
 * (`ENXIO`).
 */
function isNotAFile(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException)?.code;
  return code === "ELOOP" || code === "ENXIO";
}

function ignoreMissing(error: unknown): undefined {
  if (isMissing(error)) return undefined;
  throw error;
}
