/**
 * The store: every key is one file in the data directory, named for the key.
 *
 * A write streams the value into a temporary file (`.tmp-…`, a name no key
 * can have), gives it its version's mtime, fsyncs it, renames it over the key's
 * file and fsyncs the directory before it resolves: a crash at any instant leaves
 * each key with its old or its new value, never a torn one. Writes that finish
 * together share one directory fsync (group commit), and {@link Store.putMany}
 * writes a batch with one directory fsync (a follower's copies), holding one
 * descriptor per value in flight. The one step that makes a write visible is
 * `#install` (a delete's is in {@link Store.delete}), under the key's lock.
 *
 * Opening ({@link Store.open}) reads the directory's names, not their `stat`s,
 * a slice at a time, and says how far it got in {@link Store.opening}; what only
 * `stat` tells (size, mtime, inode) is read when a key is first needed, and for
 * every key in the background once open. In memory: the compact index
 * (`keyindex.ts`), a bounded cache of small values (`cache.ts`; the files stay
 * the truth), and the change log (`changelog.ts`) that followers read through
 * {@link Store.changes}: a cursor `EPOCH-SEQ`, the epoch new every time the
 * store opens or is restored. Leftover temporary files are removed when it opens.
 * Snapshots and restores (`snapshot.ts`) hook in: in every key's lock, at open, and by {@link Store.reindex}.
 *
 * Only regular files are keys: links are never followed, at start (directory
 * entry types) or when read (`O_NOFOLLOW`). A read describes the file it
 * actually opened: it finds the entry by the inode of its open handle (the
 * index's, a write being renamed in, or a recently replaced one), so an entity
 * tag, size or mtime is never paired with another version's bytes and a
 * concurrent write never makes a read fail.
 */
