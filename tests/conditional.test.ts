/**
 * Conditional writes (issue 13): If-Match / If-None-Match on real processes, the check and the write as one
 * step (20 writers, one winner), ETag and Mehdb-Cursor on writes, malformed headers, and entity tags that
 * always describe the bytes sent under same-size overwrites, on a leader and on a follower.
 */
import assert from "node:assert/strict";
import { request } from "node:http";
import { after, before, describe, test } from "node:test";
import { PreconditionFailedError, Store } from "../src/store/store.ts";
import { checkedValue, verifyValue } from "./helpers/data.ts";
import { assertOneLine, del, header, http, put, readAnswer, readFeed, type Answer } from "./helpers/http.ts";
import { startFollower, startMehdb, stopAll, tempDir, type Mehdb } from "./helpers/mehdb.ts";
import { rawRequest } from "./helpers/raw.ts";
import { waitFor } from "./helpers/wait.ts";
import { evaluatePreconditions, readPreconditions } from "../src/api/preconditions.ts";

let leader: Mehdb;
let follower: Mehdb;

before(async () => {
  const env = { MEHDB_SYNC_INTERVAL_MS: "100" };
  leader = await startMehdb({ env, waitReady: true });
  follower = await startFollower(leader.url, { env, waitReady: true });
});
after(stopAll);

/** The entity tag `HEAD /get/KEY` answers. */
async function etagOf(base: string, key: string): Promise<string> {
  const head = await http(`${base}/get/${key}`, { method: "HEAD" });
  assert.equal(head.status, 200, `HEAD ${key}`);
  return header(head, "ETag");
}

/** The sequence number of a cursor `EPOCH-SEQ`. */
const seqOf = (cursor: string) => Number(cursor.split("-")[1]);

/**
 * Starts a PUT with `Expect: 100-continue` and sends its body only once `gate` resolves. `continued`
 * resolves when the server said `100 Continue` (its early precondition check passed) or answered
 * without it (the check failed already).
 */
function gatedPut(
  url: string,
  body: Buffer,
  headers: Record<string, string>,
  gate: Promise<void>,
): { continued: Promise<boolean>; answer: Promise<Answer> } {
  let continued: (value: boolean) => void = () => {};
  const continuedPromise = new Promise<boolean>((resolve) => (continued = resolve));
  const answer = new Promise<Answer>((resolve, reject) => {
    const req = request(url, {
      method: "PUT",
      agent: false,
      headers: { ...headers, Expect: "100-continue", "Content-Length": String(body.length) },
    }, (res) => {
      continued(false);
      readAnswer(res).then(resolve, reject);
    });
    req.on("continue", () => {
      continued(true);
      void gate.then(() => req.end(body));
    });
    req.on("error", reject);
    req.flushHeaders();
  });
  return { continued: continuedPromise, answer };
}

/** One writer of a {@link race}: the body it sent and the answer it got. */
interface Writer {
  body: Buffer;
  answer: Answer;
}

/** 20 PUTs that all pass the early check, then race to commit: each one's body and answer. */
async function race(key: string, headers: Record<string, string>, size = 32 * 1024): Promise<Writer[]> {
  let open = () => {};
  const gate = new Promise<void>((resolve) => (open = resolve));
  const bodies = Array.from({ length: 20 }, (_, i) => checkedValue(`w${String(i).padStart(2, "0")}`, size));
  const puts = bodies.map((body) => ({ body, ...gatedPut(`${leader.url}/set/${key}`, body, headers, gate) }));
  const continued = await Promise.all(puts.map((p) => p.continued));
  assert.deepEqual(continued, Array(20).fill(true),
    "every writer passed the early check (100 Continue) before any body was sent");
  open();
  return Promise.all(puts.map(async ({ body, answer }) => ({ body, answer: await answer })));
}

/** The one writer of a {@link race} that got a 200. */
function onlyWinner(writers: Writer[]): Writer {
  const winners = writers.filter(({ answer }) => answer.status === 200);
  const [winner] = winners;
  assert.ok(winner && winners.length === 1, `exactly one winner: ${writers.map((w) => w.answer.status).join(" ")}`);
  return winner;
}

