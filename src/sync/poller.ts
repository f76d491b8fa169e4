/**
 * The follower's poller: copies the leader's keys into the local store.
 *
 * The poller first makes sure its address is a leader (`GET /status` answers
 * `leader`): until then it copies and deletes nothing. It checks again after
 * every failed tick, so an idle tick stays one request.
 *
 * Every tick (`setInterval`, never overlapping) asks the leader for what
 * changed since the last cursor, `GET /keys?since=CURSOR&limit=N`. With nothing
 * new that is one small request. A leader that cannot serve the cursor (it
 * restarted, its data was replaced, or the cursor is too old or too far behind)
 * answers with the full listing instead, in pages of at most N keys sorted by
 * name, and the follower reconciles page by page: it copies every key whose size
 * or mtime differs from its own copy (it keeps the leader's mtime on its copies)
 * and removes every local key the leader's pages skip over (a merge-join with its
 * own sorted keys, read one page's range at a time). Small values are fetched in
 * groups (`GET /values?keys=a,b,c`) and each group is written as one batch;
 * larger ones one by one (`GET /get/KEY`).
 * A leader that answers `/keys` with a plain array (the original Go mehdb) is
 * listed and copied in full every tick.
 *
 * Bounds: each request to the leader has a deadline from start to end and each
 * answer is read up to a bound (`client.ts`); copies go through
 * {@link Store.putMany}, which holds one descriptor per value in flight.
 * Failures are told apart in the log: the leader cannot be reached, the leader
 * answered wrongly, or this follower failed locally.
 */
import { forEachLimited } from "../store/concurrency.ts";
import { isValidKey } from "../keys.ts";
import type { Logger } from "../log.ts";
import { metric } from "../metrics.ts";
import {
  checkChanges,
  cursorReached,
  mtimeFromWire,
  parseValues,
  parseVersionTag,
  versionTag,
  type Changes,
  type PollerState,
} from "../protocol.ts";
import { ValueTooLargeError, type PutItem, type Store } from "../store/store.ts";
import {
  AnswerTooLargeError,
  describeError,
  exactly,
  failureEvent,
  isFound,
  LeaderAnswerError,
  LeaderClient,
  groups,
  readAll,
  type FailureEvent,
  type LeaderOptions,
} from "./client.ts";
import { SyncWaits } from "./waits.ts";

/** Options of {@link Poller}: its leader ({@link LeaderOptions}), its store, its pace and its bound. */
export interface PollerOptions extends LeaderOptions {
  store: Store;
  /** Time between ticks. */
  intervalMs: number;
  /** Largest value copied; a larger one is skipped and reported as not held. */
  maxValueBytes: number;
  log: Logger;
}

/** Rounds of a tick at most: a round whose copies moved on meanwhile is followed by one for what changed since. */
const EXACT_ROUNDS = 4;
/** Keys per page of a full listing the follower asks for (`limit`). */
const PAGE_KEYS = 10_000;
/** Values fetched one by one at once. */
const CONCURRENCY = 8;
/** Values up to this size are fetched in groups with `GET /values`; larger ones one by one. */
const GROUP_VALUE_BYTES = 64 * 1024;
/** Groups fetched and written at once. */
const GROUP_CONCURRENCY = 8;
/** Values of one group written at once (each holds one temporary file open while it is written). */
const GROUP_WRITE_CONCURRENCY = 4;
/**
 * Largest `GET /values` answer read (values may have grown since they were listed); past it, the group is fetched key
 * by key.
 */
const MAX_GROUP_ANSWER_BYTES = 4 * 1024 * 1024;
/** Local keys removed at once. */
const DELETE_CONCURRENCY = 8;
/** Largest `GET /status` answer read. */
const MAX_STATUS_BYTES = 1024;
/** Distinct bad names logged before the poller stops logging new ones (they are still counted). */
const MAX_LOGGED_SKIPS = 1000;
/** Keys not held that are remembered by name (more are only counted). */
const MAX_UNHELD_NAMES = 10_000;

