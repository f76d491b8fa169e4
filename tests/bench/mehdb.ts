// Starts mehdb as real processes (leader or follower) on 127.0.0.1, one
// `node --import tsx ENTRY` process each, so that its pid is the server's own.

import type { Child } from "./procs.ts";
import { startTs } from "./procs.ts";
import { freePort } from "../helpers/mehdb.ts";

/** A started mehdb node: its process, port and data directory. */
export interface Node {
  child: Child;
  port: number;
  dir: string;
}

/** Starts a leader (MEHDB_HOST=mehdb-0) on a free port over `dir`; `nodeArgs` go to node (e.g. --cpu-prof); pinned to `cpus` when given; `env` adds variables. */
export async function startLeader(
  entry: string,
  dir: string,
  name = "leader",
  nodeArgs: string[] = [],
  cpus: string | null = null,
  env: Record<string, string> = {},
): Promise<Node> {
  const port = await freePort();
  const child = startTs(name, entry, [], {
    MEHDB_HOST: "mehdb-0",
    MEHDB_PORT: String(port),
    MEHDB_DATADIR: dir,
    ...env,
  }, nodeArgs, cpus);
  return { child, port, dir };
}

/** Starts a follower (MEHDB_HOST=mehdb-1) of the leader at `leaderUrl`, polling every `intervalMs`. */
export async function startFollower(
  entry: string,
  dir: string,
  leaderUrl: string,
  intervalMs: number,
  name = "follower",
): Promise<Node> {
  const port = await freePort();
  const child = startTs(name, entry, [], {
    MEHDB_HOST: "mehdb-1",
    MEHDB_PORT: String(port),
    MEHDB_DATADIR: dir,
    MEHDB_LEADER_URL: leaderUrl,
    MEHDB_SYNC_INTERVAL_MS: String(intervalMs),
  });
  return { child, port, dir };
}
