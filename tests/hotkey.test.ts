/**
 * A hot key over a real process: many writers and readers on one key at once. Every read answers 200
 * with a whole value that was written, and an entity tag (or a /values size and mtime) never describes
 * the bytes of another version. Covers the sizes cached when written, cached when read, read whole
 * and streamed.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";
import { checkedValue, verifyValue } from "./helpers/data.ts";
import { http, put } from "./helpers/http.ts";
import { startMehdb, stopAll, type Mehdb } from "./helpers/mehdb.ts";

let leader: Mehdb;

before(async () => {
  leader = await startMehdb();
});

after(stopAll);

const WRITERS = 4;
const READERS = 8;
/** Readers of `GET /values?keys=K,K,K` (three reads of the key in one answer). */
const VALUES_READERS = 2;
/** The load runs this long at least... */
const RUN_MS = 3_000;
/** ...and at most this long, even if some worker has not yet done its minimum. */
const HARD_STOP_MS = 15_000;
/** Requests each worker makes at least (so a slow machine still exercises the race), and at most. */
const MIN_PER_WORKER = 5;
const MAX_PER_WORKER = 2_000;

/** One hot-key run: what was seen, for the assertions. */
interface Seen {
  statuses: Map<string, number>;
  /** Entity tag → the body hashes seen with it. */
  tagBodies: Map<string, Set<string>>;
  /** Value id → the mtimes `/values` gave with it. */
  idMtimes: Map<string, Set<number>>;
  /** Every problem with a body: torn, foreign, misparsed. */
  bad: string[];
  errors: string[];
  writes: number;
  reads: number;
  valueReads: number;
}

function count(seen: Seen, what: string): void {
  seen.statuses.set(what, (seen.statuses.get(what) ?? 0) + 1);
}

/** One entry of a `/values` answer. */
interface ValuesEntry {
  key: string;
  size: number;
  mtimeMs: number;
  bytes: Buffer;
}

/**
 * Reads a `/values` answer into its entries, in order (the same key may come several times); throws when it is
 * malformed, ends short or names an absent key.
 */
function parseValuesAnswer(body: Buffer): ValuesEntry[] {
  const out: ValuesEntry[] = [];
  let at = 0;
  while (at < body.length) {
    const end = body.indexOf(10, at);
    if (end < 0) throw new Error("answer ends inside a header line");
    const line = body.toString("latin1", at, end);
    const [, key, length, mtime] = /^(\S+) (\d+) (\d+(?:\.\d+)?)$/.exec(line) ?? [];
    if (key === undefined) throw new Error(`bad header line ${JSON.stringify(line.slice(0, 80))}`);
    at = end + 1;
    const size = Number(length);
    if (at + size > body.length) throw new Error(`entry of ${size} bytes cut short`);
    out.push({ key, size, mtimeMs: Number(mtime), bytes: body.subarray(at, at + size) });
    at += size;
  }
  return out;
}

