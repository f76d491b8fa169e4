/** The store on its own: files per key, atomic durable writes, the listing and the change feed. */
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, rename, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { Store, ValueTooLargeError, type PutItem } from "../src/store/store.ts";
import { stopAll, tempDir } from "./helpers/mehdb.ts";
import { sleep } from "./helpers/wait.ts";

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

test("a read with cache: false (a follower's catch-up, GET /values) leaves the cached values where they are", async () => {
  const store = await Store.open(await tempDir(), { cacheBytes: 14_500 });
  const value = (c: string) => chunks(c.repeat(4000));
  for (const key of ["a", "b", "c"]) await store.put(key, value(key), { maxBytes: 10_000 });
  await store.put("big", value("x"), { maxBytes: 10_000 }); // evicts a
  assert.equal((await store.get("a", { cache: false }))?.body?.toString(), "a".repeat(4000));
  assert.deepEqual(["a", "b", "c", "big"].map((k) => store.cached(k) !== undefined), [false, true, true, true]);
  await store.get("a"); // a plain read caches it again
  assert.ok(store.cached("a"));
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
  for (let i = 0; i < 100 && store.bytes === 0; i++) await sleep(10); // the totals are filled in once open
  assert.equal(store.bytes, 5);
  assert.deepEqual((await readdir(dir)).sort(), [".other", "bad name", "kept", "lost+found", "subdir"]);
  assert.equal((await read(store, "kept"))?.toString(), "value");
  await store.close();
});

test("list is sorted and never shows temporary files, even while a write is in flight", async () => {
  const store = await Store.open(await tempDir());
  for (const key of ["b", "a", "C", "0"]) await store.put(key, chunks(key), { maxBytes: 10 });
  let release = () => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  async function* slow(): AsyncGenerator<Buffer> {
    yield Buffer.from("part");
    await gate;
  }
  const pending = store.put("z", slow(), { maxBytes: 10 });
  await sleep(50);
  assert.deepEqual(store.list(), ["0", "C", "a", "b"]);
  release();
  await pending;
  assert.deepEqual(store.list(), ["0", "C", "a", "b", "z"]);
  await store.close();
});

