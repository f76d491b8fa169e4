/**
 * Reading your writes through any pod (?after=), watching changes (?since=&wait=), prefix listing (issue 13):
 * the pure parts of src/watch.ts in-process, then real leaders and followers on 127.0.0.1 (and curl, when
 * installed).
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { after, before, describe, test } from "node:test";
import {
  changesWithPrefix,
  isValidPrefix,
  nothingChanged,
  parseWait,
  Watches,
} from "../src/api/watch.ts";
import { cursorReached, parseCursor } from "../src/protocol.ts";
import { SyncWaits } from "../src/sync/waits.ts";
import { missingTool, must } from "./helpers/commands.ts";
import { assertOneLine, del, header, http, metric, put, readFeed, type Answer, type Feed } from "./helpers/http.ts";
import { startFollower, startMehdb, stopAll, type Mehdb } from "./helpers/mehdb.ts";
import { sleep, waitFor } from "./helpers/wait.ts";

after(stopAll);

/** A watch `Watches.hold` took (not one it refused). */
function accepted<T>(watch: T | null): T {
  assert.ok(watch !== null, "the watch is held");
  return watch;
}

describe("watch.ts, in-process", () => {
  test("parseCursor: EPOCH-SEQ, nothing else", () => {
    assert.deepEqual(parseCursor("3f9a1c2b7d4e-1042"), { epoch: "3f9a1c2b7d4e", seq: 1042 });
    assert.deepEqual(parseCursor("a-0"), { epoch: "a", seq: 0 });
    const bad = [
      "", "x", "-1", "a-", "a--1", "a-1.5", "a-1e3", "a-+1", "a b-1", "a-1 ", "é-1", "a-99999999999999999",
      `${"a".repeat(65)}-1`, "a-1-2",
    ];
    for (const cursor of bad) {
      assert.equal(parseCursor(cursor), null, JSON.stringify(cursor));
    }
  });

  test("cursorReached: same epoch and a sequence not beyond what was reached", () => {
    assert.equal(cursorReached("e1-10", "e1-10"), true);
    assert.equal(cursorReached("e1-10", "e1-3"), true);
    assert.equal(cursorReached("e1-10", "e1-11"), false);
    assert.equal(cursorReached("e1-10", "e2-1"), false, "another epoch");
    assert.equal(cursorReached(null, "e1-1"), false, "never synced");
    assert.equal(cursorReached("e1-10", "garbage"), false);
  });

  test("parseWait: whole milliseconds from 1 to 60000", () => {
    assert.equal(parseWait("1"), 1);
    assert.equal(parseWait("60000"), 60000);
    for (const bad of ["0", "60001", "-1", "1.5", "1e3", "", " 5", "abc", "0x10", "9999999"]) {
      assert.equal(parseWait(bad), null, bad);
    }
  });

  test("prefixes: empty or key-like; a change list keeps the names under one", () => {
    for (const good of ["", "a", "user-", "A.b_c", "x".repeat(200)]) assert.equal(isValidPrefix(good), true, good);
    for (const bad of [".", ".tmp", "a/b", "é", "a b", "x".repeat(201), "%2F"]) {
      assert.equal(isValidPrefix(bad), false, bad);
    }
    const keys: [string, number, number][] = [["p-1", 1, 2], ["q-1", 1, 2]];
    const changes = { cursor: "e-9", full: false, keys, deleted: ["p-2", "q-2"] };
    assert.deepEqual(changesWithPrefix(changes, "p-"),
      { cursor: "e-9", full: false, keys: [["p-1", 1, 2]], deleted: ["p-2"] });
    assert.equal(nothingChanged(changesWithPrefix(changes, "r")), true);
    assert.equal(nothingChanged({ ...changes, keys: [], deleted: [], full: true }), false,
      "a full listing always tells something");
  });

  test("Watches: woken by a change, a timeout, the client leaving, or close; bounded", async () => {
    let change = () => {};
    const nextChange = () => new Promise<void>((resolve) => (change = resolve));
    const watches = new Watches(nextChange, { max: 3 });
    const changed = accepted(watches.hold(60_000));
    const gone = new AbortController();
    const left = accepted(watches.hold(60_000, gone.signal));
    const timed = accepted(watches.hold(20));
    assert.equal(watches.held, 3);
    assert.equal(watches.hold(60_000), null, "past the bound: answered at once by the caller");
    assert.equal(watches.refused, 1);
    assert.equal(await timed, "timeout");
    gone.abort();
    assert.equal(await left, "gone");
    change();
    assert.equal(await changed, "change");
    assert.equal(watches.held, 0);
    const held = [accepted(watches.hold(60_000)), accepted(watches.hold(60_000))];
    watches.close();
    assert.deepEqual(await Promise.all(held), ["closed", "closed"]);
    assert.equal(await watches.hold(60_000), "closed", "after close, nothing is held");
  });

  test("SyncWaits: the end of a tick that started, or the time limit, or close", async () => {
    const waits = new SyncWaits();
    let resolved = false;
    const waiting = waits.next(60_000).then(() => (resolved = true));
    const ended = waits.started();
    const later = waits.next(60_000); // came after the start: waits for the next tick
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(resolved, false, "still waiting while the tick runs");
    ended();
    await waiting;
    const pending = sleep(20).then(() => "pending");
    assert.equal(await Promise.race([later.then(() => "resolved"), pending]), "pending");
    assert.equal(await waits.next(10), undefined, "no tick started within the limit");
    waits.close();
    await later;
    await waits.next(60_000);
  });
});

