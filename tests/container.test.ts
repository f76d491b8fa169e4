/**
 * The image, run the way a StatefulSet runs it, on one machine with podman
 * (k8s/README.md, "Run with podman", is this test):
 * builds the real Containerfile on a local Node 24 base, runs mehdb-0 (leader)
 * and mehdb-1 (follower) on their own volumes, writes through the follower
 * with `curl -L`, reads from the follower, scales to 4, deletes and re-creates
 * mehdb-1 on its volume, and stops every container with a 10 s grace. Then
 * once more with tokens (issue 12): a token directory mounted read-only into
 * a new leader and follower, writes and reads with and without the tokens,
 * curl -L with and without --location-trusted, and a rotation of the files.
 *
 * Skipped, with the reason printed, where podman (or runc, curl) is missing.
 * Every container, volume and image tag it makes carries this run's id and is
 * removed in `after`, also when a step fails. The Node base image and the npm
 * tarball it is made from are a cache kept between runs (tests/helpers/podman.ts).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { describeRun, run } from "./helpers/commands.ts";
import { http, put } from "./helpers/http.ts";
import { serverNodeEnv } from "./bench/mehdb.ts";
import { ROOT } from "./helpers/mehdb.ts";
import { RUN_LIMITS, ensureNodeBase, mustPodman, podman, podmanMissing } from "./helpers/podman.ts";
import { waitFor } from "./helpers/wait.ts";

const NAMESPACE = "default";
const LEADER_HOST = `mehdb-0.mehdb.${NAMESPACE}.svc.cluster.local`;
const PORT = 9876;
const GRACE_S = 10; // as terminationGracePeriodSeconds in k8s/base/statefulset.yaml
const STOP_WITHIN_MS = 5_000; // "well before the grace runs out"
const READY_WITHIN_MS = 30_000;

const runId = `${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
const image = `localhost/mehdb-test:${runId}`;
/** `tok-` for the walkthrough with tokens, whose containers and volumes are new ones. */
let variant = "";
const containerName = (n: number): string => `mehdb-${variant}${n}-${runId}`;
const volumeName = (n: number): string => `mehdb-data-${variant}${n}-${runId}`;

// What this run made, to be removed in `after`.
const made = { containers: new Set<string>(), volumes: new Set<string>(), images: new Set<string>() };

/** Flags that mirror the StatefulSet's security context (restricted PSS). */
const RESTRICTED = ["--read-only", "--user", "1000:1000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"];

interface Pod {
  n: number;
  name: string;
  url: string; // http://127.0.0.1:<published port>
  port: number;
  ip: string;
}
const pods = new Map<number, Pod>();

/** Pod `n`, which must have been started. */
function runningPod(n: number): Pod {
  const pod = pods.get(n);
  assert.ok(pod, `mehdb-${n} was started`);
  return pod;
}

let broken: string | undefined; // the first step that failed: later steps skip
let failed = false;
const log = (msg: string): void => {
  console.log(`# container test: ${msg}`);
};
let tmp = "";

/** A step of the walkthrough: skipped (saying why) once an earlier one failed. */
function step(name: string, fn: (t: TestContext) => Promise<void>, timeoutMs = 120_000): void {
  test(name, { timeout: timeoutMs }, async (t) => {
    if (broken) {
      t.skip(`an earlier step failed: ${broken}`);
      return;
    }
    try {
      await fn(t);
    } catch (err) {
      broken = name;
      failed = true;
      throw err;
    }
  });
}

async function createVolume(name: string): Promise<void> {
  made.volumes.add(name);
  await mustPodman(["volume", "create", "--label", `mehdb-test-run=${runId}`, name]);
}

