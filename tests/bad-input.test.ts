/**
 * Hostile and broken clients, over raw sockets: thousands of generated
 * malformed requests against a leader and a follower (random methods, path
 * traversal in every encoding, NUL and unicode in keys, overlong request lines
 * and headers, bogus or conflicting framing, truncated bodies, garbage), sent
 * on fresh connections and on kept-alive ones, a few at a time. The processes
 * must stay up, never answer 5xx, answer every rejection with a 4xx and one
 * line, and never create a file outside their data directory. Then hundreds
 * of connections dripping their headers must not stall a normal request.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { lstat, mkdir, readdir } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { dirname, join } from "node:path";
import { after, describe, test } from "node:test";
import { isValidKey } from "../src/keys.ts";
import { pick, randomInt } from "./helpers/data.ts";
import { http, isOneLine, listKeys } from "./helpers/http.ts";
import { openFiles, ROOT, startFollower, startMehdb, stopAll, tempDir, type Mehdb } from "./helpers/mehdb.ts";
import { RawConnection, rawExchange, type RawResponse } from "./helpers/raw.ts";
import { pool, sleep, waitFor } from "./helpers/wait.ts";

after(stopAll);

/** Requests per server; two servers. */
const PER_SERVER = 2600;
/** Marks every file name a traversal tries to create, so a stray one is found anywhere. */
const MARK = `pwned${randomBytes(4).toString("hex")}`;

/** One generated request. */
interface Case {
  kind: string;
  bytes: Buffer;
  /** The method (tells whether the answer has a body). */
  method: string;
  /** Must go on its own connection, half-closed after the bytes (the server waits for more otherwise). */
  needsEnd?: boolean;
  /** May end without any answer (nothing was asked). */
  silentOk?: boolean;
}

const METHODS = [
  "GET", "HEAD", "PUT", "DELETE", "POST", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "get", "FOO", "M-SEARCH", "PURGE",
  "LINK",
];
const PATHS = [
  "/get/k1", "/set/k1", "/keys", "/status", "/status?level=full", "/metrics", "/", "/nope", "/get/", "/set/", "/keys/",
  "//get/k1", "/GET/k1", "/keys?since=zz-1", "/keys?since=%ff", "/values", "/values?keys=ok-1,ok-2", "/values?keys=",
];

/** `../` and friends in every encoding a path can carry. */
const DOT_DOT = [
  "..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%252e%252e", "%c0%ae%c0%ae", "%e0%80%ae%e0%80%ae", "%uff0e%uff0e",
  "%ef%bc%8e%ef%bc%8e", "..%00", "%2e%2e%00",
];
const SLASH = ["/", "%2f", "%2F", "%252f", "%5c", "\\", "%c0%af", "%e0%80%af", "%ef%bc%8f", "%00/", "%2f%2f"];

function traversalPath(): string {
  const depth = randomInt(1, 8);
  let path = "";
  for (let i = 0; i < depth; i++) path += pick(DOT_DOT) + pick(SLASH);
  return path + pick([`${MARK}`, `tmp${pick(SLASH)}${MARK}`, `${MARK}${pick(["%00", "%00.txt", ""])}`]);
}

/** Keys with NUL, unicode, dots, and lengths around the limit. */
const ODD_KEYS = [
  "%00", "a%00b", "%00%00", "%c0%80", "caf%c3%a9", "%e2%80%ae", "%f0%9f%98%80", "%ff", "%fe%ff", "%ed%a0%80", "%",
  "%zz", "%2", "a%", ".", "..", ".hidden", ".tmp-x", `.tmp-${MARK}`, "%2etmp-x", "a".repeat(201), "b".repeat(300),
  "a/b", "a%2fb", "a b", "a%20b", "a+b", "a;b", "a?b", "a#b", "~a", "a*", "%2a", "con", "nul",
];

/** The bytes of a request: its line, `Host` and `headers`, a blank line, `body` (latin1). */
function request(method: string, path: string, headers: string[] = [], body = "", version = "HTTP/1.1"): Buffer {
  const head = [`${method} ${path} ${version}`, "Host: 127.0.0.1", ...headers].join("\r\n");
  return Buffer.from(`${head}\r\n\r\n${body}`, "latin1");
}