describe("preconditions on a real leader", () => {
  test("20 writers with the same If-Match: exactly one wins, the others get 412 naming the winner's tag", async () => {
    assert.equal((await put(leader.url, "race", "start")).status, 200);
    const tag = await etagOf(leader.url, "race");
    const writers = await race("race", { "If-Match": tag });
    const winner = onlyWinner(writers);
    const newTag = header(winner.answer, "ETag");
    assert.match(newTag, /^"[^"]+"$/, "a successful PUT answers with its ETag");
    assert.notEqual(newTag, tag);
    for (const [i, { answer }] of writers.entries()) {
      if (answer === winner.answer) continue;
      assert.equal(answer.status, 412, `writer ${i}: ${answer.text}`);
      assertOneLine(answer);
      assert.ok(answer.text.includes(newTag), `the 412 line names the current tag ${newTag}: ${answer.text}`);
      assert.equal(answer.headers["mehdb-cursor"], undefined, "no cursor on a failed write");
    }
    const got = await http(`${leader.url}/get/race`);
    assert.ok(got.body.equals(winner.body), "the value is the winner's");
    assert.equal(got.headers.etag, newTag, "and its tag is the one the winner was given");
  });

  test("create-only: of 20 writers with If-None-Match: *, one creates, " +
    "the others get 412 saying it exists", async () => {
    const writers = await race("created", { "If-None-Match": "*" }, 1024);
    const winner = onlyWinner(writers);
    const tag = header(winner.answer, "ETag");
    for (const { answer } of writers.filter((w) => w !== winner)) {
      assert.equal(answer.status, 412);
      assert.match(answer.text, /created exists/);
      assert.ok(answer.text.includes(tag), answer.text);
    }
    assert.ok((await http(`${leader.url}/get/created`)).body.equals(winner.body));
    const again = await put(leader.url, "created", "x", { headers: { "If-None-Match": "*" } });
    assert.equal(again.status, 412);
    assert.ok((await http(`${leader.url}/get/created`)).body.equals(winner.body), "value untouched after 412");
  });

  test("a 412 names the current tag or the key's absence, and leaves the value untouched", async () => {
    assert.equal((await put(leader.url, "kept", "original")).status, 200);
    const tag = await etagOf(leader.url, "kept");
    for (const ifMatch of [`"nope"`, `W/"nope"`, `W/${tag}`, `"a", "b"`]) {
      const refused = await put(leader.url, "kept", "overwritten", { headers: { "If-Match": ifMatch } });
      assert.equal(refused.status, 412, `If-Match: ${ifMatch}`);
      assertOneLine(refused);
      assert.ok(refused.text.includes(tag), refused.text);
    }
    const refusedDelete = await del(leader.url, "kept", { headers: { "If-Match": `"nope"` } });
    assert.equal(refusedDelete.status, 412);
    assert.ok(refusedDelete.text.includes(tag), refusedDelete.text);
    const got = await http(`${leader.url}/get/kept`);
    assert.equal(got.text, "original");
    assert.equal(got.headers.etag, tag);

    for (const ifMatch of ["*", `"x"`]) {
      const absent = await put(leader.url, "never-written", "v", { headers: { "If-Match": ifMatch } });
      assert.equal(absent.status, 412, `If-Match: ${ifMatch} on an absent key`);
      assertOneLine(absent);
      assert.match(absent.text, /never-written is absent/);
    }
    assert.equal((await http(`${leader.url}/get/never-written`)).status, 404, "nothing was created");
    // RFC 9110, 13.2.1: a DELETE of an absent key is a 404, whatever its preconditions.
    assert.equal((await del(leader.url, "never-written", { headers: { "If-Match": "*" } })).status, 404);
  });

  test("If-Match with the current tag writes; DELETE with it removes; both answer Mehdb-Cursor", async () => {
    const first = await put(leader.url, "cas", "v1");
    const cursor1 = header(first, "Mehdb-Cursor");
    assert.match(cursor1, /^[0-9a-f]+-\d+$/);
    assert.equal(header(first, "ETag"), await etagOf(leader.url, "cas"), "the PUT's ETag is the one GET answers");
    const second = await put(leader.url, "cas", "v2", { headers: { "If-Match": header(first, "ETag") } });
    assert.equal(second.status, 200, second.text);
    const cursor2 = header(second, "Mehdb-Cursor");
    assert.equal(cursor2.split("-")[0], cursor1.split("-")[0], "same epoch");
    assert.ok(seqOf(cursor2) > seqOf(cursor1), `${cursor2} after ${cursor1}`);
    const starTag = await put(leader.url, "cas", "v3", { headers: { "If-Match": `"x", ${header(second, "ETag")}` } });
    assert.equal(starTag.status, 200, "any tag of a list may match");
    const star = await put(leader.url, "cas", "v4", { headers: { "If-Match": "*" } });
    assert.equal(star.status, 200, "If-Match: * on an existing key");
    const removed = await del(leader.url, "cas", { headers: { "If-Match": header(star, "ETag") } });
    assert.equal(removed.status, 200, removed.text);
    const cursor3 = header(removed, "Mehdb-Cursor");
    assert.ok(seqOf(cursor3) > seqOf(header(star, "Mehdb-Cursor")));
    // The change feed from just before the delete lists it, and the delete's cursor is where it ends.
    const feed = await readFeed(leader.url, `since=${header(star, "Mehdb-Cursor")}`);
    assert.ok(feed.deleted.includes("cas"), JSON.stringify(feed));
  });

  test("a failing precondition is answered before the body is read (Expect: 100-continue gets the 412)", async () => {
    assert.equal((await put(leader.url, "early", "v")).status, 200);
    const answer = await rawRequest(
      leader.port,
      `PUT /set/early HTTP/1.1\r\nHost: x\r\nIf-Match: "stale"\r\nExpect: 100-continue\r\n` +
        "Content-Length: 1048576\r\n\r\n",
    );
    assert.equal(answer.status, 412, answer.raw);
    assert.ok(!answer.raw.includes("100 Continue"), "no 100 Continue: the body was never asked for");
    assert.equal((await http(`${leader.url}/get/early`)).text, "v");
  });

  test("malformed If-Match / If-None-Match: 400 in one line, never 5xx; huge lists are judged", async () => {
    assert.equal((await put(leader.url, "bad-headers", "v")).status, 200);
    const tag = await etagOf(leader.url, "bad-headers");
    const bad = [
      "garbage", `"unterminated`, `W/"unterminated`, `"a" "b"`, `*, "a"`, `w/"a"`, "W/", `"a"x`, "'single'", `"\u00ff`,
      "\u00e9",
    ];
    for (const value of bad) {
      for (const name of ["If-Match", "If-None-Match"]) {
        for (const method of ["PUT", "DELETE"]) {
          const body = method === "PUT" ? "changed" : undefined;
          const answer = await http(`${leader.url}/set/bad-headers`, { method, body, headers: { [name]: value } });
          const what = `${method} ${name}: ${JSON.stringify(value)}`;
          assert.equal(answer.status, 400, `${what} → ${answer.status} ${answer.text}`);
          assertOneLine(answer);
          assert.match(answer.text, new RegExp(`^malformed ${name}`));
        }
      }
    }
    // A list of about 14 KB (under the 16 KiB header limit): judged whole, in order.
    const many = Array.from({ length: 1500 }, (_, i) => `"t${i}"`).join(",");
    const missing = await put(leader.url, "bad-headers", "changed", { headers: { "If-Match": many } });
    assert.equal(missing.status, 412, missing.text);
    const found = await put(leader.url, "bad-headers", "changed", { headers: { "If-Match": `${many},${tag}` } });
    assert.equal(found.status, 200, found.text);
    // Past the header limit: node:http's 431, given one line.
    const huge = Array.from({ length: 4000 }, (_, i) => `"t${i}"`).join(",");
    const tooLarge = await put(leader.url, "bad-headers", "changed-again", { headers: { "If-Match": huge } })
      .catch((error: Error) => error);
    if (tooLarge instanceof Error) {
      assert.fail(`a huge If-Match closed the connection without an answer: ${tooLarge.message}`);
    }
    assert.equal(tooLarge.status, 431, tooLarge.text);
    assert.equal((await http(`${leader.url}/get/bad-headers`)).text, "changed");
    // Raw requests: repeated headers (joined into one list by node:http), odd bytes.
    const odd = [
      `If-Match: "x"\r\nIf-Match: garbage`, `If-Match: "x\x01"`, "If-None-Match: \x7f", `If-Match: "x"\r\nIf-Match: *`,
    ];
    for (const lines of odd) {
      const answer = await rawRequest(leader.port,
        `PUT /set/bad-headers HTTP/1.1\r\nHost: x\r\n${lines}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nz`);
      assert.ok(answer.status >= 400 && answer.status < 500, `${JSON.stringify(lines)} → ${answer.status}`);
    }
    assert.equal((await http(`${leader.url}/get/bad-headers`)).text, "changed");
  });

  test("a follower redirects every write, conditional or not, malformed or not: the leader judges", async () => {
    const conditions: Record<string, string>[] = [
      { "If-Match": `"x"` }, { "If-None-Match": "*" }, { "If-Match": "garbage" },
    ];
    for (const headers of conditions) {
      const answer = await put(follower.url, "via-follower", "v", { headers });
      assert.equal(answer.status, 307, `${JSON.stringify(headers)}: ${answer.text}`);
      assert.equal(answer.headers.location, `${leader.url}/set/via-follower`);
      assert.equal((await del(follower.url, "via-follower", { headers })).status, 307);
    }
  });
});

