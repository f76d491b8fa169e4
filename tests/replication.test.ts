/**
 * Replication, end to end: real leader and follower processes on loopback
 * (plus stand-in leaders served from this process), checked for exact
 * convergence (same keys, same bytes), readiness, outage handling and the
 * cost of an idle tick (counted by a TCP proxy between follower and leader).
 */
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { join } from "node:path";
import { after, test, type TestContext } from "node:test";
import {
  converged,
  dataDirWith,
  difference,
  dirData,
  manyKeys,
  randomValue,
  strayFiles,
  type Data,
} from "./helpers/data.ts";
import { assertStatus, del, http, metric, metrics, put } from "./helpers/http.ts";
import { freePort, listen, startFollower, startMehdb, stopAll, tempDir, type Mehdb } from "./helpers/mehdb.ts";
import { startCountingProxy } from "./helpers/proxy.ts";
import { sleep, waitFor } from "./helpers/wait.ts";

after(stopAll);

/**
 * Waits until every follower serves exactly `expected` (keys and bytes), then checks its directory too: the
 * same keys and bytes, and no temporary file.
 */
async function convergedOnDisk(followers: Mehdb[], expected: Data, timeoutMs = 20_000): Promise<void> {
  for (const follower of followers) {
    await converged(follower.url, expected, timeoutMs).catch((error: Error) => {
      throw new Error(`${error.message}\n${follower.output().slice(-3000)}`);
    });
    assert.equal(difference(await dirData(follower.dataDir), expected), null,
      `${follower.dataDir} holds exactly the keys`);
    assert.deepEqual(await strayFiles(follower.dataDir), [], "no temporary files left");
  }
}

test("writes, overwrites and deletes on the leader reach two followers byte-exact", async () => {
  const leader = await startMehdb({ waitReady: true });
  const followers = await Promise.all([
    startFollower(leader.url, { host: "mehdb-1" }),
    startFollower(leader.url, { host: "mehdb-2" }),
  ]);
  const expected: Data = new Map();
  const write = async (key: string, value: Buffer) => {
    assertStatus(await put(leader.url, key, value), 200, `PUT ${key}`);
    expected.set(key, value);
  };
  const remove = async (key: string) => {
    assertStatus(await del(leader.url, key), 200, `DELETE ${key}`);
    expected.delete(key);
  };

  await write("empty", Buffer.alloc(0));
  await write("every-byte", Buffer.from(Array.from({ length: 256 }, (_, i) => i)));
  for (let i = 0; i < 20; i++) await write(`k${i}`, randomValue(1 + i * 37));
  await write("large", randomValue(3 * 1024 * 1024 + 17)); // streamed on both sides (> 1 MiB)
  await convergedOnDisk(followers, expected);

  // Overwrites of the same size (the incremental feed must fetch them whatever their size and mtime),
  // of another size, twice in a row, a large one; deletions; a key deleted and written again.
  for (let i = 0; i < 20; i += 2) await write(`k${i}`, randomValue(1 + i * 37));
  await write("every-byte", Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i)));
  await write("k1", randomValue(5000));
  await write("k1", randomValue(5000));
  await write("large", randomValue(2 * 1024 * 1024 + 3));
  await remove("k3");
  await remove("empty");
  await remove("k5");
  await write("k5", Buffer.from("back again"));
  await convergedOnDisk(followers, expected);

  // Everything removed.
  for (const key of [...expected.keys()]) await remove(key);
  await convergedOnDisk(followers, expected);
});

