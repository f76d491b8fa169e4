/**
 * The store's change log, what followers read through the change feed: the
 * changes after the floor, oldest first, with their change numbers. A write is
 * logged as its key's slot in the index, a deletion as the name; slots and
 * change numbers sit in typed arrays, outside the V8 heap (a follower catching
 * up a million keys logs a million of them). A slot freed since says nothing
 * (its deletion is logged after it); a slot that holds another key since names
 * that key, which its own write logged later anyway. It keeps the newest change
 * per slot and per name, and at most `maxTombstones` deletions; when it forgets
 * older ones it raises the floor, and a cursor below the floor gets the full
 * listing. It also wakes those waiting for the next change (held watches).
 */
import { grown } from "./keyindex.ts";
import { partitionPoint } from "./sorted.ts";

/** What the log asks of the index. */
export interface Names {
  /** Number of keys. */
  readonly size: number;
  has(name: string): boolean;
  /** The name of a slot in use, `undefined` for a free one. */
  nameOf(slot: number): string | undefined;
}

/** Entries the arrays have room for at first. */
const FIRST_ROOM = 1024;

/** Changes with their change numbers; see the file's header. */
export class ChangeLog {
  /** Cursors at or above this change number can be answered from the log. */
  floor = 0;
  /** Per entry: the slot written, or -1 - i for the name `#deleted[i]` deleted. */
  #changes = new Int32Array(FIRST_ROOM);
  #seqs = new Float64Array(FIRST_ROOM);
  #length = 0;
  #deleted: string[] = [];
  #maxTombstones: number;
  #next: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(maxTombstones: number) {
    this.#maxTombstones = maxTombstones;
  }

  /** Records the write of a key at `slot`, or the deletion of the key `name`, at `seq`. */
  append(change: number | string, seq: number, names: Names): void {
    if (this.#length === this.#seqs.length) {
      this.#changes = grown(this.#changes, this.#length * 2);
      this.#seqs = grown(this.#seqs, this.#length * 2);
    }
    this.#changes[this.#length] = typeof change === "number" ? change : -1 - (this.#deleted.push(change) - 1);
    this.#seqs[this.#length++] = seq;
    if (this.#length > 2 * names.size + this.#maxTombstones + 1024) this.#compact(names);
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
    this.#changes = new Int32Array(FIRST_ROOM);
    this.#seqs = new Float64Array(FIRST_ROOM);
    this.#length = 0;
    this.#deleted = [];
    this.floor = floor;
    this.#wake();
  }

  #wake(): void {
    this.#next?.resolve();
    this.#next = null;
  }

  /** The names changed after `seq`, oldest first (a name may come more than once). */
  since(seq: number, names: Names): string[] {
    const changed: string[] = [];
    const first = partitionPoint(this.#seqs.subarray(0, this.#length), (s) => s <= seq); // the first after `seq`
    for (let i = first; i < this.#length; i++) {
      const name = this.#nameOf(this.#changes[i] ?? 0, names);
      if (name !== undefined) changed.push(name);
    }
    return changed;
  }

  /** The name an entry's change is about: the deleted name, or the name its slot holds now. */
  #nameOf(change: number, names: Names): string | undefined {
    return change < 0 ? this.#deleted[-1 - change] : names.nameOf(change);
  }

  /** Keeps the newest change per slot and per name, and at most `maxTombstones` deletions (raising the floor). */
  #compact(names: Names): void {
    const keyOf = (i: number): number | string => {
      const change = this.#changes[i] ?? 0;
      return change < 0 ? (this.#deleted[-1 - change] as string) : change;
    };
    const newest = new Map<number | string, number>();
    for (let i = 0; i < this.#length; i++) newest.set(keyOf(i), i);
    let tombstones = 0;
    for (const key of newest.keys()) if (typeof key === "string" && !names.has(key)) tombstones++;
    const deleted: string[] = [];
    let kept = 0;
    for (let i = 0; i < this.#length; i++) {
      const key = keyOf(i);
      const seq = this.#seqs[i] ?? 0;
      if (newest.get(key) !== i) continue;
      if (typeof key === "number") {
        if (names.nameOf(key) === undefined) continue; // freed: its deletion is logged after
      } else if (names.has(key)) {
        continue; // written again since: that write is logged after
      } else if (tombstones > this.#maxTombstones) {
        tombstones--;
        this.floor = seq;
        continue;
      }
      this.#changes[kept] = typeof key === "number" ? key : -1 - (deleted.push(key) - 1);
      this.#seqs[kept++] = seq;
    }
    this.#length = kept;
    this.#deleted = deleted;
  }
}