describe("the store judges the precondition in the key's lock", () => {
  test("20 concurrent puts with the same precondition: one commits", async () => {
    const store = await Store.open(await tempDir());
    const first = await store.put("k", [Buffer.from("start")], { maxBytes: 1024 });
    const pre = readPreconditions({ "if-match": store.etag(first) });
    assert.ok(pre !== null && !("error" in pre));
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        store.put("k", [Buffer.from(`writer ${i}`)], {
          maxBytes: 1024,
          precondition: (current) => evaluatePreconditions(pre, "k", current && store.etag(current)),
        })),
    );
    const won = results.filter((r) => r.status === "fulfilled");
    assert.equal(won.length, 1);
    for (const r of results) {
      if (r.status === "rejected") assert.ok(r.reason instanceof PreconditionFailedError, String(r.reason));
    }
    const deletes = await Promise.allSettled(Array.from({ length: 5 }, () =>
      store.delete("k", { precondition: (current) => (current?.seq === first.seq ? null : "stale") })));
    const refused = deletes.every((r) => r.status === "rejected" && r.reason instanceof PreconditionFailedError);
    assert.ok(refused, "a stale delete removes nothing");
    assert.equal(store.count, 1);
    await store.close();
  });
});

/**
 * Same-size overwrites of one key while readers read it: every answer's entity tag must always come
 * with the same bytes (and on the leader, with the bytes of the write that was given that tag).
 */
