/**
 * The store's index of keys, compact: no object, no string and no Map entry
 * per key, so that a million keys hardly touch V8's heap.
 *
 * Layout, per slot (a key's number, reused once freed): its name's bytes in one
 * shared buffer (keys are ASCII, one byte a character: `keys.ts`), found by
 * an offset and a length (0 for a free slot); and four numbers in one
 * Float64Array: the value's size, its mtime (µs), the change number that wrote
 * it and its file's inode. A key found at start has a size of -1 (not
 * `stat`ed yet) until first needed. Names find their slot through an
 * open-addressing hash table of integers (a Uint32Array of slot + 1, 0 for
 * empty; linear probing, at most 3/4 full; a removal shifts the entries after
 * it back, no tombstones). The slots in name order are sorted when first asked
 * for, then merged with the names added since, not sorted again from scratch.
 * A name becomes a string only when asked for.
 *
 * What a key costs: its name's bytes, 5 B to find them, 32 B of numbers, 5-11 B
 * of hash table and 4 B in the sorted order: about 60 B for 10-20 characters,
 * outside the V8 heap. Beside it, {@link OpenedVersions}: the few versions a
 * read may have opened that the index no longer (or not yet) names.
 */
import { isValidKey, KEY_RULE } from "../keys.ts";
import { partitionPoint } from "./sorted.ts";

/** What the store knows of one key's current version; made when asked for, never stored per key. */
export interface Entry {
  /** Size of the value in bytes. */
  readonly size: number;
  /**
   * Modification time of the file, in whole microseconds (its nanoseconds cut): with the size, the
   * version's entity tag. The leader gives every version a new one; followers copy it.
   */
  readonly mtimeUs: number;
  /**
   * The change number that wrote it (unique within one epoch; negative for a file the store did not write, see {@link
   * Store.get}).
   */
  readonly seq: number;
  /** The inode of its file: how a read knows which version it opened. */
  readonly ino: number;
}

/** Which keys {@link KeyIndex.list} (and the store's `list`) gives. */
export interface ListOptions {
  /** Only names starting with it. Default `""`: every name. */
  prefix?: string;
  /** Only names after it. Default `null`: from the first. */
  after?: string | null;
  /** Only names up to and including it. Default `null`: to the last. */
  through?: string | null;
  /** At most this many (the first ones). Default: all. */
  limit?: number;
}

/** Numbers per slot: size, mtime (µs), seq, inode. */
const FIELDS = 4;
const SIZE = 0;
const MTIME = 1;
const SEQ = 2;
const INO = 3;
/** Slots and cells of the hash table at first (a power of two). */
const FIRST_CELLS = 1024;

/** Keys → slots of numbers; see the file's header. */
export class KeyIndex {
  /** Every slot's name, back to back (with the bytes of removed names until `#makeRoom` drops them). */
  #bytes = Buffer.alloc(16 * FIRST_CELLS);
  /** Bytes of `#bytes` in use, removed names' included. */
  #used = 0;
  /** Bytes of removed names in `#bytes`. */
  #garbage = 0;
  #offsets = new Uint32Array(FIRST_CELLS);
  /** Each slot's name length; 0 for a free slot. */
  #lengths = new Uint8Array(FIRST_CELLS);
  /** Slots ever used: the free ones below are in `#free`. */
  #slots = 0;
  #data = new Float64Array(FIELDS * FIRST_CELLS);
  /** Open addressing: slot + 1 per cell, 0 when empty; its length is a power of two. */
  #cells = new Uint32Array(FIRST_CELLS);
  #size = 0;
  #free: number[] = [];
  /** The slots in name order, as of the last `#sort`; `null` when it must be made from scratch. */
  #sorted: Uint32Array | null = null;
  /** Slots given a name since `#sorted` was made. */
  #added: number[] = [];
  /** Slots freed since `#sorted` was made (some may hold another name again). */
  #removed = new Set<number>();

  /** Number of keys. */
  get size(): number {
    return this.#size;
  }

