/**
 * Faults a pod really meets, on real processes over loopback: a leader that
 * stops answering (SIGSTOP), a leader restarted again and again while a
 * follower copies from it, a full disk during a PUT, and a data directory that
 * turns read-only.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { ConfigError, DEFAULTS, loadConfig } from "../src/config.ts";
import { must } from "./helpers/commands.ts";
import { checkedValue, converged, difference, randomInt, snapshot, verifyValue } from "./helpers/data.ts";
import { assertOneLine, del, http, listKeys, metric, put } from "./helpers/http.ts";
import { freePort, startFollower, startMehdb, stopAll, tempDir, tmpfsDir } from "./helpers/mehdb.ts";
import { rawExchange } from "./helpers/raw.ts";
import { sleep, waitFor } from "./helpers/wait.ts";

// stopAll stops the processes before its clean-ups unmount the tmpfs they use, and removes its parent last.
after(stopAll);

describe("MEHDB_SYNC_TIMEOUT_MS", () => {
  test("defaults to 10 s, takes whole milliseconds from 100, refuses anything else", () => {
    assert.equal(loadConfig({}, "mehdb-1").syncTimeoutMs, DEFAULTS.syncTimeoutMs);
    assert.equal(DEFAULTS.syncTimeoutMs, 10_000);
    assert.equal(loadConfig({ MEHDB_SYNC_TIMEOUT_MS: "1500" }, "mehdb-1").syncTimeoutMs, 1500);
    assert.equal(loadConfig({ MEHDB_SYNC_TIMEOUT_MS: " 100 " }, "mehdb-0").syncTimeoutMs, 100);
    for (const bad of ["abc", "99", "1.5", "-1", "10s", "3600001"]) {
      assert.throws(() => loadConfig({ MEHDB_SYNC_TIMEOUT_MS: bad }, "mehdb-1"), (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.match(error.message, /^MEHDB_SYNC_TIMEOUT_MS must be a whole number from 100 to 3600000/);
        assert.ok(!error.message.includes("\n"));
        return true;
      });
    }
  });
});

describe("a leader that stops answering (SIGSTOP)", () => {
  test("the follower's requests time out, it keeps serving, and it recovers on SIGCONT", async () => {
    const leader = await startMehdb({ host: "mehdb-0" });
    const values = new Map<string, Buffer>();
    for (let i = 0; i < 20; i++) {
      const value = checkedValue(`stop-${i}`, randomInt(100, 4000));
      values.set(`stop-${i}`, value);
      assert.equal((await put(leader.url, `stop-${i}`, value)).status, 200);
    }
    const follower = await startFollower(leader.url, { env: { MEHDB_SYNC_TIMEOUT_MS: "400" }, waitReady: true });
    await waitFor(async () => (await snapshot(follower.url)).size === 20, "the follower's first copy");

    const errorsBefore = await metric(follower.url, "mehdb_sync_errors_total");
    leader.child.kill("SIGSTOP");
    try {
      // Ticks keep ending in errors (each request gives up after 400 ms) instead of hanging on the first one.
      await waitFor(async () => (await metric(follower.url, "mehdb_sync_errors_total")) >= errorsBefore + 3,
        "three timed-out ticks", 15_000);
      const status = await http(`${follower.url}/status?level=full`);
      assert.equal(status.status, 200, "a follower that synced once stays ready while its leader is away");
      assert.match(status.text, /20 keys.*(within 400 ms|timed out)/);
      assertOneLine(status, "status");

      // It keeps serving what it has, and still redirects writes.
      for (const [key, value] of values) {
        const res = await http(`${follower.url}/get/${key}`);
        assert.equal(res.status, 200);
        assert.ok(res.body.equals(value), key);
      }
      const redirect = await put(follower.url, "stop-new", "x");
      assert.equal(redirect.status, 307);
      assert.equal(redirect.headers.location, `${leader.url}/set/stop-new`);
      assert.equal(follower.output().match(/event=leader-unreachable/g)?.length, 1,
        "the outage is logged once, not every tick");
    } finally {
      leader.child.kill("SIGCONT");
    }

    const fresh = checkedValue("stop-new", 3000);
    assert.equal((await put(leader.url, "stop-new", fresh)).status, 200);
    await waitFor(async () => {
      const res = await http(`${follower.url}/get/stop-new`);
      return res.status === 200 && res.body.equals(fresh);
    }, "the follower to copy a write made after SIGCONT");
    await waitFor(async () => !(await http(`${follower.url}/status?level=full`)).text.includes("("),
      "the error to clear");
    assert.match(follower.output(), /event=sync-recovered .*after=leader-unreachable /);
    assert.equal(difference(await snapshot(leader.url), await snapshot(follower.url)), null);
    await leader.stop();
    await follower.stop();
  });
});

describe("a leader restarted many times while a follower copies from it", () => {
  test("the follower ends with exactly the leader's keys and bytes", async () => {
    const port = await freePort();
    const dataDir = await tempDir();
    let leader = await startMehdb({ host: "mehdb-0", port, dataDir });
    const follower = await startFollower(leader.url, {
      env: { MEHDB_SYNC_INTERVAL_MS: "50", MEHDB_SYNC_TIMEOUT_MS: "2000" },
    });
    let writes = 0;
    let running = true;
    const writer = async (w: number) => {
      let n = 0;
      while (running) {
        const key = `restart-${randomInt(0, 59)}`;
        try {
          const options = { keepAlive: true, timeoutMs: 3000 };
          if (Math.random() < 0.15) await del(leader.url, key, options);
          else await put(leader.url, key, checkedValue(`${w}.${n++}`, randomInt(1, 64 * 1024)), options);
          writes++;
        } catch {
          await sleep(20); // the leader is down: try again shortly
        }
      }
    };
    const writers = Array.from({ length: 4 }, (_, w) => writer(w));
    const restarts = 8;
    try {
      for (let round = 0; round < restarts; round++) {
        await sleep(randomInt(200, 700));
        const signal = round % 2 === 0 ? "SIGKILL" : "SIGTERM";
        const code = await leader.stop(signal);
        if (signal === "SIGTERM") {
          // Under keep-alive load, SIGTERM still ends cleanly: in-flight requests finish, none is cut off by force.
          assert.equal(code, 0, leader.output());
          assert.doesNotMatch(leader.output(), /event=stop-forced/);
        }
        await sleep(randomInt(0, 300));
        leader = await startMehdb({ host: "mehdb-0", port, dataDir });
      }
    } finally {
      running = false;
      await Promise.all(writers);
    }
    assert.ok(writes > restarts * 5, `only ${writes} writes went through`);
    await converged(follower.url, leader.url);
    for (const [key, value] of await snapshot(follower.url)) {
      const check = verifyValue(value);
      assert.ok(check.ok, `${key}: ${check.ok ? "" : check.reason}`);
    }
    assert.equal((await http(`${follower.url}/status?level=full`)).status, 200);
    await follower.stop();
    await leader.stop();
  });
});

/** A PUT over a raw socket that keeps sending while it reads, as curl does: the first response, or the error. */
async function rawPut(port: number, key: string, body: Buffer, chunked: boolean) {
  const head = `PUT /set/${key} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
    (chunked ? "Transfer-Encoding: chunked\r\n\r\n" : `Content-Length: ${body.length}\r\n\r\n`);
  const parts: (Buffer | string)[] = [head];
  for (let at = 0; at < body.length; at += 64 * 1024) {
    const piece = body.subarray(at, at + 64 * 1024);
    const chunk = Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from("\r\n")]);
    parts.push(chunked ? chunk : piece);
  }
  if (chunked) parts.push("0\r\n\r\n");
  return rawExchange(port, parts, { methods: ["PUT"], timeoutMs: 15_000, halfClose: false });
}

describe("a full disk during a PUT", () => {
  test("answers 507 in one line, keeps the old value, leaves no temp file, and keeps serving", async (t) => {
    const disk = await tmpfsDir(t, "2m");
    if (disk === null) return;
    const dataDir = join(disk, "data");
    const leader = await startMehdb({ host: "mehdb-0", dataDir });

    const old = checkedValue("old", 100_000);
    assert.equal((await put(leader.url, "victim", old)).status, 200);
    assert.equal((await put(leader.url, "filler", Buffer.alloc(1024 * 1024, 1))).status, 200);

    // 3 MiB fails mid-body; 9 MiB leaves more unread than the server drains; with and without Content-Length.
    for (const [size, chunked] of [[3, false], [3, true], [9, false], [9, true]] as const) {
      const what = `${size} MiB ${chunked ? "chunked" : "with Content-Length"}`;
      const exchange = await rawPut(leader.port, "victim", checkedValue(`new-${size}`, size * 1024 * 1024), chunked);
      const response = exchange.responses[0];
      assert.ok(response, `${what}: no response (${exchange.error ?? "closed"}, timed out: ${exchange.timedOut})`);
      assert.equal(response.status, 507, `${what}: ${response.body}`);
      assertOneLine(response.body, what);
      assert.match(response.body.toString(), /full/);

      const now = await http(`${leader.url}/get/victim`);
      assert.equal(now.status, 200);
      assert.ok(now.body.equals(old), `${what}: the old value changed`);
      const files = await readdir(dataDir);
      assert.deepEqual(files.filter((name) => name.startsWith(".")), [], `${what}: temp files left`);
      assert.deepEqual(files.sort(), ["filler", "victim"]);
      assert.equal((await http(`${leader.url}/status?level=full`)).status, 200);
    }
    // Space is back once the failed write is gone: small writes succeed again.
    assert.equal((await put(leader.url, "after", "small")).status, 200);
    assert.equal((await http(`${leader.url}/get/after`)).text, "small");
    assert.deepEqual(await listKeys(leader.url), ["after", "filler", "victim"]);
  });
});

describe("a data directory that turns read-only", () => {
  test("/status?level=full answers 503 with the reason, reads go on, " +
    "and it is ready again once writable", async (t) => {
    const disk = await tmpfsDir(t, "4m");
    if (disk === null) return;
    const leader = await startMehdb({ host: "mehdb-0", dataDir: join(disk, "data"), waitReady: true });
    assert.equal((await put(leader.url, "kept", "kept")).status, 200);

    await must("mount", ["-o", "remount,ro", disk]);
    const status = await http(`${leader.url}/status?level=full`);
    assert.equal(status.status, 503);
    assertOneLine(status, "status");
    assert.match(status.text, /not ready: data directory .* is not writable: EROFS/);
    assert.equal((await http(`${leader.url}/status`)).status, 200, "liveness stays up: a restart would not help");
    assert.equal((await http(`${leader.url}/get/kept`)).text, "kept");
    const refused = await put(leader.url, "kept", "changed");
    assert.notEqual(refused.status, 200);
    assertOneLine(refused, "refused PUT");
    assert.equal((await http(`${leader.url}/get/kept`)).text, "kept");

    await must("mount", ["-o", "remount,rw", disk]);
    assert.equal((await http(`${leader.url}/status?level=full`)).status, 200);
    assert.equal((await put(leader.url, "kept", "changed")).status, 200);
  });
});
