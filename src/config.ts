/**
 * Configuration: the environment (`MEHDB_*`) and the hostname turned into a
 * checked {@link Config}, and the role that follows from them.
 *
 * The role rule: a hostname (or `MEHDB_HOST`) with an ordinal decides by it:
 * `NAME-0` leads, `NAME-N` follows. A leader address (`MEHDB_LEADER_URL`, or
 * `MEHDB_LOCAL=yes`) then only says where a follower's leader is; on ordinal 0
 * it is ignored, and the role line says so (a StatefulSet may set it on every
 * pod). A hostname without ordinal follows the leader address when one is
 * given, and is a standalone leader otherwise.
 *
 * Everything here is pure: `loadConfig(env, hostname)` has no side effects, so
 * every rule can be tested on its own. A bad value throws a {@link ConfigError}
 * whose message is the one line `main.ts` prints before exiting.
 */

/** The role of this process. */
export type Role = "leader" | "follower";

/** Everything mehdb needs to start, checked. */
export interface Config {
  /** The name roles are read from: `MEHDB_HOST`, else the machine's hostname. */
  host: string;
  /** `leader` or `follower`. */
  role: Role;
  /** Why this role: shown in the start-up log. */
  roleReason: string;
  /** Where a follower copies from and redirects writes to (no trailing `/`); `null` on a leader. */
  leaderUrl: string | null;
  /**
   * A leader address that was given (`MEHDB_LEADER_URL`, or `MEHDB_LOCAL=yes`'s) but is not used,
   * because the ordinal 0 makes this process the leader; `null` when none. Logged in the role line.
   */
  ignoredLeaderUrl: string | null;
  /** TCP port to listen on. `MEHDB_PORT`, default 9876; 0 picks a free port (logged at start). */
  port: number;
  /** Address to listen on. `MEHDB_LISTEN`, default all interfaces. */
  listen: string | undefined;
  /** Directory holding one file per key. `MEHDB_DATADIR`, default `./data`. */
  dataDir: string;
  /** How often a follower polls its leader. `MEHDB_SYNC_INTERVAL_MS`, default 1000. */
  syncIntervalMs: number;
  /**
   * Time a follower allows each request to its leader before giving up on it. `MEHDB_SYNC_TIMEOUT_MS`, default 10 000.
   */
  syncTimeoutMs: number;
  /** Largest value accepted, in bytes. `MEHDB_MAX_VALUE_BYTES`, default 16 MiB. */
  maxValueBytes: number;
  /** Memory for caching small values, in bytes. `MEHDB_CACHE_BYTES`, default 8 MiB (0 turns it off). */
  cacheBytes: number;
  /** File holding the write token. `MEHDB_WRITE_TOKEN_FILE`, default none (writes open). */
  writeTokenFile: string | null;
  /** File holding the read token. `MEHDB_READ_TOKEN_FILE`, default none (reads open). */
  readTokenFile: string | null;
}

/** A configuration value that cannot be used; the message is one line. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** The defaults of the settings the environment can set (`MEHDB_*`), applied here and nowhere else. */
export const DEFAULTS = {
  port: 9876,
  dataDir: "./data",
  namespace: "default",
  clusterDomain: "cluster.local",
  syncIntervalMs: 1000,
  syncTimeoutMs: 10_000,
  maxValueBytes: 16 * 1024 * 1024,
  cacheBytes: 8 * 1024 * 1024,
} as const;

/** Where `MEHDB_LOCAL=yes` looks for the leader, as in the original. */
const LOCAL_LEADER_URL = "http://localhost:9999";

/** A hostname read as StatefulSet pod `name-ordinal`. */
export interface PodName {
  /** The StatefulSet's name (`mehdb` in `mehdb-2`). */
  set: string;
  /** The pod's ordinal (`2` in `mehdb-2`). */
  ordinal: number;
}

