/**
 * The Kubernetes manifests in k8s/, rendered the way a user applies them
 * (`kubectl -n mehdb apply -k k8s/`, and `-k k8s/with-tokens/`), checked
 * against what k8s/README.md says of them. Needs kubectl (for
 * `kubectl kustomize`); without it the suite is skipped and says why.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { before, describe, test } from "node:test";
import { missingTool } from "./helpers/commands.ts";
import { ROOT } from "./helpers/mehdb.ts";

const k8sDir = path.join(ROOT, "k8s");
const baseDir = path.join(k8sDir, "base");
const tokensDir = path.join(k8sDir, "with-tokens");

// Loosely typed view of a rendered object: the assertions say what they expect.
type Obj = Record<string, any>;

/** The one object of `kind` among `objects`; fails the test unless there is exactly one. */
function only(objects: Obj[], kind: string, where: string): Obj {
  const found = objects.filter((o) => o.kind === kind);
  const [first] = found;
  assert.ok(first && found.length === 1, `exactly one ${kind} in ${where}, found ${found.length}`);
  return first;
}

/** Splits kubectl's `-o json` output for several objects (JSON texts one after the other). */
function splitJsonStream(text: string): Obj[] {
  const out: Obj[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === `"`) inString = false;
      continue;
    }
    if (c === `"`) inString = true;
    else if (c === "{" || c === "[") {
      if (depth === 0) start = i;
      depth++;
    } else if (c === "}" || c === "]") {
      depth--;
      if (depth === 0) {
        const v = JSON.parse(text.slice(start, i + 1));
        if (v.kind === "List" && Array.isArray(v.items)) out.push(...v.items);
        else out.push(v);
      }
    }
  }
  assert.equal(depth, 0, "kubectl printed truncated JSON");
  return out;
}

/** `kubectl kustomize DIR`: the YAML and its objects. */
function render(dir: string): { yaml: string; objects: Obj[] } {
  const yaml = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", timeout: 30_000 });
  // kubectl has no offline YAML-to-JSON command, but `label --local` parses
  // the objects with kubectl's own decoder and prints them as JSON without
  // asking a server. Removing a label that is not there changes nothing we check.
  const json = execFileSync("kubectl", ["label", "--local", "-f", "-", "-o", "json", "mehdb.test/unused-"], {
    input: yaml,
    encoding: "utf8",
    timeout: 30_000,
  });
  return { yaml, objects: splitJsonStream(json) };
}

