/**
 * `npm run cluster` (src/cluster.ts, run by tsx as the script does): three
 * pods start, a write through a follower reaches the other, a killed pod comes
 * back and catches up, and a Ctrl-C to the process group stops everything
 * with exit code 0. It runs in a temporary directory (its `./data`) on free
 * ports (MEHDB_CLUSTER_PORT).
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, test } from "node:test";
import { http, put } from "./helpers/http.ts";
import { ROOT, stopAll, tempDir } from "./helpers/mehdb.ts";
import { waitFor } from "./helpers/wait.ts";

let cluster: ChildProcess | null = null;
after(async () => {
  if (cluster?.pid !== undefined && cluster.exitCode === null && cluster.signalCode === null) {
    const exited = once(cluster, "exit");
    process.kill(-cluster.pid, "SIGKILL");
    await exited;
  }
  await stopAll();
});

/** Three consecutive ports on 127.0.0.1 that are free, the first of them. */
async function freePorts(count: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    // Below Linux's ephemeral range (32768 and up), so no client's outgoing connection takes one meanwhile.
    const base = 20_000 + Math.floor(Math.random() * 12_000);
    const servers = [];
    let ok = true;
    for (let i = 0; i < count && ok; i++) {
      const server = createServer();
      server.listen(base + i, "127.0.0.1");
      ok = await new Promise<boolean>((resolve) => {
        server.once("listening", () => resolve(true));
        server.once("error", () => resolve(false));
      });
      if (ok) servers.push(server);
    }
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
    if (ok) return base;
  }
  throw new Error("no three free consecutive ports");
}

test("npm run cluster: three pods start and replicate, a killed pod comes back, " +
  "Ctrl-C stops all with exit 0", async () => {
  const cwd = await tempDir("mehdb-cluster-");
  const base = await freePorts(3);
  const pod = (n: number) => `http://127.0.0.1:${base + n}`;
  let output = "";
  const child = spawn(join(ROOT, "node_modules", ".bin", "tsx"), [join(ROOT, "src", "cluster.ts")], {
    cwd,
    env: { PATH: process.env.PATH ?? "", MEHDB_CLUSTER_PORT: String(base), MEHDB_SYNC_INTERVAL_MS: "100" },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true, // its own process group, so that a SIGINT to the group is what Ctrl-C in a terminal sends
  });
  cluster = child;
  const group = child.pid;
  assert.ok(group !== undefined, "the cluster started");
  child.stdout.on("data", (chunk: Buffer) => (output += chunk));
  child.stderr.on("data", (chunk: Buffer) => (output += chunk));
  const exited = once(child, "exit") as Promise<[number | null, string | null]>;
  await waitFor(() => output.includes("cluster | up:"), "the cluster to start", 30_000);
  for (const name of ["mehdb-0", "mehdb-1", "mehdb-2"]) {
    assert.match(output, new RegExp(`^${name} \\| .* event=listening `, "m"));
  }

  // A write through a follower is redirected to the leader (curl -L), and read back from the other follower.
  const redirect = await put(pod(1), "hello", "world");
  assert.equal(redirect.status, 307);
  assert.equal(redirect.headers.location, `http://localhost:${base}/set/hello`);
  const write = await put(pod(0), "hello", "world");
  assert.equal(write.status, 200);
  await waitFor(async () => (await http(`${pod(2)}/get/hello`)).text === "world", "the value on mehdb-2");
  assert.equal(await readFile(join(cwd, "data", "mehdb-2", "hello"), "utf8"), "world");

  // Kill mehdb-1; it is started again on its data and catches up with what it missed.
  const pid = /^mehdb-1 \| .* event=start pid=(\d+)/m.exec(output)?.[1];
  assert.ok(pid !== undefined, "mehdb-1 logged its pid");
  process.kill(Number(pid), "SIGKILL");
  await waitFor(() => output.includes("mehdb-1 killed by SIGKILL"), "the cluster to notice");
  assert.equal((await put(pod(0), "missed", "while down")).status, 200);
  await waitFor(async () => (await http(`${pod(1)}/get/missed`)).text === "while down", "mehdb-1 back and caught up");
  assert.equal((await http(`${pod(1)}/get/hello`)).text, "world");

  process.kill(-group, "SIGINT");
  const [code, signal] = await exited;
  assert.deepEqual({ code, signal }, { code: 0, signal: null }, output.slice(-2000));
  assert.match(output, /cluster \| all pods stopped/);
  for (const n of [0, 1, 2]) await assert.rejects(http(`${pod(n)}/status`), "every pod stopped");
});
