/**
 * Crash safety on real processes: a leader under 16 concurrent writers is
 * killed with SIGKILL at a random moment and restarted on its data directory,
 * round after round; then the same for a follower killed while it copies.
 *
 * Every value carries its own checksum (`checkedValue`), so a torn, empty or
 * mixed value is seen wherever it is read: over HTTP, or straight from the
 * files. What a key may hold after a crash is worked out from what the clients
 * saw: the last acknowledged write, or a write that may have been ordered after
 * it (one still in flight at the kill, or acknowledged while it ran).
 *
 * A kill -9 keeps the page cache, so it cannot catch a missing fsync (see
 * PITFALLS.md); what it catches is everything else: the order of write,
 * rename and answer, temp files, partial writes, recovery at start-up.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { after, describe, test } from "node:test";
import {
  checkedValue,
  converged,
  dirData,
  pick,
  randomInt,
  snapshot,
  strayFiles,
  verifyValue,
} from "./helpers/data.ts";
import { del, http, listKeys, put } from "./helpers/http.ts";
import { startFollower, startMehdb, stopAll, tempDir, type Mehdb } from "./helpers/mehdb.ts";
import { sleep, waitFor } from "./helpers/wait.ts";

after(stopAll);

/** One PUT as the client saw it. */
interface Write {
  id: string;
  key: string;
  start: number;
  /** When the `200` came; `null` when none came (in flight at the kill). */
  acked: number | null;
}

const LEADER_ROUNDS = 10;
const FOLLOWER_ROUNDS = 10;
const WRITERS = 16;
const KEYS = Array.from({ length: 24 }, (_, i) => `crash-${i}`);

/** The ids a key may hold after a crash, given its value before the round and the round's writes. */
function allowedIds(before: string | null, writes: Write[]): Set<string | null> {
  let last: { id: string; start: number; acked: number } | undefined; // the write acknowledged last
  for (const w of writes) {
    if (w.acked !== null && (last === undefined || w.acked > last.acked)) last = { ...w, acked: w.acked };
  }
  if (last === undefined) return new Set([before, ...writes.map((w) => w.id)]);
  const allowed = new Set<string | null>([last.id]);
  for (const w of writes) {
    // Unacknowledged writes were all in flight at the kill, so after `last` ended; an acknowledged
    // one that ended after `last` started overlapped it and may have been renamed after it.
    if (w.acked === null || w.acked > last.start) allowed.add(w.id);
  }
  return allowed;
}

describe("a leader killed with SIGKILL under 16 concurrent writers", () => {
  test(`loses no acknowledged write and tears no value, over ${LEADER_ROUNDS} rounds`, async () => {
    const dataDir = await tempDir();
    let before = new Map<string, string | null>(KEYS.map((key) => [key, null]));
    let totalAcked = 0;
    let totalInFlight = 0;
    let lost = 0;
    let torn = 0;
    const problems: string[] = [];

    for (let round = 0; round < LEADER_ROUNDS; round++) {
      const leader = await startMehdb({ host: "mehdb-0", dataDir });
      const writes: Write[] = [];
      let killed = false;
      const unexpected: string[] = [];
      const writer = async (w: number) => {
        for (let n = 0; !killed; n++) {
          const key = pick(KEYS);
          const write: Write = { id: `r${round}w${w}n${n}`, key, start: performance.now(), acked: null };
          writes.push(write);
          try {
            const res = await put(leader.url, key, checkedValue(write.id, randomInt(4096, 65536)), { keepAlive: true });
            if (res.status === 200) write.acked = performance.now();
            else unexpected.push(`PUT ${key}: ${res.status} ${res.text}`);
          } catch {
            // the kill cut this write off: it stays in flight
          }
        }
      };
      // While the writes go on, the listing never shows a temporary file (or anything but our keys).
      const lister = async () => {
        while (!killed) {
          try {
            const listed = await listKeys(leader.url, { keepAlive: true });
            const odd = listed.filter((name) => !KEYS.includes(name));
            if (odd.length > 0) unexpected.push(`GET /keys listed ${odd.join(", ")}`);
          } catch {
            // killed meanwhile
          }
          await sleep(25);
        }
      };
      const writers = [...Array.from({ length: WRITERS }, (_, w) => writer(w)), lister()];
      await sleep(randomInt(300, 1500));
      killed = true;
      assert.equal(await leader.stop("SIGKILL"), "SIGKILL");
      await Promise.all(writers);
      assert.deepEqual(unexpected, [], `round ${round}: refused writes or odd names`);

      // Straight from the files, before anything repairs them: every key file is whole.
      for (const [name, bytes] of await dirData(dataDir)) {
        const check = verifyValue(bytes);
        if (!check.ok) {
          torn++;
          problems.push(`round ${round}: file ${name}: ${check.reason}`);
        }
      }

      const restarted = await startMehdb({ host: "mehdb-0", dataDir, waitReady: true });
      assert.deepEqual(await strayFiles(dataDir), [], `round ${round}: temp files left after restart`);
      const listed = await listKeys(restarted.url);
      assert.ok(listed.every((name) => KEYS.includes(name)), `round ${round}: odd names listed: ${listed}`);

      const held = new Map<string, string | null>();
      for (const key of KEYS) {
        const keyWrites = writes.filter((write) => write.key === key);
        totalAcked += keyWrites.filter((w) => w.acked !== null).length;
        totalInFlight += keyWrites.filter((w) => w.acked === null).length;
        const res = await http(`${restarted.url}/get/${key}`);
        let id: string | null = null;
        if (res.status === 200) {
          const check = verifyValue(res.body);
          if (!check.ok) {
            torn++;
            problems.push(`round ${round}: GET ${key}: ${check.reason}`);
            continue;
          }
          id = check.id;
        } else {
          assert.equal(res.status, 404, `GET ${key}`);
        }
        const allowed = allowedIds(before.get(key) ?? null, keyWrites);
        if (!allowed.has(id)) {
          lost++;
          problems.push(`round ${round}: ${key} holds ${id}, expected one of ${[...allowed].join(", ")}`);
        }
        held.set(key, id);
      }
      before = held;
      assert.equal(await restarted.stop("SIGTERM"), 0);
    }

    console.log(`leader crash: ${LEADER_ROUNDS} rounds, ${totalAcked} acknowledged writes, ` +
      `${totalInFlight} in flight at a kill, ${lost} acknowledged writes lost, ${torn} torn values`);
    assert.deepEqual(problems, []);
    assert.ok(totalAcked >= LEADER_ROUNDS * 10, `too few writes acknowledged to mean anything: ${totalAcked}`);
  });
});

