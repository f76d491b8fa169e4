/**
 * The leader's view of its followers (issue 14): followers name themselves
 * with `Mehdb-Follower` on every request; the leader shows, per follower, its
 * lag (changes since the cursor it last asked from) and its last poll, in
 * `/metrics`, `/status?level=full` and the page. Real processes on loopback;
 * one follower is paused with SIGSTOP to fall behind. The header is hostile
 * input: bad names are ignored and never echoed, at most 100 names are kept.
 */
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { Followers } from "../src/api/followers.ts";
import { followerHeaders, isHostName } from "../src/protocol.ts";
import { assertStatus, del, http, put } from "./helpers/http.ts";
import { startFollower, startMehdb, stopAll, tempDir } from "./helpers/mehdb.ts";
import { rawRequest } from "./helpers/raw.ts";
import { waitFor } from "./helpers/wait.ts";

after(stopAll);

/** One follower's figures as the leader's `/metrics` gives them. */
interface Figures {
  lag: number;
  lastPoll: number;
}

/** Every follower in the leader's `/metrics`: name → lag and seconds since its last poll. */
async function followerFigures(url: string): Promise<Map<string, Figures>> {
  const res = await http(`${url}/metrics`);
  assert.equal(res.status, 200);
  const figures = new Map<string, Figures>();
  const samples = res.text.matchAll(/^mehdb_follower_(lag_changes|last_poll_seconds)\{follower="([^"]*)"\} (\S+)$/gm);
  for (const [, metric, name = "", value] of samples) {
    const f = figures.get(name) ?? { lag: NaN, lastPoll: NaN };
    if (metric === "lag_changes") f.lag = Number(value);
    else f.lastPoll = Number(value);
    figures.set(name, f);
  }
  return figures;
}

/** One follower's figures among `figures`; fails the test when the leader does not list it. */
function figuresOf(figures: Map<string, Figures>, name: string): Figures {
  const found = figures.get(name);
  assert.ok(found, `the leader lists ${name}`);
  return found;
}

/** The regular expression of one follower in the leader's `/status?level=full` line (`name` as a pattern). */
const summaryOf = (name: string, lag: number) => `${name} \\(lag ${lag} changes, last poll [0-9.]+ s ago\\)`;

