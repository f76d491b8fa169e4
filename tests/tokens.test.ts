/**
 * Access tokens (src/README.md, "Access tokens"):
 * the pure verdict of src/api/tokens.ts, then every rule end to end with real
 * leader and follower processes on loopback, curl as users run it, token
 * rotation by atomic rename (as a Kubernetes Secret volume does it), bad
 * token files at start, and no token in any log line or answer.
 */
import assert from "node:assert/strict";
import { chmod, mkdir, readdir, rename, symlink, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import {
  authorizationOf,
  credentialsStart,
  judgeAuthorization,
  Secret,
  tokenProblem,
  type Secrets,
} from "../src/api/tokens.ts";
import { accessOf } from "../src/api/server.ts";
import { missingTool, run } from "./helpers/commands.ts";
import { assertOneLine, http, type Answer, type HttpOptions } from "./helpers/http.ts";
import { runMehdb, startMehdb, stopAll, tempDir, type Mehdb, type StartOptions } from "./helpers/mehdb.ts";
import { rawRequest } from "./helpers/raw.ts";
import { waitFor } from "./helpers/wait.ts";

const WRITE = "w-7hQz3KpL9xVb2Nc5Rt8Yd1Fg4Hj6Mn0S";
const READ = "r-Jk2Lp4Qs6Tv8Xz0Bd3Fh5Gm7Nq9Rw1Y";
const WRITE_2 = "w2-Pq8Ws4Ed2Rf6Tg0Yh3Uj5Ik7Ol9Az1X";
const TOKENS = [WRITE, READ, WRITE_2];
const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });

/** Every process started here and every answer read, searched for tokens at the end. */
const started: Mehdb[] = [];
const answers: string[] = [];
after(stopAll);

async function call(url: string, options: HttpOptions = {}): Promise<Answer> {
  const answer = await http(url, options);
  answers.push(JSON.stringify(answer.headers) + answer.text);
  return answer;
}

/** `PUT BASE/set/KEY` through {@link call}, with `token` as a bearer token when one is given. */
function putAs(base: string, key: string, body: string, token?: string): Promise<Answer> {
  return call(`${base}/set/${key}`, { method: "PUT", body, headers: token === undefined ? {} : bearer(token) });
}

/** Starts mehdb (as `startMehdb`) and keeps it for the last test, which searches every log for tokens. */
async function start(options: StartOptions): Promise<Mehdb> {
  const mehdb = await startMehdb(options);
  started.push(mehdb);
  return mehdb;
}

/** A directory holding `write` and `read` token files. */
async function tokenDir(tokens: { write?: string; read?: string }): Promise<string> {
  const dir = await tempDir("mehdb-tokens-");
  if (tokens.write !== undefined) await writeFile(join(dir, "write"), `${tokens.write}\n`);
  if (tokens.read !== undefined) await writeFile(join(dir, "read"), `  ${tokens.read}\n\n`);
  return dir;
}

/** The environment that names the token files of `dir` (by default both). */
function tokenEnv(
  dir: string,
  which: { write?: boolean; read?: boolean } = { write: true, read: true },
): Record<string, string> {
  return {
    ...(which.write ? { MEHDB_WRITE_TOKEN_FILE: join(dir, "write") } : {}),
    ...(which.read ? { MEHDB_READ_TOKEN_FILE: join(dir, "read") } : {}),
  };
}

/** A 401 as the contract wants it: one line, the challenge, no value stored. */
function assert401(answer: Answer, what: string, hint?: RegExp): void {
  assert.equal(answer.status, 401, `${what}: ${answer.status} ${answer.text}`);
  assert.equal(answer.headers["www-authenticate"], `Bearer realm="mehdb"`, what);
  assert.match(answer.text, /^unauthorized: [^\n]+\n$/, `${what}: one line`);
  if (hint) assert.match(answer.text, hint, what);
}

/** What a 401 says when no Authorization header came. */
const NO_HEADER_HINT = new RegExp(
  String.raw`no Authorization header \(curl -L drops it on the redirect to the leader ` +
    String.raw`unless given --location-trusted\)`,
);

