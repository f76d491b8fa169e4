/**
 * Only regular files are keys: a link in the data directory is never listed, served or copied, whether it was
 * there at start or put there while running; nor is a directory or a FIFO found in a key's place.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { missingTool, must } from "./helpers/commands.ts";
import { http, listKeys, put } from "./helpers/http.ts";
import { startFollower, startMehdb, stopAll, tempDir } from "./helpers/mehdb.ts";

after(stopAll);

/** A secret outside the data directory, as long as the key's own value (so a size check cannot hide it). */
const SECRET = "secret-outside-the-data-dir\n";
const VALUE = "the-value-of-the-key-real-1\n";
assert.equal(SECRET.length, VALUE.length);

test("a link in the data directory at start is not a key: " +
  "not listed, not served, not copied by a follower", async () => {
  const outside = await tempDir();
  await writeFile(join(outside, "secret"), SECRET);
  const dataDir = await tempDir();
  const first = await startMehdb({ dataDir });
  assert.equal((await put(first.url, "real", VALUE)).status, 200);
  assert.equal(await first.stop(), 0);

  await symlink(join(outside, "secret"), join(dataDir, "pw")); // to a file outside
  await symlink("real", join(dataDir, "alias")); // to a key inside
  await symlink(join(outside, "nothing"), join(dataDir, "dangling"));
  const followerDir = await tempDir();
  await symlink(join(outside, "secret"), join(followerDir, "mine"));

  const leader = await startMehdb({ dataDir, waitReady: true });
  assert.deepEqual(await listKeys(leader.url), ["real"]);
  for (const key of ["pw", "alias", "dangling", "mine"]) {
    const res = await http(`${leader.url}/get/${key}`);
    assert.equal(res.status, 404, `${key}: ${res.text}`);
    assert.ok(!res.text.includes("secret"), key);
  }
  const values = await http(`${leader.url}/values?keys=pw,alias,real`);
  const mtime = /^real \d+ (\d+(?:\.\d{1,3})?)$/m.exec(values.text)?.[1];
  assert.equal(values.text, `pw -\nalias -\nreal ${VALUE.length} ${mtime}\n${VALUE}`);
  assert.equal((await http(`${leader.url}/get/real`)).text, VALUE);

  const follower = await startFollower(leader.url, { dataDir: followerDir, waitReady: true });
  assert.deepEqual(await listKeys(follower.url), ["real"]);
  for (const key of ["pw", "mine"]) assert.equal((await http(`${follower.url}/get/${key}`)).status, 404, key);
  assert.equal((await http(`${follower.url}/get/real`)).text, VALUE);
});

test("a link or a directory put in a key's place while running is not served (404), never its target", async () => {
  const outside = await tempDir();
  await writeFile(join(outside, "secret"), SECRET);
  const dataDir = await tempDir();
  const leader = await startMehdb({ dataDir, env: { MEHDB_CACHE_BYTES: "0" } }); // no cache: every GET opens the file
  for (const key of ["real", "gone-dir"]) {
    assert.equal((await put(leader.url, key, VALUE)).status, 200);
  }

  await symlink(join(outside, "secret"), join(dataDir, "late")); // a new name
  await rm(join(dataDir, "real"));
  await symlink(join(outside, "secret"), join(dataDir, "real")); // in place of a key's file, same size
  await rm(join(dataDir, "gone-dir"));
  await mkdir(join(dataDir, "gone-dir"));
  for (const key of ["late", "real", "gone-dir"]) {
    const res = await http(`${leader.url}/get/${key}`);
    assert.equal(res.status, 404, `${key}: ${res.status} ${res.text}`);
    assert.ok(!res.text.includes("secret"), key);
  }
  const values = await http(`${leader.url}/values?keys=late,real,gone-dir`);
  assert.equal(values.status, 200);
  assert.equal(values.text, "late -\nreal -\ngone-dir -\n");

  // A write replaces the link itself, not its target.
  assert.equal((await put(leader.url, "real", "new")).status, 200);
  assert.equal((await http(`${leader.url}/get/real`)).text, "new");
  assert.equal((await http(`${leader.url}/get/late`)).status, 404);
  assert.equal(await readFile(join(outside, "secret"), "utf8"), SECRET);
});

const noMkfifo = missingTool("mkfifo");

test("a FIFO put in a key's place is not served and does not hang the read", { skip: noMkfifo }, async () => {
  const dataDir = await tempDir();
  const leader = await startMehdb({ dataDir, env: { MEHDB_CACHE_BYTES: "0" } });
  assert.equal((await put(leader.url, "fifo", VALUE)).status, 200);
  await rm(join(dataDir, "fifo"));
  await must("mkfifo", [join(dataDir, "fifo")]);
  // A plain open() of a FIFO with no writer blocks for good (and a thread of the pool with it).
  const res = await http(`${leader.url}/get/fifo`, { timeoutMs: 5_000 });
  assert.equal(res.status, 404, res.text);
  assert.equal((await http(`${leader.url}/values?keys=fifo`, { timeoutMs: 5_000 })).text, "fifo -\n");
});
