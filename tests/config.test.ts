/** Configuration: environment and hostname → a checked Config, roles and the leader's address. */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { clusterLeaderUrl, ConfigError, DEFAULTS, loadConfig, parsePodName } from "../src/config.ts";
import { ROOT, startMehdb, stopAll } from "./helpers/mehdb.ts";

after(stopAll);

test("parsePodName reads NAME-N", () => {
  assert.deepEqual(parsePodName("mehdb-0"), { set: "mehdb", ordinal: 0 });
  assert.deepEqual(parsePodName("mehdb-12"), { set: "mehdb", ordinal: 12 });
  assert.deepEqual(parsePodName("my-kv-store-3"), { set: "my-kv-store", ordinal: 3 });
  for (const host of ["mehdb", "mehdb-", "-0", "mehdb-01", "mehdb-x", "laptop.local", "", "mehdb-0-", "mehdb--1"]) {
    assert.equal(parsePodName(host), null, host);
  }
});

test("ordinal 0 leads, with defaults for everything else", () => {
  const config = loadConfig({}, "mehdb-0");
  assert.equal(config.role, "leader");
  assert.equal(config.leaderUrl, null);
  assert.equal(config.port, 9876);
  assert.equal(config.dataDir, "./data");
  assert.equal(config.syncIntervalMs, 1000);
  assert.equal(config.maxValueBytes, 16 * 1024 * 1024);
  assert.equal(config.cacheBytes, DEFAULTS.cacheBytes);
});

test("ordinal ≥ 1 follows pod 0 through the headless service, in any namespace", () => {
  assert.equal(loadConfig({}, "mehdb-1").leaderUrl, "http://mehdb-0.mehdb.default.svc.cluster.local:9876");
  const config = loadConfig(
    { MEHDB_NAMESPACE: "team-a", MEHDB_SERVICE: "kv", MEHDB_CLUSTER_DOMAIN: "corp.example", MEHDB_PORT: "8080" },
    "store-3",
  );
  assert.equal(config.role, "follower");
  assert.equal(config.leaderUrl, "http://store-0.kv.team-a.svc.corp.example:8080");
});

test("MEHDB_HOST overrides the hostname", () => {
  assert.equal(loadConfig({ MEHDB_HOST: "mehdb-0" }, "mehdb-5").role, "leader");
  assert.equal(loadConfig({ MEHDB_HOST: "mehdb-2" }, "laptop").role, "follower");
});

test("a hostname without ordinal is a standalone leader, and says so", () => {
  const config = loadConfig({}, "laptop");
  assert.equal(config.role, "leader");
  assert.match(config.roleReason, /no ordinal: standalone leader/);
});

test("MEHDB_LOCAL=yes follows http://localhost:9999, as in the original", () => {
  const follower = loadConfig({ MEHDB_LOCAL: "yes", MEHDB_DATADIR: "./follower-data" }, "laptop");
  assert.equal(follower.role, "follower");
  assert.equal(follower.leaderUrl, "http://localhost:9999");
  assert.equal(follower.dataDir, "./follower-data");
  assert.equal(loadConfig({ MEHDB_LOCAL: "yes" }, "mehdb-1").leaderUrl, "http://localhost:9999");
  assert.equal(loadConfig({ MEHDB_LOCAL: "yes", MEHDB_HOST: "mehdb-0" }, "laptop").role, "leader");
  assert.equal(loadConfig({ MEHDB_LOCAL: "no" }, "laptop").role, "leader");
});

test("MEHDB_LEADER_URL overrides the leader's address", () => {
  const withSlash = loadConfig({ MEHDB_LEADER_URL: "http://127.0.0.1:9999/" }, "mehdb-1");
  assert.equal(withSlash.leaderUrl, "http://127.0.0.1:9999");
  const overLocal = loadConfig({ MEHDB_LEADER_URL: "http://leader:1234", MEHDB_LOCAL: "yes" }, "x");
  assert.equal(overLocal.leaderUrl, "http://leader:1234");
});

test("clusterLeaderUrl builds the FQDN of pod 0", () => {
  assert.equal(
    clusterLeaderUrl({
      set: "mehdb",
      service: "mehdb",
      namespace: "mehdb",
      clusterDomain: "cluster.local",
      port: 9876,
    }),
    "http://mehdb-0.mehdb.mehdb.svc.cluster.local:9876",
  );
});

test("bad values stop start-up with a one-line error naming the variable", () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ MEHDB_PORT: "abc" }, /^MEHDB_PORT must be a whole number from 0 to 65535, got "abc"$/],
    [{ MEHDB_PORT: "70000" }, /^MEHDB_PORT/],
    [{ MEHDB_PORT: "-1" }, /^MEHDB_PORT/],
    [{ MEHDB_PORT: "1.5" }, /^MEHDB_PORT/],
    [{ MEHDB_SYNC_INTERVAL_MS: "0" }, /^MEHDB_SYNC_INTERVAL_MS/],
    [{ MEHDB_MAX_VALUE_BYTES: "lots" }, /^MEHDB_MAX_VALUE_BYTES/],
    [{ MEHDB_CACHE_BYTES: "-5" }, /^MEHDB_CACHE_BYTES/],
    [{ MEHDB_LOCAL: "maybe" }, /^MEHDB_LOCAL must be yes or no/],
    [{ MEHDB_LEADER_URL: "not a url" }, /^MEHDB_LEADER_URL must be an http:\/\/ URL/],
    [{ MEHDB_LEADER_URL: "ftp://x" }, /^MEHDB_LEADER_URL/],
    [{ MEHDB_LEADER_URL: "http://x/path" }, /^MEHDB_LEADER_URL/],
    [{ MEHDB_NAMESPACE: "Bad_NS" }, /^MEHDB_NAMESPACE must be a DNS label/],
    [{ MEHDB_SERVICE: "a.b" }, /^MEHDB_SERVICE must be a DNS label/],
    [{ MEHDB_CLUSTER_DOMAIN: "bad domain" }, /^MEHDB_CLUSTER_DOMAIN/],
  ];
  for (const [env, message] of cases) {
    assert.throws(() => loadConfig(env, "mehdb-1"), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, message);
      assert.ok(!error.message.includes("\n"));
      return true;
    }, JSON.stringify(env));
  }
});

