/** Key rules: what may be stored, and that no encoding of a path escapes the data directory. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { isValidKey, keyFromPath, MAX_KEY_LENGTH } from "../src/keys.ts";

test("valid keys: letters, digits, . _ -, up to 200 characters", () => {
  const good = [
    "a", "abc", "test", "A-Z_0.9", "0", "_hidden", "-dash", "x".repeat(MAX_KEY_LENGTH), "file.tar.gz", "a..b",
  ];
  for (const key of good) {
    assert.equal(isValidKey(key), true, key);
  }
});

test("invalid keys: empty, too long, leading dot, anything outside the alphabet", () => {
  const bad = [
    "", "x".repeat(MAX_KEY_LENGTH + 1), ".", "..", ".hidden", ".tmp-1", "a/b", "/etc", "a\\b", "a b", "a\0b", "\0",
    "é", "ключ", "a\u202eb", "a\nb", "a%2fb", "a:b", "a?b", "a#b", "a*b", "~", "a\tb",
  ];
  for (const key of bad) assert.equal(isValidKey(key), false, JSON.stringify(key));
});

test("keyFromPath decodes percent-encoding, then applies the rule", () => {
  assert.equal(keyFromPath("test"), "test");
  assert.equal(keyFromPath("a%2Db"), "a-b");
  assert.equal(keyFromPath("%61bc"), "abc");
});

test("keyFromPath refuses every traversal trick", () => {
  const tricks = [
    "..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "..%2f..%2fetc%2fpasswd", "%2fetc%2fpasswd", "a%2fb", "a%5cb",
    "%2e%2e%5c",
    "%252e%252e", "%25", "%", "%zz", "%c0%ae%c0%ae", "%c0%af", "%e0%80%ae", "%00", "a%00b", "test%00.txt", "%ff",
    "%e2%80%ae", "%ef%bc%8f", "..%00", "%2e", "a%0ab", "a%20b", "", "a/b", "../x",
  ];
  for (const segment of tricks) assert.equal(keyFromPath(segment), null, segment);
});
