/**
 * `npm run bench`: starts mehdb (leader and followers) as real processes with the Node
 * flags users get, a bare node:http ceiling and the fsync-loop baseline, drives load from
 * a separate process, prints a table and writes the same figures as JSON. Nothing is pinned
 * but the rows marked so; GET is measured before any write and right after PUT bursts;
 * memory after a mixed load. `--pod` runs the image in podman instead (pod.ts), `--snapshot`
 * measures snapshot and restore (snapshot.ts).
 * Options: see options.ts (`npm run bench -- --help`).
 */

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, totalmem, type } from "node:os";
import { join } from "node:path";
import { freePort } from "../helpers/mehdb.ts";
import { sleep } from "../helpers/wait.ts";
import { req, waitReady } from "./http.ts";
import {
  haveWrk, runLoad, wrkSeconds, type LoadOptions, type LoadResult, type Workload as LoadWorkload,
} from "./load.ts";
import { serverNodeFlags, serverNodeVersion, startFollower, startLeader, type Node } from "./mehdb.ts";
import { parseOptions, type Options } from "./options.ts";
import { mixedLoadWorkloads, populate } from "./populate.ts";
import {
  cpuSeconds, haveTaskset, killAllSync, memoryMb, setAffinity, startTs, stopAll, stopProcess, tail,
} from "./procs.ts";
import { startCountingProxy } from "../helpers/proxy.ts";
import { measureIdle, measureLag } from "./replication.ts";
import { formatTop, mainProfile } from "./cpuprofile-top.ts";
import { emptyPodResults, formatPod, runPod } from "./pod.ts";
import { scaleMain } from "./scale.ts";
import { snapshotBench } from "./snapshot.ts";
import { checkTargets, formatTable, missingFigures, type Results, type Throughput, type Workload } from "./report.ts";
import { median, ratio } from "./stats.ts";

/** Loops of the fsync baseline: the libuv pool's default size. */
const FSYNC_LOOPS = 4;
/** Value size of the pre-populated keys. */
const PREPOPULATED_VALUE_BYTES = 50;
/** The read token of `--read-token` (as long as a typical generated token). */
const READ_TOKEN = "bench-read-token-0123456789abcdefghijklmnopqrstuv";
/** The GET workload's value (as long as the ceiling's constant answer). */
const GET_VALUE = "0123456789";

/** The CPUs of the load generator in pinned runs: all but CPU 0 (taskset list). */
function loadCpuList(): string {
  const n = cpus().length;
  return n === 2 ? "1" : `1-${n - 1}`;
}

/** A rate for the progress log: "1234/s", or "—/s" when missing. */
function perSecond(v: number | undefined): string {
  return `${v === undefined ? "—" : Math.round(v)}/s`;
}

function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

function summarize(results: LoadResult[]): Throughput {
  return {
    rps: median(results.map((r) => r.rps)),
    p50Ms: median(results.map((r) => r.p50Ms)),
    p99Ms: median(results.map((r) => r.p99Ms)),
    runs: results.map((r) => Math.round(r.rps)),
    failures: results.reduce((s, r) => s + r.errors + r.badStatus, 0),
  };
}

interface FsyncRun {
  opsPerSec: number;
  p50Ms: number | null;
  p99Ms: number | null;
}

async function fsyncLoop(dir: string, seconds: number, valueBytes: number, cpus: string | null): Promise<FsyncRun> {
  const args = [dir, String(seconds), String(valueBytes), String(FSYNC_LOOPS)];
  const child = startTs(`fsync-${valueBytes}`, "tests/bench/fsync-loop.ts", args, {}, [], cpus);
  const killer = setTimeout(() => void stopProcess(child, 1000), (seconds + 30) * 1000);
  const code = await child.exited;
  clearTimeout(killer);
  const line = child.lines.find((l) => l.startsWith("{"));
  if (code !== 0 || !line) throw new Error(`fsync loop failed (exit ${code}):\n${tail(child)}`);
  return JSON.parse(line) as FsyncRun;
}

function fsInfo(dir: string): string {
  try {
    const found = execFileSync("findmnt", ["-T", dir, "-no", "FSTYPE,SOURCE"], { encoding: "utf8" });
    return found.trim().replace(/\s+/, " on ");
  } catch {
    return "filesystem unknown";
  }
}

