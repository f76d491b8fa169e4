/**
 * Listing keys and the leader's side of replication: `GET /keys` (the sorted
 * array of names; `?since=CURSOR`, the change feed, held up to `?wait=MS`
 * while nothing changed) and `GET /values?keys=a,b,c` (several values in one
 * answer, for a follower's catch-up).
 */
import { afterThen } from "./after.ts";
import {
  BAD_REQUEST,
  errorCode,
  OK,
  quote,
  refuse,
  send,
  SERVICE_UNAVAILABLE,
  type Exchange,
} from "./http.ts";
import { isValidKey, KEY_RULE } from "../keys.ts";
import {
  CURSOR_RULE,
  MAX_VALUES_KEYS,
  parseCursor,
  parseListingPage,
  valueLine,
  VALUES_TYPE,
  type Changes,
  type ListingPage,
} from "../protocol.ts";
import type { Store } from "../store/store.ts";
import { changesWithPrefix, isValidPrefix, MAX_WAIT_MS, nothingChanged, parseWait } from "./watch.ts";

/** What a change-feed request asks for beyond its cursor: names starting with `prefix`, and a page. */
interface Listing {
  since: string;
  prefix: string;
  page: ListingPage | undefined;
}

/**
 * `GET /keys`: the sorted JSON array of names; with `?since=CURSOR`, what changed since (held up to `?wait=MS`
 * while nothing did); `?prefix=P` keeps names starting with P; `?after=CURSOR` as for `/get/KEY`.
 */
export function listKeys(x: Exchange): void | Promise<void> {
  return afterThen(x, null, () => keys(x));
}

function keys(x: Exchange): void | Promise<void> {
  const { params } = x;
  const since = params.get("since");
  const prefix = params.get("prefix") ?? "";
  const waitText = params.get("wait");
  if (!isValidPrefix(prefix)) {
    const rule = `a prefix is empty or follows the key rule (${KEY_RULE})`;
    return refuse(x, BAD_REQUEST, `invalid prefix=${quote(prefix)}: ${rule}`);
  }
  const wait = waitText === null ? null : parseWait(waitText);
  if (waitText !== null && wait === null) {
    const rule = `a whole number of milliseconds from 1 to ${MAX_WAIT_MS}`;
    return refuse(x, BAD_REQUEST, `invalid wait=${quote(waitText)}: ${rule}`);
  }
  if (since === null) {
    if (wait !== null) {
      const why = "the cursor of the last answer, to wait for what comes after it";
      return refuse(x, BAD_REQUEST, `wait needs since=CURSOR: ${why}`);
    }
    return sendNames(x, prefix);
  }
  if (since !== "" && parseCursor(since) === null) {
    return refuse(x, BAD_REQUEST, `malformed since=${quote(since)}: ${CURSOR_RULE}, or empty for every key`);
  }
  const page = parseListingPage(params);
  if (typeof page === "string") return refuse(x, BAD_REQUEST, page);
  const listing = { since, prefix, page };
  const changes = changesOf(x.ctx.store, listing);
  if (wait === null || !nothingChanged(changes)) return sendChanges(x, listing, changes);
  return hold(x, listing, performance.now() + wait);
}

/**
 * Holds a change-feed answer with nothing in it until something under its prefix changes, its wait passes or
 * the server stops; `503` when every slot is taken. A client that ends its side of the connection (FIN, which
 * node:http does not report as the server allows half-open connections, or a reset) is never answered: its
 * slot and its connection are freed at once.
 */
async function hold(x: Exchange, listing: Listing, deadline: number): Promise<void> {
  const { watches, store } = x.ctx;
  const socket = x.req.socket;
  const gone = new AbortController();
  const onGone = () => gone.abort();
  socket.once("end", onGone).once("close", onGone);
  if (socket.readableEnded || socket.destroyed) gone.abort();
  try {
    for (;;) {
      const left = Math.ceil(deadline - performance.now());
      if (left <= 0) return sendChanges(x, listing, changesOf(store, listing));
      const wake = watches.hold(left, gone.signal);
      if (wake === null) {
        const text = `watch limit reached: ${watches.max} watches are held already; retry after 1 s`;
        return refuse(x, SERVICE_UNAVAILABLE, text, { "Retry-After": "1" });
      }
      const why = await wake;
      if (why === "gone") return void socket.destroy();
      const changes = changesOf(store, listing);
      // At shutdown the answer closes its connection, so that the server's close is not held by it.
      if (why === "closed") return sendChanges(x, listing, changes, { Connection: "close" });
      // A change outside the prefix lets the answer go with nothing in it: hold it again.
      if (why !== "change" || !nothingChanged(changes)) return sendChanges(x, listing, changes);
    }
  } finally {
    socket.off("end", onGone).off("close", onGone);
  }
}

