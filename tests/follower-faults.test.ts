/**
 * What a follower meets in a real cluster and the other suites do not: a soft
 * limit of 1 024 descriptors, an address that is not a leader (a JSON endpoint,
 * the follower itself), a leader listing hundreds of MB, a leader trickling its
 * answer, keys it cannot hold, and failures on either side that the log must
 * tell apart. Real follower processes; the leaders are real mehdb processes or
 * small `node:http` servers in this file.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { join } from "node:path";
import { after, test } from "node:test";
import { missingTool } from "./helpers/commands.ts";
import { dataDirWith, difference, dirData, manyKeys, randomValue, strayFiles, type Data } from "./helpers/data.ts";
import { del, http, metric, metrics, put } from "./helpers/http.ts";
import {
  freePort,
  listen,
  memoryKiB,
  openFiles,
  startFollower,
  startMehdb,
  stopAll,
  tempDir,
  type Mehdb,
} from "./helpers/mehdb.ts";
import { waitFor } from "./helpers/wait.ts";

const PRLIMIT = "/usr/bin/prlimit";

after(stopAll);

/** Serves `handler` on 127.0.0.1 (a free port) until the suite ends; resolves with its URL. */
function fakeLeader(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  return listen(createServer(handler));
}

async function errorsAtLeast(follower: Mehdb, count: number, timeoutMs = 15_000): Promise<void> {
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_errors_total")) >= count, `${count} failed ticks`,
    timeoutMs);
}

test("catch-up of 20 000 keys under a soft limit of 1 024 descriptors: no failed tick, exact convergence, " +
  "stale keys removed across pages", {
  skip: missingTool(PRLIMIT),
}, async (t) => {
  const data = manyKeys(20_000, "key-", 48);
  const leader = await startMehdb({ dataDir: await dataDirWith(data), waitReady: true });
  // The follower's volume from an earlier life: keys the leader no longer has, sorting before, between and
  // after the listing's pages (10 000 keys each), and keys whose bytes differ.
  const stale: Data = new Map([
    ["aaa-before", Buffer.from("gone")],
    ["key-005000-stale", Buffer.from("gone")],
    ["key-015000-stale", Buffer.from("gone")],
    ["zzz-after", Buffer.from("gone")],
    ["key-000007", randomValue(100)],
    ["key-012345", randomValue(100)],
  ]);
  const follower = await startFollower(leader.url, {
    dataDir: await dataDirWith(stale),
    wrapper: [PRLIMIT, "--nofile=1024:1024", "--"],
    env: { MEHDB_SYNC_INTERVAL_MS: "200" },
  });
  const limits = await readFile(`/proc/${follower.pid}/limits`, "utf8");
  assert.match(limits, /^Max open files\s+1024\s+1024\b/m, "the follower runs under the limit");
  const started = performance.now();
  let mostFds = 0;
  await waitFor(async () => {
    mostFds = Math.max(mostFds, await openFiles(follower.pid));
    return (await http(`${follower.url}/status?level=full`)).status === 200;
  }, "the follower ready", 180_000);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  t.diagnostic(`20 000 keys copied under 1 024 descriptors in ${seconds} s; at most ${mostFds} descriptors seen open`);
  assert.ok(mostFds < 256, `the follower held ${mostFds} descriptors at once`);
  assert.equal(await metric(follower.url, "mehdb_sync_errors_total"), 0,
    `no failed tick:\n${follower.output().slice(-2000)}`);
  assert.equal(difference(await dirData(follower.dataDir), data), null, "exactly the leader's keys and bytes");
  assert.deepEqual(await strayFiles(follower.dataDir), [], "no temporary file left");
  assert.equal(await metric(follower.url, "mehdb_sync_keys_deleted_total"), 4);
});

