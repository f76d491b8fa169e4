/**
 * Test helpers: start mehdb as a real process on loopback, talk HTTP to it,
 * and stop it. Every process started here is killed by {@link stopAll}, which
 * each suite calls in its `after` hook.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { request } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root (where `src/main.ts` is). */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** A mehdb process started by {@link startMehdb}. */
export interface Mehdb {
  /** `http://127.0.0.1:PORT` */
  url: string;
  port: number;
  dataDir: string;
  child: ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Sends `signal` (default SIGTERM) and resolves with the exit code (or the signal's name). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | string>;
}

/** Options of {@link startMehdb}. */
export interface StartOptions {
  /** `MEHDB_HOST`: `mehdb-0` leads, `mehdb-1` follows. Default `mehdb-0`. */
  host?: string;
  /** Data directory. Default: a new temporary directory. */
  dataDir?: string;
  /** The leader a follower uses (`MEHDB_LEADER_URL`). */
  leaderUrl?: string;
  /** Port. Default 0: a free one, read from the start-up log. */
  port?: number;
  /** More environment. */
  env?: Record<string, string>;
  /** Wait for `GET /status?level=full` to answer 200 too. Default false. */
  waitReady?: boolean;
  /** A command that runs mehdb, such as `["prlimit", "--nofile=1024:1024", "--"]` (it must exec, so the pid stays mehdb's). Default none. */
  wrapper?: string[];
}

const running = new Set<ChildProcess>();
const tempDirs: string[] = [];

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
  const [command, ...args] = [...(options.wrapper ?? []), ...mehdbCommand()];
  const child = spawn(command, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  child.on("exit", () => running.delete(child));
  let text = "";
  child.stdout!.on("data", (chunk: Buffer) => (text += chunk));
  child.stderr!.on("data", (chunk: Buffer) => (text += chunk));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mehdb did not start within 15 s:\n${text}`)), 15_000);
    const check = () => {
      const match = /event=listening port=(\d+)/.exec(text);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    };
    child.stdout!.on("data", check);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`mehdb exited with ${code} before listening:\n${text}`));
    });
  });
  const url = `http://127.0.0.1:${port}`;
  const mehdb: Mehdb = {
    url,
    port,
    dataDir,
    child,
    output: () => text,
    stop: (signal = "SIGTERM", timeoutMs = 10_000) => stopProcess(child, signal, timeoutMs),
  };
  if (options.waitReady) await waitFor(async () => (await fetchText(`${url}/status?level=full`)).status === 200, `${url} ready`);
  return mehdb;
}

/** Sends `signal` and waits for the exit: the exit code, or the signal's name; SIGKILL after `timeoutMs`. */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM", timeoutMs = 10_000): Promise<number | string> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode!;
  const exited = once(child, "exit") as Promise<[number | null, string | null]>;
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [code, sig] = await exited;
  clearTimeout(timer);
  return code ?? sig!;
}

/** Kills every process these helpers started and removes their temporary directories. */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((child) => stopProcess(child, "SIGKILL")));
  await Promise.all(tempDirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
}

/** An HTTP answer, read whole. */
export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  text: string;
}

/** Sends one request (no keep-alive) and reads the whole answer. */
export function fetchText(
  url: string,
  options: { method?: string; body?: string | Buffer; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? "GET", headers: options.headers, agent: false, timeout: options.timeoutMs ?? 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString("utf8") });
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer from ${url} in time`)));
    req.on("error", reject);
    req.end(options.body);
  });
}

/** Polls `check` every 50 ms until it is true; fails after `timeoutMs` (default 15 s). */
export async function waitFor(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
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