  /** The slot of `key`, or `undefined`. */
  slot(key: string): number | undefined {
    const slot = (this.#cells[this.#find(key)] ?? 0) - 1;
    return slot < 0 ? undefined : slot;
  }

  has(key: string): boolean {
    return this.slot(key) !== undefined;
  }

  /** True when the slot's size, mtime and inode are known (the file was `stat`ed or written). */
  known(slot: number): boolean {
    return (this.#data[slot * FIELDS + SIZE] ?? -1) >= 0;
  }

  /** The change number of the slot's version. */
  seqAt(slot: number): number {
    return this.#data[slot * FIELDS + SEQ] ?? 0;
  }

  /** The entry of a known slot. */
  entryAt(slot: number): Entry {
    const d = this.#data;
    const at = slot * FIELDS;
    return { size: d[at + SIZE] ?? 0, mtimeUs: d[at + MTIME] ?? 0, seq: d[at + SEQ] ?? 0, ino: d[at + INO] ?? 0 };
  }

  /** The name of a slot in use. */
  nameAt(slot: number): string {
    const start = this.#offsets[slot] ?? 0;
    return this.#bytes.toString("latin1", start, start + (this.#lengths[slot] ?? 0));
  }

  /** The name of a slot in use, `undefined` for a free one. */
  nameOf(slot: number): string | undefined {
    return slot < this.#slots && this.#lengths[slot] !== 0 ? this.nameAt(slot) : undefined;
  }

  /** Adds `key` (not yet present) with only its change number known: a name found at start. */
  addUnknown(key: string, seq: number): void {
    const at = this.#take(key) * FIELDS;
    this.#data[at + SIZE] = -1;
    this.#data[at + SEQ] = seq;
  }

  /** Sets what a `stat` told of a slot found at start (its change number stays). */
  fill(slot: number, size: number, mtimeUs: number, ino: number): void {
    const at = slot * FIELDS;
    this.#data[at + SIZE] = size;
    this.#data[at + MTIME] = mtimeUs;
    this.#data[at + INO] = ino;
  }

  /** Makes `entry` the version of `key` (added when absent); returns its slot. */
  set(key: string, entry: Entry): number {
    const slot = this.slot(key) ?? this.#take(key);
    const at = slot * FIELDS;
    this.#data[at + SIZE] = entry.size;
    this.#data[at + MTIME] = entry.mtimeUs;
    this.#data[at + SEQ] = entry.seq;
    this.#data[at + INO] = entry.ino;
    return slot;
  }

  /** Removes `key`; its slot is reused. */
  remove(key: string): void {
    let cell = this.#find(key);
    const slot = (this.#cells[cell] ?? 0) - 1;
    if (slot < 0) return;
    this.#garbage += this.#lengths[slot] ?? 0;
    this.#lengths[slot] = 0;
    this.#free.push(slot);
    this.#size--;
    if (this.#sorted !== null) {
      this.#removed.add(slot);
      if (this.#removed.size > this.#sorted.length / 2 + 1024) this.#forgetOrder(); // most names gone: sort anew
    }
    // Backward shift: move back each following entry whose home cell is not between the hole and it.
    const mask = this.#cells.length - 1;
    let next = cell;
    for (;;) {
      next = (next + 1) & mask;
      const moved = this.#cells[next] ?? 0;
      if (moved === 0) break;
      const home = this.#hashAt(moved - 1) & mask;
      if (((next - home) & mask) >= ((next - cell) & mask)) {
        this.#cells[cell] = moved;
        cell = next;
      }
    }
    this.#cells[cell] = 0;
  }

  /** Every key with its slot, in slot order (a key added meanwhile comes when its slot is not behind). */
  *entries(): IterableIterator<[string, number]> {
    for (let slot = 0; slot < this.#slots; slot++) {
      if (this.#lengths[slot] !== 0) yield [this.nameAt(slot), slot];
    }
  }

  /**
   * How many names sort before `name` (or before or equal to it, with `orEqual`): where `name` is or would
   * be in name order. Positions hold until a key comes or goes.
   */
  rank(name: string, orEqual = false): number {
    const key = Buffer.from(name, "latin1");
    return partitionPoint(this.#sort(), (slot) => {
      const order = this.#compareTo(slot, key);
      return order < 0 || (orEqual && order === 0);
    });
  }

  /** Names in name order, as new strings; see {@link ListOptions}. */
  list(options: ListOptions = {}): string[] {
    return this.sorted(...this.#range(options));
  }

  /**
   * The same names as a JSON array (`["a","b"]`), copied from their bytes: no string per name, one buffer for
   * the whole answer (a key's characters need no escape in JSON: `keys.ts`).
   */
  listJson(options: ListOptions = {}): Buffer {
    const [start, end] = this.#range(options);
    const sorted = this.#sort();
    const lengths = this.#lengths;
    let size = 2 + Math.max(0, end - start - 1); // brackets and commas
    for (let at = start; at < end; at++) size += 2 + (lengths[sorted[at] ?? 0] ?? 0);
    const out = Buffer.allocUnsafe(size);
    const bytes = this.#bytes;
    let o = 0;
    out[o++] = 0x5b; // [
    for (let at = start; at < end; at++) {
      const slot = sorted[at] ?? 0;
      if (at > start) out[o++] = 0x2c; // ,
      out[o++] = 0x22; // "
      for (let i = this.#offsets[slot] ?? 0, stop = i + (lengths[slot] ?? 0); i < stop; i++) out[o++] = bytes[i] ?? 0;
      out[o++] = 0x22;
    }
    out[o] = 0x5d; // ]
    return out;
  }

  /** The positions in name order, from `start` to `end` (excluded), of the names `options` selects. */
  #range({ prefix = "", after = null, through = null, limit = Infinity }: ListOptions): [number, number] {
    let start = prefix === "" ? 0 : this.rank(prefix);
    if (after !== null) start = Math.max(start, this.rank(after, true));
    // "\x7f" sorts after every key character: the names starting with the prefix sort before prefix + "\x7f".
    let end = prefix === "" ? this.#size : this.rank(`${prefix}\x7f`);
    if (through !== null) end = Math.min(end, this.rank(through, true));
    return [start, Math.max(start, Math.min(end, start + limit))];
  }

  /** The names at positions `start` to `end` (excluded) in name order. */
  sorted(start = 0, end = this.#size): string[] {
    const sorted = this.#sort();
    const names: string[] = [];
    for (let at = Math.max(0, start); at < Math.min(end, this.#size); at++) names.push(this.nameAt(sorted[at] ?? 0));
    return names;
  }

  /** The slots in name order: made from scratch once, then merged with the names added since. */
  #sort(): Uint32Array {
    if (this.#sorted === null) {
      const slots = new Uint32Array(this.#size);
      let n = 0;
      for (let slot = 0; slot < this.#slots; slot++) if (this.#lengths[slot] !== 0) slots[n++] = slot;
      // Most names differ in their first 6 bytes: compare those as one number, the rest only when they are equal.
      const heads = new Float64Array(this.#slots);
      for (const slot of slots) heads[slot] = this.#head(slot);
      this.#sorted = slots.sort((a, b) => (heads[a] ?? 0) - (heads[b] ?? 0) || this.#compare(a, b));
    } else if (this.#added.length > 0 || this.#removed.size > 0) {
      const added = [...new Set(this.#added)].filter((slot) => this.#lengths[slot] !== 0);
      this.#sorted = this.#merge(this.#sorted, added.sort((a, b) => this.#compare(a, b)));
    }
    this.#added = [];
    this.#removed.clear();
    return this.#sorted;
  }

  /** Drops the name order and what changed since it was made: the next `#sort` starts from scratch. */
  #forgetOrder(): void {
    this.#sorted = null;
    this.#added = [];
    this.#removed.clear();
  }

  /** `old` without the slots removed since, merged with `added` (sorted, all live). */
  #merge(old: Uint32Array, added: readonly number[]): Uint32Array {
    const out = new Uint32Array(this.#size);
    let n = 0;
    let j = 0;
    for (const slot of old) {
      if (this.#removed.has(slot)) continue;
      while (j < added.length && this.#compare(added[j] ?? 0, slot) < 0) out[n++] = added[j++] ?? 0;
      out[n++] = slot;
    }
    while (j < added.length) out[n++] = added[j++] ?? 0;
    return out;
  }

  /** The first 6 bytes of a slot's name as a number (zeros past its end: no key has a zero byte). */
  #head(slot: number): number {
    const at = this.#offsets[slot] ?? 0;
    const length = this.#lengths[slot] ?? 0;
    let head = 0;
    for (let i = 0; i < 6; i++) head = head * 256 + (i < length ? (this.#bytes[at + i] ?? 0) : 0);
    return head;
  }

  /** Byte order of two slots' names (the order of their strings: keys are ASCII). */
  #compare(a: number, b: number): number {
    const bytes = this.#bytes;
    const at = this.#offsets[a] ?? 0;
    const bt = this.#offsets[b] ?? 0;
    const al = this.#lengths[a] ?? 0;
    const bl = this.#lengths[b] ?? 0;
    for (let i = 0, n = Math.min(al, bl); i < n; i++) {
      const d = (bytes[at + i] ?? 0) - (bytes[bt + i] ?? 0);
      if (d !== 0) return d;
    }
    return al - bl;
  }

  /** Byte order of a slot's name and `key`. */
  #compareTo(slot: number, key: Uint8Array): number {
    const bytes = this.#bytes;
    const at = this.#offsets[slot] ?? 0;
    const length = this.#lengths[slot] ?? 0;
    for (let i = 0, n = Math.min(length, key.length); i < n; i++) {
      const d = (bytes[at + i] ?? 0) - (key[i] ?? 0);
      if (d !== 0) return d;
    }
    return length - key.length;
  }

  /** The cell holding `key`, or the empty cell where it would go. */
  #find(key: string): number {
    const cells = this.#cells;
    const mask = cells.length - 1;
    for (let cell = hash(key) & mask; ; cell = (cell + 1) & mask) {
      const slot = cells[cell] ?? 0;
      if (slot === 0 || this.#is(slot - 1, key)) return cell;
    }
  }

  /** True when `slot` holds the name `key`. */
  #is(slot: number, key: string): boolean {
    if (this.#lengths[slot] !== key.length) return false;
    const bytes = this.#bytes;
    const at = this.#offsets[slot] ?? 0;
    for (let i = 0; i < key.length; i++) if (bytes[at + i] !== key.charCodeAt(i)) return false;
    return true;
  }

  /** {@link hash} of a slot's name, from its bytes. */
  #hashAt(slot: number): number {
    const bytes = this.#bytes;
    const at = this.#offsets[slot] ?? 0;
    let h = 0x811c9dc5;
    for (let i = at, end = at + (this.#lengths[slot] ?? 0); i < end; i++) {
      h = Math.imul(h ^ (bytes[i] ?? 0), 0x01000193);
    }
    return h >>> 0;
  }

  #take(key: string): number {
    if (!isValidKey(key)) throw new Error(`not a key: ${JSON.stringify(key)}: ${KEY_RULE}`); // one byte a character
    if ((this.#size + 1) * 4 > this.#cells.length * 3) this.#grow();
    const slot = this.#free.pop() ?? this.#slots++;
    if (slot >= this.#lengths.length) {
      this.#offsets = grown(this.#offsets, this.#offsets.length * 2);
      this.#lengths = grown(this.#lengths, this.#lengths.length * 2);
      this.#data = grown(this.#data, this.#data.length * 2);
    }
    if (this.#used + key.length > this.#bytes.length) this.#makeRoom(key.length);
    this.#bytes.write(key, this.#used, "latin1");
    this.#offsets[slot] = this.#used;
    this.#lengths[slot] = key.length;
    this.#used += key.length;
    this.#cells[this.#find(key)] = slot + 1;
    this.#size++;
    if (this.#sorted !== null) {
      this.#added.push(slot);
      // More names added than sorted: cheaper to sort them all when next asked.
      if (this.#added.length > this.#sorted.length + 1024) this.#forgetOrder();
    }
    return slot;
  }

  /**
   * Room for `length` more bytes of names: removed names' bytes dropped when they are half, else a buffer twice as
   * big.
   */
  #makeRoom(length: number): void {
    const live = this.#used - this.#garbage;
    const size = live + length > this.#bytes.length / 2 ? this.#bytes.length * 2 : this.#bytes.length;
    const bytes = Buffer.alloc(size);
    let used = 0;
    for (let slot = 0; slot < this.#slots; slot++) {
      const length = this.#lengths[slot] ?? 0;
      if (length === 0) continue;
      const at = this.#offsets[slot] ?? 0;
      this.#bytes.copy(bytes, used, at, at + length);
      this.#offsets[slot] = used;
      used += length;
    }
    this.#bytes = bytes;
    this.#used = used;
    this.#garbage = 0;
  }

  /** Doubles the hash table. */
  #grow(): void {
    const cells = new Uint32Array(this.#cells.length * 2);
    const mask = cells.length - 1;
    for (let slot = 0; slot < this.#slots; slot++) {
      if (this.#lengths[slot] === 0) continue;
      let cell = this.#hashAt(slot) & mask;
      while (cells[cell] !== 0) cell = (cell + 1) & mask;
      cells[cell] = slot + 1;
    }
    this.#cells = cells;
  }
}

/** A typed array of `length` holding `array`'s values first (for arrays that grow by doubling). */
export function grown<T extends Uint8Array | Int32Array | Uint32Array | Float64Array>(array: T, length: number): T {
  const bigger = new (array.constructor as new (length: number) => T)(length);
  bigger.set(array);
  return bigger;
}

/** FNV-1a of a name's characters (its bytes: keys are ASCII). */
function hash(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Replaced or deleted versions remembered by inode, for reads that opened them just before. */
const RECENT_VERSIONS = 1024;

/**
 * Versions of keys a read may have opened while the index names another: files
 * being renamed over their key's file (a reader may open one before the index
 * names it), and versions replaced or deleted lately. Both by inode.
 */
export class OpenedVersions {
  #renaming = new Map<number, { key: string; landed: Promise<Entry | null> }>();
  /** Oldest first. */
  #recent = new Map<number, { key: string; entry: Entry }>();

  /**
   * Registers the file of inode `ino` as being renamed over `key`'s file; call
   * the function returned with its entry once the index names it (`null` when
   * the rename failed). Readers that open it meanwhile wait for that entry.
   */
  renamingIn(key: string, ino: number): (entry: Entry | null) => void {
    let resolve!: (entry: Entry | null) => void;
    const record = { key, landed: new Promise<Entry | null>((r) => (resolve = r)) };
    this.#renaming.set(ino, record);
    return (entry) => {
      if (this.#renaming.get(ino) === record) this.#renaming.delete(ino);
      resolve(entry);
    };
  }

  /** The entry of `key`'s file of inode `ino` once it lands, when it is being renamed in; else `undefined`. */
  renaming(key: string, ino: number): Promise<Entry | null> | undefined {
    const record = this.#renaming.get(ino);
    return record?.key === key ? record.landed : undefined;
  }

  /** Remembers a version of `key` that was replaced or deleted. */
  superseded(key: string, entry: Entry): void {
    this.#recent.delete(entry.ino); // re-inserted last: an older version that had this inode is forgotten first
    this.#recent.set(entry.ino, { key, entry });
    const [oldest] = this.#recent.keys(); // a Map iterates in insertion order
    if (this.#recent.size > RECENT_VERSIONS && oldest !== undefined) this.#recent.delete(oldest);
  }

  /** The version of `key` whose file had inode `ino`, when it was replaced lately. */
  replaced(key: string, ino: number): Entry | undefined {
    const recent = this.#recent.get(ino);
    return recent?.key === key ? recent.entry : undefined;
  }
}