describe("the verdict (pure)", () => {
  const secrets: Secrets = { write: new Secret(WRITE), read: new Secret(READ) };

  test("routes: /set/ writes; /get/, /keys, /values read; /status, /metrics and the rest are open", () => {
    assert.equal(accessOf("/set/a"), "write");
    for (const path of ["/get/a", "/keys", "/values"]) assert.equal(accessOf(path), "read", path);
    for (const path of ["/status", "/metrics", "/", "/nothing", "/keys/", "/set", "/get"]) {
      assert.equal(accessOf(path), "open", path);
    }
  });

  test("writes need the write token; reads the read or the write token", () => {
    assert.equal(judgeAuthorization(`Bearer ${WRITE}`, "write", secrets), null);
    assert.match(judgeAuthorization(`Bearer ${READ}`, "write", secrets) ?? "", /not valid for writes/);
    assert.equal(judgeAuthorization(`Bearer ${READ}`, "read", secrets), null);
    assert.equal(judgeAuthorization(`Bearer ${WRITE}`, "read", secrets), null);
    assert.equal(judgeAuthorization(undefined, "open", secrets), null);
  });

  test("what is open depends on what is set: no read token, reads open; " +
    "only a read token, it guards writes too", () => {
    assert.equal(judgeAuthorization(undefined, "read", { write: secrets.write, read: null }), null);
    assert.equal(judgeAuthorization(undefined, "write", { write: null, read: null }), null);
    const readOnly: Secrets = { write: null, read: secrets.read };
    assert.match(judgeAuthorization(undefined, "write", readOnly) ?? "", /Bearer <read token>/);
    assert.equal(judgeAuthorization(`Bearer ${READ}`, "write", readOnly), null);
  });

  test("malformed headers are refused with one line that never echoes the token", () => {
    const cases: [string | string[] | undefined, RegExp][] = [
      [undefined, NO_HEADER_HINT],
      [WRITE, /not of the form "Bearer <token>"/],
      [`Basic ${Buffer.from(`u:${WRITE}`).toString("base64")}`, /not of the form/],
      ["Bearer", /not of the form/],
      ["Bearer ", /not of the form/],
      [`Bearer${WRITE}`, /not of the form/],
      [`Bearer ${WRITE}x`, /not valid/],
      [`Bearer ${WRITE.slice(0, -1)}`, /not valid/],
      [`Bearer x${WRITE.slice(1)}`, /not valid/],
      [`Bearer ${WRITE} `, /not valid/],
      [`Bearer ${WRITE} ${WRITE}`, /not valid/],
      [`Bearer ${"x".repeat(100_000)}`, /not valid/],
      [`Bearer ${WRITE.replace("w", "\u0177")}`, /not valid/], // the same low byte as "w"
      [`Bearer ${WRITE.replace("w", "\u{1d5d0}")}`, /not valid/], // one character more in UTF-16
      [[`Bearer ${WRITE}`, `Bearer ${WRITE}`], /2 Authorization headers/],
      [[`Bearer ${READ}`, "Basic x", "x"], /3 Authorization headers/],
    ];
    for (const [header, reason] of cases) {
      const verdict = judgeAuthorization(header, "write", secrets);
      assert.ok(verdict !== null, `${JSON.stringify(header)?.slice(0, 80)} is refused`);
      assert.match(verdict, reason);
      assert.match(verdict, /^unauthorized: [^\n]+$/);
      for (const token of TOKENS) assert.ok(!verdict.includes(token));
    }
  });

  test("the scheme is case-insensitive and may be followed by several spaces", () => {
    for (const header of [`bearer ${WRITE}`, `BEARER ${WRITE}`, `Bearer   ${WRITE}`, `Bearer\t${WRITE}`]) {
      assert.equal(judgeAuthorization(header, "write", secrets), null, header);
    }
    assert.equal(credentialsStart("Bearer abc"), 7);
    assert.equal(credentialsStart("Bearerx abc"), -1);
    assert.equal(credentialsStart("Beare abc"), -1);
  });

  test("authorizationOf sees every Authorization header, whatever its case", () => {
    const req = (raw: string[]) => ({ headers: { authorization: raw[1] }, rawHeaders: ["Host", "x", ...raw] });
    assert.equal(authorizationOf({ headers: {}, rawHeaders: ["Host", "x"] }), undefined);
    assert.equal(authorizationOf(req(["Authorization", "a"])), "a");
    assert.deepEqual(authorizationOf(req(["authorization", "a", "AUTHORIZATION", "b"])), ["a", "b"]);
  });

  test("token files: empty, too long or with characters a header cannot carry are refused", () => {
    assert.equal(tokenProblem(WRITE), null);
    assert.match(tokenProblem("") ?? "", /empty/);
    assert.match(tokenProblem("a b") ?? "", /visible ASCII/);
    assert.match(tokenProblem("t\u00e9") ?? "", /visible ASCII/);
    assert.match(tokenProblem("x".repeat(5000)) ?? "", /more than/);
  });
});