test("list gives a prefix, a range after one name through another, and a page", async () => {
  const dir = await tempDir();
  const names = ["a", "ab", "abc", "abd", "ab_", "b", "b-1", "c", "z", "zz"];
  for (const name of names) await writeFile(join(dir, name), name);
  const store = await Store.open(dir);
  await store.delete("z");
  await store.put("b0", chunks("b0"), { maxBytes: 10 });
  assert.deepEqual(store.list(), ["a", "ab", "ab_", "abc", "abd", "b", "b-1", "b0", "c", "zz"]);
  assert.deepEqual(store.list({ prefix: "ab" }), ["ab", "ab_", "abc", "abd"]);
  assert.deepEqual(store.list({ prefix: "b" }), ["b", "b-1", "b0"]);
  assert.deepEqual(store.list({ prefix: "abz" }), []);
  assert.deepEqual(store.list({ prefix: "z" }), ["zz"]);
  assert.deepEqual(store.list({ prefix: "ab", after: "ab_" }), ["abc", "abd"]);
  assert.deepEqual(store.list({ after: "abd", through: "b0" }), ["b", "b-1", "b0"]);
  assert.deepEqual(store.list({ after: "abcc", through: "b" }), ["abd", "b"]);
  assert.deepEqual(store.list({ after: "b", limit: 2 }), ["b-1", "b0"]);
  assert.deepEqual(store.list({ after: "zz" }), []);
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

test("put with mtimeUs keeps that modification time to the microsecond, through a restart", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  // utimes takes float seconds: every microsecond must survive the round trip, whatever its digits.
  const times = [1_700_000_000_123_456, 1_700_000_000_999_999, 1_700_000_001_000_000, 1_234_567_890_000_001];
  for (let i = 0; i < 200; i++) times.push(1_600_000_000_000_000 + Math.floor(Math.random() * 200_000_000_000_000));
  for (const [i, mtimeUs] of times.entries()) {
    const entry = await store.put(`k${i}`, chunks("v"), { maxBytes: 10, mtimeUs });
    assert.equal(entry.mtimeUs, mtimeUs);
    const onDisk = await stat(join(dir, `k${i}`), { bigint: true });
    assert.equal(Number(onDisk.mtimeNs / 1000n), mtimeUs);
  }
  const tags = times.map((_, i) => store.etag(store.stat(`k${i}`)!));
  await store.close();
  const reopened = await Store.open(dir);
  for (const [i, mtimeUs] of times.entries()) {
    assert.equal(reopened.stat(`k${i}`)?.mtimeUs, mtimeUs);
    assert.equal(reopened.etag(reopened.stat(`k${i}`)!), tags[i], "the same tag after a restart");
  }
  await reopened.close();
});

test("entity tags follow the version: a same-size overwrite gets a new tag, a restart keeps it", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  const tags = new Set<string>();
  for (let i = 0; i < 100; i++) tags.add(store.etag(await store.put("k", chunks(`v${i % 10}`), { maxBytes: 10 })));
  assert.equal(tags.size, 100, "100 writes of the same size in a tight loop, 100 tags");
  const last = store.etag(store.stat("k")!);
  await store.close();
  const reopened = await Store.open(dir);
  assert.equal(reopened.etag(reopened.stat("k")!), last);
  assert.equal(reopened.etag((await reopened.get("k"))!.entry), last);
  const next = reopened.etag(await reopened.put("k", chunks("v9"), { maxBytes: 10 }));
  assert.ok(!tags.has(next), "a write after a restart never reuses a tag of the key");
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

test("change feed: a cursor of another epoch, a malformed one, or one from the future " +
  "gets the full listing", async () => {
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
  const latest = store.changes(null).cursor;
  assert.deepEqual(store.changes(recent), { cursor: latest, full: false, keys: [], deleted: ["x"] });
  await store.close();
});

test("probeWritable: null when the directory takes files", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  assert.equal(await store.probeWritable(), null);
  assert.deepEqual(await readdir(dir), []);
  await store.close();
});

test("putMany: nothing is visible until the batch is written, then all values are, in one go", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  let release = () => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  let taken = 0;
  async function* second(): AsyncGenerator<Buffer> {
    taken++;
    await gate; // the batch waits here for its second value
    yield Buffer.from("22");
  }
  const items: PutItem[] = [
    { key: "one", body: chunks("1"), mtimeUs: 1_700_000_000_000_000 },
    { key: "two", body: second() },
  ];
  const written = store.putMany(items, { maxBytes: 10 });
  while (taken < 1) await sleep(5);
  assert.deepEqual(store.list(), []);
  const keyFiles = (await readdir(dir)).filter((n) => !n.startsWith(".tmp-"));
  assert.equal(keyFiles.length, 0, "no key file before the batch is written");
  release();
  const results = await written;
  assert.deepEqual(results.map((r) => [r.key, r.entry?.size]), [["one", 1], ["two", 2]]);
  assert.deepEqual(store.list(), ["one", "two"]);
  assert.equal(store.stat("one")?.mtimeUs, 1_700_000_000_000_000);
  assert.deepEqual((await readdir(dir)).sort(), ["one", "two"]);
  await store.close();
});

test("putMany: a body that fails drops the whole batch; old values stay and no temporary file is left", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  await store.put("k", chunks("old"), { maxBytes: 10 });
  async function* failing(): AsyncGenerator<Buffer> {
    yield Buffer.from("par");
    throw new Error("connection lost");
  }
  const items: PutItem[] = [
    { key: "k", body: chunks("new") },
    { key: "other", body: chunks("x") },
    { key: "broken", body: failing() },
  ];
  await assert.rejects(store.putMany(items, { maxBytes: 10, concurrency: 2 }), /connection lost/);
  assert.equal((await read(store, "k"))?.toString(), "old");
  assert.deepEqual(store.list(), ["k"]);
  assert.deepEqual(await readdir(dir), ["k"]);
  await store.close();
});

test("an entry names the inode of its file, from a write and from the start-up scan", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  const entry = await store.put("k", chunks("value"), { maxBytes: 10 });
  assert.equal(entry.ino, (await stat(join(dir, "k"))).ino);
  const batch = [{ key: "c", body: chunks("copy"), mtimeUs: 1_700_000_000_000_000 }];
  const [copied] = await store.putMany(batch, { maxBytes: 10 });
  assert.equal(copied?.entry?.ino, (await stat(join(dir, "c"))).ino);
  assert.equal(copied?.entry?.mtimeUs, 1_700_000_000_000_000);
  await store.close();
  const reopened = await Store.open(dir);
  assert.equal(reopened.stat("k")?.ino, entry.ino);
  await reopened.close();
});

