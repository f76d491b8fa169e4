/**
 * Conditional writes and read-your-writes, the HTTP side (the routes call it):
 *
 *     PUT|DELETE /set/KEY          If-Match / If-None-Match (412 when they fail), ETag and Mehdb-Cursor
 *     GET|HEAD /get/KEY?after=C    read-your-writes: a follower behind cursor C waits for its next sync, else 307
 *     GET /keys?after=C            the same for listings
 *
 * Each function answers with a {@link Reply} for the server to send, or `null`
 * when the request goes on as it would without these parameters.
 */
import type { IncomingHttpHeaders } from "node:http";
import { BAD_REQUEST, PRECONDITION_FAILED, TEMPORARY_REDIRECT, type Reply } from "./http.ts";
import { evaluatePreconditions, readPreconditions } from "./preconditions.ts";
import { CURSOR_HEADER, CURSOR_RULE, parseCursor, type PollerState } from "../protocol.ts";
import type { Entry, Precondition, Store } from "../store/store.ts";
import { MAX_HELD } from "./watch.ts";

/** Options of {@link Consistency}. */
export interface ConsistencyOptions {
  store: Store;
  /** The leader's address, `http://host:port`; `null` on a leader. */
  leaderUrl: string | null;
  /** The follower's poller; absent on a leader. */
  poller?: PollerState;
  /**
   * How long a follower behind `?after=` waits for its next sync to start. Default 1 000 ms (the default sync
   * interval).
   */
  afterWaitMs?: number;
}

const TEXT = "text/plain; charset=utf-8";

/** Conditional writes and read-your-writes over one store; one per server. */
export class Consistency {
  #store: Store;
  #leaderUrl: string | null;
  #poller: PollerState | undefined;
  #afterWaitMs: number;
  /** Reads waiting for the follower's next sync now; bounded like the watches ({@link MAX_HELD}). */
  #afterWaiting = 0;

  constructor(options: ConsistencyOptions) {
    this.#store = options.store;
    this.#leaderUrl = options.leaderUrl;
    this.#poller = options.poller;
    this.#afterWaitMs = options.afterWaitMs ?? 1_000;
  }

  /**
   * The preconditions of `PUT` or `DELETE /set/KEY`: `null` when there are
   * none; `{ reply }` (`400` malformed, `412` failing already, the body not
   * read) to answer at once; else `{ precondition }` for the store to judge
   * again in the key's lock, right before the write.
   */
  preconditions(
    headers: IncomingHttpHeaders,
    method: string,
    key: string,
  ): { reply: Reply } | { precondition: Precondition } | null {
    const pre = readPreconditions(headers);
    if (pre === null) return null;
    if ("error" in pre) return { reply: line(BAD_REQUEST, pre.error) };
    const store = this.#store;
    const precondition: Precondition = (current) => evaluatePreconditions(pre, key, current && store.etag(current));
    const current = store.stat(key);
    // A DELETE of an absent key is a 404 whatever its preconditions (RFC 9110, 13.2.1: they apply only to a 2xx).
    const failed = method === "DELETE" && current === undefined ? null : precondition(current);
    return failed === null ? { precondition } : { reply: line(PRECONDITION_FAILED, failed) };
  }

  /**
   * The headers of a successful `PUT` (`entry` given) or `DELETE`: the new `ETag`, and the cursor at which the change
   * is visible.
   */
  writeHeaders(entry?: Entry): Record<string, string> {
    const store = this.#store;
    return entry
      ? { ETag: store.etag(entry), [CURSOR_HEADER]: store.cursorOf(entry) }
      : { [CURSOR_HEADER]: store.cursor };
  }

  /**
   * `?after=CURSOR` of `GET`/`HEAD /get/KEY` or `GET /keys` (`path` is the
   * request's path, checked): `null` to answer from here; a `400` for a
   * malformed cursor; a `307` to the same path and query on the leader when
   * this follower has not reached the cursor, after waiting for its next sync.
   * The leader always answers: it has every write it acknowledged, whatever
   * the epoch of the cursor (an earlier epoch's writes are on its disk).
   */
  after(path: string, params: URLSearchParams): Reply | null | Promise<Reply | null> {
    const after = params.get("after");
    if (after === null) return null;
    if (parseCursor(after) === null) return line(BAD_REQUEST, `malformed after=${quote(after)}: ${CURSOR_RULE}`);
    const poller = this.#poller;
    if (!poller || poller.reached(after)) return null;
    if (this.#afterWaiting >= MAX_HELD) return this.#redirect(path, params, after);
    this.#afterWaiting++;
    return poller.nextSync(this.#afterWaitMs).then(() => {
      this.#afterWaiting--;
      return poller.reached(after) ? null : this.#redirect(path, params, after);
    });
  }

  #redirect(path: string, params: URLSearchParams, after: string): Reply {
    const location = `${this.#leaderUrl}${path}?${params.toString()}`;
    return line(
      TEMPORARY_REDIRECT,
      `this follower has not synced up to ${after} yet; read from the leader at ${location}`,
      { Location: location },
    );
  }
}

function line(status: number, text: string, headers?: Record<string, string>): Reply {
  return { status, body: text, type: TEXT, headers };
}

/** A value from the request, quoted and cut short, printable. */
function quote(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}...` : text).replace(/[^\x20-\x7e]/g, "?");
}
