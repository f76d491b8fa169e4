/**
 * The wire protocol between a leader and its followers, in one place: the
 * change-feed cursor (`EPOCH-SEQ`), the change-feed answer of
 * `GET /keys?since=CURSOR[&limit=N[&from=NAME]]`, the `GET /values?keys=a,b,c`
 * answer, the headers mehdb adds, and what a follower's poller tells its
 * server ({@link PollerState}). The store, the server and the poller import
 * it; none of them imports another for the protocol.
 */
import { isValidKey, KEY_RULE } from "./keys.ts";

/** Sent by a follower on every request to its leader: its host name. */
export const FOLLOWER_HEADER = "Mehdb-Follower";
/**
 * Is `name` a host name as RFC 1123 has it: dot-separated labels of 1–63 letters, digits and `-`, not starting or
 * ending with `-`, 253 characters at most.
 */
export function isHostName(name: string): boolean {
  return (
    name.length <= 253 && /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i.test(name)
  );
}

/**
 * The headers a follower called `host` sends to its leader: `Mehdb-Follower`, or none when `host` is not a valid host
 * name.
 */
export function followerHeaders(host: string | undefined): Record<string, string> {
  return host !== undefined && isHostName(host) ? { [FOLLOWER_HEADER]: host } : {};
}

/** Answered by every successful `PUT` and `DELETE`: the cursor at which the change is visible. */
export const CURSOR_HEADER = "Mehdb-Cursor";

/** A change-feed cursor: the epoch of the store that made it, and the number of its changes so far. */
export interface Cursor {
  readonly epoch: string;
  readonly seq: number;
}

/** The cursor format in words, for `400` answers. */
export const CURSOR_RULE =
  "a cursor is EPOCH-SEQ, as in the Mehdb-Cursor header of a write or the cursor of GET /keys?since=";

const CURSOR_PATTERN = /^([0-9A-Za-z]{1,64})-([0-9]{1,16})$/;

/** `EPOCH-SEQ`. */
export function formatCursor(epoch: string, seq: number): string {
  return `${epoch}-${seq}`;
}

/** Reads `EPOCH-SEQ`; `null` when absent or malformed. */
export function parseCursor(text: string | null): Cursor | null {
  const match = text === null ? null : CURSOR_PATTERN.exec(text);
  if (!match?.[1] || match[2] === undefined) return null;
  const seq = Number(match[2]);
  return Number.isSafeInteger(seq) ? { epoch: match[1], seq } : null;
}

/** The seq of `cursor` when it is of `epoch`; `null` when absent, malformed or of another epoch. */
export function seqOf(cursor: string | null, epoch: string): number | null {
  const parsed = parseCursor(cursor);
  return parsed?.epoch === epoch ? parsed.seq : null;
}

/**
 * True when a follower whose last complete sync ended at `reached` has everything up to `wanted`: same epoch, seq not
 * beyond.
 */
export function cursorReached(reached: string | null, wanted: string): boolean {
  const have = parseCursor(reached);
  const want = parseCursor(wanted);
  return have !== null && want !== null && have.epoch === want.epoch && want.seq <= have.seq;
}

/**
 * A key in a change-feed listing: `[name, size, mtimeMs]`. The mtime is in milliseconds with the
 * microseconds as a fraction (`1700000000123.456`): a follower gives its copy exactly that mtime, so a
 * version has the same entity tag on every pod. A 0.8 leader sends whole milliseconds; both read both.
 */
export type ListedKey = [name: string, size: number, mtimeMs: number];

/** An mtime in whole microseconds as listings and `/values` lines carry it: milliseconds, with a fraction. */
export function mtimeToWire(mtimeUs: number): number {
  return mtimeUs / 1000;
}

/**
 * The entity tag of a version, the same on every pod: `"MTIME-SIZE"`, its mtime in microseconds and its size, in
 * base 36.
 */
export function versionTag(mtimeUs: number, size: number): string {
  return `"${mtimeUs.toString(36)}-${size.toString(36)}"`;
}

/** The mtime (µs) and size a {@link versionTag} names; `null` for any other tag (the original Go mehdb sends none). */
export function parseVersionTag(tag: string | undefined): { mtimeUs: number; size: number } | null {
  const match = tag === undefined ? null : /^"([0-9a-z]{1,11})-([0-9a-z]{1,11})"$/.exec(tag);
  if (!match?.[1] || !match[2]) return null;
  const mtimeUs = parseInt(match[1], 36);
  const size = parseInt(match[2], 36);
  return Number.isSafeInteger(mtimeUs) && Number.isSafeInteger(size) ? { mtimeUs, size } : null;
}

/** An mtime of a listing or a `/values` line, back in whole microseconds (exact for what {@link mtimeToWire} made). */
export function mtimeFromWire(mtimeMs: number): number {
  return Math.round(mtimeMs * 1000);
}

/**
 * The answer of `GET /keys?since=CURSOR`: what changed since the cursor, or the whole listing when it cannot be served.
 */
export interface Changes {
  /** The cursor to ask from next time. */
  cursor: string;
  /** True when `keys` is the complete set of keys (anything else should be removed). */
  full: boolean;
  /** Keys written since the cursor (or all keys, when `full`). */
  keys: ListedKey[];
  /** Keys deleted since the cursor (empty when `full`). */
  deleted: string[];
  /**
   * Only in a paged full listing ({@link ListingPage}): the name to ask `from` for the next page, or `null` on the last
   * page.
   */
  next?: string | null;
}

