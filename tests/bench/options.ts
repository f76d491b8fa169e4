/**
 * Command-line options of `npm run bench`, with the quick and full presets.
 */

import { resolve } from "node:path";
import { tmpdir } from "node:os";

/** Everything a bench run is parameterised by. */
export interface Options {
  mode: "quick" | "full";
  /** Seconds of each load run (wrk rounds to whole seconds). */
  duration: number;
  /** Seconds of the untimed warm-up run per workload and server; 0 skips it. */
  warmup: number;
  /** Keys stored for the start-up, memory, lag and large catch-up figures. */
  keys: number;
  /** Keys of the small catch-up figure. */
  smallKeys: number;
  /** Repetitions of each load run, fsync loop and start-up (medians are reported). */
  reps: number;
  connections: number;
  threads: number;
  load: "wrk" | "node";
  syncIntervalMs: number;
  lagSamples: number;
  idleTicks: number;
  /** Where the JSON results go. */
  out: string;
  /** Parent of the temporary directory holding every data dir (its filesystem is the one measured). */
  dir: string;
  /** The server's entry file, relative to the repo root. */
  entry: string;
  /** When set, the throughput leader runs with --cpu-prof and writes its profile here. */
  cpuProf: string | null;
  /** Also measure GET pinned: the servers on CPU 0, the load generator on the others (taskset). */
  pin: boolean;
  /** Seconds of the PUT burst (50 B values over 1 000 keys) before each repetition of "GET after writes". */
  burstSeconds: number;
  /** Seconds of each part of the mixed load (random GETs, random PUTs, random GETs) before the memory figure. */
  mixSeconds: number;
  /** Run the image in podman with the manifests' memory limit instead (see pod.ts). */
  pod: boolean;
  /** Also measure GET on a leader with a read token (the load sending `Authorization`), in the same repetitions. */
  readToken: boolean;
  /** `--scale`: the key counts to measure start-up, memory and `/keys` at instead (see scale.ts); null otherwise. */
  scale: number[] | null;
  /** `--scale` without the pod column (`--no-pod`). */
  scalePod: boolean;
  /** The mehdb checkout whose servers (and image) `--scale` measures; default this one. */
  root: string | null;
  /** Measure snapshot and restore of `keys` keys instead (see snapshot.ts). */
  snapshot: boolean;
  /** Only the durable PUT rows (50 B and 64 KB beside the fsync loop): no GET, memory or replication figures. */
  putOnly: boolean;
}

/** The key counts of `--scale` without a list. */
export const SCALE_KEYS = [10_000, 100_000, 1_000_000];

export const USAGE = `usage: npm run bench -- [--quick | --full] [options]
  --quick             about a minute: 2 000 keys, 2 s load runs, 1 repetition, 250 ms sync interval
  --full              the default: 100 000 keys, 8 s load runs, 5 repetitions, 1 000 ms sync interval
  --pod               instead: build the image and run it in podman with the memory limit of
                      k8s/statefulset.yaml, a leader with --keys keys (default 100 000) under load and
                      a follower catching up, and check that neither is OOM-killed (see pod.ts)
  --scale[=N,N,...]   instead: for 10 000, 100 000 and 1 000 000 keys (or the counts given), a leader's
                      start → live and → ready, resident memory idle and after a mixed load, bytes per
                      key, GET /keys time, then the image in podman at that size (see scale.ts); minutes
  --no-pod            with --scale: no podman column
  --root DIR          with --scale: measure the mehdb checkout in DIR (its src/, npm start's flags,
                      Containerfile and k8s/) with this bench
  --snapshot          instead: GET /snapshot of --keys keys beside tar -cf, with 4 writers on (RSS, write
                      latency), and PUT /snapshot beside the fsync loop (see snapshot.ts)
  --duration SEC      seconds per load run (wrk: whole seconds)
  --warmup SEC        untimed warm-up run per workload and server (0: none)
  --keys N            keys stored for start-up, memory, lag and the large catch-up
  --small-keys N      keys of the small catch-up (default min(10 000, keys / 10))
  --reps N            repetitions of each timing (medians reported; --scale: 3 starts per size)
  --connections N     load connections (default 32)
  --threads N         wrk threads (default 2)
  --load wrk|node     load generator (default wrk when installed; node forces the Node one)
  --sync-interval MS  the follower's MEHDB_SYNC_INTERVAL_MS
  --lag-samples N     replication lag probes
  --idle-ticks N      sync intervals watched for the idle-tick cost
  --out FILE          JSON results (default ./bench-results.json)
  --dir DIR           where the temporary data dirs go (default the OS temp dir)
  --entry FILE        server entry (default src/main.ts)
  --burst SEC         PUT burst before each repetition of "GET after writes" (default 4; quick 2)
  --mix SEC           each part of the mixed load before the memory figure (default 6; quick 2)
  --no-pin            no pinned GET rows (by default, with 2+ CPUs and taskset, GET is also measured
                      with the servers on CPU 0 and the load generator on the other CPUs; every other
                      figure, and the GET rows the targets judge, run unpinned, as in a pod)
  --read-token        also run the unpinned GET-before-writes measurement on a second leader with a read
                      token (the load sending "Authorization: Bearer ..."), in the same repetitions, and
                      print its row and the ratio with / without (target ≥ 0.97)
  --put-only          only the PUT rows (50 B, 64 KB) beside the fsync loop; nothing else is measured
  --cpu-prof DIR      profile the throughput leader (node --cpu-prof) into DIR, and print its hot spots
environment: MEHDB_BENCH_NODE=/path/to/node runs every process with that Node (>= 22.18, no tsx),
  e.g. the Node 24 of the image`;

