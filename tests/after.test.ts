/**
 * Read-your-writes (`?after=CURSOR`) where it used to go wrong: a frozen leader (the follower's answer is
 * bounded, not held for its sync deadline), cursors the leader cannot vouch for (`409`), and keys a follower
 * cannot hold (a `307`, never its stale copy). Real leaders and followers on 127.0.0.1.
 */
import assert from "node:assert/strict";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { dataDirWith, randomValue } from "./helpers/data.ts";
import { assertOneLine, header, http, metric, put, type Answer } from "./helpers/http.ts";
import { startFollower, startMehdb, stopAll, tempDir, type Mehdb } from "./helpers/mehdb.ts";
import { pool, sleep, waitFor } from "./helpers/wait.ts";

after(stopAll);

/** The `Mehdb-Cursor` of a successful write. */
function cursorOf(answer: Answer): string {
  assert.equal(answer.status, 200, answer.text);
  return header(answer, "Mehdb-Cursor");
}

/** `cursor` with its sequence moved `by` changes on: a cursor no write has reached yet. */
function ahead(cursor: string, by = 1000): string {
  const [epoch, seq] = cursor.split("-");
  return `${epoch}-${Number(seq) + by}`;
}

/** Asserts a follower's `307` to the same path and query on `leader`. */
function assertRedirect(got: Answer, leader: Mehdb, pathAndQuery: string): void {
  assert.equal(got.status, 307, `${pathAndQuery}: ${got.status} ${got.text}`);
  assert.equal(got.headers.location, `${leader.url}${pathAndQuery}`);
  assertOneLine(got, pathAndQuery);
}

/** Waits until `follower` has copied `key` with `value`: its sync has reached the write of it. */
function copied(follower: Mehdb, key: string, value: string): Promise<void> {
  return waitFor(async () => (await http(`${follower.url}/get/${key}`)).text === value, `${key} copied`);
}

test("a frozen leader (SIGSTOP): the follower answers ?after= with the 307, without waiting out its sync deadline",
  async () => {
    const leader = await startMehdb({ waitReady: true });
    const cursor = cursorOf(await put(leader.url, "frozen", "v1"));
    // A request to the leader may hang for 20 s; the follower's ?after= answer must not.
    const follower = await startFollower(leader.url, {
      env: { MEHDB_SYNC_INTERVAL_MS: "1000", MEHDB_SYNC_TIMEOUT_MS: "20000" },
      waitReady: true,
    });
    const unreached = ahead(cursor);
    leader.child.kill("SIGSTOP");
    try {
      // Asked over one interval: some arrive before the tick that hangs on the frozen leader starts, some while
      // it hangs. 8 s is a bound on hanging (the old answer came at the sync deadline), not a speed assertion.
      const paths = [0, 250, 500, 750].flatMap((delay) => [
        [delay, `/get/frozen?after=${unreached}`],
        [delay, `/keys?after=${unreached}`],
      ] as const);
      const answers = await Promise.all(paths.map(async ([delay, path]) => {
        await sleep(delay);
        return { path, got: await http(`${follower.url}${path}`, { timeoutMs: 8_000 }) };
      }));
      for (const { path, got } of answers) assertRedirect(got, leader, path);
      const head = await http(`${follower.url}/get/frozen?after=${unreached}`, { method: "HEAD", timeoutMs: 8_000 });
      assert.equal(head.status, 307);
      // A cursor it reached is still answered from its copy.
      const mine = await http(`${follower.url}/get/frozen?after=${cursor}`, { timeoutMs: 8_000 });
      assert.equal(mine.status, 200, mine.text);
      assert.equal(mine.text, "v1");
    } finally {
      leader.child.kill("SIGCONT");
    }
    await follower.stop();
    await leader.stop();
  });

/** What a leader's `409` tells to do. */
const WHAT_TO_DO = "; read without after= for the current value\n";

test("a cursor past the leader's last change: 409 on the leader, 307 to it from a follower", async () => {
  const leader = await startMehdb({ waitReady: true });
  const cursor = cursorOf(await put(leader.url, "seq", "v1"));
  const follower = await startFollower(leader.url, { waitReady: true });
  const madeUp = ahead(cursor);
  for (const path of [`/get/seq?after=${madeUp}`, `/keys?after=${madeUp}`, `/keys?since=&after=${madeUp}`]) {
    const got = await http(`${leader.url}${path}`);
    assert.equal(got.status, 409, `${path}: ${got.status} ${got.text}`);
    assert.equal(got.text, `cannot vouch for after=${madeUp}: this leader's last change is ${cursor}${WHAT_TO_DO}`);
    assertRedirect(await http(`${follower.url}${path}`), leader, path);
  }
  const head = await http(`${leader.url}/get/seq?after=${madeUp}`, { method: "HEAD" });
  assert.equal(head.status, 409);
  // The cursor of the last change itself is vouched for.
  assert.equal((await http(`${leader.url}/get/seq?after=${cursor}`)).text, "v1");
  assert.equal((await http(`${leader.url}/keys?after=${cursor}`)).text, '["seq"]');
  await follower.stop();
  await leader.stop();
});

