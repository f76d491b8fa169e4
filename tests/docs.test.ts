/**
 * The documentation, checked as files (no server): README.md stays a front door (at most 300 lines), the
 * reference lives in k8s/README.md, src/README.md and tests/README.md, every relative link of every README
 * reaches a file (and a heading, when it names one), no project file cites a document the repository does
 * not have, and the version of package.json is the image tag of the kustomization and of the READMEs.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";
import { ROOT } from "./helpers/mehdb.ts";

const READMES = ["README.md", "k8s/README.md", "src/README.md", "tests/README.md"];

/** The project's files: the top-level files and folders the repository holds (never node_modules, .git, data). */
function projectFiles(): string[] {
  const top = [".editorconfig", ".gitignore", "Containerfile", "LICENSE", "README.md", "package.json",
    "package-lock.json", "tsconfig.json"];
  const files = top.filter((file) => existsSync(join(ROOT, file)));
  const walk = (dir: string): void => {
    for (const entry of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) files.push(path);
    }
  };
  for (const dir of [".ci", "k8s", "src", "tests"]) if (existsSync(join(ROOT, dir))) walk(dir);
  return files;
}

/** Markdown without its code: fenced blocks and inline code spans hold no links. */
function prose(markdown: string): string {
  return markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, "").replace(/`[^`\n]*`/g, "");
}

/** The anchors of a markdown file's headings, as GitHub makes them. */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const [, text = ""] of markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, "").matchAll(/^#{1,6} +(.+?) *#*$/gm)) {
    const plain = text.replace(/\[([^\]]*)\]\([^)]*\)/g, "$1").replace(/[`*_]/g, (c) => (c === "_" ? "_" : ""));
    const slug = plain.trim().toLowerCase().replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, "").replace(/ /g, "-");
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return out;
}

test("README.md is a front door: at most 300 lines; the reference is in the folders' READMEs", () => {
  const lines = readFileSync(join(ROOT, "README.md"), "utf8").split("\n").length - 1;
  assert.ok(lines <= 300, `README.md has ${lines} lines, more than 300`);
  for (const file of READMES) assert.ok(existsSync(join(ROOT, file)), `${file} exists`);
});

test("every relative link of every README reaches a file, and the heading it names", () => {
  const checked: string[] = [];
  for (const file of READMES) {
    const text = readFileSync(join(ROOT, file), "utf8");
    for (const [, target = ""] of prose(text).matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:
      const [path = "", anchor] = target.split("#");
      const resolved = path === "" ? join(ROOT, file) : join(ROOT, dirname(file), decodeURIComponent(path));
      const where = `${file}: (${target})`;
      assert.ok(relative(ROOT, resolved).split("/")[0] !== "..", `${where} leaves the repository`);
      assert.ok(existsSync(resolved), `${where}: no such file`);
      if (anchor !== undefined) {
        assert.ok(statSync(resolved).isFile() && resolved.endsWith(".md"), `${where}: an anchor in a non-markdown file`);
        const headings = anchors(readFileSync(resolved, "utf8"));
        assert.ok(headings.has(anchor), `${where}: no heading #${anchor} in ${relative(ROOT, resolved)}`);
      }
      checked.push(where);
    }
  }
  assert.ok(checked.length >= 20, `only ${checked.length} relative links found: is the link pattern still right?`);
});

test("no project file cites a document outside the repository", () => {
  const outside = ["DESIGN" + ".md", "../" + "shared/"];
  for (const file of projectFiles()) {
    const text = readFileSync(join(ROOT, file), "utf8");
    for (const name of outside) assert.ok(!text.includes(name), `${file} mentions ${name}`);
  }
});

test("the version of package.json is the image tag of the kustomization and of the READMEs", () => {
  const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")) as {
    version: string;
    packages: Record<string, { version?: string }>;
  };
  assert.equal(lock.version, version, "package-lock.json's version");
  assert.equal(lock.packages[""]?.version, version, "package-lock.json's own package version");
  const kustomization = readFileSync(join(ROOT, "k8s/base/kustomization.yaml"), "utf8");
  assert.equal(/^\s*newTag:\s*"?([^"\s]+)"?\s*$/m.exec(kustomization)?.[1], version, "the kustomization's newTag");
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  assert.ok(readme.includes(`mehdb:${version}`), `README.md names the image mehdb:${version}`);
  for (const file of [...READMES, "Containerfile"]) {
    for (const [tag] of readFileSync(join(ROOT, file), "utf8").matchAll(/mehdb:\d+\.\d+\.\d+/g)) {
      assert.equal(tag, `mehdb:${version}`, `${file} names ${tag}`);
    }
  }
});
