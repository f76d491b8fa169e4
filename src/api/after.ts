/**
 * Read-your-writes, in one place: `?after=CURSOR` on `GET|HEAD /get/KEY` and `GET /keys`.
 *
 *     malformed cursor   400, on any pod
 *     leader             answers when the cursor is of its epoch and not past its last change; else 409
 *     follower           answers from its copy when its last complete sync reached the cursor and it holds every
 *                        key the request reads; else waits for its next sync (one that starts within a second,
 *                        and never past max(interval + 500 ms, 1 500 ms) in all), then answers from its copy or
 *                        307s to the same path and query on the leader
 *
 * A key the follower cannot hold (too large for it, something in its way on disk) is a 307 at once: no sync
 * changes that before the next full reconcile.
 */
import { BAD_REQUEST, CONFLICT, quote, refuse, TEMPORARY_REDIRECT, type Exchange } from "./http.ts";
import { CURSOR_RULE, parseCursor, type Cursor, type PollerState } from "../protocol.ts";

/** How long a follower behind the cursor waits for a sync to start. */
const SYNC_START_MS = 1_000;

/**
 * Answers `?after=` of a read first (`400`, the leader's `409`, a follower's `307`), else goes on with `next`.
 * `key`: the key the request reads (checked), or `null` for `/keys`, which reads every key.
 */
export function afterThen(x: Exchange, key: string | null, next: () => void | Promise<void>): void | Promise<void> {
  const params = x.params;
  const after = params.get("after");
  if (after === null) return next();
  const cursor = parseCursor(after);
  if (cursor === null) return refuse(x, BAD_REQUEST, `malformed after=${quote(after)}: ${CURSOR_RULE}`);
  const { poller, store } = x.ctx;
  if (poller === undefined) {
    const conflict = unvouched(after, cursor, store.cursor);
    return conflict === null ? next() : refuse(x, CONFLICT, conflict);
  }
  const holds = () => (key === null ? poller.holdsAll() : poller.holds(key));
  const cannotHold = key === null ? "this follower does not hold every key" : `this follower cannot hold ${key}`;
  if (poller.reached(after)) return holds() ? next() : redirect(x, key, params, cannotHold);
  return nextSync(poller).then(() => {
    if (!poller.reached(after)) return redirect(x, key, params, `this follower has not synced up to ${after} yet`);
    return holds() ? next() : redirect(x, key, params, cannotHold);
  });
}

/** On the leader: why it cannot vouch for `cursor` (now at `current`), one line; `null` when it can. */
function unvouched(after: string, cursor: Cursor, current: string): string | null {
  const now = parseCursor(current);
  const which =
    cursor.epoch !== now?.epoch
      ? `it is of epoch ${cursor.epoch}, this leader's is ${now?.epoch} (it restarted or its data was replaced since)`
      : cursor.seq > now.seq
        ? `this leader's last change is ${current}`
        : null;
  return which && `cannot vouch for after=${after}: ${which}; read without after= for the current value`;
}

/**
 * Resolves when the follower's next sync that starts within {@link SYNC_START_MS} has ended, or when none
 * started, or at max(interval + 500 ms, 1 500 ms), whatever the leader does.
 */
function nextSync(poller: PollerState): Promise<void> {
  return new Promise((resolve) => {
    const bound = setTimeout(resolve, Math.max(poller.intervalMs + 500, 1_500));
    void poller.nextSync(SYNC_START_MS).then(() => {
      clearTimeout(bound);
      resolve();
    });
  });
}

/** A follower's `307` to the same path and query on the leader, saying `why` in its line. */
function redirect(x: Exchange, key: string | null, params: URLSearchParams, why: string): void {
  const location = `${x.ctx.leaderUrl}${key === null ? "/keys" : `/get/${key}`}?${params.toString()}`;
  refuse(x, TEMPORARY_REDIRECT, `${why}; read from the leader at ${location}`, { Location: location });
}