test("a wiped leader volume (a new epoch): the old cursor is a 409 on the leader, a 307 from a follower; " +
  "since= of the old epoch still gets the full listing", async () => {
  const dataDir = await tempDir();
  const first = await startMehdb({ dataDir, waitReady: true });
  const old = cursorOf(await put(first.url, "wiped", "old volume"));
  assert.equal(await first.stop(), 0);
  await rm(dataDir, { recursive: true, force: true });
  const leader = await startMehdb({ dataDir, port: first.port, waitReady: true });
  const [oldEpoch] = old.split("-");
  const [epoch] = cursorOf(await put(leader.url, "fresh", "new volume")).split("-");
  assert.notEqual(epoch, oldEpoch, "a new epoch");
  const follower = await startFollower(leader.url, { waitReady: true });
  await copied(follower, "fresh", "new volume");
  for (const path of [`/get/wiped?after=${old}`, `/keys?after=${old}`]) {
    const got = await http(`${leader.url}${path}`);
    assert.equal(got.status, 409, `${path}: ${got.status} ${got.text}`);
    assert.equal(got.text, `cannot vouch for after=${old}: it is of epoch ${oldEpoch}, this leader's is ${epoch} ` +
      `(it restarted or its data was replaced since)${WHAT_TO_DO}`);
    assertRedirect(await http(`${follower.url}${path}`), leader, path);
  }
  assert.equal((await http(`${leader.url}/get/wiped?after=${old}`, { method: "HEAD" })).status, 409);
  // Without after= the leader answers what it has.
  assert.equal((await http(`${leader.url}/get/wiped`)).status, 404);
  const feed = JSON.parse((await http(`${leader.url}/keys?since=${old}`)).text) as { full: boolean; keys: unknown[] };
  assert.equal(feed.full, true, "another epoch's since= gets the full listing");
  assert.deepEqual(feed.keys.map((k) => (k as [string])[0]), ["fresh"]);
  await follower.stop();
  await leader.stop();
});

test("a value over the follower's MEHDB_MAX_VALUE_BYTES: ?after= of its write is a 307, a plain read the old value",
  async () => {
    const leader = await startMehdb({ waitReady: true });
    const small = randomValue(500);
    cursorOf(await put(leader.url, "big", small));
    const follower = await startFollower(leader.url, { env: { MEHDB_MAX_VALUE_BYTES: "1000" }, waitReady: true });
    await waitFor(async () => (await http(`${follower.url}/get/big`)).body.equals(small), "the 500-byte value copied");
    const cursor = cursorOf(await put(leader.url, "big", randomValue(2000)));
    // A later write copied: the follower's sync reached the cursor (and skipped the value it cannot hold).
    const later = cursorOf(await put(leader.url, "marker", "copied"));
    await copied(follower, "marker", "copied");
    for (const path of [`/get/big?after=${cursor}`, `/keys?after=${cursor}`]) {
      assertRedirect(await http(`${follower.url}${path}`), leader, path);
    }
    assert.equal((await http(`${follower.url}/get/big?after=${cursor}`, { method: "HEAD" })).status, 307);
    // Keys it holds are answered from its copy; a plain read of the one it cannot hold keeps the old value.
    const marker = await http(`${follower.url}/get/marker?after=${later}`);
    assert.equal(marker.status, 200, marker.text);
    assert.equal(marker.text, "copied");
    const plain = await http(`${follower.url}/get/big`);
    assert.equal(plain.status, 200);
    assert.ok(plain.body.equals(small), "a plain read answers the follower's copy, as before");
    await follower.stop();
    await leader.stop();
  });

test("a directory in the key's place on the follower: ?after= of its write and /keys?after= are 307s", async () => {
  const leader = await startMehdb({ waitReady: true });
  const followerDir = await tempDir();
  await mkdir(join(followerDir, "blocked"));
  const follower = await startFollower(leader.url, { dataDir: followerDir, waitReady: true });
  const cursor = cursorOf(await put(leader.url, "blocked", "a value"));
  const later = cursorOf(await put(leader.url, "marker", "copied"));
  await copied(follower, "marker", "copied");
  for (const path of [`/get/blocked?after=${cursor}`, `/keys?after=${cursor}`, `/keys?since=&after=${later}`]) {
    assertRedirect(await http(`${follower.url}${path}`), leader, path);
  }
  const marker = await http(`${follower.url}/get/marker?after=${later}`);
  assert.equal(marker.status, 200, marker.text);
  // Plain reads keep today's answers.
  assert.equal((await http(`${follower.url}/get/blocked`)).status, 404);
  assert.deepEqual(JSON.parse((await http(`${follower.url}/keys`)).text), ["marker"]);
  await follower.stop();
  await leader.stop();
});

test("more keys in the way than the follower names (10 000): none of them is answered from its copy", async () => {
  const names = Array.from({ length: 10_001 }, (_, i) => `blocked-${String(i).padStart(5, "0")}`);
  const leader = await startMehdb({
    dataDir: await dataDirWith(new Map(names.map((name) => [name, Buffer.from("v")]))),
    waitReady: true,
  });
  const followerDir = await tempDir();
  await pool(names, 64, (name) => mkdir(join(followerDir, name)));
  const follower = await startFollower(leader.url, { dataDir: followerDir, waitReady: true });
  const cursor = cursorOf(await put(leader.url, "marker", "copied"));
  await copied(follower, "marker", "copied");
  assert.equal(await metric(follower.url, "mehdb_sync_keys_unheld"), 10_000, "10 000 named, one more only counted");
  const answered: string[] = [];
  await pool(names, 8, async (name) => {
    const got = await http(`${follower.url}/get/${name}?after=${cursor}`, { keepAlive: true });
    if (got.status !== 307) answered.push(`${name}: ${got.status}`);
  });
  assert.deepEqual(answered, [], "every key in the way is read from the leader");
  await follower.stop();
  await leader.stop();
});
