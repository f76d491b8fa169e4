/**
 * `npm run bench -- --scale[=N,N,...]`: how mehdb grows with its number of keys (10 000, 100 000 and
 * 1 000 000 unless given; values of 20-100 bytes, written straight into a fresh data dir). For each
 * size, a leader on `npm start`'s command: start → live (`GET /status` 200) and → ready
 * (`/status?level=full` 200), medians over --reps starts; resident memory once it is idle and after
 * the mixed load; bytes per key over an empty leader; `GET /keys` (median of 3, it must list every
 * key); then, unless --no-pod, the image in podman with the manifests' limits at that size (pod.ts,
 * leader only). `--root DIR` measures another checkout with this bench.
 */

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { freePort, ROOT } from "../helpers/mehdb.ts";
import { sleep } from "../helpers/wait.ts";
import { pollUntil, req } from "./http.ts";
import { runLoad, type LoadOptions, type LoadResult } from "./load.ts";
import { serverNodeEnv, serverNodeFlags } from "./mehdb.ts";
import type { Options } from "./options.ts";
import { emptyPodResults, runPod, type PodResults } from "./pod.ts";
import { flushToDisk, mixedLoadWorkloads, populatedKey } from "./populate.ts";
import { cpuSeconds, memoryMb, startTs, stopAll, stopProcess, tail, type Child } from "./procs.ts";
import type { MixedLoad } from "./report.ts";
import { median, round } from "./stats.ts";

/** Value size of the mixed load's PUTs (the populated values are 20-100 bytes). */
const PUT_VALUE_BYTES = 60;
/** `GET /keys` repetitions per size. */
const KEYS_REPS = 3;
const MiB = 1024 * 1024;

/** One size's figures (times in ms, memory in MB). */
export interface ScaleRow {
  keys: number;
  populateSeconds: number | null;
  liveMs: number | null;
  liveRuns: number[];
  readyMs: number | null;
  readyRuns: number[];
  /** Resident memory once the leader's CPU has gone quiet after ready (median over the starts). */
  rssIdleMb: number | null;
  rssAfterLoadMb: number | null;
  /** (RSS after the load − RSS of an empty leader) / keys. */
  bytesPerKey: number | null;
  /** (RSS idle − RSS of an empty leader) / keys: what the index itself takes. */
  bytesPerKeyIdle: number | null;
  keysListMs: number | null;
  keysListed: number | null;
  mixedLoad: MixedLoad | null;
  pod: PodResults | null;
  errors: string[];
}

/** The results of `--scale`. */
export interface ScaleResults {
  meta: Record<string, unknown>;
  emptyLeaderRssMb: number | null;
  rows: ScaleRow[];
}

/** Writes `n` keys (`pre-000042`) with values of 20-100 bytes into `dir`, then flushes them to disk; seconds taken. */
function populateVaried(dir: string, n: number): number {
  const t0 = performance.now();
  mkdirSync(dir, { recursive: true });
  const filler = "v".repeat(100);
  for (let i = 0; i < n; i++) {
    const key = populatedKey(i);
    writeFileSync(join(dir, key), `${key}:${filler}`.slice(0, 20 + ((i * 37) % 81)));
  }
  flushToDisk(dir);
  return (performance.now() - t0) / 1000;
}

/** Starts a leader of the checkout `root` over `dir`, with the Node flags and environment of its `npm start`. */
async function startLeaderOf(root: string, dir: string, name: string): Promise<{ child: Child; port: number }> {
  const port = await freePort();
  const env = { ...serverNodeEnv(root), MEHDB_HOST: "mehdb-0", MEHDB_PORT: String(port), MEHDB_DATADIR: dir };
  return { child: startTs(name, join(root, "src/main.ts"), [], env, serverNodeFlags(root)), port };
}

/** Waits until the process has used under 20 ms of CPU in a second (its start-up work done), at most `maxMs`. */
async function waitQuiet(pid: number, maxMs = 60_000): Promise<void> {
  const until = performance.now() + maxMs;
  let before = cpuSeconds(pid);
  while (performance.now() < until) {
    await sleep(1000);
    const now = cpuSeconds(pid);
    if (now === null || before === null || now - before < 0.02) return;
    before = now;
  }
}

