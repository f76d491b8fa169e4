/**
 * Snapshot and restore over HTTP, on real processes: `GET /snapshot` while
 * writers run (on the leader and on a follower) holds exactly the data set at
 * its `Mehdb-Cursor`; GNU tar lists and extracts it; `PUT /snapshot` restores
 * all or nothing (bad entries, a full disk, `kill -9` at random moments), with
 * its preconditions, tokens and a follower's `307`; followers converge after it.
 */
import assert from "node:assert/strict";
import { createWriteStream, watch } from "node:fs";
import { link, lstat, mkdir, readdir, readFile, symlink, utimes, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { after, describe, test, type TestContext } from "node:test";
import { must } from "./helpers/commands.ts";
import { converged, dirData, randomInt, randomValue, snapshot as readAll, type Data } from "./helpers/data.ts";
import { assertOneLine, del, header, http, put, readFeed } from "./helpers/http.ts";
import { startFollower, startMehdb, stopAll, tempDir, tmpfsDir } from "./helpers/mehdb.ts";
import { sleep, waitFor } from "./helpers/wait.ts";

after(stopAll);

/** `GET url` saved to `file`, reading slowly (`pause` after each chunk) when asked; the status and headers. */
function download(
  url: string,
  file: string,
  options: { headers?: Record<string, string>; pause?: () => Promise<void> } = {},
): Promise<{ status: number; cursor: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: options.headers }, (res) => {
      const out = createWriteStream(file);
      res.on("data", (chunk: Buffer) => {
        out.write(chunk);
        if (!options.pause) return;
        res.pause();
        options.pause().then(() => res.resume(), reject);
      });
      res.on("end", () => out.end(() => resolve({ status: res.statusCode ?? 0, cursor: headerOf(res.headers) })));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

function headerOf(headers: Record<string, string | string[] | undefined>): string | undefined {
  const value = headers["mehdb-cursor"];
  return typeof value === "string" ? value : undefined;
}

/** `PUT url/snapshot` with the file's bytes. */
async function restore(url: string, file: string, headers: Record<string, string> = {}) {
  return http(`${url}/snapshot`, { method: "PUT", body: await readFile(file), headers, timeoutMs: 60_000 });
}

/** The keys and values of an archive, extracted by GNU tar. */
async function extracted(file: string): Promise<Data> {
  const dir = await tempDir("mehdb-extract-");
  await must("tar", ["-xf", file, "-C", dir]);
  return dirData(dir);
}

/** The seq of a cursor `EPOCH-SEQ`, checking its epoch. */
function seqOf(cursor: string | undefined, epoch: string): number {
  const match = /^([0-9a-zA-Z]+)-(\d+)$/.exec(cursor ?? "");
  assert.ok(match, `a cursor: ${cursor}`);
  assert.equal(match[1], epoch, `cursor ${cursor} of epoch ${epoch}`);
  return Number(match[2]);
}

/** An acknowledged write of one key: its cursor's seq, and the value (`null`: deleted). */
interface Acked {
  seq: number;
  value: Buffer | null;
  /** A DELETE's cursor may be later than the change (other writes became visible before it answered). */
  upperBound: boolean;
}

/**
 * Writers, each on keys of its own, until `stop()`: PUTs (values of 1 B to 96 KiB) and DELETEs, each
 * recorded with the cursor it was acknowledged at. The keys start with a value each.
 */
async function writers(base: string, count: number, keysEach: number) {
  const history = new Map<string, Acked[]>();
  let epoch = "";
  let stopped = false;
  let acked = 0;
  const write = async (key: string, value: Buffer | null) => {
    const answer =
      value === null ? await del(base, key, { keepAlive: true }) : await put(base, key, value, { keepAlive: true });
    if (value === null && answer.status === 404) return;
    assert.equal(answer.status, 200, `${value === null ? "DELETE" : "PUT"} ${key}: ${answer.text}`);
    const cursor = header(answer, "mehdb-cursor");
    epoch ||= cursor.split("-")[0] ?? "";
    const writes = history.get(key) ?? [];
    writes.push({ seq: seqOf(cursor, epoch), value, upperBound: value === null });
    history.set(key, writes);
    acked++;
  };
  const keysOf = (w: number) => Array.from({ length: keysEach }, (_, i) => `w${w}-key-${String(i).padStart(3, "0")}`);
  for (let w = 0; w < count; w++) for (const key of keysOf(w)) await write(key, randomValue(randomInt(1, 96 * 1024)));
  const running = Array.from({ length: count }, async (_, w) => {
    const keys = keysOf(w);
    while (!stopped) {
      const key = keys[randomInt(0, keys.length - 1)] as string;
      await write(key, Math.random() < 0.25 ? null : randomValue(randomInt(0, 96 * 1024)));
    }
  });
  return {
    history,
    epoch: () => epoch,
    acked: () => acked,
    stop: async () => {
      stopped = true;
      await Promise.all(running);
    },
  };
}

/**
 * Checks an archive's data against the writers' acknowledged writes: each key holds the value of its last
 * write at or before `seq` (absent when that was a delete), never a later one. A DELETE whose cursor is past
 * `seq` may have been visible earlier: right after the last write at or before `seq`, it may also be absent.
 */
function checkAgainst(data: Data, history: Map<string, Acked[]>, seq: number): void {
  for (const [key, writes] of history) {
    const before = writes.filter((w) => w.seq <= seq);
    const last = before[before.length - 1];
    const next = writes[before.length];
    const got = data.get(key);
    const expected = last?.value ?? null;
    const maybeDeleted = next?.value === null && next.upperBound;
    if (got === undefined) {
      assert.ok(
        expected === null || maybeDeleted,
        `${key}: absent from the snapshot at seq ${seq}, but its last write at or before it stored a value`,
      );
    } else {
      assert.ok(
        expected !== null,
        `${key}: ${got.length} bytes in the snapshot at seq ${seq}, but its last write at or before it deleted it`,
      );
      const later = writes.slice(before.length).findIndex((w) => w.value?.equals(got));
      const which = later >= 0 ? "a later write's value" : "a value never acknowledged";
      assert.ok(got.equals(expected), `${key}: the snapshot at seq ${seq} holds ${which}, not the last one before`);
    }
  }
  for (const key of data.keys()) assert.ok(history.has(key), `the snapshot holds ${key}, which no one wrote`);
}

describe("GET /snapshot", () => {
  test("while writers run, the archive holds exactly the leader's data at its Mehdb-Cursor", async () => {
    const leader = await startMehdb();
    const load = await writers(leader.url, 4, 40);
    await waitFor(() => load.acked() > 200, "writes under way");
    const file = join(await tempDir(), "snap.tar");
    const atStart = load.acked();
    const got = await download(`${leader.url}/snapshot`, file, { pause: () => sleep(3) });
    const during = load.acked() - atStart;
    await load.stop();
    assert.equal(got.status, 200);
    const seq = seqOf(got.cursor, load.epoch());
    checkAgainst(await extracted(file), load.history, seq);
    assert.ok(during > 10, `only ${during} writes were acknowledged while the snapshot was read`);
    const later = [...load.history.values()].flat().filter((w) => w.seq > seq).length;
    assert.ok(later > 0, "no write came after the snapshot's cursor: the test did not test overlap");
    assert.deepEqual((await readdir(leader.dataDir)).filter((n) => n.startsWith(".snap-")), [], "snapshot folder left");
  });

  test("from a follower: the same, at the leader's cursor its last sync reached", async () => {
    const leader = await startMehdb();
    const follower = await startFollower(leader.url, { waitReady: true });
    const load = await writers(leader.url, 4, 40);
    await waitFor(() => load.acked() > 200, "writes under way");
    const file = join(await tempDir(), "snap.tar");
    const got = await download(`${follower.url}/snapshot`, file, { pause: () => sleep(3) });
    await load.stop();
    assert.equal(got.status, 200);
    checkAgainst(await extracted(file), load.history, seqOf(got.cursor, load.epoch()));
    const head = await http(`${follower.url}/snapshot`, { method: "HEAD" });
    assert.equal(head.status, 200);
    seqOf(header(head, "mehdb-cursor"), load.epoch());
  });

  test("clients that go away mid-archive release their snapshot: no folder left, later snapshots served", async () => {
    const leader = await startMehdb();
    for (let i = 0; i < 40; i++) await put(leader.url, `k-${i}`, randomValue(100_000));
    for (let i = 0; i < 6; i++) {
      await new Promise<void>((resolve, reject) => {
        const req = request(`${leader.url}/snapshot`, (res) => {
          assert.equal(res.statusCode, 200);
          res.once("data", () => {
            req.destroy();
            resolve();
          });
        });
        req.on("error", (error) => (req.destroyed ? resolve() : reject(error)));
        req.end();
      });
      await put(leader.url, `k-${i}`, "changed while a snapshot was open");
    }
    const noFolder = async () => (await readdir(leader.dataDir)).every((n) => !n.startsWith(".snap-"));
    await waitFor(noFolder, "no snapshot folder left");
    const file = join(await tempDir(), "snap.tar");
    assert.equal((await download(`${leader.url}/snapshot`, file)).status, 200);
    assert.equal((await extracted(file)).size, 40);
  });

  test("GNU tar lists and extracts keys of 1 and 200 characters, a 0-byte and a 16 MiB value; mtimes", async () => {
    const leader = await startMehdb();
    const long = "L".repeat(199) + "z";
    const data: Data = new Map([
      ["a", Buffer.from("one")],
      [long, Buffer.from("long name")],
      ["empty", Buffer.alloc(0)],
      ["big", randomValue(16 * 1024 * 1024)],
    ]);
    for (const [key, value] of data) {
      assert.equal((await put(leader.url, key, value, { timeoutMs: 60_000 })).status, 200);
    }
    const file = join(await tempDir(), "snap.tar");
    assert.equal((await download(`${leader.url}/snapshot`, file)).status, 200);
    const listing = await must("tar", ["-tvf", file]);
    const lines = listing.stdout.trim().split("\n");
    assert.equal(lines.length, 4, listing.stdout);
    for (const line of lines) assert.match(line, /^-rw-r--r-- /, `a regular file: ${line}`);
    for (const [key, value] of data) {
      const listed = lines.some((line) => line.endsWith(` ${key}`) && line.includes(` ${value.length} `));
      assert.ok(listed, `${key} listed with ${value.length} bytes:\n${listing.stdout}`);
    }
    const dir = await tempDir("mehdb-extract-");
    await must("tar", ["-xf", file, "-C", dir]);
    const out = await dirData(dir);
    assert.deepEqual([...out.keys()].sort(), [...data.keys()].sort());
    for (const [key, value] of data) {
      assert.ok(out.get(key)?.equals(value), `${key}: the extracted bytes`);
      const kept = Math.floor((await lstat(join(leader.dataDir, key))).mtimeMs / 1000);
      assert.equal(Math.floor((await lstat(join(dir, key))).mtimeMs / 1000), kept, `${key}: mtime kept`);
    }
  });
});

describe("PUT /snapshot", () => {
  test("round trip: into an empty leader and over a full one; followers converge, deletions included", async () => {
    const source = await startMehdb();
    const data: Data = new Map([
      ["a", Buffer.from("A")],
      ["z".repeat(200), randomValue(70_000)],
      ["empty", Buffer.alloc(0)],
    ]);
    for (let i = 0; i < 50; i++) data.set(`k-${i}`, randomValue(randomInt(0, 3000)));
    for (const [key, value] of data) assert.equal((await put(source.url, key, value)).status, 200);
    const file = join(await tempDir(), "snap.tar");
    assert.equal((await download(`${source.url}/snapshot`, file)).status, 200);

    const empty = await startMehdb();
    const into = await restore(empty.url, file, { "If-None-Match": "*" });
    assert.equal(into.status, 200, into.text);
    assert.equal(into.text, `RESTORE completed: ${data.size} keys\n`);
    assert.deepEqual(await readAll(empty.url), await readAll(source.url));

    const full = await startMehdb();
    for (const key of ["a", "old-1", "old-2"]) await put(full.url, key, `old ${key}`);
    const follower = await startFollower(full.url, { waitReady: true });
    await converged(follower.url, full.url);
    const before = await readAll(full.url);
    const cursor = header(await http(`${full.url}/snapshot`, { method: "HEAD" }), "mehdb-cursor");
    for (const [headers, what] of [
      [{ "If-None-Match": "*" }, "If-None-Match: * into a store that has keys"],
      [{ "If-Match": `"${cursor.split("-")[0]}-999"` }, "If-Match of another cursor"],
    ] as const) {
      const refused = await restore(full.url, file, headers);
      assert.equal(refused.status, 412, `${what}: ${refused.text}`);
      assertOneLine(refused);
      assert.deepEqual(await readAll(full.url), before, `${what}: nothing changed`);
    }
    assert.equal((await restore(full.url, file, { "If-Match": "garbage" })).status, 400);
    const done = await restore(full.url, file, { "If-Match": `"${cursor}"` });
    assert.equal(done.status, 200, done.text);
    const after = header(done, "mehdb-cursor");
    assert.notEqual(after.split("-")[0], cursor.split("-")[0], "a new epoch");
    assert.equal(header(await http(`${full.url}/snapshot`, { method: "HEAD" }), "mehdb-cursor"), after);
    assert.deepEqual(await readAll(full.url), await readAll(source.url));
    await converged(follower.url, data);
    for (const key of data.keys()) {
      const mtime = Math.floor((await lstat(join(source.dataDir, key))).mtimeMs / 1000);
      assert.equal(Math.floor((await lstat(join(full.dataDir, key))).mtimeMs / 1000), mtime, `${key}: mtime restored`);
    }
    assert.equal((await put(full.url, "after", "x")).status, 200, "writes go on after a restore");
  });

  test("a snapshot being read while a restore replaces the set holds the old set, whole", async () => {
    const leader = await startMehdb();
    const old: Data = new Map();
    // 30 MB: more than the socket buffers hold, so the server is still reading files when the restore runs.
    for (let i = 0; i < 60; i++) old.set(`k-${String(i).padStart(2, "0")}`, randomValue(randomInt(400_000, 600_000)));
    for (const [key, value] of old) assert.equal((await put(leader.url, key, value)).status, 200);
    const dir = await tempDir("mehdb-set-");
    await mkdir(join(dir, "files"));
    for (const key of ["k-00", "k-59", "new"]) await writeFile(join(dir, "files", key), `new ${key}`);
    await must("tar", ["-cf", join(dir, "new.tar"), "-C", join(dir, "files"), "k-00", "k-59", "new"]);
    let restored = false;
    let chunks = 0;
    const reading = download(`${leader.url}/snapshot`, join(dir, "old.tar"), {
      pause: async () => {
        if (++chunks === 2) assert.equal((await restore(leader.url, join(dir, "new.tar"))).status, 200);
        restored ||= chunks >= 2;
        await sleep(5);
      },
    });
    assert.equal((await reading).status, 200);
    assert.ok(restored, "the restore ran while the snapshot was read");
    assert.deepEqual(await extracted(join(dir, "old.tar")), old);
    assert.deepEqual(await readAll(leader.url), await extracted(join(dir, "new.tar")));
  });

  test("each kind of bad entry is a 400 naming it, and nothing changes", async () => {
    const leader = await startMehdb({ env: { MEHDB_MAX_VALUE_BYTES: "1024" } });
    for (let i = 0; i < 5; i++) await put(leader.url, `keep-${i}`, `value ${i}`);
    const before = await readAll(leader.url);
    const cursor = header(await http(`${leader.url}/snapshot`, { method: "HEAD" }), "mehdb-cursor");
    const dir = await tempDir("mehdb-tars-");
    const files = join(dir, "files");
    await mkdir(join(files, "sub"), { recursive: true });
    await writeFile(join(files, "good"), "good value");
    await writeFile(join(files, "sub", "file"), "in a folder");
    await writeFile(join(files, "bad name"), "x");
    await writeFile(join(files, "large"), Buffer.alloc(1025));
    await symlink("good", join(files, "soft"));
    await link(join(files, "good"), join(files, "hard"));
    await must("mkfifo", [join(files, "fifo")]);
    const tar = async (name: string, ...args: string[]) => {
      await must("tar", ["-cf", join(dir, name), "-C", files, ...args]);
      return join(dir, name);
    };
    const dup = await tar("dup.tar", "good");
    await must("tar", ["-rf", dup, "-C", files, "good"]);
    const good = await readFile(await tar("good.tar", "good"));
    await writeFile(join(dir, "cut.tar"), good.subarray(0, 1024)); // a header and a value, no end
    await writeFile(join(dir, "junk.tar"), randomValue(2048));
    const cases: [string, string, RegExp][] = [
      ["a directory", await tar("dir.tar", "good", "sub"), /"sub\/": is a directory/],
      ["a path", await tar("path.tar", "good", "sub/file"), /"sub\/file": is a path/],
      ["a symbolic link", await tar("soft.tar", "good", "soft"), /"soft": is a link/],
      ["a hard link", await tar("hard.tar", "good", "hard"), /"hard": is a link/],
      ["a FIFO", await tar("fifo.tar", "good", "fifo"), /"fifo": is not a regular file/],
      ["a name that is no key", await tar("name.tar", "good", "bad name"), /"bad name": is not a valid key/],
      [
        "a value over MEHDB_MAX_VALUE_BYTES",
        await tar("large.tar", "good", "large"),
        /"large": is 1025 bytes, more than MEHDB_MAX_VALUE_BYTES \(1024\)/,
      ],
      ["a key twice", dup, /"good": appears twice/],
      ["an archive cut short", join(dir, "cut.tar"), /cut short/],
      ["not a tar archive", join(dir, "junk.tar"), /not a tar archive/],
    ];
    for (const [what, file, message] of cases) {
      const answer = await restore(leader.url, file);
      assert.equal(answer.status, 400, `${what}: ${answer.text}`);
      assertOneLine(answer, what);
      assert.match(answer.text, message, what);
      assert.match(answer.text, /nothing was changed/, what);
      assert.deepEqual(await readAll(leader.url), before, `${what}: the data`);
      const head = await http(`${leader.url}/snapshot`, { method: "HEAD" });
      assert.equal(header(head, "mehdb-cursor"), cursor, `${what}: the cursor`);
      const staged = (await readdir(leader.dataDir)).filter((n) => n.startsWith("."));
      assert.deepEqual(staged, [], `${what}: nothing staged is left`);
    }
  });

  test("kill -9 at random moments of restores: each restart holds the whole old set or the whole new one", async () => {
    const sets: Data[] = [new Map(), new Map()];
    for (let i = 0; i < 300; i++) {
      if (i < 200) sets[0]?.set(`k-${String(i).padStart(3, "0")}`, Buffer.from(`old ${i} `.repeat(randomInt(1, 300))));
      if (i >= 100) sets[1]?.set(`k-${String(i).padStart(3, "0")}`, Buffer.from(`new ${i} `.repeat(randomInt(1, 300))));
    }
    const dir = await tempDir("mehdb-sets-");
    const archives: string[] = [];
    for (const [i, set] of sets.entries()) {
      const files = join(dir, `set-${i}`);
      await mkdir(files);
      for (const [key, value] of set) await writeFile(join(files, key), value);
      archives.push(join(dir, `set-${i}.tar`));
      await must("tar", ["-cf", join(dir, `set-${i}.tar`), "-C", files, ...set.keys()]);
    }
    const dataDir = await tempDir();
    for (const [key, value] of sets[0] ?? []) await writeFile(join(dataDir, key), value);
    let holds = 0; // the set the data directory holds
    let fullMs = 0;
    const outcomes: string[] = [];
    let mehdb = await startMehdb({ dataDir });
    for (let round = 0; round <= 10; round++) {
      const body = await readFile(archives[1 - holds] as string);
      const started = performance.now();
      const answer = http(`${mehdb.url}/snapshot`, { method: "PUT", body, timeoutMs: 30_000 });
      if (round === 0) {
        assert.equal((await answer).status, 200); // an uncut restore: how long one takes
        fullMs = performance.now() - started;
      } else {
        // A third of the kills come at a random moment (mostly while the archive is staged), the others the
        // moment a marker of the commit (remove, then move) appears, mostly while it is applied.
        const trigger = ["", ".commit", ".move"][round % 3] as string;
        const { pid } = mehdb;
        const watcher = watch(dataDir, (_, name) => {
          if (trigger && name?.endsWith(trigger)) process.kill(pid, "SIGKILL");
        });
        await Promise.race([answer.catch(() => {}), sleep(trigger ? 30_000 : Math.random() * fullMs * 1.3)]);
        watcher.close();
        await mehdb.stop("SIGKILL");
        mehdb = await startMehdb({ dataDir });
      }
      const onDisk = await dirData(dataDir);
      assert.deepEqual(await readAll(mehdb.url), onDisk, `round ${round}: what is served is what is on disk`);
      const other = 1 - holds;
      const now = sameData(onDisk, sets[holds] as Data) ? holds : sameData(onDisk, sets[other] as Data) ? other : -1;
      assert.notEqual(now, -1, `round ${round}: ${onDisk.size} keys, neither the old set nor the new one`);
      assert.deepEqual((await readdir(dataDir)).filter((n) => n.startsWith(".")), [], `round ${round}: leftovers`);
      outcomes.push(now === holds ? "old" : "new");
      holds = now;
    }
    // Which moments were hit varies; both outcomes are the contract. Shown when the test fails.
    assert.ok(outcomes.length > 10, outcomes.join(","));
  });

  test("tokens as for other writes; a follower answers 307 to the leader's /snapshot", async () => {
    const dir = await tempDir("mehdb-tokens-");
    await writeFile(join(dir, "write"), "write-secret\n");
    await writeFile(join(dir, "read"), "read-secret\n");
    const env = { MEHDB_WRITE_TOKEN_FILE: join(dir, "write"), MEHDB_READ_TOKEN_FILE: join(dir, "read") };
    const leader = await startMehdb({ env });
    const follower = await startFollower(leader.url, { env, waitReady: true });
    const as = (token: string) => ({ Authorization: `Bearer ${token}` });
    await put(leader.url, "k", "v", { headers: as("write-secret") });
    const file = join(await tempDir(), "snap.tar");
    assert.equal((await download(`${leader.url}/snapshot`, file)).status, 401);
    assert.equal((await download(`${leader.url}/snapshot`, file, { headers: as("read-secret") })).status, 200);
    assert.equal((await download(`${leader.url}/snapshot`, file, { headers: as("write-secret") })).status, 200);
    for (const [base, token, status] of [
      [leader.url, undefined, 401],
      [leader.url, "read-secret", 401],
      [leader.url, "wrong", 401],
      [follower.url, undefined, 401],
      [follower.url, "read-secret", 401],
      [follower.url, "write-secret", 307],
      [leader.url, "write-secret", 200],
    ] as const) {
      const answer = await restore(base, file, token ? as(token) : {});
      const who = base === leader.url ? "leader" : "follower";
      assert.equal(answer.status, status, `PUT ${who} with ${token}: ${answer.text}`);
      assertOneLine(answer);
      if (status === 401) assert.equal(answer.headers["www-authenticate"], 'Bearer realm="mehdb"');
      if (status === 401) assert.match(answer.text, /^unauthorized: writes need /, `PUT ${who} with ${token}`);
      if (status === 307) assert.equal(answer.headers.location, `${leader.url}/snapshot`);
    }
    assert.equal((await download(`${follower.url}/snapshot`, file, { headers: as("read-secret") })).status, 200);
  });

  test("a restore keeps the archive's mtime to the µs (pax); a later write gets a later one than any", async () => {
    const dir = await tempDir();
    const files = join(dir, "files");
    await mkdir(files);
    // One from long ago, one from a clock an hour ahead of this one.
    const times = { past: 1_700_000_000.123456, ahead: Math.floor(Date.now() / 1000) + 3600.654321 };
    const us = new Map<string, number>(); // what the files got (the float's rounding), cut to the µs
    for (const [key, seconds] of Object.entries(times)) {
      await writeFile(join(files, key), `value of ${key}`);
      await utimes(join(files, key), seconds, seconds);
      us.set(key, Number((await lstat(join(files, key), { bigint: true })).mtimeNs / 1000n));
    }
    await must("tar", ["--format=posix", "-cf", join(dir, "set.tar"), "-C", files, ...us.keys()]);
    const leader = await startMehdb();
    assert.equal((await restore(leader.url, join(dir, "set.tar"))).status, 200);
    const mtimeUs = (answer: { headers: Record<string, unknown> }) =>
      parseInt(/^"([0-9a-z]+)-/.exec(String(answer.headers.etag))?.[1] ?? "", 36);
    for (const [key, want] of us) assert.equal(mtimeUs(await http(`${leader.url}/get/${key}`)), want, key);
    const written = await put(leader.url, "new", "value of new");
    assert.ok(mtimeUs(written) > (us.get("ahead") ?? 0), "a write after the restore is later than all restored");
  });

  test("a watch held across a restore answers once every restored key is indexed, with all of them", async () => {
    const dir = await tempDir();
    const files = join(dir, "files");
    await mkdir(files);
    const names = Array.from({ length: 6000 }, (_, i) => `r-${String(i).padStart(5, "0")}`);
    for (const name of names) await writeFile(join(files, name), name);
    await must("tar", ["-cf", join(dir, "set.tar"), "-C", files, ...names]);
    const leader = await startMehdb();
    const cursor = header(await put(leader.url, "before", "v"), "mehdb-cursor");
    const watch = readFeed(leader.url, `since=${cursor}&wait=30000`, 40_000);
    await sleep(200); // the watch is held
    assert.equal((await restore(leader.url, join(dir, "set.tar"))).status, 200);
    const feed = await watch;
    assert.equal(feed.full, true, "a cursor of the old epoch gets the full listing");
    assert.deepEqual(feed.keys.map(([name]) => name).sort(), names);
  });

  test("a full disk is a 507 and nothing changes", async (t: TestContext) => {
    const disk = await tmpfsDir(t, "3m");
    if (disk === null) return;
    const leader = await startMehdb({ dataDir: disk });
    for (let i = 0; i < 3; i++) await put(leader.url, `keep-${i}`, randomValue(100_000));
    const before = await readAll(leader.url);
    const files = await tempDir("mehdb-big-");
    const names = ["b1", "b2", "b3", "b4"];
    for (const name of names) await writeFile(join(files, name), randomValue(1024 * 1024));
    const file = join(files, "big.tar");
    await must("tar", ["-cf", file, "-C", files, ...names]);
    const answer = await restore(leader.url, file);
    assert.equal(answer.status, 507, answer.text);
    assertOneLine(answer);
    assert.deepEqual(await readAll(leader.url), before);
    assert.deepEqual((await readdir(disk)).filter((n) => n.startsWith(".")), [], "nothing staged is left");
    assert.equal((await put(leader.url, "after", "x")).status, 200);
  });
});

function sameData(a: Data, b: Data): boolean {
  return a.size === b.size && [...a].every(([key, value]) => b.get(key)?.equals(value));
}
