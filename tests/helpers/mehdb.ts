/**
 * What a test starts, and {@link stopAll} to stop it (each suite calls it in
 * its `after` hook): mehdb as a real process on loopback ({@link startMehdb},
 * {@link startFollower}, {@link runMehdb}), temporary directories, local HTTP
 * servers ({@link listen}), and any other clean-up ({@link onStopAll}). Also
 * free ports and what `/proc` tells about a process.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import type { Server } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import { mountTmpfs, run, unmount, type RunResult } from "./commands.ts";
import { closeKeepAlive, http } from "./http.ts";
import { waitFor } from "./wait.ts";

/** The repository's root (where `src/main.ts` is). */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** A mehdb process started by {@link startMehdb}. */
export interface Mehdb {
  /** `http://127.0.0.1:PORT` */
  url: string;
  port: number;
  pid: number;
  dataDir: string;
  child: ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Its log lines of `event` so far (`… event=EVENT …`). */
  logLines(event: string): string[];
  /** Sends `signal` (default SIGTERM) and resolves with the exit code (or the signal's name). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | string>;
}

/** Options of {@link startMehdb}. */
export interface StartOptions {
  /** `MEHDB_HOST`: `mehdb-0` leads, `mehdb-1` follows. Default `mehdb-0`. */
  host?: string;
  /** Data directory. Default: a new temporary directory. */
  dataDir?: string;
  /** The leader a follower uses (`MEHDB_LEADER_URL`). Default none. */
  leaderUrl?: string;
  /** Port. Default 0: a free one, read from the start-up log. */
  port?: number;
  /** More environment. Default none. */
  env?: Record<string, string>;
  /** Wait for `GET /status?level=full` to answer 200 too. Default false. */
  waitReady?: boolean;
  /**
   * Wait for the store to be open (its `store-open` log line): mehdb listens first and answers 503 on key routes
   * until then. Default true.
   */
  waitOpen?: boolean;
  /**
   * A command that runs mehdb, such as `["prlimit", "--nofile=1024:1024", "--"]` (it must exec, so the pid
   * stays mehdb's). Default none.
   */
  wrapper?: string[];
}

const running = new Set<ChildProcess>();
const tempDirs: string[] = [];
const cleanups: (() => unknown)[] = [];

/** A new temporary directory, removed by {@link stopAll}. */
export async function tempDir(prefix = "mehdb-test-"): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

/** The command line that runs mehdb from source on this Node (tsx's loader). */
export function mehdbCommand(): string[] {
  return [process.execPath, "--import", "tsx", join(ROOT, "src/main.ts")];
}

/** Starts mehdb and resolves once it listens (and is ready, with `waitReady`). */
export async function startMehdb(options: StartOptions = {}): Promise<Mehdb> {
  const dataDir = options.dataDir ?? await tempDir();
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "",
    MEHDB_HOST: options.host ?? "mehdb-0",
    MEHDB_PORT: String(options.port ?? 0),
    MEHDB_LISTEN: "127.0.0.1",
    MEHDB_DATADIR: dataDir,
    ...(options.leaderUrl ? { MEHDB_LEADER_URL: options.leaderUrl } : {}),
    ...options.env,
  };
  const [command = "", ...args] = [...(options.wrapper ?? []), ...mehdbCommand()];
  const child = spawn(command, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  child.on("exit", () => running.delete(child));
  let text = "";
  child.stdout.on("data", (chunk: Buffer) => (text += chunk));
  child.stderr.on("data", (chunk: Buffer) => (text += chunk));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mehdb did not start within 15 s:\n${text}`)), 15_000);
    const check = () => {
      const match = /event=listening port=(\d+)/.exec(text);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    };
    child.stdout.on("data", check);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`mehdb exited with ${code} before listening:\n${text}`));
    });
  });
  if (child.pid === undefined) throw new Error("mehdb listens but has no pid");
  if (options.waitOpen !== false) {
    await waitFor(() => / event=store-open /.test(text) || child.exitCode !== null, "the store to open", 60_000, 10);
  }
  const url = `http://127.0.0.1:${port}`;
  const mehdb: Mehdb = {
    url,
    port,
    pid: child.pid,
    dataDir,
    child,
    output: () => text,
    logLines: (event) => {
      return text.split("\n").filter((line) => line.includes(` event=${event} `) || line.endsWith(` event=${event}`));
    },
    stop: (signal = "SIGTERM", timeoutMs = 10_000) => stopProcess(child, signal, timeoutMs),
  };
  if (options.waitReady) {
    await waitFor(async () => (await http(`${url}/status?level=full`)).status === 200, `${url} ready`);
  }
  return mehdb;
}

/** Starts a follower of `leaderUrl`: {@link startMehdb} with host `mehdb-1` and a 100 ms poll unless `options` say. */
export function startFollower(leaderUrl: string, options: StartOptions = {}): Promise<Mehdb> {
  return startMehdb({ host: "mehdb-1", leaderUrl, ...options, env: { MEHDB_SYNC_INTERVAL_MS: "100", ...options.env } });
}

/**
 * Runs mehdb from source with `env` (and this `PATH`) until it exits, for the starts that must fail: how it
 * ended and what it printed. SIGKILL after `timeoutMs` (default 20 s).
 */
export function runMehdb(env: Record<string, string>, timeoutMs = 20_000): Promise<RunResult> {
  const [command = "", ...args] = mehdbCommand();
  return run(command, args, { cwd: ROOT, env: { PATH: process.env.PATH ?? "", ...env }, timeoutMs });
}

/** Sends `signal` and waits for the exit: the exit code, or the signal's name; SIGKILL after `timeoutMs`. */
export async function stopProcess(
  child: ChildProcess,
  signal: NodeJS.Signals = "SIGTERM",
  timeoutMs = 10_000,
): Promise<number | string> {
  const exited = (): number | string | null => child.exitCode ?? child.signalCode;
  const already = exited();
  if (already !== null) return already;
  const exit = once(child, "exit");
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  await exit;
  clearTimeout(timer);
  return exited() ?? "unknown";
}

/** Listens with `server` on a free port of 127.0.0.1 until {@link stopAll}; resolves with `http://127.0.0.1:PORT`. */
export async function listen(server: Server): Promise<string> {
  onStopAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  if (typeof address !== "object" || address === null) throw new Error("the server has no port");
  return `http://127.0.0.1:${address.port}`;
}

/** Registers a clean-up for {@link stopAll}, which runs them after stopping the processes, newest first. */
export function onStopAll(cleanup: () => unknown): void {
  cleanups.push(cleanup);
}

/**
 * Kills every process these helpers started, runs the clean-ups of {@link onStopAll} (closing local servers
 * among them), closes the HTTP client's keep-alive connections, and removes the temporary directories.
 */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((child) => stopProcess(child, "SIGKILL")));
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  closeKeepAlive();
  await Promise.all(tempDirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
}

/** A TCP port on 127.0.0.1 that was free a moment ago (for a process that starts later). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (typeof address !== "object" || address === null) throw new Error("no port");
  return address.port;
}

/** A memory figure of a process in KiB (`VmRSS`: resident now; `VmHWM`: its peak), or `null` once it is gone. */
export async function memoryKiB(pid: number, field: "VmRSS" | "VmHWM" = "VmRSS"): Promise<number | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/** How many files (descriptors) a process holds open now; `self` is this process. */
export async function openFiles(pid: number | "self"): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/** A new directory with a tmpfs of `size` mounted on it until stopAll; `null` once `t` is skipped, saying why. */
export async function tmpfsDir(t: TestContext, size: string): Promise<string | null> {
  const disk = join(await tempDir(), "disk");
  await mkdir(disk);
  const failed = await mountTmpfs(disk, size);
  if (failed !== null) {
    t.skip(`cannot mount a tmpfs here (${failed})`);
    return null;
  }
  onStopAll(() => unmount(disk));
  return disk;
}
