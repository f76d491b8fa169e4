/**
 * The change log against a model: keys written and deleted at random through
 * the key index (slots freed and reused), the log compacted and its tombstones
 * bounded; from every cursor at or above the floor, the names it gives are
 * exactly those changed after it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ChangeLog } from "../src/store/changelog.ts";
import { KeyIndex } from "../src/store/keyindex.ts";

test("the change log names exactly the keys changed after a cursor, through slot reuse and compaction", () => {
  const index = new KeyIndex();
  const log = new ChangeLog(50);
  const lastChange = new Map<string, number>(); // every name ever changed → its last change number
  let seed = 7;
  const random = (n: number): number => Math.floor(((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * n);
  let seq = 0;
  let checked = 0;
  for (let i = 1; i <= 30_000; i++) {
    const key = `k${random(400)}`;
    if (random(3) < 2) {
      const slot = index.set(key, { size: 1, mtimeUs: i, seq: ++seq, ino: i });
      log.append(slot, seq, index);
      lastChange.set(key, seq);
    } else if (index.has(key)) {
      index.remove(key);
      log.append(key, ++seq, index);
      lastChange.set(key, seq);
    }
    if (i % 1000 === 0) {
      for (const cursor of [log.floor, seq - 1, seq - 50, seq - 500, 0]) {
        if (cursor < log.floor) continue;
        const expected = [...lastChange].filter(([, at]) => at > cursor).map(([name]) => name).sort();
        assert.deepEqual([...new Set(log.since(cursor, index))].sort(), expected, `after ${cursor}`);
        checked++;
      }
    }
  }
  assert.ok(log.floor > 0, "the tombstones' bound raised the floor");
  assert.ok(checked > 60);
});
