/**
 * `npm run cluster`: a local three-pod mehdb set on one machine, to try
 * replication without Kubernetes.
 *
 *     mehdb-0  leader    http://localhost:9876   ./data/mehdb-0
 *     mehdb-1  follower  http://localhost:9877   ./data/mehdb-1
 *     mehdb-2  follower  http://localhost:9878   ./data/mehdb-2
 *
 * The pods start in order, like a StatefulSet's, each once the one before
 * listens; the followers copy from `MEHDB_LEADER_URL=http://localhost:9876`.
 * Their logs are interleaved on stdout, each line prefixed with the pod's
 * name. A pod that exits on its own (say `kill -9 PID`, with the PID from its
 * `event=start` line) is started again after 3 s on the same port and data
 * directory, as the StatefulSet controller would. Ctrl-C (SIGINT) or SIGTERM
 * stops all three and exits 0.
 *
 * Environment: `MEHDB_CLUSTER_PORT` (default 9876) is mehdb-0's port, the
 * others take the next two. The data directories are under `./data/` of the
 * current directory. The pods listen on 127.0.0.1 unless `MEHDB_LISTEN` says
 * otherwise; other `MEHDB_*` settings (such as `MEHDB_SYNC_INTERVAL_MS`) are
 * passed on to all three.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const PODS = 3;
const RESTART_DELAY_MS = 3_000;
const STOP_GRACE_MS = 10_000;
const MAIN = fileURLToPath(new URL("./main.ts", import.meta.url));
const COLORS = ["\x1b[36m", "\x1b[33m", "\x1b[35m"];
const color = process.stdout.isTTY === true && process.env.NO_COLOR === undefined;

function say(line: string): void {
  process.stdout.write(`${color ? "\x1b[1m" : ""}cluster | ${color ? "\x1b[0m" : ""}${line}\n`);
}

const rawPort = process.env.MEHDB_CLUSTER_PORT?.trim() || "9876";
const basePort = /^[0-9]+$/.test(rawPort) ? Number(rawPort) : NaN;
if (!Number.isSafeInteger(basePort) || basePort < 1 || basePort > 65535 - (PODS - 1)) {
  process.stderr.write(
    `cluster: MEHDB_CLUSTER_PORT must be a port from 1 to ${65535 - (PODS - 1)}, got ${JSON.stringify(rawPort)}\n`,
  );
  process.exit(2);
}
const leaderUrl = `http://localhost:${basePort}`;

interface Pod {
  name: string;
  port: number;
  dataDir: string;
  child: ChildProcess | null;
  listening: boolean;
  restart: NodeJS.Timeout | undefined;
}

const pods: Pod[] = Array.from({ length: PODS }, (_, ordinal) => ({
  name: `mehdb-${ordinal}`,
  port: basePort + ordinal,
  dataDir: `./${join("data", `mehdb-${ordinal}`)}`,
  child: null,
  listening: false,
  restart: undefined,
}));
let stopping = false;

/** Starts one pod; resolves once it listens (or has exited). */
function startPod(pod: Pod, ordinal: number): Promise<void> {
  const env: Record<string, string | undefined> = { ...process.env };
  for (const name of ["MEHDB_LEADER_URL", "MEHDB_LOCAL", "MEHDB_CLUSTER_PORT"]) delete env[name];
  Object.assign(env, {
    MEHDB_HOST: pod.name,
    MEHDB_PORT: String(pod.port),
    MEHDB_DATADIR: pod.dataDir,
    MEHDB_LISTEN: process.env.MEHDB_LISTEN ?? "127.0.0.1",
    ...(ordinal > 0 ? { MEHDB_LEADER_URL: leaderUrl } : {}),
  });
  // Whatever runs this script (tsx's loader, or a Node that strips types) runs the pods too.
  const child = spawn(process.execPath, [...process.execArgv, MAIN], { env, stdio: ["ignore", "pipe", "pipe"] });
  pod.child = child;
  pod.listening = false;
  const prefix = `${color ? COLORS[ordinal % COLORS.length] : ""}${pod.name} | ${color ? "\x1b[0m" : ""}`;
  return new Promise((resolve) => {
    forward(child.stdout, process.stdout, prefix, (line) => {
      if (!pod.listening && line.includes(" event=listening ")) {
        pod.listening = true;
        resolve();
      }
    });
    forward(child.stderr, process.stderr, prefix, () => {});
    child.on("error", (error) => say(`${pod.name} could not start: ${error.message}`));
    child.on("exit", (code, signal) => {
      resolve();
      pod.child = null;
      // A Ctrl-C reaches every process of the terminal at once: give ours a moment to arrive first.
      setTimeout(() => exited(pod, ordinal, code, signal), 200);
    });
  });
}

function exited(pod: Pod, ordinal: number, code: number | null, signal: string | null): void {
  if (stopping) return;
  const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
  if (!pod.listening) {
    say(`${pod.name} ${how} before it listened on port ${pod.port}; stopping the cluster`);
    void stop("start-up failure", 1);
    return;
  }
  say(`${pod.name} ${how}; starting it again in ${RESTART_DELAY_MS / 1000} s on ${pod.dataDir}`);
  pod.restart = setTimeout(() => {
    pod.restart = undefined;
    if (!stopping) void startPod(pod, ordinal);
  }, RESTART_DELAY_MS);
}

/** Copies `input` to `output` line by line, each line prefixed. */
function forward(
  input: NodeJS.ReadableStream,
  output: NodeJS.WritableStream,
  prefix: string,
  onLine: (line: string) => void,
): void {
  let rest = "";
  input.setEncoding("utf8");
  input.on("data", (chunk: string) => {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop() ?? "";
    for (const line of lines) {
      output.write(`${prefix}${line}\n`);
      onLine(line);
    }
  });
  input.on("end", () => {
    if (rest) output.write(`${prefix}${rest}\n`);
  });
}

async function stop(reason: string, exitCode = 0): Promise<void> {
  if (stopping) return;
  stopping = true;
  say(`stopping all pods (${reason})`);
  const running = pods.filter((pod) => pod.child !== null);
  for (const pod of pods) clearTimeout(pod.restart);
  const force = setTimeout(() => {
    say(`pods still running after ${STOP_GRACE_MS / 1000} s: killing them`);
    exitCode = 1;
    for (const pod of pods) pod.child?.kill("SIGKILL");
  }, STOP_GRACE_MS);
  await Promise.all(
    running.map(
      (pod) =>
        new Promise<void>((resolve) => {
          const child = pod.child;
          if (!child || child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once("exit", () => resolve());
          child.kill("SIGTERM");
        }),
    ),
  );
  clearTimeout(force);
  say("all pods stopped");
  process.exit(exitCode);
}

process.on("SIGINT", () => void stop("SIGINT"));
process.on("SIGTERM", () => void stop("SIGTERM"));

for (const [ordinal, pod] of pods.entries()) {
  say(`${pod.name}  ${ordinal === 0 ? "leader  " : "follower"}  http://localhost:${pod.port}  ${pod.dataDir}`);
}
for (const [ordinal, pod] of pods.entries()) {
  if (stopping) break;
  await startPod(pod, ordinal);
}
if (!stopping) {
  say(
    `up: write with  curl -L -X PUT --data-binary @FILE http://localhost:${basePort + 1}/set/KEY  ` +
      "(a follower redirects to the leader)",
  );
  say(
    "Ctrl-C stops all three; kill -9 a pod's PID (see its event=start line) and it comes back in " +
      `${RESTART_DELAY_MS / 1000} s`,
  );
}
