/**
 * The short soak of `npm test`: the code of `npm run soak` (tests/soak/soak.ts)
 * for a few seconds. Mixed GET/PUT/DELETE on a leader and two followers: no
 * errors, followers exact at the end, resident memory flat after warm-up.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { stopAll } from "./helpers/mehdb.ts";
import { runSoak } from "./soak/soak.ts";

after(stopAll);

test("a 5 s soak: no errors, followers exact, memory flat", async () => {
  const result = await runSoak({ seconds: 5, print: (line) => console.log(line) });
  assert.deepEqual(result.firstErrors, []);
  assert.equal(result.errors, 0);
  assert.ok(result.converged, "the followers hold exactly the leader's keys and bytes");
  assert.ok(result.requests > 100, `only ${result.requests} requests`);
  assert.ok(result.keys > 0);
  assert.deepEqual(result.rssFlat, [true, true, true], `RSS growth after warm-up (KiB): ${result.rssGrowthKiB}`);
});
