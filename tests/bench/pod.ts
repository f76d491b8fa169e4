/**
 * `npm run bench -- --pod`: the image in podman with the manifests' memory (and CPU) limit, as
 * a pod gets it. A leader with `keys` keys under a mixed load (random GETs, random PUTs, random
 * GETs), then a follower catching all of them up; neither may be OOM-killed. A kill is looked
 * for three ways, since `podman inspect` has said OOMKilled=false for a container the kernel had
 * killed on this host: the cgroup's own oom_kill counter, the container's exit code (137), and
 * the kernel log. Containers and volumes are named mehdb-bench-…, and removed at the end, also
 * on failure or Ctrl-C. Load goes only to ports the containers publish on 127.0.0.1.
 */

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { freePort, ROOT } from "../helpers/mehdb.ts";
import { ensureNodeBase, mustPodman, podman, podmanMissing, RUN_LIMITS } from "../helpers/podman.ts";
import { sleep } from "../helpers/wait.ts";
import { req } from "./http.ts";
import { runLoad, type LoadOptions, type LoadResult } from "./load.ts";
import type { Options } from "./options.ts";
import { mixedLoadWorkloads, POPULATED_KEY_DIGITS, POPULATED_KEY_PREFIX } from "./populate.ts";
import type { MixedLoad } from "./report.ts";
import { memoryMb } from "./procs.ts";
import { round } from "./stats.ts";

/** Value size of the keys the leader starts with (as in the rest of the bench). */
const VALUE_BYTES = 50;
const MiB = 1024 * 1024;

/** The resources of the StatefulSet's container, as written in the manifest. */
export interface ManifestResources {
  file: string;
  memoryLimit: string;
  memoryLimitBytes: number;
  memoryRequest: string | null;
  cpuLimit: string | null;
}

/** What one container did: its memory, and every sign of an OOM kill. */
export interface PodFigures {
  name: string;
  /** Highest memory use the cgroup recorded (anonymous memory and page cache), MB. */
  cgroupPeakMb: number | null;
  /** Highest anonymous memory of the cgroup seen by the sampler (what reclaim cannot free), MB. */
  anonPeakMb: number | null;
  /** The node process's peak and last resident memory (VmHWM, VmRSS), MB. */
  processPeakMb: number | null;
  processRssMb: number | null;
  /** The cgroup's oom_kill counter (memory.oom_control); null where unreadable. */
  oomKills: number | null;
  /** Still running at the end; its exit code when not. */
  running: boolean;
  exitCode: number | null;
  /** What podman inspect said. */
  oomKilledFlag: boolean | null;
  /** Kernel log lines about an OOM kill in this container's cgroup. */
  kernelOomLines: string[];
  /** The process's own lines about running out of memory (V8's "FATAL ERROR: … heap out of memory"). */
  outputOomLines: string[];
  /** True when none of the above shows a kill. */
  survived: boolean;
}

/** The results of `--pod`. */
export interface PodResults {
  meta: Record<string, unknown>;
  resources: ManifestResources | null;
  keys: number;
  /** Seconds from `podman run` returning to the leader's first `GET /status` 200. */
  leaderLiveSeconds: number | null;
  leaderReadySeconds: number | null;
  mixedLoad: MixedLoad | null;
  catchupSeconds: number | null;
  leader: PodFigures | null;
  follower: PodFigures | null;
  errors: string[];
}

/** Results of a pod run with `keys` keys, every figure still missing. */
export function emptyPodResults(keys: number, meta: Record<string, unknown>): PodResults {
  return {
    meta, resources: null, keys, leaderLiveSeconds: null, leaderReadySeconds: null, mixedLoad: null,
    catchupSeconds: null, leader: null, follower: null, errors: [],
  };
}

/**
 * Reads the container's resources (its first `resources:` block) from the StatefulSet (k8s/base/ once the
 * manifests move there, else k8s/).
 */
export function manifestResources(root = ROOT): ManifestResources {
  const file = ["k8s/base/statefulset.yaml", "k8s/statefulset.yaml"].find((f) => existsSync(join(root, f)));
  if (!file) throw new Error("no k8s/statefulset.yaml");
  const lines = readFileSync(join(root, file), "utf8").split("\n");
  const at = lines.findIndex((l) => /^\s*resources:\s*$/.test(l));
  const values: Record<string, string> = {};
  const head = lines[at];
  if (head !== undefined) {
    const indent = head.search(/\S/);
    let section = "";
    for (const line of lines.slice(at + 1)) {
      if (!line.trim() || line.trim().startsWith("#")) continue;
      if (line.search(/\S/) <= indent) break;
      const m = /^\s*([a-z]+):\s*"?([^"\s#]*)"?/.exec(line);
      const [, name, value] = m ?? [];
      if (name === undefined) continue;
      if (!value) section = name;
      else values[`${section}.${name}`] = value;
    }
  }
  const memoryLimit = values["limits.memory"];
  if (!memoryLimit) throw new Error(`${file}: no resources.limits.memory`);
  return {
    file,
    memoryLimit,
    memoryLimitBytes: quantityBytes(memoryLimit),
    memoryRequest: values["requests.memory"] ?? null,
    cpuLimit: values["limits.cpu"] ?? null,
  };
}