/** Copies a leader's keys on a timer; create one per follower, then {@link Poller.start}. */
export class Poller implements PollerState {
  #options: PollerOptions;
  #abort = new AbortController();
  #leader: LeaderClient;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | null = null;
  #cursor: string | null = null;
  /** True once the address has answered `GET /status` with `leader`; false again after a failed tick. */
  #trusted = false;
  #synced = false;
  /** Whether the current (or last) round copied exactly the versions its listing named. */
  #exact = false;
  #lastSuccess: number | null = null;
  #lastError: string | null = null;
  /** The current run of failed ticks: since when, and the events already logged. */
  #outage: { since: number; logged: Set<FailureEvent> } | null = null;
  #counts = { ticks: 0, copied: 0, deleted: 0, skipped: 0, unheld: 0, errors: 0 };
  /** Bad names already logged (each is logged once). */
  #skippedNames = new Set<string>();
  /** Reads with `?after=` waiting for the next tick. */
  #syncWaits = new SyncWaits();
  /** Keys this follower cannot hold, with the reason; each is logged when it joins. */
  #unheld = new Map<string, string>();
  /** The tick that last met a key not held when `#unheld` was full; -1: none since the last full reconcile. */
  #unheldUnnamed = -1;

  constructor(options: PollerOptions) {
    this.#options = options;
    this.#leader = new LeaderClient(options, this.#abort.signal);
  }

  /** Resolves once no tick is running (at once when none is). */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  /** Between ticks, after one that completed: the leader's cursor the store holds exactly; else `null`. */
  get heldCursor(): string | null {
    return this.#running === null && this.#lastError === null && this.#synced && this.#exact ? this.#cursor : null;
  }

  /** Starts ticking: one tick now, then one every `intervalMs`. */
  start(): void {
    this.#tick();
    this.#timer = setInterval(() => this.#tick(), this.#options.intervalMs);
  }

