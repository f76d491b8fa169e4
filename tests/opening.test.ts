/**
 * Opening a large data directory: mehdb listens first. While its store opens,
 * `GET /status` answers, readiness and every key route answer `503` with one
 * line saying how far opening got, never a `404` for a key on disk nor a
 * partial listing; once open, every key is there, also after a restart, in the
 * listing and in the change feed.
 */
import assert from "node:assert/strict";
import { link, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { assertOneLine, assertStatus, http, type Answer } from "./helpers/http.ts";
import { startMehdb, stopAll, tempDir } from "./helpers/mehdb.ts";
import { pool } from "./helpers/wait.ts";

after(stopAll);

/** Keys on disk: enough names that opening takes many turns of the server's event loop. */
const KEYS = 300_000;
const VALUE = "the same bytes for every key";
const keyOf = (i: number) => `key-${String(i).padStart(6, "0")}`;

/** Names per file of {@link largeDir} (file systems bound the links to one file: ext4 to 65 000). */
const LINKS = 50_000;

/** A data directory of {@link KEYS} keys (hard links of a few files: fast to make, each name a regular file). */
async function largeDir(): Promise<string> {
  const dir = await tempDir();
  for (let i = 0; i < KEYS; i += LINKS) await writeFile(join(dir, keyOf(i)), VALUE);
  const rest = Array.from({ length: KEYS }, (_, i) => i).filter((i) => i % LINKS !== 0);
  await pool(rest, 16, async (i) => link(join(dir, keyOf(i - (i % LINKS))), join(dir, keyOf(i))));
  return dir;
}

/** What one request answered while the server started: its path and answer. */
interface Seen {
  path: string;
  answer: Answer;
}

const OPENING = /^not ready( yet)?[:,] opening the data directory: \d+ names read/;

test("while a large store opens: /status answers, key routes and readiness answer 503 with one line, " +
  "never a 404 or a partial listing; readiness turns 200 once every name is indexed", async () => {
  const dir = await largeDir();
  const mehdb = await startMehdb({ dataDir: dir, waitOpen: false });
  const seen: Seen[] = [];
  const ask = async (path: string, method = "GET") => {
    const answer = await http(`${mehdb.url}${path}`, { method, body: method === "PUT" ? "x" : undefined });
    seen.push({ path: `${method} ${path}`, answer });
    return answer;
  };
  for (let ready = false; !ready;) {
    const answers = await Promise.all([
      ask("/status"),
      ask(`/get/${keyOf(KEYS - 1)}`),
      ask("/keys?prefix=key-00000"),
      ask(`/values?keys=${keyOf(1)}`),
      ask("/set/new-key", "PUT"),
      ask("/status?level=full"),
    ]);
    ready = answers[5]?.status === 200;
  }
  const during = seen.filter(({ answer }) => answer.status === 503);
  assert.ok(during.some(({ path }) => path === `GET /get/${keyOf(KEYS - 1)}`), "a GET was answered while opening");
  for (const { path, answer } of seen) {
    if (path === "GET /status") {
      assertStatus(answer, 200, path);
      continue;
    }
    if (answer.status === 503) {
      assertOneLine(answer.text, path);
      assert.match(answer.text, OPENING, path);
      continue;
    }
    if (path.startsWith("GET /get/")) assert.equal(assertStatus(answer, 200, path).text, VALUE);
    if (path.startsWith("GET /keys")) {
      const first10 = Array.from({ length: 10 }, (_, i) => keyOf(i));
      assert.deepEqual(JSON.parse(assertStatus(answer, 200, path).text), first10);
    }
    if (path.startsWith("GET /values")) assert.match(assertStatus(answer, 200, path).text, /^key-000001 28 \d+/);
    if (path === "PUT /set/new-key") assertStatus(answer, 200, path);
    if (path === "GET /status?level=full") {
      const keys = Number(/^(\d+) keys\n$/.exec(assertStatus(answer, 200, path).text)?.[1]);
      assert.ok(keys === KEYS || keys === KEYS + 1, `every key counted once ready: ${answer.text}`); // + new-key
    }
  }
  const firstLive = seen.findIndex(({ path, answer }) => path === "GET /status" && answer.status === 200);
  const lastOpening = seen.map(({ answer }) => answer.status).lastIndexOf(503);
  assert.ok(firstLive >= 0 && firstLive < lastOpening, "/status answered while the store was still opening");
  const written = seen.some(({ path, answer }) => path === "PUT /set/new-key" && answer.status === 200);
  const listed = JSON.parse((await ask("/keys")).text) as string[];
  assert.equal(listed.length, written ? KEYS + 1 : KEYS, "every key listed once ready, and the PUT if it was taken");
  // The last round's PUT may have gone out just before the store was open (503), its readiness just after.
  assertStatus(await ask("/set/new-key", "PUT"), 200, "PUT once ready");
  assert.ok((JSON.parse((await ask("/keys")).text) as string[]).includes("new-key"), "a PUT once ready is listed");
});

test("a restart on a large directory loses no key from the listing or the change feed", async () => {
  const dir = await largeDir();
  let mehdb = await startMehdb({ dataDir: dir, waitReady: true });
  assertStatus(await http(`${mehdb.url}/set/zz-written`, { method: "PUT", body: "v" }), 200);
  assert.equal(await mehdb.stop(), 0);
  mehdb = await startMehdb({ dataDir: dir, waitReady: true });
  const listed = JSON.parse(assertStatus(await http(`${mehdb.url}/keys`), 200).text) as string[];
  assert.equal(listed.length, KEYS + 1);
  assert.equal(listed.at(-1), "zz-written");
  // The change feed, as a follower pages through it from scratch.
  let count = 0;
  let from: string | null = null;
  do {
    const query: string = `/keys?since=&limit=100000${from === null ? "" : `&from=${from}`}`;
    const page = JSON.parse(assertStatus(await http(`${mehdb.url}${query}`), 200).text) as {
      keys: [string, number, number][];
      next: string | null;
    };
    count += page.keys.length;
    assert.ok(page.keys.every(([, size, mtime]) => size > 0 && mtime > 0), "sizes and mtimes of every key");
    from = page.next;
  } while (from !== null);
  assert.equal(count, KEYS + 1);
});