describe("Followers, on its own", () => {
  test("isHostName: RFC 1123 host names only", () => {
    const good = [
      "mehdb-1", "a", "1", "MEHDB-1", "mehdb-1.mehdb.default.svc.cluster.local", "a".repeat(63),
      `${"a".repeat(61)}.`.repeat(4) + "a",
    ];
    for (const name of good) {
      assert.ok(isHostName(name), name);
    }
    const bad = [
      "", "-a", "a-", "a..b", ".a", "a.", "a_b", "a b", "a".repeat(64), `${"a".repeat(62)}.`.repeat(4) + "ab", "a\nb",
      "a\"b", "é", "a,b",
    ];
    for (const name of bad) {
      assert.ok(!isHostName(name), JSON.stringify(name));
    }
    assert.deepEqual(followerHeaders("mehdb-1"), { "Mehdb-Follower": "mehdb-1" });
    assert.deepEqual(followerHeaders("mehdb-1\nevil: 1"), {},
      "an invalid host name is not sent (a newline would even make the request throw)");
    assert.deepEqual(followerHeaders(undefined), {});
  });

  test("records the cursor of /keys?since=, the time of /values and /get/; forgets after 10 minutes; " +
    "keeps the 100 seen last", () => {
    let now = 0;
    const asked: (string | null)[] = [];
    const lag = (cursor: string | null) => (asked.push(cursor), cursor === null ? 99 : Number(cursor.split("-")[1]));
    const followers = new Followers({ lag, now: () => now });
    followers.record("Mehdb-1", "/keys", new URLSearchParams("since=e-7"));
    now = 2_000;
    followers.record("mehdb-1", "/get/k", new URLSearchParams(""));
    followers.record("mehdb-2", "/values", new URLSearchParams("keys=a,b"));
    followers.record("mehdb-3", "/metrics", new URLSearchParams(""));
    followers.record("mehdb-3", "/status", new URLSearchParams("level=full"));
    followers.record(["mehdb-4", "mehdb-5"], "/keys", new URLSearchParams("since=e-1"));
    followers.record(undefined, "/keys", new URLSearchParams(""));
    now = 3_000;
    assert.deepEqual(followers.list(), [
      { name: "mehdb-1", lagChanges: 7, lastPollSeconds: 1 },
      { name: "mehdb-2", lagChanges: 99, lastPollSeconds: 1 },
    ]);
    assert.deepEqual(asked, ["e-7", null],
      "/get/ keeps the cursor of the last /keys; a follower never seen on /keys counts from the beginning");
    followers.record("mehdb-2", "/keys", new URLSearchParams(""));
    now = 2_000 + 600_000 + 1;
    assert.deepEqual(followers.list().map((f) => f.name), ["mehdb-2"],
      "mehdb-1, unseen for more than 10 minutes, is forgotten");
    for (let i = 0; i < 150; i++) {
      followers.record(`f-${String(i).padStart(3, "0")}`, "/keys", new URLSearchParams("since=e-1"));
    }
    const names = followers.list().map((f) => f.name);
    assert.equal(names.length, 100);
    const last100 = Array.from({ length: 100 }, (_, i) => `f-${String(i + 50).padStart(3, "0")}`);
    assert.deepEqual(names, last100, "the 100 seen last");
  });

  test("a cursor too long to be real is not kept: the follower counts from the beginning", () => {
    const asked: (string | null)[] = [];
    const followers = new Followers({ lag: (cursor) => (asked.push(cursor), 0), now: () => 0 });
    followers.record("mehdb-1", "/keys", new URLSearchParams(`since=${"1".repeat(10_000)}`));
    followers.record("mehdb-2", "/keys", new URLSearchParams(`since=abc-${"1".repeat(20)}`));
    followers.list();
    assert.deepEqual(asked, [null, `abc-${"1".repeat(20)}`]);
  });

  test("metrics and summary: one sample per follower; none but the help lines when there is none", () => {
    const followers = new Followers({ lag: () => 3, now: () => 0 });
    assert.doesNotMatch(followers.metrics(), /\{/);
    assert.match(followers.metrics(), /^# TYPE mehdb_follower_lag_changes gauge$/m);
    assert.equal(followers.summary(), "");
    followers.record("mehdb-1", "/keys", new URLSearchParams("since=x-1"));
    assert.match(followers.metrics(), /^mehdb_follower_lag_changes\{follower="mehdb-1"\} 3$/m);
    assert.match(followers.metrics(), /^mehdb_follower_last_poll_seconds\{follower="mehdb-1"\} 0$/m);
    assert.equal(followers.summary(), ", followers: mehdb-1 (lag 3 changes, last poll 0.0 s ago)");
  });
});

describe("a leader and two followers", () => {
  test("a paused follower's lag grows by every write and its last poll ages; the other stays at lag 0; " +
    "resumed, it catches up", async () => {
    const leader = await startMehdb({ waitReady: true });
    assertStatus(await put(leader.url, "before", "x"), 200);
    const [, paused] = await Promise.all([
      startFollower(leader.url, { host: "mehdb-1", waitReady: true }),
      startFollower(leader.url, { host: "mehdb-2", waitReady: true }),
    ]);
    await waitFor(async () => {
      const f = await followerFigures(leader.url);
      return f.get("mehdb-1")?.lag === 0 && f.get("mehdb-2")?.lag === 0;
    }, "both followers listed by the leader at lag 0");

    const WRITES = 30;
    paused.child.kill("SIGSTOP");
    let figures = new Map<string, Figures>();
    let aged = Infinity;
    try {
      for (let i = 0; i < WRITES; i++) assertStatus(await put(leader.url, `key-${i}`, `value ${i}`), 200);
      await del(leader.url, "before");
      // The running follower polls again and is back at 0; the paused one asked from before every write.
      await waitFor(async () => {
        figures = await followerFigures(leader.url);
        return figures.get("mehdb-1")?.lag === 0;
      }, "mehdb-1 at lag 0 after the writes");
      assert.equal(figures.get("mehdb-2")?.lag, WRITES + 1, "every write and the delete since mehdb-2 last asked");
      const firstAge = figuresOf(figures, "mehdb-2").lastPoll;
      await waitFor(async () => {
        figures = await followerFigures(leader.url);
        const [running, stopped] = [figuresOf(figures, "mehdb-1"), figuresOf(figures, "mehdb-2")];
        return stopped.lastPoll > firstAge + 1 && running.lastPoll < stopped.lastPoll;
      }, "mehdb-2's last poll to age past mehdb-1's");
      assert.equal(figures.get("mehdb-2")?.lag, WRITES + 1);
      assert.equal(figures.get("mehdb-1")?.lag, 0);
      aged = figuresOf(figures, "mehdb-2").lastPoll;

      const status = await http(`${leader.url}/status?level=full`);
      assert.equal(status.status, 200);
      assert.equal(parseInt(status.text, 10), WRITES, "the line still starts with the key count");
      const both = `${summaryOf("mehdb-1", 0)}, ${summaryOf("mehdb-2", 31)}`;
      assert.match(status.text, new RegExp(`^30 keys, followers: ${both}\\n$`));
      const page = await http(`${leader.url}/`);
      assert.match(page.text, /<td class="name">mehdb-2<\/td><td class="num">31<\/td>/);
    } finally {
      paused.child.kill("SIGCONT");
    }
    await waitFor(async () => {
      const f = (await followerFigures(leader.url)).get("mehdb-2");
      return f?.lag === 0 && f.lastPoll < aged;
    }, "mehdb-2 back at lag 0 once resumed");
  });

  test("a follower whose host name is no valid host name still syncs, and is not listed", async () => {
    const leader = await startMehdb({ waitReady: true });
    assertStatus(await put(leader.url, "k", "v"), 200);
    const odd = await startFollower(leader.url, { host: `odd name"} 1\nevil_metric 1`, waitReady: true });
    assert.equal((await http(`${odd.url}/get/k`)).text, "v");
    assert.deepEqual([...(await followerFigures(leader.url)).keys()], []);
    assert.doesNotMatch((await http(`${leader.url}/metrics`)).text, /evil|odd/);
  });
});

describe("the Mehdb-Follower header is input", () => {
  test("bad names are ignored and never echoed; valid ones are listed lower-cased", async () => {
    const leader = await startMehdb({ waitReady: true });
    const bad = [
      "", "-lead", "trail-", "a..b", ".dot", "dot.", "under_score", "with space", "a".repeat(64),
      `${"a".repeat(62)}.`.repeat(5),
      `x"} 1 evil_metric 1`, `x"}`, "<script>alert(1)</script>", "mehdb-1, mehdb-2", "caf\u00e9", "evil\tmetric",
    ];
    for (const name of bad) {
      for (const path of ["/keys?since=", "/values?keys=k", "/get/k"]) {
        const res = await http(`${leader.url}${path}`, { headers: { "Mehdb-Follower": name } });
        assert.ok(res.status === 200 || res.status === 404, `${path} with ${JSON.stringify(name)}: ${res.status}`);
      }
    }
    // What a client library would refuse to send: line breaks (a second header, a folded line), two headers.
    for (const head of [
      `Mehdb-Follower: x"} 1\r\nevil_metric: 1`,
      `Mehdb-Follower: x"} 1\nevil_metric 1`,
      `Mehdb-Follower: x"} 1\r\n evil_metric 1`,
      "Mehdb-Follower: good-one\r\nMehdb-Follower: evil-two",
    ]) {
      const answer = await rawRequest(leader.port,
        `GET /keys?since= HTTP/1.1\r\nHost: x\r\n${head}\r\nConnection: close\r\n\r\n`);
      assert.ok(answer.status >= 200, `an answer to ${JSON.stringify(head)}`);
    }
    for (const name of ["good-name.example", "UPPER-case"]) {
      assert.equal((await http(`${leader.url}/keys?since=`, { headers: { "Mehdb-Follower": name } })).status, 200);
    }

    assert.deepEqual([...(await followerFigures(leader.url)).keys()], ["good-name.example", "upper-case"]);
    const metricsText = (await http(`${leader.url}/metrics`)).text;
    const status = (await http(`${leader.url}/status?level=full`)).text;
    const page = (await http(`${leader.url}/`)).text;
    assert.equal([...metricsText.matchAll(/follower="/g)].length, 4, "two samples for each of the two good names");
    const both = `${summaryOf("good-name\\.example", 0)}, ${summaryOf("upper-case", 0)}`;
    assert.match(status, new RegExp(`^0 keys, followers: ${both}\\n$`));
    const shown: [string, string][] = [["/metrics", metricsText], ["/status?level=full", status], ["the page", page]];
    const echoes = [
      "evil", "script", "alert", "under_score", "with space", "with%20space", "-lead", "trail-", "caf", "two",
      "x&#34;", `x"`,
    ];
    for (const [where, text] of shown) {
      for (const echo of echoes) {
        assert.ok(!text.includes(echo), `${where} does not echo ${echo}`);
      }
    }
    assert.doesNotMatch(metricsText, /^evil_metric/m);
  });

  test("at most 100 names are kept: of 150, the 100 seen last", async () => {
    const leader = await startMehdb({ waitReady: true });
    const names = Array.from({ length: 150 }, (_, i) => `follower-${String(i).padStart(3, "0")}`);
    for (const name of names) {
      assert.equal((await http(`${leader.url}/keys?since=`, { headers: { "Mehdb-Follower": name } })).status, 200);
    }
    const listed = [...(await followerFigures(leader.url)).keys()];
    assert.deepEqual(listed, names.slice(50));
    const page = (await http(`${leader.url}/`)).text;
    assert.equal([...page.matchAll(/<td class="name">/g)].length, 100, "the page lists the same 100");
    assert.ok(!page.includes("follower-049") && page.includes("follower-149"));
  });
});

describe("only a request that passed its token check and was answered records a follower", () => {
  const WRITE = "w-Fq3Lm8Zt2Xc6Vb0Nk4Pj7Hd1Sg5Ry9A";
  const READ = "r-Bn5Tc1Wq7Ke3Ly9Mz2Xd6Gh0Jp4Sv8U";

  /** The environment of a leader (and its follower) with write and read tokens. */
  async function tokenEnv(): Promise<Record<string, string>> {
    const dir = await tempDir("mehdb-tokens-");
    await writeFile(join(dir, "write"), `${WRITE}\n`);
    await writeFile(join(dir, "read"), `${READ}\n`);
    return { MEHDB_WRITE_TOKEN_FILE: join(dir, "write"), MEHDB_READ_TOKEN_FILE: join(dir, "read") };
  }

  test("with tokens: clients without the read token, or with a wrong one, posing as mehdb-1 and as 100 made-up " +
    "names are not listed, and the real mehdb-1 stays", async () => {
    const env = await tokenEnv();
    const leader = await startMehdb({ env, waitReady: true });
    const metricsOf = async () => (await http(`${leader.url}/metrics`)).text;
    const real = await startFollower(leader.url, { host: "mehdb-1", env, waitReady: true });
    await waitFor(async () => (await followerFigures(leader.url)).has("mehdb-1"), "the leader to list mehdb-1");
    const refusals = () => metric401(leader.url);
    const refusedBefore = await refusals();

    real.child.kill("SIGSTOP");
    try {
      let aged = 0;
      await waitFor(async () => {
        aged = figuresOf(await followerFigures(leader.url), "mehdb-1").lastPoll;
        return aged > 1;
      }, "mehdb-1's last poll to age past 1 s while it is frozen");
      const spoofs = ["mehdb-1", ...Array.from({ length: 100 }, (_, i) => `made-up-${i}`)];
      const credentials: Record<string, string>[] = [{}, { Authorization: "Bearer not-the-token" }];
      let sent = 0;
      for (const name of spoofs) {
        for (const auth of credentials) {
          for (const path of ["/keys?since=", "/values?keys=k", "/get/k"]) {
            const answer = await http(`${leader.url}${path}`, { headers: { ...auth, "Mehdb-Follower": name } });
            assert.equal(answer.status, 401, `${path} as ${name}: ${answer.status} ${answer.text}`);
            sent++;
          }
        }
      }
      const figures = await followerFigures(leader.url);
      assert.deepEqual([...figures.keys()], ["mehdb-1"], "none of the spoofed names, and the real one not evicted");
      assert.ok(figuresOf(figures, "mehdb-1").lastPoll >= aged,
        "posing as mehdb-1 did not refresh its last poll");
      const status = await http(`${leader.url}/status?level=full`);
      assert.match(status.text, new RegExp(`^0 keys, followers: ${summaryOf("mehdb-1", 0)}\\n$`));
      assert.doesNotMatch(await metricsOf(), /made-up/);
      assert.equal(await refusals(), refusedBefore + sent, "each refusal counted, as before");
    } finally {
      real.child.kill("SIGCONT");
    }
  });

  test("without tokens: a real follower's polls are recorded; a named request refused (400) or to a path that " +
    "is no poll is not", async () => {
    const leader = await startMehdb({ waitReady: true });
    assertStatus(await put(leader.url, "k", "v"), 200);
    await startFollower(leader.url, { host: "mehdb-1", waitReady: true });
    await waitFor(async () => (await followerFigures(leader.url)).get("mehdb-1")?.lag === 0,
      "the leader to list mehdb-1 at lag 0");
    const refused = [
      "/get/..bad", "/keys?since=garbage", "/keys?wait=100", "/keys?prefix=.x", "/values?keys=..", "/keys?after=zz",
    ];
    for (const path of refused) {
      const answer = await http(`${leader.url}${path}`, { headers: { "Mehdb-Follower": "refused-1" } });
      assert.equal(answer.status, 400, `${path}: ${answer.status} ${answer.text}`);
    }
    for (const path of ["/status", "/metrics", "/", "/nope"]) {
      await http(`${leader.url}${path}`, { headers: { "Mehdb-Follower": "no-poll-1" } });
    }
    assertStatus(await put(leader.url, "w", "v", { headers: { "Mehdb-Follower": "no-poll-2" } }), 200);
    assert.deepEqual([...(await followerFigures(leader.url)).keys()], ["mehdb-1"]);
    assert.doesNotMatch((await http(`${leader.url}/status?level=full`)).text, /refused|no-poll/);
  });
});

/** `mehdb_http_requests_total{route="auth",status="401"}` of a server's `/metrics` (0 when absent). */
async function metric401(url: string): Promise<number> {
  const text = (await http(`${url}/metrics`)).text;
  return Number(/^mehdb_http_requests_total\{route="auth",status="401"\} (\d+)$/m.exec(text)?.[1] ?? 0);
}