/** A Kubernetes memory quantity (`256Mi`, `1Gi`, `300M`, `268435456`) in bytes. */
export function quantityBytes(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?$/.exec(q);
  if (!m) throw new Error(`unsupported memory quantity ${q}`);
  const unit = { Ki: 1024, Mi: MiB, Gi: 1024 * MiB, k: 1e3, M: 1e6, G: 1e9 }[m[2] ?? ""] ?? 1;
  return Math.round(Number(m[1]) * unit);
}

/** Watches one container's cgroup (v1 or v2) and process while it runs. */
class Watch {
  readonly name: string;
  #cgroup: string | null = null;
  #pid: number | null = null;
  #timer: NodeJS.Timeout | null = null;
  anonPeak = 0;
  cgroupPeak = 0;
  oomKills: number | null = null;
  processPeakMb: number | null = null;
  processRssMb: number | null = null;

  constructor(name: string) {
    this.name = name;
  }

  async start(): Promise<void> {
    const inspect = await mustPodman(["inspect", "-f", "{{.Id}} {{.State.Pid}}", this.name]);
    const [id, pid] = inspect.stdout.trim().split(" ");
    this.#pid = Number(pid);
    // cgroup v1 with the cgroupfs manager: /sys/fs/cgroup/memory/libpod_parent/libpod-ID; v2: the pid's own cgroup.
    const candidates = [`/sys/fs/cgroup/memory/libpod_parent/libpod-${id}`];
    try {
      const own = /^0::(.*)$/m.exec(readFileSync(`/proc/${this.#pid}/cgroup`, "utf8"))?.[1];
      if (own) candidates.push(join("/sys/fs/cgroup", own));
      const v1 = /:memory:(.*)$/m.exec(readFileSync(`/proc/${this.#pid}/cgroup`, "utf8"))?.[1];
      if (v1) candidates.push(join("/sys/fs/cgroup/memory", v1));
    } catch {
      /* the process is gone already */
    }
    this.#cgroup = candidates.find((c) => existsSync(join(c, "memory.stat"))) ?? null;
    this.sample();
    this.#timer = setInterval(() => this.sample(), 200);
  }

