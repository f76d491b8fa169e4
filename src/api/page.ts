/**
 * The status page served at `GET /`: what someone learning StatefulSets opens
 * with `kubectl port-forward pod/mehdb-0 9876` to watch replication happen.
 *
 * {@link renderPage} is pure: a snapshot of the node's state in, an HTML
 * string out. The page is self-contained (inline CSS, no scripts, no external
 * assets), refreshes itself with `<meta http-equiv="refresh">`, follows the
 * reader's light or dark colour scheme, and escapes every value it shows.
 */
import type { Role } from "../config.ts";
import type { FollowerStatus } from "./followers.ts";
import { notReadyReason } from "./health.ts";
import { OK, send, type Exchange } from "./http.ts";

/** What the page shows: a snapshot of one node. */
export interface PageState {
  /** This node's name (`mehdb-0`). */
  host: string;
  role: Role;
  /** Keys stored. */
  keys: number;
  /** Bytes of all values stored. */
  bytes: number;
  /** `null` when ready (`/status?level=full` answers 200), else the reason it is not. */
  notReady: string | null;
  /** A follower's leader (`http://host:port`); `null` on a leader. */
  leaderUrl: string | null;
  /** A follower's seconds since its last complete sync; `null` before the first, and on a leader. */
  secondsSinceSync: number | null;
  /** A follower's last sync error, one line; `null` when the last tick went well. */
  lastError: string | null;
  /** A leader's followers; `null` on a follower. */
  followers: readonly FollowerStatus[] | null;
  /** When the snapshot was taken. */
  now: Date;
  /** Seconds between refreshes. Default 3. */
  refreshSeconds?: number;
}

/** A follower silent this long is shown as not polling, in seconds. */
const SILENT_SECONDS = 10;

