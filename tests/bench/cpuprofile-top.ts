// Summarizes a V8 .cpuprofile (from `node --cpu-prof`): self time by function and
// by file, top N, so that a bench run's hot spots can be read in a terminal.
// Usage: node --import tsx tests/bench/cpuprofile-top.ts FILE.cpuprofile [N]

import { readFileSync } from "node:fs";

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

process.stdout.on("error", () => process.exit(0));
const [path, nArg] = process.argv.slice(2);
if (path) {
  const top = Number(nArg ?? 25);
  const s = selfTimes(JSON.parse(readFileSync(path, "utf8")) as Profile);
  const pct = (ms: number): string => `${((100 * ms) / s.totalMs).toFixed(1).padStart(5)}%`;
  console.log(`total ${s.totalMs.toFixed(0)} ms sampled\n\nby file:`);
  for (const [k, v] of s.byFile.slice(0, top)) console.log(`  ${pct(v)}  ${k}`);
  console.log("\nby function:");
  for (const [k, v] of s.byFunction.slice(0, top)) console.log(`  ${pct(v)}  ${k}`);
}