/** One start over `dir`: ms to live and to ready, and the idle RSS; the leader is left running. */
async function timedStart(root: string, dir: string, name: string, timeoutMs: number) {
  const leader = await startLeaderOf(root, dir, name);
  const ok = (r: { status: number }): boolean => r.status === 200;
  const liveMs = await pollUntil(leader.child, leader.port, "/status", ok, timeoutMs);
  const readyMs = await pollUntil(leader.child, leader.port, "/status?level=full", ok, timeoutMs);
  await waitQuiet(leader.child.pid);
  return { ...leader, liveMs, readyMs, rssMb: memoryMb(leader.child.pid).rssMb };
}

/** RSS of a leader over an empty data dir, once idle. */
async function emptyLeaderRss(root: string, dir: string): Promise<number | null> {
  const l = await timedStart(root, dir, "leader-empty", 60_000);
  await stopProcess(l.child);
  return l.rssMb;
}

/** `GET /keys` KEYS_REPS times: the median ms, and how many keys the last answer listed. */
async function listKeys(port: number): Promise<{ ms: number | null; listed: number }> {
  const runs: number[] = [];
  let listed = -1;
  for (let i = 0; i < KEYS_REPS; i++) {
    const t0 = performance.now();
    const r = await req(port, "GET", "/keys", undefined, 120_000);
    runs.push(performance.now() - t0);
    if (r.status !== 200) throw new Error(`GET /keys answered ${r.status}: ${r.body.toString().slice(0, 200)}`);
    listed = (JSON.parse(r.body.toString("utf8")) as unknown[]).length;
  }
  return { ms: median(runs), listed };
}

/** The local part of one size into `row`: starts, `/keys`, the mixed load and the memory figures. */
async function measureLocal(o: Options, root: string, dir: string, row: ScaleRow, emptyMb: number | null,
  log: (msg: string) => void): Promise<void> {
  const timeoutMs = Math.max(120_000, row.keys / 5);
  const idle: Array<number | null> = [];
  for (let i = 0; i < o.reps; i++) {
    const l = await timedStart(root, dir, `leader-${row.keys}-${i}`, timeoutMs);
    row.liveRuns.push(round(l.liveMs, 0) ?? 0);
    row.readyRuns.push(round(l.readyMs, 0) ?? 0);
    idle.push(l.rssMb);
    log(`  start ${i + 1}/${o.reps}: live ${l.liveMs.toFixed(0)} ms, ready ${l.readyMs.toFixed(0)} ms, ` +
      `idle RSS ${l.rssMb?.toFixed(1)} MB`);
    if (i < o.reps - 1) {
      await stopProcess(l.child);
      continue;
    }
    const list = await listKeys(l.port);
    row.keysListMs = round(list.ms, 0);
    row.keysListed = list.listed;
    log(`  GET /keys: ${list.listed} keys in ${list.ms?.toFixed(0)} ms (median of ${KEYS_REPS})`);
    if (list.listed !== row.keys) row.errors.push(`GET /keys listed ${list.listed} keys, not ${row.keys}`);
    const mixBase: LoadOptions = {
      tool: o.load, port: l.port, connections: o.connections, threads: o.threads, seconds: o.mixSeconds,
      tmpDir: dirname(dir), cpus: null,
    };
    const runs: LoadResult[] = [];
    for (const w of mixedLoadWorkloads(row.keys, PUT_VALUE_BYTES, `scale-${row.keys}-`)) {
      const run = await runLoad(w, mixBase);
      runs.push(run);
      log(`  mixed load, ${w.name}: ${Math.round(run.rps)}/s${run.failureKinds ? ` (failed: ${run.failureKinds})` : ""}; ` +
        `RSS ${memoryMb(l.child.pid).rssMb?.toFixed(1)} MB`);
    }
    await sleep(500);
    if (!l.child.isRunning()) throw new Error(`the leader exited during the mixed load:\n${tail(l.child)}`);
    row.rssAfterLoadMb = round(memoryMb(l.child.pid).rssMb, 1);
    row.mixedLoad = {
      seconds: o.mixSeconds, getRps: runs[0]?.rps ?? null, putRps: runs[1]?.rps ?? null,
      getAgainRps: runs[2]?.rps ?? null, failures: runs.reduce((sum, m) => sum + m.errors + m.badStatus, 0),
    };
    await stopProcess(l.child);
  }
  row.liveMs = median(row.liveRuns);
  row.readyMs = median(row.readyRuns);
  row.rssIdleMb = round(median(idle), 1);
  const perKey = (mb: number | null): number | null =>
    mb === null || emptyMb === null ? null : Math.round(((mb - emptyMb) * MiB) / row.keys);
  row.bytesPerKey = perKey(row.rssAfterLoadMb);
  row.bytesPerKeyIdle = perKey(row.rssIdleMb);
}

