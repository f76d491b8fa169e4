/**
 * Replication figures: lag from a PUT acknowledged by the leader to the value
 * readable on the follower, and the cost of an idle tick (requests and bytes,
 * seen by a counting proxy between follower and leader).
 */

import { randomBytes } from "node:crypto";
import type { Node } from "./mehdb.ts";
import type { CountingProxy } from "../helpers/proxy.ts";
import { sleep } from "../helpers/wait.ts";
import { req } from "./http.ts";
import { percentile } from "./stats.ts";

/** Lag percentiles over `samples` probes, in ms. */
export interface LagResult {
  samples: number;
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  timeouts: number;
}

/** One probe: PUT a fresh value on the leader, then poll the follower until it reads it. */
async function probe(
  leader: Node,
  follower: Node,
  key: string,
  timeoutMs: number,
  pollMs: number,
): Promise<number | null> {
  const value = randomBytes(12).toString("hex");
  const put = await req(leader.port, "PUT", `/set/${key}`, value);
  if (put.status !== 200) throw new Error(`lag probe: PUT ${key} answered ${put.status}`);
  const acked = performance.now();
  const deadline = acked + timeoutMs;
  while (performance.now() < deadline) {
    const r = await req(follower.port, "GET", `/get/${key}`);
    if (r.status === 200 && r.body.toString("utf8") === value) return performance.now() - acked;
    await sleep(pollMs);
  }
  return null;
}

/**
 * Measures replication lag with `samples` probes started at random phases of the
 * sync interval (gaps uniform in [0, 2/3 interval)), a few in flight at once,
 * each polling the follower every `pollMs`.
 */
export async function measureLag(
  leader: Node,
  follower: Node,
  samples: number,
  intervalMs: number,
  pollMs = 5,
): Promise<LagResult> {
  const tag = randomBytes(3).toString("hex");
  const timeoutMs = intervalMs * 10 + 10_000;
  const probes: Promise<number | null>[] = [];
  for (let i = 0; i < samples; i++) {
    probes.push(probe(leader, follower, `lag-${tag}-${i}`, timeoutMs, pollMs));
    await sleep(Math.random() * ((2 * intervalMs) / 3));
  }
  const results = await Promise.all(probes);
  const lags = results.filter((v): v is number => v !== null);
  return {
    samples,
    p50Ms: percentile(lags, 50),
    p99Ms: percentile(lags, 99),
    maxMs: lags.length ? Math.max(...lags) : null,
    timeouts: results.length - lags.length,
  };
}

/** Requests and bytes per idle tick. */
export interface IdleResult {
  windowMs: number;
  ticks: number;
  requests: number;
  bytes: number;
  requestsPerTick: number | null;
  bytesPerTick: number | null;
  /** The distinct requests seen (method and path without query values), for the report. */
  requestKinds: string[];
}

/**
 * Watches the proxy for `ticks` sync intervals while nothing is written. Ticks are
 * counted as bursts of requests (a gap over half an interval starts a new one),
 * bounded below by one per elapsed interval minus one, so a silent tick still counts.
 */
export async function measureIdle(proxy: CountingProxy, intervalMs: number, ticks: number): Promise<IdleResult> {
  const seen = proxy.exchanges().length;
  const bytesBefore = proxy.bytes();
  const t0 = performance.now();
  await sleep(intervalMs * ticks);
  const windowMs = performance.now() - t0;
  const window = proxy.exchanges().slice(seen);
  const bytesAfter = proxy.bytes();
  let bursts = 0;
  let last = -Infinity;
  for (const { at } of window) {
    if (at - last > intervalMs / 2) bursts++;
    last = at;
  }
  const observed = Math.max(bursts, Math.floor(windowMs / intervalMs) - 1, 1);
  const requests = window.length;
  const bytes = bytesAfter.up + bytesAfter.down - bytesBefore.up - bytesBefore.down;
  const kinds = new Set(window.map((e) => e.requestLine.replace(/ HTTP\/1\.[01]$/, "").replace(/=[^&]*/g, "=…")));
  return {
    windowMs,
    ticks: observed,
    requests,
    bytes,
    requestsPerTick: requests / observed,
    bytesPerTick: bytes / observed,
    requestKinds: [...kinds],
  };
}
