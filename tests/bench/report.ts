/**
 * The results of a bench run: their JSON shape, the target checks, the table
 * printed on stdout, and the list of figures every run must produce.
 */

import type { LagResult, IdleResult } from "./replication.ts";
import { ratio, round } from "./stats.ts";

/** Throughput and latency of one workload: medians over the repetitions. */
/** A mixed load's figures: seconds of each part (random GETs, random PUTs, random GETs) and the rates reached. */
export interface MixedLoad {
  seconds: number;
  getRps: number | null;
  putRps: number | null;
  getAgainRps: number | null;
  failures: number;
}

export interface Throughput {
  rps: number | null;
  p50Ms: number | null;
  p99Ms: number | null;
  /** req/s of each repetition. */
  runs: number[];
  /** Connection errors plus non-2xx answers, summed over the repetitions. */
  failures: number;
}

/** One workload against mehdb, with its ceiling and (PUT) its fsync baseline. */
export interface Workload {
  label: string;
  mehdb: Throughput;
  ceiling: Throughput;
  /** Median over the repetitions of mehdb's rate / the ceiling's rate in the same repetition. */
  ratioToCeiling: number | null;
  /** PUT only: the fsync loop with the same value size, and the ratio to it. */
  fsync?: { opsPerSec: number | null; p50Ms: number | null; p99Ms: number | null; runs: number[] };
  ratioToFsync?: number | null;
  /**
   * GET only: CPU time (user + system) of each server per request answered, µs (medians), and the
   * median per-repetition ratio ceiling / mehdb (like the req/s ratio, higher is better). Steadier
   * than req/s when other work shares the machine.
   */
  cpu?: { mehdbUs: number | null; ceilingUs: number | null; ratio: number | null };
  /** Pinned to CPUs (servers on CPU 0, load on the others), or not (as in a pod). */
  pinned?: boolean;
}

/** `--read-token`: GET on a second leader with a read token, in the same repetitions as `get`. */
export interface ReadTokenWorkload extends Workload {
  /** Median over the repetitions of (leader with a read token) / (leader without) req/s. */
  ratioToPlain: number | null;
  /** req/s with / without the token, per repetition. */
  ratiosToPlain: (number | null)[];
}

/** One checked target. */
export interface Target {
  name: string;
  value: number | null;
  target: string;
  /** null when the run was too small to judge it (quick runs) or the figure is missing. */
  pass: boolean | null;
}

/** Everything a run measures; written as JSON. */
export interface Results {
  meta: Record<string, unknown>;
  /** GET of a cached value on a leader that has taken no write yet, unpinned. */
  get: Workload;
  /** The same, pinned (null with --no-pin or without taskset). */
  getPinned: Workload | null;
  /** `--read-token`: GET on a leader with a read token, in the same repetitions as `get`; else null. */
  getReadToken: ReadTokenWorkload | null;
  put50: Workload;
  put64k: Workload;
  /** GET of the same value on the same leader, each repetition right after a PUT burst, unpinned. */
  getAfterPut: Workload;
  /** The same, pinned (null with --no-pin or without taskset). */
  getAfterPutPinned: Workload | null;
  replication: {
    syncIntervalMs: number;
    keysStored: number;
    lag: LagResult | null;
    catchupSmall: { keys: number; seconds: number | null; runs: number[] } | null;
    catchupLarge: { keys: number; seconds: number | null } | null;
    /** The least a catch-up can take with one fsynced file per key: keys / the 50 B fsync-loop rate. */
    catchupFsyncBoundSeconds: number | null;
    restartReadySeconds: number | null;
    idle: IdleResult | null;
  };
  memory: {
    keys: number;
    /** The throughput leader right after start, holding nothing: the runtime's own share. */
    emptyLeaderRssMb: number | null;
    /** The leader right after start with `keys` on disk (index only, nothing read yet). */
    leaderRssAtReadyMb: number | null;
    /** The leader with `keys` keys after the mixed load: random GETs, random PUTs, random GETs (the target). */
    leaderAfterLoadRssMb: number | null;
    leaderAfterLoadPeakMb: number | null;
    /** The mixed load: seconds of each part and the rates reached. */
    mixedLoad: MixedLoad | null;
    /** Leader and follower after catch-up and the lag probes (values read and cached). */
    leaderRssMb: number | null;
    leaderPeakMb: number | null;
    followerRssMb: number | null;
    followerPeakMb: number | null;
  };
  startup: { keys: number; readyMs: number | null; runs: number[]; emptyReadyMs: number | null };
  targets: Target[];
  errors: string[];
}