test("a follower killed with SIGKILL while the leader takes writes and deletes " +
  "restarts on its data and converges", async () => {
  const leader = await startMehdb({ waitReady: true });
  const expected = manyKeys(40);
  for (const [key, value] of expected) assertStatus(await put(leader.url, key, value), 200, `PUT ${key}`);
  const follower = await startFollower(leader.url);
  await convergedOnDisk([follower], expected);

  assert.equal(await follower.stop("SIGKILL"), "SIGKILL");
  const keys = [...expected.keys()];
  for (const key of keys.slice(0, 5)) { // overwritten
    const value = randomValue(100 + keys.indexOf(key));
    assertStatus(await put(leader.url, key, value), 200, `PUT ${key}`);
    expected.set(key, value);
  }
  for (const key of keys.slice(5, 12)) { // deleted
    assertStatus(await del(leader.url, key), 200, `DELETE ${key}`);
    expected.delete(key);
  }
  for (let i = 0; i < 6; i++) { // new
    const value = randomValue(10 + i);
    assertStatus(await put(leader.url, `new-${i}`, value), 200, `PUT new-${i}`);
    expected.set(`new-${i}`, value);
  }

  const restarted = await startFollower(leader.url, { dataDir: follower.dataDir });
  await convergedOnDisk([restarted], expected);
  // Its copies kept the leader's size and mtime: the full reconcile after the restart fetched only what changed.
  assert.equal(await metric(restarted.url, "mehdb_sync_keys_copied_total"), 5 + 6);
  assert.equal(await metric(restarted.url, "mehdb_sync_keys_deleted_total"), 7);
});

test("the leader's data directory replaced: followers converge to exactly the new set of keys", async () => {
  const first = manyKeys(30, "a-");
  const firstDir = await dataDirWith(first);
  const leader = await startMehdb({ dataDir: firstDir, waitReady: true });
  const followers = await Promise.all([
    startFollower(leader.url, { host: "mehdb-1" }),
    startFollower(leader.url, { host: "mehdb-2" }),
  ]);
  await convergedOnDisk(followers, first);

  // A new volume: some keys with the same bytes, some with other bytes of the same size, some new, the rest gone.
  const second: Data = new Map();
  for (const [key, value] of [...first].slice(0, 5)) second.set(key, value);
  for (const [key, value] of [...first].slice(5, 10)) second.set(key, randomValue(value.length));
  for (const [key, value] of manyKeys(8, "b-")) second.set(key, value);
  const secondDir = await dataDirWith(second);
  assert.equal(await leader.stop(), 0);
  const replaced = await startMehdb({ dataDir: secondDir, port: leader.port, waitReady: true });
  await convergedOnDisk(followers, second);

  // And an empty one.
  assert.equal(await replaced.stop(), 0);
  await startMehdb({ dataDir: await tempDir(), port: leader.port, waitReady: true });
  await convergedOnDisk(followers, new Map());
});

test("a follower started before its leader is not ready (503, one line) until the first sync completes", async () => {
  const port = await freePort();
  const follower = await startFollower(`http://127.0.0.1:${port}`);
  const early = await http(`${follower.url}/status?level=full`);
  assert.equal(early.status, 503);
  assert.match(early.text, /^not ready: [^\n]+\n$/);
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_errors_total")) >= 3, "three failed ticks");
  const still = await http(`${follower.url}/status?level=full`);
  assert.equal(still.status, 503);
  assert.match(still.text, /^not ready: [^\n]+\n$/);
  assert.equal((await http(`${follower.url}/status`)).status, 200, "alive all the same");

  const data = manyKeys(25);
  const dir = await dataDirWith(data);
  await startMehdb({ dataDir: dir, port });
  await waitFor(async () => (await http(`${follower.url}/status?level=full`)).status === 200, "follower ready");
  const ready = await http(`${follower.url}/status?level=full`);
  assert.match(ready.text, /^25 keys\b[^\n]*\n$/);
  assert.equal(difference(await dirData(follower.dataDir), data), null, "ready means synced");
});

