/**
 * The follower's poller: copies the leader's keys into the local store.
 *
 * Every tick (`setInterval`, never overlapping) asks the leader for what
 * changed since the last cursor, `GET /keys?since=CURSOR`. With nothing new
 * that is one small request. A leader that cannot serve the cursor (it
 * restarted, its data was replaced, or the cursor is too old) answers with
 * the full listing instead, and the follower reconciles: it copies every key
 * whose size or mtime differs from its own copy (it keeps the leader's mtime on
 * its copies) and removes every key the leader no longer has. Small values
 * are fetched in groups (`GET /values?keys=a,b,c`) and each group is committed
 * together; larger ones one by one (`GET /get/KEY`). A leader that
 * answers `/keys` with a plain array (the original Go mehdb) is listed and
 * copied in full every tick.
 */
import { Agent, request, type IncomingMessage } from "node:http";
import { forEachLimited } from "./concurrency.ts";
import { followerHeaders } from "./followers.ts"; // issue 14
import { isValidKey } from "./keys.ts";
import type { Logger } from "./log.ts";
import { sample } from "./metrics.ts";
import type { ReplicaState } from "./server.ts";
import type { Changes, Staged, Store } from "./store.ts";
import { cursorReached, SyncWaits } from "./watch.ts";
import { authorizationHeader, leaderRefusal } from "./tokens.ts";

/** Options of {@link Poller}. */
export interface PollerOptions {
  store: Store;
  /** The leader, `http://host:port`. */
  leaderUrl: string;
  /** Time between ticks. */
  intervalMs: number;
  /** Largest value copied. */
  maxValueBytes: number;
  log: Logger;
  /** Values fetched at once. Default 8. */
  concurrency?: number;
  /** Time allowed for each request to the leader, in ms. Default 10 000. */
  timeoutMs?: number;
  /** This follower's host name, sent as `Mehdb-Follower` on every request to the leader (none when not a valid host name). Default: none. */
  host?: string;
  /** The `Authorization` value sent on every request to the leader, asked each time (tokens rotate). Default: none. */
  authorization?: () => string | undefined;
}

/** Values copied per commit (each holds an open file until then). */
const BATCH_SIZE = 128;
/** Values up to this size are fetched in groups with `GET /values`; larger ones one by one. */
const GROUP_VALUE_BYTES = 64 * 1024;
/** Limits of one group: keys, listed bytes, characters of the key list. */
const GROUP_KEYS = 256;
const GROUP_BYTES = 2 * 1024 * 1024;
const GROUP_KEY_CHARS = 8000;
/** Groups fetched and committed at once. */
const GROUP_CONCURRENCY = 4;
/** Largest `GET /values` answer read (values may have grown since they were listed). */
const MAX_GROUP_ANSWER_BYTES = 64 * 1024 * 1024;
/** Largest listing read from the leader, in bytes. */
const MAX_LISTING_BYTES = 512 * 1024 * 1024;
/** Distinct bad names logged before the poller stops logging new ones (they are still counted). */
const MAX_LOGGED_SKIPS = 1000;

/** Copies a leader's keys on a timer; create one per follower, then {@link Poller.start}. */
export class Poller implements ReplicaState {
  #options: Required<PollerOptions>;
  #agent: Agent;
  #abort = new AbortController();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | null = null;
  #cursor: string | null = null;
  #synced = false;
  #lastSuccess: number | null = null;
  #lastError: string | null = null;
  #outageSince: number | null = null;
  #counts = { ticks: 0, requests: 0, copied: 0, deleted: 0, skipped: 0, errors: 0 };
  /** Bad names already logged (each is logged once). */
  #skippedNames = new Set<string>();
  /** Reads with `?after=` waiting for the next tick (issue 13). */
  #syncWaits = new SyncWaits();

  constructor(options: PollerOptions) {
    this.#options = { concurrency: 8, timeoutMs: 10_000, host: "", authorization: () => undefined, ...options };
    this.#agent = new Agent({ keepAlive: true, maxSockets: this.#options.concurrency });
  }

  /** True once one sync with the leader has completed. */
  get synced(): boolean {
    return this.#synced;
  }

  /** The last tick's error, one line; `null` when it went well. */
  get lastError(): string | null {
    return this.#lastError;
  }

  /** Seconds since the last complete sync, `null` before the first. */
  secondsSinceSync(): number | null {
    return this.#lastSuccess === null ? null : (performance.now() - this.#lastSuccess) / 1000;
  }