const kubectl = missingTool("kubectl", ["version", "--client"]);
const skipReason = kubectl && `${kubectl}; install kubectl to check the manifests`;
// A skipped suite is not counted in the runner's totals: skip a test instead,
// so that the summary says `skipped 1` along with the reason.
if (skipReason) test("k8s/ manifests (kubectl kustomize k8s/)", { skip: skipReason }, () => {});
else describe("k8s/ manifests (kubectl kustomize k8s/)", () => {
  let yaml = "";
  let objects: Obj[] = [];
  let sts: Obj;
  let svc: Obj;
  let pdb: Obj;
  let pod: Obj; // sts.spec.template.spec
  let ctr: Obj; // the mehdb container

  before(() => {
    ({ yaml, objects } = render(k8sDir));
    sts = only(objects, "StatefulSet", "k8s/");
    svc = only(objects, "Service", "k8s/");
    pdb = only(objects, "PodDisruptionBudget", "k8s/");
    pod = sts.spec.template.spec;
    assert.equal(pod.containers.length, 1, "one container per pod");
    ctr = pod.containers[0];
  });

  test("renders a StatefulSet, a Service, a PodDisruptionBudget and a NetworkPolicy named mehdb, " +
    "and nothing else", () => {
    assert.deepEqual(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
      "NetworkPolicy/mehdb",
      "PodDisruptionBudget/mehdb",
      "Service/mehdb",
      "StatefulSet/mehdb",
    ]);
  });

  test("hard-codes no namespace, so `kubectl -n NS apply -k k8s/` works in any namespace", () => {
    for (const o of objects) assert.equal(o.metadata.namespace, undefined, `${o.kind} sets a namespace`);
    assert.doesNotMatch(yaml, /svc\.cluster\.local/,
      "no leader address baked in (it comes from the namespace at run time)");
    assert.ok(!ctr.env?.some((e: Obj) => e.name === "MEHDB_LEADER_URL"), "no fixed MEHDB_LEADER_URL");
  });

  test("never names the original `ebs` storage class (or any storage class)", () => {
    assert.doesNotMatch(yaml, /ebs/i);
    for (const t of sts.spec.volumeClaimTemplates) assert.equal(t.spec.storageClassName, undefined);
  });

  test("StatefulSet: 2 replicas, serviceName mehdb, selector matches the pod labels, ordered start", () => {
    assert.equal(sts.spec.replicas, 2);
    assert.equal(sts.spec.serviceName, "mehdb");
    assert.equal(sts.spec.serviceName, svc.metadata.name);
    assert.ok(["OrderedReady", undefined].includes(sts.spec.podManagementPolicy), "pods start one after the other");
    const sel: Obj = sts.spec.selector.matchLabels;
    assert.ok(Object.keys(sel).length > 0);
    for (const [k, v] of Object.entries(sel)) assert.equal(sts.spec.template.metadata.labels[k], v, `pod label ${k}`);
  });

  test("container: port 9876 named http, MEHDB_NAMESPACE from the downward API, data dir /data", () => {
    assert.deepEqual(
      ctr.ports.map((p: Obj) => ({ name: p.name, containerPort: p.containerPort })),
      [{ name: "http", containerPort: 9876 }],
    );
    const env = new Map<string, Obj>((ctr.env ?? []).map((e: Obj) => [e.name, e]));
    assert.deepEqual(env.get("MEHDB_NAMESPACE")?.valueFrom, { fieldRef: { fieldPath: "metadata.namespace" } });
    const port = env.get("MEHDB_PORT");
    if (port) assert.equal(port.value, "9876");
    const dataDir = env.get("MEHDB_DATADIR")?.value ?? containerfileEnv("MEHDB_DATADIR");
    assert.equal(dataDir, "/data");
    assert.equal(pod.enableServiceLinks, false,
      "no docker-link variables (a Service named mehdb would set MEHDB_PORT=tcp://...)");
  });

  test("volume: claim template `data`, 1Gi, ReadWriteOnce, mounted at /data; /tmp is a writable emptyDir", () => {
    assert.equal(sts.spec.volumeClaimTemplates.length, 1);
    const t = sts.spec.volumeClaimTemplates[0];
    assert.equal(t.metadata.name, "data");
    assert.deepEqual(t.spec.accessModes, ["ReadWriteOnce"]);
    assert.equal(t.spec.resources.requests.storage, "1Gi");
    const mounts = new Map<string, Obj>(ctr.volumeMounts.map((m: Obj) => [m.mountPath, m]));
    assert.equal(mounts.get("/data")?.name, "data");
    assert.ok(!mounts.get("/data")?.readOnly);
    const tmp = mounts.get("/tmp");
    assert.ok(tmp, "/tmp is mounted (the root filesystem is read-only)");
    const tmpVol = (pod.volumes ?? []).find((v: Obj) => v.name === tmp.name);
    assert.ok(tmpVol?.emptyDir, "/tmp is an emptyDir");
    // A pod volume named `data` would shadow the claim template.
    assert.ok(!(pod.volumes ?? []).some((v: Obj) => v.name === "data"));
    // Claims outlive pods (the walkthrough deletes them by hand at the end).
    const retention = sts.spec.persistentVolumeClaimRetentionPolicy;
    if (retention) assert.deepEqual(retention, { whenDeleted: "Retain", whenScaled: "Retain" });
  });

  test("probes: liveness on /status, readiness on /status?level=full, on the http port", () => {
    const live = ctr.livenessProbe;
    const ready = ctr.readinessProbe;
    assert.equal(live.httpGet.path, "/status", "liveness must not depend on the leader");
    assert.equal(ready.httpGet.path, "/status?level=full");
    for (const p of [live, ready]) {
      assert.ok(p.httpGet.port === "http" || p.httpGet.port === 9876, `probe port ${p.httpGet.port}`);
      assert.ok(!p.httpGet.scheme || p.httpGet.scheme === "HTTP");
    }
    const period = (p: Obj): number => p.periodSeconds ?? 10;
    const failures = (p: Obj): number => p.failureThreshold ?? 3;
    // Readiness is polled often enough that a follower joins soon after its
    // first sync (default poll every 1 s), and a single slow answer does not
    // mark it unready.
    assert.ok(period(ready) <= 5, `readiness period ${period(ready)}s`);
    assert.ok(failures(ready) >= 2);
    // Liveness gives a busy process (a follower catching up) a while before a restart.
    assert.ok(period(live) * failures(live) >= 20, "liveness tolerates at least 20 s of silence");
    assert.ok((live.timeoutSeconds ?? 1) >= 2 && (ready.timeoutSeconds ?? 1) >= 1);
  });

  test("resources: requests and limits for cpu and memory", () => {
    const r = ctr.resources;
    for (const k of ["cpu", "memory"]) {
      assert.ok(r.requests?.[k], `requests.${k}`);
      assert.ok(r.limits?.[k], `limits.${k}`);
    }
    assert.ok(toBytes(r.limits.memory) >= toBytes(r.requests.memory));
    assert.ok(toBytes(r.limits.memory) >= 128 * 2 ** 20, "room for a 16 MiB value streamed through and Node itself");
  });

  test(`passes the "restricted" Pod Security Standard`, () => {
    assert.deepEqual(restrictedViolations(pod), []);
  });

  test("security context: uid/gid 1000 (as the image), fsGroup 1000, read-only root, no token", () => {
    const psc = pod.securityContext;
    const csc = ctr.securityContext;
    const eff = (k: string): unknown => csc?.[k] ?? psc?.[k];
    assert.equal(eff("runAsNonRoot"), true);
    assert.equal(eff("runAsUser"), 1000);
    assert.equal(eff("runAsGroup"), 1000);
    assert.equal(psc.fsGroup, 1000, "fsGroup makes the volume writable for uid 1000");
    assert.equal(csc.readOnlyRootFilesystem, true);
    assert.equal(csc.allowPrivilegeEscalation, false);
    assert.deepEqual(csc.capabilities?.drop, ["ALL"]);
    assert.equal(csc.capabilities?.add, undefined);
    assert.equal((csc.seccompProfile ?? psc.seccompProfile)?.type, "RuntimeDefault");
    assert.equal(pod.automountServiceAccountToken, false);
    // The image runs as the same numeric user, so runAsNonRoot can check it.
    assert.equal(containerfileUser(), "1000:1000");
  });

  test("terminationGracePeriodSeconds leaves room for the graceful stop (a few seconds)", () => {
    const g = pod.terminationGracePeriodSeconds;
    assert.equal(typeof g, "number");
    assert.ok(g >= 5 && g <= 60, `terminationGracePeriodSeconds ${g}`);
  });

  test("headless Service mehdb: clusterIP None, port 9876 named http, selects the pods", () => {
    assert.equal(svc.spec.clusterIP, "None");
    const ports = svc.spec.ports.map((p: Obj) => ({ name: p.name, port: p.port, targetPort: p.targetPort ?? p.port }));
    assert.deepEqual(ports, [
      { name: "http", port: 9876, targetPort: "http" },
    ]);
    for (const [k, v] of Object.entries<string>(svc.spec.selector)) {
      assert.equal(sts.spec.template.metadata.labels[k], v);
    }
    // Only ready pods get DNS records: a follower that has not synced yet must
    // not receive reads through `mehdb` or `mehdb-N.mehdb` (the leader is
    // ready as soon as it serves, so followers can always resolve it).
    assert.ok(!svc.spec.publishNotReadyAddresses);
  });

  test("PodDisruptionBudget selects the pods and lets a drain evict one at a time", () => {
    for (const [k, v] of Object.entries<string>(pdb.spec.selector.matchLabels)) {
      assert.equal(sts.spec.template.metadata.labels[k], v);
    }
    if (pdb.spec.maxUnavailable !== undefined) assert.equal(pdb.spec.maxUnavailable, 1);
    else assert.ok(pdb.spec.minAvailable < sts.spec.replicas, "minAvailable below replicas, or drains block");
  });

  test("k8s/kustomization.yaml is the base as it is; no token is set without k8s/with-tokens/", () => {
    const kust = readFileSync(path.join(k8sDir, "kustomization.yaml"), "utf8");
    assert.match(kust, /^resources:\s*\n\s*- base\s*$/m);
    assert.doesNotMatch(kust, /^(patches|images|namespace):/m);
    assert.ok(!ctr.env?.some((e: Obj) => /TOKEN/.test(e.name)), "no token variable");
  });

  test("NetworkPolicy: port 9876 of the pods admits only the set's own pods " +
    `and pods labelled mehdb-client: "true"`, () => {
    const np = only(objects, "NetworkPolicy", "k8s/");
    assert.deepEqual(np.spec.podSelector.matchLabels, sts.spec.selector.matchLabels, "it selects the set's pods");
    assert.deepEqual(np.spec.policyTypes, ["Ingress"], "ingress only: followers still reach the leader and DNS");
    assert.equal(np.spec.ingress.length, 1);
    const [rule] = np.spec.ingress;
    assert.deepEqual(rule.ports, [{ protocol: "TCP", port: 9876 }]);
    // Pod selectors only (no namespaceSelector, no ipBlock): the same namespace.
    assert.deepEqual(rule.from, [
      { podSelector: { matchLabels: sts.spec.template.metadata.labels } },
      { podSelector: { matchLabels: { "mehdb-client": "true" } } },
    ]);
    assert.deepEqual(sts.spec.template.metadata.labels, sts.spec.selector.matchLabels,
      "the pods carry exactly the selected labels");
  });

  test("the image is named in one place: base/kustomization.yaml `images:`", () => {
    const kust = readFileSync(path.join(baseDir, "kustomization.yaml"), "utf8");
    const m = /^images:\s*\n\s*- name: (\S+)\s*\n\s*newName: (\S+)\s*\n\s*newTag: "?([^"\s]+)"?\s*$/m.exec(kust);
    assert.ok(m, "kustomization.yaml has an images: entry with name, newName and newTag");
    const [, name, newName, newTag] = m;
    const raw = readFileSync(path.join(baseDir, "statefulset.yaml"), "utf8");
    assert.match(raw, new RegExp(`^\\s*image: ${name}(\\s|$)`, "m"),
      "statefulset.yaml uses the name that images: rewrites");
    assert.equal(ctr.image, `${newName}:${newTag}`);
    assert.equal((yaml.match(/^\s*(- )?image: /gm) ?? []).length, 1, "one image reference in all");
  });
});