  /** Reads the cgroup's figures and the process's; keeps the peaks. */
  sample(): void {
    const cgroup = this.#cgroup;
    if (cgroup) {
      const read = (f: string): string | null => {
        try {
          return readFileSync(join(cgroup, f), "utf8");
        } catch {
          return null;
        }
      };
      const stat = read("memory.stat") ?? "";
      const anon = Number(/^(?:rss|anon) (\d+)$/m.exec(stat)?.[1] ?? 0);
      this.anonPeak = Math.max(this.anonPeak, anon);
      const peak = Number(
        read("memory.max_usage_in_bytes") ?? read("memory.peak") ?? read("memory.usage_in_bytes") ??
          read("memory.current") ?? 0,
      );
      this.cgroupPeak = Math.max(this.cgroupPeak, peak);
      const kills = /oom_kill (\d+)/.exec(read("memory.oom_control") ?? read("memory.events") ?? "")?.[1];
      if (kills !== undefined) this.oomKills = Math.max(this.oomKills ?? 0, Number(kills));
    }
    if (this.#pid) {
      const m = memoryMb(this.#pid);
      if (m.peakMb !== null) this.processPeakMb = Math.max(this.processPeakMb ?? 0, m.peakMb);
      if (m.rssMb !== null) this.processRssMb = m.rssMb;
    }
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** The figures, with the container's state and the kernel log's lines since `kernelLogFrom`. */
  async figures(kernelLogFrom: number, id: string): Promise<PodFigures> {
    this.sample();
    this.stop();
    const format = "{{.State.Running}} {{.State.ExitCode}} {{.State.OOMKilled}}";
    const state = await podman(["inspect", "-f", format, this.name]);
    const [running, exitCode, oomKilled] = state.stdout.trim().split(" ");
    const kernelOomLines = kernelLog()
      .slice(kernelLogFrom)
      .filter((line) => /oom|out of memory|killed process/i.test(line) &&
        (line.includes(id) || /Killed process \d+ \(node\)/.test(line)));
    const logs = await podman(["logs", this.name], { timeoutMs: 60_000 });
    const outputOomLines = `${logs.stdout}\n${logs.stderr}`.split("\n")
      .filter((line) => /out of memory|FATAL ERROR|Allocation failed/i.test(line));
    const figures: PodFigures = {
      name: this.name,
      cgroupPeakMb: this.#cgroup ? round(this.cgroupPeak / MiB, 1) : null,
      anonPeakMb: this.#cgroup ? round(this.anonPeak / MiB, 1) : null,
      processPeakMb: round(this.processPeakMb, 1),
      processRssMb: round(this.processRssMb, 1),
      oomKills: this.oomKills,
      running: running === "true",
      exitCode: exitCode === undefined || running === "true" ? null : Number(exitCode),
      oomKilledFlag: oomKilled === undefined ? null : oomKilled === "true",
      kernelOomLines,
      outputOomLines,
      survived: false,
    };
    figures.survived = figures.running && (figures.oomKills ?? 0) === 0 && !figures.oomKilledFlag &&
      kernelOomLines.length === 0 && outputOomLines.length === 0;
    return figures;
  }
}

/** The kernel log as lines (empty when it cannot be read). */
function kernelLog(): string[] {
  try {
    return execFileSync("dmesg", [], { encoding: "utf8", maxBuffer: 64 * MiB }).split("\n");
  } catch {
    return [];
  }
}

/** Polls `GET /status` on 127.0.0.1:port until it answers 200; seconds since `from` (default now). */
function waitLive(port: number, timeoutMs: number, name: string, from = performance.now()): Promise<number> {
  return pollStatus(port, "/status", (status) => status === 200, timeoutMs, name, from, () => 20);
}

/**
 * Polls `GET /status?level=full` on 127.0.0.1:port until it answers 200 with at least `keys` keys; seconds since
 * `from` (default now).
 */
function waitKeys(
  port: number, keys: number, timeoutMs: number, name: string, from = performance.now(),
): Promise<number> {
  const ready = (status: number, body: string) =>
    status === 200 && Number(/(\d+) keys/.exec(body)?.[1] ?? -1) >= keys;
  return pollStatus(port, "/status?level=full", ready, timeoutMs, name, from, (elapsed) =>
    Math.min(1000, 50 + elapsed / 50),
  );
}

/**
 * Asks `path` of container `name` (published on 127.0.0.1:port) until `done(status, body)`; seconds since `from`.
 * Throws when the container stops or `timeoutMs` pass, with the last answer.
 */
async function pollStatus(
  port: number, path: string, done: (status: number, body: string) => boolean, timeoutMs: number, name: string,
  from: number, pause: (elapsedMs: number) => number,
): Promise<number> {
  let last = "no answer";
  while (performance.now() - from < timeoutMs) {
    try {
      const r = await req(port, "GET", path, undefined, 2000);
      if (done(r.status, r.body.toString())) return (performance.now() - from) / 1000;
      last = `${r.status} ${r.body.toString().trim().slice(0, 120)}`;
    } catch (e) {
      last = (e as Error).message;
    }
    const state = await podman(["inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", name]);
    if (!state.stdout.startsWith("true")) {
      throw new Error(`${name} stopped (running, exit code: ${state.stdout.trim()}); last answer: ${last}`);
    }
    await sleep(pause(performance.now() - from));
  }
  throw new Error(`${name}: no GET ${path} as wanted after ${timeoutMs} ms (last: ${last})`);
}

/** The leader's part of a pod run, into `r`: live, ready with every key, then the mixed load. */
async function leaderUnderLoad(
  o: Options, log: (msg: string) => void, r: PodResults, watch: Watch, port: number, scripts: string,
): Promise<void> {
  const runAt = performance.now();
  r.leaderLiveSeconds = round(await waitLive(port, 120_000, watch.name, runAt), 2);
  r.leaderReadySeconds = round(await waitKeys(port, o.keys, 120_000, watch.name, runAt), 2);
  log(`  live in ${r.leaderLiveSeconds} s, ready with ${o.keys} keys in ${r.leaderReadySeconds} s`);
  const mixBase: LoadOptions = {
    tool: o.load, port, connections: o.connections, threads: o.threads, seconds: o.mixSeconds,
    tmpDir: scripts, cpus: null,
  };
  const mixRuns: LoadResult[] = [];
  for (const w of mixedLoadWorkloads(o.keys, VALUE_BYTES, "pod-")) {
    const run = await runLoad(w, mixBase);
    mixRuns.push(run);
    watch.sample();
    log(`  mixed load, ${w.name}: ${Math.round(run.rps)}/s${run.failureKinds ? ` (failed: ${run.failureKinds})` : ""}; ` +
      `cgroup peak ${(watch.cgroupPeak / MiB).toFixed(0)} MB, anonymous ${(watch.anonPeak / MiB).toFixed(0)} MB`);
  }
  const [getRun, putRun, getAgainRun] = mixRuns;
  r.mixedLoad = {
    seconds: o.mixSeconds,
    getRps: getRun?.rps ?? null,
    putRps: putRun?.rps ?? null,
    getAgainRps: getAgainRun?.rps ?? null,
    failures: mixRuns.reduce((sum, m) => sum + m.errors + m.badStatus, 0),
  };
}

/**
 * Runs the pod mode into `r`; everything it starts is removed before it returns. `follower` false (default true)
 * stops after the leader's mixed load; `root` (default this checkout) is the mehdb checkout whose image is built.
 */
export async function runPod(
  o: Options, log: (msg: string) => void, r: PodResults, follower = true, root = ROOT,
): Promise<void> {
  const missing = podmanMissing();
  if (missing) throw new Error(`--pod needs podman: ${missing}`);
  const resources = manifestResources(root);
  r.resources = resources;
  const tag = `${process.pid}-${Date.now().toString(36)}`;
  const image = `localhost/mehdb-bench:${tag}`;
  const names = {
    leader: `mehdb-bench-0-${tag}`, follower: `mehdb-bench-1-${tag}`, populate: `mehdb-bench-populate-${tag}`,
  };
  const volumes = [`mehdb-bench-data-0-${tag}`, `mehdb-bench-data-1-${tag}`];
  let imageBuilt = false;
  const scripts = mkdtempSync(join(o.dir, "mehdb-bench-pod-")); // wrk's Lua scripts
  const cleanup = async (): Promise<void> => {
    rmSync(scripts, { recursive: true, force: true });
    for (const name of Object.values(names)) await podman(["rm", "-f", "-t", "2", name], { timeoutMs: 60_000 });
    for (const volume of volumes) await podman(["volume", "rm", "-f", volume], { timeoutMs: 60_000 });
    if (imageBuilt) await podman(["rmi", "-f", image], { timeoutMs: 60_000 });
  };
  const onSignal = (): void => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const base = await ensureNodeBase(log);
    r.meta.base = base;
    log(`building ${image} on ${base}`);
    const build = [
      "build", "--pull=never", "--build-arg", `NODE_IMAGE=${base}`, "-t", image, "-f", "Containerfile", ".",
    ];
    await mustPodman(build, { cwd: root, timeoutMs: 600_000 });
    imageBuilt = true;
    for (const volume of volumes) await mustPodman(["volume", "create", volume]);
    const memory = `${Math.floor(resources.memoryLimitBytes / MiB)}m`;
    const limits = ["--memory", memory, "--memory-swap", memory,
      ...(resources.cpuLimit ? ["--cpus", String(parseCpu(resources.cpuLimit))] : [])];
    r.meta.limits = limits.join(" ");

    log(`writing ${o.keys} keys of ${VALUE_BYTES} B into ${volumes[0]} (as the image's user)`);
    const populate = `const fs=require("fs");const v="v".repeat(${VALUE_BYTES});` +
      `for(let i=0;i<${o.keys};i++){` +
      `const k="${POPULATED_KEY_PREFIX}"+String(i).padStart(${POPULATED_KEY_DIGITS},"0");` +
      `fs.writeFileSync("/data/"+k,(k+":"+v).slice(0,${VALUE_BYTES}));}`;
    const volume = `${volumes[0]}:/data`;
    const populateRun = [
      "run", "--rm", "--name", names.populate, ...RUN_LIMITS, "-v", volume, image, "node", "-e", populate,
    ];
    await mustPodman(populateRun, { timeoutMs: 600_000 });

    const kernelLogFrom = kernelLog().length;
    const leaderPort = await freePort();
    log(`leader ${names.leader}: ${limits.join(" ")}`);
    await mustPodman(["run", "-d", "--name", names.leader, "--hostname", "mehdb-0", ...RUN_LIMITS, ...limits,
      "-v", `${volumes[0]}:/data`, "-p", `127.0.0.1:${leaderPort}:9876`, image]);
    const leaderWatch = new Watch(names.leader);
    await leaderWatch.start();
    const leaderId = (await mustPodman(["inspect", "-f", "{{.Id}}", names.leader])).stdout.trim();
    try {
      await leaderUnderLoad(o, log, r, leaderWatch, leaderPort, scripts);
    } catch (e) {
      r.leader = await leaderWatch.figures(kernelLogFrom, leaderId);
      throw e;
    }
    if (!follower) {
      await sleep(1000);
      r.leader = await leaderWatch.figures(kernelLogFrom, leaderId);
      return;
    }

    const ip = (await mustPodman(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", names.leader])).stdout.trim();
    const followerPort = await freePort();
    log(`follower ${names.follower}: catching up ${o.keys} keys from ${ip}`);
    await mustPodman(["run", "-d", "--name", names.follower, "--hostname", "mehdb-1", ...RUN_LIMITS, ...limits,
      "--add-host", `mehdb-0.mehdb.default.svc.cluster.local:${ip}`,
      "-v", `${volumes[1]}:/data`, "-p", `127.0.0.1:${followerPort}:9876`, image]);
    const followerWatch = new Watch(names.follower);
    await followerWatch.start();
    r.catchupSeconds = round(await waitKeys(followerPort, o.keys, Math.max(300_000, o.keys * 5), names.follower), 2);
    log(`  caught up in ${r.catchupSeconds} s`);
    await sleep(1000);
    const followerId = (await mustPodman(["inspect", "-f", "{{.Id}}", names.follower])).stdout.trim();
    r.leader = await leaderWatch.figures(kernelLogFrom, leaderId);
    r.follower = await followerWatch.figures(kernelLogFrom, followerId);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await cleanup();
  }
}

function parseCpu(q: string): number {
  return q.endsWith("m") ? Number(q.slice(0, -1)) / 1000 : Number(q);
}

/** The table printed at the end of `--pod`. */
export function formatPod(r: PodResults): string {
  const out: string[] = [];
  const res = r.resources;
  const n = (v: number | null | undefined, digits = 0): string => (v == null ? "—" : v.toFixed(digits));
  out.push(`mehdb bench --pod — ${String(r.meta.date)}; image on ${String(r.meta.base ?? "the local Node 24 base")}`);
  out.push(`limits from ${res?.file ?? "?"}: memory ${res?.memoryLimit ?? "?"} ` +
    `(request ${res?.memoryRequest ?? "—"}), ` +
    `cpu ${res?.cpuLimit ?? "—"} → podman ${String(r.meta.limits ?? "—")}`);
  const mix = r.mixedLoad;
  out.push(`leader: ${n(r.keys)} keys on its volume, live in ${n(r.leaderLiveSeconds, 2)} s, ` +
    `ready in ${n(r.leaderReadySeconds, 2)} s; ` +
    `mixed load ${mix?.seconds ?? "—"} s each: ` +
    `random GETs ${n(mix?.getRps)}/s, random PUTs ${n(mix?.putRps)}/s, random GETs ${n(mix?.getAgainRps)}/s` +
    `${mix?.failures ? ` (${mix.failures} failed)` : ""}`);
  out.push(`follower: caught up ${n(r.keys)} keys in ${n(r.catchupSeconds, 1)} s`);
  out.push("");
  out.push("container                    cgroup peak  anon peak  node RSS peak  oom_kill  exit  OOMKilled  " +
    "kernel log  verdict");
  for (const f of [r.leader, r.follower]) {
    if (!f) continue;
    out.push(`${f.name.padEnd(29)}${`${n(f.cgroupPeakMb)} MB`.padStart(11)}${`${n(f.anonPeakMb)} MB`.padStart(11)}` +
      `${`${n(f.processPeakMb)} MB`.padStart(15)}` +
      `${String(f.oomKills ?? "?").padStart(10)}${(f.running ? "running" : String(f.exitCode)).padStart(9)}` +
      `${String(f.oomKilledFlag).padStart(11)}` +
      `${`${f.kernelOomLines.length} lines`.padStart(12)}  ${f.survived ? "not killed" : "KILLED"}`);
    for (const line of f.kernelOomLines.slice(0, 5)) out.push(`  kernel: ${line}`);
    for (const line of f.outputOomLines.slice(0, 5)) out.push(`  output: ${line}`);
  }
  out.push("(cgroup peak counts the page cache of the files read and written, which the kernel reclaims before it " +
    "kills; anon peak does not)");
  if (r.errors.length) {
    out.push("");
    out.push("errors:");
    for (const e of r.errors) out.push(`  ${e.split("\n").join("\n  ")}`);
  }
  return out.join("\n");
}