/** Reads `NAME-N` as pod `N` of StatefulSet `NAME`; `null` when the hostname has no ordinal. */
export function parsePodName(hostname: string): PodName | null {
  const [, set, ordinal] = /^([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)-(0|[1-9][0-9]{0,8})$/i.exec(hostname) ?? [];
  return set === undefined ? null : { set, ordinal: Number(ordinal) };
}

/** The parts of a leader's cluster address. */
export interface LeaderAddress {
  set: string;
  service: string;
  namespace: string;
  clusterDomain: string;
  port: number;
}

/** `http://SET-0.SERVICE.NAMESPACE.svc.CLUSTER-DOMAIN:PORT`: pod 0 through the headless service. */
export function clusterLeaderUrl(a: LeaderAddress): string {
  return `http://${a.set}-0.${a.service}.${a.namespace}.svc.${a.clusterDomain}:${a.port}`;
}

/** Reads the environment and the hostname into a checked configuration; throws {@link ConfigError}. */
export function loadConfig(env: Record<string, string | undefined>, hostname: string): Config {
  const host = nonEmpty(env.MEHDB_HOST) ?? hostname;
  const port = integer(env, "MEHDB_PORT", DEFAULTS.port, 0, 65535);
  const local = yesNo(env, "MEHDB_LOCAL");
  const explicitLeader = nonEmpty(env.MEHDB_LEADER_URL);
  const leaderOverride =
    explicitLeader !== undefined ? httpUrl(explicitLeader) : local ? LOCAL_LEADER_URL : undefined;
  const overrideSource = explicitLeader !== undefined ? "MEHDB_LEADER_URL" : "MEHDB_LOCAL=yes";

  const pod = parsePodName(host);
  let role: Role;
  let roleReason: string;
  let leaderUrl: string | null = null;
  let ignoredLeaderUrl: string | null = null;
  if (pod && pod.ordinal === 0) {
    role = "leader";
    roleReason = `hostname ${host} has ordinal 0`;
    if (leaderOverride) {
      ignoredLeaderUrl = leaderOverride;
      roleReason +=
        `; ${overrideSource} (${leaderOverride}) is ignored: the ordinal decides, and 0 leads ` +
        `(to follow that leader, set MEHDB_HOST to a name with ordinal 1 or more, or without one)`;
    }
  } else if (pod) {
    role = "follower";
    roleReason = `hostname ${host} has ordinal ${pod.ordinal}`;
    leaderUrl =
      leaderOverride ??
      clusterLeaderUrl({
        set: pod.set,
        service: dnsLabel(env, "MEHDB_SERVICE", pod.set),
        namespace: dnsLabel(env, "MEHDB_NAMESPACE", DEFAULTS.namespace),
        clusterDomain: dnsName(env, "MEHDB_CLUSTER_DOMAIN", DEFAULTS.clusterDomain),
        port,
      });
  } else if (leaderOverride) {
    role = "follower";
    roleReason = `hostname ${host} has no ordinal and a leader address is set`;
    leaderUrl = leaderOverride;
  } else {
    role = "leader";
    roleReason = `hostname ${host} has no ordinal: standalone leader`;
  }

  return {
    host,
    role,
    roleReason,
    leaderUrl,
    ignoredLeaderUrl,
    port,
    listen: nonEmpty(env.MEHDB_LISTEN),
    dataDir: nonEmpty(env.MEHDB_DATADIR) ?? DEFAULTS.dataDir,
    syncIntervalMs: integer(env, "MEHDB_SYNC_INTERVAL_MS", DEFAULTS.syncIntervalMs, 10, 3_600_000),
    syncTimeoutMs: integer(env, "MEHDB_SYNC_TIMEOUT_MS", DEFAULTS.syncTimeoutMs, 100, 3_600_000),
    maxValueBytes: integer(env, "MEHDB_MAX_VALUE_BYTES", DEFAULTS.maxValueBytes, 1, 2 ** 40),
    cacheBytes: integer(env, "MEHDB_CACHE_BYTES", DEFAULTS.cacheBytes, 0, 2 ** 40),
    writeTokenFile: nonEmpty(env.MEHDB_WRITE_TOKEN_FILE) ?? null,
    readTokenFile: nonEmpty(env.MEHDB_READ_TOKEN_FILE) ?? null,
  };
}

function nonEmpty(value: string | undefined): string | undefined {
  const trimmed = value?.trim();
  return trimmed ? trimmed : undefined;
}

function integer(
  env: Record<string, string | undefined>,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  const raw = nonEmpty(env[name]);
  if (raw === undefined) return fallback;
  const value = /^[0-9]+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function yesNo(env: Record<string, string | undefined>, name: string): boolean {
  const raw = nonEmpty(env[name]);
  if (raw === undefined) return false;
  const lower = raw.toLowerCase();
  if (["yes", "true", "1"].includes(lower)) return true;
  if (["no", "false", "0"].includes(lower)) return false;
  throw new ConfigError(`${name} must be yes or no, got ${JSON.stringify(raw)}`);
}

function dnsLabel(env: Record<string, string | undefined>, name: string, fallback: string): string {
  const raw = nonEmpty(env[name]);
  if (raw === undefined) return fallback;
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(raw)) {
    throw new ConfigError(`${name} must be a DNS label (lower-case letters, digits, '-'), got ${JSON.stringify(raw)}`);
  }
  return raw;
}

function dnsName(env: Record<string, string | undefined>, name: string, fallback: string): string {
  const raw = nonEmpty(env[name]);
  if (raw === undefined) return fallback;
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/.test(raw)) {
    throw new ConfigError(`${name} must be a DNS name such as cluster.local, got ${JSON.stringify(raw)}`);
  }
  return raw;
}

function httpUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`MEHDB_LEADER_URL must be an http:// URL, got ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== "http:" || url.pathname !== "/" || url.search || url.hash || url.username) {
    throw new ConfigError(`MEHDB_LEADER_URL must be an http:// URL with no path, got ${JSON.stringify(raw)}`);
  }
  return `${url.protocol}//${url.host}`;
}