/** The status page of one node, a whole HTML document. */
export function renderPage(state: PageState): string {
  const refresh = state.refreshSeconds ?? 3;
  const leader = state.role === "leader";
  const cards = [
    card("keys", count(state.keys)),
    card("data", bytes(state.bytes), `${count(state.bytes)} bytes`),
    leader
      ? card("followers", count(state.followers?.length ?? 0), "seen in the last 10 min")
      : card(
          "last sync",
          state.secondsSinceSync === null ? "never" : ago(state.secondsSinceSync),
          state.lastError === null ? "" : "last try failed",
        ),
  ];
  const body = leader ? followersSection(state.followers ?? []) : leaderSection(state);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta http-equiv="refresh" content="${refresh}">
<title>${esc(state.host)} · ${esc(state.role)} · mehdb</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<header>
<h1><span class="host">${esc(state.host)}</span> <span class="role ${esc(state.role)}">${esc(state.role)}</span></h1>
<p class="sub">mehdb, a key-value store in a StatefulSet · ${readiness(state.notReady)}</p>
</header>
<section class="cards">
${cards.join("\n")}
</section>
${body}
<footer>
<p>Refreshes every ${refresh} s · updated ${esc(state.now.toISOString().slice(11, 19))} UTC · <a href="/keys">/keys</a> · <a href="/metrics">/metrics</a> · <a href="/status?level=full">/status?level=full</a></p>
</footer>
</main>
</body>
</html>
`;
}

function followersSection(followers: readonly FollowerStatus[]): string {
  if (followers.length === 0) {
    return `<section>
<h2>Followers</h2>
<p class="empty">No follower has polled in the last 10 minutes. Each follower names itself with a <code>Mehdb-Follower</code> header when it polls; it shows up here within a second of its first poll.</p>
</section>`;
  }
  const rows = followers.map((f) => {
    const [state, label] =
      f.lastPollSeconds >= SILENT_SECONDS
        ? ["bad", "not polling"]
        : f.lagChanges === 0
          ? ["ok", "in sync"]
          : ["warn", "catching up"];
    return `<tr><td class="name">${esc(f.name)}</td><td class="num">${count(f.lagChanges)}</td><td class="num">${esc(ago(f.lastPollSeconds))}</td><td><span class="pill ${state}">${label}</span></td></tr>`;
  });
  return `<section>
<h2>Followers</h2>
<table>
<thead><tr><th>follower</th><th class="num">lag (changes)</th><th class="num">last poll</th><th>state</th></tr></thead>
<tbody>
${rows.join("\n")}
</tbody>
</table>
<p class="note">Lag counts the writes and deletes made here since the cursor a follower last asked from; a follower that stops polling falls behind.</p>
</section>`;
}

function leaderSection(state: PageState): string {
  const rows = [
    ["leader", `<code>${esc(state.leaderUrl ?? "none")}</code>`],
    ["last sync", state.secondsSinceSync === null ? "not yet" : esc(ago(state.secondsSinceSync))],
    ["readiness", readiness(state.notReady)],
  ];
  if (state.lastError !== null) rows.push(["last error", `<span class="error">${esc(state.lastError)}</span>`]);
  return `<section>
<h2>Leader</h2>
<dl>
${rows.map(([term, value]) => `<dt>${term}</dt><dd>${value}</dd>`).join("\n")}
</dl>
<p class="note">Writes sent here are redirected to the leader; this follower copies its changes on every tick.</p>
</section>`;
}

function card(label: string, value: string, hint = ""): string {
  return `<div class="card"><div class="label">${esc(label)}</div><div class="value">${esc(value)}</div>${hint ? `<div class="hint">${esc(hint)}</div>` : ""}</div>`;
}

function readiness(notReady: string | null): string {
  return notReady === null
    ? `<span class="pill ok">ready</span>`
    : `<span class="pill bad">not ready</span> <span class="error">${esc(notReady)}</span>`;
}

/** Escapes text for HTML content and quoted attribute values. */
export function esc(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A whole number with thousands separators: `12,345`. */
function count(n: number): string {
  return Math.round(n)
    .toString()
    .replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`. */
function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** A duration in the past: `0.4 s ago`, `12 s ago`, `3 min 5 s ago`. */
function ago(seconds: number): string {
  if (seconds < 10) return `${seconds.toFixed(1)} s ago`;
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s ago`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min ago`;
}

const STYLE = `
:root {
  --bg: #f5f6f8; --card: #ffffff; --text: #1c2230; --muted: #5c6577; --border: #dfe3e9;
  --accent: #2458d6; --accent-bg: #e4ecfd; --purple: #7a3fc6; --purple-bg: #f0e7fb;
  --ok: #17733a; --ok-bg: #dcf3e3; --warn: #8a5a00; --warn-bg: #fbefd2; --bad: #c0262f; --bad-bg: #fbe1e2;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0f1217; --card: #181c23; --text: #e5e8ee; --muted: #97a1b0; --border: #2a303a;
    --accent: #7aa7ff; --accent-bg: #1c2a45; --purple: #c39bf5; --purple-bg: #2d2240;
    --ok: #56d37e; --ok-bg: #143020; --warn: #e3b341; --warn-bg: #3a2d10; --bad: #ff7b72; --bad-bg: #3d1a1c;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 860px; margin: 0 auto; padding: 28px 20px 20px; }
h1 { margin: 0; font-size: 28px; font-weight: 650; letter-spacing: -0.01em; display: flex; align-items: center; gap: 12px; flex-wrap: wrap; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); margin: 0 0 10px; font-weight: 600; }
.host { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.sub { margin: 6px 0 0; color: var(--muted); }
.role { font-size: 13px; font-weight: 600; padding: 3px 10px; border-radius: 999px; text-transform: uppercase; letter-spacing: 0.05em; }
.role.leader { color: var(--accent); background: var(--accent-bg); }
.role.follower { color: var(--purple); background: var(--purple-bg); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 14px; margin: 24px 0; }
.card, section:not(.cards) { background: var(--card); border: 1px solid var(--border); border-radius: 12px; }
.card { padding: 14px 16px; }
.label { color: var(--muted); font-size: 13px; }
.value { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; margin-top: 2px; }
.hint { color: var(--muted); font-size: 12px; }
section:not(.cards) { padding: 16px 18px; margin-bottom: 18px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th { text-align: left; font-size: 12px; color: var(--muted); font-weight: 600; padding: 6px 8px; border-bottom: 1px solid var(--border); }
td { padding: 8px; border-bottom: 1px solid var(--border); }
tr:last-child td { border-bottom: 0; }
.num { text-align: right; }
.name { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.pill { display: inline-block; font-size: 12px; font-weight: 600; padding: 2px 9px; border-radius: 999px; }
.pill.ok { color: var(--ok); background: var(--ok-bg); }
.pill.warn { color: var(--warn); background: var(--warn-bg); }
.pill.bad { color: var(--bad); background: var(--bad-bg); }
.error { color: var(--bad); overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 8px 18px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; background: var(--bg); border: 1px solid var(--border); border-radius: 5px; padding: 1px 5px; }
.note, .empty { color: var(--muted); font-size: 13px; margin: 12px 0 0; }
.empty { margin: 0; }
footer { color: var(--muted); font-size: 13px; text-align: center; margin-top: 8px; }
a { color: var(--accent); }
`;

/** `GET|HEAD /`: a small self-contained HTML page of this node and, on a leader, its followers. */
export async function statusPage(x: Exchange): Promise<void> {
  const { host, role, store, leaderUrl, poller, followers } = x.ctx;
  const page = renderPage({
    host,
    role,
    keys: store.count,
    bytes: store.bytes,
    notReady: await notReadyReason(x.ctx),
    leaderUrl,
    now: new Date(),
    secondsSinceSync: poller?.secondsSinceSync() ?? null,
    lastError: poller?.lastError ?? null,
    followers: followers?.list() ?? null,
  });
  send(x, OK, page, "text/html; charset=utf-8");
}
