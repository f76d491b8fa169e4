/**
 * The durable-write baseline: what the disk allows for one fsynced file per write,
 * without HTTP. Four loops (the libuv pool's size) each repeat: open a temp file,
 * write the value, fsync, close, rename over one of 1000 key files.
 * Usage: node --import tsx tests/bench/fsync-loop.ts DIR SECONDS VALUE_BYTES [LOOPS] [KEYS]
 * Prints one JSON line: {"ops","seconds","opsPerSec","p50Ms","p99Ms"}.
 */

import { mkdirSync } from "node:fs";
import { open, rename } from "node:fs/promises";
import { join } from "node:path";
import { percentile } from "./stats.ts";

const [dir, secondsArg, bytesArg, loopsArg, keysArg] = process.argv.slice(2);
if (!dir || !secondsArg || !bytesArg) {
  console.error("usage: fsync-loop.ts DIR SECONDS VALUE_BYTES [LOOPS] [KEYS]");
  process.exit(2);
}
/** The data directory, narrowed to a string for the functions below. */
const root: string = dir;
const seconds = Number(secondsArg);
const value = Buffer.alloc(Number(bytesArg), 0x76);
const loops = Number(loopsArg ?? 4);
const keys = Number(keysArg ?? 1000);
mkdirSync(dir, { recursive: true });

const latencies: number[] = [];
let ops = 0;
let seq = 0;

async function writeOnce(loop: number): Promise<void> {
  const n = seq++;
  const tmp = join(root, `.tmp-${loop}-${n}`);
  const fh = await open(tmp, "w");
  try {
    let off = 0;
    while (off < value.length) {
      const { bytesWritten } = await fh.write(value, off, value.length - off);
      off += bytesWritten;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(root, `key-${n % keys}`));
}

async function loop(id: number, until: number, record: boolean): Promise<void> {
  while (performance.now() < until) {
    const t0 = performance.now();
    await writeOnce(id);
    if (record && performance.now() <= until) {
      ops++;
      latencies.push(performance.now() - t0);
    }
  }
}

async function run(): Promise<void> {
  // A short warm-up, not counted, so that the first opens and allocations do not weigh.
  const warm = performance.now() + Math.min(500, seconds * 200);
  await Promise.all(Array.from({ length: loops }, (_, i) => loop(i, warm, false)));
  const start = performance.now();
  const until = start + seconds * 1000;
  await Promise.all(Array.from({ length: loops }, (_, i) => loop(i, until, true)));
  const elapsed = (until - start) / 1000;
  console.log(
    JSON.stringify({
      ops,
      seconds: elapsed,
      opsPerSec: ops / elapsed,
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
    }),
  );
}

run().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