test("idle cost: with 10 000 keys synced, " +
  "each idle tick is one request to the leader moving under 1 KB", async (t: TestContext) => {
  const data = manyKeys(10_000);
  const dir = await dataDirWith(data);
  const leader = await startMehdb({ dataDir: dir, waitReady: true });
  const proxy = await startCountingProxy(leader.port);
  const follower = await startFollower(proxy.url, { env: { MEHDB_SYNC_INTERVAL_MS: "200" } });
  await waitFor(async () => (await http(`${follower.url}/status?level=full`)).status === 200, "10 000 keys synced",
    60_000);
  assert.equal(difference(await dirData(follower.dataDir), data), null);
  const syncBytes = proxy.bytes();
  t.diagnostic(`catch-up of 10 000 keys: ${proxy.exchanges().length} requests, ` +
    `${syncBytes.up} bytes up, ${syncBytes.down} bytes down`);

  // Sample the follower's counters at quiet moments (no exchange in flight), so that the proxy's window and
  // the ticks counted agree; a tick that started while the counters were read shows up at the proxy
  // right after, and then the sample is taken again.
  const quiet = async (after: number) => {
    for (;;) {
      await waitFor(() => proxy.exchanges().length > after && performance.now() - proxy.lastActivity() > 30,
        "a quiet moment between ticks");
      const seen = proxy.exchanges().length;
      const sample = await metrics(follower.url);
      await sleep(20);
      if (proxy.exchanges().length === seen) return { seen, sample };
    }
  };
  const start = await quiet(proxy.exchanges().length);
  const end = await quiet(start.seen + 10);
  const grew = (name: string) => end.sample.get(name) - start.sample.get(name);
  const ticks = grew("mehdb_sync_ticks_total");
  const window = proxy.exchanges().slice(start.seen, end.seen);
  assert.ok(ticks >= 10);
  assert.equal(grew("mehdb_sync_requests_total"), ticks, "one request per tick (poller's count)");
  assert.equal(window.length, ticks, "one request per tick (proxy's count)");
  assert.equal(grew("mehdb_sync_keys_copied_total"), 0, "nothing copied");
  for (const exchange of window) {
    assert.match(exchange.requestLine, /^GET \/keys\?since=[0-9a-f]+-[0-9]+&limit=[0-9]+ HTTP\/1\.1$/);
    assert.ok(exchange.bytesUp + exchange.bytesDown < 1024,
      `${exchange.requestLine}: ${exchange.bytesUp} + ${exchange.bytesDown} bytes`);
  }
  const up = window.reduce((sum, e) => sum + e.bytesUp, 0) / window.length;
  const down = window.reduce((sum, e) => sum + e.bytesDown, 0) / window.length;
  t.diagnostic(`idle tick: ${window.length} requests over ${ticks} ticks, ` +
    `${up.toFixed(0)} bytes up + ${down.toFixed(0)} bytes down per tick, ${proxy.connections()} connection(s) in all`);
});

/** A stand-in leader's `GET /get/KEY`: the value from `data`, or `404`. */
function answerGet(res: ServerResponse, path: string, data: Data): void {
  const value = path.startsWith("/get/") ? data.get(path.slice(5)) : undefined;
  if (value === undefined) {
    res.writeHead(404);
    res.end("not found\n");
  } else {
    res.writeHead(200, { "Content-Length": value.length });
    res.end(value);
  }
}

/**
 * A stand-in for the original Go mehdb: `GET /status` (`leader`), `GET /keys` (any query) as a plain array,
 * `GET /get/KEY`; nothing else.
 */
async function goLeader(data: Data, listed: () => string[] = () => [...data.keys()].sort()) {
  const paths: string[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    paths.push(req.url ?? "");
    const [path = ""] = (req.url ?? "").split("?");
    const value = path.startsWith("/get/") ? data.get(path.slice(5)) : undefined;
    if (req.method === "GET" && path === "/status") {
      res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
      res.end("leader\n");
    } else if (req.method === "GET" && path === "/keys") {
      res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
      res.end(JSON.stringify(listed()) + "\n");
    } else if (req.method === "GET" && value !== undefined) {
      res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8", "Content-Length": value.length });
      res.end(value);
    } else {
      res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" });
      res.end("404 page not found\n");
    }
  });
  return { url: await listen(server), paths };
}

