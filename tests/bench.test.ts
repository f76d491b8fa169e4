/**
 * Smoke test of `npm run bench`: runs the quick bench on tiny settings and checks
 * only that every figure is present and sane (finite, positive, ratios computed).
 * No timing thresholds: the machine's speed is not under test here.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { waitReady } from "./bench/http.ts";
import { freePort, ROOT } from "./helpers/mehdb.ts";
import { haveWrk, runLoad } from "./bench/load.ts";
import { missingFigures, type Results } from "./bench/report.ts";
import { startTs, stopAll } from "./bench/procs.ts";
import { serverNodeEnv, serverNodeFlags, startLeader } from "./bench/mehdb.ts";
import { manifestResources, quantityBytes } from "./bench/pod.ts";
import type { ScaleResults } from "./bench/scale.ts";

test("npm run bench --quick --read-token on tiny settings produces every figure, the read token's too", {
  timeout: 180_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mehdb-bench-test-"));
  const out = join(dir, "results.json");
  try {
    const args = [
      "--import", "tsx", "tests/bench/bench.ts", "--quick",
      "--duration", "1", "--warmup", "0", "--reps", "1", "--keys", "300", "--small-keys", "50",
      "--sync-interval", "100", "--lag-samples", "4", "--idle-ticks", "3", "--connections", "8",
      "--out", out, "--dir", dir, "--read-token",
    ];
    const { code, output } = await runBench(args);
    assert.equal(code, 0, `bench exited ${code}:\n${output}`);
    const results = JSON.parse(readFileSync(out, "utf8")) as Results;
    assert.deepEqual(missingFigures(results), [], `figures missing or not positive:\n${output}`);
    assert.deepEqual(results.errors, []);
    for (const t of results.targets) {
      assert.ok(typeof t.value === "number" && Number.isFinite(t.value), `target ${t.name} has no value`);
    }
    assert.match(output, /GET 10 B value, before writes/);
    assert.match(output, /GET 10 B value, after a \S+ s PUT burst/);
    // --read-token: its row, its ratio, and no request refused (the load sent the token).
    assert.ok(results.getReadToken, "no read-token figures");
    assert.equal(results.getReadToken.mehdb.failures, 0, `requests failed with the read token:\n${output}`);
    assert.ok(results.targets.some((t) => t.name === "GET with read token / without"), "no read-token target");
    assert.match(output, /GET 10 B value, before writes, read token/);
    assert.match(output, /read token: with \/ without +req\/s [\d.]+/);
    assert.match(output, /leader RSS [\d.]+ MB \(peak [\d.]+\) after a mixed load/);
    assert.match(output, /results: /);
    // The bench removed its temporary data dirs.
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith("mehdb-bench-")), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("npm run bench --scale on tiny sizes prints a row per size with every figure", { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mehdb-bench-scale-test-"));
  const out = join(dir, "scale.json");
  try {
    const args = [
      "--import", "tsx", "tests/bench/bench.ts", "--scale=200,500", "--no-pod", "--reps", "2", "--mix", "1",
      "--connections", "4", "--out", out, "--dir", dir,
    ];
    const { code, output } = await runBench(args);
    assert.equal(code, 0, `bench --scale exited ${code}:\n${output}`);
    const results = JSON.parse(readFileSync(out, "utf8")) as ScaleResults;
    assert.ok((results.emptyLeaderRssMb ?? 0) > 0, "no empty leader RSS");
    assert.deepEqual(results.rows.map((r) => r.keys), [200, 500]);
    for (const row of results.rows) {
      assert.deepEqual(row.errors, [], `${row.keys} keys: errors`);
      assert.equal(row.keysListed, row.keys, `${row.keys} keys: GET /keys listed ${row.keysListed}`);
      assert.equal(row.readyRuns.length, 2);
      for (const [name, v] of Object.entries({
        live: row.liveMs, ready: row.readyMs, idle: row.rssIdleMb, after: row.rssAfterLoadMb, list: row.keysListMs,
      })) {
        assert.ok(typeof v === "number" && Number.isFinite(v) && v >= 0, `${row.keys} keys: ${name} is ${v}`);
      }
      assert.ok((row.liveMs ?? Infinity) <= (row.readyMs ?? -1), `${row.keys} keys: live after ready`);
      assert.equal(typeof row.bytesPerKey, "number");
      assert.equal(row.mixedLoad?.failures, 0, `${row.keys} keys: failed requests in the mixed load`);
      assert.equal(row.pod, null);
    }
    assert.match(output, /\| 500 \| \d+ ms \| \d+ ms \| \d+ MB \| \d+ MB \| -?\d+ \(-?\d+\) \| \d+ ms \| not run \|/);
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith("mehdb-bench-")), [], "data dirs left behind");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the Node load generator (used when wrk is missing) drives GET and PUT against the ceiling", {
  timeout: 60_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mehdb-loadgen-test-"));
  try {
    const port = await freePort();
    const ceiling = startTs("ceiling", "tests/bench/ceiling.ts", [String(port)]);
    await waitReady(ceiling, port, 30_000);
    const options = { tool: "node" as const, port, connections: 4, threads: 1, seconds: 0.5, tmpDir: dir };
    for (const w of [
      { name: "get", method: "GET" as const, path: "/get/x", keys: 1, valueBytes: 0 },
      { name: "put", method: "PUT" as const, path: "/set/x-", keys: 10, valueBytes: 70_000 },
    ]) {
      const r = await runLoad(w, options);
      assert.ok(r.requests > 0 && r.rps > 0, `${w.name}: no requests completed`);
      assert.equal(r.errors + r.badStatus, 0, `${w.name}: failed requests`);
      assert.ok(r.p50Ms !== null && r.p99Ms !== null && r.p50Ms <= r.p99Ms, `${w.name}: latency percentiles`);
    }
  } finally {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("both load generators send the workload's headers: a read token gets 200s, none gets 401s", {
  timeout: 60_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mehdb-loadgen-token-test-"));
  try {
    const tokenFile = join(dir, "read-token");
    writeFileSync(tokenFile, "loadgen-test-token\n");
    const data = join(dir, "data");
    mkdirSync(data);
    writeFileSync(join(data, "k"), "v");
    const env = { MEHDB_READ_TOKEN_FILE: tokenFile };
    const leader = await startLeader("src/main.ts", data, "leader-read-token", [], null, env);
    await waitReady(leader.child, leader.port, 30_000);
    const tools = haveWrk() ? (["node", "wrk"] as const) : (["node"] as const);
    if (tools.length === 1) console.log("# skipped wrk here: wrk is not installed (the Node generator is checked)");
    for (const tool of tools) {
      const options = { tool, port: leader.port, connections: 2, threads: 1, seconds: 0.5, tmpDir: dir };
      const get = { name: "get", method: "GET" as const, path: "/get/k", keys: 1, valueBytes: 0 };
      const allowed = await runLoad({ ...get, headers: ["Authorization: Bearer loadgen-test-token"] }, options);
      assert.ok(allowed.requests > 0, `${tool}: no requests completed`);
      assert.equal(allowed.errors + allowed.badStatus, 0, `${tool}: requests with the token failed`);
      const refused = await runLoad(get, options);
      assert.ok(refused.badStatus > 0, `${tool}: requests without the token were not refused`);
    }
  } finally {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the bench runs servers with the Node flags of npm start, or of the image's CMD on another Node", () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts: { start: string } };
  const start = pkg.scripts.start;
  const saved = process.env.MEHDB_BENCH_NODE;
  try {
    delete process.env.MEHDB_BENCH_NODE;
    const flags = serverNodeFlags();
    for (const flag of flags) assert.ok(start.split(/\s+/).includes(flag), `${flag} is in npm start`);
    assert.ok(flags.some((f) => f.startsWith("--max-semi-space-size=")), "npm start sizes the young generation");
    process.env.MEHDB_BENCH_NODE = "/nonexistent/node";
    const image = serverNodeFlags();
    const cmd = `CMD ["node", ${image.map((f) => JSON.stringify(f)).join(", ")}, "src/main.ts"]`;
    assert.ok(readFileSync(join(ROOT, "Containerfile"), "utf8").includes(cmd));
  } finally {
    if (saved === undefined) delete process.env.MEHDB_BENCH_NODE;
    else process.env.MEHDB_BENCH_NODE = saved;
  }
});

test("the bench runs servers with the environment npm start sets before node (glibc's mmap threshold)", {
  timeout: 60_000,
}, async () => {
  assert.deepEqual(serverNodeEnv(), { MALLOC_MMAP_THRESHOLD_: "131072" }, "read from package.json's start");
  const dir = mkdtempSync(join(tmpdir(), "mehdb-bench-env-test-"));
  try {
    const leader = await startLeader("src/main.ts", dir, "leader-env");
    await waitReady(leader.child, leader.port, 30_000);
    const environ = readFileSync(`/proc/${leader.child.pid}/environ`, "latin1").split("\0");
    assert.ok(environ.includes("MALLOC_MMAP_THRESHOLD_=131072"), "the leader's process has the variable");
  } finally {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("--pod reads the container's memory limit from the StatefulSet, in k8s/ or k8s/base/", () => {
  assert.equal(quantityBytes("256Mi"), 256 * 2 ** 20);
  assert.equal(quantityBytes("1Gi"), 2 ** 30);
  assert.equal(quantityBytes("300M"), 300e6);
  assert.throws(() => quantityBytes("lots"));
  const dir = mkdtempSync(join(tmpdir(), "mehdb-pod-test-"));
  try {
    const manifest = (memory: string) =>
      `spec:\n  template:\n    spec:\n      containers:\n        - name: mehdb\n` +
      `          resources:\n            requests:\n              cpu: 50m\n              memory: 192Mi\n` +
      `            limits:\n              cpu: "1"\n              memory: ${memory}\n          volumeMounts: []\n` +
      `  volumeClaimTemplates:\n    - spec:\n        resources:\n          requests:\n            storage: 1Gi\n`;
    mkdirSync(join(dir, "k8s"));
    writeFileSync(join(dir, "k8s", "statefulset.yaml"), manifest("256Mi"));
    assert.deepEqual(manifestResources(dir), {
      file: "k8s/statefulset.yaml",
      memoryLimit: "256Mi",
      memoryLimitBytes: 256 * 2 ** 20,
      memoryRequest: "192Mi",
      cpuLimit: "1",
    });
    mkdirSync(join(dir, "k8s", "base"));
    writeFileSync(join(dir, "k8s", "base", "statefulset.yaml"), manifest("512Mi"));
    assert.equal(manifestResources(dir).memoryLimitBytes, 512 * 2 ** 20);
    // The repository's own manifest has a limit the pod mode can use.
    assert.ok(manifestResources().memoryLimitBytes > 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * Runs the bench with `args` (node's own, then the bench's) from the repository: its exit code and all it printed.
 * SIGTERM (so it removes what it started) when it runs past 170 s.
 */
async function runBench(args: string[]): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr.on("data", (c: Buffer) => (output += c.toString()));
  const killer = setTimeout(() => child.kill("SIGTERM"), 170_000);
  const code = await new Promise<number | null>((res) => child.on("exit", (c) => res(c)));
  clearTimeout(killer);
  return { code, output };
}