  /** Stops the timer, aborts requests in flight and waits for the tick to end. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#abort.abort();
    this.#syncWaits.close();
    await this.#running;
    this.#leader.close();
  }

  /** One tick, never two at once: sync, then report; reads waiting with `?after=` go when it ends. */
  #tick(): Promise<void> {
    if (this.#running) return this.#running;
    if (this.#abort.signal.aborted) return Promise.resolve();
    this.#counts.ticks++;
    const ended = this.#syncWaits.started();
    this.#running = this.#syncExactly()
      .then(
        () => this.#succeeded(),
        (error: unknown) => this.#failed(error),
      )
      .finally(() => {
        this.#running = null;
        ended();
      });
    return this.#running;
  }

  /** Syncs in rounds until one copied exactly what it listed: the store then holds the leader's data at the cursor. */
  async #syncExactly(): Promise<void> {
    for (let round = 0; round < EXACT_ROUNDS; round++) {
      this.#exact = true;
      await this.#syncOnce(round > 0);
      if (this.#exact || this.#cursor === null) return; // an original Go leader gives no cursor
    }
  }

  /**
   * One sync: the changes since the cursor, or a full reconcile when the leader lists everything. A `relist` (a later
   * round of a tick) skips the changed keys held at the listed version already (copied after the last listing).
   */
  async #syncOnce(relist: boolean): Promise<void> {
    if (!this.#trusted) await this.#checkLeader();
    const since = encodeURIComponent(this.#cursor ?? "");
    const first = await this.#leader.listing(`/keys?since=${since}&limit=${PAGE_KEYS}`);
    if (Array.isArray(first)) return this.#syncPlain(first);
    const changes = checkChanges(first);
    if (changes.full) {
      this.#exact = false; // its pages are read one after the other, not at one cursor
      await this.#reconcile(changes);
      // A full reconcile retries every key: one left unnamed by an earlier tick is now named, held or gone.
      if (this.#unheldUnnamed < this.#counts.ticks) this.#unheldUnnamed = -1;
    } else {
      const deleted = changes.deleted.filter((key) => this.#acceptable(key));
      await forEachLimited(deleted, DELETE_CONCURRENCY, (key) => this.#delete(key));
      await this.#copy(changes.keys.filter((item) => this.#acceptable(item[0]) && !(relist && this.#hasVersion(item))));
    }
    this.#cursor = changes.cursor; // the first page's: changes made while the pages were read come next tick
  }

  /** Trusts the address only once `GET /status` answers `leader` (this mehdb and the original Go one both do). */
  async #checkLeader(): Promise<void> {
    const said = await this.#leader.fetch("/status", async (res) => {
      try {
        const body = (await readAll(res, MAX_STATUS_BYTES, "GET /status")).toString("utf8").trim();
        return res.statusCode === 200 ? JSON.stringify(body.slice(0, 40)) : `${res.statusCode}`;
      } catch (error) {
        if (error instanceof AnswerTooLargeError) return `an answer of more than ${MAX_STATUS_BYTES} bytes`;
        throw error;
      }
    });
    if (said === '"leader"') {
      this.#trusted = true;
      return;
    }
    throw new LeaderAnswerError(
      `${this.#options.leaderUrl} answers GET /status with ${said}, not "leader"; ` +
        "nothing is copied or deleted until it does",
    );
  }

  /**
   * A full reconcile, one page of the listing at a time: every local key that
   * sorts between two pages' ends and is not on the page is removed; every listed
   * key whose size or mtime differs is copied.
   */
  async #reconcile(first: Changes): Promise<void> {
    let page = first;
    let from: string | null = null;
    for (;;) {
      const next = page.next ?? null;
      if (next !== null && from !== null && next <= from)
        throw new LeaderAnswerError("leader's listing pages do not advance");
      const listed = new Set<string>();
      const fetch: Listed[] = [];
      for (const item of page.keys) {
        const [key] = item;
        if (!this.#acceptable(key)) continue;
        if (from !== null && key <= from)
          throw new LeaderAnswerError(`leader's listing page after ${from} lists ${key}`);
        listed.add(key);
        if (!this.#hasVersion(item)) fetch.push(item);
      }
      const inPage = (key: string) => (from === null || key > from) && (next === null || key <= next);
      // The local names of this page's range only: a reconcile never holds every name while it waits on the leader.
      const gone = this.#options.store.list({ after: from, through: next }).filter((name) => !listed.has(name));
      for (const key of this.#unheld.keys()) if (inPage(key) && !listed.has(key)) this.#unheld.delete(key);
      await forEachLimited(gone, DELETE_CONCURRENCY, (key) => this.#delete(key));
      await this.#copy(fetch);
      if (next === null) return;
      const path = `/keys?since=&limit=${PAGE_KEYS}&from=${encodeURIComponent(next)}`;
      page = checkChanges(await this.#leader.listing(path));
      if (!page.full) throw new LeaderAnswerError("leader's answer to a listing page is not a full listing");
      from = next;
    }
  }

  /** True when the store holds `item`'s version: its size and µs mtime (a leader gives each version its own). */
  #hasVersion([key, size, mtimeMs]: Listed): boolean {
    const held = this.#options.store.stat(key);
    return held?.size === size && held.mtimeUs === mtimeFromWire(mtimeMs);
  }

  /** The original Go leader: copy every listed key whose bytes differ, remove the rest. */
  async #syncPlain(names: unknown[]): Promise<void> {
    const { store, maxValueBytes } = this.#options;
    const listed = new Set<string>();
    for (const name of names) if (typeof name === "string" && this.#acceptable(name)) listed.add(name);
    for (const key of this.#unheld.keys()) if (!listed.has(key)) this.#unheld.delete(key);
    const gone = store.list().filter((key) => !listed.has(key));
    await forEachLimited(gone, DELETE_CONCURRENCY, (key) => this.#delete(key));
    await forEachLimited([...listed], CONCURRENCY, (key) =>
      this.#leader.fetch(`/get/${key}`, async (res) => {
        if (!isFound(res, key)) return;
        let bytes: Buffer;
        try {
          bytes = await readAll(res, maxValueBytes, `GET /get/${key}`);
        } catch (error) {
          if (!(error instanceof AnswerTooLargeError)) throw error;
          return this.#notHeld(key, new ValueTooLargeError(`value is larger than ${maxValueBytes} bytes`));
        }
        const held = await store.get(key);
        if (held?.body?.equals(bytes)) return;
        held?.stream?.destroy();
        await this.#write([{ key, body: [bytes] }], 1);
      }),
    );
  }

  /**
   * Copies listed keys: small ones in groups, larger ones one by one; those over this follower's limit are not held.
   */
  async #copy(listed: Listed[]): Promise<void> {
    const { maxValueBytes } = this.#options;
    const small: Listed[] = [];
    const large: Listed[] = [];
    for (const item of listed) {
      const [key, size] = item;
      if (size > maxValueBytes) {
        this.#notHeld(key, new ValueTooLargeError(`value of ${size} bytes is larger than ${maxValueBytes} bytes`));
      } else {
        (size <= GROUP_VALUE_BYTES ? small : large).push(item);
      }
    }
    await Promise.all([
      forEachLimited(groups(small), GROUP_CONCURRENCY, (group) => this.#copyGroup(group)),
      forEachLimited(large, CONCURRENCY, (item) => this.#copyOne(item)),
    ]);
  }

  /**
   * Copies a group of small keys with one `GET /values`, written as one batch.
   * Each copy takes the size and mtime the answer gives, which describe the bytes
   * fetched. A leader that does not serve `/values`, or an answer that grew past
   * {@link MAX_GROUP_ANSWER_BYTES}, gets one request per key instead.
   */
  async #copyGroup(group: Listed[]): Promise<void> {
    const answer = await this.#leader.fetch(`/values?keys=${group.map(([key]) => key).join(",")}`, async (res) => {
      if (res.statusCode !== 200) return void res.resume();
      try {
        return await readAll(res, MAX_GROUP_ANSWER_BYTES, "GET /values");
      } catch (error) {
        if (error instanceof AnswerTooLargeError) return undefined;
        throw error;
      }
    });
    if (answer === undefined) return forEachLimited(group, CONCURRENCY, (item) => this.#copyOne(item));
    const values = parseValues(answer);
    const items: PutItem[] = [];
    for (const [key, size, mtimeMs] of group) {
      const value = values.get(key);
      if (value?.body.length !== size || value.mtimeUs !== mtimeFromWire(mtimeMs)) this.#exact = false; // moved on
      if (value) items.push({ key, body: [value.body], mtimeUs: value.mtimeUs });
    }
    await this.#write(items, GROUP_WRITE_CONCURRENCY);
  }

  /** Copies one key with `GET /get/KEY`, streamed to disk. A key gone meanwhile is left for the next listing. */
  async #copyOne([key, size, mtimeMs]: Listed): Promise<void> {
    await this.#leader.fetch(`/get/${key}`, async (res) => {
      const listedUs = mtimeFromWire(mtimeMs);
      // Moved on since it was listed (or gone).
      if (res.headers.etag !== versionTag(listedUs, size)) this.#exact = false;
      // The answer's tag names the version actually sent (it may be newer than the listing's); a leader without
      // such tags (the original Go mehdb) gets the listed mtime.
      const mtimeUs = parseVersionTag(res.headers.etag)?.mtimeUs ?? listedUs;
      if (isFound(res, key)) await this.#write([{ key, body: exactly(res), mtimeUs }], 1);
    });
  }

  /** The one way copies go into the store: a batch write; keys the store cannot hold are reported, the rest counted. */
  async #write(items: PutItem[], concurrency: number): Promise<void> {
    if (items.length === 0) return;
    const { store, maxValueBytes } = this.#options;
    for (const result of await store.putMany(items, { maxBytes: maxValueBytes, cache: false, concurrency })) {
      if (result.error) {
        this.#notHeld(result.key, result.error);
      } else {
        this.#counts.copied++;
        this.#unheld.delete(result.key);
      }
    }
  }

