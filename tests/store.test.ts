// The store on its own: files per key, atomic durable writes, the listing and the change feed.
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { Store, ValueTooLargeError } from "../src/store.ts";
import { stopAll, tempDir } from "./helpers/mehdb.ts";

after(stopAll);

async function* chunks(...parts: (string | Buffer)[]): AsyncGenerator<Buffer> {
  for (const part of parts) yield Buffer.from(part);
}

async function read(store: Store, key: string): Promise<Buffer | null> {
  const value = await store.get(key);
  if (value === null) return null;
  if (value.body) return value.body;
  const parts: Buffer[] = [];
  for await (const part of value.stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

test("put, get, overwrite, delete: one file per key", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  const entry = await store.put("greeting", chunks("hello ", "world"), { maxBytes: 100 });
  assert.equal(entry.size, 11);
  assert.equal(await readFile(join(dir, "greeting"), "utf8"), "hello world");
  assert.equal((await read(store, "greeting"))?.toString(), "hello world");
  await store.put("greeting", chunks("bye"), { maxBytes: 100 });
  assert.equal((await read(store, "greeting"))?.toString(), "bye");
  assert.equal(store.count, 1);
  assert.equal(store.bytes, 3);
  assert.equal(await store.delete("greeting"), true);
  assert.equal(await store.delete("greeting"), false);
  assert.equal(await read(store, "greeting"), null);
  assert.deepEqual(await readdir(dir), []);
  await store.close();
});

test("an empty value is a value", async () => {
  const store = await Store.open(await tempDir());
  await store.put("empty", chunks(), { maxBytes: 10 });
  assert.deepEqual(await read(store, "empty"), Buffer.alloc(0));
  assert.deepEqual(store.list(), ["empty"]);
  await store.close();
});

test("every write gets a new entity tag; the cache never serves an old value", async () => {
  const store = await Store.open(await tempDir());
  const a = await store.put("k", chunks("one"), { maxBytes: 10 });
  const b = await store.put("k", chunks("two"), { maxBytes: 10 });
  assert.notEqual(store.etag(a), store.etag(b));
  assert.equal(store.cached("k")?.body.toString(), "two");
  assert.equal(store.cached("k")?.entry, b);
  await store.close();
});

test("the cache drops the least recently read value first, and a read keeps a value in it", async () => {
  // Room for three 4 000-byte values (with up to 833 bytes of overhead each), not four.
  const store = await Store.open(await tempDir(), { cacheBytes: 14_500 });
  const value = (c: string) => chunks(c.repeat(4000));
  for (const key of ["a", "b", "c"]) await store.put(key, value(key), { maxBytes: 10_000 });
  for (let i = 0; i < 5; i++) assert.ok(store.cached("a"), "a is cached"); // a hot key, read again and again
  await store.put("d", value("d"), { maxBytes: 10_000 }); // evicts b, the least recently used
  assert.deepEqual(["a", "b", "c", "d"].map((k) => store.cached(k) !== undefined), [true, false, true, true]);
  assert.ok(store.cached("c"));
  await store.put("e", value("e"), { maxBytes: 10_000 }); // then a: c was read after it
  assert.deepEqual(["a", "c", "d", "e"].map((k) => store.cached(k) !== undefined), [false, true, true, true]);
  await store.put("c", value("C"), { maxBytes: 10_000 }); // an overwrite replaces the cached bytes
  assert.equal(store.cached("c")?.body.toString(), "C".repeat(4000));
  assert.equal((await read(store, "b"))?.toString(), "b".repeat(4000)); // read from its file, and cached again
  assert.ok(store.cached("b"));
  await store.close();
});

test("a value over the limit is refused and the old value stays, with no temporary file", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  await store.put("k", chunks("old"), { maxBytes: 10 });
  await assert.rejects(store.put("k", chunks("12345", "678901"), { maxBytes: 10 }), ValueTooLargeError);
  assert.equal((await read(store, "k"))?.toString(), "old");
  assert.deepEqual(await readdir(dir), ["k"]);
  await store.close();
});

test("a body that fails midway leaves the old value and no temporary file", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  await store.put("k", chunks("old"), { maxBytes: 100 });
  async function* broken(): AsyncGenerator<Buffer> {
    yield Buffer.from("partial");
    throw new Error("client went away");
  }
  await assert.rejects(store.put("k", broken(), { maxBytes: 100 }), /client went away/);
  assert.equal((await read(store, "k"))?.toString(), "old");
  assert.deepEqual(await readdir(dir), ["k"]);
  await store.close();
});

test("open: indexes valid names, ignores others, removes leftover temporary files", async () => {
  const dir = await tempDir();
  await writeFile(join(dir, "kept"), "value");
  await writeFile(join(dir, ".tmp-abc-1"), "half a val");
  await writeFile(join(dir, ".other"), "not a key");
  await writeFile(join(dir, "bad name"), "not a key");
  await mkdir(join(dir, "lost+found"));
  await mkdir(join(dir, "subdir"));
  const store = await Store.open(dir);
  assert.deepEqual(store.list(), ["kept"]);
  assert.equal(store.bytes, 5);
  assert.deepEqual((await readdir(dir)).sort(), [".other", "bad name", "kept", "lost+found", "subdir"]);
  assert.equal((await read(store, "kept"))?.toString(), "value");
  await store.close();
});

test("list is sorted and never shows temporary files, even while a write is in flight", async () => {
  const store = await Store.open(await tempDir());
  for (const key of ["b", "a", "C", "0"]) await store.put(key, chunks(key), { maxBytes: 10 });
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  async function* slow(): AsyncGenerator<Buffer> {
    yield Buffer.from("part");
    await gate;
  }
  const pending = store.put("z", slow(), { maxBytes: 10 });
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(store.list(), ["0", "C", "a", "b"]);
  release();
  await pending;
  assert.deepEqual(store.list(), ["0", "C", "a", "b", "z"]);
  await store.close();
});