if (skipReason) test("k8s/with-tokens/ (kubectl kustomize k8s/with-tokens/)", { skip: skipReason }, () => {});
else describe("k8s/with-tokens/ (kubectl kustomize k8s/with-tokens/)", () => {
  let plain: Obj[] = [];
  let objects: Obj[] = [];
  let yaml = "";
  let pod: Obj;
  let ctr: Obj;

  before(() => {
    plain = render(k8sDir).objects;
    ({ yaml, objects } = render(tokensDir));
    const sts = only(objects, "StatefulSet", "k8s/with-tokens/");
    pod = sts.spec.template.spec;
    ctr = pod.containers[0];
  });

  test("builds on ../base: the same objects as k8s/, only the StatefulSet differs; " +
    "no Secret (the user creates it)", () => {
    const names = (list: Obj[]): string[] => list.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    assert.deepEqual(names(objects), names(plain));
    assert.ok(!objects.some((o) => o.kind === "Secret"), "no Secret: tokens do not belong in git");
    for (const o of objects) {
      if (o.kind === "StatefulSet") continue;
      assert.deepEqual(o, plain.find((p) => p.kind === o.kind), `${o.kind} as in k8s/`);
    }
    const kust = readFileSync(path.join(tokensDir, "kustomization.yaml"), "utf8");
    assert.match(kust, /^resources:\s*\n\s*- \.\.\/base\s*$/m);
    assert.doesNotMatch(yaml, /^\s*namespace:/m, "no namespace");
  });

  test("mounts the Secret mehdb-tokens read-only as a directory (no subPath, so rotation reaches the pod)", () => {
    const volumes = (pod.volumes ?? []).filter((v: Obj) => v.secret);
    assert.equal(volumes.length, 1);
    const [volume] = volumes;
    assert.equal(volume.secret.secretName, "mehdb-tokens");
    assert.equal(volume.secret.defaultMode, 0o440, "owner and group (fsGroup 1000) only");
    assert.equal(volume.secret.optional, undefined, "not optional: without the Secret the pod waits");
    const mounts = ctr.volumeMounts.filter((m: Obj) => m.name === volume.name);
    assert.equal(mounts.length, 1);
    assert.equal(mounts[0].readOnly, true);
    assert.equal(mounts[0].subPath, undefined);
    assert.equal(mounts[0].mountPath, "/etc/mehdb/tokens");
    assert.equal(pod.securityContext.fsGroup, 1000, "the group that may read the files");
  });

  test("sets MEHDB_WRITE_TOKEN_FILE and MEHDB_READ_TOKEN_FILE to the Secret's keys write and read, " +
    "and keeps the rest", () => {
    const env = new Map<string, Obj>((ctr.env ?? []).map((e: Obj) => [e.name, e]));
    assert.deepEqual(env.get("MEHDB_WRITE_TOKEN_FILE"),
      { name: "MEHDB_WRITE_TOKEN_FILE", value: "/etc/mehdb/tokens/write" });
    assert.deepEqual(env.get("MEHDB_READ_TOKEN_FILE"),
      { name: "MEHDB_READ_TOKEN_FILE", value: "/etc/mehdb/tokens/read" });
    const base = only(plain, "StatefulSet", "k8s/").spec.template.spec.containers[0];
    for (const e of base.env) assert.deepEqual(env.get(e.name), e, `${e.name} kept`);
    assert.equal(env.size, base.env.length + 2);
    assert.ok(!yaml.includes("secretKeyRef"), "the tokens are files, never environment values");
    assert.deepEqual(ctr.volumeMounts.filter((m: Obj) => m.name !== "tokens"), base.volumeMounts);
  });

  test(`still passes the "restricted" Pod Security Standard, with probes on open paths`, () => {
    assert.deepEqual(restrictedViolations(pod), []);
    assert.equal(ctr.livenessProbe.httpGet.path, "/status");
    assert.equal(ctr.readinessProbe.httpGet.path, "/status?level=full");
  });
});