describe("a follower killed with SIGKILL while it copies", () => {
  test(`never holds a torn value, and converges exactly after ${FOLLOWER_ROUNDS} kills`, async () => {
    const leader = await startMehdb({ host: "mehdb-0" });
    const followerDir = await tempDir();
    const start = () => startFollower(leader.url, { dataDir: followerDir, env: { MEHDB_SYNC_INTERVAL_MS: "50" } });
    let follower: Mehdb = await start();

    let stopping = false;
    let writes = 0;
    const writer = async (w: number) => {
      for (let n = 0; !stopping; n++) {
        const key = pick(KEYS);
        const res = Math.random() < 0.1
          ? await del(leader.url, key, { keepAlive: true })
          : await put(leader.url, key, checkedValue(`f${w}n${n}`, randomInt(4096, 65536)), { keepAlive: true });
        assert.ok(res.status === 200 || res.status === 404, `leader answered ${res.status}`);
        writes++;
      }
    };
    // Reads the follower's files all along, running or killed: every key file must be whole at every moment.
    const torn: string[] = [];
    let scans = 0;
    const scanner = async () => {
      while (!stopping) {
        for (const [name, bytes] of await dirData(followerDir)) {
          const check = verifyValue(bytes);
          if (!check.ok) torn.push(`${name}: ${check.reason}`);
        }
        scans++;
        await sleep(20);
      }
    };
    const writers = Array.from({ length: 4 }, (_, w) => writer(w));
    const scanning = scanner();

    try {
      for (let round = 0; round < FOLLOWER_ROUNDS; round++) {
        await sleep(randomInt(200, 900));
        assert.equal(await follower.stop("SIGKILL"), "SIGKILL");
        const leftovers = await strayFiles(followerDir);
        follower = await start();
        const now = new Set(await readdir(followerDir));
        assert.deepEqual(leftovers.filter((name) => now.has(name)), [],
          `round ${round}: temp files of the killed follower survived its restart`);
        const listed = await listKeys(follower.url);
        assert.ok(listed.every((name) => KEYS.includes(name)), `round ${round}: odd names listed: ${listed}`);
      }
    } finally {
      stopping = true;
      await Promise.all([...writers, scanning]);
    }

    await converged(follower.url, leader.url);
    // A tick may still be writing copies (temporary files, never listed as keys) when the values already match:
    // once it is done, the directory holds exactly the leader's keys.
    const leaderKeys = [...(await snapshot(leader.url)).keys()].sort();
    await waitFor(async () => (await readdir(followerDir)).every((name) => !name.startsWith(".")), "the tick to end");
    const names = await readdir(followerDir);
    assert.deepEqual(names.sort(), leaderKeys, "the follower's directory holds exactly the leader's keys");
    console.log(`follower crash: ${FOLLOWER_ROUNDS} kills, ${writes} leader writes meanwhile, ` +
      `${scans} scans of its files, ${torn.length} torn values`);
    assert.deepEqual(torn, []);
    assert.ok(scans > FOLLOWER_ROUNDS);
    await follower.stop();
    await leader.stop();
  });
});