test("concurrent writes to one key: the index, the cache and the file agree", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  await Promise.all(Array.from({ length: 40 }, (_, i) => store.put("k", chunks(`value-${i}`), { maxBytes: 100 })));
  const onDisk = await readFile(join(dir, "k"), "utf8");
  assert.equal((await read(store, "k"))?.toString(), onDisk);
  assert.equal(store.stat("k")?.size, onDisk.length);
  await store.close();
  const reopened = await Store.open(dir);
  assert.equal((await read(reopened, "k"))?.toString(), onDisk);
  await reopened.close();
});

test("large values are streamed from the file", async () => {
  const store = await Store.open(await tempDir());
  const big = Buffer.alloc(3 * 1024 * 1024 + 7, 0xab);
  big.write("start");
  await store.put("big", chunks(big.subarray(0, 1000), big.subarray(1000)), { maxBytes: big.length });
  const value = await store.get("big");
  assert.ok(value?.stream, "a stream");
  const parts: Buffer[] = [];
  for await (const part of value.stream) parts.push(part as Buffer);
  assert.ok(Buffer.concat(parts).equals(big));
  await store.close();
});

test("put with mtimeMs keeps that modification time (whole milliseconds)", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  const mtimeMs = 1_700_000_000_123;
  const entry = await store.put("k", chunks("v"), { maxBytes: 10, mtimeMs });
  assert.equal(entry.mtimeMs, mtimeMs);
  assert.equal(Math.round((await stat(join(dir, "k"))).mtimeMs), mtimeMs);
  await store.close();
  const reopened = await Store.open(dir);
  assert.equal(reopened.stat("k")?.mtimeMs, mtimeMs);
  await reopened.close();
});

test("change feed: full listing first, then only what changed, deletions included", async () => {
  const store = await Store.open(await tempDir());
  await store.put("a", chunks("1"), { maxBytes: 10 });
  await store.put("b", chunks("22"), { maxBytes: 10 });
  const first = store.changes(null);
  assert.equal(first.full, true);
  assert.deepEqual(first.keys.map(([k, size]) => [k, size]).sort(), [["a", 1], ["b", 2]]);

  const idle = store.changes(first.cursor);
  assert.deepEqual(idle, { cursor: first.cursor, full: false, keys: [], deleted: [] });

  await store.put("a", chunks("111"), { maxBytes: 10 });
  await store.put("c", chunks("3"), { maxBytes: 10 });
  await store.delete("b");
  const next = store.changes(first.cursor);
  assert.equal(next.full, false);
  assert.deepEqual(next.keys.map(([k, size]) => [k, size]).sort(), [["a", 3], ["c", 1]]);
  assert.deepEqual(next.deleted, ["b"]);
  assert.notEqual(next.cursor, first.cursor);
  assert.deepEqual(store.changes(next.cursor).keys, []);
  await store.close();
});

test("change feed: a cursor of another epoch, a malformed one, or one from the future gets the full listing", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  await store.put("a", chunks("1"), { maxBytes: 10 });
  const cursor = store.changes(null).cursor;
  await store.close();
  const reopened = await Store.open(dir);
  assert.notEqual(reopened.epoch, store.epoch);
  for (const stale of [cursor, "garbage", `${reopened.epoch}-999999`, `${reopened.epoch}-x`, ""]) {
    const answer = reopened.changes(stale);
    assert.equal(answer.full, true, stale);
    assert.deepEqual(answer.keys.map(([k]) => k), ["a"]);
  }
  await reopened.close();
});

test("change feed: when old deletions are forgotten, older cursors get the full listing", async () => {
  const store = await Store.open(await tempDir(), { maxTombstones: 5 });
  const start = store.changes(null).cursor;
  for (let i = 0; i < 1200; i++) {
    await store.put(`k${i}`, chunks("v"), { maxBytes: 10 });
    await store.delete(`k${i}`);
  }
  assert.equal(store.changes(start).full, true);
  const recent = store.changes(null).cursor;
  await store.put("x", chunks("v"), { maxBytes: 10 });
  await store.delete("x");
  assert.deepEqual(store.changes(recent), { cursor: store.changes(null).cursor, full: false, keys: [], deleted: ["x"] });
  await store.close();
});

test("probeWritable: null when the directory takes files", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  assert.equal(await store.probeWritable(), null);
  assert.deepEqual(await readdir(dir), []);
  await store.close();
});

test("stage then commit: nothing is visible until the commit, then all values are", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  const staged = [
    await store.stage("one", chunks("1"), { maxBytes: 10, mtimeMs: 1_700_000_000_000 }),
    await store.stage("two", chunks("22"), { maxBytes: 10 }),
  ];
  assert.deepEqual(store.list(), []);
  assert.equal((await readdir(dir)).filter((n) => !n.startsWith(".tmp-")).length, 0);
  const entries = await store.commit(staged);
  assert.deepEqual(entries.map((e) => e.size), [1, 2]);
  assert.deepEqual(store.list(), ["one", "two"]);
  assert.equal(store.stat("one")?.mtimeMs, 1_700_000_000_000);
  assert.deepEqual((await readdir(dir)).sort(), ["one", "two"]);
  await store.close();
});

test("discard drops staged values and their temporary files; the old value stays", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  await store.put("k", chunks("old"), { maxBytes: 10 });
  const staged = await store.stage("k", chunks("new"), { maxBytes: 10 });
  await store.discard([staged]);
  assert.equal((await read(store, "k"))?.toString(), "old");
  assert.deepEqual(await readdir(dir), ["k"]);
  await store.close();
});
