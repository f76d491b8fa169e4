/**
 * Soak: mixed GET/PUT/DELETE against a leader and two followers (real
 * processes on loopback) for a while, then checks that nothing failed, that
 * the followers hold exactly the leader's keys and bytes, and that resident
 * memory stayed flat after warm-up.
 *
 *     npm run soak                      # 60 s
 *     npm run soak -- --seconds 600     # longer
 *
 * `tests/soak.test.ts` runs the same code for a few seconds in `npm test`.
 * Exits non-zero when the run fails.
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { checkedValue, converged, pick, randomInt, snapshot, verifyValue } from "../helpers/data.ts";
import { del, http, put, staleRetries } from "../helpers/http.ts";
import { memoryKiB, startFollower, startMehdb, stopAll, type Mehdb } from "../helpers/mehdb.ts";
import { sleep } from "../helpers/wait.ts";

/** Options of {@link runSoak}. */
export interface SoakOptions {
  /** How long the load runs. */
  seconds: number;
  /** Concurrent clients. Default 16. */
  workers?: number;
  /** Size of the key space. Default 500. */
  keys?: number;
  /** Where the progress table goes. Default: stdout. */
  print?: (line: string) => void;
}

/** One memory sample. */
export interface RssSample {
  atSeconds: number;
  requests: number;
  errors: number;
  /** Resident memory in KiB: leader, follower 1, follower 2. */
  rssKiB: number[];
}

/** What a soak run found. */
export interface SoakResult {
  seconds: number;
  requests: number;
  byOp: Record<string, number>;
  errors: number;
  /** The first few errors, one line each. */
  firstErrors: string[];
  /** Requests sent again because the server closed an idle pooled connection as they left (not errors). */
  staleRetries: number;
  /** Whether both followers ended with exactly the leader's keys and bytes. */
  converged: boolean;
  /** Keys and bytes on the leader at the end. */
  keys: number;
  bytes: number;
  samples: RssSample[];
  /** Per process: RSS growth from the end of warm-up to the end of the run, in KiB. */
  rssGrowthKiB: number[];
  /** Per process: whether that growth stays within {@link flatLimitKiB}. */
  rssFlat: boolean[];
}

const NAMES = ["leader", "follower-1", "follower-2"];

/** How much resident memory may grow after warm-up and still count as flat: 24 MiB, or a quarter. */
export function flatLimitKiB(afterWarmUpKiB: number): number {
  return Math.max(24 * 1024, afterWarmUpKiB / 4);
}

/** The middle value (the upper one of an even count); 0 for none. */
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