/** Keys put together at a time in a full `/keys?since=` answer. */
const PAGE = 10_000;
/** Bytes of a `/values` answer gathered before they are written to the socket. */
const VALUES_WRITE_BYTES = 64 * 1024;

/** What changed for `listing`: without `limit`, the first page of an answer {@link sendChanges} completes. */
function changesOf(store: Store, { since, prefix, page }: Listing): Changes {
  return changesWithPrefix(store.changes(since, page ?? { limit: PAGE }), prefix);
}

/**
 * Answers with `first` ({@link changesOf}). Without `limit`, a full listing is still one answer, but put together
 * a page at a time within this one turn of the event loop (nothing changes meanwhile), so that a million keys never
 * live as objects at once; an incremental answer longer than a page comes as the full listing, as with `limit`.
 */
function sendChanges(x: Exchange, listing: Listing, first: Changes, headers?: Record<string, string>): void {
  if (listing.page || !first.full) return sendJson(x, first, headers);
  function* pages(): Generator<unknown[]> {
    let changes = first;
    yield changes.keys;
    while (changes.next) {
      changes = changesOf(x.ctx.store, { ...listing, page: { limit: PAGE, from: changes.next } });
      yield changes.keys;
    }
  }
  const head = `{"cursor":${JSON.stringify(first.cursor)},"full":true,"keys":[`;
  send(x, OK, joinPages(head, pages(), '],"deleted":[]}'), "application/json", headers);
}

/** The sorted JSON array of the names starting with `prefix`, made from the index's bytes (no string per name). */
function sendNames(x: Exchange, prefix: string): void {
  send(x, OK, x.ctx.store.listJson({ prefix }), "application/json");
}

/** `head`, the items of every page as one JSON list, `tail`: one buffer, no page kept as objects once written. */
function joinPages(head: string, pages: Iterable<unknown[]>, tail: string): Buffer {
  const parts = [Buffer.from(head)];
  for (const page of pages) {
    if (page.length > 0) parts.push(Buffer.from(`${parts.length > 1 ? "," : ""}${JSON.stringify(page).slice(1, -1)}`));
  }
  parts.push(Buffer.from(tail));
  return Buffer.concat(parts);
}

function sendJson(x: Exchange, value: unknown, headers?: Record<string, string>): void {
  send(x, OK, JSON.stringify(value), "application/json", headers);
}

/** `GET /values?keys=a,b,c`: several values in one answer, for a follower's catch-up (format: `protocol.ts`). */
export async function sendValues(x: Exchange): Promise<void> {
  const { req, res, ctx } = x;
  const keys = (x.params.get("keys") ?? "").split(",");
  if (keys.length > MAX_VALUES_KEYS || !keys.every(isValidKey)) {
    return refuse(x, BAD_REQUEST, `keys must be 1-${MAX_VALUES_KEYS} keys separated by commas; ${KEY_RULE}`);
  }
  res.writeHead(OK, { "Content-Type": VALUES_TYPE });
  ctx.metrics.count(x.route, OK);
  if (req.method === "HEAD") return void res.end();
  // Small values are gathered and sent VALUES_WRITE_BYTES at a time: one socket write per value cost the leader
  // two system calls per key and the follower as many reads.
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const write = async (bytes: Buffer, flush = false) => {
    pending.push(bytes);
    pendingBytes += bytes.length;
    if (!flush && pendingBytes < VALUES_WRITE_BYTES) return;
    const chunk = Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    if (!res.write(chunk)) await new Promise((resolve) => res.once("drain", resolve).once("close", resolve));
  };
  try {
    for (const key of keys) {
      if (res.destroyed) return;
      const value = await ctx.store.get(key, { cache: false }); // a catch-up would push the hot values out
      await write(Buffer.from(valueLine(key, value?.entry ?? null), "latin1"));
      if (value === null) continue;
      if (value.body) await write(value.body);
      else for await (const chunk of value.stream) await write(chunk as Buffer, true);
    }
    res.end(Buffer.concat(pending, pendingBytes));
  } catch (error) {
    ctx.log("error", { op: "values", error: errorCode(error) });
    res.destroy();
  }
}