function toBytes(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
  assert.ok(m, `quantity ${q}`);
  const unit: Record<string, number> = {
    Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12,
  };
  const [, amount, suffix] = m;
  return Number(amount) * (suffix === undefined ? 1 : unit[suffix] ?? NaN);
}

function containerfileText(): string {
  return readFileSync(path.join(ROOT, "Containerfile"), "utf8");
}

function containerfileUser(): string | undefined {
  return /^USER\s+(\S+)\s*$/m.exec(containerfileText())?.[1];
}

function containerfileEnv(name: string): string | undefined {
  return new RegExp(`^ENV\\s+(?:.*\\s)?${name}=(\\S+)`, "m").exec(containerfileText())?.[1];
}

/**
 * The checks of the "restricted" Pod Security Standard (kubernetes.io/docs/
 * concepts/security/pod-security-standards/, which includes "baseline"), for
 * one pod spec. Returns what fails, empty when it passes.
 */
function restrictedViolations(spec: Obj): string[] {
  const bad: string[] = [];
  const psc: Obj = spec.securityContext ?? {};
  const all: Obj[] = [...(spec.initContainers ?? []), ...spec.containers, ...(spec.ephemeralContainers ?? [])];
  if (spec.hostNetwork || spec.hostPID || spec.hostIPC) bad.push("host namespaces");
  if (psc.sysctls?.length) bad.push("sysctls");
  const allowedVolumes = [
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
  ];
  for (const v of spec.volumes ?? []) {
    const types = Object.keys(v).filter((k) => k !== "name");
    for (const t of types) if (!allowedVolumes.includes(t)) bad.push(`volume ${v.name} of type ${t}`);
  }
  const podSeccomp = psc.seccompProfile?.type;
  const okSeccomp = (t: unknown): boolean => t === "RuntimeDefault" || t === "Localhost";
  if (podSeccomp !== undefined && !okSeccomp(podSeccomp)) bad.push(`pod seccomp ${podSeccomp}`);
  if (psc.runAsUser === 0) bad.push("pod runAsUser 0");
  for (const c of all) {
    const sc: Obj = c.securityContext ?? {};
    const n = `container ${c.name}`;
    if (sc.privileged) bad.push(`${n} privileged`);
    if (sc.allowPrivilegeEscalation !== false) bad.push(`${n} allowPrivilegeEscalation not false`);
    if (!(sc.runAsNonRoot ?? psc.runAsNonRoot)) bad.push(`${n} runAsNonRoot not true`);
    if (sc.runAsUser === 0) bad.push(`${n} runAsUser 0`);
    if (!okSeccomp(sc.seccompProfile?.type ?? podSeccomp)) bad.push(`${n} seccomp not RuntimeDefault/Localhost`);
    if (!(sc.capabilities?.drop ?? []).includes("ALL")) bad.push(`${n} does not drop ALL capabilities`);
    for (const cap of sc.capabilities?.add ?? []) if (cap !== "NET_BIND_SERVICE") bad.push(`${n} adds ${cap}`);
    if (sc.procMount && sc.procMount !== "Default") bad.push(`${n} procMount ${sc.procMount}`);
    if ((c.ports ?? []).some((p: Obj) => p.hostPort)) bad.push(`${n} hostPort`);
    const apparmor = sc.appArmorProfile?.type ?? psc.appArmorProfile?.type;
    if (apparmor === "Unconfined") bad.push(`${n} AppArmor unconfined`);
    const seType = sc.seLinuxOptions?.type ?? psc.seLinuxOptions?.type;
    if (seType && !["container_t", "container_init_t", "container_kvm_t", "container_engine_t"].includes(seType)) {
      bad.push(`${n} SELinux type ${seType}`);
    }
  }
  return bad;
}