/** The bytes of a PUT of `body` with its Content-Length. */
function put(path: string, body: string, headers: string[] = []): Buffer {
  return request("PUT", path, [`Content-Length: ${Buffer.byteLength(body, "latin1")}`, ...headers], body);
}

/** Generators of malformed (and a few well-formed) requests. */
const GENERATORS: (() => Case)[] = [
  // random methods on known paths
  () => {
    const method = pick(METHODS);
    const body = method === "PUT" || method === "POST" || Math.random() < 0.1 ? "v".repeat(randomInt(0, 50)) : "";
    const headers = body ? [`Content-Length: ${body.length}`] : [];
    return { kind: "method", method, bytes: request(method, pick(PATHS), headers, body) };
  },
  // path traversal, every encoding, every route and method
  () => {
    const method = pick(["GET", "HEAD", "PUT", "DELETE"]);
    const path = pick(["/get/", "/set/", "/", "/keys/", "/get/x/", "/set/x/"]) + traversalPath();
    const bytes = method === "PUT" ? put(path, `traversal ${MARK}`) : request(method, path);
    return { kind: "traversal", method, bytes };
  },
  // the grouped read of a follower's catch-up, with bad, traversing, too many or duplicate keys
  () => {
    const keys = pick([
      traversalPath(), `ok-1,${traversalPath()}`, "", ",", "ok-1,,ok-2", pick(ODD_KEYS), `ok-1,${pick(ODD_KEYS)}`,
      Array.from({ length: 1001 }, (_, i) => `k${i}`).join(","), "ok-1,ok-1,ok-1", "ok-1%2c..%2f..", "ok-1&keys=../x",
    ]);
    const method = pick(["GET", "HEAD", "PUT", "DELETE"]);
    return { kind: "values", method, bytes: request(method, `/values?keys=${keys}`) };
  },
  // absolute-form and odd request targets
  () => {
    const method = pick(["GET", "PUT", "DELETE", "OPTIONS"]);
    const path = pick([
      `http://127.0.0.1/set/${traversalPath()}`, `http://x/get/../../${MARK}`, "*", `//${MARK}`,
      `/set/${MARK}/../../${MARK}`, "", "?", "/?", "/get/k1#frag", "/get/%",
    ]);
    const bytes = method === "PUT" ? put(path || "/", "x") : request(method, path || "/x y");
    return { kind: "target", method, bytes };
  },
  // NUL, unicode and dots in keys, percent-encoded
  () => {
    const method = pick(["GET", "HEAD", "PUT", "DELETE"]);
    const path = pick(["/get/", "/set/"]) + pick(ODD_KEYS);
    return { kind: "odd-key", method, bytes: method === "PUT" ? put(path, "odd") : request(method, path) };
  },
  // raw NUL, control and non-ASCII bytes in the request line
  () => {
    const raw = pick(["\x00", "\x01", "\x7f", "\xff", "\xc3\xa9", "\xe2\x80\xae", "\t", "\x0b", " ", "\r", "\n"]);
    const bytes = Buffer.concat([
      Buffer.from("GET /get/a"), Buffer.from(raw, "latin1"), Buffer.from("b HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]);
    return { kind: "raw-byte", method: "GET", bytes };
  },
  // overlong request line
  () => ({ kind: "long-line", method: "GET", bytes: request("GET", `/get/${"a".repeat(randomInt(17_000, 70_000))}`) }),
  // overlong headers: one huge, or very many
  () => {
    const headers = Math.random() < 0.5
      ? [`X-Big: ${"h".repeat(randomInt(17_000, 70_000))}`]
      : Array.from({ length: randomInt(300, 3000) }, (_, i) => `X-H${i}: ${"v".repeat(randomInt(1, 40))}`);
    return { kind: "long-headers", method: "GET", bytes: request(pick(["GET", "PUT"]), "/get/k1", headers) };
  },
  // bogus Content-Length
  () => {
    const value = pick([
      "abc", "-1", "1.5", "", "0x10", "1e3", "+5", "5 5", "5,5", "99999999999999999999", "18446744073709551617",
      "\x005", "٣",
    ]);
    const bytes = request("PUT", "/set/k2", [`Content-Length: ${value}`], "hello");
    return { kind: "content-length", method: "PUT", bytes, needsEnd: true };
  },
  // conflicting Content-Length
  () => {
    const [a, b] = pick([["3", "5"], ["5", "5"], ["0", "5"], ["5", "50"]]);
    const bytes = request("PUT", "/set/k2", [`Content-Length: ${a}`, `Content-Length: ${b}`], "hello");
    return { kind: "cl-conflict", method: "PUT", bytes, needsEnd: true };
  },
  // Transfer-Encoding with Content-Length, and odd transfer codings
  () => {
    const te = pick([
      "chunked", "chunked, chunked", "gzip", "gzip, chunked", "chunked, gzip", "identity", "CHUNKED", " chunked",
      "chunked\x0b", "xchunked",
    ]);
    const headers = [`Transfer-Encoding: ${te}`, ...(Math.random() < 0.5 ? ["Content-Length: 5"] : [])];
    const bytes = request("PUT", pick(["/set/k3", "/get/k3", "/keys"]), headers, "5\r\nhello\r\n0\r\n\r\n");
    return { kind: "transfer-encoding", method: "PUT", bytes, needsEnd: true };
  },
  // broken chunked framing
  () => {
    const body = pick([
      "zz\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n", "-1\r\nx\r\n0\r\n\r\n", "ffffffffffffffffff\r\nx",
      "5;\x00\r\nhello\r\n0\r\n\r\n", "3\r\nhello\r\n0\r\n\r\n", "0\r\nX: y\r\nbad trailer\r\n\r\n",
    ]);
    const bytes = request("PUT", "/set/k4", ["Transfer-Encoding: chunked"], body);
    return { kind: "chunked", method: "PUT", bytes, needsEnd: true };
  },
  // truncated bodies: fewer bytes than announced, then the client stops sending
  () => {
    const declared = randomInt(10, 100_000);
    const chunked = Math.random() < 0.3;
    const sent = "t".repeat(randomInt(0, Math.min(declared - 1, 5000)));
    const path = `/set/trunc-${randomInt(0, 20)}`;
    const bytes = chunked
      ? request("PUT", path, ["Transfer-Encoding: chunked"], `${declared.toString(16)}\r\n${sent}`)
      : request("PUT", path, [`Content-Length: ${declared}`], sent);
    return { kind: "truncated", method: "PUT", bytes, needsEnd: true };
  },
  // request cut short before the headers end
  () => {
    const full = request("PUT", "/set/k5", ["Content-Length: 5", "X-A: b"], "hello");
    const bytes = full.subarray(0, randomInt(1, full.length - 8));
    return { kind: "cut-headers", method: "PUT", bytes, needsEnd: true };
  },
  // garbage bytes
  () => ({ kind: "garbage", method: "GET", bytes: randomBytes(randomInt(1, 4000)), needsEnd: true }),
  // blank lines before a request line are skipped (RFC 9112 §2.2): with nothing after them, nothing was asked
  () => {
    const bytes = Buffer.from("\r\n".repeat(randomInt(1, 4)));
    return { kind: "blank-lines", method: "GET", bytes, needsEnd: true, silentOk: true };
  },
  () => ({
    kind: "junk-text",
    method: "GET",
    bytes: Buffer.from(pick([
      "GET\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "GET / HTTP/1.1x\r\nHost: x\r\n\r\n", "GET / FOO/1.1\r\n\r\n",
      "GET  /  HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
      "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "GET / HTTP/1.1\nHost: x\n\n",
    ])),
    needsEnd: true,
  }),
  // odd headers: bad names, folding, Expect, Host trouble, Connection games
  () => {
    const headers = pick([
      ["Bad Header: x"], ["X-A : b"], [":x"], ["X-A: b\r\n folded"], ["X-\x00: b"], ["X-A: \x00"], ["X-A: \x7f"],
      ["Expect: 100-continue", "Content-Length: 4"], ["Expect: 100-continue, fun"], ["Expect: nope"],
      ["Host: a", "Host: b"], ["Connection: close"], ["Connection: upgrade", "Upgrade: h2c"],
      ["Connection: keep-alive, close"],
      ["Content-Type: \xff\xfe"], ["If-None-Match: \"x\", *, W/\"y\""], ["X-Many: " + ",".repeat(5000)],
    ]);
    const method = pick(["GET", "PUT", "DELETE"]);
    const body = headers.some((h) => h.startsWith("Content-Length")) ? "body" : "";
    const bytes = request(method, pick(["/set/k6", "/get/k6", "/keys", "/status"]), headers, body);
    return { kind: "headers", method, bytes, needsEnd: true };
  },
  // a missing Host, and old HTTP versions
  () => {
    const method = pick(["GET", "PUT"]);
    const version = pick(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9"]);
    const [length, body] = method === "PUT" ? ["Content-Length: 2\r\n", "ok"] : ["", ""];
    const head = `${method} ${pick(["/status", "/get/k1", "/set/k7"])} ${version}\r\n${length}\r\n${body}`;
    return { kind: "no-host", method, bytes: Buffer.from(head) };
  },
  // CONNECT, which node:http hands to a different event
  () => {
    const bytes = request("CONNECT", pick(["127.0.0.1:22", "example.com:443", "/set/k1", `../${MARK}`]));
    return { kind: "connect", method: "CONNECT", bytes, needsEnd: true };
  },
  // nothing at all
  () => ({ kind: "empty", method: "GET", bytes: Buffer.alloc(0), needsEnd: true, silentOk: true }),
  // well-formed requests in between, so kept-alive connections carry on after refusals
  () => {
    const key = `ok-${randomInt(0, 30)}`;
    return pick([
      { kind: "valid", method: "PUT", bytes: put(`/set/${key}`, `value of ${key}`) },
      { kind: "valid", method: "GET", bytes: request("GET", `/get/${key}`) },
      { kind: "valid", method: "GET", bytes: request("GET", "/status") },
    ]);
  },
];

/** What the run saw. */
interface Tally {
  requests: number;
  answered: number;
  silent: number;
  byStatus: Map<number, number>;
  problems: string[];
}

function describeCase(c: Case): string {
  return `${c.kind}: ${JSON.stringify(c.bytes.subarray(0, 120).toString("latin1"))}`;
}

function checkResponse(c: Case, r: RawResponse, tally: Tally): void {
  tally.byStatus.set(r.status, (tally.byStatus.get(r.status) ?? 0) + 1);
  if (r.status >= 500) tally.problems.push(`${r.status} for ${describeCase(c)}: ${r.body}`);
  if (r.status >= 400 || r.status === 307) {
    if (c.method === "HEAD" && r.body.length === 0) return;
    const text = r.body.toString("utf8");
    if (!isOneLine(text)) {
      const body = JSON.stringify(text.slice(0, 200));
      tally.problems.push(`${r.status} without a one-line body for ${describeCase(c)}: ${body}`);
    }
  }
}

/** Sends `count` generated requests to `server`, 16 at a time, mixing fresh and kept-alive connections. */
async function barrage(server: Mehdb, count: number): Promise<Tally> {
  const tally: Tally = { requests: 0, answered: 0, silent: 0, byStatus: new Map(), problems: [] };
  const cases = Array.from({ length: count }, () => pick(GENERATORS)());
  const connections: (RawConnection | null)[] = Array.from({ length: 16 }, () => null);
  await pool(cases, 16, async (c, worker) => {
    tally.requests++;
    if (!c.needsEnd && Math.random() < 0.6) {
      // On a kept-alive connection: one response, then the next request on it (or a new one if it closed).
      let connection = connections[worker];
      if (!connection || connection.closed) {
        connection = connections[worker] = await RawConnection.open(server.port);
      }
      const { response, error } = await connection.send(c.bytes, c.method, 10_000);
      if (response) {
        tally.answered++;
        checkResponse(c, response, tally);
        if (response.headers.connection?.toLowerCase() === "close") connection.close();
      } else {
        tally.problems.push(`no answer on a kept-alive connection (${error}) for ${describeCase(c)}`);
      }
      return;
    }
    const exchange = await rawExchange(server.port, [c.bytes], { methods: [c.method], timeoutMs: 10_000 });
    const last = exchange.responses.at(-1);
    if (last === undefined) {
      if (c.silentOk && exchange.rest.length === 0 && !exchange.timedOut) {
        tally.silent++;
        return;
      }
      const why = exchange.timedOut ? "timed out" : exchange.error ?? "closed";
      tally.problems.push(`no answer (${why}; ${exchange.rest.length} stray bytes) for ${describeCase(c)}`);
      return;
    }
    tally.answered++;
    for (const response of exchange.responses) checkResponse(c, response, tally);
    if (c.method === "HEAD" && last.status === 400 && exchange.rest.length === Number(last.headers["content-length"])) {
      // A request too malformed to parse gets its answer with a body: the server could not know it was a HEAD.
      checkResponse({ ...c, method: "GET" }, { ...last, body: exchange.rest }, tally);
      tally.byStatus.set(400, (tally.byStatus.get(400) ?? 1) - 1); // counted once above already
      return;
    }
    if (exchange.rest.length > 0) {
      const stray = JSON.stringify(exchange.rest.subarray(0, 100).toString("latin1"));
      tally.problems.push(`stray bytes after the answer for ${describeCase(c)}: ${stray}`);
    }
  });
  for (const connection of connections) connection?.close();
  return tally;
}

/** Every path under `dir` (recursively), except under the directories in `skip`. */
async function tree(dir: string, skip: string[]): Promise<string[]> {
  const found: string[] = [];
  for (const name of await readdir(dir)) {
    const path = join(dir, name);
    found.push(path);
    if (skip.includes(path)) continue;
    if ((await lstat(path)).isDirectory()) found.push(...(await tree(path, skip)));
  }
  return found;
}

describe("malformed requests against a leader and a follower", () => {
  test(`${2 * PER_SERVER} generated requests: no 5xx, every rejection one line, ` +
    "nothing written outside the data directory", async () => {
    // The data directories sit four levels deep in a sandbox, so a `../` that got through would land in it.
    const sandbox = await tempDir("mehdb-bad-input-");
    const deep = join(sandbox, "a", "b", "c");
    await mkdir(deep, { recursive: true });
    const leaderDir = join(deep, "leader-data");
    const followerDir = join(deep, "follower-data");
    const leader = await startMehdb({ host: "mehdb-0", dataDir: leaderDir });
    const follower = await startFollower(leader.url, {
      dataDir: followerDir,
      env: { MEHDB_SYNC_INTERVAL_MS: "200" },
      waitReady: true,
    });
    const before = await tree(sandbox, [leaderDir, followerDir]);
    const outside = [ROOT, dirname(sandbox), "/", "/etc"];
    const outsideBefore = await Promise.all(outside.map(async (dir) => ({ dir, names: await readdir(dir) })));

    const tallies: [string, Tally][] = [];
    for (const server of [leader, follower]) {
      const name = server === leader ? "leader" : "follower";
      tallies.push([name, await barrage(server, PER_SERVER)]);
      assert.equal(server.child.exitCode, null, `${name} exited:\n${server.output().slice(-2000)}`);
      assert.equal((await http(`${server.url}/status`)).status, 200, `${name} still serves`);
    }

    for (const [name, tally] of tallies) {
      const statuses = [...tally.byStatus].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s}×${n}`).join(" ");
      console.log(`${name}: ${tally.requests} requests, ${tally.answered} answered, ` +
        `${tally.silent} empty connections, statuses ${statuses}, ${tally.problems.length} problems`);
    }
    const problems = tallies.flatMap(([name, tally]) => tally.problems.map((p) => `${name}: ${p}`));
    assert.deepEqual(problems.slice(0, 20), [], `${problems.length} problems`);
    const fiveXX = tallies
      .flatMap(([, tally]) => [...tally.byStatus])
      .reduce((sum, [status, count]) => sum + (status >= 500 ? count : 0), 0);
    assert.equal(fiveXX, 0);

    // Nothing new anywhere outside the data directories, and nothing but keys inside them.
    assert.deepEqual(await tree(sandbox, [leaderDir, followerDir]), before);
    for (const { dir, names } of outsideBefore) {
      const added = (await readdir(dir)).filter((name) => !names.includes(name));
      assert.ok(!added.some((name) => name.includes(MARK)), `a traversal created ${added} in ${dir}`);
    }
    for (const dir of [leaderDir, followerDir]) {
      const names = await readdir(dir);
      assert.deepEqual(names.filter((name) => !isValidKey(name) || name.includes(MARK)), [], `odd names in ${dir}`);
      assert.ok(!names.some((name) => name.startsWith("trunc-")), "a truncated body was stored");
    }
    const listed = await listKeys(leader.url);
    assert.ok(listed.every(isValidKey));
  });
});

describe("slow clients", () => {
  test("300 connections dripping their headers do not delay a normal request past 1 s", async () => {
    const leader = await startMehdb({ host: "mehdb-0" });
    const follower = await startMehdb({ host: "mehdb-1", leaderUrl: leader.url, waitReady: true });
    for (const server of [leader, follower]) {
      const drips: Socket[] = [];
      for (let i = 0; i < 300; i++) {
        const socket = connect(server.port, "127.0.0.1");
        socket.on("error", () => {});
        socket.write(`GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-${i}: `);
        drips.push(socket);
      }
      let dripping = true;
      const dripper = (async () => {
        for (let n = 0; dripping && n < 100; n++) {
          for (const socket of drips) socket.write(`${n % 10}`);
          await sleep(100);
        }
      })();
      try {
        await sleep(500);
        for (let i = 0; i < 5; i++) {
          // A liveness bound stated by the issue, not a speed measurement: the normal request must simply get
          // through while the slow ones hold their connections; 1 s is far above its usual few milliseconds.
          const started = performance.now();
          const res = await http(`${server.url}/status`, { timeoutMs: 5_000 });
          const elapsed = performance.now() - started;
          assert.equal(res.status, 200);
          assert.ok(elapsed < 1000, `a normal request took ${elapsed.toFixed(0)} ms among 300 slow clients`);
          await sleep(100);
        }
        const open = drips.filter((socket) => !socket.destroyed).length;
        assert.ok(open > 250, "the slow connections were still open during the check");
      } finally {
        dripping = false;
        await dripper;
        for (const socket of drips) socket.destroy();
      }
      assert.equal(server.child.exitCode, null);
    }
  });

  test("clients that keep their side open after a refusal do not pin the server's sockets", async () => {
    const leader = await startMehdb({ host: "mehdb-0" });
    const before = await openFiles(leader.pid);
    const refusals = [
      "garbage\r\n\r\n",
      "CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n",
      `GET / HTTP/1.1\r\nX-A: ${"a".repeat(20_000)}\r\n\r\n`,
    ];
    const held: Socket[] = [];
    try {
      // 60 clients, each sending one of the refusals in turn.
      const refused = (refusal: string) => new Promise<void>((resolve, reject) => {
        // allowHalfOpen: this client never closes its side, even once the server has answered and closed its own.
        const socket = connect({ port: leader.port, host: "127.0.0.1", allowHalfOpen: true });
        held.push(socket);
        let answer = "";
        socket.on("data", (chunk: Buffer) => (answer += chunk.toString("latin1")));
        socket.on("error", reject);
        socket.on("end", () => {
          if (/^HTTP\/1\.1 4\d\d /.test(answer)) resolve();
          else reject(new Error(`no 4xx: ${answer}`));
        });
        socket.write(refusal);
      });
      await Promise.all(Array.from({ length: 20 }, () => refusals).flat().map(refused));
      // The server lets go of them after its keep-alive timeout (5 s) instead of holding a descriptor each forever.
      await waitFor(async () => (await openFiles(leader.pid)) <= before + 2,
        "the server to release the refused connections", 15_000);
    } finally {
      for (const socket of held) socket.destroy();
    }
    assert.equal((await http(`${leader.url}/status`)).status, 200);
  });
});