  /** A key this follower cannot hold: skipped, counted, logged when it joins the set, named in the status line. */
  #notHeld(key: string, error: Error): void {
    this.#counts.unheld++;
    if (this.#unheld.size >= MAX_UNHELD_NAMES && !this.#unheld.has(key)) this.#unheldUnnamed = this.#counts.ticks;
    if (this.#unheld.has(key) || this.#unheld.size >= MAX_UNHELD_NAMES) return;
    const code = (error as NodeJS.ErrnoException).code;
    const reason =
      error instanceof ValueTooLargeError
        ? `${error.message}, this follower's MEHDB_MAX_VALUE_BYTES`
        : `${code ?? error.name}: something other than a file is in the way in the data directory`;
    this.#unheld.set(key, reason);
    this.#options.log("key-not-held", { key, reason, retry: "on the next full reconcile" });
  }

  /** Removes a local key the leader no longer has. */
  async #delete(key: string): Promise<void> {
    this.#unheld.delete(key);
    if (await this.#options.store.delete(key)) this.#counts.deleted++;
  }

  /** A listed name must pass the key rules, like any input. Each bad name is logged once, not on every tick. */
  #acceptable(key: string): boolean {
    if (isValidKey(key)) return true;
    this.#counts.skipped++;
    if (this.#skippedNames.has(key) || this.#skippedNames.size > MAX_LOGGED_SKIPS) return false;
    this.#skippedNames.add(key);
    const more =
      this.#skippedNames.size > MAX_LOGGED_SKIPS
        ? "; further bad names are only counted in mehdb_sync_keys_skipped_total"
        : "";
    this.#options.log("skip-key", {
      reason: `the leader listed a name that breaks the key rules${more}`,
      name: JSON.stringify(key).slice(0, 220),
    });
    return false;
  }

  /** Logs the first sync and the end of an outage, once each. */
  #succeeded(): void {
    const { log, leaderUrl } = this.#options;
    if (!this.#synced) {
      log("synced", {
        leader: leaderUrl,
        keys: this.#options.store.count,
        copied: this.#counts.copied,
        deleted: this.#counts.deleted,
      });
    }
    if (this.#outage !== null) {
      const after = [...this.#outage.logged].join(",");
      log("sync-recovered", {
        leader: leaderUrl,
        after,
        down_seconds: ((performance.now() - this.#outage.since) / 1000).toFixed(1),
      });
      this.#outage = null;
    }
    this.#synced = true;
    this.#lastSuccess = performance.now();
    this.#lastError = null;
  }

  /** Counts a failed tick and logs it once per kind per outage; the leader is checked again next tick. */
  #failed(error: unknown): void {
    if (this.#abort.signal.aborted) return;
    this.#counts.errors++;
    this.#trusted = false;
    this.#lastError = describeError(error);
    const event = failureEvent(error);
    this.#outage ??= { since: performance.now(), logged: new Set() };
    if (this.#outage.logged.has(event)) return;
    this.#outage.logged.add(event);
    this.#options.log(event, { leader: this.#options.leaderUrl, error: this.#lastError });
  }

  /** True once one sync with the leader has completed. */
  get synced(): boolean {
    return this.#synced;
  }

  /** The last tick's error, one line; `null` when it went well. */
  get lastError(): string | null {
    return this.#lastError;
  }

  /** The keys this follower cannot hold, one line naming a few; `null` when there are none. */
  get unheld(): string | null {
    const count = this.#unheld.size;
    if (count === 0) return null;
    const named = [...this.#unheld]
      .slice(0, 3)
      .map(([key, reason]) => `${key} (${reason})`)
      .join(", ");
    const more = count > 3 ? ", …" : "";
    return `${count} key${count === 1 ? "" : "s"} not held: ${named}${more}; retried on the next full reconcile`;
  }

  /** Seconds since the last complete sync, `null` before the first. */
  secondsSinceSync(): number | null {
    return this.#lastSuccess === null ? null : (performance.now() - this.#lastSuccess) / 1000;
  }

  /** True when the last complete sync reached the leader's `cursor` (same epoch, seq not beyond): `?after=` reads. */
  reached(cursor: string): boolean {
    return cursorReached(this.#cursor, cursor);
  }

  /** False while `key` is one this follower cannot hold (`?after=` reads of it go to the leader). */
  holds(key: string): boolean {
    return this.#unheldUnnamed < 0 && !this.#unheld.has(key);
  }

  /** True when no key is unheld (`/keys?after=` is answered here). */
  holdsAll(): boolean {
    return this.#unheldUnnamed < 0 && this.#unheld.size === 0;
  }

  /** Time between two ticks, in ms. */
  get intervalMs(): number {
    return this.#options.intervalMs;
  }

  /**
   * Resolves once the next tick that starts within `maxStartMs` has ended (or at `maxStartMs`, or at once when
   * stopped).
   */
  nextSync(maxStartMs: number): Promise<void> {
    return this.#syncWaits.next(maxStartMs);
  }

  /** The poller's figures, Prometheus text. */
  metrics(): string {
    const c = this.#counts;
    const age = this.secondsSinceSync();
    return (
      metric("mehdb_sync_ticks_total", "counter", "Sync ticks started.", c.ticks) +
      metric("mehdb_sync_requests_total", "counter", "Requests sent to the leader.", this.#leader.requests) +
      metric("mehdb_sync_keys_copied_total", "counter", "Values copied from the leader.", c.copied) +
      metric(
        "mehdb_sync_keys_deleted_total",
        "counter",
        "Keys removed because the leader no longer has them.",
        c.deleted,
      ) +
      metric(
        "mehdb_sync_keys_skipped_total",
        "counter",
        "Listed names skipped because they break the key rules.",
        c.skipped,
      ) +
      metric(
        "mehdb_sync_keys_unheld_total",
        "counter",
        "Copies skipped because this follower cannot hold the key.",
        c.unheld,
      ) +
      metric(
        "mehdb_sync_keys_unheld",
        "gauge",
        "Keys of the leader this follower cannot hold now.",
        this.#unheld.size,
      ) +
      metric("mehdb_sync_errors_total", "counter", "Ticks that failed.", c.errors) +
      metric("mehdb_sync_synced", "gauge", "1 once a sync with the leader has completed.", this.#synced ? 1 : 0) +
      metric(
        "mehdb_sync_seconds_since_success",
        "gauge",
        "Seconds since the last complete sync (-1 before the first).",
        age === null ? -1 : Number(age.toFixed(3)),
      )
    );
  }
}

/** A key as the change feed lists it. */
type Listed = [key: string, size: number, mtimeMs: number];