test("empty values count as unset", () => {
  const config = loadConfig({ MEHDB_PORT: "", MEHDB_HOST: " ", MEHDB_DATADIR: "" }, "mehdb-0");
  assert.equal(config.port, 9876);
  assert.equal(config.host, "mehdb-0");
  assert.equal(config.dataDir, "./data");
});

test("on ordinal 0 a leader address is ignored (the ordinal decides), and the role reason says so", () => {
  const explicit = loadConfig({ MEHDB_LEADER_URL: "http://leader:1234" }, "mehdb-0");
  assert.equal(explicit.role, "leader");
  assert.equal(explicit.leaderUrl, null);
  assert.equal(explicit.ignoredLeaderUrl, "http://leader:1234");
  assert.match(explicit.roleReason,
    /^hostname mehdb-0 has ordinal 0; MEHDB_LEADER_URL \(http:\/\/leader:1234\) is ignored: the ordinal decides/);
  // A machine whose own hostname ends in -0 (no MEHDB_HOST): MEHDB_LOCAL=yes is ignored the same way, and said.
  const local = loadConfig({ MEHDB_LOCAL: "yes" }, "build-0");
  assert.equal(local.role, "leader");
  assert.equal(local.ignoredLeaderUrl, "http://localhost:9999");
  assert.match(local.roleReason, /MEHDB_LOCAL=yes \(http:\/\/localhost:9999\) is ignored/);
  // A StatefulSet may set the address on every pod: pods ≥ 1 use it, pod 0 leads.
  assert.equal(loadConfig({ MEHDB_LEADER_URL: "http://leader:1234" }, "mehdb-1").leaderUrl, "http://leader:1234");
  assert.equal(loadConfig({ MEHDB_LEADER_URL: "http://leader:1234" }, "mehdb-1").ignoredLeaderUrl, null);
  assert.equal(loadConfig({ MEHDB_LEADER_URL: "http://leader:1234" }, "laptop").ignoredLeaderUrl, null);
  assert.equal(loadConfig({}, "mehdb-0").ignoredLeaderUrl, null);
  assert.doesNotMatch(loadConfig({}, "mehdb-0").roleReason, /ignored/);
});

test("the README's leader-and-follower recipe gives one leader and one follower, " +
  "whatever the machine's hostname", async () => {
  const readme = await readFile(join(ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## A leader and a follower on one machine"));
  const recipe = section.slice(0, section.indexOf("\n## ", 5)).split("\n");
  const starts = recipe.filter((line) => /^MEHDB_\S+=.* npm start/.test(line));
  assert.equal(starts.length, 2, "two `npm start` lines in the recipe");
  const [leaderLine = "", followerLine = ""] = starts;
  const envOf = (line: string) => {
    return Object.fromEntries([...line.matchAll(/(MEHDB_[A-Z_]+)=(\S+)/g)].map(([, name, value]) => [name, value]));
  };
  for (const hostname of ["laptop", "build-0", "ci-runner-3"]) {
    const leader = loadConfig(envOf(leaderLine), hostname);
    const follower = loadConfig(envOf(followerLine), hostname);
    assert.equal(leader.role, "leader", hostname);
    assert.equal(follower.role, "follower", hostname);
    assert.equal(follower.leaderUrl, `http://localhost:${leader.port}`, hostname);
    assert.notEqual(follower.port, leader.port);
    assert.notEqual(follower.dataDir, leader.dataDir);
  }
});

test("the role line of a real process names the leader address it ignores", async () => {
  const mehdb = await startMehdb({ host: "mehdb-0", leaderUrl: "http://127.0.0.1:9" });
  const line = mehdb.output().split("\n").find((l) => l.includes("event=role")) ?? "";
  assert.match(line,
    /event=role role=leader ignored_leader=http:\/\/127\.0\.0\.1:9 reason="[^"]*MEHDB_LEADER_URL[^"]* is ignored/);
  assert.equal(await mehdb.stop(), 0);
});

test("MEHDB_WRITE_TOKEN_FILE and MEHDB_READ_TOKEN_FILE: paths, none by default " +
  "(the files are read by tokens.ts)", () => {
  const none = loadConfig({}, "mehdb-0");
  assert.equal(none.writeTokenFile, null);
  assert.equal(none.readTokenFile, null);
  const both = loadConfig(
    { MEHDB_WRITE_TOKEN_FILE: " /etc/mehdb/tokens/write ", MEHDB_READ_TOKEN_FILE: "/etc/mehdb/tokens/read" },
    "mehdb-1",
  );
  assert.equal(both.writeTokenFile, "/etc/mehdb/tokens/write");
  assert.equal(both.readTokenFile, "/etc/mehdb/tokens/read");
  assert.equal(loadConfig({ MEHDB_READ_TOKEN_FILE: "  " }, "mehdb-0").readTokenFile, null);
});
