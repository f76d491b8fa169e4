/**
 * The store's types and errors: what a read answers, the options of a store
 * and of its writes, a batch write's items and results, and the errors a write
 * throws for one key (too large, precondition failed).
 */
import type { ReadStream } from "node:fs";
import type { Entry } from "./keyindex.ts";

/** A value read from the store: its bytes when small, else a stream of the file. */
export type Value =
  { entry: Entry; body: Buffer; stream?: undefined } | { entry: Entry; body?: undefined; stream: ReadStream };

/** Options of {@link Store}. */
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
  /** `stat` every key found at start in the background once open (the totals). Default true; tests turn it off. */
  statInBackground?: boolean;
}

/** Options of {@link Store.put}. */
export interface PutOptions {
  /** Largest value accepted; more bytes throw {@link ValueTooLargeError}. */
  maxBytes: number;
  /** Modification time to give the file, in µs (a follower keeps its leader's). Default: the store's clock. */
  mtimeUs?: number;
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
  /** Modification time to give the file, in µs (a follower keeps its leader's). Default: the store's clock. */
  mtimeUs?: number;
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
export interface Staged {
  readonly key: string;
  readonly tmp: string;
  readonly size: number;
  readonly mtimeUs: number;
  /** True when the mtime came from the store's clock (a new version), false when given (a follower's copy). */
  readonly clocked: boolean;
  /** True when written with direct calls (`writeTempDirect` in files.ts): it is renamed in the same way. */
  readonly direct: boolean;
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
