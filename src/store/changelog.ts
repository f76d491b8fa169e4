/**
 * The store's change log, what followers read through the change feed: the
 * changes after the floor, oldest first, with their change numbers. A write is
 * logged as its key's slot in the index (a number, no string: a follower
 * catching up a million keys logs a million of them), a deletion as the name.
 * A slot freed since says nothing (its deletion is logged after it); a slot that
 * holds another key since names that key, which its own write logged later
 * anyway. It keeps the newest change per slot and per name, and at most
 * `maxTombstones` deletions; when it forgets older ones it raises the floor, and
 * a cursor below the floor gets the full listing. It also wakes those waiting
 * for the next change (held watches).
 */
import { partitionPoint } from "./sorted.ts";

/** What the log asks of the index. */
export interface Names {
  /** Number of keys. */
  readonly size: number;
  has(name: string): boolean;
  /** The name of a slot in use, `undefined` for a free one. */
  nameOf(slot: number): string | undefined;
}

/** Changes with their change numbers; see the file's header. */
export class ChangeLog {
  /** Cursors at or above this change number can be answered from the log. */
  floor = 0;
  /** A slot written, or a name deleted. */
  #changes: (number | string)[] = [];
  #seqs: number[] = [];
  #maxTombstones: number;
  #next: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(maxTombstones: number) {
    this.#maxTombstones = maxTombstones;
  }

  /** Records the write of a key at `slot`, or the deletion of the key `name`, at `seq`. */
  append(change: number | string, seq: number, names: Names): void {
    this.#changes.push(change);
    this.#seqs.push(seq);
    if (this.#changes.length > 2 * names.size + this.#maxTombstones + 1024) this.#compact(names);
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
    this.#changes = [];
    this.#seqs = [];
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
    for (let i = partitionPoint(this.#seqs, (s) => s <= seq); i < this.#changes.length; i++) {
      const change = this.#changes[i] as number | string;
      const name = typeof change === "string" ? change : names.nameOf(change);
      if (name !== undefined) changed.push(name);
    }
    return changed;
  }

  /** Keeps the newest change per slot and per name, and at most `maxTombstones` deletions (raising the floor). */
  #compact(names: Names): void {
    const newest = new Map<number | string, number>();
    this.#changes.forEach((change, i) => newest.set(change, this.#seqs[i] ?? 0));
    let tombstones = 0;
    for (const change of newest.keys()) if (typeof change === "string" && !names.has(change)) tombstones++;
    const changes: (number | string)[] = [];
    const seqs: number[] = [];
    this.#changes.forEach((change, i) => {
      const seq = this.#seqs[i] ?? 0;
      if (newest.get(change) !== seq) return;
      if (typeof change === "number") {
        if (names.nameOf(change) === undefined) return; // freed: its deletion is logged after
      } else if (names.has(change)) {
        return; // written again since: that write is logged after
      } else if (tombstones > this.#maxTombstones) {
        tombstones--;
        this.floor = seq;
        return;
      }
      changes.push(change);
      seqs.push(seq);
    });
    this.#changes = changes;
    this.#seqs = seqs;
  }
}