/** `podman run -d` of pod N, as the StatefulSet would start it, and waits until it is ready. */
async function startPod(n: number, extraEnv: string[] = [], extraArgs: string[] = []): Promise<Pod> {
  const name = containerName(n);
  const args = [
    "run", "-d",
    "--name", name,
    "--hostname", `mehdb-${n}`,
    "--label", `mehdb-test-run=${runId}`,
    ...RUN_LIMITS,
    ...RESTRICTED,
    "-v", `${volumeName(n)}:/data`,
    "-p", `127.0.0.1::${PORT}`,
    "-e", `MEHDB_NAMESPACE=${NAMESPACE}`,
    ...extraEnv.flatMap((e) => ["-e", e]),
    ...extraArgs,
  ];
  if (n > 0) {
    const leader = pods.get(0);
    assert.ok(leader, "the leader runs before a follower starts");
    args.push("--add-host", `${LEADER_HOST}:${leader.ip}`);
  }
  args.push(image);
  made.containers.add(name);
  await mustPodman(args);
  const port = Number(/:(\d+)\s*$/.exec((await mustPodman(["port", name, `${PORT}/tcp`])).stdout.trim())?.[1]);
  assert.ok(port > 0, `published port of ${name}`);
  const ip = (await mustPodman(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])).stdout.trim();
  assert.match(ip, /^\d+\.\d+\.\d+\.\d+$/, `IP of ${name}`);
  const pod: Pod = { n, name, port, ip, url: `http://127.0.0.1:${port}` };
  pods.set(n, pod);
  await waitReady(pod);
  return pod;
}