test("an address that is not a leader (a JSON endpoint answering [] to /keys) is not trusted: " +
  "nothing deleted or copied, not ready, says why", async () => {
  const asked: string[] = [];
  const url = await fakeLeader((req, res) => {
    asked.push(req.url ?? "");
    if ((req.url ?? "").startsWith("/keys")) {
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end("[]");
    }
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end("<html><body>Welcome</body></html>\n");
  });
  const own = manyKeys(20, "key-", 48);
  const follower = await startFollower(url, { dataDir: await dataDirWith(own) });
  await errorsAtLeast(follower, 3);
  const status = await http(`${follower.url}/status?level=full`);
  assert.equal(status.status, 503);
  assert.match(status.text,
    /^not ready: .*answers GET \/status with "<html><body>Welcome<\/body><\/html>", not "leader"[^\n]*\n$/);
  assert.equal(difference(await dirData(follower.dataDir), own), null, "every key kept");
  assert.equal(await metric(follower.url, "mehdb_sync_keys_deleted_total"), 0);
  assert.deepEqual(asked.filter((path) => !path.startsWith("/status")), [], "nothing but GET /status asked of it");
  assert.equal(follower.logLines("leader-error").length, 1, "logged once");
});

test("a follower pointed at itself is not trusted: keeps its keys, not ready, " +
  "says the address answers follower", async () => {
  const port = await freePort();
  const own = manyKeys(20, "key-", 48);
  const follower = await startFollower(`http://127.0.0.1:${port}`, { port, dataDir: await dataDirWith(own) });
  await errorsAtLeast(follower, 3);
  const status = await http(`${follower.url}/status?level=full`);
  assert.equal(status.status, 503);
  assert.match(status.text, /^not ready: .*answers GET \/status with "follower", not "leader"[^\n]*\n$/);
  assert.equal(difference(await dirData(follower.dataDir), own), null, "every key kept");
  assert.equal(await metric(follower.url, "mehdb_sync_synced"), 0);
});

test("a leader listing 300 MB: the follower reads a bounded part, refuses it in one line, " +
  "keeps its keys and its memory", async (t) => {
  const chunk = Buffer.from(Array.from({ length: 65_536 }, (_, i) => `"k${String(i).padStart(7, "0")}",`).join(""));
  const total = 300 * 1024 * 1024;
  let sent = 0;
  const url = await fakeLeader(async (req, res) => {
    if (req.url === "/status") return res.end("leader\n");
    if (!(req.url ?? "").startsWith("/keys")) {
      res.writeHead(404);
      return res.end();
    }
    // A plain array, as the original Go leader sends, generated as it goes (never held here).
    res.writeHead(200, { "Content-Type": "application/json" });
    res.write("[");
    let closed = false;
    res.on("close", () => (closed = true));
    for (let at = 0; at < total && !closed; at += chunk.length) {
      sent += chunk.length;
      if (!res.write(chunk)) await drained(res);
    }
    if (!closed) res.end(`"last"]`);
  });
  const own = manyKeys(5, "key-", 48);
  const dataDir = await dataDirWith(own);
  const follower = await startFollower(url, { dataDir, env: { MEHDB_SYNC_TIMEOUT_MS: "20000" } });
  await waitFor(() => follower.logLines("leader-error").length > 0, "the listing refused", 60_000);
  const [refused = ""] = follower.logLines("leader-error");
  assert.match(refused, /answer to GET \/keys is larger than \d+ bytes/);
  const peakKiB = await memoryKiB(follower.pid, "VmHWM");
  assert.ok(peakKiB !== null, "the follower's peak resident memory can be read");
  const peakMb = peakKiB / 1024;
  const sentMib = (sent / 1048576).toFixed(0);
  t.diagnostic(`the follower's peak resident memory: ${peakMb.toFixed(0)} MB; ${sentMib} MiB of listing sent`);
  assert.ok(peakMb < 200, `the follower's peak resident memory is ${peakMb.toFixed(0)} MB`);
  assert.ok(sent < 64 * 1024 * 1024, `the follower stopped reading: ${sentMib} MiB sent`);
  assert.equal((await http(`${follower.url}/status?level=full`)).status, 503);
  assert.equal(difference(await dirData(follower.dataDir), own), null, "every key kept");
});