test("a read describes the file it opened: " +
  "bytes put in place behind the store's back never get the index's tag", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir, { cacheBytes: 0 });
  const entry = await store.put("k", chunks("old-value"), { maxBytes: 100 });
  await writeFile(join(dir, "other"), "new-value"); // same size, another file
  await rename(join(dir, "other"), join(dir, "k"));
  const value = await store.get("k");
  assert.equal(value?.body?.toString(), "new-value");
  assert.notEqual(store.etag(value.entry), store.etag(entry), "the index's tag is not paired with other bytes");
  assert.equal(value.entry.ino, (await stat(join(dir, "k"))).ino);
  const again = await store.get("k");
  assert.ok(again);
  assert.notEqual(store.etag(again.entry), store.etag(entry));
  await store.close();
});

test("links are not keys: not indexed at start, never followed when read", async () => {
  const dir = await tempDir();
  const outside = await tempDir();
  await writeFile(join(outside, "secret"), "secret");
  await writeFile(join(dir, "kept"), "values");
  await symlink(join(outside, "secret"), join(dir, "link"));
  await symlink("kept", join(dir, "alias"));
  const store = await Store.open(dir, { cacheBytes: 0 });
  assert.deepEqual(store.list(), ["kept"]);
  assert.equal(await store.get("link"), null);
  assert.equal(await store.get("alias"), null);
  // A key's file replaced behind the store's back by a link (to bytes of the same size) or a directory reads as absent.
  await store.put("swapped", chunks("values"), { maxBytes: 10 });
  await rm(join(dir, "swapped"));
  await symlink(join(outside, "secret"), join(dir, "swapped"));
  assert.equal(await store.get("swapped"), null);
  await store.put("dir", chunks("values"), { maxBytes: 10 });
  await rm(join(dir, "dir"));
  await mkdir(join(dir, "dir"));
  assert.equal(await store.get("dir"), null);
  await store.close();
});

test("concurrent writes and reads of one key: every read answers a value written, with its own entry", async () => {
  const store = await Store.open(await tempDir(), { cacheBytes: 0 });
  const size = 64 * 1024;
  const valueOf = (i: number) => Buffer.alloc(size, i % 251);
  await store.put("k", [valueOf(0)], { maxBytes: size });
  const seqBody = new Map<number, number>();
  let writes = 0;
  let reads = 0;
  const writer = async (w: number) => {
    for (let n = 1; n <= 50; n++, writes++) await store.put("k", [valueOf(w * 100 + n)], { maxBytes: size });
  };
  const reader = async () => {
    for (let n = 0; n < 150; n++, reads++) {
      const value = await store.get("k");
      assert.ok(value?.body, "a value, read whole");
      assert.equal(value.body.length, value.entry.size);
      const [fill] = value.body;
      assert.ok(fill !== undefined, "not empty");
      assert.ok(value.body.every((byte) => byte === fill), "not torn");
      const before = seqBody.get(value.entry.seq);
      assert.ok(before === undefined || before === fill, `entry ${value.entry.seq} seen with two values`);
      seqBody.set(value.entry.seq, fill);
    }
  };
  await Promise.all([1, 2, 3, 4].map(writer).concat([1, 2, 3, 4, 5, 6].map(reader)));
  assert.equal(writes, 200);
  assert.equal(reads, 900);
  await store.close();
});