/** Parses argv (without node and script); throws with a one-line message on a bad option. */
export function parseOptions(argv: string[], haveWrk: boolean, canPin = false): Options {
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === undefined) break;
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const [name, inline] = a.slice(2).split("=", 2) as [string, string | undefined];
    if (name === "quick" || name === "full" || name === "help" || name === "no-pin" || name === "pod" ||
      name === "read-token" || name === "no-pod" || name === "snapshot" || name === "put-only" || (name === "scale" && inline === undefined)) {
      flags.set(name, true);
    } else {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`--${name} needs a value`);
      flags.set(name, v);
    }
  }
  if (flags.has("help")) throw new Error(USAGE);
  const quick = flags.has("quick") && !flags.has("full");
  const num = (name: string, dflt: number, min: number): number => {
    const v = flags.get(name);
    flags.delete(name);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (v === true || !Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number ≥ ${min}`);
    return n;
  };
  const str = (name: string, dflt: string): string => {
    const v = flags.get(name);
    flags.delete(name);
    if (v === true) throw new Error(`--${name} needs a value`);
    return v ?? dflt;
  };
  const pin = canPin && !flags.has("no-pin");
  const pod = flags.has("pod");
  const readToken = flags.has("read-token");
  const scaleFlag = flags.get("scale");
  const scale = scaleFlag === undefined ? null : scaleFlag === true ? SCALE_KEYS : scaleFlag.split(",").map(Number);
  if (scale?.some((n) => !Number.isInteger(n) || n < 1)) throw new Error("--scale takes key counts: --scale=10000,100000");
  const scalePod = !flags.has("no-pod");
  const snapshot = flags.has("snapshot");
  const putOnly = flags.has("put-only");
  for (const name of ["read-token", "scale", "no-pod", "snapshot", "put-only"]) flags.delete(name);
  flags.delete("quick");
  flags.delete("full");
  flags.delete("no-pin");
  flags.delete("pod");
  const keys = Math.round(num("keys", quick && !pod ? 2000 : 100_000, 10));
  const load = str("load", haveWrk ? "wrk" : "node");
  if (load !== "wrk" && load !== "node") throw new Error("--load must be wrk or node");
  const o: Options = {
    mode: quick ? "quick" : "full",
    duration: num("duration", quick ? 2 : 8, 0.2),
    warmup: num("warmup", quick ? 1 : 2, 0),
    keys,
    smallKeys: Math.round(num("small-keys", Math.min(10_000, Math.ceil(keys / 10)), 1)),
    reps: Math.round(num("reps", quick ? 1 : scale ? 3 : 5, 1)),
    connections: Math.round(num("connections", 32, 1)),
    threads: Math.round(num("threads", 2, 1)),
    load,
    syncIntervalMs: Math.round(num("sync-interval", quick ? 250 : 1000, 10)),
    lagSamples: Math.round(num("lag-samples", quick ? 10 : 40, 1)),
    idleTicks: Math.round(num("idle-ticks", quick ? 3 : 5, 1)),
    out: resolve(str("out", "bench-results.json")),
    dir: resolve(str("dir", tmpdir())),
    entry: str("entry", "src/main.ts"),
    cpuProf: flags.has("cpu-prof") ? resolve(str("cpu-prof", "")) : null,
    pin,
    burstSeconds: num("burst", quick ? 2 : 4, 0.5),
    mixSeconds: num("mix", quick ? 2 : 6, 0.5),
    pod,
    readToken,
    scale,
    scalePod,
    root: flags.has("root") ? resolve(str("root", "")) : null,
    snapshot,
    putOnly,
  };
  const unknown = [...flags.keys()];
  if (unknown.length) throw new Error(`unknown option --${unknown[0]}\n${USAGE}`);
  if (o.load === "wrk" && !haveWrk) throw new Error("--load wrk: wrk is not installed");
  return o;
}
