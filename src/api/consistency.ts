/**
 * Watches and prefix listing, the HTTP side (the routes call it):
 *
 *     GET /keys?prefix=P           only names starting with P (also with since)
 *     GET /keys?since=C&wait=MS    held until something changes, MS pass, or shutdown
 *
 * Each function answers with a {@link Reply} for the server to send, or `null`
 * when the request goes on as it would without these parameters.
 */
import type { ServerResponse } from "node:http";
import { BAD_REQUEST, OK, quote, type Reply } from "./http.ts";
import { sample } from "../metrics.ts";
import { KEY_RULE } from "../keys.ts";
import { CURSOR_RULE, parseCursor, parseListingPage, type Changes, type ListingPage } from "../protocol.ts";
import type { Store } from "../store/store.ts";
import {
  changesWithPrefix,
  isValidPrefix,
  MAX_WAIT_MS,
  nothingChanged,
  parseWait,
  Watches,
  withPrefix,
} from "./watch.ts";

/** Options of {@link Consistency}. */
export interface ConsistencyOptions {
  store: Store;
  /** Held `/keys` answers at once. Default 256 (see `watch.ts`). */
  maxHeld?: number;
}

/** What a change-feed request asks for beyond its cursor: names starting with `prefix`, and a page. */
interface Listing {
  prefix: string;
  page: ListingPage | undefined;
}

const TEXT = "text/plain; charset=utf-8";
const JSON_TYPE = "application/json";

/** Watching and prefix listing over one store; one per server. */
export class Consistency {
  /** The held `/keys` answers. */
  readonly watches: Watches;
  #store: Store;

  constructor(options: ConsistencyOptions) {
    this.#store = options.store;
    this.watches = new Watches(() => options.store.nextChange(), { max: options.maxHeld });
  }

  /**
   * `GET /keys` with its parameters: the plain sorted array (`prefix`
   * filters it), or with `since` the change feed, held up to `wait` ms while
   * nothing changed. `res` is watched for the client going away.
   */
  keys(params: URLSearchParams, res: ServerResponse): Reply | Promise<Reply> {
    const since = params.get("since");
    const prefix = params.get("prefix") ?? "";
    const waitText = params.get("wait");
    if (!isValidPrefix(prefix)) {
      const rule = `a prefix is empty or follows the key rule (${KEY_RULE})`;
      return line(BAD_REQUEST, `invalid prefix=${quote(prefix)}: ${rule}`);
    }
    const wait = waitText === null ? null : parseWait(waitText);
    if (waitText !== null && wait === null) {
      const rule = `a whole number of milliseconds from 1 to ${MAX_WAIT_MS}`;
      return line(BAD_REQUEST, `invalid wait=${quote(waitText)}: ${rule}`);
    }
    if (since === null) {
      if (wait !== null) {
        const why = "the cursor of the last answer, to wait for what comes after it";
        return line(BAD_REQUEST, `wait needs since=CURSOR: ${why}`);
      }
      return json(withPrefix(this.#store.list(), prefix));
    }
    if (since !== "" && parseCursor(since) === null) {
      return line(BAD_REQUEST, `malformed since=${quote(since)}: ${CURSOR_RULE}, or empty for every key`);
    }
    const page = parseListingPage(params);
    if (typeof page === "string") return line(BAD_REQUEST, page);
    const listing = { prefix, page };
    const changes = this.#changes(since, listing);
    if (wait === null || !nothingChanged(changes)) return json(changes);
    return this.#held(since, listing, performance.now() + wait, res);
  }

  /** Lets every held answer go at once (shutdown). */
  close(): void {
    this.watches.close();
  }

  /** The watch figures, Prometheus text. */
  metrics(): string {
    return (
      sample("mehdb_watches_held", "gauge", "GET /keys?since=...&wait=... answers held now.", this.watches.held) +
      sample(
        "mehdb_watches_unheld_total",
        "counter",
        `Watches answered at once because ${this.watches.max} were held already.`,
        this.watches.refused,
      )
    );
  }

  async #held(since: string, listing: Listing, deadline: number, res: ServerResponse): Promise<Reply> {
    const gone = new AbortController();
    const onClose = () => gone.abort();
    res.once("close", onClose);
    try {
      for (;;) {
        const left = Math.ceil(deadline - performance.now());
        const wake = left > 0 ? this.watches.hold(left, gone.signal) : null;
        const why = wake === null ? "timeout" : await wake; // null: past the bound, answered at once
        const changes = this.#changes(since, listing);
        // At shutdown the answer closes its connection, so that the server's close is not held by it.
        if (why === "closed") return { ...json(changes), headers: { Connection: "close" } };
        // A change outside the prefix lets the answer go with nothing in it: hold it again.
        if (why !== "change" || !nothingChanged(changes)) return json(changes);
      }
    } finally {
      res.off("close", onClose);
    }
  }

  #changes(since: string, { prefix, page }: Listing): Changes {
    return changesWithPrefix(this.#store.changes(since, page), prefix);
  }
}

function line(status: number, text: string, headers?: Record<string, string>): Reply {
  return { status, body: text, type: TEXT, headers };
}

function json(value: unknown): Reply {
  return { status: OK, body: JSON.stringify(value), type: JSON_TYPE };
}