/** Waits for the readiness probe (`/status?level=full` answering 200), as the kubelet does. */
async function waitReady(pod: Pod): Promise<void> {
  const started = Date.now();
  try {
    await waitFor(
      async () => {
        const state = (await podman(["inspect", "-f", "{{.State.Status}}", pod.name])).stdout.trim();
        if (state !== "running") throw new Error(`${pod.name} is ${state}`);
        const r = await http(`${pod.url}/status?level=full`, { timeoutMs: 2_000 });
        if (r.status === 200) return true;
        throw new Error(`readiness ${r.status} ${r.text.trim()}`);
      },
      `${pod.name} to be ready (GET /status?level=full = 200)`,
      READY_WITHIN_MS,
      250,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}\n--- podman logs ${pod.name}:\n${await logsOf(pod.name)}`);
  }
  log(`${pod.name} ready in ${Date.now() - started} ms`);
}

async function logsOf(name: string): Promise<string> {
  const r = await podman(["logs", "--tail", "40", name], { timeoutMs: 10_000 });
  return (r.stdout + r.stderr).trim();
}

/** `podman stop -t 10`, timed; the container must exit 0 (graceful SIGTERM) well before the grace ends. */
async function stopPod(n: number): Promise<void> {
  const pod = pods.get(n);
  assert.ok(pod);
  const started = Date.now();
  await mustPodman(["stop", "-t", String(GRACE_S), pod.name], { timeoutMs: (GRACE_S + 20) * 1000 });
  const ms = Date.now() - started;
  const state = (await mustPodman(["inspect", "-f", "{{.State.ExitCode}} {{.State.Status}}", pod.name])).stdout.trim();
  log(`podman stop -t ${GRACE_S} ${pod.name}: ${ms} ms, exit code and state: ${state}`);
  assert.equal(state, "0 exited", `${pod.name} exits 0 on SIGTERM\n${await logsOf(pod.name)}`);
  assert.ok(ms < STOP_WITHIN_MS,
    `${pod.name} stopped in ${ms} ms, more than ${STOP_WITHIN_MS} ms of a ${GRACE_S} s grace`);
}

/** The jump pod's write: `curl -sS -L -XPUT -T FILE mehdb:9876/set/KEY`, here through a follower's published port. */
async function curlPutFollowing(via: Pod, key: string, file: string): Promise<string> {
  const leader = pods.get(0);
  assert.ok(leader);
  const args = [
    "-sS", "--max-time", "20",
    "-L", "-XPUT", "-T", file,
    // The cluster's DNS for the leader's name in the redirect.
    "--connect-to", `${LEADER_HOST}:${PORT}:127.0.0.1:${leader.port}`,
    `${via.url}/set/${key}`,
  ];
  const r = await run("curl", args, { timeoutMs: 30_000 });
  assert.equal(r.code, 0, describeRun("curl", args, r));
  return r.stdout;
}

async function get(pod: Pod, key: string, headers?: Record<string, string>): Promise<{ status: number; body: string }> {
  const r = await http(`${pod.url}/get/${key}`, { headers });
  return { status: r.status, body: r.text };
}

/** Waits until pod serves `value` for `key` (a follower copies within its poll interval, 1 s by default). */
async function waitValue(
  pod: Pod,
  key: string,
  value: string,
  timeoutMs = 15_000,
  headers?: Record<string, string>,
): Promise<void> {
  await waitFor(
    async () => {
      const r = await get(pod, key, headers);
      if (r.status === 200 && r.body === value) return true;
      throw new Error(`GET /get/${key} on ${pod.name}: ${r.status} ${JSON.stringify(r.body.slice(0, 80))}`);
    },
    `${pod.name} to serve ${key}`,
    timeoutMs,
  );
}

// What can be checked without podman: the Containerfile's shape.
describe("Containerfile", () => {
  const text = readFileSync(path.join(ROOT, "Containerfile"), "utf8");
  const lines = text
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  const instr = (l: string): string => (l.split(/\s+/)[0] ?? "").toUpperCase();

  test("takes its base from ARG NODE_IMAGE (a public Node 24 image by default)", () => {
    assert.match(lines[0] ?? "", /^ARG NODE_IMAGE=\S*node:24\S*$/);
    assert.deepEqual(lines.filter((l) => instr(l) === "FROM"), ["FROM ${NODE_IMAGE}"]);
  });

  test("copies only package.json and src/, installs nothing, needs no shell", () => {
    const copies = lines.filter((l) => ["COPY", "ADD"].includes(instr(l)));
    assert.deepEqual(copies, ["COPY package.json ./", "COPY src/ ./src/"]);
    for (const l of lines.filter((l) => instr(l) === "RUN")) {
      assert.match(l, /^RUN \["node",/, `exec-form RUN with node only (the local base has no shell): ${l}`);
    }
    assert.ok(!lines.some((l) => /npm (ci|install)/.test(l)), "no npm install");
  });

  test("runs `node [--flag=value ...] src/main.ts` as 1000:1000 with MEHDB_DATADIR=/data, port 9876", () => {
    assert.ok(lines.includes("USER 1000:1000"));
    assert.ok(lines.some((l) => /^ENV\s.*\bMEHDB_DATADIR=\/data\b/.test(l)));
    assert.ok(lines.includes("EXPOSE 9876"));
    const last = lines.at(-1) ?? "";
    assert.match(last, /^CMD \[/);
    const cmd = JSON.parse(last.slice(4)) as string[];
    assert.equal(cmd[0], "node");
    assert.equal(cmd.at(-1), "src/main.ts");
    for (const flag of cmd.slice(1, -1)) assert.match(flag, /^--[a-z-]+=\S+$/);
  });

  test("gives Node the flags `npm start` gives it (young generation and old space)", () => {
    const cmd = JSON.parse((lines.at(-1) ?? "").slice(4)) as string[];
    const flags = cmd.filter((f) => f.startsWith("--"));
    assert.ok(flags.some((f) => f.startsWith("--max-semi-space-size=")), "the image caps the young generation");
    assert.ok(flags.some((f) => f.startsWith("--max-old-space-size=")), "the image caps the old space");
    const pkg = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as { scripts: { start: string } };
    const start = pkg.scripts.start.split(/\s+/).filter((f) => f.startsWith("--") && f !== "--import");
    assert.deepEqual(start, flags, `npm start (${pkg.scripts.start}) and the image pass the same flags`);
  });

  test("sets the environment `npm start` sets before node (glibc's mmap threshold)", () => {
    const env = serverNodeEnv();
    assert.equal(env.MALLOC_MMAP_THRESHOLD_, "131072", "npm start fixes glibc's mmap threshold");
    for (const [name, value] of Object.entries(env)) {
      assert.ok(lines.some((l) => l === `ENV ${name}=${value}`), `the image sets ${name}=${value} as npm start does`);
    }
  });
});

const skipReason = podmanMissing();
if (skipReason) {
  // A test, not a suite, so that the summary counts it as skipped.
  test("the image, run as a StatefulSet with podman", { skip: skipReason }, () => {});
} else {
  describe("the image, run as a StatefulSet with podman", { timeout: 600_000 }, () => {
    before(async () => {
      const started = Date.now();
      tmp = mkdtempSync(path.join(os.tmpdir(), `mehdb-container-test-${runId}-`));
      try {
        const base = await ensureNodeBase(log);
        made.images.add(image);
        const b0 = Date.now();
        await mustPodman(
          [
            "build", "--pull=never", "--layers=false", "--build-arg", `NODE_IMAGE=${base}`,
            "-f", path.join(ROOT, "Containerfile"), "-t", image, ROOT,
          ],
          { timeoutMs: 300_000 },
        );
        log(`podman build of the Containerfile: ${Date.now() - b0} ms`);
      } catch (err) {
        broken = "building the image";
        failed = true;
        throw err;
      }
      log(`image ready in ${Date.now() - started} ms`);
    }, { timeout: 600_000 });

    after(async () => {
      if (failed) {
        for (const name of made.containers) {
          if ((await podman(["container", "exists", name])).code !== 0) continue;
          console.log(`# --- podman logs ${name}:\n${(await logsOf(name)).replace(/^/gm, "#   ")}`);
        }
      }
      const problems: string[] = [];
      const note = async (args: string[]): Promise<void> => {
        const r = await podman(args, { timeoutMs: 60_000 });
        if (r.code !== 0 && !/no such|not found|no container|no volume/i.test(r.stderr)) {
          problems.push(describeRun("podman", args, r));
        }
      };
      // Only what this run made, by name.
      for (const name of made.containers) await note(["rm", "-f", "-t", "0", name]);
      for (const name of made.volumes) await note(["volume", "rm", "-f", name]);
      for (const name of made.images) await note(["rmi", name]);
      if (tmp) rmSync(tmp, { recursive: true, force: true });
      if (problems.length) console.log(`# container test clean-up problems:\n${problems.join("\n")}`);
    });

    step("the image runs as uid 1000 on a read-only root, holds only package.json and src/, " +
      "and /data on a fresh volume is writable", async () => {
      const cfg = JSON.parse((await mustPodman(["image", "inspect", "-f", "{{json .Config}}", image])).stdout);
      assert.equal(cfg.User, "1000:1000");
      assert.ok(cfg.Env.includes("MEHDB_DATADIR=/data"), `Env ${cfg.Env}`);
      assert.ok(Object.keys(cfg.ExposedPorts ?? {}).includes(`${PORT}/tcp`), "EXPOSE 9876");
      // The Containerfile's CMD as it is: node, its flags, src/main.ts.
      const containerfile = readFileSync(path.join(ROOT, "Containerfile"), "utf8").split("\n");
      const cmdLine = containerfile.filter((l) => l.startsWith("CMD ")).at(-1);
      assert.deepEqual(cfg.Cmd, JSON.parse(cmdLine?.slice(4) ?? "null"));
      assert.equal(cfg.Cmd.at(-1), "src/main.ts");
      const probeVolume = `mehdb-probe-${runId}`;
      await createVolume(probeVolume);
      // No --user here: the image's own USER must be non-root.
      const script = [
        "const fs = require('node:fs');",
        "const out = { uid: process.getuid(), gid: process.getgid(), node: process.version, cwd: process.cwd(),",
        `app: fs.readdirSync(".").sort() };`,
        "out.dataOwner = fs.statSync('/data').uid;",
        "fs.writeFileSync('/data/probe', 'x');",
        "out.dataWritable = fs.readFileSync('/data/probe', 'utf8') === 'x'; fs.rmSync('/data/probe');",
        "try { fs.writeFileSync('/app/probe', 'x'); out.rootWrite = 'allowed'; } catch (e) { out.rootWrite = e.code; }",
        "console.log(JSON.stringify(out));",
      ].join(" ");
      const name = `mehdb-probe-${runId}`;
      made.containers.add(name);
      const r = await mustPodman([
        "run", "--rm", "--name", name, ...RUN_LIMITS,
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-v", `${probeVolume}:/data`, image, "node", "-e", script,
      ]);
      const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "");
      assert.equal(out.uid, 1000);
      assert.equal(out.gid, 1000);
      assert.match(out.node, /^v2[4-9]\./);
      assert.equal(out.cwd, "/app");
      assert.deepEqual(out.app, ["package.json", "src"]);
      assert.equal(out.dataOwner, 1000, "a fresh volume at /data belongs to uid 1000");
      assert.equal(out.dataWritable, true);
      assert.equal(out.rootWrite, "EROFS");
    });

    step("mehdb-0 (leader) and mehdb-1 (follower) start on their own volumes and become ready", async () => {
      await createVolume(volumeName(0));
      await createVolume(volumeName(1));
      const leader = await startPod(0);
      const follower = await startPod(1);
      assert.match((await http(`${leader.url}/status`)).text, /leader/);
      assert.match((await http(`${follower.url}/status`)).text, /follower/);
    });

    step("a PUT to the follower is redirected (307) to the leader by its cluster name", async () => {
      const follower = runningPod(1);
      const r = await put(follower.url, "test", "not stored\n");
      assert.equal(r.status, 307);
      assert.equal(r.headers.location, `http://${LEADER_HOST}:${PORT}/set/test`);
    });

    step("the jump pod writes through the follower: curl -L -XPUT -T /tmp/test prints WRITE completed", async () => {
      const file = path.join(tmp, "test");
      writeFileSync(file, "test data\n");
      const out = await curlPutFollowing(runningPod(1), "test", file);
      assert.match(out, /WRITE completed/);
      assert.deepEqual(await get(runningPod(0), "test"), { status: 200, body: "test data\n" }, "the leader has it");
      // A value large enough that curl sends `Expect: 100-continue` (the follower answers 307 instead of 100).
      const big = path.join(tmp, "big");
      writeFileSync(big, Buffer.alloc(2 * 2 ** 20, "mehdb "));
      assert.match(await curlPutFollowing(runningPod(1), "big", big), /WRITE completed/);
      const r = await get(runningPod(0), "big");
      assert.equal(r.status, 200);
      assert.equal(r.body.length, 2 * 2 ** 20);
    });

    step("reading from the follower (curl mehdb-1.mehdb:9876/get/test) returns the data", async () => {
      await waitValue(runningPod(1), "test", "test data\n");
      await waitValue(runningPod(1), "big", "mehdb ".repeat(2 * 2 ** 20 / 6 + 1).slice(0, 2 * 2 ** 20));
      const keys = JSON.parse((await http(`${runningPod(1).url}/keys`)).text);
      assert.ok(keys.includes("test") && keys.includes("big"), `follower keys ${JSON.stringify(keys)}`);
    });

    step("scale to 4: mehdb-2 then mehdb-3 start, each ready and serving the data", async () => {
      for (const n of [2, 3]) {
        await createVolume(volumeName(n));
        const pod = await startPod(n);
        // Ready means synced once: the data is there without waiting.
        assert.deepEqual(await get(pod, "test"), { status: 200, body: "test data\n" });
      }
    }, 180_000);

    step("delete pod mehdb-1: it stops gracefully, its volume keeps the data, " +
      "re-created it serves it again", async () => {
      await stopPod(1);
      await mustPodman(["rm", containerName(1)]);
      pods.delete(1);
      // The data lives on the volume (one file per key), not in the container.
      const look = `mehdb-look-${runId}`;
      made.containers.add(look);
      const r = await mustPodman([
        "run", "--rm", "--name", look, ...RUN_LIMITS, ...RESTRICTED, "-v", `${volumeName(1)}:/data`, image,
        "node", "-e", "process.stdout.write(require('node:fs').readFileSync('/data/test', 'utf8'))",
      ]);
      assert.equal(r.stdout, "test data\n");
      // A write while mehdb-1 is away reaches it once it is back.
      writeFileSync(path.join(tmp, "later"), "written while mehdb-1 was away\n");
      assert.match(await curlPutFollowing(runningPod(2), "later", path.join(tmp, "later")), /WRITE completed/);
      const pod = await startPod(1);
      assert.deepEqual(await get(pod, "test"), { status: 200, body: "test data\n" });
      await waitValue(pod, "later", "written while mehdb-1 was away\n");
    }, 120_000);

    step(`podman stop -t ${GRACE_S} of each pod exits 0 well before the grace runs out`, async () => {
      for (const n of [3, 2, 1, 0]) await stopPod(n);
    }, 120_000);

    // Once more with tokens: the Secret of k8s/with-tokens/ is a host directory mounted read-only.
    const WRITE = `w-${randomBytes(18).toString("base64url")}`;
    const READ = `r-${randomBytes(18).toString("base64url")}`;
    const WRITE_2 = `w2-${randomBytes(18).toString("base64url")}`;
    const READ_2 = `r2-${randomBytes(18).toString("base64url")}`;
    const TOKEN_DIR = "/etc/mehdb/tokens";
    const auth = (token: string): Record<string, string> => ({ Authorization: `Bearer ${token}` });
    let tokenDir = "";

    /** The jump pod's `curl -XPUT -T FILE -H "Authorization: Bearer TOKEN"` through a follower, with `extra` flags. */
    async function curlWithToken(via: Pod, key: string, file: string, token: string, extra: string[]): Promise<string> {
      const leader = runningPod(0);
      const args = [
        "-sS", "--max-time", "20", "-XPUT", "-T", file, "-H", `Authorization: Bearer ${token}`, ...extra,
        "--connect-to", `${LEADER_HOST}:${PORT}:127.0.0.1:${leader.port}`,
        "-w", "%{http_code}\\n", `${via.url}/set/${key}`,
      ];
      const r = await run("curl", args, { timeoutMs: 30_000 });
      assert.equal(r.code, 0, describeRun("curl", args, r));
      return r.stdout;
    }

    step("with tokens: a new leader and follower start with the token files mounted read-only; " +
      "the follower syncs with its read token", async () => {
      variant = "tok-";
      pods.clear();
      tokenDir = path.join(tmp, "tokens");
      mkdirSync(tokenDir, { mode: 0o755 });
      chmodSync(tokenDir, 0o755);
      // Readable by uid 1000 in the container (the Secret volume gets group 1000 through fsGroup).
      writeFileSync(path.join(tokenDir, "write"), `${WRITE}\n`, { mode: 0o644 });
      writeFileSync(path.join(tokenDir, "read"), `${READ}\n`, { mode: 0o644 });
      const env = [`MEHDB_WRITE_TOKEN_FILE=${TOKEN_DIR}/write`, `MEHDB_READ_TOKEN_FILE=${TOKEN_DIR}/read`];
      const mount = ["-v", `${tokenDir}:${TOKEN_DIR}:ro`];
      await createVolume(volumeName(0));
      await createVolume(volumeName(1));
      const leader = await startPod(0, env, mount);
      await startPod(1, env, mount); // ready = synced once, through the leader's read check
      const inspected = await mustPodman(["inspect", "-f", "{{json .Mounts}}", leader.name]);
      const mounts = JSON.parse(inspected.stdout) as { Destination: string; RW: boolean }[];
      const tokens = mounts.find((m) => m.Destination === TOKEN_DIR);
      assert.equal(tokens?.RW, false, "the token directory is mounted read-only");
      assert.match(await logsOf(leader.name), /event=access writes=write-token reads=read-or-write-token/);
    });

    step("with tokens: the follower answers 401 (one line, WWW-Authenticate) without a token, " +
      "the 307 with the write token", async () => {
      const follower = runningPod(1);
      const none = await put(follower.url, "test", "not stored\n");
      assert.equal(none.status, 401);
      assert.equal(none.headers["www-authenticate"], `Bearer realm="mehdb"`);
      assert.match(none.text, /^unauthorized: [^\n]*--location-trusted[^\n]*\n$/);
      assert.equal(none.headers.location, undefined);
      const good = await put(follower.url, "test", "not stored\n", { headers: auth(WRITE) });
      assert.equal(good.status, 307);
      assert.equal(good.headers.location, `http://${LEADER_HOST}:${PORT}/set/test`);
      assert.equal((await http(`${follower.url}/status?level=full`)).status, 200, "/status stays open");
    });

    step("with tokens: curl -L drops the token on the redirect (the leader says 401); " +
      "--location-trusted writes through the follower", async () => {
      const file = path.join(tmp, "secret-test");
      writeFileSync(file, "token data\n");
      const dropped = await curlWithToken(runningPod(1), "tok", file, WRITE, ["-L"]);
      assert.match(dropped, /no Authorization header[^\n]*--location-trusted[^\n]*\n401\n$/,
        "the leader's 401, with the hint");
      assert.equal((await get(runningPod(0), "tok", auth(READ))).status, 404);
      const trusted = await curlWithToken(runningPod(1), "tok", file, WRITE, ["--location-trusted"]);
      assert.equal(trusted, "WRITE completed\n200\n");
      await waitValue(runningPod(1), "tok", "token data\n", 15_000, auth(READ));
      assert.equal((await get(runningPod(1), "tok")).status, 401, "reads need the read token");
      assert.equal((await get(runningPod(1), "tok", auth(WRITE))).status, 200, "or the write token");
    });

    step("with tokens: new token files renamed into the mounted directory apply without a restart, " +
      "the old ones stop working", async () => {
      for (const [name, token] of [["write", WRITE_2], ["read", READ_2]] as const) {
        writeFileSync(path.join(tokenDir, `.${name}.new`), token, { mode: 0o644 });
        renameSync(path.join(tokenDir, `.${name}.new`), path.join(tokenDir, name));
      }
      const leader = runningPod(0);
      await waitFor(async () => {
        return (await put(leader.url, "rotated", "after rotation\n", { headers: auth(WRITE_2) })).status === 200;
      }, "the new write token to work on the leader", 15_000);
      assert.equal((await put(leader.url, "rotated", "old\n", { headers: auth(WRITE) })).status, 401);
      assert.equal((await get(leader, "rotated", auth(READ))).status, 401, "the old read token is refused");
      // The follower polls with its new read token and copies the new value.
      await waitValue(runningPod(1), "rotated", "after rotation\n", 15_000, auth(READ_2));
      for (const n of [0, 1]) {
        const logs = await logsOf(runningPod(n).name);
        assert.match(logs, /event=token-changed variable=MEHDB_WRITE_TOKEN_FILE/);
        for (const token of [WRITE, READ, WRITE_2, READ_2]) {
          assert.ok(!logs.includes(token), `no token in ${runningPod(n).name}'s log`);
        }
      }
    });

    step("with tokens: podman stop of each pod exits 0", async () => {
      for (const n of [1, 0]) await stopPod(n);
    }, 60_000);
  });
}