describe("a leader with a write token only", () => {
  let leader: Mehdb;
  test("starts, and says what is protected", async () => {
    leader = await start({ env: tokenEnv(await tokenDir({ write: WRITE }), { write: true }) });
    assert.match(leader.output(), /event=access writes=write-token reads=open/);
  });

  test("PUT and DELETE need the write token: 401, one line, WWW-Authenticate; with it, 200", async () => {
    assert401(await putAs(leader.url, "a", "nope"), "PUT without a token", NO_HEADER_HINT);
    assert401(await putAs(leader.url, "a", "nope", READ), "PUT with another token", /not valid for writes/);
    assert.equal((await call(`${leader.url}/get/a`)).status, 404, "nothing was stored");
    assert.equal((await putAs(leader.url, "a", "yes", WRITE)).status, 200);
    assert401(await call(`${leader.url}/set/a`, { method: "DELETE" }), "DELETE without a token", NO_HEADER_HINT);
    assert.equal((await call(`${leader.url}/get/a`)).text, "yes");
  });

  test("reads stay open (no read token set); /status and /metrics too", async () => {
    assert.equal((await call(`${leader.url}/get/a`)).status, 200);
    assert.equal((await call(`${leader.url}/keys`)).text, `["a"]`);
    assert.equal((await call(`${leader.url}/status?level=full`)).status, 200);
    const metrics = await call(`${leader.url}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /mehdb_http_requests_total\{route="auth",status="401"\} 3/);
    assert.equal((await call(`${leader.url}/set/a`, { method: "DELETE", headers: bearer(WRITE) })).status, 200);
  });
});

describe("a leader with write and read tokens", () => {
  let leader: Mehdb;
  test("starts", async () => {
    leader = await start({ env: tokenEnv(await tokenDir({ write: WRITE, read: READ })) });
    assert.match(leader.output(), /event=access writes=write-token reads=read-or-write-token/);
    assert.equal((await putAs(leader.url, "k", "value", WRITE)).status, 200);
  });

  test("GET/HEAD /get, /keys and /values need the read or the write token", async () => {
    for (const path of ["/get/k", "/keys", "/keys?since=", "/values?keys=k"]) {
      assert401(await call(`${leader.url}${path}`), `GET ${path} without a token`, NO_HEADER_HINT);
      const wrong = await call(`${leader.url}${path}`, { headers: bearer(WRITE_2) });
      assert401(wrong, `GET ${path} with a wrong token`, /not valid for reads/);
      const read = await call(`${leader.url}${path}`, { headers: bearer(READ) });
      assert.equal(read.status, 200, `GET ${path} with the read token`);
      const write = await call(`${leader.url}${path}`, { headers: bearer(WRITE) });
      assert.equal(write.status, 200, `GET ${path} with the write token`);
    }
    const head = await call(`${leader.url}/get/k`, { method: "HEAD" });
    assert.equal(head.status, 401);
    assert.equal(head.headers["www-authenticate"], `Bearer realm="mehdb"`);
    assert.equal((await call(`${leader.url}/get/k`, { headers: bearer(READ) })).text, "value");
  });

  test("the read token does not write", async () => {
    assert401(await putAs(leader.url, "k", "x", READ), "PUT with the read token", /not valid for writes/);
    assert.equal((await call(`${leader.url}/get/k`, { headers: bearer(READ) })).text, "value");
  });

  test("/status (both levels) and /metrics stay open for probes and scrapers; " +
    "unknown paths are a plain 404", async () => {
    assert.equal((await call(`${leader.url}/status`)).text, "leader\n");
    assert.equal((await call(`${leader.url}/status?level=full`)).status, 200);
    assert.equal((await call(`${leader.url}/metrics`)).status, 200);
    assert.equal((await call(`${leader.url}/nothing`)).status, 404);
  });

  test("malformed Authorization headers over a raw socket: 401 (431 when too large), never 5xx, " +
    "and the server keeps serving", async () => {
    const get = (headers: string) => `GET /keys HTTP/1.1\r\nHost: x\r\n${headers}Connection: close\r\n\r\n`;
    const cases: [string, number][] = [
      [`Authorization: ${READ}\r\n`, 401],
      [`Authorization: Basic cjpy\r\n`, 401],
      [`Authorization: Bearer ${READ}x\r\n`, 401],
      [`Authorization: Bearer ${READ.slice(0, -1)}\r\n`, 401],
      [`Authorization: Bearer ${READ}\r\nAuthorization: Bearer ${READ}\r\n`, 401],
      [`Authorization: Bearer ${READ}\r\nauthorization: Bearer nope\r\n`, 401],
      [`Authorization: Bearer nope\r\nAuthorization: Bearer ${READ}\r\n`, 401],
      [`Authorization:\r\n`, 401],
      [`Authorization: Bearer ${"A".repeat(12_000)}\r\n`, 401],
      [`Authorization: Bearer ${"A".repeat(20_000)}\r\n`, 431],
    ];
    for (const [headers, status] of cases) {
      const answer = await rawRequest(leader.port, get(headers));
      answers.push(answer.raw);
      assert.equal(answer.status, status, `${headers.slice(0, 80)}: ${answer.raw.slice(0, 300)}`);
      assertOneLine(answer);
      if (status === 401) assert.equal(answer.headers["www-authenticate"], `Bearer realm="mehdb"`);
    }
    // Bytes outside ASCII in the header.
    const latin = await rawRequest(leader.port, Buffer.concat([
      Buffer.from("GET /keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "),
      Buffer.from(READ.replace("r", "\xf2"), "latin1"),
      Buffer.from("\r\nConnection: close\r\n\r\n"),
    ]));
    assert.equal(latin.status, 401);
    const ok = await rawRequest(leader.port, get(`Authorization: Bearer ${READ}\r\n`));
    assert.equal(ok.status, 200);
    assert.equal((await call(`${leader.url}/status`)).status, 200);
  });

  test("a large unauthenticated upload is refused without storing it, and the server keeps serving", async () => {
    const size = 8 * 1024 * 1024;
    // With Content-Length, with Expect: 100-continue, and chunked (no length).
    const uploads: Record<string, string>[] = [
      { "Content-Length": String(size) },
      { "Content-Length": String(size), Expect: "100-continue" },
      { "Transfer-Encoding": "chunked" },
    ];
    for (const headers of uploads) {
      const outcome = await upload(`${leader.url}/set/big`, headers, size);
      if (typeof outcome === "number") assert.equal(outcome, 401, JSON.stringify(headers));
      else assert.match(outcome, /ECONNRESET|EPIPE/,
        `${JSON.stringify(headers)}: the server may close a refused upload`);
      assert.equal((await call(`${leader.url}/get/big`, { headers: bearer(READ) })).status, 404, "nothing stored");
      assert.equal((await call(`${leader.url}/status?level=full`)).status, 200, "still serving");
    }
    const stray = (await readdir(leader.dataDir)).filter((name) => name !== "k" && !name.startsWith(".journal"));
    assert.deepEqual(stray.filter((name) => !name.startsWith(".")), [], "no new key files");
    assert.ok(!(await readdir(leader.dataDir)).some((name) => name.startsWith(".tmp")), "no temporary file left");
  });
});

/**
 * Sends a PUT of `size` bytes with `headers`; resolves with the status, or the error code when the server cut it
 * off.
 */
function upload(url: string, headers: Record<string, string>, size: number): Promise<number | string> {
  return new Promise((resolve) => {
    const req = request(url, { method: "PUT", headers, agent: false });
    let answered: number | undefined;
    req.on("response", (res) => {
      answered = res.statusCode;
      res.resume();
      res.on("end", () => resolve(answered ?? "no status"));
      res.on("error", () => resolve(answered ?? "no status"));
    });
    req.on("error", (error: NodeJS.ErrnoException) => resolve(answered ?? error.code ?? error.message));
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    const pump = () => {
      while (sent < size) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once("drain", pump);
      }
      req.end();
    };
    if (headers.Expect) req.on("continue", pump);
    else pump();
  });
}

describe("a follower and its leader, both with tokens", () => {
  let leader: Mehdb;
  let follower: Mehdb;
  let dir: string;

  test("the follower sends its read token to its leader, syncs and becomes ready", async () => {
    dir = await tokenDir({ write: WRITE, read: READ });
    leader = await start({ env: tokenEnv(dir) });
    assert.equal((await putAs(leader.url, "k", "v", WRITE)).status, 200);
    follower = await start({
      host: "mehdb-1",
      leaderUrl: leader.url,
      env: { ...tokenEnv(dir), MEHDB_SYNC_INTERVAL_MS: "100" },
      waitReady: true,
    });
    assert.equal((await call(`${follower.url}/get/k`, { headers: bearer(READ) })).text, "v");
  });

  test("the follower checks the token before it redirects: none or a bad one gets its 401, " +
    "a good one the 307", async () => {
    const none = await putAs(follower.url, "k", "x");
    assert401(none, "PUT to the follower without a token", NO_HEADER_HINT);
    assert.equal(none.headers.location, undefined, "no redirect");
    const bad = await putAs(follower.url, "k", "x", READ);
    assert401(bad, "PUT to the follower with the read token", /not valid for writes/);
    assert.equal(bad.headers.location, undefined);
    const good = await putAs(follower.url, "k", "x", WRITE);
    assert.equal(good.status, 307);
    assert.equal(good.headers.location, `${leader.url}/set/k`);
    assert401(await call(`${follower.url}/get/k`), "GET from the follower without a token", NO_HEADER_HINT);
  });

  test("curl -L with a token but without --location-trusted ends in the leader's 401; " +
    "with it, the write goes through", async (t) => {
    const noCurl = missingTool("curl");
    if (noCurl !== undefined) return t.skip(`${noCurl}; the README's curl -L lines cannot be checked here`);
    // curl sends a custom Authorization header only to the host (and port) it was given.
    const dropped = await run("curl", [
      "-sS", "-L", "-XPUT", "--data-binary", "through", "-H", `Authorization: Bearer ${WRITE}`,
      "-w", "%{http_code} %{url_effective}\\n", `${follower.url}/set/curl`,
    ], { timeoutMs: 20_000 });
    answers.push(dropped.stdout + dropped.stderr);
    assert.equal(dropped.code, 0, dropped.stderr);
    assert.match(dropped.stdout, NO_HEADER_HINT, "the leader says why");
    assert.match(dropped.stdout, new RegExp(`\\n401 ${leader.url}/set/curl\\n$`), "the 401 came from the leader");
    assert.equal((await call(`${leader.url}/get/curl`, { headers: bearer(READ) })).status, 404);

    const trusted = await run("curl", [
      "-sS", "--location-trusted", "-XPUT", "--data-binary", "through", "-H", `Authorization: Bearer ${WRITE}`,
      "-w", "%{http_code}\\n", `${follower.url}/set/curl`,
    ], { timeoutMs: 20_000 });
    answers.push(trusted.stdout + trusted.stderr);
    assert.equal(trusted.stdout, "WRITE completed\n200\n", trusted.stderr);
    assert.equal((await call(`${leader.url}/get/curl`, { headers: bearer(READ) })).text, "through");
    await waitFor(async () => (await call(`${follower.url}/get/curl`, { headers: bearer(READ) })).text === "through",
      "the follower to copy it");
  });
});

describe("followers without the leader's read token", () => {
  /** Waits until the follower's `/status?level=full` line names a 401, and returns that answer. */
  async function readinessWith401(follower: Mehdb): Promise<Answer> {
    let last: Answer | undefined;
    await waitFor(async () => {
      last = await call(`${follower.url}/status?level=full`);
      return /401/.test(last.text);
    }, "the follower's readiness line to give the 401");
    assert.ok(last);
    return last;
  }

  test("a follower with no read token stays not ready and says the leader wants one", async () => {
    const leader = await start({ env: tokenEnv(await tokenDir({ write: WRITE, read: READ })) });
    const follower = await start({ host: "mehdb-1", leaderUrl: leader.url, env: { MEHDB_SYNC_INTERVAL_MS: "100" } });
    const last = await readinessWith401(follower);
    assert.equal(last.status, 503);
    assert.match(last.text, /^not ready: .*the leader wants a token \(401\): give this follower MEHDB_READ_TOKEN_FILE/);
    assert.deepEqual(JSON.parse((await call(`${follower.url}/keys`)).text), [], "nothing copied");
  });

  test("a follower with a wrong read token stays not ready and says its token was refused", async () => {
    const leader = await start({ env: tokenEnv(await tokenDir({ write: WRITE, read: READ })) });
    const follower = await start({
      host: "mehdb-1",
      leaderUrl: leader.url,
      env: { ...tokenEnv(await tokenDir({ read: WRITE_2 }), { read: true }), MEHDB_SYNC_INTERVAL_MS: "100" },
    });
    const last = await readinessWith401(follower);
    assert.equal(last.status, 503);
    assert.match(last.text, /the leader refused this follower's token \(401\)/);
  });

  test("a follower with a read token syncs from a leader that protects only writes", async () => {
    const leader = await start({ env: tokenEnv(await tokenDir({ write: WRITE }), { write: true }) });
    await start({
      host: "mehdb-1",
      leaderUrl: leader.url,
      env: { ...tokenEnv(await tokenDir({ read: READ }), { read: true }), MEHDB_SYNC_INTERVAL_MS: "100" },
      waitReady: true,
    });
  });
});

describe("rotation without restart", () => {
  test("a Secret volume's ..data swap: the new tokens work within a poll, the old ones stop working", async () => {
    // The layout the kubelet makes: write -> ..data/write, ..data -> ..2026_v1 (a directory).
    const dir = await tempDir("mehdb-secret-");
    await mkdir(join(dir, "..v1"));
    await writeFile(join(dir, "..v1", "write"), WRITE);
    await writeFile(join(dir, "..v1", "read"), READ);
    await symlink("..v1", join(dir, "..data"));
    await symlink(join("..data", "write"), join(dir, "write"));
    await symlink(join("..data", "read"), join(dir, "read"));
    const leader = await start({ env: tokenEnv(dir) });
    assert.equal((await putAs(leader.url, "r", "1", WRITE)).status, 200);

    await mkdir(join(dir, "..v2"));
    await writeFile(join(dir, "..v2", "write"), `${WRITE_2}\n`);
    await writeFile(join(dir, "..v2", "read"), READ);
    await symlink("..v2", join(dir, "..data_tmp"));
    const swapped = performance.now();
    await rename(join(dir, "..data_tmp"), join(dir, "..data"));
    await waitFor(async () => (await putAs(leader.url, "r", "2", WRITE_2)).status === 200,
      "the new write token to work");
    console.log(`# the new token worked ${Math.round(performance.now() - swapped)} ms after the swap`);
    assert401(await putAs(leader.url, "r", "3", WRITE), "the old write token", /not valid/);
    assert.equal((await call(`${leader.url}/get/r`, { headers: bearer(READ) })).text, "2");
    assert.match(leader.output(), /event=token-changed variable=MEHDB_WRITE_TOKEN_FILE path=\S+\/write/);
    assert.doesNotMatch(leader.output(), /event=token-changed variable=MEHDB_READ_TOKEN_FILE/,
      "the read token did not change");
  });

  test("a plain file replaced by rename; " +
    "a file that disappears keeps the last good token and says so once", async () => {
    const dir = await tokenDir({ write: WRITE });
    const leader = await start({ env: { ...tokenEnv(dir, { write: true }) } });
    await writeFile(join(dir, "write.new"), WRITE_2);
    await rename(join(dir, "write.new"), join(dir, "write"));
    await waitFor(async () => (await putAs(leader.url, "p", "x", WRITE_2)).status === 200,
      "the new write token to work");
    assert.equal((await putAs(leader.url, "p", "x", WRITE)).status, 401);

    await rename(join(dir, "write"), join(dir, "write.gone"));
    await waitFor(() => /event=token-file-problem/.test(leader.output()), "the missing file to be noticed");
    assert.equal((await putAs(leader.url, "p", "y", WRITE_2)).status, 200, "the last good token stays");
    await rename(join(dir, "write.gone"), join(dir, "write"));
    await waitFor(() => /event=token-file-ok/.test(leader.output()), "the file to be back");
    assert.equal(leader.output().match(/event=token-file-problem/g)?.length, 1, "logged once");
  });
});

describe("bad token files at start", () => {
  /** Runs mehdb to its exit; resolves with the code and what it printed on stderr. */
  async function runToExit(env: Record<string, string>): Promise<{ code: number | null; output: string }> {
    const dataDir = await tempDir();
    const result = await runMehdb({
      MEHDB_HOST: "mehdb-0",
      MEHDB_PORT: "0",
      MEHDB_LISTEN: "127.0.0.1",
      MEHDB_DATADIR: dataDir,
      ...env,
    });
    answers.push(result.stdout + result.stderr);
    return { code: result.code, output: result.stderr };
  }

  test("missing, a directory, unreadable, empty or blank: " +
    "exit 2 with one line naming the variable and the path", async (t) => {
    const dir = await tempDir("mehdb-bad-tokens-");
    await writeFile(join(dir, "empty"), "");
    await writeFile(join(dir, "blank"), " \n\t\n");
    await writeFile(join(dir, "spaced"), "two words");
    await writeFile(join(dir, "good"), WRITE);
    await mkdir(join(dir, "a-directory"));
    await symlink(join(dir, "nowhere"), join(dir, "dangling"));
    const cases: [string, string, RegExp][] = [
      ["MEHDB_WRITE_TOKEN_FILE", join(dir, "missing"), /no such file/],
      ["MEHDB_READ_TOKEN_FILE", join(dir, "missing"), /no such file/],
      ["MEHDB_WRITE_TOKEN_FILE", join(dir, "dangling"), /no such file/],
      ["MEHDB_WRITE_TOKEN_FILE", join(dir, "a-directory"), /is a directory/],
      ["MEHDB_READ_TOKEN_FILE", join(dir, "a-directory"), /is a directory/],
      ["MEHDB_WRITE_TOKEN_FILE", join(dir, "empty"), /is empty/],
      ["MEHDB_READ_TOKEN_FILE", join(dir, "blank"), /is empty/],
      ["MEHDB_READ_TOKEN_FILE", join(dir, "spaced"), /visible ASCII/],
    ];
    if (process.getuid?.() !== 0) {
      await writeFile(join(dir, "secret"), WRITE);
      await chmod(join(dir, "secret"), 0o000);
      cases.push(["MEHDB_WRITE_TOKEN_FILE", join(dir, "secret"), /permission denied/]);
    } else {
      t.diagnostic("running as root, which reads any file: " +
        "a directory stands in for an unreadable file (mode 000 is not checked)");
    }
    for (const [variable, path, reason] of cases) {
      // The other variable names a good file: the bad one alone stops the start.
      const other = variable === "MEHDB_WRITE_TOKEN_FILE" ? "MEHDB_READ_TOKEN_FILE" : "MEHDB_WRITE_TOKEN_FILE";
      const { code, output } = await runToExit({ [variable]: path, [other]: join(dir, "good") });
      assert.equal(code, 2, `${variable}=${path}: ${output}`);
      assert.equal(output.split("\n").filter(Boolean).length, 1, `one line: ${output}`);
      assert.ok(output.includes(`${variable}=${path}`), `names the variable and the path: ${output}`);
      assert.match(output, reason);
    }
  });
});

test("no token appears in any log line or answer of this suite", () => {
  assert.ok(started.length >= 10 && answers.length > 50, "the suite ran");
  for (const mehdb of started) {
    for (const token of TOKENS) assert.ok(!mehdb.output().includes(token), `${mehdb.url}'s log holds a token`);
  }
  for (const answer of answers) {
    for (const token of TOKENS) {
      // curl's own output (-w) may echo the effective URL, never the header; answers never echo a token.
      assert.ok(!answer.includes(token), `an answer holds a token: ${answer.slice(0, 200)}`);
    }
  }
});
