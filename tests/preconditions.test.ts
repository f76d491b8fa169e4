/** If-Match / If-None-Match (RFC 9110): the pure parser and judge of src/preconditions.ts. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { evaluatePreconditions, parseTagList, readPreconditions, type Preconditions } from "../src/api/preconditions.ts";

const tags = (value: string) => {
  const parsed = parseTagList(value);
  assert.ok(Array.isArray(parsed), `${JSON.stringify(value)} parses to a list: ${JSON.stringify(parsed)}`);
  return parsed;
};
const malformed = (value: string) => {
  const parsed = parseTagList(value);
  const isError = typeof parsed === "object" && !Array.isArray(parsed) && "error" in parsed;
  assert.ok(isError, `${JSON.stringify(value)} is malformed`);
  assert.match(parsed.error, /^[^\n]+$/, "one line");
  return parsed.error;
};

test("parseTagList: *, one tag, lists, weak tags, spaces and empty elements", () => {
  assert.equal(parseTagList("*"), "*");
  assert.equal(parseTagList("  *\t"), "*");
  assert.deepEqual(tags(`"abc"`), [{ opaque: `"abc"`, weak: false }]);
  assert.deepEqual(tags(`W/"abc"`), [{ opaque: `"abc"`, weak: true }]);
  assert.deepEqual(tags(` "a" ,W/"b",  "c"`), [
    { opaque: `"a"`, weak: false },
    { opaque: `"b"`, weak: true },
    { opaque: `"c"`, weak: false },
  ]);
  assert.deepEqual(tags(`,, "a" ,,`), [{ opaque: `"a"`, weak: false }],
    "empty list elements are ignored (RFC 9110, 5.6.1)");
  assert.deepEqual(tags(`""`), [{ opaque: `""`, weak: false }], "an empty opaque tag is valid");
  assert.deepEqual(tags(`"a!#~\u0080\u00ff"`), [{ opaque: `"a!#~\u0080\u00ff"`, weak: false }],
    "etagc includes ! #-~ and obs-text");
  assert.deepEqual(tags(""), [], "an empty field is an empty list");
});

test("parseTagList: malformed values are refused with one line", () => {
  for (const value of [
    "garbage", `"abc`, `W/"abc`, `"a" "b"`, `"a";"b"`, `*, "a"`, `"a", *`, "**", `w/"a"`, "W/", `W/ "a"`, `"a b"`,
    `"a\u0001"`,
    `"a"x`, "'a'", `"a\\"b"`, `"\u0100"`, `"a",garbage`, `"ключ"`,
  ]) {
    malformed(value);
  }
  assert.match(malformed(`"abc`), /unterminated/);
  assert.match(malformed(`"a" "b"`), /separated by commas/);
});

test("parseTagList: a huge list parses in one linear pass", () => {
  const list = Array.from({ length: 5000 }, (_, i) => `"t${i}"`).join(", ");
  const parsed = tags(list);
  assert.equal(parsed.length, 5000);
  assert.equal(parsed[4999].opaque, `"t4999"`);
  malformed(`${list}, "unterminated`);
});

test("readPreconditions: none, parsed, or the header named in the error", () => {
  assert.equal(readPreconditions({}), null);
  assert.deepEqual(readPreconditions({ "if-none-match": "*" }), { ifMatch: null, ifNoneMatch: "*" });
  const bad = readPreconditions({ "if-match": `"a"`, "if-none-match": "nope" });
  assert.ok(bad !== null && "error" in bad);
  assert.match(bad.error, /^malformed If-None-Match: /);
  const badMatch = readPreconditions({ "if-match": "nope" });
  assert.ok(badMatch !== null && "error" in badMatch);
  assert.match(badMatch.error, /^malformed If-Match: /);
});

const pre = (ifMatch: string | null, ifNoneMatch: string | null): Preconditions => {
  const read = readPreconditions({
    ...(ifMatch === null ? {} : { "if-match": ifMatch }),
    ...(ifNoneMatch === null ? {} : { "if-none-match": ifNoneMatch }),
  });
  assert.ok(read !== null && !("error" in read));
  return read;
};

test("evaluatePreconditions: If-Match holds only for a present key with a strongly equal tag", () => {
  const current = `"e-1"`;
  assert.equal(evaluatePreconditions(pre(`"e-1"`, null), "k", current), null);
  assert.equal(evaluatePreconditions(pre(`"x", "e-1"`, null), "k", current), null);
  assert.equal(evaluatePreconditions(pre("*", null), "k", current), null);
  const weak = evaluatePreconditions(pre(`W/"e-1"`, null), "k", current);
  assert.ok(weak !== null, "strong comparison: a weak tag never matches");
  assert.ok(weak.includes(current), "the reason names the current tag");
  const other = evaluatePreconditions(pre(`"e-2"`, null), "k", current);
  assert.match(other ?? "", /^precondition failed: .*k.*"e-1"$/);
  for (const ifMatch of ["*", `"e-1"`, ""]) {
    const absent = evaluatePreconditions(pre(ifMatch, null), "k", undefined);
    assert.match(absent ?? "", /k is absent/, `If-Match: ${ifMatch} on an absent key`);
  }
  assert.ok(evaluatePreconditions(pre("", null), "k", current) !== null, "an empty If-Match list matches nothing");
});

test("evaluatePreconditions: If-None-Match * is create-only; tags compare weakly", () => {
  assert.equal(evaluatePreconditions(pre(null, "*"), "k", undefined), null);
  assert.match(evaluatePreconditions(pre(null, "*"), "k", `"e-1"`) ?? "", /k exists, with entity tag "e-1"/);
  assert.match(evaluatePreconditions(pre(null, `W/"e-1"`), "k", `"e-1"`) ?? "", /"e-1"/);
  assert.equal(evaluatePreconditions(pre(null, `"e-2"`), "k", `"e-1"`), null);
  assert.equal(evaluatePreconditions(pre(null, `"e-1"`), "k", undefined), null);
  assert.equal(evaluatePreconditions(pre(null, ""), "k", `"e-1"`), null, "an empty If-None-Match list holds");
});

test("evaluatePreconditions: If-Match is judged before If-None-Match", () => {
  assert.match(evaluatePreconditions(pre(`"x"`, "*"), "k", `"e-1"`) ?? "", /If-Match/);
  assert.match(evaluatePreconditions(pre(`"e-1"`, "*"), "k", `"e-1"`) ?? "", /If-None-Match/);
});