async function hotKey(size: number): Promise<Seen> {
  const key = `hot-${size}`;
  const seen: Seen = {
    statuses: new Map(),
    tagBodies: new Map(),
    idMtimes: new Map(),
    bad: [],
    errors: [],
    writes: 0,
    reads: 0,
    valueReads: 0,
  };
  // Half of the versions are 8 bytes longer: an overwrite is then as often the same size as not.
  const value = (id: string, n: number) => checkedValue(id, size - 100 + (n % 2) * 8);
  const first = await put(leader.url, key, value("init-00000", 0));
  assert.equal(first.status, 200);

  const started = Date.now();
  const goOn = (done: number) => {
    const elapsed = Date.now() - started;
    return done < MAX_PER_WORKER && elapsed < HARD_STOP_MS && (done < MIN_PER_WORKER || elapsed < RUN_MS);
  };

  const writer = async (w: number) => {
    for (let n = 0; goOn(n); n++) {
      try {
        const res = await put(leader.url, key, value(`w${w}-${String(n).padStart(5, "0")}`, n), { keepAlive: true });
        count(seen, `PUT ${res.status}`);
        seen.writes++;
      } catch (error) {
        seen.errors.push(`PUT: ${(error as Error).message}`);
      }
    }
  };
  const reader = async () => {
    for (let n = 0; goOn(n); n++) {
      try {
        const res = await http(`${leader.url}/get/${key}`, { keepAlive: true });
        count(seen, `GET ${res.status}`);
        seen.reads++;
        if (res.status !== 200) {
          if (seen.bad.length < 5) seen.bad.push(`GET ${res.status}: ${res.body.toString("utf8").slice(0, 200)}`);
          continue;
        }
        const checked = verifyValue(res.body);
        if (!checked.ok) seen.bad.push(`GET body: ${checked.reason}`);
        const tag = String(res.headers.etag);
        const hash = createHash("sha256").update(res.body).digest("hex");
        let bodies = seen.tagBodies.get(tag);
        if (!bodies) seen.tagBodies.set(tag, (bodies = new Set()));
        bodies.add(hash);
      } catch (error) {
        seen.errors.push(`GET: ${(error as Error).message}`);
      }
    }
  };
  const valuesReader = async () => {
    for (let n = 0; goOn(n); n++) {
      try {
        const res = await http(`${leader.url}/values?keys=${key},${key},${key}`, { keepAlive: true });
        count(seen, `VALUES ${res.status}`);
        seen.valueReads++;
        if (res.status !== 200) continue;
        const entries = parseValuesAnswer(res.body);
        if (entries.length !== 3) seen.bad.push(`/values gave ${entries.length} entries for 3 keys`);
        for (const entry of entries) {
          const checked = verifyValue(entry.bytes);
          if (!checked.ok) {
            seen.bad.push(`/values entry of ${entry.size} bytes: ${checked.reason}`);
            continue;
          }
          let mtimes = seen.idMtimes.get(checked.id);
          if (!mtimes) seen.idMtimes.set(checked.id, (mtimes = new Set()));
          mtimes.add(entry.mtimeMs);
        }
      } catch (error) {
        // A size that does not describe the bytes desynchronises the answer: it ends short or misparses.
        seen.bad.push(`/values: ${(error as Error).message}`);
      }
    }
  };
  await Promise.all([
    ...Array.from({ length: WRITERS }, (_, w) => writer(w)),
    ...Array.from({ length: READERS }, () => reader()),
    ...Array.from({ length: VALUES_READERS }, () => valuesReader()),
  ]);
  return seen;
}

function check(size: number, seen: Seen): void {
  const statuses = JSON.stringify(Object.fromEntries(seen.statuses));
  const summary = `${size} B: ${seen.writes} PUTs, ${seen.reads} GETs, ${seen.valueReads} /values; ` +
    `statuses ${statuses}`;
  assert.deepEqual(seen.errors.slice(0, 5), [], summary);
  assert.deepEqual([...seen.statuses.keys()].filter((s) => !s.endsWith(" 200")), [],
    `only 200 answers; ${summary}; ${seen.bad.slice(0, 3).join("; ")}`);
  assert.deepEqual(seen.bad.slice(0, 5), [], summary);
  const shared = [...seen.tagBodies]
    .filter(([, bodies]) => bodies.size > 1)
    .map(([tag, bodies]) => `${tag} with ${bodies.size} bodies`);
  assert.deepEqual(shared, [], `an entity tag with two different bodies; ${summary}`);
  const moved = [...seen.idMtimes]
    .filter(([, mtimes]) => mtimes.size > 1)
    .map(([id, mtimes]) => `${id}: ${[...mtimes].join(", ")}`);
  assert.deepEqual(moved, [], `a value given with two different mtimes by /values; ${summary}`);
  // The load did happen (counts, not times): every worker did its minimum.
  assert.ok(seen.writes >= WRITERS * MIN_PER_WORKER && seen.reads >= READERS * MIN_PER_WORKER, summary);
  assert.ok(seen.tagBodies.size > 1, `more than one version was read; ${summary}`);
}

for (const size of [1024, 16 * 1024, 100 * 1024, 2 * 1024 * 1024]) {
  const kind = size <= 4096
    ? "cached when written"
    : size <= 64 * 1024 ? "cached when read" : size <= 1024 * 1024 ? "read whole" : "streamed";
  test(`hot key, ${size} B values (${kind}): ${WRITERS} writers, ${READERS} readers, ` +
    "every read a 200 with a whole value and its own tag", async () => {
    check(size, await hotKey(size));
  });
}
