/**
 * HTTP helpers for the benchmark's own requests (setup, probes, readiness):
 * a keep-alive client to 127.0.0.1 and readiness polling ({@link pollUntil}; the
 * suites' condition wait is tests/helpers/wait.ts' waitFor).
 */

import { Agent, request as httpRequest } from "node:http";
import type { Child } from "./procs.ts";
import { tail } from "./procs.ts";
import { sleep } from "../helpers/wait.ts";

const agent = new Agent({ keepAlive: true, maxSockets: 16 });

/** A response read whole. */
export interface Reply {
  status: number;
  body: Buffer;
}

/** One request to 127.0.0.1:port (keep-alive); rejects after `timeoutMs`. */
export function req(
  port: number,
  method: string,
  path: string,
  body?: Buffer | string,
  timeoutMs = 10_000,
): Promise<Reply> {
  return new Promise((res, rej) => {
    const r = httpRequest({ host: "127.0.0.1", port, method, path, agent, timeout: timeoutMs }, (resp) => {
      const chunks: Buffer[] = [];
      resp.on("data", (c: Buffer) => chunks.push(c));
      resp.on("end", () => res({ status: resp.statusCode ?? 0, body: Buffer.concat(chunks) }));
      resp.on("error", rej);
    });
    r.on("timeout", () => r.destroy(new Error(`${method} ${path}: timeout after ${timeoutMs} ms`)));
    r.on("error", rej);
    r.end(body);
  });
}


/** The key count in a `/status?level=full` body (the first integer in it), or null. */
export function keyCount(body: string): number | null {
  const m = /(\d+)/.exec(body);
  return m ? Number(m[1]) : null;
}

/**
 * Polls `GET path` on the child's port until `accept(reply)` holds; resolves with the
 * milliseconds since the child was started. Throws on timeout or exit. Polls every
 * 10 ms at first, then every 1 % of the time elapsed (at most 100 ms), so that long
 * waits (a catch-up) are not slowed by the probes (a readiness probe writes a file).
 */
export async function pollUntil(
  child: Child,
  port: number,
  path: string,
  accept: (r: Reply) => boolean,
  timeoutMs: number,
): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  let last = "no answer";
  while (performance.now() < deadline) {
    if (!child.isRunning()) throw new Error(`${child.name} exited before ready (${last}):\n${tail(child)}`);
    try {
      const r = await req(port, "GET", path, undefined, 2000);
      if (accept(r)) return performance.now() - child.startedAt;
      last = `${r.status} ${r.body.toString("utf8").trim().slice(0, 120)}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await sleep(Math.min(100, Math.max(10, (performance.now() - child.startedAt) / 100)));
  }
  throw new Error(`${child.name}: not ready after ${timeoutMs} ms (last: ${last}):\n${tail(child)}`);
}

/** Waits for `GET /status?level=full` → 200 (and at least `minKeys` keys); ms since start. */
export function waitReady(child: Child, port: number, timeoutMs: number, minKeys = 0): Promise<number> {
  return pollUntil(
    child,
    port,
    "/status?level=full",
    (r) => r.status === 200 && (minKeys === 0 || (keyCount(r.body.toString("utf8")) ?? -1) >= minKeys),
    timeoutMs,
  );
}