/** Paging of the change feed (`&limit=N[&from=NAME]`): a full listing is cut into pages sorted by name. */
export interface ListingPage {
  /**
   * Most keys in one answer. An incremental answer with more changes than this gets the first page of the full listing
   * instead.
   */
  limit: number;
  /**
   * Ask for the page of the full listing that starts after this name (whatever the cursor). Default: the first page.
   */
  from?: string;
}

/** Largest page of a paged listing. */
export const MAX_LISTING_LIMIT = 100_000;

/**
 * Reads the paging of a change-feed request: `limit=N` (1–100 000) cuts a full
 * listing into pages sorted by name; `from=NAME` (with `limit`) asks for the
 * page after NAME. `undefined` when unpaged; a one-line reason when malformed.
 */
export function parseListingPage(params: URLSearchParams): ListingPage | undefined | string {
  const limit = params.get("limit");
  const from = params.get("from");
  if (limit === null && from === null) return undefined;
  const n = limit !== null && /^[0-9]{1,6}$/.test(limit) ? Number(limit) : NaN;
  if (!(n >= 1 && n <= MAX_LISTING_LIMIT)) {
    return `limit must be a whole number from 1 to ${MAX_LISTING_LIMIT} (and is needed with from)`;
  }
  if (from !== null && !isValidKey(from)) return `from must be a key: ${KEY_RULE}`;
  return from === null ? { limit: n } : { limit: n, from };
}

/** A leader's answer that breaks the protocol (its shape, not its status). */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/** Checks the shape of a change-feed answer; throws {@link ProtocolError}. */
export function checkChanges(value: unknown): Changes {
  const v = value as Partial<Changes> | null;
  const ok =
    v !== null &&
    typeof v === "object" &&
    typeof v.cursor === "string" &&
    typeof v.full === "boolean" &&
    Array.isArray(v.keys) &&
    Array.isArray(v.deleted) &&
    (v.next === undefined || v.next === null || typeof v.next === "string") &&
    v.keys.every(
      (k) => Array.isArray(k) && typeof k[0] === "string" && Number.isFinite(k[1]) && Number.isFinite(k[2]),
    ) &&
    v.deleted.every((k) => typeof k === "string");
  if (!ok) throw new ProtocolError("leader's GET /keys?since answer is not a change listing");
  return v as Changes;
}

/** The content type of a `GET /values` answer. */
export const VALUES_TYPE = "application/vnd.mehdb.values";

/** Most keys asked for in one `GET /values`. */
export const MAX_VALUES_KEYS = 1000;

/**
 * The line before a value in a `GET /values` answer: `KEY SIZE MTIME_MS\n` (the mtime as in {@link ListedKey}),
 * followed by SIZE bytes; `KEY -\n` for a key that is absent.
 */
export function valueLine(key: string, value: { size: number; mtimeUs: number } | null): string {
  return value === null ? `${key} -\n` : `${key} ${value.size} ${mtimeToWire(value.mtimeUs)}\n`;
}

/**
 * Reads a `GET /values` answer: key → bytes and mtime (whole microseconds); absent keys are left out. Throws {@link
 * ProtocolError}.
 */
export function parseValues(answer: Buffer): Map<string, { body: Buffer; mtimeUs: number }> {
  const values = new Map<string, { body: Buffer; mtimeUs: number }>();
  let at = 0;
  while (at < answer.length) {
    const end = answer.indexOf(10, at);
    if (end < 0) throw new ProtocolError("leader's /values answer ends inside a header line");
    const [key = "", size, mtime] = answer.toString("latin1", at, end).split(" ");
    at = end + 1;
    if (size === "-") continue;
    const length = Number(size);
    const mtimeMs = Number(mtime);
    if (
      !isValidKey(key) ||
      !Number.isSafeInteger(length) ||
      length < 0 ||
      !Number.isFinite(mtimeMs) ||
      at + length > answer.length
    ) {
      throw new ProtocolError("leader's /values answer is malformed or cut short");
    }
    values.set(key, { body: answer.subarray(at, at + length), mtimeUs: mtimeFromWire(mtimeMs) });
    at += length;
  }
  return values;
}

/** What a follower's poller tells its server: readiness, staleness, read-your-writes, metrics. */
export interface PollerState {
  /** True once the follower has completed one sync with its leader. */
  readonly synced: boolean;
  /** Seconds since the last good sync; `null` before the first. */
  secondsSinceSync(): number | null;
  /** The last sync error, one line; `null` when the last tick went well. */
  readonly lastError: string | null;
  /** The leader's keys this follower cannot hold, one line; `null` when there are none. */
  readonly unheld: string | null;
  /** True when the last complete sync reached the leader's `cursor` (same epoch, seq not beyond). */
  reached(cursor: string): boolean;
  /** False while `key` is one of the leader's keys this follower cannot hold (its copy, if any, is older). */
  holds(key: string): boolean;
  /** True when this follower holds every key its syncs met (none is unheld). */
  holdsAll(): boolean;
  /** Time between two ticks, in ms. */
  readonly intervalMs: number;
  /**
   * Resolves once the next tick that starts within `maxStartMs` has ended (or at `maxStartMs`, or at once when
   * stopped).
   */
  nextSync(maxStartMs: number): Promise<void>;
  /** The poller's own metrics, Prometheus text. */
  metrics(): string;
  /** Resolves once no tick is running (at once when none is): a snapshot waits for a moment between ticks. */
  idle(): Promise<void>;
  /**
   * Between ticks, after one that completed: the leader's cursor the store holds exactly. `null` during a tick,
   * after a failed one (the store may hold part of a later state) and before the first.
   */
  readonly heldCursor: string | null;
}
