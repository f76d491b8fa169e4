/**
 * Summarizes a V8 .cpuprofile (from `node --cpu-prof`): self time by function and
 * by file, top N, so that a bench run's hot spots can be read in a terminal.
 * Usage: node --import tsx tests/bench/cpuprofile-top.ts FILE.cpuprofile [N]
 */

import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Self time (ms) per "function file:line" and per file, sorted descending. */
export function selfTimes(p: Profile): { byFunction: [string, number][]; byFile: [string, number][]; totalMs: number } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    total += dt;
    const n = byId.get(id);
    if (!n) return;
    const url = n.callFrame.url.replace(/^file:\/\//, "").replace(/.*\/(src|node_modules|tests)\//, "$1/");
    const name = `${n.callFrame.functionName || "(anonymous)"} ${url || "(native)"}:${n.callFrame.lineNumber + 1}`;
    fn.set(name, (fn.get(name) ?? 0) + dt);
    const f = url || n.callFrame.functionName;
    file.set(f, (file.get(f) ?? 0) + dt);
  });
  const sort = (m: Map<string, number>): [string, number][] => [...m].sort((a, b) => b[1] - a[1]);
  return { byFunction: sort(fn), byFile: sort(file), totalMs: total };
}

/** The main thread's profile in `dir` (the largest .cpuprofile), or null. */
export function mainProfile(dir: string): string | null {
  const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile")).map((f) => join(dir, f));
  files.sort((a, b) => statSync(b).size - statSync(a).size);
  return files[0] ?? null;
}

/** The top `n` lines of a profile's self times, as text. */
export function formatTop(file: string, n: number): string {
  const s = selfTimes(JSON.parse(readFileSync(file, "utf8")) as Profile);
  const pct = (ms: number): string => `${((100 * ms) / s.totalMs).toFixed(1).padStart(5)}%`;
  const lines = [`${file}: ${s.totalMs.toFixed(0)} ms sampled`, "by file:"];
  for (const [k, v] of s.byFile.slice(0, n)) lines.push(`  ${pct(v)}  ${k}`);
  lines.push("by function:");
  for (const [k, v] of s.byFunction.slice(0, n)) lines.push(`  ${pct(v)}  ${k}`);
  return lines.join("\n");
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  process.stdout.on("error", () => process.exit(0));
  const [path, nArg] = process.argv.slice(2);
  if (!path) {
    console.error("usage: cpuprofile-top.ts FILE.cpuprofile [N]");
    process.exit(2);
  }
  console.log(formatTop(path, Number(nArg ?? 25)));
}
