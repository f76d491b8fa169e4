// Smoke test of `npm run bench`: runs the quick bench on tiny settings and checks
// only that every figure is present and sane (finite, positive, ratios computed).
// No timing thresholds: the machine's speed is not under test here.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { missingFigures, type Results } from "./bench/report.ts";
import { REPO_ROOT } from "./bench/procs.ts";

test("npm run bench --quick on tiny settings produces every figure", { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mehdb-bench-test-"));
  const out = join(dir, "results.json");
  try {
    const args = [
      "--import", "tsx", "tests/bench/bench.ts", "--quick",
      "--duration", "1", "--warmup", "0", "--reps", "1", "--keys", "300", "--small-keys", "50",
      "--sync-interval", "100", "--lag-samples", "4", "--idle-ticks", "3", "--connections", "8",
      "--out", out, "--dir", dir,
    ];
    const child = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (c: Buffer) => (output += c.toString()));
    child.stderr.on("data", (c: Buffer) => (output += c.toString()));
    const killer = setTimeout(() => child.kill("SIGTERM"), 170_000);
    const code = await new Promise<number | null>((res) => child.on("exit", (c) => res(c)));
    clearTimeout(killer);
    assert.equal(code, 0, `bench exited ${code}:\n${output}`);
    const results = JSON.parse(readFileSync(out, "utf8")) as Results;
    assert.deepEqual(missingFigures(results), [], `figures missing or not positive:\n${output}`);
    assert.deepEqual(results.errors, []);
    for (const t of results.targets) assert.ok(typeof t.value === "number" && Number.isFinite(t.value), `target ${t.name} has no value`);
    assert.match(output, /GET 10 B value/);
    assert.match(output, /results: /);
    // The bench removed its temporary data dirs.
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith("mehdb-bench-")), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
