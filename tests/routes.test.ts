/** The route table and its handlers in-process: a Store and a server in this process, no child process. */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import type { Logger } from "../src/log.ts";
import type { PollerState } from "../src/protocol.ts";
import { Followers } from "../src/api/followers.ts";
import { createMehdbServer } from "../src/api/server.ts";
import { Watches } from "../src/api/watch.ts";
import { Metrics } from "../src/metrics.ts";
import { Store } from "../src/store/store.ts";
import { http, put } from "./helpers/http.ts";
import { listen, stopAll, tempDir } from "./helpers/mehdb.ts";

after(stopAll);

/** Log lines of one server, as `event key=value…` strings. */
function recorder(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const log: Logger = (event, fields = {}) => {
    lines.push([event, ...Object.entries(fields).map(([k, v]) => `${k}=${v}`)].join(" "));
  };
  return { lines, log };
}

async function serve(role: "leader" | "follower", poller?: PollerState) {
  const store = await Store.open(await tempDir());
  const { log, lines } = recorder();
  const leaderUrl = role === "follower" ? "http://mehdb-0.mehdb.default.svc.cluster.local:9876" : null;
  const server = createMehdbServer({
    store,
    role,
    leaderUrl,
    maxValueBytes: 1024,
    log,
    poller,
    metrics: new Metrics(),
    access: undefined,
    host: role,
    followers: role === "leader" ? new Followers({ lag: (cursor) => store.changesSince(cursor) }) : null,
    watches: new Watches(() => store.nextChange()),
  });
  return { store, url: await listen(server), lines };
}

describe("route table, in-process", () => {
  test("PUT then GET /get/KEY goes through the store; the write is logged", async () => {
    const { store, url, lines } = await serve("leader");
    const written = await put(url, "k1", "v1");
    assert.equal(written.status, 200);
    assert.equal(store.stat("k1")?.size, 2);
    const got = await http(`${url}/get/k1`);
    assert.equal(got.text, "v1");
    const entry = store.stat("k1");
    assert.ok(entry);
    assert.equal(got.headers.etag, store.etag(entry));
    assert.ok(lines.includes("write key=k1 bytes=2"), lines.join("\n"));
  });

  test("a method the route does not take is 405 with the route's Allow; unknown paths 404", async () => {
    const { url } = await serve("leader");
    const wrong = await http(`${url}/set/k1`, { method: "GET" });
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.allow, "PUT, DELETE");
    const keys = await http(`${url}/keys`, { method: "POST", body: "x" });
    assert.equal(keys.status, 405);
    assert.equal(keys.headers.allow, "GET, HEAD");
    assert.equal((await http(`${url}/nope`)).status, 404);
  });

  test("metrics count answers under the route table's labels", async () => {
    const { url } = await serve("leader");
    await http(`${url}/get/absent`);
    await http(`${url}/get/..bad`);
    await http(`${url}/nope`);
    const text = (await http(`${url}/metrics`)).text;
    assert.match(text, /mehdb_http_requests_total\{route="get",status="404"\} 1\n/);
    assert.match(text, /mehdb_http_requests_total\{route="get",status="400"\} 1\n/);
    assert.match(text, /mehdb_http_requests_total\{route="other",status="404"\} 1\n/);
  });

  test("a follower redirects writes before reading a body, and reports its poller's state", async () => {
    const poller: PollerState = {
      synced: false,
      lastError: "leader unreachable",
      unheld: null,
      secondsSinceSync: () => null,
      metrics: () => "mehdb_test_replica 1\n",
      reached: () => false,
      holds: () => true,
      holdsAll: () => true,
      intervalMs: 1000,
      nextSync: () => Promise.resolve(),
      idle: () => Promise.resolve(),
      heldCursor: null,
    };
    const { url, store } = await serve("follower", poller);
    const written = await put(url, "k1", "v1");
    assert.equal(written.status, 307);
    assert.equal(written.headers.location, "http://mehdb-0.mehdb.default.svc.cluster.local:9876/set/k1");
    assert.equal(store.count, 0);
    const ready = await http(`${url}/status?level=full`);
    assert.equal(ready.status, 503);
    assert.match(ready.text, /^not ready: no complete sync with the leader .*\(leader unreachable\)\n$/);
    assert.equal((await http(`${url}/status`)).text, "follower\n");
    assert.match((await http(`${url}/metrics`)).text, /mehdb_test_replica 1\n/);
  });
});