test("putMany: a key the store cannot hold (a directory in the way, a value over the limit) gets its error; " +
  "the rest is written", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  await mkdir(join(dir, "blocked"));
  await writeFile(join(dir, "blocked", "inside"), "x"); // not empty: no rename can replace it
  await mkdir(join(dir, "empty-dir"));
  const results = await store.putMany([
    { key: "a", body: chunks("1") },
    { key: "blocked", body: chunks("2") },
    { key: "big", body: chunks("0123456789", "more") },
    { key: "empty-dir", body: chunks("3") },
    { key: "b", body: chunks("4") },
  ], { maxBytes: 10 });
  assert.deepEqual(results.map((r) => r.key), ["a", "blocked", "big", "empty-dir", "b"]);
  const [a, blocked, big, emptyDir, b] = results;
  assert.equal(a?.entry?.size, 1);
  assert.match((blocked?.error as NodeJS.ErrnoException).code ?? "", /^(EISDIR|ENOTEMPTY)$/);
  assert.ok(big?.error instanceof ValueTooLargeError);
  assert.match((emptyDir?.error as NodeJS.ErrnoException).code ?? "", /^(EISDIR|ENOTEMPTY)$/);
  assert.equal(b?.entry?.size, 1);
  assert.deepEqual(store.list(), ["a", "b"]);
  assert.deepEqual((await readdir(dir)).sort(), ["a", "b", "blocked", "empty-dir"], "no temporary file left");
  // put (a batch of one) throws the key's own error.
  await assert.rejects(store.put("big", chunks("0123456789", "more"), { maxBytes: 10 }), ValueTooLargeError);
  await assert.rejects(store.put("blocked", chunks("2"), { maxBytes: 10 }), /EISDIR|ENOTEMPTY/);
  await store.close();
});

test("putMany of copies in memory with their mtimes (a follower's, written with direct calls): each keeps its mtime; " +
  "a key in the way or a value over the limit gets its error, the rest is written, no temporary file is left", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  await mkdir(join(dir, "blocked"));
  await writeFile(join(dir, "blocked", "inside"), "x");
  const mtimeUs = 1_700_000_000_123_456;
  const copy = (key: string, ...parts: string[]): PutItem => ({ key, body: parts.map((p) => Buffer.from(p)), mtimeUs });
  const results = await store.putMany(
    [copy("a", "one ", "two"), copy("blocked", "2"), copy("big", "0123456789", "more"), copy("b", "")],
    { maxBytes: 10, cache: false, concurrency: 4 },
  );
  const [a, blocked, big, b] = results;
  assert.deepEqual([a?.entry?.size, a?.entry?.mtimeUs, b?.entry?.size], [7, mtimeUs, 0]);
  assert.match((blocked?.error as NodeJS.ErrnoException).code ?? "", /^(EISDIR|ENOTEMPTY)$/);
  assert.ok(big?.error instanceof ValueTooLargeError);
  assert.equal(await readFile(join(dir, "a"), "utf8"), "one two");
  assert.equal((await stat(join(dir, "a"), { bigint: true })).mtimeNs / 1000n, BigInt(mtimeUs), "the given mtime, to the µs");
  assert.equal((await stat(join(dir, "a"))).ino, a?.entry?.ino, "the entry names the file's inode");
  assert.deepEqual(store.list(), ["a", "b"]);
  assert.deepEqual((await readdir(dir)).sort(), ["a", "b", "blocked"], "no temporary file left");
  await store.close();
});

test("putMany holds one temporary file open per value in flight, not one per value of the batch", async () => {
  const dir = await tempDir();
  const store = await Store.open(dir);
  const fds = async () => (await readdir("/proc/self/fd")).length;
  const before = await fds();
  let most = 0;
  async function* body(i: number): AsyncGenerator<Buffer> {
    most = Math.max(most, await fds());
    yield Buffer.from(`value ${i}`);
  }
  const items = Array.from({ length: 300 }, (_, i): PutItem => ({ key: `k${i}`, body: body(i) }));
  const results = await store.putMany(items, { maxBytes: 100, concurrency: 2 });
  assert.equal(results.filter((r) => r.entry).length, 300);
  assert.equal(store.count, 300);
  assert.ok(most - before <= 4, `descriptors open during the batch: ${most - before} more than before`);
  await store.close();
});