import { randomBytes } from "node:crypto";
import { createReadStream, lstatSync, renameSync, type BigIntStats } from "node:fs";
import { mkdir, open, rename, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { setImmediate as nextTurn } from "node:timers/promises";
import { DEFAULTS } from "../config.ts";
import { isValidKey } from "../keys.ts";
import {
  formatCursor,
  mtimeToWire,
  seqOf,
  versionTag,
  type Changes,
  type ListedKey,
  type ListingPage,
} from "../protocol.ts";
import { ValueCache, type CachedValue } from "./cache.ts";
import { ChangeLog } from "./changelog.ts";
import { forEachLimited, KeyLocks } from "./concurrency.ts";
import { DirFsync, ignoreMissing, isInTheWay, isMissing, isNotAFile, microseconds, probeWritable } from "./files.ts";
import { READ_FLAGS, readExactly, readNames, removeAll, restamp, TMP_PREFIX } from "./files.ts";
import { writeTemp, writeTempDirect } from "./files.ts";
import { KeyIndex, OpenedVersions, type Entry, type ListOptions } from "./keyindex.ts";
import { recover } from "./restore.ts";
import { Snapshots } from "./snapshot.ts";
import { PreconditionFailedError, ValueTooLargeError, type Staged, type StoreOptions, type Value } from "./types.ts";
import type { Precondition, PutItem, PutManyOptions, PutOptions, PutResult } from "./types.ts";

export type { CachedValue } from "./cache.ts";
export type { Entry, ListOptions } from "./keyindex.ts";
export { PreconditionFailedError, ValueTooLargeError } from "./types.ts";
export type { Precondition, PutItem, PutManyOptions, PutOptions, PutResult, StoreOptions, Value } from "./types.ts";

/** Values up to this size go to the cache when written; larger ones (up to the cache's limit) when first read. */
const CACHE_ON_WRITE_BYTES = 4 * 1024;
/** Values larger than this are streamed from the file instead of read whole. */
const STREAM_THRESHOLD = 1024 * 1024;
/** Opens of a key whose file the store cannot name (replaced many times meanwhile) before it is served as found. */
const READ_ATTEMPTS = 3;
/** Keys `stat`ed between two turns of the event loop by the background pass after opening. */
const FILL_SLICE = 2048;

/** One key per file in a directory: `new Store(dir)`, then {@link Store.open} (or the static `Store.open`). */
export class Store {
  /** The data directory. */
  readonly dir: string;
  /** Snapshots and restores of this store (`snapshot.ts`); its hook runs in the key's lock before every change. */
  readonly snapshots: Snapshots = new Snapshots(this);

  #epoch = randomBytes(6).toString("hex");
  #index = new KeyIndex();
  #log: ChangeLog;
  #seq = 0;
  #bytes = 0; // of the values whose size is known
  #unknown = 0; // keys found at start whose file was not `stat`ed yet
  #cache: ValueCache;
  /** Writes and deletes of a key run one after the other: the snapshot of a key's file is taken under it too. */
  #locks = new KeyLocks((key) => this.snapshots.changing(key));
  #dirFsync = new DirFsync();
  #tmpCount = 0;
  /** Versions a read may open that the index does not name: being renamed in, or replaced lately. */
  #versions = new OpenedVersions();
  /** Files found at a key's path that the store did not write (see {@link Store.get}). */
  #strays = 0;
  /** The last mtime given to a version, in µs: each new one is later (see {@link Store.etag}). */
  #clockUs = 0;
  #opening: string | null = "opening the data directory: 0 names read";
  #statInBackground: boolean;
  #closed = false;

  constructor(dir: string, options: StoreOptions = {}) {
    this.dir = dir;
    const cacheBytes = options.cacheBytes ?? DEFAULTS.cacheBytes;
    this.#cache = new ValueCache(cacheBytes, Math.min(options.cacheValueBytes ?? 64 * 1024, cacheBytes));
    this.#log = new ChangeLog(options.maxTombstones ?? 100_000);
    this.#statInBackground = options.statInBackground ?? true;
  }

  /** A new store on `dir`, opened. */
  static async open(dir: string, options: StoreOptions = {}): Promise<Store> {
    const store = new Store(dir, options);
    await store.open();
    return store;
  }

  /**
   * Opens (and creates) the data directory: indexes every regular file whose
   * name is a valid key (other names are left alone) by its name alone, and
   * removes leftover temporary files. The event loop runs between slices of
   * names; {@link Store.opening} says how far it got. Once open, the files are
   * `stat`ed in the background (sizes for {@link Store.bytes}).
   */
  async open(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    this.#dirFsync.attach(await open(this.dir, "r"));
    await this.#load("opening the data directory", true);
  }

  /**
   * [snapshot hook] After a restore replaced the files (every change held): a new epoch, the names indexed again as
   * at open ({@link Store.opening} meanwhile), the clock past `clockUs` (the latest mtime restored) for later versions.
   */
  async reindex(clockUs: number): Promise<void> {
    this.#epoch = randomBytes(6).toString("hex");
    this.#clockUs = Math.max(this.#clockUs, clockUs);
    this.#index = new KeyIndex();
    this.#versions = new OpenedVersions();
    this.#seq = this.#bytes = 0;
    this.#cache.clear();
    await this.#load("indexing the restored data set", false);
  }

  /** Indexes the names (see {@link Store.open}); `atOpen`, it also clears what a stop left. */
  async #load(doing: string, atOpen: boolean): Promise<void> {
    const [leftovers, aside]: [string[], string[]] = [[], []];
    let names = 0;
    this.#opening = `${doing}: 0 names read`;
    for await (const slice of readNames(this.dir)) {
      if (this.#closed) return;
      for (const key of slice.files) if (isValidKey(key)) this.#index.addUnknown(key, ++this.#seq);
      leftovers.push(...slice.leftovers);
      aside.push(...slice.aside);
      names += slice.files.length + slice.leftovers.length;
      this.#opening = `${doing}: ${names} names read`;
    }
    this.#unknown = this.#index.size;
    this.#log.reset(this.#seq); // held watches wake once every name is indexed
    if (atOpen) {
      await forEachLimited(leftovers, 32, (name) => unlink(join(this.dir, name)).catch(ignoreMissing));
      if (leftovers.length > 0) await this.#dirFsync.sync();
      // [snapshot hook] finishes a restore a stop interrupted (then reads the names again), removes snapshot folders
      if (await recover(this.dir, aside)) return this.reindex(0);
    }
    this.#opening = null;
    if (this.#statInBackground) void this.#fillInBackground();
  }

  /** Changes every time the store opens or is restored; part of every cursor. */
  get epoch(): string {
    return this.#epoch;
  }

  /** One line on how far opening got (`opening the data directory: 412000 names read`); `null` once open. */
  get opening(): string | null {
    return this.#opening;
  }

  /** Number of keys stored (exact once open). */
  get count(): number {
    return this.#index.size;
  }

  /** Total bytes of all values (of those `stat`ed so far, in the moments after opening). */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * The strong entity tag of an entry: its mtime in µs and its size (`"MTIME-SIZE"`, base 36). The same on
   * every pod for one version (followers copy the mtime), and new for every version: the store's clock gives
   * each write a later mtime than any it gave before.
   */
  etag(entry: Entry): string {
    return versionTag(entry.mtimeUs, entry.size);
  }

  /** The entry of `key` (its file `stat`ed now if it never was), or `undefined` when absent. */
  stat(key: string): Entry | undefined {
    const slot = this.#index.slot(key);
    if (slot === undefined) return undefined;
    if (!this.#index.known(slot)) this.#statNow(key, slot);
    return this.#index.entryAt(slot);
  }

  /** The value of `key` when it is in the cache (no I/O, no allocation), else `undefined`. */
  cached(key: string): CachedValue | undefined {
    const slot = this.#index.slot(key);
    return slot === undefined ? undefined : this.#cache.hit(key, this.#index.seqAt(slot));
  }

  /**
   * Reads `key`: its bytes (values up to 1 MiB) or a stream of its file, with
   * the entry of exactly those bytes; `null` when absent. A write of the same
   * key meanwhile never makes it fail: it answers the old or the new value.
   * A key whose file was replaced behind the store's back by something that is
   * not a regular file (a link, a directory) reads as absent; a regular file
   * the store did not write is served with an entry of its own. A value read
   * from its file goes to the cache unless `options.cache` is false (default
   * true; a follower's catch-up reads past it, to leave the hot values there).
   */
  async get(key: string, options: { cache?: boolean } = {}): Promise<Value | null> {
    const hit = this.cached(key);
    if (hit) return { entry: hit.entry, body: hit.body };
    if (!this.#index.has(key)) return null;
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
        const stats = await handle.stat({ bigint: true });
        if (!stats.isFile()) return null;
        let entry = await this.#opened(key, stats);
        if (!entry) {
          if (attempt < READ_ATTEMPTS) continue;
          const [size, ino] = [Number(stats.size), Number(stats.ino)];
          entry = { size, mtimeUs: microseconds(stats), seq: -++this.#strays, ino };
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
        if (options.cache !== false && this.#isCurrent(key, entry)) this.#cache.set(key, entry, bytes);
        return { entry, body: bytes };
      } finally {
        if (!keep) await handle.close();
      }
    }
  }

  /**
   * The entry of the file a read opened for `key` (by its inode): the index's
   * (a key found at start takes this first `stat`), one being renamed in (waits
   * until it is named), or one replaced lately; `undefined` when the store cannot tell.
   */
  async #opened(key: string, stats: BigIntStats): Promise<Entry | undefined> {
    const ino = Number(stats.ino);
    const size = Number(stats.size);
    const matches = (entry: Entry | null | undefined): entry is Entry =>
      !!entry && entry.ino === ino && entry.size === size;
    const renaming = this.#versions.renaming(key, ino);
    const slot = this.#index.slot(key);
    if (slot !== undefined) {
      if (!this.#index.known(slot) && !renaming) this.#fill(slot, size, microseconds(stats), ino);
      const current = this.#index.known(slot) ? this.#index.entryAt(slot) : undefined;
      if (matches(current)) return current;
    }
    const landed = await renaming;
    if (matches(landed)) return landed;
    const recent = this.#versions.replaced(key, ino);
    return matches(recent) ? recent : undefined;
  }

  /** True when `entry` is the version the index has for `key`. */
  #isCurrent(key: string, entry: Entry): boolean {
    const slot = this.#index.slot(key);
    return slot !== undefined && this.#index.known(slot) && this.#index.seqAt(slot) === entry.seq;
  }

  /**
   * Stores `body` as the value of `key`, durably, and resolves with its entry
   * once the value is on disk (file and directory fsynced). On any error the old
   * value stays and no temporary file is left.
   */
  async put(key: string, body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, options: PutOptions): Promise<Entry> {
    const [result] = await this.putMany(
      [{ key, body, mtimeUs: options.mtimeUs, precondition: options.precondition }],
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
  async putMany(items: readonly PutItem[], options: PutManyOptions): Promise<PutResult[]> {
    const staged: (Staged | undefined)[] = [];
    const results: (PutResult | undefined)[] = [];
    try {
      await forEachLimited(items, Math.max(1, options.concurrency ?? 1), async (item, i) => {
        try {
          staged[i] = await this.#stage(item, options);
        } catch (error) {
          if (!(error instanceof ValueTooLargeError)) throw error;
          results[i] = { key: item.key, error };
        }
      });
    } catch (error) {
      await removeAll(staged);
      throw error;
    }
    let renamed = 0;
    try {
      for (let i = 0; i < staged.length; i++) {
        const s = staged[i];
        if (!s) continue;
        staged[i] = undefined; // from here on, renamed or removed: not left for the clean-up below
        try {
          results[i] = { key: s.key, entry: await this.#locks.run(s.key, () => this.#install(s)) };
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
   * Makes a staged value the value of its key: renames its temporary file over the key's file and records the new
   * entry. The one step of a write that makes it visible; run under the key's lock (renames land in index order).
   */
  async #install(s: Staged): Promise<Entry> {
    const current = this.stat(s.key); // known from here on: readers of the old file find it among the replaced
    const failed = s.precondition?.(current); // check and write in one step
    if (failed) throw new PreconditionFailedError(failed);
    // Later than the version it replaces, even when the clock stepped back (or the file came from the future).
    const behind = s.clocked && current !== undefined && s.mtimeUs <= current.mtimeUs;
    const mtimeUs = behind ? await restamp(s.tmp, this.#clock(current.mtimeUs)) : s.mtimeUs;
    // A reader may open the new file before the index names it: it finds it here by inode.
    const landed = this.#versions.renamingIn(s.key, s.ino);
    let entry: Entry | null = null;
    try {
      if (s.direct) renameSync(s.tmp, join(this.dir, s.key));
      else await rename(s.tmp, join(this.dir, s.key));
      entry = { size: s.size, mtimeUs, seq: ++this.#seq, ino: s.ino };
      this.#set(s.key, entry);
      if (s.cached) this.#cache.set(s.key, entry, s.cached);
      return entry;
    } finally {
      landed(entry);
    }
  }

  /** The first half of a write: the item's body in a new temporary file with its version's mtime, fsynced. */
  async #stage(item: PutItem, options: PutManyOptions): Promise<Staged> {
    const tmp = join(this.dir, `${TMP_PREFIX}${this.epoch}-${++this.#tmpCount}`);
    const { maxBytes } = options;
    const { mtimeUs } = item;
    const keepBytes = options.cache === false ? 0 : CACHE_ON_WRITE_BYTES;
    // A copy in memory (its mtime given) is written with direct calls; a body that streams in, on the pool.
    const direct = Array.isArray(item.body) && mtimeUs !== undefined;
    const written = direct
      ? await writeTempDirect(tmp, item.body as Uint8Array[], { maxBytes, mtimeUs, keepBytes })
      : await writeTemp(tmp, item.body, {
          maxBytes,
          mtimeUs: mtimeUs ?? ((fileUs) => (fileUs > this.#clockUs ? (this.#clockUs = fileUs) : this.#clock(0))),
          keepBytes,
        });
    const { precondition } = item;
    return { key: item.key, tmp, ...written, clocked: mtimeUs === undefined, direct, precondition };
  }

  /**
   * Removes `key` durably; resolves `false` when it was absent. `precondition` is judged as in {@link PutOptions} (not
   * when absent).
   */
  async delete(key: string, options: { precondition?: Precondition } = {}): Promise<boolean> {
    const removed = await this.#locks.run(key, async () => {
      const current = this.stat(key);
      if (!current) return false;
      const failed = options.precondition?.(current); // check and delete in one step
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
    return this.#log.next();
  }

  /** Keys in name order, as new strings (at a million keys, ask a page at a time); see {@link ListOptions}. */
  list(options: ListOptions = {}): string[] {
    return this.#index.list(options);
  }

  /** The same names as one JSON array in a buffer, made without a string per name (`GET /keys`). */
  listJson(options: ListOptions = {}): Buffer {
    return this.#index.listJson(options);
  }

  /**
   * What changed since `cursor` (from an earlier answer): the keys written and
   * deleted since. A missing, foreign (other epoch) or too old cursor gets the
   * full listing instead, with `full: true`: one page of keys sorted by name
   * with `next` set. An incremental answer longer than `page.limit` becomes the
   * first such page. Default page: no limit.
   */
  changes(cursor: string | null, page: ListingPage = { limit: Infinity }): Changes {
    const next = this.cursor;
    const since = page.from !== undefined ? null : seqOf(cursor, this.epoch);
    if (since === null || since < this.#log.floor || since > this.#seq) return this.#fullListing(next, page);
    const keys: ListedKey[] = [];
    const deleted: string[] = [];
    if (since === this.#seq) return { cursor: next, full: false, keys, deleted };
    const seen = new Set<string>();
    for (const key of this.#log.since(since, this.#index)) {
      if (seen.has(key)) continue;
      seen.add(key);
      if (seen.size > page.limit) return this.#fullListing(next, page);
      const entry = this.stat(key);
      if (entry) keys.push(listed(key, entry));
      else deleted.push(key);
    }
    return { cursor: next, full: false, keys, deleted };
  }

  /** One page of every key, sorted by name. */
  #fullListing(cursor: string, page: ListingPage): Changes {
    const keys: ListedKey[] = [];
    const names = this.list({ after: page.from ?? null, limit: page.limit + 1 }); // one more: is there a next page?
    const more = names.length > page.limit;
    if (more) names.pop();
    for (const name of names) {
      const entry = this.stat(name);
      if (entry) keys.push(listed(name, entry));
    }
    return { cursor, full: true, keys, deleted: [], next: more ? (names.at(-1) ?? null) : null };
  }

  /**
   * How many changes were made since `cursor` (a missing or foreign one counts every change of this epoch, the keys
   * found at open included).
   */
  changesSince(cursor: string | null): number {
    return Math.max(0, this.#seq - (seqOf(cursor, this.epoch) ?? 0));
  }

  /** Checks that the directory takes new files (creates and removes a probe file): `null` when it does, else why. */
  probeWritable(): Promise<string | null> {
    return probeWritable(this.dir, `${TMP_PREFIX}probe-${this.epoch}-${++this.#tmpCount}`);
  }

  /** Stops opening or the background pass, waits for writes in flight, then releases the directory handle. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#locks.idle();
    await this.#dirFsync.close();
  }

  /** A new version's mtime in µs: now, or later than the last one given and than `afterUs`. */
  #clock(afterUs: number): number {
    return (this.#clockUs = Math.max(Date.now() * 1000, this.#clockUs + 1, afterUs + 1));
  }

  /** `stat`s every key found at start that was not needed yet, a slice at a time: the totals become exact. */
  async #fillInBackground(): Promise<void> {
    let done = 0;
    const index = this.#index; // a restore makes a new one (and a new pass)
    for (const [key, slot] of index.entries()) {
      if (done++ % FILL_SLICE === 0) await nextTurn();
      if (this.#unknown === 0 || this.#closed || this.#index !== index) return;
      if (!this.#index.known(slot) && !this.#locks.has(key)) this.#statNow(key, slot);
    }
  }

  /** What only `stat` tells of a key found at start, read now (one `lstat`); not a file (any more): absent. */
  #statNow(key: string, slot: number): void {
    let stats: BigIntStats | undefined;
    try {
      stats = lstatSync(join(this.dir, key), { bigint: true, throwIfNoEntry: false });
    } catch {
      stats = undefined; // unreadable: its reads will say why
    }
    if (stats?.isFile()) this.#fill(slot, Number(stats.size), microseconds(stats), Number(stats.ino));
    else this.#fill(slot, 0, 0, 0);
  }

  #fill(slot: number, size: number, mtimeUs: number, ino: number): void {
    this.#index.fill(slot, size, mtimeUs, ino);
    this.#bytes += size;
    this.#unknown--;
  }

  /** Forgets the version `key` has now (its bytes counted out, kept among the replaced for reads that opened it). */
  #supersede(key: string): void {
    const slot = this.#index.slot(key);
    if (slot === undefined) return;
    if (!this.#index.known(slot)) return void this.#unknown--;
    const old = this.#index.entryAt(slot);
    this.#bytes -= old.size;
    this.#versions.superseded(key, old);
  }

  #set(key: string, entry: Entry): void {
    this.#supersede(key);
    const slot = this.#index.set(key, entry);
    this.#bytes += entry.size;
    this.#cache.delete(key);
    this.#log.append(slot, entry.seq, this.#index); // wakes held watches
  }

  #remove(key: string): void {
    if (!this.#index.has(key)) return;
    this.#supersede(key);
    this.#index.remove(key);
    this.#cache.delete(key);
    this.#log.append(key, ++this.#seq, this.#index);
  }
}

/** A key as listings give it: `[name, size, mtime]`. */
function listed(key: string, entry: Entry): ListedKey {
  return [key, entry.size, mtimeToWire(entry.mtimeUs)];
}
