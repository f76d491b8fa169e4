/**
 * What probes and scrapers read: `GET /status` (liveness: the role),
 * `GET /status?level=full` (readiness: the key count, or `503` and why) and
 * `GET /metrics` (Prometheus text).
 */
import { OK, send, SERVICE_UNAVAILABLE, type Context, type Exchange } from "./http.ts";
import { metric } from "../metrics.ts";

/** `GET /status`: `leader` or `follower`; with `?level=full`, readiness. */
export function status(x: Exchange): void | Promise<void> {
  if (x.params.get("level") !== "full") return send(x, OK, `${x.ctx.role}\n`);
  return readiness(x);
}

/** `GET /metrics`: request counters, the store's gauges and a follower's poller's figures. */
export function metrics(x: Exchange): void {
  const { metrics, store, role, poller, followers, watches } = x.ctx;
  const text =
    metrics.render() +
    metric("mehdb_keys", "gauge", "Keys stored.", store.count) +
    metric("mehdb_bytes", "gauge", "Bytes of all values stored.", store.bytes) +
    metric("mehdb_leader", "gauge", "1 on the leader, 0 on a follower.", role === "leader" ? 1 : 0) +
    metric(
      "process_resident_memory_bytes",
      "gauge",
      "Resident memory of the process, in bytes.",
      process.memoryUsage.rss(),
    ) +
    (poller ? poller.metrics() : "") +
    (followers?.metrics() ?? "") +
    watches.metrics();
  send(x, OK, text, "text/plain; version=0.0.4; charset=utf-8");
}

async function readiness(x: Exchange): Promise<void> {
  const reason = await notReadyReason(x.ctx);
  if (reason !== null) return send(x, SERVICE_UNAVAILABLE, `not ready: ${reason}\n`);
  return send(x, OK, `${x.ctx.store.count} keys${pollerDetail(x.ctx)}${x.ctx.followers?.summary() ?? ""}\n`);
}

/** Why this node is not ready, in one line; `null` when it is. */
export async function notReadyReason({ store, poller, leaderUrl }: Context): Promise<string | null> {
  if (store.opening !== null) return store.opening;
  const unwritable = await store.probeWritable();
  if (unwritable !== null) return unwritable;
  if (poller && !poller.synced) {
    return `no complete sync with the leader at ${leaderUrl} yet${poller.lastError ? ` (${poller.lastError})` : ""}`;
  }
  return null;
}

function pollerDetail({ poller }: Context): string {
  if (!poller) return "";
  const age = poller.secondsSinceSync();
  const since = age === null ? "" : `, last sync ${age.toFixed(1)} s ago`;
  return `${since}${poller.lastError ? ` (${poller.lastError})` : ""}${poller.unheld ? `; ${poller.unheld}` : ""}`;
}
