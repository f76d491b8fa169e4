/**
 * The status page at `GET /` (issue 14): rendered on its own (pure
 * function), served by a real leader (whose host name is hostile but valid)
 * and two real followers over HTTP, and shown in a real headless browser
 * (Debian's `chromium`): its visible text and a screenshot, in light and
 * dark colour schemes. Where no browser is installed, the browser test says
 * it skipped and why.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { inflateSync } from "node:zlib";
import { renderPage, type PageState } from "../src/api/page.ts";
import { missingTool } from "./helpers/commands.ts";
import { assertStatus, http, put } from "./helpers/http.ts";
import { freePort, startFollower, startMehdb, stopAll, tempDir, type Mehdb } from "./helpers/mehdb.ts";
import { waitFor } from "./helpers/wait.ts";

/** A host name the configuration accepts (no ordinal: a standalone leader) that is also HTML and script. */
const HOSTILE = `mehdb <b>bold</b> & "quoted" 'single' <script>document.title="pwned"</script>`;
const KEYS = 7;
const VALUE_BYTES = 100;

let leader: Mehdb;
let follower1: Mehdb;
let follower2: Mehdb;

before(async () => {
  leader = await startMehdb({ host: HOSTILE, waitReady: true });
  for (let i = 0; i < KEYS; i++) {
    assertStatus(await put(leader.url, `key-${i}`, "v".repeat(VALUE_BYTES)), 200);
  }
  [follower1, follower2] = await Promise.all([
    startFollower(leader.url, { host: "mehdb-1", waitReady: true }),
    startFollower(leader.url, { host: "mehdb-2", waitReady: true }),
  ]);
  await waitFor(async () => {
    const metrics = (await http(`${leader.url}/metrics`)).text;
    return /follower="mehdb-1"\} 0$/m.test(metrics) && /follower="mehdb-2"\} 0$/m.test(metrics);
  }, "both followers listed at lag 0");
});
after(stopAll);

const STATE: PageState = {
  host: "mehdb-1",
  role: "follower",
  keys: 12_345,
  bytes: 3 * 1024 * 1024,
  notReady: `no complete sync with the leader yet (<img src=x onerror="alert(1)"> & more)`,
  leaderUrl: "http://mehdb-0.mehdb.default.svc.cluster.local:9876",
  secondsSinceSync: null,
  lastError: `leader said <i>no</i> & "why"`,
  followers: null,
  now: new Date("2026-01-02T03:04:05Z"),
};

/** Fails the test unless `html` holds `fragment` as it is. */
function assertShows(html: string, fragment: string): void {
  assert.ok(html.includes(fragment), `the page shows ${JSON.stringify(fragment)}:\n${html}`);
}