test("fallback: a follower of an original Go leader (plain /keys array) copies, " +
  "picks up changes and deletions", async () => {
  const data: Data = new Map([
    ["abc", Buffer.from("test data\n")],
    ["hello", randomValue(300)],
    ["gone", Buffer.from("x")],
  ]);
  const go = await goLeader(data);
  const follower = await startFollower(go.url);
  await waitFor(async () => (await http(`${follower.url}/status?level=full`)).status === 200, "follower ready");
  await convergedOnDisk([follower], data);
  assert.ok(go.paths.some((path) => path.startsWith("/keys?since=")), "it asked for the change feed first");

  data.set("abc", Buffer.from("TEST DATA\n")); // same size, other bytes
  data.set("fresh", randomValue(2000));
  data.delete("gone");
  await convergedOnDisk([follower], data);
  assert.equal((await http(`${follower.url}/status?level=full`)).status, 200);
});

const HOSTILE = [
  "../x", "../sentinel", "..", ".", "", ".tmp-1", ".hidden", "a/b", "/abs", "a\\b", "a\u0000b", "é", "%2e%2e",
  "k".repeat(201),
];

/** Checks a follower fed hostile names: only the valid keys, nothing outside its directory, names logged. */
async function checkHostile(follower: Mehdb, parent: string, expected: Data, paths: string[]): Promise<void> {
  await convergedOnDisk([follower], expected);
  assert.deepEqual((await readdir(parent)).sort(), ["data", "sentinel"],
    "nothing written or removed next to the data directory");
  assert.equal(await readFile(join(parent, "sentinel"), "utf8"), "keep me");
  assert.deepEqual((await readdir(follower.dataDir)).sort(), [...expected.keys()].sort());
  for (const path of paths) {
    assert.match(path, /^\/(status|keys\?since=[^/]*|get\/[a-z0-9]+|values\?keys=[a-z0-9,]+)$/, `requested ${path}`);
  }
  // Logged once per name, not on every tick that sees it again.
  const ticks = await metric(follower.url, "mehdb_sync_ticks_total");
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_ticks_total")) >= ticks + 3, "three more ticks");
  assert.equal(follower.logLines("skip-key").length, HOSTILE.length, "every bad name logged, once");
  assert.ok((await metric(follower.url, "mehdb_sync_keys_skipped_total")) >= HOSTILE.length);
}

async function hostileFollower(leaderUrl: string): Promise<{ follower: Mehdb; parent: string }> {
  const parent = await tempDir();
  await writeFile(join(parent, "sentinel"), "keep me");
  await mkdir(join(parent, "data"));
  return { follower: await startFollower(leaderUrl, { dataDir: join(parent, "data") }), parent };
}

test("a hostile leader's bad names are skipped and logged, never written, never deleted (change feed)", async () => {
  const values: Data = new Map([
    ["ok", Buffer.from("fine")],
    ["alsook", Buffer.from("fine too")],
    ["later", Buffer.from("new")],
  ]);
  const paths: string[] = [];
  let answers = 0;
  const server = createServer((req, res) => {
    paths.push(req.url ?? "");
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/status") return res.end("leader\n");
    if (url.pathname === "/keys") {
      const since = url.searchParams.get("since");
      const listed = (names: string[], size: number) => names.map((name) => [name, size, 1_700_000_000_000]);
      const body = since === "" || since === null
        ? { cursor: "e-1", full: true, keys: listed([...HOSTILE, "ok", "alsook"], 4), deleted: [] }
        : answers++ === 0
        ? { cursor: "e-2", full: false, keys: listed([...HOSTILE, "later"], 3), deleted: [...HOSTILE, "sentinel"] }
        : { cursor: "e-2", full: false, keys: [], deleted: [] };
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify(body));
    }
    answerGet(res, url.pathname, values);
  });
  const { follower, parent } = await hostileFollower(await listen(server));
  await waitFor(() => answers > 1, "the incremental answer with bad names");
  await checkHostile(follower, parent, values, paths);
});

