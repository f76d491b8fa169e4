/**
 * The store's index of keys, compact: no object and no Map entry per key.
 *
 * Layout, per slot (a key's number, reused once freed): its name (the key's
 * own string, kept in `#names`), and four numbers in one Float64Array: the
 * value's size, its mtime (µs), the change number that wrote it and its file's
 * inode. A key found at start has a size of -1 (not `stat`ed yet) until first
 * needed. Names find their slot through an open-addressing hash table of
 * integers (a Uint32Array of slot + 1, 0 for empty; linear probing, at most
 * 3/4 full; a removal shifts the entries after it back, no tombstones). The
 * sorted list of names is made when first asked for, then merged with the
 * names added since, not sorted again from scratch.
 *
 * What a key costs beyond its name's string (≈ 32-40 B for 10-20 characters):
 * 32 B of numbers, 8 B for the name's reference, 5-11 B of hash table and 8 B
 * in the sorted list once listed: about 55-60 B. Beside it, {@link OpenedVersions}:
 * the few versions a read may have opened that the index no longer (or not yet) names.
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
/** Cells of the hash table at first (a power of two). */
const FIRST_CELLS = 1024;

/** Keys → slots of numbers; see the file's header. */
export class KeyIndex {
  /** The name of each slot; `undefined` for a free one. */
  #names: (string | undefined)[] = [];
  #data = new Float64Array(FIELDS * FIRST_CELLS);
  /** Open addressing: slot + 1 per cell, 0 when empty; its length is a power of two. */
  #cells = new Uint32Array(FIRST_CELLS);
  #size = 0;
  #free: number[] = [];
  /** Names sorted, as of the last {@link KeyIndex.sorted}; `null` when it must be made from scratch. */
  #sorted: string[] | null = null;
  /** Names added since `#sorted` was made (some may be gone again). */
  #added: string[] = [];
  /** True when some name of `#sorted` may be gone. */
  #removed = false;

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
    const at = (this.slot(key) ?? this.#take(key)) * FIELDS;
    this.#data[at + SIZE] = entry.size;
    this.#data[at + MTIME] = entry.mtimeUs;
    this.#data[at + SEQ] = entry.seq;
    this.#data[at + INO] = entry.ino;
  }

  /** Removes `key`; its slot is reused. */
  remove(key: string): void {
    let cell = this.#find(key);
    const slot = (this.#cells[cell] ?? 0) - 1;
    if (slot < 0) return;
    this.#names[slot] = undefined;
    this.#free.push(slot);
    this.#size--;
    this.#removed = true;
    // Backward shift: move back each following entry whose home cell is not between the hole and it.
    const mask = this.#cells.length - 1;
    let next = cell;
    for (;;) {
      next = (next + 1) & mask;
      const moved = this.#cells[next] ?? 0;
      if (moved === 0) break;
      const home = hash(this.#names[moved - 1] as string) & mask;
      if (((next - home) & mask) >= ((next - cell) & mask)) {
        this.#cells[cell] = moved;
        cell = next;
      }
    }
    this.#cells[cell] = 0;
  }

  /** Every key with its slot, in slot order (a key added meanwhile comes when its slot is not behind). */
  *entries(): IterableIterator<[string, number]> {
    for (let slot = 0; slot < this.#names.length; slot++) {
      const name = this.#names[slot];
      if (name !== undefined) yield [name, slot];
    }
  }

  /**
   * Every name, sorted: the same array until a key comes or goes, then a new one
   * (so a caller may keep walking the array it has). Names added since the last
   * call are sorted and merged in; only a first call sorts every name.
   */
  sorted(): readonly string[] {
    if (this.#sorted === null) {
      const names: string[] = [];
      for (const name of this.#names) if (name !== undefined) names.push(name);
      this.#sorted = names.sort();
    } else if (this.#added.length > 0 || this.#removed) {
      this.#sorted = merge(this.#sorted, this.#added.sort(), this);
    }
    this.#added = [];
    this.#removed = false;
    return this.#sorted;
  }

  /** The cell holding `key`, or the empty cell where it would go. */
  #find(key: string): number {
    const cells = this.#cells;
    const mask = cells.length - 1;
    for (let cell = hash(key) & mask; ; cell = (cell + 1) & mask) {
      const slot = cells[cell] ?? 0;
      if (slot === 0 || this.#names[slot - 1] === key) return cell;
    }
  }

  #take(key: string): number {
    if ((this.#size + 1) * 4 > this.#cells.length * 3) this.#grow();
    const slot = this.#free.pop() ?? this.#names.length;
    if (slot === this.#names.length) this.#names.push(key);
    else this.#names[slot] = key;
    if (slot * FIELDS >= this.#data.length) {
      const grown = new Float64Array(this.#data.length * 2);
      grown.set(this.#data);
      this.#data = grown;
    }
    this.#cells[this.#find(key)] = slot + 1;
    this.#size++;
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

  /** Doubles the hash table. */
  #grow(): void {
    this.#cells = new Uint32Array(this.#cells.length * 2);
    this.#names.forEach((name, slot) => {
      if (name !== undefined) this.#cells[this.#find(name)] = slot + 1;
    });
  }
}

/** FNV-1a of a name's UTF-16 code units. */
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

/** Merges two sorted lists of names into a new one, keeping only names `live` has, each once. */
function merge(old: readonly string[], added: readonly string[], live: { has(key: string): boolean }): string[] {
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
