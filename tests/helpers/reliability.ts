/**
 * Helpers of the reliability suites (crash, faults, bad input, soak): values
 * that carry their own checksum, whole-store snapshots over HTTP, free ports,
 * tmpfs mounts, resident memory of a process.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { request, Agent } from "node:http";
import { join } from "node:path";
import { waitFor } from "./mehdb.ts";

/**
 * A value that proves its own integrity: one header line
 * `mehdb-check id=ID len=N sha256=HEX\n` followed by N random bytes whose
 * SHA-256 is HEX. `id` names the write that produced it.
 */
export function checkedValue(id: string, size: number): Buffer {
  const payload = randomBytes(size);
  const sha = createHash("sha256").update(payload).digest("hex");
  return Buffer.concat([Buffer.from(`mehdb-check id=${id} len=${size} sha256=${sha}\n`), payload]);
}

/** The `id` of a value made by {@link checkedValue}, or why it is not one (torn, empty, foreign). */
export function verifyValue(value: Buffer): { ok: true; id: string } | { ok: false; reason: string } {
  if (value.length === 0) return { ok: false, reason: "empty value" };
  const newline = value.indexOf(10);
  if (newline < 0) return { ok: false, reason: `no header line in ${value.length} bytes` };
  const match = /^mehdb-check id=(\S+) len=(\d+) sha256=([0-9a-f]{64})$/.exec(value.subarray(0, newline).toString("latin1"));
  if (!match) return { ok: false, reason: `bad header ${JSON.stringify(value.subarray(0, Math.min(newline, 120)).toString("latin1"))}` };
  const payload = value.subarray(newline + 1);
  if (payload.length !== Number(match[2])) return { ok: false, reason: `torn: ${payload.length} of ${match[2]} bytes (id ${match[1]})` };
  if (createHash("sha256").update(payload).digest("hex") !== match[3]) return { ok: false, reason: `checksum mismatch (id ${match[1]})` };
  return { ok: true, id: match[1] };
}

const agent = new Agent({ keepAlive: true, maxSockets: 16 });

/** Requests {@link http} sent again because a pooled connection was closed under them (see there). */
export const staleRetries = { count: 0 };

/**
 * A small HTTP client over a shared keep-alive agent: status and body, or throws on network errors.
 *
 * A request sent on a pooled connection at the moment the server closes it as idle (its keep-alive
 * timeout) fails with ECONNRESET before the server saw it; Node documents this race under
 * `request.reusedSocket`, and the cure is the client's: send it again, once, on a new connection.
 * That is done here (and counted in {@link staleRetries}); a failure on a fresh connection is thrown.
 */
export async function http(
  url: string,
  options: { method?: string; body?: Buffer | string; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<{ status: number; body: Buffer; headers: Record<string, string | string[] | undefined> }> {
  try {
    return await httpOnce(url, options);
  } catch (error) {
    const { code, reused } = error as NodeJS.ErrnoException & { reused?: boolean };
    if (!reused || (code !== "ECONNRESET" && code !== "EPIPE")) throw error;
    staleRetries.count++;
    return await httpOnce(url, options);
  }
}

function httpOnce(
  url: string,
  options: { method?: string; body?: Buffer | string; headers?: Record<string, string>; timeoutMs?: number },
): Promise<{ status: number; body: Buffer; headers: Record<string, string | string[] | undefined> }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? "GET", agent, headers: options.headers, timeout: options.timeoutMs ?? 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), headers: res.headers }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer from ${url} in time`)));
    req.on("error", (error) => {
      const reused = req.reusedSocket;
      reject(Object.assign(error, { reused, message: `${options.method ?? "GET"} ${url}: ${error.message}${reused ? " (on a reused connection)" : ""}` }));
    });
    req.end(options.body);
  });
}

/** Closes the pooled connections of {@link http} (call in `after`). */
export function closeHttpAgent(): void {
  agent.destroy();
}

/** Every key and value of a server, read over HTTP: `GET /keys`, then `GET /get/KEY` for each. */
export async function snapshot(url: string): Promise<Map<string, Buffer>> {
  const listing = await http(`${url}/keys`);
  if (listing.status !== 200) throw new Error(`GET /keys answered ${listing.status}`);
  const keys = JSON.parse(listing.body.toString("utf8")) as string[];
  const values = new Map<string, Buffer>();
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < keys.length) {
      const key = keys[next++];
      const res = await http(`${url}/get/${key}`);
      if (res.status === 200) values.set(key, res.body);
      else if (res.status !== 404) throw new Error(`GET /get/${key} answered ${res.status}`);
    }
  }));
  return values;
}

/** The first difference between two snapshots, or `null` when they hold the same keys and bytes. */
export function difference(a: Map<string, Buffer>, b: Map<string, Buffer>): string | null {
  for (const [key, value] of a) {
    const other = b.get(key);
    if (!other) return `${key} missing`;
    if (!other.equals(value)) return `${key} differs (${value.length} vs ${other.length} bytes)`;
  }
  for (const key of b.keys()) if (!a.has(key)) return `${key} extra`;
  return null;
}

/** Waits until the follower at `followerUrl` holds exactly the leader's keys and bytes; fails with the last difference. */
export async function converged(leaderUrl: string, followerUrl: string, timeoutMs = 20_000): Promise<void> {
  let last: string | null = "not compared yet";
  await waitFor(async () => {
    last = difference(await snapshot(leaderUrl), await snapshot(followerUrl));
    return last === null;
  }, "the follower to converge", timeoutMs).catch((error: Error) => {
    throw new Error(`${error.message}: ${last}`);
  });
}

/** Every file in `dir` with its bytes (no recursion). */
export async function readDirFiles(dir: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  for (const name of await readdir(dir)) {
    try {
      files.set(name, await readFile(join(dir, name)));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error; // renamed away meanwhile
    }
  }
  return files;
}

/** Runs a command; resolves with its output, rejects with stderr in the message. */
export function run(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: 15_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(" ")}: ${(stderr || error.message).trim()}`));
      else resolve(stdout);
    });
  });
}

/** Mounts a tmpfs of `size` (e.g. `2m`) on `dir`; resolves `null`, or the reason it could not. */
export async function mountTmpfs(dir: string, size: string): Promise<string | null> {
  try {
    await run("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0755`, "tmpfs", dir]);
    return null;
  } catch (error) {
    return (error as Error).message;
  }
}

/** Unmounts `dir` (lazily if it is busy); never throws. */
export async function unmount(dir: string): Promise<void> {
  await run("umount", [dir]).catch(() => run("umount", ["-l", dir]).catch(() => {}));
}

/** Resident memory of a process in KiB (`VmRSS` of `/proc/PID/status`), or `null` when gone. */
export async function rssKiB(pid: number): Promise<number | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A number from `min` to `max`, inclusive. */
export function randomInt(min: number, max: number): number {
  return min + Math.floor(Math.random() * (max - min + 1));
}
