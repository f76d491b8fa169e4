/**
 * One version of a key has one entity tag on every pod: the leader, a follower (copied through `/values` or
 * `/get/KEY`), after a follower's restart or full reconcile, after the leader's restart. So a client that
 * reads through any pod and writes `If-Match` to the leader (the README's read-modify-write loop through a
 * Service) succeeds.
 */
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, test } from "node:test";
import { versionTag } from "../src/protocol.ts";
import { converged, randomValue, type Data } from "./helpers/data.ts";
import { assertStatus, header, http, put } from "./helpers/http.ts";
import { freePort, listen, startFollower, startMehdb, stopAll, tempDir, type Mehdb } from "./helpers/mehdb.ts";
import { sleep, waitFor } from "./helpers/wait.ts";

after(stopAll);

/** The `ETag` each of `keys` has on `base`. */
async function tags(base: string, keys: readonly string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const key of keys) out.set(key, header(assertStatus(await http(`${base}/get/${key}`), 200, key), "etag"));
  return out;
}

/** Keys of every path a follower copies by: small ones (grouped `/values`), a large one (`/get/KEY`), an empty one. */
function values(): Data {
  const data: Data = new Map([["empty", Buffer.alloc(0)], ["large", randomValue(200_000)]]);
  for (let i = 0; i < 30; i++) data.set(`small-${i}`, randomValue(20 + i));
  return data;
}

async function writeAll(base: string, data: Data): Promise<void> {
  for (const [key, value] of data) assertStatus(await put(base, key, value), 200, `PUT ${key}`);
}

test("the README's read-modify-write loop through a follower: " +
  "20 incrementers read from the follower, write If-Match to the leader, and none is lost", async () => {
  const leader = await startMehdb({ waitReady: true });
  const follower = await startFollower(leader.url, { waitReady: true });
  const created = header(assertStatus(await put(leader.url, "counter", "0"), 200), "mehdb-cursor");
  const goal = 2; // successful increments per incrementer
  let succeeded = 0;
  let refused = 0;
  const deadline = Date.now() + 30_000;
  const incrementer = async () => {
    let cursor = created; // of its last write
    for (let mine = 0; mine < goal && Date.now() < deadline;) {
      const read = await http(`${follower.url}/get/counter?after=${cursor}`);
      const got = read.status === 307 ? await http(header(read, "location")) : read; // curl -L
      assertStatus(got, 200, "GET counter");
      const answer = await put(leader.url, "counter", String(Number(got.text) + 1), {
        headers: { "If-Match": header(got, "etag") },
      });
      if (answer.status === 200) {
        succeeded++;
        mine++;
        cursor = header(answer, "mehdb-cursor");
      } else {
        assertStatus(answer, 412, "PUT If-Match");
        refused++;
        await sleep(10 + Math.random() * 40);
      }
    }
  };
  await Promise.all(Array.from({ length: 20 }, incrementer));
  const final = Number((await http(`${leader.url}/get/counter`)).text);
  assert.equal(succeeded, 20 * goal, `every incrementer got its ${goal} writes in (${refused} refused with 412)`);
  assert.equal(final, succeeded, "the counter counts every successful PUT, no more, no fewer");
});

test("a version has the leader's tag on a follower after catch-up, after the follower's restart " +
  "and full reconcile, and after the leader's restart", async () => {
  const port = await freePort();
  const leaderDir = await tempDir();
  let leader: Mehdb = await startMehdb({ port, dataDir: leaderDir, waitReady: true });
  const data = values();
  await writeAll(leader.url, data);
  const keys = [...data.keys()];
  const before = await tags(leader.url, keys);

  // Catch-up of a new follower (a full reconcile that copies everything).
  const followerDir = await tempDir();
  let follower = await startFollower(leader.url, { dataDir: followerDir, waitReady: true });
  await converged(follower.url, data);
  assert.deepEqual(await tags(follower.url, keys), before, "a new follower: the leader's tags");

  // Incremental copies: a same-size overwrite gets a new tag, on both.
  const overwrite = Buffer.alloc(data.get("small-0")!.length, 0x61);
  const written = header(assertStatus(await put(leader.url, "small-0", overwrite), 200), "etag");
  assert.notEqual(written, before.get("small-0"), "a same-size overwrite has a new tag");
  data.set("small-0", overwrite);
  before.set("small-0", written);
  await converged(follower.url, data);
  assert.deepEqual(await tags(follower.url, keys), before, "incremental copies: the leader's tags");

  // The follower restarts on its volume: a full reconcile that finds everything in place.
  assert.equal(await follower.stop(), 0);
  follower = await startFollower(leader.url, { dataDir: followerDir, waitReady: true });
  assert.deepEqual(await tags(follower.url, keys), before, "a restarted follower: the leader's tags");

  // The leader restarts (a new epoch): its tags stay, and the follower's full reconcile keeps them.
  assert.equal(await leader.stop(), 0);
  leader = await startMehdb({ port, dataDir: leaderDir, waitReady: true });
  assert.deepEqual(await tags(leader.url, keys), before, "a restarted leader: the same tags");
  await sleep(500); // a few ticks of the follower against the new epoch
  assert.deepEqual(await tags(follower.url, keys), before, "after the leader's restart: the same tags");

  // A tag read from the follower is good for If-Match on the leader.
  const answer = await put(leader.url, "large", "new", { headers: { "If-Match": before.get("large")! } });
  assertStatus(answer, 200, "If-Match with the follower's tag");
});

test("a large value copied with GET /get/KEY is stamped with the version the answer's ETag names, " +
  "not the older one its listing named (overwritten, same size, between listing and fetch)", async () => {
  const size = 100_000; // over the 64 KiB of a grouped /values copy: fetched alone
  const listedUs = 1_700_000_000_000_000; // the version the listing names
  const sentUs = listedUs + 1_234; // the version the leader holds by the time the follower fetches it
  const body = randomValue(size);
  const server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (path === "/status") return res.end("leader\n");
    if (path === "/keys") {
      res.setHeader("Content-Type", "application/json");
      return res.end(JSON.stringify({ cursor: "fake-1", full: true, keys: [["big", size, listedUs / 1000]],
        deleted: [], next: null }));
    }
    if (path === "/get/big") {
      res.writeHead(200, { "Content-Length": size, ETag: versionTag(sentUs, size) });
      return res.end(body);
    }
    res.writeHead(404).end();
  });
  const follower = await startFollower(await listen(server));
  await waitFor(async () => (await http(`${follower.url}/get/big`)).status === 200, "the follower holds big");
  const answer = await http(`${follower.url}/get/big`);
  assert.ok(answer.body.equals(body), "the bytes the leader sent");
  assert.equal(header(answer, "etag"), versionTag(sentUs, size), "the tag of the version sent, as on the leader");
});