/** Dotted paths of the figures that must be finite and positive in every run (the smoke test checks them). */
export const REQUIRED_FIGURES = [
  "get.mehdb.rps", "get.mehdb.p50Ms", "get.mehdb.p99Ms", "get.ceiling.rps", "get.ratioToCeiling",
  "get.cpu.mehdbUs", "get.cpu.ceilingUs", "get.cpu.ratio",
  "getAfterPut.mehdb.rps", "getAfterPut.ceiling.rps", "getAfterPut.ratioToCeiling", "getAfterPut.cpu.ratio",
  "put50.mehdb.rps", "put50.mehdb.p50Ms", "put50.mehdb.p99Ms", "put50.ceiling.rps", "put50.ratioToCeiling",
  "put50.fsync.opsPerSec", "put50.ratioToFsync",
  "put64k.mehdb.rps", "put64k.mehdb.p50Ms", "put64k.mehdb.p99Ms", "put64k.ceiling.rps", "put64k.ratioToCeiling",
  "put64k.fsync.opsPerSec", "put64k.ratioToFsync",
  "replication.lag.p50Ms", "replication.lag.p99Ms",
  "replication.catchupSmall.seconds", "replication.catchupLarge.seconds", "replication.restartReadySeconds",
  "replication.idle.requestsPerTick", "replication.idle.bytesPerTick",
  "memory.leaderAfterLoadRssMb", "memory.mixedLoad.getRps", "memory.mixedLoad.putRps", "memory.mixedLoad.getAgainRps",
  "memory.leaderRssMb", "memory.followerRssMb", "memory.emptyLeaderRssMb", "memory.leaderRssAtReadyMb",
  "startup.readyMs", "startup.emptyReadyMs",
] as const;

/** The value at a dotted path of an object, or undefined. */
export function figure(obj: unknown, path: string): unknown {
  let v: unknown = obj;
  for (const part of path.split(".")) {
    v = v !== null && typeof v === "object" ? (v as Record<string, unknown>)[part] : undefined;
  }
  return v;
}

/** The figures a `--read-token` run must produce as well. */
export const READ_TOKEN_FIGURES = [
  "getReadToken.mehdb.rps", "getReadToken.mehdb.p50Ms", "getReadToken.mehdb.p99Ms", "getReadToken.ratioToCeiling",
  "getReadToken.ratioToPlain", "getReadToken.cpu.mehdbUs", "getReadToken.cpu.ratio",
] as const;

/** The required figures (and those of `--read-token` when `getReadToken` is set) missing, not finite, or not > 0. */
export function missingFigures(r: unknown): string[] {
  const paths: string[] = [...REQUIRED_FIGURES];
  if (figure(r, "getReadToken") != null) paths.push(...READ_TOKEN_FIGURES);
  return paths.filter((p) => {
    const v = figure(r, p);
    return typeof v !== "number" || !Number.isFinite(v) || v <= 0;
  });
}

/** The performance targets (tests/README.md, "Performance"), checked on `r`. */
export function checkTargets(r: Omit<Results, "targets">, fullScale: boolean): Target[] {
  const at = (v: number | null | undefined, ok: (v: number) => boolean, judge = true): boolean | null =>
    v == null || !judge ? null : ok(v);
  const interval = r.replication.syncIntervalMs;
  const lagP99 = r.replication.lag?.p99Ms ?? null;
  const large = r.replication.catchupLarge?.seconds ?? null;
  const bound = r.replication.catchupFsyncBoundSeconds;
  const catchupRatio = large !== null && bound !== null && large > 0 ? bound / large : null;
  return [
    {
      name: "GET / ceiling (unpinned)", value: r.get.ratioToCeiling, target: "≥ 0.85",
      pass: at(r.get.ratioToCeiling, (v) => v >= 0.85),
    },
    ...(r.getReadToken
      ? [{
        name: "GET with read token / without", value: r.getReadToken.ratioToPlain, target: "≥ 0.97",
        pass: at(r.getReadToken.ratioToPlain, (v) => v >= 0.97),
      }]
      : []),
    {
      name: "GET after writes / ceiling (unpinned)", value: r.getAfterPut.ratioToCeiling, target: "≥ 0.85",
      pass: at(r.getAfterPut.ratioToCeiling, (v) => v >= 0.85),
    },
    {
      name: "PUT 50 B / fsync loop", value: r.put50.ratioToFsync ?? null, target: "≥ 0.70",
      pass: at(r.put50.ratioToFsync, (v) => v >= 0.7),
    },
    {
      name: "PUT 64 KB / fsync loop", value: r.put64k.ratioToFsync ?? null, target: "≥ 0.70",
      pass: at(r.put64k.ratioToFsync, (v) => v >= 0.7),
    },
    {
      name: "replication lag p99 (ms)", value: lagP99, target: `≤ ${interval + 100} (interval + 100)`,
      pass: at(lagP99, (v) => v <= interval + 100, fullScale),
    },
    {
      name: "catch-up: fsync bound / time taken", value: catchupRatio, target: "≥ 0.85 (100 000 keys)",
      pass: at(catchupRatio, (v) => v >= 0.85, fullScale),
    },
    {
      name: "requests per idle tick", value: r.replication.idle?.requestsPerTick ?? null, target: "1",
      pass: at(r.replication.idle?.requestsPerTick, (v) => v <= 1.05),
    },
    {
      name: "leader RSS after mixed load (MB)", value: r.memory.leaderAfterLoadRssMb, target: "< 150 (100 000 keys)",
      pass: at(r.memory.leaderAfterLoadRssMb, (v) => v < 150, fullScale),
    },
    {
      name: "start-up to ready (ms)", value: r.startup.readyMs, target: "≤ 2000 (100 000 keys)",
      pass: at(r.startup.readyMs, (v) => v <= 2000, fullScale),
    },
  ];
}