/** The `Mehdb-Cursor` of a successful write. */
const cursorOf = (answer: Answer) => {
  assert.equal(answer.status, 200, answer.text);
  return header(answer, "Mehdb-Cursor");
};

describe("read-your-writes through a follower with a long sync interval (?after=)", () => {
  let leader: Mehdb;
  let follower: Mehdb;
  let synced: string;

  before(async () => {
    leader = await startMehdb({ waitReady: true });
    synced = cursorOf(await put(leader.url, "ryw", "before"));
    // One sync at start, then none for a minute: every later write is ahead of this follower.
    follower = await startFollower(leader.url, { env: { MEHDB_SYNC_INTERVAL_MS: "60000" }, waitReady: true });
  });

  test("a cursor the follower reached is answered from its copy", async () => {
    const got = await http(`${follower.url}/get/ryw?after=${synced}`);
    assert.equal(got.status, 200);
    assert.equal(got.text, "before");
    const keys = await http(`${follower.url}/keys?after=${synced}`);
    assert.deepEqual(JSON.parse(keys.text), ["ryw"]);
  });

  test("a cursor it has not reached: 307 to the leader, same path and query", async () => {
    const cursor = cursorOf(await put(leader.url, "ryw", "after"));
    const got = await http(`${follower.url}/get/ryw?after=${cursor}`);
    assert.equal(got.status, 307, got.text);
    assert.equal(got.headers.location, `${leader.url}/get/ryw?after=${cursor}`);
    assert.match(got.text, /^[^\n]+\n$/);
    const head = await http(`${follower.url}/get/ryw?after=${cursor}`, { method: "HEAD" });
    assert.equal(head.status, 307);
    const keys = await http(`${follower.url}/keys?since=&prefix=ry&after=${cursor}`);
    assert.equal(keys.status, 307);
    assert.equal(keys.headers.location, `${leader.url}/keys?since=&prefix=ry&after=${cursor}`,
      "every parameter is kept");
    // Following it by hand reads the write.
    const followed = await http(got.headers.location as string);
    assert.equal(followed.text, "after");
    // Without after=, the follower answers from its copy, as before.
    assert.equal((await http(`${follower.url}/get/ryw`)).text, "before");
  });

  test("curl -L reads its own write through the follower; without -L it sees the 307", {
    skip: missingTool("curl"),
  }, async () => {
    const cursor = cursorOf(await put(leader.url, "ryw-curl", "mine"));
    const { stdout } = await must("curl", ["-sS", "-L", `${follower.url}/get/ryw-curl?after=${cursor}`]);
    assert.equal(stdout, "mine");
    const noL = await must("curl",
      ["-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", `${follower.url}/get/ryw-curl?after=${cursor}`]);
    assert.equal(noL.stdout, `307 ${leader.url}/get/ryw-curl?after=${cursor}`);
    const keys = await must("curl", ["-sS", "-L", `${follower.url}/keys?after=${cursor}&prefix=ryw-`]);
    assert.deepEqual(JSON.parse(keys.stdout), ["ryw-curl"]);
  });

  test("a cursor of another epoch: the follower redirects, the leader cannot vouch for it (409)", async () => {
    const foreign = "0123456789ab-1";
    assert.equal((await http(`${follower.url}/get/ryw?after=${foreign}`)).status, 307);
    const onLeader = await http(`${leader.url}/get/ryw?after=${foreign}`);
    assert.equal(onLeader.status, 409, "the leader cannot tell whether a write of another epoch is here");
    assert.match(onLeader.text, /^cannot vouch for after=0123456789ab-1: it is of epoch 0123456789ab, .*\n$/);
    assert.equal((await http(`${leader.url}/keys?after=${foreign}`)).status, 409);
  });

  test("malformed after=: one-line 400 on the leader and on the follower", async () => {
    for (const base of [leader.url, follower.url]) {
      for (const bad of ["x", "-1", "abc-", "a-1.5", "%ff", "a-1-2", ""]) {
        for (const path of ["/get/ryw", "/keys"]) {
          const got = await http(`${base}${path}?after=${bad}`);
          assert.equal(got.status, 400, `${base}${path}?after=${bad}: ${got.status} ${got.text}`);
          assert.match(got.text, /^malformed after=.*\n$/);
        }
      }
    }
  });
});

