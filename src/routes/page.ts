/** `GET /`: the status page, the node's state rendered by `page.ts`. */
import { OK, send, type Exchange } from "../http.ts";
import { renderPage } from "../page.ts";
import { notReadyReason } from "./health.ts";

/** `GET|HEAD /`: a small self-contained HTML page of this node and, on a leader, its followers. */
export async function statusPage(x: Exchange): Promise<void> {
  const { host, role, store, leaderUrl, poller, followers } = x.ctx;
  const page = renderPage({
    host,
    role,
    keys: store.count,
    bytes: store.bytes,
    notReady: await notReadyReason(x.ctx),
    leaderUrl,
    now: new Date(),
    secondsSinceSync: poller?.secondsSinceSync() ?? null,
    lastError: poller?.lastError ?? null,
    followers: followers?.list() ?? null,
  });
  send(x, OK, page, "text/html; charset=utf-8");
}