  // --- read-your-writes (issue 13): what `?after=CURSOR` needs from the poller ---
  /** True when the last complete sync reached the leader's `cursor` (same epoch, seq not beyond). */
  reached(cursor: string): boolean {
    return cursorReached(this.#cursor, cursor);
  }

  /** Resolves once the next tick that starts within `maxStartMs` has ended (or at `maxStartMs`, or at once when stopped). */
  nextSync(maxStartMs: number): Promise<void> {
    return this.#syncWaits.next(maxStartMs);
  }
  // --- end of read-your-writes ---

  /** Starts ticking: one tick now, then one every `intervalMs`. */
  start(): void {
    this.#tick();
    this.#timer = setInterval(() => this.#tick(), this.#options.intervalMs);
  }

  /** Stops the timer, aborts requests in flight and waits for the tick to end. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#abort.abort();
    this.#syncWaits.close(); // issue 13
    await this.#running;
    this.#agent.destroy();
  }

  #tick(): Promise<void> {
    if (this.#running) return this.#running;
    if (this.#abort.signal.aborted) return Promise.resolve();
    this.#counts.ticks++;
    const ended = this.#syncWaits.started(); // issue 13
    this.#running = this.#syncOnce().then(
      () => this.#succeeded(),
      (error: unknown) => this.#failed(error),
    ).finally(() => {
      this.#running = null;
      ended(); // issue 13
    });
    return this.#running;
  }

  #succeeded(): void {
    const { log, leaderUrl } = this.#options;
    if (!this.#synced) {
      log("synced", { leader: leaderUrl, keys: this.#options.store.count, copied: this.#counts.copied, deleted: this.#counts.deleted });
    }
    if (this.#outageSince !== null) {
      log("leader-reachable", { leader: leaderUrl, down_seconds: ((performance.now() - this.#outageSince) / 1000).toFixed(1) });
      this.#outageSince = null;
    }
    this.#synced = true;
    this.#lastSuccess = performance.now();
    this.#lastError = null;
  }

  #failed(error: unknown): void {
    if (this.#abort.signal.aborted) return;
    this.#counts.errors++;
    this.#lastError = describe(error);
    if (this.#outageSince === null) {
      this.#outageSince = performance.now();
      this.#options.log("leader-unreachable", { leader: this.#options.leaderUrl, error: this.#lastError });
    }
  }

  async #syncOnce(): Promise<void> {
    const res = await this.#get(`/keys?since=${encodeURIComponent(this.#cursor ?? "")}`);
    if (res.statusCode !== 200) {
      res.resume();
      if (res.statusCode === 401) throw new Error(leaderRefusal(this.#options.authorization() !== undefined)); // tokens
      throw new Error(`leader answered ${res.statusCode} to GET /keys`);
    }
    const listing: unknown = JSON.parse((await readAll(res, MAX_LISTING_BYTES)).toString("utf8"));
    if (Array.isArray(listing)) return this.#syncPlain(listing);
    const changes = checkChanges(listing);
    const { store } = this.#options;
    const fetch: Listed[] = [];
    if (changes.full) {
      const listed = new Set<string>();
      for (const [key, size, mtimeMs] of changes.keys) {
        if (!this.#acceptable(key)) continue;
        listed.add(key);
        const local = store.stat(key);
        if (!local || local.size !== size || local.mtimeMs !== Math.round(mtimeMs)) fetch.push([key, size, mtimeMs]);
      }
      for (const key of store.list()) if (!listed.has(key)) await this.#delete(key);
    } else {
      for (const key of changes.deleted) if (this.#acceptable(key)) await this.#delete(key);
      for (const listed of changes.keys) if (this.#acceptable(listed[0])) fetch.push(listed);
    }
    const small = fetch.filter(([, size]) => size <= GROUP_VALUE_BYTES);
    const large = fetch.filter(([, size]) => size > GROUP_VALUE_BYTES);
    await forEachLimited(groups(small), GROUP_CONCURRENCY, (group) => this.#copyGroup(group));
    for (let i = 0; i < large.length; i += BATCH_SIZE) await this.#copyBatch(large.slice(i, i + BATCH_SIZE));
    this.#cursor = changes.cursor;
  }

  /** The original Go leader: copy every listed key whose bytes differ, remove the rest. */
  async #syncPlain(names: unknown[]): Promise<void> {
    const { store } = this.#options;
    const listed = new Set<string>();
    for (const name of names) if (typeof name === "string" && this.#acceptable(name)) listed.add(name);
    for (const key of store.list()) if (!listed.has(key)) await this.#delete(key);
    await forEachLimited([...listed], this.#options.concurrency, async (key) => {
      const res = await this.#get(`/get/${key}`);
      if (res.statusCode === 404) return void res.resume();
      if (res.statusCode !== 200) {
        res.resume();
        throw new Error(`leader answered ${res.statusCode} to GET /get/${key}`);
      }
      const bytes = await readAll(res, this.#options.maxValueBytes);
      const local = await store.get(key);
      if (local?.body?.equals(bytes)) return;
      local?.stream?.destroy();
      await store.put(key, [bytes], { maxBytes: this.#options.maxValueBytes });
      this.#counts.copied++;
    });
  }

  /**
   * Copies a batch of keys: fetches them (a few at a time) into temporary files,
   * then commits them together, so one journal commit carries the whole batch.
   * A key gone meanwhile is left for the next tick's listing.
   */
  async #copyBatch(batch: Listed[]): Promise<void> {
    const { store, maxValueBytes, concurrency } = this.#options;
    const staged: Staged[] = [];
    try {
      await forEachLimited(batch, concurrency, async ([key, , mtimeMs]) => {
        const res = await this.#get(`/get/${key}`);
        if (res.statusCode === 404) return void res.resume();
        if (res.statusCode !== 200) {
          res.resume();
          throw new Error(`leader answered ${res.statusCode} to GET /get/${key}`);
        }
        staged.push(await store.stage(key, exactly(res), { maxBytes: maxValueBytes, mtimeMs, cache: false }));
      });
    } catch (error) {
      await store.discard(staged);
      throw error;
    }
    await store.commit(staged);
    this.#counts.copied += staged.length;
  }

  /**
   * Copies a group of small keys with one `GET /values` and commits them
   * together. Each copy takes the size and mtime the answer gives, which
   * describe the bytes fetched. A leader that does not serve `/values` gets
   * one request per key instead.
   */
  async #copyGroup(group: Listed[]): Promise<void> {
    const { store, maxValueBytes, concurrency } = this.#options;
    const res = await this.#get(`/values?keys=${group.map(([key]) => key).join(",")}`);
    if (res.statusCode !== 200) {
      res.resume();
      return this.#copyBatch(group);
    }
    const values = parseValues(await readAll(res, MAX_GROUP_ANSWER_BYTES));
    const staged: Staged[] = [];
    try {
      await forEachLimited(group, concurrency, async ([key]) => {
        const value = values.get(key);
        if (value) staged.push(await store.stage(key, [value.body], { maxBytes: maxValueBytes, mtimeMs: value.mtimeMs, cache: false }));
      });
    } catch (error) {
      await store.discard(staged);
      throw error;
    }
    await store.commit(staged);
    this.#counts.copied += staged.length;
  }

  async #delete(key: string): Promise<void> {
    if (await this.#options.store.delete(key)) this.#counts.deleted++;
  }

  /** A listed name must pass the key rules, like any input. Each bad name is logged once, not on every tick. */
  #acceptable(key: string): boolean {
    if (isValidKey(key)) return true;
    this.#counts.skipped++;
    if (this.#skippedNames.has(key) || this.#skippedNames.size > MAX_LOGGED_SKIPS) return false;
    this.#skippedNames.add(key);
    const more = this.#skippedNames.size > MAX_LOGGED_SKIPS ? "; further bad names are only counted in mehdb_sync_keys_skipped_total" : "";
    this.#options.log("skip-key", { reason: `the leader listed a name that breaks the key rules${more}`, name: JSON.stringify(key).slice(0, 220) });
    return false;
  }

  /** GET from the leader over the keep-alive agent, with a timeout; retried once on a stale pooled connection. */
  async #get(path: string): Promise<IncomingMessage> {
    for (let attempt = 0; ; attempt++) {
      this.#counts.requests++;
      try {
        return await new Promise<IncomingMessage>((resolve, reject) => {
          const req = request(`${this.#options.leaderUrl}${path}`, {
            agent: this.#agent,
            signal: this.#abort.signal,
            timeout: this.#options.timeoutMs,
            headers: { ...followerHeaders(this.#options.host), ...authorizationHeader(this.#options.authorization()) },
          }, (res) => {
            res.setTimeout(this.#options.timeoutMs, () => res.destroy(new Error(`timed out reading ${path}`)));
            resolve(res);
          });
          req.on("timeout", () => req.destroy(new Error(`no answer to GET ${path} within ${this.#options.timeoutMs} ms`)));
          req.on("error", (error: NodeJS.ErrnoException) => {
            reject(Object.assign(error, { reused: req.reusedSocket }));
          });
          req.end();
        });
      } catch (error) {
        const { code, reused } = error as NodeJS.ErrnoException & { reused?: boolean };
        if (attempt === 0 && reused && (code === "ECONNRESET" || code === "EPIPE")) continue;
        throw error;
      }
    }
  }

  /** The poller's figures, Prometheus text. */
  metrics(): string {
    const c = this.#counts;
    const age = this.secondsSinceSync();
    return sample("mehdb_sync_ticks_total", "counter", "Sync ticks started.", c.ticks) +
      sample("mehdb_sync_requests_total", "counter", "Requests sent to the leader.", c.requests) +
      sample("mehdb_sync_keys_copied_total", "counter", "Values copied from the leader.", c.copied) +
      sample("mehdb_sync_keys_deleted_total", "counter", "Keys removed because the leader no longer has them.", c.deleted) +
      sample("mehdb_sync_keys_skipped_total", "counter", "Listed names skipped because they break the key rules.", c.skipped) +
      sample("mehdb_sync_errors_total", "counter", "Ticks that failed.", c.errors) +
      sample("mehdb_sync_synced", "gauge", "1 once a sync with the leader has completed.", this.#synced ? 1 : 0) +
      sample("mehdb_sync_seconds_since_success", "gauge", "Seconds since the last complete sync (-1 before the first).", age === null ? -1 : Number(age.toFixed(3)));
  }
}

/** A key as the change feed lists it. */
type Listed = [key: string, size: number, mtimeMs: number];

/** Splits small listed keys into groups for `GET /values`, within the group limits. */
function groups(listed: Listed[]): Listed[][] {
  const out: Listed[][] = [];
  let group: Listed[] = [];
  let bytes = 0;
  let chars = 0;
  for (const item of listed) {
    if (group.length > 0 && (group.length >= GROUP_KEYS || bytes + item[1] > GROUP_BYTES || chars + item[0].length + 1 > GROUP_KEY_CHARS)) {
      out.push(group);
      group = [];
      bytes = 0;
      chars = 0;
    }
    group.push(item);
    bytes += item[1];
    chars += item[0].length + 1;
  }
  if (group.length > 0) out.push(group);
  return out;
}

/** Reads a `GET /values` answer: key → bytes and mtime; absent keys are left out. */
export function parseValues(answer: Buffer): Map<string, { body: Buffer; mtimeMs: number }> {
  const values = new Map<string, { body: Buffer; mtimeMs: number }>();
  let at = 0;
  while (at < answer.length) {
    const end = answer.indexOf(10, at);
    if (end < 0) throw new Error("leader's /values answer ends inside a header line");
    const [key, size, mtime] = answer.toString("latin1", at, end).split(" ");
    at = end + 1;
    if (size === "-") continue;
    const length = Number(size);
    const mtimeMs = Number(mtime);
    if (!isValidKey(key) || !Number.isSafeInteger(length) || length < 0 || !Number.isFinite(mtimeMs) || at + length > answer.length) {
      throw new Error("leader's /values answer is malformed or cut short");
    }
    values.set(key, { body: answer.subarray(at, at + length), mtimeMs });
    at += length;
  }
  return values;
}

/** Checks the shape of a change-feed answer. */
function checkChanges(value: unknown): Changes {
  const v = value as Partial<Changes> | null;
  const ok = v !== null && typeof v === "object" && typeof v.cursor === "string" && typeof v.full === "boolean" &&
    Array.isArray(v.keys) && Array.isArray(v.deleted) &&
    v.keys.every((k) => Array.isArray(k) && typeof k[0] === "string" && Number.isFinite(k[1]) && Number.isFinite(k[2])) &&
    v.deleted.every((k) => typeof k === "string");
  if (!ok) throw new Error("leader's GET /keys?since answer is not a change listing");
  return v as Changes;
}

/** The body of `res`, up to `limit` bytes. */
async function readAll(res: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new Error(`leader's answer is larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/** The body of `res`, failing unless it is exactly as long as its `Content-Length`. */
async function* exactly(res: IncomingMessage): AsyncGenerator<Buffer> {
  const declared = res.headers["content-length"];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    yield chunk;
  }
  if (declared !== undefined && size !== Number(declared)) {
    throw new Error(`value cut short: ${size} of ${declared} bytes`);
  }
}

function describe(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  const text = e?.code && !String(e.message).includes(e.code) ? `${e.code}: ${e.message}` : String(e?.message ?? error);
  return text.replace(/\s+/g, " ").slice(0, 200);
}