describe("read-your-writes through a follower with a short interval: it waits for its next sync", () => {
  test("the answer comes from the follower's copy, after its next sync", async () => {
    const leader = await startMehdb({ waitReady: true });
    const follower = await startFollower(leader.url, { waitReady: true });
    for (let i = 0; i < 5; i++) {
      const cursor = cursorOf(await put(leader.url, "soon", `v${i}`));
      // The follower waits for a tick that starts within 1 s (it ticks every 100 ms), then answers.
      const got = await http(`${follower.url}/get/soon?after=${cursor}`);
      assert.equal(got.status, 200, `a 307 means the follower did not wait for its next tick: ${got.text}`);
      assert.equal(got.text, `v${i}`);
    }
    await follower.stop();
    await leader.stop();
  });
});

describe("watching changes (GET /keys?since=CURSOR&wait=MS) and prefix listing", () => {
  let leader: Mehdb;

  before(async () => {
    leader = await startMehdb({ waitReady: true });
  });

  const feed = (query: string) => readFeed(leader.url, query, 70_000);
  const held = () => metric(leader.url, "mehdb_watches_held");

  test("a held watch is answered soon after a write, with the write", async () => {
    const { cursor } = await feed("since=");
    const started = performance.now();
    const watching = feed(`since=${cursor}&wait=60000`);
    await waitFor(async () => (await held()) === 1, "the watch to be held");
    const written = cursorOf(await put(leader.url, "watched", "v"));
    const answer = await watching;
    assert.ok(performance.now() - started < 50_000, "answered by the write, not by the end of its wait");
    assert.deepEqual(answer.keys.map(([name]) => name), ["watched"]);
    assert.equal(answer.full, false);
    assert.equal(answer.cursor, written, "the answer's cursor is the write's");
    assert.equal(await held(), 0);
  });

  test("an idle watch is answered after its wait, with nothing in it", async () => {
    const { cursor } = await feed("since=");
    const started = performance.now();
    const answer = await feed(`since=${cursor}&wait=300`);
    assert.ok(performance.now() - started >= 290, "held for its wait");
    assert.deepEqual(answer, { cursor, full: false, keys: [], deleted: [] });
  });

  test("a watch with something new already is answered at once", async () => {
    const { cursor } = await feed("since=");
    await put(leader.url, "already", "v");
    const started = performance.now();
    const answer = await feed(`since=${cursor}&wait=60000`);
    assert.ok(performance.now() - started < 30_000);
    assert.deepEqual(answer.keys.map(([name]) => name), ["already"]);
  });

  test("prefix: the plain listing, the full feed and the incremental feed keep only matching names", async () => {
    for (const key of ["p-1", "p-2", "pq", "q-1"]) await put(leader.url, key, "v");
    const plain = await http(`${leader.url}/keys?prefix=p-`);
    assert.deepEqual(JSON.parse(plain.text), ["p-1", "p-2"]);
    assert.equal(plain.headers["content-type"], "application/json");
    const full = await feed("since=&prefix=p");
    assert.equal(full.full, true);
    assert.deepEqual(full.keys.map(([name]) => name).sort(), ["p-1", "p-2", "pq"]);
    await put(leader.url, "p-3", "v");
    await put(leader.url, "q-2", "v");
    await del(leader.url, "p-1");
    const incremental = await feed(`since=${full.cursor}&prefix=p-`);
    assert.deepEqual(incremental.keys.map(([name]) => name), ["p-3"]);
    assert.deepEqual(incremental.deleted, ["p-1"]);
    assert.deepEqual(JSON.parse((await http(`${leader.url}/keys?prefix=nothing-`)).text), []);
  });

  test("a watch with a prefix stays held through changes outside it", async () => {
    const { cursor } = await feed("since=");
    const watching = feed(`since=${cursor}&prefix=w-&wait=60000`);
    await waitFor(async () => (await held()) === 1, "the watch to be held");
    await put(leader.url, "x-outside", "v");
    assert.equal(await held(), 1, "still held after a write outside its prefix");
    await put(leader.url, "w-inside", "v");
    const answer = await watching;
    assert.deepEqual(answer.keys.map(([name]) => name), ["w-inside"]);
  });

  test("plain GET /keys is still the bare sorted JSON array", async () => {
    const answer = await http(`${leader.url}/keys`);
    assert.equal(answer.headers["content-type"], "application/json");
    const names = JSON.parse(answer.text) as unknown;
    assert.ok(Array.isArray(names) && names.every((name) => typeof name === "string"));
    assert.deepEqual(names, [...names].sort());
    assert.ok(names.includes("watched"));
  });

  test("bad wait, since, prefix: one-line 400, never 5xx", async () => {
    const { cursor } = await feed("since=");
    const bad = [
      `since=${cursor}&wait=0`, `since=${cursor}&wait=60001`, `since=${cursor}&wait=-1`, `since=${cursor}&wait=1.5`,
      `since=${cursor}&wait=abc`, `since=${cursor}&wait=`, `since=${cursor}&wait=1e3`, "wait=100", "since=garbage",
      "since=a-b", "since=%ff", "prefix=.x", "prefix=a%2Fb",
      "prefix=%C3%A9", `prefix=${"x".repeat(201)}`, "since=&prefix=..", "after=zz",
    ];
    for (const query of bad) {
      const answer = await http(`${leader.url}/keys?${query}`);
      assert.equal(answer.status, 400, `?${query}: ${answer.status} ${answer.text}`);
      assert.match(answer.text, /^[^\n]+\n$/);
    }
  });
});