test("a full reconcile pages: local keys before, between, inside and after the leader's pages are removed, " +
  "listed ones copied", async () => {
  const leaderData: Data = new Map(["b", "c", "e", "f", "h"].map((key) => [key, Buffer.from(`leader ${key}`)]));
  const pages = [["b", "c"], ["e", "f"], ["h"]];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/status") return res.end("leader\n");
    if (url.pathname === "/keys") {
      const from = url.searchParams.get("from");
      const at = from === null ? 0 : pages.findIndex((page) => (page[0] ?? "") > from);
      const page = pages[at] ?? [];
      const keys = page.map((key) => [key, leaderData.get(key)?.length, 1_700_000_000_000]);
      const next = at < pages.length - 1 ? page.at(-1) : null;
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({ cursor: "e-1", full: true, keys, deleted: [], next }));
    }
    answerGet(res, url.pathname, leaderData);
  });
  // Local only: before the first page (a), between pages (d, g), inside a page (ca) and after the last (i, j).
  const local = ["a", "c", "ca", "d", "g", "i", "j"].map((key): [string, Buffer] => [key, Buffer.from(`old ${key}`)]);
  const dataDir = await dataDirWith(new Map(local));
  const follower = await startFollower(await listen(server), { dataDir });
  await waitFor(async () => (await http(`${follower.url}/status?level=full`)).status === 200, "follower synced");
  assert.deepEqual(await dirData(dataDir), leaderData);
});

test("a hostile leader's bad names are skipped and logged, never written (plain array, Go fallback)", async () => {
  const values: Data = new Map([["ok", Buffer.from("fine")], ["alsook", Buffer.from("fine too")]]);
  const go = await goLeader(values, () => [...HOSTILE, "ok", "alsook"]);
  const { follower, parent } = await hostileFollower(go.url);
  await checkHostile(follower, parent, values, go.paths);
});

test("leader unreachable after a sync: the follower keeps serving, stays ready, reports staleness, " +
  "logs outage and recovery once", async () => {
  const leader = await startMehdb({ waitReady: true });
  const expected = manyKeys(10);
  for (const [key, value] of expected) assertStatus(await put(leader.url, key, value), 200, `PUT ${key}`);
  const follower = await startFollower(leader.url);
  await convergedOnDisk([follower], expected);
  const copied = await metric(follower.url, "mehdb_sync_keys_copied_total");

  assert.equal(await leader.stop(), 0);
  const errorsBefore = await metric(follower.url, "mehdb_sync_errors_total");
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_errors_total")) >= errorsBefore + 5,
    "five failed ticks");
  const status = await http(`${follower.url}/status?level=full`);
  assert.equal(status.status, 200, "still ready");
  assert.match(status.text, /^10 keys, last sync [0-9.]+ s ago[^\n]*\n$/);
  const [entry] = expected;
  assert.ok(entry);
  const [key, value] = entry;
  assert.deepEqual((await http(`${follower.url}/get/${key}`)).body, value, "still serving");
  const age1 = await metric(follower.url, "mehdb_sync_seconds_since_success");
  const errors1 = await metric(follower.url, "mehdb_sync_errors_total");
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_errors_total")) >= errors1 + 3,
    "three more failed ticks");
  const age2 = await metric(follower.url, "mehdb_sync_seconds_since_success");
  assert.ok(age1 > 0 && age2 > age1, `staleness grows: ${age1} then ${age2}`);
  assert.equal(follower.logLines("leader-unreachable").length, 1, "outage logged once");
  assert.equal(follower.logLines("sync-recovered").length, 0);

  // The leader comes back on its data (a new epoch): full listing, nothing to copy since sizes and mtimes match.
  const back = await startMehdb({ dataDir: leader.dataDir, port: leader.port, waitReady: true });
  await waitFor(() => follower.logLines("sync-recovered").length > 0, "recovery logged");
  const ticks = await metric(follower.url, "mehdb_sync_ticks_total");
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_ticks_total")) >= ticks + 5, "five more ticks");
  assert.equal(follower.logLines("sync-recovered").length, 1, "recovery logged once");
  assert.equal(follower.logLines("leader-unreachable").length, 1);
  assert.ok((await metric(follower.url, "mehdb_sync_seconds_since_success")) < age2);
  assert.equal(await metric(follower.url, "mehdb_sync_keys_copied_total"), copied, "nothing copied again");
  assertStatus(await put(back.url, "after", Buffer.from("the outage")), 200, "PUT after");
  expected.set("after", Buffer.from("the outage"));
  await convergedOnDisk([follower], expected);
});
