// `npm run bench`: starts mehdb (leader and followers) as real processes, a bare
// node:http ceiling and the fsync-loop baseline, drives load from a separate
// process, prints a table and writes the same figures as JSON.
// Options: see options.ts (`npm run bench -- --help`).

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, totalmem, type } from "node:os";
import { join } from "node:path";
import { freePort } from "../helpers/mehdb.ts";
import { req, sleep, waitReady } from "./http.ts";
import { haveWrk, runLoad, wrkSeconds, type LoadOptions, type LoadResult, type Workload as LoadWorkload } from "./load.ts";
import { startFollower, startLeader, type Node } from "./mehdb.ts";
import { parseOptions, type Options } from "./options.ts";
import { populate } from "./populate.ts";
import { cpuSeconds, haveTaskset, killAllSync, memoryMb, startTs, stopAll, stopProcess, tail } from "./procs.ts";
import { startCountingProxy } from "./proxy.ts";
import { measureIdle, measureLag } from "./replication.ts";
import { formatTop, mainProfile } from "./cpuprofile-top.ts";
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

/** The CPUs of the load generator when pinned: all but CPU 0 (taskset list). */
function loadCpuList(): string {
  const n = cpus().length;
  return n === 2 ? "1" : `1-${n - 1}`;
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
  const child = startTs(`fsync-${valueBytes}`, "tests/bench/fsync-loop.ts", [dir, String(seconds), String(valueBytes), String(FSYNC_LOOPS)], {}, [], cpus);
  const killer = setTimeout(() => void stopProcess(child, 1000), (seconds + 30) * 1000);
  const code = await child.exited;
  clearTimeout(killer);
  const line = child.lines.find((l) => l.startsWith("{"));
  if (code !== 0 || !line) throw new Error(`fsync loop failed (exit ${code}):\n${tail(child)}`);
  return JSON.parse(line) as FsyncRun;
}

function fsInfo(dir: string): string {
  try {
    return execFileSync("findmnt", ["-T", dir, "-no", "FSTYPE,SOURCE"], { encoding: "utf8" }).trim().replace(/\s+/, " on ");
  } catch {
    return "filesystem unknown";
  }
}