/** Fails the test unless `html` is a whole page with nothing fetched from elsewhere. */
function assertSelfContained(html: string): void {
  assert.match(html, /^<!doctype html>\n<html lang="en">/);
  assert.match(html, /<meta http-equiv="refresh" content="3">/);
  assert.match(html, /<meta name="color-scheme" content="light dark">/);
  assert.match(html, /@media \(prefers-color-scheme: dark\)/);
  assert.doesNotMatch(html, /<script|<link|<img|<iframe|\bsrc=|url\(|@import/i);
  for (const [, href = ""] of html.matchAll(/href="([^"]*)"/g)) assert.match(href, /^\/[a-z]/, `relative link ${href}`);
  assert.match(html, /<\/html>\n$/);
}

describe("renderPage", () => {
  test("a whole self-contained document that refreshes itself: no script, no external asset, " +
    "only relative links", () => {
    const follower = renderPage({ ...STATE, notReady: null, lastError: null });
    const leaderPage = renderPage({
      ...STATE,
      notReady: null,
      lastError: null,
      role: "leader",
      leaderUrl: null,
      followers: [{ name: "mehdb-1", lagChanges: 0, lastPollSeconds: 1 }],
    });
    for (const html of [follower, leaderPage]) assertSelfContained(html);
  });

  test("a follower: role, counts, leader, readiness and last error, everything escaped", () => {
    const html = renderPage(STATE);
    assert.match(html, /<span class="role follower">follower<\/span>/);
    assert.match(html, /<div class="label">keys<\/div><div class="value">12,345<\/div>/);
    assert.match(html, /<div class="value">3\.0 MiB<\/div><div class="hint">3,145,728 bytes<\/div>/);
    assert.match(html, /<code>http:\/\/mehdb-0\.mehdb\.default\.svc\.cluster\.local:9876<\/code>/);
    assertShows(html, `not ready</span> <span class="error">no complete sync with the leader yet ` +
      "(&#60;img src=x onerror=&#34;alert(1)&#34;&#62; &#38; more)</span>");
    assert.match(html, /leader said &#60;i&#62;no&#60;\/i&#62; &#38; &#34;why&#34;/);
    assert.ok(!html.includes("<img") && !html.includes("<i>"));
    assert.match(html, /updated 03:04:05 UTC/);
  });

  test("a leader: its followers with lag, last poll and a state in words", () => {
    const html = renderPage({
      ...STATE,
      host: HOSTILE,
      role: "leader",
      notReady: null,
      leaderUrl: null,
      lastError: null,
      followers: [
        { name: "mehdb-1", lagChanges: 0, lastPollSeconds: 0.25 },
        { name: "mehdb-2", lagChanges: 1234, lastPollSeconds: 2 },
        { name: "mehdb-3", lagChanges: 5, lastPollSeconds: 125 },
      ],
    });
    assert.ok(!html.includes("<b>") && !html.includes(`"pwned"`), "the host name is escaped");
    assert.ok(html.includes("mehdb &#60;b&#62;bold&#60;/b&#62; &#38; &#34;quoted&#34; &#39;single&#39;"));
    assertShows(html, `<td class="name">mehdb-1</td><td class="num">0</td><td class="num">0.3 s ago</td>` +
      `<td><span class="pill ok">in sync</span>`);
    assertShows(html, `<td class="name">mehdb-2</td><td class="num">1,234</td><td class="num">2.0 s ago</td>` +
      `<td><span class="pill warn">catching up</span>`);
    assertShows(html, `<td class="name">mehdb-3</td><td class="num">5</td><td class="num">2 min 5 s ago</td>` +
      `<td><span class="pill bad">not polling</span>`);
    assert.match(html, /<div class="label">followers<\/div><div class="value">3<\/div>/);
    assert.match(renderPage({ ...STATE, role: "leader", followers: [] }),
      /No follower has polled in the last 10 minutes/);
  });
});

describe("over HTTP", () => {
  test("the leader: role, counts, both followers, its hostile name escaped; HEAD gives the headers; " +
    "other methods 405", async () => {
    const res = await http(`${leader.url}/`);
    assert.equal(res.status, 200);
    assert.equal(res.headers["content-type"], "text/html; charset=utf-8");
    assert.match(res.text, /<span class="role leader">leader<\/span>/);
    assert.match(res.text, new RegExp(`<div class="label">keys</div><div class="value">${KEYS}</div>`));
    assert.match(res.text, new RegExp(`<div class="hint">${KEYS * VALUE_BYTES} bytes</div>`));
    assert.match(res.text, /<td class="name">mehdb-1<\/td>/);
    assert.match(res.text, /<td class="name">mehdb-2<\/td>/);
    assert.match(res.text, /<span class="pill ok">ready<\/span>/);
    assertShows(res.text, `<h1><span class="host">mehdb &#60;b&#62;bold&#60;/b&#62; &#38; &#34;quoted&#34; ` +
      "&#39;single&#39; &#60;script&#62;");
    assert.ok(!res.text.includes("<b>bold") && !res.text.includes("<script"), "nothing of the host name is markup");

    const head = await http(`${leader.url}/`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.headers["content-type"], "text/html; charset=utf-8");
    assert.ok(Number(head.headers["content-length"]) > 1000);
    assert.equal(head.body.length, 0);

    const post = await http(`${leader.url}/`, { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, "GET, HEAD");
  });

  test("a follower: role, counts, its leader, last sync and readiness", async () => {
    const res = await http(`${follower1.url}/`);
    assert.equal(res.status, 200);
    assert.match(res.text, /<span class="host">mehdb-1<\/span> <span class="role follower">follower<\/span>/);
    assert.match(res.text, new RegExp(`<div class="label">keys</div><div class="value">${KEYS}</div>`));
    assert.match(res.text, new RegExp(`<dt>leader</dt><dd><code>${leader.url}</code></dd>`));
    assert.match(res.text, /<dt>last sync<\/dt><dd>[0-9.]+ s ago<\/dd>/);
    assert.match(res.text, /<dt>readiness<\/dt><dd><span class="pill ok">ready<\/span><\/dd>/);
  });

  test("a follower whose leader is unreachable: not ready, and why", async () => {
    const lonely = await startFollower(`http://127.0.0.1:${await freePort()}`, { host: "mehdb-3" });
    await waitFor(async () => (await http(`${lonely.url}/`)).text.includes("last error"),
      "the follower's first failed tick");
    const res = await http(`${lonely.url}/`);
    assert.equal(res.status, 200, "the page answers whether or not the node is ready");
    assertShows(res.text, `<dt>readiness</dt><dd><span class="pill bad">not ready</span> ` +
      `<span class="error">no complete sync with the leader`);
    assert.match(res.text, /<dt>last sync<\/dt><dd>not yet<\/dd>/);
    assert.match(res.text, /ECONNREFUSED/);
  });
});

/** The headless browser to use: Debian's `chromium` (or `chromium-browser`); `null` when none runs. */
function findBrowser(): string | null {
  return ["chromium", "chromium-browser"].find((name) => missingTool(name) === undefined) ?? null;
}

/**
 * Runs the browser headless once, with a fresh profile, and resolves with its standard output.
 * Every process it starts is in one group, killed when it exits or after `timeoutMs`.
 */
async function runBrowser(browser: string, args: string[], timeoutMs = 120_000): Promise<string> {
  const profile = await tempDir("mehdb-chromium-");
  const child = spawn(browser, [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", `--user-data-dir=${profile}`,
    ...args,
  ], { detached: true, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (chunk: Buffer) => (out += chunk));
  child.stderr.on("data", (chunk: Buffer) => (err += chunk));
  const group = child.pid;
  const killGroup = () => {
    try {
      if (group !== undefined) process.kill(-group, "SIGKILL");
    } catch {
      // already gone
    }
  };
  const timer = setTimeout(killGroup, timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (exit) => resolve(exit));
  });
  clearTimeout(timer);
  killGroup(); // helpers it may have left behind
  if (code !== 0) throw new Error(`${browser} ${args.join(" ")} exited with ${code}:\n${err.slice(-2000)}`);
  return out;
}

/** The text a reader sees in a serialized DOM: no head, no tags, entities decoded, spaces collapsed. */
function visibleText(dom: string): string {
  return dom
    .replace(/<head[\s\S]*?<\/head>/i, " ")
    .replace(/<(style|script)[\s\S]*?<\/\1>/gi, " ")
    .replace(/<[^>]*>/g, " ")
    .replace(/&nbsp;/g, " ")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, `"`)
    .replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n)))
    .replace(/&amp;/g, "&")
    .replace(/\s+/g, " ")
    .trim();
}

