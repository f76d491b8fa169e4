/**
 * Other programs in tests: {@link run} one (never throws for its exit code),
 * {@link must} (throws unless it exits 0), {@link missingTool} to skip a test
 * that needs one, and the tmpfs mounts of the fault suites.
 */
import { spawn, spawnSync } from "node:child_process";

/** How a command ended, and what it printed. */
export interface RunResult {
  /** The exit code; `null` when a signal ended it. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** True when it was killed for running past `timeoutMs`. */
  timedOut: boolean;
}

/** Options of {@link run}. */
export interface RunOptions {
  /** SIGKILL after this long. Default 60 000 ms. */
  timeoutMs?: number;
  /** Written to its standard input. Default nothing. */
  input?: string;
  /** Default this process's. */
  cwd?: string;
  /** Its whole environment. Default this process's. */
  env?: NodeJS.ProcessEnv;
}

/** Runs a command without a shell; resolves however it exits, rejects only when it cannot start. */
export function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env: options.env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.setEncoding("utf8").on("data", (text: string) => (stdout += text));
    child.stderr.setEncoding("utf8").on("data", (text: string) => (stderr += text));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, options.timeoutMs ?? 60_000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - started, timedOut });
    });
    child.stdin.on("error", () => {}); // a command that does not read its input
    child.stdin.end(options.input ?? "");
  });
}

/** One paragraph on how a command ended: the command line, its exit, the last lines it printed. */
export function describeRun(command: string, args: readonly string[], result: RunResult): string {
  const how = result.timedOut ? "timed out" : `exited ${result.code ?? result.signal}`;
  const out = (result.stderr.trim() || result.stdout.trim()).split("\n").slice(-15).join("\n");
  return `${command} ${args.join(" ")}: ${how} after ${Math.round(result.ms)} ms${out ? `\n${out}` : ""}`;
}

/** Runs a command (as {@link run}) and throws, with what it printed, unless it exits 0. */
export async function must(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const result = await run(command, args, options);
  if (result.code !== 0) throw new Error(describeRun(command, args, result));
  return result;
}

/** Why `command args` (default `--version`) does not run here, for a test's `skip`; `undefined` when it does. */
export function missingTool(command: string, args: readonly string[] = ["--version"]): string | undefined {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: 30_000 });
  if (result.error) {
    return `${command} is not installed (${(result.error as NodeJS.ErrnoException).code ?? result.error.message})`;
  }
  if (result.status !== 0) {
    return `${command} ${args.join(" ")} failed: ${(result.stderr || result.stdout).trim().split("\n")[0]}`;
  }
  return undefined;
}

/** Mounts a tmpfs of `size` (e.g. `2m`) on `dir`; resolves `null`, or why it could not. */
export async function mountTmpfs(dir: string, size: string): Promise<string | null> {
  try {
    await must("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0755`, "tmpfs", dir], { timeoutMs: 15_000 });
    return null;
  } catch (error) {
    return (error as Error).message;
  }
}

/** Unmounts `dir` (lazily if it is busy); never throws. */
export async function unmount(dir: string): Promise<void> {
  const lazily = () => run("umount", ["-l", dir], { timeoutMs: 15_000 }).catch(() => undefined);
  const plain = await run("umount", [dir], { timeoutMs: 15_000 }).catch(() => null);
  if (plain?.code !== 0) await lazily();
}