function emptyWorkload(label: string, put: boolean): Workload {
  const t: Throughput = { rps: null, p50Ms: null, p99Ms: null, runs: [], failures: 0 };
  return put
    ? { label, mehdb: t, ceiling: t, ratioToCeiling: null, fsync: { opsPerSec: null, p50Ms: null, p99Ms: null, runs: [] }, ratioToFsync: null }
    : { label, mehdb: t, ceiling: t, ratioToCeiling: null };
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
  //    with the fsync loop of the same value size in the same repetition.
  await phase("throughput (ceiling, leader, fsync loop)", async () => {
    const ceilingPort = await freePort();
    // Pinned: the server under test (and the fsync loop) on CPU 0, the load generator on the others.
    const serverCpus = o.pin ? "0" : null;
    const loadCpus = o.pin ? loadCpuList() : null;
    const ceiling = startTs("ceiling", "tests/bench/ceiling.ts", [String(ceilingPort)], {}, [], serverCpus);
    await waitReady(ceiling, ceilingPort, readyTimeout);
    const profArgs = o.cpuProf ? ["--cpu-prof", `--cpu-prof-dir=${o.cpuProf}`] : [];
    const leader = await startLeader(o.entry, join(root, "throughput"), "leader-throughput", profArgs, serverCpus);
    r.startup.emptyReadyMs = await waitReady(leader.child, leader.port, readyTimeout);
    r.memory.emptyLeaderRssMb = memoryMb(leader.child.pid).rssMb;
    const seeded = await req(leader.port, "PUT", "/set/bench-get", GET_VALUE);
    if (seeded.status !== 200) throw new Error(`seeding the GET key: ${seeded.status} ${seeded.body.toString()}`);
    // --read-token: a second leader whose reads need a token, GET measured in the same repetitions.
    let tokenLeader: Node | null = null;
    if (o.readToken) {
      const dir = join(root, "throughput-token");
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, "bench-get"), GET_VALUE); // no PUT: that would need the write token
      writeFileSync(join(root, "read-token"), `${READ_TOKEN}\n`);
      tokenLeader = await startLeader(o.entry, dir, "leader-read-token", [], serverCpus, { MEHDB_READ_TOKEN_FILE: join(root, "read-token") });
      await waitReady(tokenLeader.child, tokenLeader.port, readyTimeout);
      const denied = await req(tokenLeader.port, "GET", "/get/bench-get");
      if (denied.status !== 401) throw new Error(`the leader with a read token answered ${denied.status} to a GET without it`);
    }
    const threads = o.pin ? Math.min(o.threads, cpus().length - 1) : o.threads;
    const base: Omit<LoadOptions, "port"> = { tool: o.load, connections: o.connections, threads, seconds: o.duration, tmpDir: root, cpus: loadCpus };
    const fsyncSeconds = Math.min(5, o.duration);
    const cases: [Workload, LoadWorkload][] = [
      [r.get, { name: "get", method: "GET", path: "/get/bench-get", keys: 1, valueBytes: 0 }],
      [r.put50, { name: "put50", method: "PUT", path: "/set/bench50-", keys: 1000, valueBytes: 50 }],
      [r.put64k, { name: "put64k", method: "PUT", path: "/set/bench64k-", keys: 1000, valueBytes: 65_536 }],
    ];
    const tokenLoad: LoadWorkload = { ...cases[0]![1], name: "get-read-token", headers: [`Authorization: Bearer ${READ_TOKEN}`] };
    for (const [w, load] of cases) {
      const withToken = w === r.get && tokenLeader !== null ? tokenLeader : null;
      if (o.warmup > 0) {
        for (const port of [ceilingPort, leader.port]) await runLoad(load, { ...base, port, seconds: o.warmup });
        if (withToken) await runLoad(tokenLoad, { ...base, port: withToken.port, seconds: o.warmup });
      }
      const mine: LoadResult[] = [];
      const theirs: LoadResult[] = [];
      const tokened: LoadResult[] = [];
      const fsync: FsyncRun[] = [];
      // With --read-token, the CPU time each GET leader spends per request, per repetition.
      const cpuPlain: (number | null)[] = [];
      const cpuToken: (number | null)[] = [];
      const measured = async (node: Node, cpu: (number | null)[], work: () => Promise<LoadResult>): Promise<LoadResult> => {
        const before = cpuSeconds(node.child.pid);
        const result = await work();
        const after = cpuSeconds(node.child.pid);
        cpu.push(before === null || after === null || result.requests === 0 ? null : ((after - before) * 1e6) / result.requests);
        return result;
      };
      for (let i = 0; i < o.reps; i++) {
        // Odd repetitions run in the reverse order, so that a drift of the machine
        // (other work, page cache, disk) weighs on both sides of each ratio alike.
        const steps = [
          async () => void theirs.push(await runLoad(load, { ...base, port: ceilingPort })),
          async () => void mine.push(await measured(leader, cpuPlain, () => runLoad(load, { ...base, port: leader.port }))),
          async () => void (withToken && tokened.push(await measured(withToken, cpuToken, () => runLoad(tokenLoad, { ...base, port: withToken.port })))),
          async () => void (w.fsync && fsync.push(await fsyncLoop(join(root, "fsync"), fsyncSeconds, load.valueBytes, serverCpus))),
        ];
        for (const step of i % 2 === 0 ? steps : steps.reverse()) await step();
        log(`  ${load.name} #${i + 1}: mehdb ${Math.round(mine[i]!.rps)}/s, ceiling ${Math.round(theirs[i]!.rps)}/s` +
          (fsync[i] ? `, fsync loop ${Math.round(fsync[i]!.opsPerSec)}/s` : "") +
          (tokened[i] ? `, mehdb with a read token ${Math.round(tokened[i]!.rps)}/s` : ""));
      }
      w.mehdb = summarize(mine);
      w.ceiling = summarize(theirs);
      // Ratios are medians of the ratios within each repetition (paired, run back to back).
      w.ratioToCeiling = median(mine.map((m, i) => ratio(m.rps, theirs[i]!.rps)));
      if (withToken) {
        r.getReadToken = {
          label: `GET ${GET_VALUE.length} B, read token`,
          mehdb: summarize(tokened),
          ceiling: w.ceiling,
          ratioToCeiling: median(tokened.map((m, i) => ratio(m.rps, theirs[i]!.rps))),
          ratioToPlain: median(tokened.map((m, i) => ratio(m.rps, mine[i]!.rps))),
          cpuUsPerRequest: { with: median(cpuToken), without: median(cpuPlain) },
        };
      }
      if (w.fsync) {
        w.fsync = {
          opsPerSec: median(fsync.map((f) => f.opsPerSec)),
          p50Ms: median(fsync.map((f) => f.p50Ms)),
          p99Ms: median(fsync.map((f) => f.p99Ms)),
          runs: fsync.map((f) => Math.round(f.opsPerSec)),
        };
        w.ratioToFsync = median(mine.map((m, i) => ratio(m.rps, fsync[i]!.opsPerSec)));
      }
    }
  });

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
    const l = leader!;
    r.memory.leaderRssAtReadyMb = memoryMb(l.child.pid).rssMb;
    const leaderUrl = `http://127.0.0.1:${l.port}`;
    const followerDir = join(root, "follower");
    const f = await startFollower(o.entry, followerDir, leaderUrl, o.syncIntervalMs, "follower");
    const catchupMs = await waitReady(f.child, f.port, Math.max(300_000, o.keys * 5), o.keys);
    r.replication.catchupLarge = { keys: o.keys, seconds: catchupMs / 1000 };
    const listed = JSON.parse((await req(f.port, "GET", "/keys")).body.toString("utf8")) as unknown[];
    if (listed.length !== o.keys) throw new Error(`follower lists ${listed.length} keys after catch-up, expected ${o.keys}`);
    log(`  catch-up of ${o.keys} keys: ${(catchupMs / 1000).toFixed(2)} s`);
    await sleep(o.syncIntervalMs);
    r.replication.lag = await measureLag(l, f, o.lagSamples, o.syncIntervalMs);
    log(`  lag p50 ${r.replication.lag.p50Ms?.toFixed(1)} ms, p99 ${r.replication.lag.p99Ms?.toFixed(1)} ms`);
    await sleep(o.syncIntervalMs);
    const lm = memoryMb(l.child.pid);
    const fm = memoryMb(f.child.pid);
    Object.assign(r.memory, { leaderRssMb: lm.rssMb, leaderPeakMb: lm.peakMb, followerRssMb: fm.rssMb, followerPeakMb: fm.peakMb });

    // The same follower, restarted behind a counting proxy: restart time, then idle ticks.
    await stopProcess(f.child);
    const proxy = await startCountingProxy(l.port);
    try {
      const f2 = await startFollower(o.entry, followerDir, `http://127.0.0.1:${proxy.port}`, o.syncIntervalMs, "follower-restarted");
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
      const f: Node = await startFollower(o.entry, join(root, `follower-small-${i}`), `http://127.0.0.1:${l.port}`, o.syncIntervalMs, `follower-small-${i}`);
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

  const wrkVersion = o.load === "wrk" ? (/wrk (\S+)/.exec(execFileSync("sh", ["-c", "wrk --version 2>&1 || true"], { encoding: "utf8" }))?.[1] ?? "?") : null;
  const r: Omit<Results, "targets"> = {
    meta: {
      date: new Date().toISOString(),
      mode: o.mode,
      node: process.version,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? "?",
      memoryGb: Math.round(totalmem() / 2 ** 30),
      os: `${type()} ${release()}`,
      loadTool: (o.load === "wrk" ? `wrk ${wrkVersion} -t${Math.min(o.pin ? Math.min(o.threads, cpus().length - 1) : o.threads, o.connections)}` : "node generator (tests/bench/loadgen-node.ts)") +
        (o.pin ? `, pinned: servers and fsync loop on CPU 0, load on CPU ${loadCpuList()}` : ", not pinned"),
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
    get: emptyWorkload(`GET ${GET_VALUE.length} B value`, false),
    getReadToken: null,
    put50: emptyWorkload("PUT 50 B, 1000 keys", true),
    put64k: emptyWorkload("PUT 64 KB, 1000 keys", true),
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
    memory: { keys: o.keys, emptyLeaderRssMb: null, leaderRssAtReadyMb: null, leaderRssMb: null, leaderPeakMb: null, followerRssMb: null, followerPeakMb: null },
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
    if (prof) process.stdout.write(`\nthroughput leader's CPU profile (all three workloads):\n${formatTop(prof, 20)}\n`);
  }
  const missing = missingFigures(results);
  if (missing.length) process.stdout.write(`missing figures: ${missing.join(", ")}\n`);
  return r.errors.length || missing.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
