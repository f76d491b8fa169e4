/**
 * The store's compact key index against a plain Map: keys added, replaced and
 * removed at random (removals shift the hash table's entries back), with the
 * table growing and the names' bytes compacted, give the same slots' entries,
 * count, sorted names (as strings and as a JSON listing) and ranks.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { KeyIndex } from "../src/store/keyindex.ts";

test("the key index agrees with a Map through random sets and removals", () => {
  const index = new KeyIndex();
  const model = new Map<string, number>();
  let seed = 1;
  const random = (n: number): number => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
  for (let i = 1; i <= 200_000; i++) {
    const key = `k${random(5000)}`;
    const op = random(10);
    if (op < 5) {
      index.set(key, { size: i, mtimeUs: i, seq: i, ino: i });
      model.set(key, i);
    } else if (op < 9) {
      index.remove(key);
      model.delete(key);
    } else {
      const slot = index.slot(key);
      assert.equal(slot === undefined ? undefined : index.entryAt(slot).seq, model.get(key), key);
    }
    // Often enough that the names added and removed since are merged into the order (see the next test for more).
    if (i % 500 === 0) assert.deepEqual(index.sorted(), [...model.keys()].sort(), `after ${i} changes`);
    if (i % 20_000 === 0) {
      const sorted = [...model.keys()].sort();
      assert.deepEqual(index.sorted(), sorted);
      assert.deepEqual(index.sorted(10, 20), sorted.slice(10, 20));
      for (const name of ["k", "k1", "k2500", "k4999", "k5", "l", "a"]) {
        const below = sorted.filter((n) => n < name).length;
        assert.equal(index.rank(name), below, name);
        assert.equal(index.rank(name, true), below + (model.has(name) ? 1 : 0), name);
      }
      // The JSON listing (GET /keys) is made from the bytes: the same names, prefix, after and limit as strings.
      const cases = [{}, { prefix: "k1" }, { prefix: "k49" }, { prefix: "x" }, { after: "k2500", limit: 7 },
        { prefix: "k3", after: "k35", through: "k37" }, { after: "k9999" }];
      for (const options of cases) {
        const made = index.listJson(options).toString("latin1");
        assert.equal(made, JSON.stringify(index.list(options)), JSON.stringify(options));
      }
      assert.deepEqual(JSON.parse(index.listJson().toString("latin1")), sorted);
    }
  }
  assert.equal(index.size, model.size);
  for (const [key, seq] of model) assert.equal(index.entryAt(index.slot(key) as number).seq, seq, key);
  assert.deepEqual(new Set([...index.entries()].map(([key]) => key)), new Set(model.keys()));
});

test("keys found at start are unknown until filled, and keep their change number", () => {
  const index = new KeyIndex();
  for (let i = 0; i < 3000; i++) index.addUnknown(`n${i}`, i + 1);
  const slot = index.slot("n1234") as number;
  assert.equal(index.known(slot), false);
  assert.equal(index.seqAt(slot), 1235);
  index.fill(slot, 7, 42, 99);
  assert.deepEqual(index.entryAt(slot), { size: 7, mtimeUs: 42, seq: 1235, ino: 99 });
  assert.equal(index.has("n2999"), true);
  assert.equal(index.has("n3000"), false);
});

test("the index takes keys only (one byte a character)", () => {
  const index = new KeyIndex();
  assert.throws(() => index.set("é", { size: 1, mtimeUs: 1, seq: 1, ino: 1 }), /not a key/);
  assert.throws(() => index.addUnknown(".tmp", 1), /not a key/);
  assert.equal(index.size, 0);
});

test("the name order stays right when most names go or many come between two listings (it is made anew)", () => {
  const index = new KeyIndex();
  const entry = { size: 1, mtimeUs: 1, seq: 1, ino: 1 };
  const names = Array.from({ length: 10_000 }, (_, i) => `n${(i * 7919) % 10_000}`);
  for (const name of names) index.set(name, entry);
  assert.deepEqual(index.sorted(), [...names].sort());
  for (const name of names.slice(0, 9_000)) index.remove(name); // more than half of the order is gone
  assert.deepEqual(index.sorted(), names.slice(9_000).sort());
  const more = Array.from({ length: 5_000 }, (_, i) => `m${i}`); // more names come than the order holds
  for (const name of more) index.set(name, entry);
  assert.deepEqual(index.sorted(), [...more, ...names.slice(9_000)].sort());
});