/** A decoded 8-bit RGB or RGBA PNG (not interlaced): its size and pixels. */
interface Image {
  width: number;
  height: number;
  pixel(x: number, y: number): [number, number, number];
}

function decodePng(png: Buffer): Image {
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.ok(png.subarray(0, 8).equals(signature), "a PNG signature");
  let width = 0, height = 0, channels = 0;
  const data: Buffer[] = [];
  for (let at = 8; at + 8 <= png.length;) {
    const length = png.readUInt32BE(at);
    const type = png.toString("latin1", at + 4, at + 8);
    const chunk = png.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      width = chunk.readUInt32BE(0);
      height = chunk.readUInt32BE(4);
      assert.equal(chunk.readUInt8(8), 8, "8 bits per channel");
      assert.equal(chunk.readUInt8(12), 0, "not interlaced");
      const colourType = chunk.readUInt8(9);
      channels = colourType === 6 ? 4 : colourType === 2 ? 3 : 0;
      assert.ok(channels > 0, `colour type ${colourType} is RGB or RGBA`);
    }
    if (type === "IDAT") data.push(chunk);
    at += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(data));
  const stride = width * channels;
  assert.equal(raw.length, height * (stride + 1), "every scanline is there");
  const pixels = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw.readUInt8(y * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const x = raw.readUInt8(y * (stride + 1) + 1 + i);
      const a = i >= channels ? pixels.readUInt8(y * stride + i - channels) : 0;
      const b = y > 0 ? pixels.readUInt8((y - 1) * stride + i) : 0;
      const c = y > 0 && i >= channels ? pixels.readUInt8((y - 1) * stride + i - channels) : 0;
      const p = a + b - c;
      const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
      const predicted = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][filter];
      assert.ok(predicted !== undefined, `filter ${filter}`);
      pixels[y * stride + i] = (x + predicted) & 0xff;
    }
  }
  return {
    width,
    height,
    pixel: (x, y) => {
      const at = y * stride + x * channels;
      return [pixels.readUInt8(at), pixels.readUInt8(at + 1), pixels.readUInt8(at + 2)];
    },
  };
}