const n = (v: number | null | undefined, digits = 0): string => {
  const x = round(v, digits);
  const fraction = { minimumFractionDigits: digits, maximumFractionDigits: digits };
  return x === null ? "—" : x.toLocaleString("en-US", fraction);
};
const pad = (s: string, w: number): string => (s.length >= w ? s : s + " ".repeat(w - s.length));
const lpad = (s: string, w: number): string => (s.length >= w ? s : " ".repeat(w - s.length) + s);

/** The table printed at the end of a run. */
export function formatTable(r: Results): string {
  const m = r.meta;
  const out: string[] = [];
  out.push(`mehdb bench — ${m.mode} run, ${m.date}`);
  out.push(`machine: ${m.cpus} × ${m.cpuModel}, ${m.memoryGb} GB, ${m.os}; ` +
    `node ${m.node} (servers ${m.serverNode}); ` +
    `load average ${String(m.loadAvgAtStart)} at start, ${String(m.loadAvgAtEnd)} at end`);
  out.push(`load: ${m.loadTool}, ${m.connections} connections, ${m.durationSeconds} s per run, ` +
    `${m.reps} repetition(s); rates are medians, ratios medians of the per-repetition ratios; ` +
    `data dirs under ${m.dataParent} (${m.dataFs})`);
  out.push("");
  const W = 46;
  out.push(`${pad("workload", W)}${lpad("req/s", 10)}${lpad("p50 ms", 9)}${lpad("p99 ms", 9)}` +
    `${lpad("ceiling/s", 11)}${lpad("ratio", 7)}${lpad("fsync/s", 9)}${lpad("ratio", 7)}`);
  const rows = [r.get, r.getReadToken, r.getPinned, r.put50, r.put64k, r.getAfterPut, r.getAfterPutPinned]
    .filter((w): w is Workload => w !== null);
  for (const w of rows) {
    out.push(
      `${pad(w.label, W)}${lpad(n(w.mehdb.rps), 10)}${lpad(n(w.mehdb.p50Ms, 2), 9)}${lpad(n(w.mehdb.p99Ms, 2), 9)}` +
        `${lpad(n(w.ceiling.rps), 11)}${lpad(n(w.ratioToCeiling, 2), 7)}` +
        (w.fsync ? `${lpad(n(w.fsync.opsPerSec), 9)}${lpad(n(w.ratioToFsync, 2), 7)}` : ""),
    );
  }
  for (const w of rows) {
    if (!w.cpu) continue;
    out.push(`${pad(`  CPU per GET, ${w.label.replace(/^GET \S+ B value, /, "")}`, W)}` +
      `mehdb ${n(w.cpu.mehdbUs, 1)} µs, ceiling ${n(w.cpu.ceilingUs, 1)} µs, ratio ${n(w.cpu.ratio, 2)}`);
  }
  const ceilingLatency = [r.get, r.put50, r.put64k].map((w) => `${n(w.ceiling.p50Ms, 2)}/${n(w.ceiling.p99Ms, 2)} ms`);
  out.push(`${pad("  ceiling latency p50/p99", W)}${ceilingLatency.join(", ")} (GET, PUT 50 B, PUT 64 KB)`);
  const fsyncLatency = [r.put50, r.put64k].map((w) => `${n(w.fsync?.p50Ms, 2)}/${n(w.fsync?.p99Ms, 2)} ms`);
  out.push(`${pad("  fsync loop p50/p99", W)}${fsyncLatency.join(", ")} (50 B, 64 KB; ${m.fsyncLoops} loops, no HTTP)`);
  if (r.getReadToken) {
    const t = r.getReadToken;
    out.push(`${pad("  read token: with / without", W)}req/s ${n(t.ratioToPlain, 3)} (per repetition ` +
      `${t.ratiosToPlain.map((v) => n(v, 3)).join(", ")}); ` +
      `CPU per GET ${n(ratio(r.get.cpu?.mehdbUs, t.cpu?.mehdbUs), 3)} ` +
      `(without / with); ratio to the ceiling ${n(t.ratioToCeiling, 3)} with, ${n(r.get.ratioToCeiling, 3)} without`);
  }
  const fails = rows.reduce((s, w) => s + w.mehdb.failures + w.ceiling.failures, 0);
  if (fails > 0) out.push(`  WARNING: ${fails} failed requests (errors or non-2xx) during the load runs`);
  out.push("");
  const rep = r.replication;
  out.push(`replication (sync interval ${rep.syncIntervalMs} ms, ${n(rep.keysStored)} keys stored):`);
  out.push(`  lag PUT ack → readable on follower   p50 ${n(rep.lag?.p50Ms, 1)} ms, p99 ${n(rep.lag?.p99Ms, 1)} ms, ` +
    `max ${n(rep.lag?.maxMs, 1)} ms (${rep.lag?.samples ?? 0} probes` +
    `${rep.lag?.timeouts ? `, ${rep.lag.timeouts} timed out` : ""})`);
  out.push(`  catch-up of a new follower           ${n(rep.catchupSmall?.keys)} keys: ` +
    `${n(rep.catchupSmall?.seconds, 2)} s; ` +
    `${n(rep.catchupLarge?.keys)} keys: ${n(rep.catchupLarge?.seconds, 2)} s (process start → all keys)`);
  out.push(`  fsync bound for ${n(rep.catchupLarge?.keys)} keys        ${n(rep.catchupFsyncBoundSeconds, 2)} s ` +
    "(keys / the 50 B fsync-loop rate: one fsynced file per key)");
  out.push(`  restart of a synced follower         ready in ${n(rep.restartReadySeconds, 2)} s ` +
    "(full reconcile, nothing to copy)");
  out.push(`  idle tick                            ${n(rep.idle?.requestsPerTick, 2)} requests, ` +
    `${n(rep.idle?.bytesPerTick)} bytes per tick (${rep.idle?.ticks ?? 0} ticks; ` +
    `${rep.idle?.requestKinds.join(", ") ?? "—"})`);
  const mix = r.memory.mixedLoad;
  const mem = r.memory;
  const indent = " ".repeat(37);
  out.push(`memory with ${n(mem.keys)} keys              leader RSS ${n(mem.leaderAfterLoadRssMb, 1)} MB ` +
    `(peak ${n(mem.leaderAfterLoadPeakMb, 1)}) after a mixed load: ` +
    `${mix?.seconds ?? "—"} s each of random GETs (${n(mix?.getRps)}/s), random PUTs (${n(mix?.putRps)}/s), ` +
    `random GETs (${n(mix?.getAgainRps)}/s)${mix?.failures ? `, ${mix.failures} failed` : ""}; ` +
    `node flags: ${String(m.serverNodeFlags) || "none"}`);
  out.push(`${indent}leader RSS ${n(mem.leaderRssMb, 1)} MB (peak ${n(mem.leaderPeakMb, 1)}), ` +
    `follower RSS ${n(mem.followerRssMb, 1)} MB (peak ${n(mem.followerPeakMb, 1)}) after catch-up and lag probes`);
  out.push(`${indent}leader RSS ${n(mem.leaderRssAtReadyMb, 1)} MB right after start with ${n(mem.keys)} keys; ` +
    `empty leader ${n(mem.emptyLeaderRssMb, 1)} MB (node + tsx share)`);
  out.push(`start-up to ready                    ${n(r.startup.keys)} keys: ${n(r.startup.readyMs)} ms; ` +
    `empty: ${n(r.startup.emptyReadyMs)} ms (spawn → /status?level=full 200)`);
  out.push(`note: the ${n(r.startup.keys)} and ${n(rep.catchupSmall?.keys)} stored keys ` +
    `(${m.prepopulatedValueBytes} B values) were written directly into the leaders' data dirs before start, not PUT`);
  out.push("");
  out.push("targets:");
  for (const t of r.targets) {
    const verdict = t.pass === null ? (t.value === null ? "missing" : "n/a at this scale") : t.pass ? "ok" : "MISSED";
    const digits = t.value !== null && Math.abs(t.value) < 10 ? 3 : 0;
    out.push(`  ${pad(t.name, 36)}${lpad(n(t.value, digits), 10)}  ${pad(t.target, 28)}${verdict}`);
  }
  if (r.errors.length) {
    out.push("");
    out.push("errors:");
    for (const e of r.errors) out.push(`  ${e.split("\n").join("\n  ")}`);
  }
  return out.join("\n");
}
