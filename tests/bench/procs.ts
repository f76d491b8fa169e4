/**
 * Child processes of the benchmark: start them, watch their output, stop them by
 * pid (also on error and Ctrl-C), and read their resident memory.
 */

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { ROOT } from "../helpers/mehdb.ts";

/** A started child: its pid, the last lines it printed, and a promise of its exit. */
export interface Child {
  name: string;
  pid: number;
  proc: ChildProcess;
  startedAt: number;
  lines: string[];
  exited: Promise<number | string | null>;
  isRunning(): boolean;
}

const children = new Set<Child>();

/**
 * Starts `cmd args` with extra `env` (default none), pinned to `cpus` (taskset list, e.g. "0" or "1-3") when
 * given (default not pinned); output is kept (last 200 lines).
 */
export function startProcess(
  name: string,
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
  cpus: string | null = null,
): Child {
  const startedAt = performance.now();
  // taskset execs the command, so the pid stays the command's own.
  const [file, argv] = cpus === null ? [cmd, args] : ["taskset", ["-c", cpus, cmd, ...args]];
  const proc = spawn(file, argv, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (proc.pid === undefined) throw new Error(`${name}: could not start ${cmd}`);
  let running = true;
  const lines: string[] = [];
  const keep = (chunk: Buffer): void => {
    for (const line of chunk.toString("utf8").split("\n")) {
      if (line === "") continue;
      lines.push(line);
      if (lines.length > 200) lines.shift();
    }
  };
  proc.stdout?.on("data", keep);
  proc.stderr?.on("data", keep);
  const exited = new Promise<number | string | null>((res) => {
    proc.on("exit", (code, signal) => {
      running = false;
      res(code ?? signal);
    });
  });
  const child: Child = { name, pid: proc.pid, proc, startedAt, lines, exited, isRunning: () => running };
  children.add(child);
  void exited.then(() => children.delete(child));
  return child;
}

/**
 * Starts a TypeScript file of this repo under tsx (one process: `node [NODE_ARGS] --import tsx FILE`), pinned to
 * `cpus` when given.
 */
export function startTs(
  name: string,
  file: string,
  args: string[] = [],
  env: Record<string, string> = {},
  nodeArgs: string[] = [],
  cpus: string | null = null,
): Child {
  // MEHDB_BENCH_NODE names another Node (≥ 22.18, such as the image's Node 24), which runs .ts files itself.
  const node = process.env.MEHDB_BENCH_NODE;
  const loader = node ? [] : ["--import", "tsx"];
  return startProcess(name, node ?? process.execPath, [...nodeArgs, ...loader, file, ...args], env, cpus);
}

/** Is taskset (util-linux) available to pin processes to CPUs? */
export function haveTaskset(): boolean {
  try {
    execFileSync("taskset", ["-c", "0", "true"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** Sends SIGTERM to the child's pid, then SIGKILL after `graceMs`; resolves when it has exited. */
export async function stopProcess(child: Child, graceMs = 5000): Promise<void> {
  if (!child.isRunning()) return;
  try {
    process.kill(child.pid, "SIGTERM");
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    try {
      if (child.isRunning()) process.kill(child.pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }, graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** Stops every child still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => stopProcess(c, 3000)));
}

/** Synchronous last resort (process 'exit'): SIGKILL every child still running, by pid. */
export function killAllSync(): void {
  for (const c of children) {
    try {
      if (c.isRunning()) process.kill(c.pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
}

/** Resident and peak resident memory of a pid in MB, from /proc (null where unavailable). */
export function memoryMb(pid: number): { rssMb: number | null; peakMb: number | null } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (name: string): number | null => {
      const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status);
      return m ? Number(m[1]) / 1024 : null;
    };
    return { rssMb: field("VmRSS"), peakMb: field("VmHWM") };
  } catch {
    return { rssMb: null, peakMb: null };
  }
}

/**
 * CPU time (user + system) the process has used so far, in seconds, from
 * /proc/PID/stat (clock ticks, 100 per second on Linux); null where unreadable.
 * Less sensitive than throughput to other work on a shared machine.
 */
export function cpuSeconds(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The fields after the command name (which may hold spaces), from field 3 on.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return null;
  }
}

/** Moves every thread of a running process to `cpus` (taskset list, e.g. "0" or "0-1"). */
export function setAffinity(pid: number, cpus: string): void {
  execFileSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { stdio: "ignore" });
}

/** The child's recent output, for an error message. */
export function tail(child: Child, n = 20): string {
  return child.lines.slice(-n).map((l) => `  ${child.name}| ${l}`).join("\n");
}
