/**
 * mehdb's entry point: reads the configuration, opens the store, serves HTTP,
 * runs the follower's poller, and stops cleanly on SIGTERM or SIGINT.
 *
 *     npm start                                   # a standalone leader on ./data, port 9876
 *     MEHDB_HOST=mehdb-1 MEHDB_LEADER_URL=http://localhost:9876 MEHDB_PORT=9877 \
 *       MEHDB_DATADIR=./data/mehdb-1 npm start    # a follower of it
 */
import { once } from "node:events";
import { hostname } from "node:os";
import { ConfigError, loadConfig, type Config } from "./config.ts";
import { createLogger } from "./log.ts";
import { createMehdbServer } from "./server.ts";
import { Store } from "./store.ts";
import { Poller } from "./sync.ts";

/** How long in-flight requests may take to finish after a stop signal. */
const SHUTDOWN_GRACE_MS = 5_000;

const log = createLogger();

let config: Config;
try {
  config = loadConfig(process.env, hostname());
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  process.stderr.write(`mehdb: bad configuration: ${error.message}\n`);
  process.exit(2);
}

log("start", { pid: process.pid, node: process.version, host: config.host, datadir: config.dataDir });
log("role", { role: config.role, leader: config.leaderUrl ?? undefined, reason: config.roleReason });

let store: Store;
try {
  store = await Store.open(config.dataDir, { cacheBytes: config.cacheBytes });
} catch (error) {
  process.stderr.write(`mehdb: cannot open data directory ${config.dataDir}: ${(error as Error).message}\n`);
  process.exit(1);
}
log("store-open", { keys: store.count, bytes: store.bytes, epoch: store.epoch });

const poller = config.role === "follower" && config.leaderUrl !== null
  ? new Poller({ store, leaderUrl: config.leaderUrl, intervalMs: config.syncIntervalMs, timeoutMs: config.syncTimeoutMs, maxValueBytes: config.maxValueBytes, log })
  : undefined;

const server = createMehdbServer({
  store,
  role: config.role,
  leaderUrl: config.leaderUrl,
  maxValueBytes: config.maxValueBytes,
  log,
  replica: poller,
});

server.on("error", (error: NodeJS.ErrnoException) => {
  process.stderr.write(`mehdb: cannot listen on port ${config.port}: ${error.code ?? error.message}\n`);
  process.exit(1);
});
server.listen(config.port, config.listen);
await once(server, "listening");
const address = server.address();
log("listening", { port: typeof address === "object" && address ? address.port : config.port, address: config.listen ?? "*" });
poller?.start();

let stopping = false;
async function stop(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log("stop", { signal });
  const force = setTimeout(() => {
    log("stop-forced", { reason: `requests still open after ${SHUTDOWN_GRACE_MS} ms` });
    server.closeAllConnections();
  }, SHUTDOWN_GRACE_MS);
  force.unref();
  await poller?.stop();
  const closed = new Promise((resolve) => server.close(resolve));
  server.closeIdleConnections();
  await closed;
  await store.close();
  clearTimeout(force);
  log("stopped", { signal });
  process.exit(0);
}
process.on("SIGTERM", () => void stop("SIGTERM"));
process.on("SIGINT", () => void stop("SIGINT"));
