/**
 * The store's index of keys, compact: no object per key. A Map gives each key
 * a slot; one Float64Array holds, per slot, the value's size, its mtime (µs),
 * the change number that wrote it and its file's inode. A key found at start
 * has its slot with a size of -1 (not `stat`ed yet) until first needed. Freed
 * slots are reused. The sorted list of names is kept for listings and merged
 * with the names added since, not sorted again from scratch.
 *
 * About 70 B a key beyond its name: 32 B of numbers, the Map's entry, and a
 * reference in the sorted list. Beside it, {@link OpenedVersions}: the few
 * versions a read may have opened that the index no longer (or not yet) names.
 */

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

/** Numbers per slot: size, mtime (µs), seq, inode. */
const FIELDS = 4;
const SIZE = 0;
const MTIME = 1;
const SEQ = 2;
const INO = 3;

/** Keys → slots of numbers; see the file's header. */
export class KeyIndex {
  #slots = new Map<string, number>();
  #data = new Float64Array(FIELDS * 1024);
  /** Slots handed out so far (free ones among them are in `#free`). */
  #used = 0;
  #free: number[] = [];
  /** Names sorted, as of the last {@link KeyIndex.sorted}; `null` when it must be made from scratch. */
  #sorted: string[] | null = [];
  /** Names added since `#sorted` was made (some may be gone again). */
  #added: string[] = [];
  /** True when some name of `#sorted` may be gone. */
  #removed = false;

  /** Number of keys. */
  get size(): number {
    return this.#slots.size;
  }

  /** The slot of `key`, or `undefined`. */
  slot(key: string): number | undefined {
    return this.#slots.get(key);
  }

  has(key: string): boolean {
    return this.#slots.has(key);
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

  /** Makes `entry` the version of `key` (added when absent). */
  set(key: string, entry: Entry): void {
    const at = (this.#slots.get(key) ?? this.#take(key)) * FIELDS;
    this.#data[at + SIZE] = entry.size;
    this.#data[at + MTIME] = entry.mtimeUs;
    this.#data[at + SEQ] = entry.seq;
    this.#data[at + INO] = entry.ino;
  }

  /** Removes `key`; its slot is reused. */
  remove(key: string): void {
    const slot = this.#slots.get(key);
    if (slot === undefined) return;
    this.#slots.delete(key);
    this.#free.push(slot);
    this.#removed = true;
  }

  /** Every key with its slot, in the Map's order (keys added while iterating come too). */
  entries(): IterableIterator<[string, number]> {
    return this.#slots.entries();
  }

  /**
   * Every name, sorted: the same array until a key comes or goes, then a new one
   * (so a caller may keep walking the array it has). Names added since the last
   * call are sorted and merged in; only a first call sorts every name.
   */
  sorted(): readonly string[] {
    if (this.#sorted === null) {
      this.#sorted = [...this.#slots.keys()].sort();
    } else if (this.#added.length > 0 || this.#removed) {
      this.#sorted = merge(this.#sorted, this.#added.sort(), this.#slots);
    }
    this.#added = [];
    this.#removed = false;
    return this.#sorted;
  }

  #take(key: string): number {
    let slot = this.#free.pop();
    if (slot === undefined) {
      slot = this.#used++;
      if (slot * FIELDS >= this.#data.length) {
        const grown = new Float64Array(this.#data.length * 2);
        grown.set(this.#data);
        this.#data = grown;
      }
    }
    this.#slots.set(key, slot);
    if (this.#sorted !== null) {
      this.#added.push(key);
      // More names added than sorted: cheaper to sort them all when next asked.
      if (this.#added.length > this.#sorted.length + 1024) {
        this.#sorted = null;
        this.#added = [];
      }
    }
    return slot;
  }
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

/** Merges two sorted lists of names into a new one, keeping only names `live` has, each once. */
function merge(old: readonly string[], added: readonly string[], live: ReadonlyMap<string, number>): string[] {
  const out: string[] = [];
  let i = 0;
  let j = 0;
  let last: string | undefined;
  while (i < old.length || j < added.length) {
    const a = old[i];
    const b = added[j];
    let name: string;
    if (b === undefined || (a !== undefined && a <= b)) {
      name = a as string;
      i++;
    } else {
      name = b;
      j++;
    }
    if (name !== last && live.has(name)) out.push(name);
    last = name;
  }
  return out;
}
