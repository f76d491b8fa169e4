/** The HTTP contract end to end: a real leader and a real follower on loopback, every row of the table. */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { request } from "node:http";
import { after, before, describe, test } from "node:test";
import { missingTool, must } from "./helpers/commands.ts";
import { strayFiles } from "./helpers/data.ts";
import { assertOneLine, del, header, http, listKeys, put, readAnswer, readFeed } from "./helpers/http.ts";
import { runMehdb, startFollower, startMehdb, stopAll, tempDir, type Mehdb } from "./helpers/mehdb.ts";
import { rawRequest } from "./helpers/raw.ts";
import { waitFor } from "./helpers/wait.ts";
import { parseValues } from "../src/protocol.ts";

const MAX = 64 * 1024;
/** The one line every bad key is answered with. */
const KEY_RULE = "invalid key: a key is 1-200 characters of A-Z a-z 0-9 . _ - and does not start with '.'";

let leader: Mehdb;
let follower: Mehdb;

before(async () => {
  const env = { MEHDB_MAX_VALUE_BYTES: String(MAX), MEHDB_SYNC_INTERVAL_MS: "100" };
  leader = await startMehdb({ env, waitReady: true });
  follower = await startFollower(leader.url, { env, waitReady: true });
});
after(stopAll);

describe("leader", () => {
  test("PUT stores, GET returns the bytes, HEAD the length", async () => {
    const res = await put(leader.url, "test", "test data\n");
    assert.equal(res.status, 200);
    assert.equal(res.text, "WRITE completed\n");
    const got = await http(`${leader.url}/get/test`);
    assert.equal(got.status, 200);
    assert.equal(got.text, "test data\n");
    assert.equal(got.headers["content-type"], "application/octet-stream");
    const head = await http(`${leader.url}/get/test`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.headers["content-length"], "10");
    assert.equal(head.body.length, 0);
  });

  test("binary values come back byte-exact", async () => {
    const value = Buffer.concat([randomBytes(40_000), Buffer.from([0, 0xff, 0x0d, 0x0a, 0])]);
    assert.equal((await put(leader.url, "binary", value)).status, 200);
    assert.ok((await http(`${leader.url}/get/binary`)).body.equals(value));
  });

  test("ETag and If-None-Match: 304 while unchanged, 200 after a write", async () => {
    await put(leader.url, "tagged", "v1");
    const first = await http(`${leader.url}/get/tagged`);
    const etag = header(first, "ETag");
    assert.match(etag, /^"[^"]+"$/);
    const again = await http(`${leader.url}/get/tagged`, { headers: { "If-None-Match": etag } });
    assert.equal(again.status, 304);
    assert.equal(again.body.length, 0);
    await put(leader.url, "tagged", "v2");
    const changed = await http(`${leader.url}/get/tagged`, { headers: { "If-None-Match": etag } });
    assert.equal(changed.status, 200);
    assert.equal(changed.text, "v2");
    assert.notEqual(changed.headers.etag, etag);
  });

  test("GET of a missing key: 404, one line", async () => {
    const res = await http(`${leader.url}/get/nothing-here`);
    assert.equal(res.status, 404);
    assertOneLine(res);
  });

  test("DELETE removes (200), then 404", async () => {
    await put(leader.url, "doomed", "x");
    const res = await del(leader.url, "doomed");
    assert.equal(res.status, 200);
    assert.equal((await http(`${leader.url}/get/doomed`)).status, 404);
    const again = await del(leader.url, "doomed");
    assert.equal(again.status, 404);
    assertOneLine(again);
  });

  test("/keys is a sorted JSON array of names, and no temporary file shows", async () => {
    for (const key of ["zeta", "Alpha", "mid.dle", "_u"]) await put(leader.url, key, key);
    const res = await http(`${leader.url}/keys`);
    assert.equal(res.status, 200);
    assert.match(String(res.headers["content-type"]), /^application\/json/);
    const keys = JSON.parse(res.text) as string[];
    assert.ok(Array.isArray(keys) && keys.every((k) => typeof k === "string"));
    assert.deepEqual(keys, [...keys].sort());
    for (const key of ["zeta", "Alpha", "mid.dle", "_u"]) assert.ok(keys.includes(key), key);
    assert.ok(!keys.some((k) => k.startsWith(".")));
  });

  test("/keys?since=…&limit=N pages the full listing by name (next, from=NAME); bad paging 400", async () => {
    for (const key of ["page-a", "page-b", "page-c"]) await put(leader.url, key, key);
    const all = await listKeys(leader.url);
    const seen: string[] = [];
    let from: string | null = null;
    let cursor: string | null = null;
    for (let pages = 0; pages < all.length; pages++) {
      const page = await readFeed(leader.url, `since=&limit=2${from === null ? "" : `&from=${from}`}`);
      assert.equal(page.full, true);
      assert.ok(page.keys.length <= 2);
      cursor ??= page.cursor;
      seen.push(...page.keys.map(([key]) => key));
      if (page.next === null) break;
      assert.equal(page.next, page.keys.at(-1)?.[0]);
      from = page.next ?? null;
    }
    assert.deepEqual(seen, all, "the pages, in order, are the sorted listing");
    const idle = await readFeed(leader.url, `since=${cursor}&limit=2`);
    assert.deepEqual(idle, { cursor, full: false, keys: [], deleted: [] }, "an idle incremental answer is not paged");
    for (const bad of ["limit=0", "limit=100001", "limit=x", "from=a", "limit=2&from=..%2fx", "limit=2&from=.tmp-1"]) {
      const refused = await http(`${leader.url}/keys?since=&${bad}`);
      assert.equal(refused.status, 400, bad);
      assertOneLine(refused);
    }
  });

  test("/keys and /keys?since= without limit answer whole past the pages they are put together in", async () => {
    const dir = await tempDir();
    const names = Array.from({ length: 20_001 }, (_, i) => `w${String(i).padStart(5, "0")}`);
    for (let i = 0; i < names.length; i += 500) {
      await Promise.all(names.slice(i, i + 500).map((name) => writeFile(join(dir, name), "v")));
    }
    const big = await startMehdb({ dataDir: dir, waitReady: true });
    assert.deepEqual(await listKeys(big.url), names);
    assert.deepEqual(JSON.parse((await http(`${big.url}/keys?prefix=w1`)).text), names.slice(10_000, 20_000));
    const whole = await readFeed(big.url, "since=");
    assert.equal(whole.full, true);
    assert.deepEqual(whole.keys.map(([key, size]) => [key, size]), names.map((name) => [name, 1]));
    assert.deepEqual(whole.deleted, []);
    assert.equal("next" in whole, false, "an answer without limit has no next");
    const under = await readFeed(big.url, "since=&prefix=w2");
    assert.deepEqual(under.keys.map(([key]) => key), ["w20000"]);
    await put(big.url, "w00005", "changed");
    const changed = await readFeed(big.url, `since=${whole.cursor}`);
    assert.deepEqual(changed, { cursor: changed.cursor, full: false, keys: [["w00005", 7, changed.keys[0]?.[2]]], deleted: [] });
    await big.stop();
  });

  test("/values?keys=a,b,c: several values in one answer, absent keys marked; bad lists 400", async () => {
    const value = Buffer.from([0, 10, 13, 32, 255]);
    await put(leader.url, "v1", value);
    await put(leader.url, "v2", "two");
    const res = await http(`${leader.url}/values?keys=v1,missing,v2`);
    assert.equal(res.status, 200);
    const lines = res.body.toString("latin1");
    assert.match(lines, /^v1 5 \d+(\.\d{1,3})?\n\0\n\r \xffmissing -\nv2 3 \d+(\.\d{1,3})?\ntwo$/);
    const parsed = parseValues(res.body);
    assert.deepEqual([...parsed.keys()], ["v1", "v2"]);
    assert.ok(parsed.get("v1")?.body.equals(value));
    for (const bad of ["", "a,,b", "..%2fx", "a,.tmp-1", Array.from({ length: 1001 }, (_, i) => `k${i}`).join(",")]) {
      const refused = await http(`${leader.url}/values?keys=${bad}`);
      assert.equal(refused.status, 400, bad.slice(0, 20));
      assertOneLine(refused);
    }
  });

  test("/status says leader; /status?level=full gives the key count", async () => {
    const live = await http(`${leader.url}/status`);
    assert.equal(live.status, 200);
    assert.equal(live.text, "leader\n");
    const ready = await http(`${leader.url}/status?level=full`);
    assert.equal(ready.status, 200);
    const count = (await listKeys(leader.url)).length;
    assert.equal(parseInt(ready.text, 10), count);
  });

  test("/metrics: Prometheus text with requests by route and status, keys and bytes", async () => {
    await http(`${leader.url}/get/nothing-here`);
    const res = await http(`${leader.url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(String(res.headers["content-type"]), /^text\/plain; version=0\.0\.4/);
    assert.match(res.text, /^# TYPE mehdb_http_requests_total counter$/m);
    assert.match(res.text, /^mehdb_http_requests_total\{route="get",status="404"\} [1-9]\d*$/m);
    assert.match(res.text, /^mehdb_http_requests_total\{route="set",status="200"\} [1-9]\d*$/m);
    const keys = (await listKeys(leader.url)).length;
    assert.match(res.text, new RegExp(`^mehdb_keys ${keys}$`, "m"));
    assert.match(res.text, /^mehdb_bytes [1-9]\d*$/m);
    assert.match(res.text, /^process_resident_memory_bytes [1-9]\d*$/m);
    for (const line of res.text.trim().split("\n")) {
      assert.match(line, /^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? -?[\d.]+)$/, line);
    }
  });

  test("bad keys: 400 with the rule, whatever the encoding, " +
    "and nothing written outside the data directory", async () => {
    const before = await readdir(join(leader.dataDir, ".."));
    const paths = [
      "/set/..%2f..%2fescaped", "/set/%2e%2e", "/set/.hidden", "/set/a%00b", "/set/%C3%A9", "/set/a%2Fb",
      "/set/" + "x".repeat(201), "/set/", "/set/%zz", "/set/..", "/set/.tmp-1",
    ];
    for (const path of paths) {
      const res = await rawRequest(leader.port,
        `PUT ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad`);
      assert.equal(res.status, 400, path);
      assert.equal(res.text, `${KEY_RULE}\n`, path);
    }
    const get = await rawRequest(leader.port,
      "GET /get/..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert.equal(get.status, 400);
    assert.deepEqual(await readdir(join(leader.dataDir, "..")), before);
    assert.ok((await readdir(leader.dataDir)).every((name) => !name.includes("escaped")));
  });

  test("wrong method: 405 with Allow; unknown path: 404; both one line", async () => {
    const cases: [string, string, string][] = [
      ["POST", "/set/k", "PUT, DELETE"], ["GET", "/set/k", "PUT, DELETE"], ["PUT", "/get/k", "GET, HEAD"],
      ["DELETE", "/keys", "GET, HEAD"], ["POST", "/status", "GET, HEAD"], ["PUT", "/metrics", "GET, HEAD"],
    ];
    for (const [method, path, allow] of cases) {
      const res = await http(`${leader.url}${path}`, { method });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.headers.allow, allow);
      assertOneLine(res);
    }
    for (const path of ["/nope", "/get", "/set", "/keys/x", "/statusx", "//"]) {
      const res = await http(`${leader.url}${path}`);
      assert.equal(res.status, 404, path);
      assertOneLine(res);
    }
  });

  test("413 for a value over MEHDB_MAX_VALUE_BYTES: from Content-Length before reading, or mid-stream; " +
    "the old value stays", async () => {
    await put(leader.url, "sized", "old");
    const declared = await rawRequest(
      leader.port,
      `PUT /set/sized HTTP/1.1\r\nHost: x\r\nContent-Length: ${MAX + 1}\r\nExpect: 100-continue\r\n\r\n`,
    );
    assert.equal(declared.status, 413);
    assert.doesNotMatch(declared.raw, /100 Continue/);
    assertOneLine(declared);
    const chunked = await put(leader.url, "sized", Buffer.alloc(MAX + 10, 1), {
      headers: { "Transfer-Encoding": "chunked" },
    });
    assert.equal(chunked.status, 413);
    assertOneLine(chunked);
    assert.equal((await http(`${leader.url}/get/sized`)).text, "old");
    assert.deepEqual(await strayFiles(leader.dataDir), []);
  });

  test("a value of exactly the limit is accepted", async () => {
    const value = randomBytes(MAX);
    assert.equal((await put(leader.url, "exact", value)).status, 200);
    assert.ok((await http(`${leader.url}/get/exact`)).body.equals(value));
  });

  test("Expect: 100-continue on the leader gets 100, then the write", async () => {
    const res = await rawRequest(
      leader.port,
      "PUT /set/continued HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n" +
        "Connection: close\r\n\r\nok",
    );
    assert.match(res.raw, /^HTTP\/1\.1 100 Continue\r\n/);
    assert.match(res.raw, /HTTP\/1\.1 200 OK/);
    assert.equal((await http(`${leader.url}/get/continued`)).text, "ok");
  });

  test("answers node:http would send with an empty body get one line: " +
    "malformed, unmet Expect, headers too large", async () => {
    const malformed = await rawRequest(leader.port, "GARBAGE\r\n\r\n");
    assert.equal(malformed.status, 400);
    assertOneLine(malformed);
    const expect = await rawRequest(leader.port,
      "PUT /set/k HTTP/1.1\r\nHost: x\r\nExpect: tea\r\nContent-Length: 1\r\n\r\nx");
    assert.equal(expect.status, 417);
    assertOneLine(expect);
    const huge = await rawRequest(leader.port,
      `GET /get/k HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`);
    assert.equal(huge.status, 431);
    assertOneLine(huge);
    const conflicting = await rawRequest(leader.port,
      "PUT /set/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx");
    assert.equal(conflicting.status, 400);
    assertOneLine(conflicting);
  });

  test("logs: one key=value line per write and delete, none per read", async () => {
    await put(leader.url, "logged", "x");
    for (let i = 0; i < 5; i++) await http(`${leader.url}/get/logged`);
    await del(leader.url, "logged");
    await waitFor(() => leader.output().includes("event=delete key=logged"), "the delete log line");
    const lines = leader.output().split("\n").filter((l) => l.includes("key=logged"));
    assert.equal(lines.length, 2);
    const [write = "", remove = ""] = lines;
    assert.match(write, /^time=\S+ event=write key=logged bytes=1$/);
    assert.match(remove, /^time=\S+ event=delete key=logged$/);
    assert.match(leader.output(), /^time=\S+ event=role role=leader reason="hostname mehdb-0 has ordinal 0"$/m);
  });
});

describe("follower", () => {
  test("/status says follower; ready with its key count once synced", async () => {
    assert.equal((await http(`${follower.url}/status`)).text, "follower\n");
    const ready = await http(`${follower.url}/status?level=full`);
    assert.equal(ready.status, 200);
    assert.match(ready.text, /^\d+ keys, last sync \d+\.\d s ago\n$/);
  });

  test("PUT and DELETE: 307 to the leader, with the body not stored", async () => {
    for (const method of ["PUT", "DELETE"]) {
      const res = await http(`${follower.url}/set/redirected`, { method, body: method === "PUT" ? "v" : undefined });
      assert.equal(res.status, 307, method);
      assert.equal(res.headers.location, `${leader.url}/set/redirected`);
      assertOneLine(res);
    }
    assert.equal((await http(`${leader.url}/get/redirected`)).status, 404);
    assert.equal((await http(`${follower.url}/get/redirected`)).status, 404);
  });

  test("Expect: 100-continue gets the 307 directly, no 100 Continue", async () => {
    const res = await rawRequest(follower.port,
      "PUT /set/big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n");
    assert.equal(res.status, 307);
    assert.doesNotMatch(res.raw, /100 Continue/);
    assert.equal(res.headers.location, `${leader.url}/set/big`);
  });

  test("serves reads from its own copy, byte-exact", async () => {
    const value = randomBytes(5000);
    await put(leader.url, "copied", value);
    await waitFor(async () => (await http(`${follower.url}/get/copied`)).body.equals(value),
      "the copy on the follower");
    const keys = await listKeys(follower.url);
    assert.ok(keys.includes("copied"));
  });

  test("curl -L -XPUT -T file through the follower lands on the leader", { skip: missingTool("curl") }, async () => {
    const file = join(await tempDir(), "upload");
    const small = "test data\n";
    await writeFile(file, small);
    const { stdout } = await must("curl", ["-sS", "-L", "-XPUT", "-T", file, `${follower.url}/set/viacurl`]);
    assert.equal(stdout, "WRITE completed\n");
    assert.equal((await http(`${leader.url}/get/viacurl`)).text, small);
    await waitFor(async () => (await http(`${follower.url}/get/viacurl`)).text === small, "the copy on the follower");
    const { stdout: read } = await must("curl", ["-sS", `${follower.url}/get/viacurl`]);
    assert.equal(read, small);

    const big = randomBytes(MAX - 1); // large enough that curl may send Expect: 100-continue
    await writeFile(file, big);
    const args = ["-sS", "-L", "-XPUT", "-T", file, "-H", "Expect: 100-continue", `${follower.url}/set/bigcurl`];
    const res = await must("curl", args);
    assert.equal(res.stdout, "WRITE completed\n");
    assert.ok((await http(`${leader.url}/get/bigcurl`)).body.equals(big));
  });
});

describe("process", () => {
  test("a bad configuration exits non-zero with one line naming the variable", async () => {
    const result = await runMehdb({ MEHDB_PORT: "not-a-port", MEHDB_DATADIR: await tempDir() }, 15_000);
    assert.notEqual(result.code, 0);
    assert.equal(result.stderr,
      `mehdb: bad configuration: MEHDB_PORT must be a whole number from 0 to 65535, got "not-a-port"\n`);
  });

  test("SIGTERM and SIGINT stop the server cleanly with exit code 0", async () => {
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      const node = await startMehdb();
      await put(node.url, "k", "v");
      assert.equal(await node.stop(signal), 0, signal);
      assert.match(node.output(), new RegExp(`event=stopped signal=${signal}`));
    }
  });

  test("SIGTERM lets a request in flight finish", async () => {
    const node = await startMehdb();
    const answer = new Promise<string>((resolve, reject) => {
      const req = request(`${node.url}/set/slow`, { method: "PUT", headers: { "Content-Length": "6" } }, (res) => {
        readAnswer(res).then(({ status, text }) => resolve(`${status} ${text}`), reject);
      });
      req.on("error", reject);
      req.write("abc");
      setTimeout(() => {
        node.child.kill("SIGTERM");
        setTimeout(() => req.end("def"), 300);
      }, 200);
    });
    assert.equal(await answer, "200 WRITE completed\n");
    assert.equal(await node.stop(), 0);
  });

  test("a standalone leader (hostname without ordinal) says so in its log", async () => {
    const node = await startMehdb({ host: "laptop" });
    assert.match(node.output(), /event=role role=leader reason="hostname laptop has no ordinal: standalone leader"/);
    assert.equal((await http(`${node.url}/status`)).text, "leader\n");
  });
});