async function pairing(
  readFrom: string,
  key: string,
  size: number,
  writes: number,
): Promise<{ reads: number; tags: number }> {
  const writtenTags = new Map<string, string>(); // leader's tag → id of the write
  const seen = new Map<string, string>(); // tag → id of the bytes it came with
  const problems: string[] = [];
  let done = false;
  let reads = 0;
  const writer = (async () => {
    try {
      for (let i = 0; i < writes; i++) {
        const id = `v${String(i).padStart(5, "0")}`;
        const answer = await put(leader.url, key, checkedValue(id, size));
        assert.equal(answer.status, 200, answer.text);
        writtenTags.set(header(answer, "ETag"), id);
      }
    } finally {
      done = true;
    }
  })();
  const reader = async () => {
    while (!done) {
      const got = await http(`${readFrom}/get/${key}`, { timeoutMs: 30_000 });
      if (got.status === 404) continue; // the follower has not copied it yet
      reads++;
      const tag = header(got, "ETag");
      const check = verifyValue(got.body);
      if (!check.ok) {
        problems.push(`torn value under ${tag}: ${check.reason}`);
        continue;
      }
      const before = seen.get(tag);
      if (before !== undefined && before !== check.id) {
        problems.push(`tag ${tag} came with ${before} and with ${check.id}`);
      }
      seen.set(tag, check.id);
    }
  };
  await Promise.all([writer, reader(), reader(), reader()]);
  if (readFrom === leader.url) {
    for (const [tag, id] of seen) {
      const written = writtenTags.get(tag);
      if (written !== undefined && written !== id) {
        problems.push(`tag ${tag} was given to ${written} but came with ${id}`);
      }
    }
  }
  assert.deepEqual(problems.slice(0, 10), [], `${problems.length} mismatches in ${reads} reads`);
  return { reads, tags: seen.size };
}

describe("an entity tag never names two different values (same-size overwrites under reads)", () => {
  const sizes: [string, number, number][] = [
    ["small, cached (1 KiB)", 1024, 60],
    ["medium, read whole (100 KiB)", 100 * 1024, 40],
    ["large, streamed (2 MiB)", 2 * 1024 * 1024, 12],
  ];
  for (const [name, size, writes] of sizes) {
    test(`leader: ${name}`, async () => {
      const { reads, tags } = await pairing(leader.url, `pair-l-${size}`, size, writes);
      assert.ok(reads > 0 && tags > 0, `${reads} reads of ${tags} versions`);
    });
    test(`follower: ${name}`, async () => {
      const key = `pair-f-${size}`;
      const { reads, tags } = await pairing(follower.url, key, size, writes);
      assert.ok(reads > 0 && tags > 0, `${reads} reads of ${tags} versions`);
      // And the follower ends with the last value, under one tag.
      const last = await http(`${leader.url}/get/${key}`);
      await waitFor(async () => (await http(`${follower.url}/get/${key}`)).body.equals(last.body),
        `${key} on the follower`);
    });
  }
});
