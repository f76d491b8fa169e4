/**
 * Snapshot and restore figures, beside the disk's bounds (`npm run bench -- --snapshot [--keys N] [--dir DIR]`,
 * values of 50 bytes):
 *
 * - `GET /snapshot` of KEYS pre-populated keys: seconds, MB/s and the leader's
 *   resident memory (before, highest while it streams), beside `tar -cf - DIR`
 *   of the same directory (read by this process, so tar cannot skip the reading);
 * - the same snapshot while 4 writers PUT: the slowest and p99 write, beside the
 *   same writers for as long without a snapshot;
 * - `PUT /snapshot` of that archive into an empty leader, beside the disk's
 *   durable-write bound: KEYS files at the fsync loop's rate (fsync-loop.ts, 4 loops).
 *
 * Prints a table on stdout and one JSON line after it.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { req, waitReady } from "./http.ts";
import { startLeader } from "./mehdb.ts";
import { populate, populatedKey } from "./populate.ts";
import { memoryMb, startTs, stopAll, tail } from "./procs.ts";
import { percentile } from "./stats.ts";

const VALUE_BYTES = 50;
const WRITERS = 4;
const ENTRY = "src/main.ts";

function log(message: string): void {
  process.stderr.write(`bench-snapshot: ${message}\n`);
}

/** Runs `command` and counts the bytes of its standard output; seconds and bytes. */
function timedOutput(command: string, args: string[]): Promise<{ seconds: number; bytes: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"] });
    let bytes = 0;
    child.stdout.on("data", (chunk: Buffer) => (bytes += chunk.length));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) reject(new Error(`${command} exited ${code}`));
      else resolve({ seconds: (performance.now() - started) / 1000, bytes });
    });
  });
}

/** `GET /snapshot`, saved to `file` when given; seconds, bytes, and the highest RSS of `pid` meanwhile. */
function getSnapshot(
  port: number,
  pid: number,
  file?: string,
): Promise<{ seconds: number; bytes: number; peakMb: number }> {
  const started = performance.now();
  let peakMb = memoryMb(pid).rssMb ?? 0;
  const sampler = setInterval(() => (peakMb = Math.max(peakMb, memoryMb(pid).rssMb ?? 0)), 20);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    request({ host: "127.0.0.1", port, path: "/snapshot" }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`GET /snapshot answered ${res.statusCode}`));
      res.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        if (file) chunks.push(chunk);
      });
      res.on("end", () => {
        clearInterval(sampler);
        if (file) writeFileSync(file, Buffer.concat(chunks));
        resolve({ seconds: (performance.now() - started) / 1000, bytes, peakMb });
      });
    })
      .on("error", reject)
      .end();
  });
}

/** The highest resident memory of `pid` while `during` runs (sampled every 20 ms), in MB. */
async function peakRss(pid: number, during: Promise<unknown>): Promise<number> {
  let peakMb = memoryMb(pid).rssMb ?? 0;
  const sampler = setInterval(() => (peakMb = Math.max(peakMb, memoryMb(pid).rssMb ?? 0)), 20);
  await during;
  clearInterval(sampler);
  return peakMb;
}

/** PUT latencies of {@link WRITERS} writers over random populated keys while `during` runs. */
async function writeLatencies(port: number, keys: number, during: Promise<unknown>): Promise<number[]> {
  const latencies: number[] = [];
  let done = false;
  void during.finally(() => (done = true));
  await Promise.all(
    Array.from({ length: WRITERS }, async () => {
      while (!done) {
        const key = populatedKey(Math.floor(Math.random() * keys));
        const started = performance.now();
        // A pooled connection the server closed as idle fails once with ECONNRESET: sent again.
        const send = () => req(port, "PUT", `/set/${key}`, "x".repeat(VALUE_BYTES));
        const answer = await send().catch((error: NodeJS.ErrnoException) => {
          if (error.code === "ECONNRESET") return send();
          throw error;
        });
        if (answer.status !== 200) throw new Error(`PUT ${key} answered ${answer.status}`);
        latencies.push(performance.now() - started);
      }
    }),
  );
  return latencies;
}

/** The fsync loop's rate for values of {@link VALUE_BYTES} under `dir` (3 s, 4 loops). */
async function fsyncRate(dir: string): Promise<number> {
  const child = startTs("fsync", "tests/bench/fsync-loop.ts", [dir, "3", String(VALUE_BYTES), "4"]);
  const code = await child.exited;
  const line = child.lines.find((l) => l.startsWith("{"));
  if (code !== 0 || !line) throw new Error(`fsync loop failed:\n${tail(child)}`);
  return (JSON.parse(line) as { opsPerSec: number }).opsPerSec;
}