test("a leader trickling its answer a byte every 500 ms: each request ends at MEHDB_SYNC_TIMEOUT_MS, " +
  "logged as unreachable", async () => {
  const timers = new Set<NodeJS.Timeout>();
  const url = await fakeLeader((req, res) => {
    if (req.url === "/status") return res.end("leader\n");
    res.writeHead(200, { "Content-Type": "application/json" });
    res.write("[");
    const timer = setInterval(() => res.write(" "), 500);
    timers.add(timer);
    res.on("close", () => {
      clearInterval(timer);
      timers.delete(timer);
    });
  });
  try {
    const follower = await startFollower(url, { env: { MEHDB_SYNC_TIMEOUT_MS: "1000" } });
    await errorsAtLeast(follower, 3, 20_000);
    const status = await http(`${follower.url}/status?level=full`);
    assert.equal(status.status, 503);
    assert.match(status.text, /no complete answer to GET \/keys\S* within 1000 ms/);
    assert.equal(follower.logLines("leader-unreachable").length, 1, "logged once");
    const [unreachable = ""] = follower.logLines("leader-unreachable");
    assert.match(unreachable, /within 1000 ms/);
  } finally {
    for (const timer of timers) clearInterval(timer);
  }
});

/** Resolves once `res` can take more bytes, or is closed. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

test("keys the follower cannot hold (a directory in the way, a value over its limit) are skipped: " +
  "the rest syncs, it is ready, they are named and retried", async () => {
  const data = manyKeys(30, "key-", 48);
  const blocked = randomValue(10);
  data.set("blocked", blocked);
  data.set("blocked-large", randomValue(100_000)); // fetched on its own, not in a group
  data.set("big", randomValue(300_000));
  data.set("large-ok", randomValue(150_000));
  const leaderDir = await dataDirWith(data);
  const leader = await startMehdb({ dataDir: leaderDir, waitReady: true });
  const followerDir = await tempDir();
  for (const name of ["blocked", "blocked-large"]) {
    await mkdir(join(followerDir, name));
    await writeFile(join(followerDir, name, "inside"), "not a key");
  }
  const follower = await startFollower(leader.url, {
    dataDir: followerDir,
    env: { MEHDB_MAX_VALUE_BYTES: "200000" },
  });
  await waitFor(async () => (await http(`${follower.url}/status?level=full`)).status === 200, "the follower ready");
  const held = new Map(data);
  for (const key of ["blocked", "blocked-large", "big"]) held.delete(key);
  assert.equal(difference(await dirData(followerDir, { skipOthers: true }), held), null, "every other key copied");
  const status = (await http(`${follower.url}/status?level=full`)).text;
  assert.match(status, /^31 keys, last sync [^\n]*; 3 keys not held: [^\n]*\n$/);
  for (const key of ["blocked ", "blocked-large ", "big "]) assert.ok(status.includes(key), `${key}named: ${status}`);
  const ticks = await metric(follower.url, "mehdb_sync_ticks_total");
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_ticks_total")) >= ticks + 3, "three more ticks");
  const m = await metrics(follower.url);
  assert.equal(m.get("mehdb_sync_keys_unheld"), 3);
  assert.ok(m.get("mehdb_sync_keys_unheld_total") >= 3);
  assert.equal(m.get("mehdb_sync_errors_total"), 0, "no tick failed for them");
  assert.equal(follower.logLines("key-not-held").length, 3, "each logged once");

  // The cursor moved: later writes arrive.
  assert.equal((await put(leader.url, "later", "after the skip")).status, 200);
  await waitFor(async () => (await http(`${follower.url}/get/later`)).text === "after the skip",
    "a later write copied");

  // The way cleared, the next full reconcile (the leader restarts: a new epoch) copies the key.
  await rm(join(followerDir, "blocked"), { recursive: true });
  assert.equal(await leader.stop(), 0);
  const back = await startMehdb({ dataDir: leaderDir, port: leader.port, waitReady: true });
  await waitFor(async () => (await http(`${follower.url}/get/blocked`)).body.equals(blocked), "blocked copied");
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_keys_unheld")) === 2, "two keys left unheld");
  // A key the leader deletes is no longer reported.
  assert.equal((await del(back.url, "big")).status, 200);
  await waitFor(async () => (await metric(follower.url, "mehdb_sync_keys_unheld")) === 1, "one key left unheld");
  assert.match((await http(`${follower.url}/status?level=full`)).text, /; 1 key not held: blocked-large \(EISDIR/);
});

test("the log tells apart a leader that answers an error, a leader that cannot be reached and a local failure, " +
  "each once, and the recovery", async () => {
  let mode: "ok" | "error" | "down" = "ok";
  const values: Data = new Map([["a", Buffer.from("first")]]);
  const url = await fakeLeader((req, res) => {
    if (mode === "down") return req.socket.destroy();
    const [path = ""] = (req.url ?? "").split("?");
    if (path === "/status") return res.end("leader\n");
    if (mode === "error") {
      res.writeHead(500);
      return res.end("internal error\n");
    }
    if (path === "/keys") {
      const keys = [...values].map(([key, value]) => [key, value.length, 1_700_000_000_000]);
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({ cursor: "e-1", full: true, keys, deleted: [] }));
    }
    const value = path.startsWith("/get/") ? values.get(path.slice(5)) : undefined;
    res.writeHead(value ? 200 : 404, value ? { "Content-Length": value.length } : {});
    res.end(value);
  });
  const follower = await startFollower(url);
  await waitFor(async () => (await http(`${follower.url}/get/a`)).text === "first", "the first copy");
  const failures = () => {
    return ["leader-error", "leader-unreachable", "local-error"].map((event) => follower.logLines(event).length);
  };
  const recovered = () => follower.logLines("sync-recovered");
  /** The `n`th recovery line ("" until there is one). */
  const recovery = (n: number) => recovered()[n] ?? "";
  let errors = await metric(follower.url, "mehdb_sync_errors_total");

  mode = "error"; // the leader answers, with a 500
  await errorsAtLeast(follower, (errors += 3));
  assert.deepEqual(failures(), [1, 0, 0], "a 500 is the leader's error, logged once");
  assert.match(follower.logLines("leader-error")[0] ?? "", /error="leader answered 500 to GET \/keys"/);
  mode = "ok";
  await waitFor(() => recovered().length === 1, "recovery logged");
  assert.match(recovery(0), /after=leader-error down_seconds=[0-9.]+/);

  errors = await metric(follower.url, "mehdb_sync_errors_total");
  mode = "down"; // connections cut before any answer
  await errorsAtLeast(follower, (errors += 3));
  assert.deepEqual(failures(), [1, 1, 0], "a cut connection: the leader cannot be reached, logged once");
  mode = "ok";
  await waitFor(() => recovered().length === 2, "recovery logged");
  assert.match(recovery(1), /after=leader-unreachable /);

  errors = await metric(follower.url, "mehdb_sync_errors_total");
  await rm(follower.dataDir, { recursive: true }); // this follower's disk fails it
  values.set("b", Buffer.from("second"));
  await errorsAtLeast(follower, (errors += 3));
  assert.deepEqual(failures(), [1, 1, 1], "a local failure, logged once");
  assert.match(follower.logLines("local-error")[0] ?? "", /ENOENT/);
  await mkdir(follower.dataDir);
  await waitFor(async () => (await http(`${follower.url}/get/b`)).text === "second",
    "the copy once the disk is back");
  await waitFor(() => recovered().length === 3, "recovery logged");
  assert.match(recovery(2), /after=local-error /);
  assert.equal((await http(`${follower.url}/status?level=full`)).status, 200);
});
