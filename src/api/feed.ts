/**
 * Listing keys and the leader's side of replication: `GET /keys` (the sorted
 * array of names; `?since=CURSOR`, the change feed) and `GET /values?keys=a,b,c`
 * (several values in one answer, for a follower's catch-up).
 */
import { afterThen } from "./after.ts";
import { answer, BAD_REQUEST, errorCode, OK, refuse, type Exchange } from "./http.ts";
import { isValidKey, KEY_RULE } from "../keys.ts";
import { MAX_VALUES_KEYS, valueLine, VALUES_TYPE } from "../protocol.ts";

/**
 * `GET /keys`: the sorted JSON array of names; with `?since=CURSOR`, what changed since (held up to `?wait=MS`
 * while nothing did); `?prefix=P` keeps names starting with P; `?after=CURSOR` as for `/get/KEY`.
 */
export function listKeys(x: Exchange): void | Promise<void> {
  return afterThen(x, null, () => {
    const reply = x.ctx.consistency.keys(new URLSearchParams(x.query), x.res);
    if (!(reply instanceof Promise)) return answer(x, reply);
    return reply.then((held) => answer(x, held));
  });
}

/** `GET /values?keys=a,b,c`: several values in one answer, for a follower's catch-up (format: `protocol.ts`). */
export async function sendValues(x: Exchange): Promise<void> {
  const { req, res, ctx } = x;
  const keys = (new URLSearchParams(x.query).get("keys") ?? "").split(",");
  if (keys.length > MAX_VALUES_KEYS || !keys.every(isValidKey)) {
    return refuse(x, BAD_REQUEST, `keys must be 1-${MAX_VALUES_KEYS} keys separated by commas; ${KEY_RULE}`);
  }
  res.writeHead(OK, { "Content-Type": VALUES_TYPE });
  ctx.metrics.count(x.route, OK);
  if (req.method === "HEAD") return void res.end();
  const write = async (bytes: string | Buffer) => {
    if (!res.write(bytes)) await new Promise((resolve) => res.once("drain", resolve).once("close", resolve));
  };
  try {
    for (const key of keys) {
      if (res.destroyed) return;
      const value = await ctx.store.get(key);
      await write(valueLine(key, value?.entry ?? null));
      if (value === null) continue;
      if (value.body) await write(value.body);
      else for await (const chunk of value.stream) await write(chunk as Buffer);
    }
    res.end();
  } catch (error) {
    ctx.log("error", { op: "values", error: errorCode(error) });
    res.destroy();
  }
}
