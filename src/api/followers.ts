/**
 * The leader's view of its followers. A follower names itself on every
 * request to its leader (`Mehdb-Follower: <its host name>`); the leader keeps,
 * per name, when it last polled and the change-feed cursor it last asked
 * from, and turns that into figures: lag (changes made since that cursor)
 * and seconds since the last poll, for `/metrics`, `/status?level=full` and
 * the status page.
 *
 * The header is input like any other: only valid host names (RFC 1123) are
 * kept, at most 100 of them, each forgotten after 10 minutes unseen. Anything
 * else is ignored and never shown. The server records a name only from a
 * poll that passed its token check and was answered; still, any reader may
 * send the header: the list is informational, not an authenticated identity.
 */
import { metric } from "../metrics.ts";
import { isHostName } from "../protocol.ts";

/** One follower as the leader sees it. */
export interface FollowerStatus {
  /** Its host name, lower-cased (always a valid host name). */
  readonly name: string;
  /** Changes the leader has made since the cursor this follower last asked from. */
  readonly lagChanges: number;
  /** Seconds since its last request. */
  readonly lastPollSeconds: number;
}

/** Options of {@link Followers}. */
export interface FollowersOptions {
  /** Changes the leader has made since `cursor` (`null`: since the beginning); usually `store.changesSince`. */
  lag: (cursor: string | null) => number;
  /** The clock, in ms (monotonic). Default `performance.now` (a test sets its own). */
  now?: () => number;
}

/** Most followers remembered; a new name beyond it replaces the one unseen the longest. */
const MAX_FOLLOWERS = 100;

/** A follower unseen this long is forgotten, in ms (10 minutes). */
const FORGET_AFTER_MS = 600_000;

/** Longest cursor remembered (a real one is about 20 characters). */
const MAX_CURSOR_CHARS = 100;

/** Paths a follower's poller asks for; a named request to any other path is not a poll. */
function isPollPath(path: string): boolean {
  return path === "/keys" || path === "/values" || path.startsWith("/get/");
}

/** The followers a leader has heard from; one per server. */
export class Followers {
  #lag: (cursor: string | null) => number;
  #now: () => number;
  /** name → last poll and cursor; in order of last poll, oldest first. */
  #byName = new Map<string, { lastPoll: number; cursor: string | null }>();

  constructor(options: FollowersOptions) {
    this.#lag = options.lag;
    this.#now = options.now ?? (() => performance.now());
  }

  /**
   * Notes an answered request: `header` is its `Mehdb-Follower` value (ignored unless a valid
   * host name), `path` and `params` its URL. `GET /keys` records the `since` cursor
   * (none: the follower asked for everything); `/values` and `/get/` only the time.
   */
  record(header: string | string[] | undefined, path: string, params: URLSearchParams): void {
    if (typeof header !== "string" || !isPollPath(path) || !isHostName(header)) return;
    const name = header.toLowerCase();
    const known = this.#byName.get(name);
    const since = path === "/keys" ? params.get("since") : undefined;
    // A cursor is `EPOCH-SEQ`, a few dozen characters; a longer one cannot be served, and is not kept.
    const cursor =
      since === undefined ? (known?.cursor ?? null) : since && since.length <= MAX_CURSOR_CHARS ? since : null;
    this.#byName.delete(name); // re-inserted last: the map stays in order of last poll
    this.#byName.set(name, { lastPoll: this.#now(), cursor });
    const [oldest] = this.#byName.keys();
    if (this.#byName.size > MAX_FOLLOWERS && oldest !== undefined) this.#byName.delete(oldest);
  }

  /** The followers seen in the last 10 minutes (by default), sorted by name, with their figures now. */
  list(): FollowerStatus[] {
    const now = this.#now();
    const out: FollowerStatus[] = [];
    for (const [name, { lastPoll, cursor }] of this.#byName) {
      if (now - lastPoll > FORGET_AFTER_MS) {
        this.#byName.delete(name);
        continue;
      }
      out.push({ name, lagChanges: this.#lag(cursor), lastPollSeconds: Math.max(0, (now - lastPoll) / 1000) });
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Per-follower gauges in the Prometheus text format (help and type lines even when none is known). */
  metrics(): string {
    const list = this.list();
    const family = (name: string, help: string, value: (f: FollowerStatus) => number) =>
      metric(name, "gauge", help, list.map((f) => ({ labels: { follower: f.name }, value: value(f) })));
    return (
      family(
        "mehdb_follower_lag_changes",
        "Changes the leader has made since the cursor each follower last asked from.",
        (f) => f.lagChanges,
      ) +
      family("mehdb_follower_last_poll_seconds", "Seconds since each follower last polled the leader.", (f) =>
        Number(f.lastPollSeconds.toFixed(3)),
      )
    );
  }

  /**
   * The followers for the `/status?level=full` line: `, followers: mehdb-1 (lag 0 changes, last poll 0.4 s ago), …`;
   * empty when none.
   */
  summary(): string {
    const list = this.list();
    if (list.length === 0) return "";
    const one = (f: FollowerStatus) =>
      `${f.name} (lag ${f.lagChanges} changes, last poll ${f.lastPollSeconds.toFixed(1)} s ago)`;
    return `, followers: ${list.map(one).join(", ")}`;
  }
}