/** Runs the soak; the processes it starts are stopped before it resolves. */
export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const print = options.print ?? ((line: string) => console.log(line));
  const workers = options.workers ?? 16;
  const keyCount = options.keys ?? 500;
  const leader = await startMehdb({ host: "mehdb-0" });
  const followers: Mehdb[] = [];
  for (const host of ["mehdb-1", "mehdb-2"]) {
    followers.push(await startFollower(leader.url, { host, env: { MEHDB_SYNC_INTERVAL_MS: "200" }, waitReady: true }));
  }
  const servers = [leader, ...followers];
  const byOp = { get: 0, put: 0, delete: 0, keys: 0 };
  let requests = 0;
  let errors = 0;
  const firstErrors: string[] = [];
  const fail = (what: string) => {
    errors++;
    if (firstErrors.length < 20) firstErrors.push(what.replace(/\s+/g, " ").slice(0, 300));
  };

  const retriesBefore = staleRetries.count;
  const started = performance.now();
  const deadline = started + options.seconds * 1000;
  const worker = async (w: number) => {
    for (let n = 0; performance.now() < deadline; n++) {
      const key = `soak-${randomInt(0, keyCount - 1)}`;
      const roll = Math.random();
      try {
        if (roll < 0.55) {
          const server = pick(servers);
          const res = await http(`${server.url}/get/${key}`, { keepAlive: true });
          byOp.get++;
          if (res.status === 200) {
            const check = verifyValue(res.body);
            if (!check.ok) fail(`GET ${key} from ${server.url}: ${check.reason}`);
          } else if (res.status !== 404) {
            fail(`GET ${key} from ${server.url}: ${res.status} ${res.text}`);
          }
        } else if (roll < 0.88) {
          const value = checkedValue(`w${w}n${n}`, randomInt(64, 32 * 1024));
          const res = await put(leader.url, key, value, { keepAlive: true });
          byOp.put++;
          if (res.status !== 200) fail(`PUT ${key}: ${res.status} ${res.text}`);
        } else if (roll < 0.98) {
          const res = await del(leader.url, key, { keepAlive: true });
          byOp.delete++;
          if (res.status !== 200 && res.status !== 404) fail(`DELETE ${key}: ${res.status} ${res.text}`);
        } else {
          const server = pick(servers);
          const res = await http(`${server.url}/keys`, { keepAlive: true });
          byOp.keys++;
          if (res.status !== 200 || !Array.isArray(JSON.parse(res.text))) {
            fail(`GET /keys from ${server.url}: ${res.status}`);
          }
        }
      } catch (error) {
        fail(`${key}: ${(error as Error).message}`);
      }
      requests++;
    }
  };

  const samples: RssSample[] = [];
  const sampleEveryMs = Math.min(1000, Math.max(200, options.seconds * 50));
  const printEvery = Math.max(1, Math.round(options.seconds * 1000 / sampleEveryMs / 12));
  print(`soak: ${options.seconds} s, ${workers} clients, ${keyCount} keys, leader ${leader.url}, ` +
    `followers ${followers.map((f) => f.url).join(" ")}`);
  const columns = (first: string, second: string, third: string, rss: string[]) =>
    `${first.padStart(7)} ${second.padStart(9)} ${third.padStart(6)}  ${rss.map((m) => m.padStart(19)).join(" ")}`;
  print(columns("t (s)", "requests", "errors", NAMES.map((n) => `${n} RSS MiB`)));
  const row = (s: RssSample) => columns(s.atSeconds.toFixed(1), String(s.requests), String(s.errors),
    s.rssKiB.map((k) => (k / 1024).toFixed(1)));
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const rss = await Promise.all(servers.map((s) => memoryKiB(s.pid)));
      const atSeconds = (performance.now() - started) / 1000;
      const sample = { atSeconds, requests, errors, rssKiB: rss.map((k) => k ?? 0) };
      samples.push(sample);
      if (samples.length % printEvery === 0) print(row(sample));
      await sleep(sampleEveryMs);
    }
  })();

  await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
  sampling = false;
  await sampler;
  const lastSample = samples.at(-1);
  if (lastSample) print(row(lastSample));

  // The followers must end with exactly the leader's keys and bytes.
  let exact = true;
  for (const follower of followers) {
    await converged(follower.url, leader.url, 20_000).catch((error: Error) => {
      exact = false;
      fail(`followers did not converge: ${error.message}`);
    });
  }
  const leaderSnapshot = await snapshot(leader.url);
  for (const server of servers) {
    if (server.child.exitCode !== null || server.child.signalCode !== null) {
      fail(`${server.url} exited: ${server.output().slice(-500)}`);
    }
  }

  // Memory: the median of the last quarter against the median just after warm-up (the first 30 %).
  const warm = samples.filter((s) => s.atSeconds >= options.seconds * 0.3);
  const early = warm.slice(0, Math.max(1, Math.floor(warm.length / 4)));
  const late = warm.slice(-Math.max(1, Math.floor(warm.length / 4)));
  const memory = servers.map((server, i) => {
    const medianOf = (some: RssSample[]) => median(some.map((s) => s.rssKiB[i] ?? 0));
    const afterWarmUp = medianOf(early);
    const growth = medianOf(late) - afterWarmUp;
    return { name: NAMES[i] ?? server.url, growth, flat: growth <= flatLimitKiB(afterWarmUp) };
  });
  const rssGrowthKiB = memory.map((m) => m.growth);
  const rssFlat = memory.map((m) => m.flat);

  const bytes = [...leaderSnapshot.values()].reduce((sum, v) => sum + v.length, 0);
  const seconds = (performance.now() - started) / 1000;
  const retried = staleRetries.count - retriesBefore;
  const ops = Object.entries(byOp).map(([op, n]) => `${op} ${n}`).join(", ");
  print(`requests ${requests} (${ops}), ${(requests / options.seconds).toFixed(0)}/s, ` +
    `errors ${errors}, sent again after a keep-alive close race ${retried}`);
  print(`followers ${exact ? "exact" : "NOT exact"}: ${leaderSnapshot.size} keys, ${bytes} bytes`);
  const growths = memory.map((m) => `${m.name} ${(m.growth / 1024).toFixed(1)} MiB (${m.flat ? "flat" : "GROWING"})`);
  print(`RSS growth after warm-up: ${growths.join(", ")}`);
  for (const error of firstErrors) print(`error: ${error}`);

  await Promise.all(servers.map((s) => s.stop()));
  return {
    seconds,
    requests,
    byOp,
    errors,
    firstErrors,
    staleRetries: retried,
    converged: exact,
    keys: leaderSnapshot.size,
    bytes,
    samples,
    rssGrowthKiB,
    rssFlat,
  };
}

/** `--seconds N` from the command line (default 60). */
function parseSeconds(args: string[]): number {
  const at = args.indexOf("--seconds");
  const raw = at >= 0 ? args[at + 1] : args.find((a) => a.startsWith("--seconds="))?.slice(10);
  if (raw === undefined) return 60;
  const seconds = Number(raw);
  if (!Number.isFinite(seconds) || seconds < 1 || seconds > 86_400) {
    console.error(`soak: --seconds must be a number from 1 to 86400, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return seconds;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let ok = false;
  try {
    const result = await runSoak({ seconds: parseSeconds(process.argv.slice(2)) });
    ok = result.errors === 0 && result.converged && result.rssFlat.every(Boolean);
    console.log(ok ? "soak: PASS" : "soak: FAIL");
  } finally {
    await stopAll();
  }
  process.exit(ok ? 0 : 1);
}