test("change feed pages: a full listing in pages sorted by name; " +
  "an incremental answer longer than the limit becomes the first page", async () => {
  const store = await Store.open(await tempDir());
  for (const key of ["d", "a", "e", "c", "b"]) await store.put(key, chunks(key), { maxBytes: 10 });
  const first = store.changes(null, { limit: 2 });
  assert.deepEqual(
    { ...first, keys: first.keys.map(([k]) => k) },
    { cursor: first.cursor, full: true, keys: ["a", "b"], deleted: [], next: "b" },
  );
  const second = store.changes("", { limit: 2, from: "b" });
  assert.deepEqual([second.keys.map(([k]) => k), second.next], [["c", "d"], "d"]);
  const last = store.changes(first.cursor, { limit: 2, from: "d" }); // from: a full page, whatever the cursor
  assert.deepEqual([last.full, last.keys.map(([k]) => k), last.next], [true, ["e"], null]);
  const idle = { cursor: first.cursor, full: false, keys: [], deleted: [] };
  assert.deepEqual(store.changes(first.cursor, { limit: 2 }), idle);

  await store.put("a", chunks("A"), { maxBytes: 10 });
  await store.delete("e");
  const small = store.changes(first.cursor, { limit: 2 });
  assert.deepEqual([small.full, small.keys.map(([k]) => k), small.deleted], [false, ["a"], ["e"]]);
  await store.put("f", chunks("f"), { maxBytes: 10 });
  const long = store.changes(first.cursor, { limit: 2 });
  assert.deepEqual([long.full, long.keys.map(([k]) => k), long.next], [true, ["a", "b"], "b"]);
  assert.equal(store.changes(first.cursor).full, false, "unpaged requests keep the whole incremental answer");
  await store.close();
});

test("a key found at start and never stat'ed yet: its tag, a precondition, a read and a listing are exact", async () => {
  const dir = await tempDir();
  const times = new Map([["a", 1_700_000_000_123_456], ["b", 1_700_000_001_654_321], ["c", 1_700_000_002_000_001]]);
  for (const [key, us] of times) {
    await writeFile(join(dir, key), `value of ${key}`);
    await utimes(join(dir, key), (us + 0.5) / 1e6, (us + 0.5) / 1e6);
  }
  const tagOf = (key: string) => `"${times.get(key)!.toString(36)}-${`value of ${key}`.length.toString(36)}"`;
  const store = await Store.open(dir, { statInBackground: false });
  assert.equal(store.count, 3);
  // A read: the entry of the bytes it opened.
  const value = await store.get("a");
  assert.equal(value?.body?.toString(), "value of a");
  assert.equal(store.etag(value.entry), tagOf("a"));
  // A listing page: sizes and mtimes as the files have them.
  const page = store.changes(null, { limit: 10 });
  assert.deepEqual(page.keys.map(([k, size, ms]) => [k, size, Math.round(ms * 1000)]),
    [...times].map(([k, us]) => [k, `value of ${k}`.length, us]));
  await store.close();
  // Preconditions judged on keys nobody stat'ed before.
  const fresh = await Store.open(dir, { statInBackground: false });
  const ifMatch = (tag: string) => (current: { size: number; mtimeUs: number } | undefined) =>
    current && fresh.etag({ ...current, seq: 0, ino: 0 }) === tag ? null : "does not match";
  await assert.rejects(fresh.put("b", chunks("new"), { maxBytes: 100, precondition: ifMatch('"0-1"') }), /match/);
  await fresh.put("b", chunks("new"), { maxBytes: 100, precondition: ifMatch(tagOf("b")) });
  assert.equal(await fresh.delete("c", { precondition: ifMatch(tagOf("c")) }), true);
  assert.equal(fresh.etag(fresh.stat("a")!), tagOf("a"));
  assert.deepEqual(fresh.list(), ["a", "b"]);
  await fresh.close();
});

test("a new version's mtime is later than the one it replaces, even one from the future (a clock set back)", async () => {
  const dir = await tempDir();
  const future = (Date.now() + 86_400_000) * 1000; // a day ahead, in µs
  await writeFile(join(dir, "k"), "old");
  await utimes(join(dir, "k"), (future + 0.5) / 1e6, (future + 0.5) / 1e6);
  const store = await Store.open(dir);
  const old = store.etag(store.stat("k")!);
  const first = await store.put("k", chunks("new"), { maxBytes: 10 }); // the same size
  assert.ok(first.mtimeUs > future, "later than the version it replaced");
  assert.notEqual(store.etag(first), old);
  const second = await store.put("k", chunks("abc"), { maxBytes: 10 });
  assert.ok(second.mtimeUs > first.mtimeUs);
  assert.equal(Number((await stat(join(dir, "k"), { bigint: true })).mtimeNs / 1000n), second.mtimeUs);
  // A follower's copy keeps the mtime it is given, whatever it replaces.
  const copy = await store.put("k", chunks("cpy"), { maxBytes: 10, mtimeUs: 1_700_000_000_000_000 });
  assert.equal(copy.mtimeUs, 1_700_000_000_000_000);
  await store.close();
});