/** The share of pixels that differ from the top-left one (the page's background). */
function drawnShare(image: Image): number {
  const [r, g, b] = image.pixel(0, 0);
  let differ = 0;
  for (let y = 0; y < image.height; y++) {
    for (let x = 0; x < image.width; x++) {
      const p = image.pixel(x, y);
      if (p[0] !== r || p[1] !== g || p[2] !== b) differ++;
    }
  }
  return differ / (image.width * image.height);
}

describe("in a headless browser", () => {
  test("chromium shows the role, the counts, the followers and the hostile name as text; " +
    "screenshots 1000×700 in light and dark", async (t) => {
    const browser = findBrowser();
    if (browser === null) {
      t.skip("no headless browser: neither chromium nor chromium-browser runs here " +
        "(.ci/run installs Debian's chromium with apt-get)");
      return;
    }
    const dom = await runBrowser(browser, ["--dump-dom", `${leader.url}/`]);
    assert.doesNotMatch(dom, /<script|<b>/i, "no element came from the host name");
    assert.doesNotMatch(dom, /<title>pwned/);
    const text = visibleText(dom);
    const shownTexts = [
      HOSTILE, "leader", `keys ${KEYS}`, `${KEYS * VALUE_BYTES} bytes`, "followers 2", "mehdb-1 0", "mehdb-2 0",
      "in sync", "ready",
    ];
    for (const shown of shownTexts) {
      assert.ok(text.includes(shown), `the visible text shows ${JSON.stringify(shown)}:\n${text}`);
    }

    const followerText = visibleText(await runBrowser(browser, ["--dump-dom", `${follower2.url}/`]));
    for (const shown of ["mehdb-2 follower", `keys ${KEYS}`, `leader ${leader.url}`, "readiness ready"]) {
      assert.ok(followerText.includes(shown), `the follower's page shows ${JSON.stringify(shown)}:\n${followerText}`);
    }

    const dir = await tempDir("mehdb-screenshot-");
    for (const scheme of ["light", "dark"] as const) {
      const file = join(dir, `${scheme}.png`);
      await runBrowser(browser, [
        `--screenshot=${file}`, "--window-size=1000,700", "--hide-scrollbars",
        ...(scheme === "dark" ? ["--force-dark-mode"] : []), `${leader.url}/`,
      ]);
      const png = await readFile(file);
      assert.ok(png.length > 0, "a non-empty file");
      const image = decodePng(png);
      assert.deepEqual([image.width, image.height], [1000, 700]);
      const background = image.pixel(0, 0);
      const luminance = (background[0] + background[1] + background[2]) / 3;
      if (scheme === "light") assert.ok(luminance > 200, `a light background: ${background}`);
      else assert.ok(luminance < 50, `a dark background: ${background}`);
      const share = drawnShare(image);
      const percent = (share * 100).toFixed(1);
      assert.ok(share > 0.05, `the page draws something: ${percent} % of the pixels differ from the background`);
      t.diagnostic(`${scheme} screenshot: ${png.length} bytes, ${percent} % of the pixels drawn, ` +
        `background ${background}`);
    }
  });
});
