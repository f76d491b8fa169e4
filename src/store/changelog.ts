/**
 * The store's change log, what followers read through the change feed: the
 * keys changed after the floor, oldest first, with their change numbers. It
 * keeps the newest change per key and at most `maxTombstones` deletions; when
 * it forgets older ones it raises the floor, and a cursor below the floor gets
 * the full listing. It also wakes those waiting for the next change (held watches).
 */
import { partitionPoint } from "./sorted.ts";

/** Changed keys with their change numbers; see the file's header. */
export class ChangeLog {
  /** Cursors at or above this change number can be answered from the log. */
  floor = 0;
  #keys: string[] = [];
  #seqs: number[] = [];
  #maxTombstones: number;
  #next: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(maxTombstones: number) {
    this.#maxTombstones = maxTombstones;
  }

  /** Records that `key` changed at `seq`; `live` tells which keys exist now, `count` how many (to bound the log). */
  append(key: string, seq: number, live: { has(key: string): boolean; readonly size: number }): void {
    this.#keys.push(key);
    this.#seqs.push(seq);
    if (this.#keys.length > 2 * live.size + this.#maxTombstones + 1024) this.#compact(live);
    this.#wake();
  }

  /** Resolves at the next change (or {@link ChangeLog.reset}). */
  next(): Promise<void> {
    if (!this.#next) {
      let resolve!: () => void;
      const promise = new Promise<void>((done) => (resolve = done));
      this.#next = { promise, resolve };
    }
    return this.#next.promise;
  }

  /**
   * Forgets every change and sets the floor (the store's names were indexed: at open, or after a restore replaced
   * the data set), and wakes those waiting: everything may have changed.
   */
  reset(floor: number): void {
    this.#keys = [];
    this.#seqs = [];
    this.floor = floor;
    this.#wake();
  }

  #wake(): void {
    this.#next?.resolve();
    this.#next = null;
  }

  /** The keys changed after `seq`, oldest first (a key may come more than once). */
  since(seq: number): string[] {
    return this.#keys.slice(partitionPoint(this.#seqs, (s) => s <= seq));
  }

  /** Keeps the newest change per key, and at most `maxTombstones` deletions (raising the floor). */
  #compact(live: { has(key: string): boolean }): void {
    const newest = new Map<string, number>();
    this.#keys.forEach((key, i) => newest.set(key, this.#seqs[i] ?? 0));
    let tombstones = 0;
    for (const key of newest.keys()) if (!live.has(key)) tombstones++;
    const keys: string[] = [];
    const seqs: number[] = [];
    this.#keys.forEach((key, i) => {
      const seq = this.#seqs[i] ?? 0;
      if (newest.get(key) !== seq) return;
      if (!live.has(key) && tombstones > this.#maxTombstones) {
        tombstones--;
        this.floor = seq;
        return;
      }
      keys.push(key);
      seqs.push(seq);
    });
    this.#keys = keys;
    this.#seqs = seqs;
  }
}
