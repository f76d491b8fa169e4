/**
 * Starts mehdb as real processes (leader or follower) on 127.0.0.1, one
 * `node [FLAGS] --import tsx ENTRY` process each, so that its pid is the server's own,
 * with the Node flags users get: those of `npm start` (package.json), or those of the
 * image's CMD (Containerfile) when MEHDB_BENCH_NODE runs the servers on another Node.
 */

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Child } from "./procs.ts";
import { startTs } from "./procs.ts";
import { freePort, ROOT } from "../helpers/mehdb.ts";

/** A started mehdb node: its process, port and data directory. */
export interface Node {
  child: Child;
  port: number;
  dir: string;
}

/**
 * The Node options (`--name=value` words before the entry, other than tsx's `--import`) that
 * `npm start` passes, or, with MEHDB_BENCH_NODE set, those of the Containerfile's CMD; of the
 * checkout in `root` (default this one).
 */
export function serverNodeFlags(root = ROOT): string[] {
  if (process.env.MEHDB_BENCH_NODE) {
    const cmd = /^CMD\s+(\[.*\])\s*$/m.exec(readFileSync(join(root, "Containerfile"), "utf8"));
    const words = cmd?.[1] ? (JSON.parse(cmd[1]) as string[]) : [];
    return words.filter((w) => /^--[a-z-]+=\S+$/.test(w));
  }
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: { start: string } };
  return pkg.scripts.start.split(/\s+/).filter((w) => /^--[a-z-]+=\S+$/.test(w) && !w.startsWith("--import"));
}

/**
 * The environment `npm start` gives Node (its `NAME=value` words before `node`, such as glibc's
 * `MALLOC_MMAP_THRESHOLD_`; the image sets the same with `ENV`), of the checkout in `root` (default this one).
 */
export function serverNodeEnv(root = ROOT): Record<string, string> {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: { start: string } };
  const words = pkg.scripts.start.split(/\s+/);
  const env: Record<string, string> = {};
  for (const word of words.slice(0, words.indexOf("node"))) {
    const [name, value] = word.split("=", 2);
    if (name && value !== undefined) env[name] = value;
  }
  return env;
}

/** The version of the Node that runs the servers: MEHDB_BENCH_NODE's, else this process's. */
export function serverNodeVersion(): string {
  const node = process.env.MEHDB_BENCH_NODE;
  return node ? execFileSync(node, ["--version"], { encoding: "utf8" }).trim() : process.version;
}

/**
 * Starts a leader (MEHDB_HOST=mehdb-0) on a free port over `dir`; `nodeArgs` go to node (e.g. --cpu-prof);
 * pinned to `cpus` when given (default not pinned); `env` adds variables (default none).
 */
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
    ...serverNodeEnv(),
    MEHDB_HOST: "mehdb-0",
    MEHDB_PORT: String(port),
    MEHDB_DATADIR: dir,
    ...env,
  }, [...serverNodeFlags(), ...nodeArgs], cpus);
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
    ...serverNodeEnv(),
    MEHDB_HOST: "mehdb-1",
    MEHDB_PORT: String(port),
    MEHDB_DATADIR: dir,
    MEHDB_LEADER_URL: leaderUrl,
    MEHDB_SYNC_INTERVAL_MS: String(intervalMs),
  }, serverNodeFlags());
  return { child, port, dir };
}
