/** Log lines: one key=value line per event, values quoted only when they need it. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { createLogger, formatLine } from "../src/log.ts";

test("formatLine: time and event first, then fields; undefined fields left out", () => {
  const now = new Date("2026-11-26T01:02:03.456Z");
  const line = formatLine("write", { key: "test", bytes: 10, skip: undefined }, now);
  assert.equal(line, "time=2026-11-26T01:02:03.456Z event=write key=test bytes=10");
});

test("formatLine quotes values with spaces, quotes, '=' or backslashes, and empty ones", () => {
  const now = new Date(0);
  const line = formatLine("role", { reason: `has "no" ordinal`, eq: "a=b", empty: "", path: "a\\b", plain: "x" }, now);
  const expected = `time=1970-01-01T00:00:00.000Z event=role reason="has \\"no\\" ordinal" eq="a=b" empty="" ` +
    `path="a\\\\b" plain=x`;
  assert.equal(line, expected);
});

test("createLogger writes one line per event", () => {
  const lines: string[] = [];
  const log = createLogger({ write: (line: string) => lines.push(line) });
  log("start", { pid: 1 });
  log("stop");
  assert.equal(lines.length, 2);
  const [start = "", stop = ""] = lines;
  assert.match(start, /^time=\S+ event=start pid=1\n$/);
  assert.match(stop, /^time=\S+ event=stop\n$/);
});