describe("a held watch across SIGTERM", () => {
  test("the watch is answered at once and the process exits promptly with 0", async () => {
    const leader = await startMehdb({ waitReady: true });
    const { cursor } = await readFeed(leader.url, "since=");
    const watching = http(`${leader.url}/keys?since=${cursor}&wait=60000`, { timeoutMs: 70_000 });
    await waitFor(async () => (await metric(leader.url, "mehdb_watches_held")) === 1, "the watch to be held");
    const started = performance.now();
    const code = await leader.stop("SIGTERM", 30_000);
    const answer = await watching;
    assert.equal(code, 0, leader.output());
    assert.equal(answer.status, 200);
    assert.deepEqual(JSON.parse(answer.text), { cursor, full: false, keys: [], deleted: [] });
    assert.ok(!leader.output().includes("event=stop-forced"), `the stop was not forced:\n${leader.output()}`);
    assert.ok(performance.now() - started < 20_000, "well before the watch's 60 s");
  });
});

/** A `GET /keys?QUERY` on a connection of its own, left open: the client ends it with FIN (`end`) or a reset. */
async function openWatch(port: number, query: string): Promise<Socket> {
  const socket = connect(port, "127.0.0.1");
  socket.on("error", () => {});
  socket.on("data", () => {});
  await once(socket, "connect");
  socket.write(`GET /keys?${query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  return socket;
}

describe("watches whose clients go, and the watch limit", () => {
  const SLOTS = 256;

  test("256 watches whose clients close with FIN free their slots; a new watch is then held", async () => {
    const leader = await startMehdb({ waitReady: true });
    const held = () => metric(leader.url, "mehdb_watches_held");
    const { cursor } = await readFeed(leader.url, "since=");
    const sockets = await Promise.all(
      Array.from({ length: SLOTS }, () => openWatch(leader.port, `since=${cursor}&wait=60000`)));
    await waitFor(async () => (await held()) === SLOTS, `${SLOTS} watches to be held`);
    const closed = sockets.map((socket) => once(socket, "close"));
    for (const socket of sockets) socket.end(); // FIN: the client gives up, as curl -m or a proxy's timeout does
    await waitFor(async () => (await held()) === 0, "every slot to be free once its client closed with FIN");
    await Promise.all(closed); // the server closed its side too: the descriptors are freed
    const watching = readFeed(leader.url, `since=${cursor}&wait=60000`, 70_000);
    await waitFor(async () => (await held()) === 1, "a new watch to be held");
    await put(leader.url, "after-fin", "v");
    assert.deepEqual((await watching).keys.map(([name]) => name), ["after-fin"]);
    // A reset frees a slot as well.
    const reset = await openWatch(leader.port, `since=${(await readFeed(leader.url, "since=")).cursor}&wait=60000`);
    await waitFor(async () => (await held()) === 1, "the watch to be held");
    reset.resetAndDestroy();
    await waitFor(async () => (await held()) === 0, "the slot to be free once its client reset");
  });

  test("every slot taken and nothing new: 503 with Retry-After: 1; something new: 200 at once", async () => {
    const leader = await startMehdb({ waitReady: true });
    const { cursor: before } = await readFeed(leader.url, "since=");
    const cursor = cursorOf(await put(leader.url, "new", "v"));
    const sockets = await Promise.all(
      Array.from({ length: SLOTS }, () => openWatch(leader.port, `since=${cursor}&wait=60000`)));
    try {
      await waitFor(async () => (await metric(leader.url, "mehdb_watches_held")) === SLOTS,
        `${SLOTS} watches to be held`);
      const unheld = await metric(leader.url, "mehdb_watches_unheld_total");
      const full = await http(`${leader.url}/keys?since=${cursor}&wait=60000`, { timeoutMs: 70_000 });
      assert.equal(full.status, 503, full.text);
      assert.equal(header(full, "Retry-After"), "1");
      assertOneLine(full);
      assert.match(full.text, /watch limit/);
      assert.equal(await metric(leader.url, "mehdb_watches_unheld_total"), unheld + 1);
      const changed = await http(`${leader.url}/keys?since=${before}&wait=60000`, { timeoutMs: 70_000 });
      assert.equal(changed.status, 200, changed.text);
      assert.deepEqual((JSON.parse(changed.text) as Feed).keys.map(([name]) => name), ["new"]);
      assert.equal(await metric(leader.url, "mehdb_watches_held"), SLOTS);
    } finally {
      for (const socket of sockets) socket.destroy();
    }
  });
});
