/**
 * The whole data set at once: `GET|HEAD /snapshot` streams a tar archive of
 * every key, consistent at the cursor of its `Mehdb-Cursor` header (on a
 * follower: the leader's cursor its last completed sync reached, taken between
 * two ticks); `PUT /snapshot` replaces the data set with an archive's, all or
 * nothing (leader only: the route table gives `GET` the read token, `PUT` the
 * write token and, on a follower, its `307`).
 */
import { Readable, pipeline } from "node:stream";
import {
  answer,
  BAD_REQUEST,
  errorCode,
  INSUFFICIENT_STORAGE,
  INTERNAL_SERVER_ERROR,
  OK,
  PRECONDITION_FAILED,
  refuse,
  send,
  SERVICE_UNAVAILABLE,
  type Exchange,
} from "./http.ts";
import { parseTagList, type TagList } from "./preconditions.ts";
import { CURSOR_HEADER } from "../protocol.ts";
import { BadArchiveError } from "../store/restore.ts";
import { RestorePreconditionError, SnapshotsBusyError, type SnapshotView } from "../store/snapshot.ts";

const TAR_TYPE = "application/x-tar";
/** Ticks a follower waits for one that leaves it exactly at a cursor of its leader. */
const FOLLOWER_ATTEMPTS = 20;
/** How long a follower waits for its next tick to start. */
const NEXT_SYNC_WAIT_MS = 2_000;

/**
 * `GET|HEAD /snapshot`: the archive (or, for `HEAD`, its headers), with the cursor it is consistent at. A follower
 * takes it between two ticks, after one whose copies were exactly the versions listed (it waits a few ticks for one).
 */
export async function getSnapshot(x: Exchange): Promise<void> {
  const { ctx, req, res } = x;
  const { poller, store } = ctx;
  if (poller?.unheld) {
    return refuse(x, SERVICE_UNAVAILABLE, `no complete snapshot on this follower: ${poller.unheld}; ask the leader`);
  }
  const cursor = () => (poller ? poller.heldCursor : store.cursor);
  let view: SnapshotView | null = null;
  for (let attempt = 1; view === null; attempt++) {
    if (poller) await poller.idle();
    if (req.method === "HEAD") {
      const at = cursor(); // read synchronously after the tick ended, as a snapshot would be taken
      if (at !== null) return send(x, OK, "", TAR_TYPE, { [CURSOR_HEADER]: at });
    } else {
      try {
        view = await store.snapshots.begin(cursor);
      } catch (error) {
        if (!(error instanceof SnapshotsBusyError)) throw error;
        return refuse(x, SERVICE_UNAVAILABLE, `${error.message}; try again shortly`, { "Retry-After": "1" });
      }
    }
    if (view !== null) break;
    if (!poller || attempt >= FOLLOWER_ATTEMPTS) return notInSync(x);
    await poller.nextSync(NEXT_SYNC_WAIT_MS);
  }
  const taken = view;
  res.writeHead(OK, { "Content-Type": TAR_TYPE, [CURSOR_HEADER]: taken.cursor });
  ctx.metrics.count(x.route, OK);
  ctx.log("snapshot", { keys: taken.count, cursor: taken.cursor });
  // A client that goes away ends the pipeline; the snapshot is closed even if its archive was never started.
  pipeline(Readable.from(taken.archive(), { objectMode: false }), res, (error) => {
    void taken.close();
    if (error && errorCode(error) !== "ERR_STREAM_PREMATURE_CLOSE") {
      ctx.log("error", { op: "snapshot", cursor: taken.cursor, error: errorCode(error) });
    } else if (!error) {
      ctx.log("snapshot-sent", { keys: taken.count - taken.missing, missing: taken.missing || undefined });
    }
  });
}

/** A follower that is not at a cursor of its leader: no consistent snapshot to give. */
function notInSync(x: Exchange): void {
  const why = x.ctx.poller?.lastError ?? "its leader's data kept changing under every sync, or it has not synced yet";
  refuse(x, SERVICE_UNAVAILABLE, `no consistent snapshot on this follower now (${why}); retry, or ask the leader`, {
    "Retry-After": "1",
  });
}

/** `PUT /snapshot`: replaces every key with the archive's; `200 RESTORE completed: N keys` with the new cursor. */
export async function putSnapshot(x: Exchange): Promise<void> {
  const { ctx, req, res } = x;
  const precondition = restorePrecondition(req.headers["if-match"], req.headers["if-none-match"]);
  if (typeof precondition === "string") return answer(x, { status: BAD_REQUEST, body: precondition });
  if (x.expectsContinue) res.writeContinue();
  try {
    const body = req.iterator({ destroyOnReturn: false });
    const done = await ctx.store.snapshots.restore(body, { maxValueBytes: ctx.maxValueBytes, precondition });
    send(x, OK, `RESTORE completed: ${done.count} keys\n`, undefined, { [CURSOR_HEADER]: done.cursor });
    ctx.log("restore", { keys: done.count, cursor: done.cursor });
  } catch (error) {
    if (req.destroyed && !req.complete) {
      return ctx.log("restore-aborted", { reason: "the client went away before the archive was complete" });
    }
    if (error instanceof BadArchiveError) return refuse(x, BAD_REQUEST, error.message);
    if (error instanceof RestorePreconditionError) return refuse(x, PRECONDITION_FAILED, error.message);
    const code = errorCode(error);
    ctx.log("error", { op: "restore", error: code });
    if (code === "ENOSPC" || code === "EDQUOT") {
      return refuse(x, INSUFFICIENT_STORAGE, "insufficient storage: the disk is full; nothing was changed");
    }
    refuse(x, INTERNAL_SERVER_ERROR, `restore failed: ${code}`);
  }
}

/**
 * `If-Match: "CURSOR"` (the data set is at that cursor; `*`: always) and `If-None-Match: *` (the store is empty;
 * a list: it is at none of those cursors), as a check for the restore; a one-line reason when malformed.
 */
function restorePrecondition(
  ifMatch: string | undefined,
  ifNoneMatch: string | undefined,
): string | undefined | ((now: { cursor: string; count: number }) => string | null) {
  if (ifMatch === undefined && ifNoneMatch === undefined) return undefined;
  const match = ifMatch === undefined ? null : parseTagList(ifMatch);
  const noneMatch = ifNoneMatch === undefined ? null : parseTagList(ifNoneMatch);
  if (isMalformed(match)) return `malformed If-Match: ${match.error}`;
  if (isMalformed(noneMatch)) return `malformed If-None-Match: ${noneMatch.error}`;
  const names = (list: TagList, cursor: string) =>
    list === "*" || list.some((tag) => !tag.weak && tag.opaque === `"${cursor}"`);
  return ({ cursor, count }) => {
    if (match !== null && !names(match, cursor)) {
      return `precondition failed: If-Match does not name the current cursor "${cursor}"; nothing was changed`;
    }
    if (noneMatch === "*" && count > 0) {
      return `precondition failed: If-None-Match: * and the store holds ${count} keys; nothing was changed`;
    }
    if (noneMatch !== null && noneMatch !== "*" && names(noneMatch, cursor)) {
      return `precondition failed: If-None-Match names the current cursor "${cursor}"; nothing was changed`;
    }
    return null;
  };
}

function isMalformed(parsed: TagList | { error: string } | null): parsed is { error: string } {
  return parsed !== null && typeof parsed === "object" && !Array.isArray(parsed);
}