/** `--snapshot`: the figures above for `KEYS` keys, with the data dirs under `dir`; prints them, exit code 0. */
export async function snapshotBench(KEYS: number, dir: string): Promise<number> {
  const root = mkdtempSync(join(dir, "mehdb-bench-snapshot-"));
  try {
    const data = join(root, "leader");
    log(`populating ${KEYS} keys of ${VALUE_BYTES} bytes`);
    populate(data, KEYS, VALUE_BYTES);
    await timedOutput("tar", ["-cf", "-", "-C", data, "."]); // warms the page cache for both
    const tar = await timedOutput("tar", ["-cf", "-", "-C", data, "."]);
    log(`tar -cf: ${tar.seconds.toFixed(2)} s`);

    const leader = await startLeader(ENTRY, data);
    await waitReady(leader.child, leader.port, 60_000, KEYS);
    const rssBefore = memoryMb(leader.child.pid).rssMb ?? 0;
    const archive = join(root, "snapshot.tar");
    const snap = await getSnapshot(leader.port, leader.child.pid, archive);
    log(`snapshot: ${snap.seconds.toFixed(2)} s`);

    const quietTime = new Promise((r) => setTimeout(r, snap.seconds * 1000 + 500));
    const [quiet, quietPeakMb] = await Promise.all([
      writeLatencies(leader.port, KEYS, quietTime),
      peakRss(leader.child.pid, quietTime),
    ]);
    const busySnap = getSnapshot(leader.port, leader.child.pid);
    const busy = await writeLatencies(leader.port, KEYS, busySnap);
    const underLoad = await busySnap;
    log(`snapshot under ${WRITERS} writers: ${underLoad.seconds.toFixed(2)} s`);

    const target = await startLeader(ENTRY, join(root, "target"), "target");
    await waitReady(target.child, target.port, 60_000);
    const started = performance.now();
    const put = await req(target.port, "PUT", "/snapshot", readFileSync(archive), 600_000);
    const restoreSeconds = (performance.now() - started) / 1000;
    if (put.status !== 200) throw new Error(`PUT /snapshot answered ${put.status}: ${put.body.toString()}`);
    log(`restore: ${restoreSeconds.toFixed(2)} s (${put.body.toString().trim()})`);
    await stopAll();
    const rate = await fsyncRate(join(root, "fsync"));
    const boundSeconds = KEYS / rate;

    const ratio = (a: number, b: number) => (a / b).toFixed(2);
    const mbps = (bytes: number, seconds: number) => (bytes / 1e6 / seconds).toFixed(0);
    const ms = (values: number[], p: number) => (percentile(values, p) ?? NaN).toFixed(1);
    const latency = (values: number[]) => `${ms(values, 100)} / ${ms(values, 99)} ms (${values.length} writes)`;
    const rows = [
      ["figure", "mehdb", "beside it"],
      [
        `snapshot of ${KEYS} keys`,
        `${snap.seconds.toFixed(2)} s, ${mbps(snap.bytes, snap.seconds)} MB/s`,
        `tar -cf: ${tar.seconds.toFixed(2)} s, ${mbps(tar.bytes, tar.seconds)} MB/s`,
      ],
      ["leader RSS", `${snap.peakMb.toFixed(0)} MB while streaming`, `${rssBefore.toFixed(0)} MB before`],
      [
        `snapshot, ${WRITERS} writers on`,
        `${underLoad.seconds.toFixed(2)} s, RSS ${underLoad.peakMb.toFixed(0)} MB`,
        `writers alone: RSS ${quietPeakMb.toFixed(0)} MB`,
      ],
      ["PUT latency max / p99", `${latency(busy)} during`, `${latency(quiet)} without`],
      [
        `restore of ${KEYS} keys`,
        `${restoreSeconds.toFixed(2)} s`,
        `fsync bound ${boundSeconds.toFixed(2)} s (${Math.round(rate)}/s): ${ratio(boundSeconds, restoreSeconds)} ×`,
      ],
    ];
    for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(i === 0 ? 28 : 44)).join(" ").trimEnd());
    const figures = { keys: KEYS, valueBytes: VALUE_BYTES, tar, snap, underLoad, rssBefore, quietPeakMb };
    console.log(JSON.stringify({ ...figures, restoreSeconds, fsyncRate: rate, boundSeconds }));
    return 0;
  } finally {
    await stopAll();
    rmSync(root, { recursive: true, force: true });
  }
}