function emptyRow(keys: number): ScaleRow {
  return {
    keys, populateSeconds: null, liveMs: null, liveRuns: [], readyMs: null, readyRuns: [], rssIdleMb: null,
    rssAfterLoadMb: null, bytesPerKey: null, bytesPerKeyIdle: null, keysListMs: null, keysListed: null, mixedLoad: null, pod: null,
    errors: [],
  };
}

/** Runs `--scale` into `r`, one size after the other; each size's data dir is removed after it. */
export async function runScale(o: Options, r: ScaleResults, log: (msg: string) => void): Promise<void> {
  const root = o.root ?? ROOT;
  const tmp = mkdtempSync(join(o.dir, "mehdb-bench-scale-"));
  // Ctrl-C outside a pod run (which cleans up after itself): stop the leaders, remove the data dirs.
  const stop = (): void => {
    void stopAll().finally(() => {
      rmSync(tmp, { recursive: true, force: true });
      process.exit(130);
    });
  };
  try {
    r.emptyLeaderRssMb = round(await emptyLeaderRss(root, join(tmp, "empty")), 1);
    log(`empty leader: RSS ${r.emptyLeaderRssMb} MB`);
    for (const keys of o.scale ?? []) {
      const row = emptyRow(keys);
      r.rows.push(row);
      const dir = join(tmp, `keys-${keys}`);
      log(`${keys} keys: writing the files into ${dir}`);
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      try {
        row.populateSeconds = round(populateVaried(dir, keys), 1);
        await measureLocal(o, root, dir, row, r.emptyLeaderRssMb, log);
      } catch (e) {
        row.errors.push((e as Error).message);
        log(`${keys} keys FAILED: ${(e as Error).message}`);
      } finally {
        await stopAll();
        rmSync(dir, { recursive: true, force: true });
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
      }
      if (!o.scalePod) continue;
      log(`${keys} keys: the image in podman`);
      row.pod = emptyPodResults(keys, { date: new Date().toISOString() });
      try {
        await runPod({ ...o, keys }, log, row.pod, false, root);
      } catch (e) {
        row.pod.errors.push((e as Error).message);
        log(`${keys} keys, pod FAILED: ${(e as Error).message}`);
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The pod column: how the image fared at that size. */
function podCell(p: PodResults | null): string {
  if (!p) return "not run";
  const f = p.leader;
  if (!f) return `failed: ${p.errors[0]?.split("\n")[0] ?? "?"}`;
  const live = p.leaderLiveSeconds === null ? "never live" : `live ${p.leaderLiveSeconds} s`;
  const ready = `${live}, ${p.leaderReadySeconds === null ? "never ready" : `ready ${p.leaderReadySeconds} s`}`;
  if (f.survived) return `${ready}, served the load; anon peak ${f.anonPeakMb} MB`;
  const why = [
    f.running ? "" : `exit ${f.exitCode}`,
    f.oomKills || f.oomKilledFlag || f.kernelOomLines.length ? "OOM-killed" : "",
    f.outputOomLines.some((l) => /heap out of memory/i.test(l)) ? "JavaScript heap out of memory"
      : f.outputOomLines.length ? `"${f.outputOomLines[0]?.trim().slice(0, 60)}"` : "",
  ].filter(Boolean);
  return `${ready}; DIED: ${why.join(", ")}`;
}

/** The table printed at the end of `--scale`, one row per size (the README's Performance table). */
export function formatScale(r: ScaleResults): string {
  const n = (v: number | null | undefined, digits = 0): string => (v == null ? "—" : v.toFixed(digits));
  const out = [
    `mehdb bench --scale — ${String(r.meta.date)}; node ${String(r.meta.node)}, ${String(r.meta.cpus)} CPUs, ` +
      `${String(r.meta.memoryGb)} GB; ${String(r.meta.command)}`,
    `leader: ${String(r.meta.serverCommand)}; checkout ${String(r.meta.root)}`,
    `values 20-100 B written straight into the data dir; live = GET /status 200, ready = /status?level=full 200 ` +
      `(medians of ${String(r.meta.reps)} starts); RSS idle once its CPU is quiet, after load = after random ` +
      `GETs, PUTs, GETs (${String(r.meta.mixSeconds)} s each); B/key = (after load − empty leader ` +
      `${n(r.emptyLeaderRssMb, 1)} MB) / keys (idle: the same with RSS idle)`,
    "",
    "| keys | start → live | start → ready | RSS idle | RSS after load | B/key (idle) | GET /keys | " +
      "pod (256Mi, 1 CPU) |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
  ];
  for (const row of r.rows) {
    out.push(`| ${row.keys.toLocaleString("en")} | ${n(row.liveMs)} ms | ${n(row.readyMs)} ms | ` +
      `${n(row.rssIdleMb)} MB | ${n(row.rssAfterLoadMb)} MB | ${n(row.bytesPerKey)} (${n(row.bytesPerKeyIdle)}) | ` +
      `${n(row.keysListMs)} ms | ` +
      `${podCell(row.pod)} |`);
  }
  const errors = r.rows.flatMap((row) => [
    ...row.errors.map((e) => `${row.keys} keys: ${e}`),
    ...(row.pod?.errors ?? []).map((e) => `${row.keys} keys, pod: ${e}`),
  ]);
  if (errors.length) out.push("", "errors:", ...errors.map((e) => `  ${e.split("\n").join("\n  ")}`));
  return out.join("\n");
}

/** `--scale`: runs, writes the JSON to o.out, prints the table; exit 1 on an error or a pod that died. */
export async function scaleMain(o: Options, log: (msg: string) => void): Promise<number> {
  const root = o.root ?? ROOT;
  const r: ScaleResults = {
    meta: {
      date: new Date().toISOString(),
      mode: "scale",
      node: process.version,
      cpus: cpus().length,
      memoryGb: Math.round(totalmem() / 2 ** 30),
      root,
      serverCommand: `${Object.entries(serverNodeEnv(root)).map(([k, v]) => `${k}=${v} `).join("")}` +
        `node ${serverNodeFlags(root).join(" ")} --import tsx src/main.ts`,
      reps: o.reps,
      mixSeconds: o.mixSeconds,
      loadTool: o.load,
      loadAvgAtStart: loadavg().map((v) => round(v, 2)),
      command: `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim(),
    },
    emptyLeaderRssMb: null,
    rows: [],
  };
  await runScale(o, r, log);
  r.meta.loadAvgAtEnd = loadavg().map((v) => round(v, 2));
  writeFileSync(o.out, `${JSON.stringify(r, null, 2)}\n`);
  process.stdout.write(`${formatScale(r)}\n\nresults: ${o.out}\n`);
  const failed = r.rows.some((row) => row.errors.length || (row.pod && (row.pod.errors.length ||
    !row.pod.leader?.survived)));
  return failed || r.emptyLeaderRssMb === null ? 1 : 0;
}