function emptyWorkload(label: string, put: boolean, pinned = false): Workload {
  const t: Throughput = { rps: null, p50Ms: null, p99Ms: null, runs: [], failures: 0 };
  return put
    ? {
      label, mehdb: t, ceiling: t, ratioToCeiling: null,
      fsync: { opsPerSec: null, p50Ms: null, p99Ms: null, runs: [] }, ratioToFsync: null, pinned,
    }
    : {
      label, mehdb: t, ceiling: t, ratioToCeiling: null, cpu: { mehdbUs: null, ceilingUs: null, ratio: null }, pinned,
    };
}

/** Runs the whole benchmark into `r` (figures it cannot get stay null, with a line in r.errors). */
async function run(o: Options, root: string, r: Omit<Results, "targets">): Promise<void> {
  const phase = async (name: string, fn: () => Promise<void>): Promise<void> => {
    log(name);
    try {
      await fn();
    } catch (e) {
      r.errors.push(`${name}: ${(e as Error).message}`);
      log(`${name} FAILED: ${(e as Error).message}`);
    } finally {
      await stopAll();
    }
  };
  const readyTimeout = 120_000;

  // 1. Throughput: GET and PUT against the ceiling and a fresh leader, in alternation,
  //    with the fsync loop of the same value size in the same repetition. Unpinned, as in a pod
  //    (CPU shares, not a core); GET also pinned beside it. Then GET again, each repetition
  //    right after a PUT burst: a store that slows down once it has taken writes shows it there.
  await phase("throughput (ceiling, leader, fsync loop)", async () => {
    const ceilingPort = await freePort();
    const ceiling = startTs("ceiling", "tests/bench/ceiling.ts", [String(ceilingPort)]);
    await waitReady(ceiling, ceilingPort, readyTimeout);
    const profArgs = o.cpuProf ? ["--cpu-prof", `--cpu-prof-dir=${o.cpuProf}`] : [];
    const leader = await startLeader(o.entry, join(root, "throughput"), "leader-throughput", profArgs);
    r.startup.emptyReadyMs = await waitReady(leader.child, leader.port, readyTimeout);
    r.memory.emptyLeaderRssMb = memoryMb(leader.child.pid).rssMb;
    const seeded = await req(leader.port, "PUT", "/set/bench-get", GET_VALUE);
    if (seeded.status !== 200) throw new Error(`seeding the GET key: ${seeded.status} ${seeded.body.toString()}`);
    // --read-token: a second leader whose reads need a token; its GET runs in the same repetitions as the
    // plain leader's (unpinned, before writes). Its key is written into the data dir before start (one file
    // per key, as populate.ts does): a PUT would need the token too. The warm-up's first GET caches it.
    let tokenLeader: Node | null = null;
    if (r.getReadToken) {
      const tokenFile = join(root, "read-token");
      writeFileSync(tokenFile, `${READ_TOKEN}\n`);
      const tokenDir = join(root, "throughput-read-token");
      mkdirSync(tokenDir, { recursive: true });
      writeFileSync(join(tokenDir, "bench-get"), GET_VALUE);
      const env = { MEHDB_READ_TOKEN_FILE: tokenFile };
      tokenLeader = await startLeader(o.entry, tokenDir, "leader-read-token", [], null, env);
      await waitReady(tokenLeader.child, tokenLeader.port, readyTimeout);
      const denied = await req(tokenLeader.port, "GET", "/get/bench-get");
      if (denied.status !== 401) {
        throw new Error(`the leader with a read token answered ${denied.status} to a GET without it`);
      }
    }
    // Pinned runs: the servers (every thread) on CPU 0, the load generator on the others, one wrk thread each.
    const allCpus = `0-${cpus().length - 1}`;
    const pinServers = (pinned: boolean): void => {
      if (o.pin) for (const pid of [ceiling.pid, leader.child.pid]) setAffinity(pid, pinned ? "0" : allCpus);
    };
    const unpinned: Omit<LoadOptions, "port"> = {
      tool: o.load, connections: o.connections, threads: o.threads, seconds: o.duration, tmpDir: root, cpus: null,
    };
    const pinnedBase: Omit<LoadOptions, "port"> = {
      ...unpinned, threads: Math.min(o.threads, cpus().length - 1), cpus: loadCpuList(),
    };
    const fsyncSeconds = Math.min(5, o.duration);
    const get: LoadWorkload = { name: "get", method: "GET", path: "/get/bench-get", keys: 1, valueBytes: 0 };
    const tokenHeaders = [`Authorization: Bearer ${READ_TOKEN}`];
    const getWithToken: LoadWorkload = { ...get, name: "get-read-token", headers: tokenHeaders };
    const put50: LoadWorkload = { name: "put50", method: "PUT", path: "/set/bench50-", keys: 1000, valueBytes: 50 };
    const put64k: LoadWorkload = {
      name: "put64k", method: "PUT", path: "/set/bench64k-", keys: 1000, valueBytes: 65_536,
    };
    const cases: { w: Workload; load: LoadWorkload; pinned: boolean; afterBurst: boolean }[] = [
      { w: r.get, load: get, pinned: false, afterBurst: false },
      ...(r.getPinned ? [{ w: r.getPinned, load: get, pinned: true, afterBurst: false }] : []),
      { w: r.put50, load: put50, pinned: false, afterBurst: false },
      { w: r.put64k, load: put64k, pinned: false, afterBurst: false },
      { w: r.getAfterPut, load: get, pinned: false, afterBurst: true },
      ...(r.getAfterPutPinned ? [{ w: r.getAfterPutPinned, load: get, pinned: true, afterBurst: true }] : []),
    ];
    for (const { w, load, pinned, afterBurst } of cases.filter((c) => !o.putOnly || c.load.method === "PUT")) {
      pinServers(pinned);
      const base = pinned ? pinnedBase : unpinned;
      // "After writes" needs no warm-up: the leader is warm, and a GET warm-up would come between the
      // burst and the run.
      const withToken = w === r.get ? tokenLeader : null;
      if (o.warmup > 0 && !afterBurst) {
        for (const port of [ceilingPort, leader.port]) await runLoad(load, { ...base, port, seconds: o.warmup });
        if (withToken) await runLoad(getWithToken, { ...base, port: withToken.port, seconds: o.warmup });
      }
      const mine: LoadResult[] = [];
      const theirs: LoadResult[] = [];
      const fsync: FsyncRun[] = [];
      const cpuMine: (number | null)[] = [];
      const cpuTheirs: (number | null)[] = [];
      const tokened: LoadResult[] = [];
      const cpuTokened: (number | null)[] = [];
      // The server's CPU time per request answered during one load run (GET only).
      const measured = async (
        pid: number,
        cpu: (number | null)[],
        work: () => Promise<LoadResult>,
      ): Promise<LoadResult> => {
        const before = cpuSeconds(pid);
        const result = await work();
        const after = cpuSeconds(pid);
        const known = before !== null && after !== null && result.requests > 0;
        cpu.push(known ? ((after - before) * 1e6) / result.requests : null);
        return result;
      };
      for (let i = 0; i < o.reps; i++) {
        if (afterBurst) {
          const burst = await runLoad(put50, { ...base, port: leader.port, seconds: o.burstSeconds });
          log(`  PUT burst before ${w.label} #${i + 1}: ${Math.round(burst.rps)}/s for ${o.burstSeconds} s`);
        }
        // Odd repetitions run in the reverse order, so that a drift of the machine
        // (other work, page cache, disk) weighs on both sides of each ratio alike.
        const steps = [
          async () => {
            theirs.push(await measured(ceiling.pid, cpuTheirs, () => runLoad(load, { ...base, port: ceilingPort })));
          },
          async () => {
            mine.push(await measured(leader.child.pid, cpuMine, () => runLoad(load, { ...base, port: leader.port })));
          },
          async () => {
            if (withToken) {
              const port = withToken.port;
              const work = () => runLoad(getWithToken, { ...base, port });
              tokened.push(await measured(withToken.child.pid, cpuTokened, work));
            }
          },
          async () => {
            if (w.fsync) fsync.push(await fsyncLoop(join(root, "fsync"), fsyncSeconds, load.valueBytes, null));
          },
        ];
        for (const step of i % 2 === 0 ? steps : steps.reverse()) await step();
        const [m, c, f, t] = [mine[i], theirs[i], fsync[i], tokened[i]];
        log(`  ${w.label} #${i + 1}: mehdb ${perSecond(m?.rps)}, ceiling ${perSecond(c?.rps)}` +
          (f ? `, fsync loop ${perSecond(f.opsPerSec)}` : "") +
          (t ? `, mehdb with a read token ${perSecond(t.rps)}` : ""));
      }
      w.mehdb = summarize(mine);
      w.ceiling = summarize(theirs);
      // Ratios are medians of the ratios within each repetition (paired, run back to back).
      w.ratioToCeiling = median(mine.map((m, i) => ratio(m.rps, theirs[i]?.rps)));
      if (withToken && r.getReadToken) {
        const ratiosToPlain = tokened.map((t, i) => ratio(t.rps, mine[i]?.rps));
        Object.assign(r.getReadToken, {
          mehdb: summarize(tokened),
          ceiling: w.ceiling,
          ratioToCeiling: median(tokened.map((t, i) => ratio(t.rps, theirs[i]?.rps))),
          cpu: {
            mehdbUs: median(cpuTokened),
            ceilingUs: median(cpuTheirs),
            ratio: median(cpuTokened.map((t, i) => ratio(cpuTheirs[i], t))),
          },
          ratioToPlain: median(ratiosToPlain),
          ratiosToPlain,
        });
        const failed = r.getReadToken.mehdb.failures;
        if (failed > 0) r.errors.push(`GET with a read token: ${failed} failed requests (was the token sent?)`);
      }
      if (load.method === "GET") {
        w.cpu = {
          mehdbUs: median(cpuMine),
          ceilingUs: median(cpuTheirs),
          ratio: median(cpuMine.map((m, i) => ratio(cpuTheirs[i], m))),
        };
      }
      if (w.fsync) {
        w.fsync = {
          opsPerSec: median(fsync.map((f) => f.opsPerSec)),
          p50Ms: median(fsync.map((f) => f.p50Ms)),
          p99Ms: median(fsync.map((f) => f.p99Ms)),
          runs: fsync.map((f) => Math.round(f.opsPerSec)),
        };
        w.ratioToFsync = median(mine.map((m, i) => ratio(m.rps, fsync[i]?.opsPerSec)));
      }
    }
    pinServers(false);
  });

  if (o.putOnly) return;
  // 2. Pre-populated data dirs for start-up, memory and catch-up.
  const bigDir = join(root, "big");
  const smallDir = join(root, "small");
  await phase(`pre-populating ${o.keys} + ${o.smallKeys} keys`, async () => {
    populate(bigDir, o.keys, PREPOPULATED_VALUE_BYTES);
    populate(smallDir, o.smallKeys, PREPOPULATED_VALUE_BYTES);
  });

  // 3. Start-up, catch-up, lag, memory and idle ticks with `keys` stored.
  await phase(`start-up, catch-up, lag, memory with ${o.keys} keys`, async () => {
    let leader: Node | null = null;
    for (let i = 0; i < o.reps; i++) {
      if (leader) await stopProcess(leader.child);
      leader = await startLeader(o.entry, bigDir, `leader-${i}`);
      r.startup.runs.push(Math.round(await waitReady(leader.child, leader.port, readyTimeout, o.keys)));
    }
    r.startup.readyMs = median(r.startup.runs);
    if (leader === null) throw new Error("no leader started (--reps 0?)");
    const l = leader;
    r.memory.leaderRssAtReadyMb = memoryMb(l.child.pid).rssMb;

    // Memory after a mixed load, as a store in use sees it: random GETs (most miss the cache and
    // read the file), random PUTs over the same keys, random GETs again; then the leader's RSS.
    const mixBase: LoadOptions = {
      tool: o.load, port: l.port, connections: o.connections, threads: o.threads, seconds: o.mixSeconds, tmpDir: root,
      cpus: null,
    };
    const mixRuns: LoadResult[] = [];
    for (const w of mixedLoadWorkloads(o.keys, PREPOPULATED_VALUE_BYTES)) {
      const run = await runLoad(w, mixBase);
      mixRuns.push(run);
      const rss = memoryMb(l.child.pid).rssMb;
      log(`  mixed load, ${w.name}: ${Math.round(run.rps)}/s; leader RSS ${rss?.toFixed(1)} MB`);
    }
    await sleep(500);
    const afterLoad = memoryMb(l.child.pid);
    r.memory.leaderAfterLoadRssMb = afterLoad.rssMb;
    r.memory.leaderAfterLoadPeakMb = afterLoad.peakMb;
    const [getRun, putRun, getAgainRun] = mixRuns;
    r.memory.mixedLoad = {
      seconds: o.mixSeconds,
      getRps: getRun?.rps ?? null,
      putRps: putRun?.rps ?? null,
      getAgainRps: getAgainRun?.rps ?? null,
      failures: mixRuns.reduce((sum, m) => sum + m.errors + m.badStatus, 0),
    };
    const leaderUrl = `http://127.0.0.1:${l.port}`;
    const followerDir = join(root, "follower");
    const f = await startFollower(o.entry, followerDir, leaderUrl, o.syncIntervalMs, "follower");
    const catchupMs = await waitReady(f.child, f.port, Math.max(300_000, o.keys * 5), o.keys);
    r.replication.catchupLarge = { keys: o.keys, seconds: catchupMs / 1000 };
    const listed = JSON.parse((await req(f.port, "GET", "/keys")).body.toString("utf8")) as unknown[];
    if (listed.length !== o.keys) {
      throw new Error(`follower lists ${listed.length} keys after catch-up, expected ${o.keys}`);
    }
    log(`  catch-up of ${o.keys} keys: ${(catchupMs / 1000).toFixed(2)} s`);
    await sleep(o.syncIntervalMs);
    r.replication.lag = await measureLag(l, f, o.lagSamples, o.syncIntervalMs);
    log(`  lag p50 ${r.replication.lag.p50Ms?.toFixed(1)} ms, p99 ${r.replication.lag.p99Ms?.toFixed(1)} ms`);
    await sleep(o.syncIntervalMs);
    const lm = memoryMb(l.child.pid);
    const fm = memoryMb(f.child.pid);
    Object.assign(r.memory, {
      leaderRssMb: lm.rssMb, leaderPeakMb: lm.peakMb, followerRssMb: fm.rssMb, followerPeakMb: fm.peakMb,
    });

    // The same follower, restarted behind a counting proxy: restart time, then idle ticks.
    await stopProcess(f.child);
    const proxy = await startCountingProxy(l.port);
    try {
      const proxied = `http://127.0.0.1:${proxy.port}`;
      const f2 = await startFollower(o.entry, followerDir, proxied, o.syncIntervalMs, "follower-restarted");
      r.replication.restartReadySeconds = (await waitReady(f2.child, f2.port, readyTimeout, o.keys)) / 1000;
      await sleep(2 * o.syncIntervalMs);
      r.replication.idle = await measureIdle(proxy, o.syncIntervalMs, o.idleTicks);
      await stopProcess(f2.child);
    } finally {
      await proxy.close();
    }
  });

  // 4. Catch-up of a new follower with the small key set (repeated; it is cheap).
  await phase(`catch-up with ${o.smallKeys} keys`, async () => {
    const l = await startLeader(o.entry, smallDir, "leader-small");
    await waitReady(l.child, l.port, readyTimeout, o.smallKeys);
    const runs: number[] = [];
    for (let i = 0; i < o.reps; i++) {
      const name = `follower-small-${i}`;
      const leaderUrl = `http://127.0.0.1:${l.port}`;
      const f: Node = await startFollower(o.entry, join(root, name), leaderUrl, o.syncIntervalMs, name);
      runs.push((await waitReady(f.child, f.port, Math.max(120_000, o.smallKeys * 5), o.smallKeys)) / 1000);
      await stopProcess(f.child);
    }
    r.replication.catchupSmall = { keys: o.smallKeys, seconds: median(runs), runs };
  });
}

