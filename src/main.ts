/**
 * mehdb's entry point: reads the configuration, opens the store, serves HTTP,
 * runs the follower's poller, and stops cleanly on SIGTERM or SIGINT.
 *
 *     npm start                                   # a standalone leader on ./data, port 9876
 *     MEHDB_HOST=mehdb-1 MEHDB_LEADER_URL=http://localhost:9876 MEHDB_PORT=9877 \
 *       MEHDB_DATADIR=./data/mehdb-1 npm start    # a follower of it
 */
import { once } from "node:events";
import type { Server } from "node:http";
import { hostname } from "node:os";
import { ConfigError, loadConfig, type Config } from "./config.ts";
import { createLogger, type Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { Followers } from "./api/followers.ts";
import type { Context } from "./api/http.ts";
import { createMehdbServer } from "./api/server.ts";
import { TokenFileError, Tokens } from "./api/tokens.ts";
import { Watches } from "./api/watch.ts";
import { Store } from "./store/store.ts";
import { Poller } from "./sync/poller.ts";

/** How long in-flight requests may take to finish after a stop signal. */
const SHUTDOWN_GRACE_MS = 5_000;

/** The checked configuration and the token files, or a one-line error and exit 2. */
async function configure(log: Logger): Promise<{ config: Config; tokens: Tokens | undefined }> {
  try {
    const config = loadConfig(process.env, hostname());
    const tokens = await Tokens.open({ writeFile: config.writeTokenFile, readFile: config.readTokenFile, log });
    return { config, tokens };
  } catch (error) {
    if (!(error instanceof ConfigError || error instanceof TokenFileError)) throw error;
    process.stderr.write(`mehdb: bad configuration: ${error.message}\n`);
    process.exit(2);
  }
}

async function main(log: Logger): Promise<void> {
  const { config, tokens } = await configure(log);

  // What is running so far; a stop signal may come at any point of the start-up.
  const parts: { store?: Store; server?: Server; poller?: Poller; watches?: Watches } = {};
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log("stop", { signal });
    const force = setTimeout(() => {
      log("stop-forced", { reason: `requests still open after ${SHUTDOWN_GRACE_MS} ms` });
      parts.server?.closeAllConnections();
    }, SHUTDOWN_GRACE_MS);
    force.unref();
    await parts.poller?.stop();
    parts.watches?.close(); // held watches are answered at once, so that the server's close is prompt
    const server = parts.server;
    if (server?.listening) {
      const closed = new Promise((resolve) => server.close(resolve));
      server.closeIdleConnections();
      await closed;
    }
    await parts.store?.close();
    tokens?.close();
    log("stopped", { signal });
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));

  log("start", { pid: process.pid, node: process.version, host: config.host, datadir: config.dataDir });
  log("role", {
    role: config.role,
    leader: config.leaderUrl ?? undefined,
    ignored_leader: config.ignoredLeaderUrl ?? undefined,
    reason: config.roleReason,
  });
  log("access", tokens?.describe() ?? { writes: "open", reads: "open" });

  // The server listens first and answers 503 on key routes while the store opens (store.opening).
  const store = new Store(config.dataDir, { cacheBytes: config.cacheBytes });
  parts.store = store;

  const poller =
    config.role === "follower" && config.leaderUrl !== null
      ? new Poller({
          store,
          leaderUrl: config.leaderUrl,
          intervalMs: config.syncIntervalMs,
          timeoutMs: config.syncTimeoutMs,
          maxValueBytes: config.maxValueBytes,
          log,
          host: config.host,
          authorization: () => tokens?.leaderAuthorization(),
        })
      : undefined;
  const ctx: Context = {
    store,
    role: config.role,
    leaderUrl: config.leaderUrl,
    maxValueBytes: config.maxValueBytes,
    log,
    poller,
    metrics: new Metrics(),
    access: tokens,
    host: config.host,
    followers: config.role === "leader" ? new Followers({ lag: (cursor) => store.changesSince(cursor) }) : null,
    watches: new Watches(() => store.nextChange()),
  };
  parts.watches = ctx.watches;
  const server = createMehdbServer(ctx);
  server.on("error", (error: NodeJS.ErrnoException) => {
    process.stderr.write(`mehdb: cannot listen on port ${config.port}: ${error.code ?? error.message}\n`);
    process.exit(1);
  });
  server.listen(config.port, config.listen);
  await once(server, "listening");
  parts.server = server;
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : config.port;
  log("listening", { port, address: config.listen ?? "*" });
  try {
    await store.open();
  } catch (error) {
    process.stderr.write(`mehdb: cannot open data directory ${config.dataDir}: ${(error as Error).message}\n`);
    process.exit(1);
  }
  log("store-open", { keys: store.count, epoch: store.epoch });
  if (stopping) return;
  parts.poller = poller;
  poller?.start();
}

await main(createLogger());