async function main(): Promise<number> {
  let o: Options;
  const wrk = haveWrk();
  try {
    o = parseOptions(process.argv.slice(2), wrk, cpus().length >= 2 && haveTaskset());
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    return 2;
  }
  if (o.pod) return podMain(o);
  if (o.scale) return scaleMain(o, log);
  if (o.snapshot) return snapshotBench(o.keys, o.dir);
  const root = mkdtempSync(join(o.dir, "mehdb-bench-"));
  let cleaned = false;
  const cleanup = (): void => {
    if (cleaned) return;
    cleaned = true;
    killAllSync();
    rmSync(root, { recursive: true, force: true });
  };
  process.on("exit", cleanup);
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.on(sig, () => {
      log(`${sig}: stopping everything`);
      void stopAll().finally(() => {
        cleanup();
        process.exit(130);
      });
    });
  }

  const wrkBanner = (): string => execFileSync("sh", ["-c", "wrk --version 2>&1 || true"], { encoding: "utf8" });
  const wrkVersion = o.load === "wrk" ? (/wrk (\S+)/.exec(wrkBanner())?.[1] ?? "?") : null;
  const r: Omit<Results, "targets"> = {
    meta: {
      date: new Date().toISOString(),
      mode: o.mode,
      node: process.version,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? "?",
      memoryGb: Math.round(totalmem() / 2 ** 30),
      os: `${type()} ${release()}`,
      loadTool: (o.load === "wrk"
        ? `wrk ${wrkVersion} -t${Math.min(o.threads, o.connections)}`
        : "node generator (tests/bench/loadgen-node.ts)") +
        ", not pinned" + (o.pin ? `; pinned rows: servers on CPU 0, load on CPU ${loadCpuList()}` : ""),
      serverNode: serverNodeVersion(),
      serverNodeFlags: serverNodeFlags().join(" "),
      pinned: o.pin,
      connections: o.connections,
      durationSeconds: o.load === "wrk" ? wrkSeconds(o.duration) : o.duration,
      warmupSeconds: o.warmup,
      reps: o.reps,
      keys: o.keys,
      smallKeys: o.smallKeys,
      fsyncLoops: FSYNC_LOOPS,
      prepopulatedValueBytes: PREPOPULATED_VALUE_BYTES,
      dataParent: o.dir,
      dataFs: fsInfo(root),
      entry: o.entry,
      loadAvgAtStart: loadavg().map((v) => Math.round(v * 100) / 100),
      command: `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim(),
    },
    get: emptyWorkload(`GET ${GET_VALUE.length} B value, before writes`, false),
    getReadToken: o.readToken
      ? {
        ...emptyWorkload(`GET ${GET_VALUE.length} B value, before writes, read token`, false),
        ratioToPlain: null,
        ratiosToPlain: [],
      }
      : null,
    getPinned: o.pin ? emptyWorkload(`GET ${GET_VALUE.length} B value, before writes, pinned`, false, true) : null,
    put50: emptyWorkload("PUT 50 B, 1000 keys", true),
    put64k: emptyWorkload("PUT 64 KB, 1000 keys", true),
    getAfterPut: emptyWorkload(`GET ${GET_VALUE.length} B value, after a ${o.burstSeconds} s PUT burst`, false),
    getAfterPutPinned: o.pin
      ? emptyWorkload(`GET ${GET_VALUE.length} B value, after a PUT burst, pinned`, false, true)
      : null,
    replication: {
      syncIntervalMs: o.syncIntervalMs,
      keysStored: o.keys,
      lag: null,
      catchupSmall: null,
      catchupLarge: null,
      catchupFsyncBoundSeconds: null,
      restartReadySeconds: null,
      idle: null,
    },
    memory: {
      keys: o.keys,
      emptyLeaderRssMb: null,
      leaderRssAtReadyMb: null,
      leaderAfterLoadRssMb: null,
      leaderAfterLoadPeakMb: null,
      mixedLoad: null,
      leaderRssMb: null,
      leaderPeakMb: null,
      followerRssMb: null,
      followerPeakMb: null,
    },
    startup: { keys: o.keys, readyMs: null, runs: [], emptyReadyMs: null },
    errors: [],
  };
  const started = performance.now();
  try {
    await run(o, root, r);
  } finally {
    await stopAll();
    cleanup();
  }
  const fsyncRate = r.put50.fsync?.opsPerSec ?? null;
  r.replication.catchupFsyncBoundSeconds = fsyncRate ? o.keys / fsyncRate : null;
  const results: Results = { ...r, targets: checkTargets(r, o.keys >= 100_000) };
  results.meta.loadAvgAtEnd = loadavg().map((v) => Math.round(v * 100) / 100);
  results.meta.totalSeconds = Math.round((performance.now() - started) / 100) / 10;
  writeFileSync(o.out, `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`${formatTable(results)}\n\nresults: ${o.out}\n`);
  if (o.cpuProf) {
    const prof = mainProfile(o.cpuProf);
    if (prof) {
      process.stdout.write(`\nthroughput leader's CPU profile (all three workloads):\n${formatTop(prof, 20)}\n`);
    }
  }
  const missing = missingFigures(results);
  if (missing.length) process.stdout.write(`missing figures: ${missing.join(", ")}\n`);
  return r.errors.length || missing.length ? 1 : 0;
}

/**
 * `--pod`: the image in podman with the manifests' limits (pod.ts); exit 1 when a container was killed or a
 * figure is missing.
 */
async function podMain(o: Options): Promise<number> {
  const r = emptyPodResults(o.keys, {
    date: new Date().toISOString(),
    mode: "pod",
    node: process.version,
    cpus: cpus().length,
    memoryGb: Math.round(totalmem() / 2 ** 30),
    command: `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim(),
  });
  try {
    await runPod(o, log, r);
  } catch (e) {
    r.errors.push((e as Error).message);
    log(`FAILED: ${(e as Error).message}`);
  }
  writeFileSync(o.out, `${JSON.stringify(r, null, 2)}\n`);
  process.stdout.write(`${formatPod(r)}\n\nresults: ${o.out}\n`);
  return r.errors.length || !r.leader?.survived || !r.follower?.survived ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
