/**
 * The tests' HTTP client: one request, its answer read whole ({@link http}),
 * on a connection of its own or on a shared keep-alive pool; the requests
 * tests make most (`PUT`/`DELETE /set/KEY`, the listing, the change feed,
 * `GET /metrics`); and the checks every answer shares (a status with the body
 * in the message, one-line bodies).
 */
import assert from "node:assert/strict";
import { Agent, request, type IncomingHttpHeaders, type IncomingMessage } from "node:http";

/** An HTTP answer, read whole. */
export interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The body as UTF-8. */
  text: string;
}

/** Options of {@link http}. */
export interface HttpOptions {
  /** Default `GET`. */
  method?: string;
  /** Default none. */
  body?: string | Buffer;
  /** Default none. */
  headers?: Record<string, string>;
  /** Gives up once the connection has been quiet this long. Default 10 000 ms. */
  timeoutMs?: number;
  /** Sends on the shared keep-alive pool (for load) instead of a connection of its own. Default false. */
  keepAlive?: boolean;
}

let keepAlivePool: Agent | null = null;

/** Requests {@link http} sent again because a pooled connection was closed under them (see there). */
export const staleRetries = { count: 0 };

/**
 * Sends one request and reads its whole answer; throws on network errors (the message names the request).
 * Redirects are not followed.
 *
 * On the keep-alive pool, a request sent at the moment the server closes that connection as idle (its
 * keep-alive timeout) fails with `ECONNRESET` before the server saw it; Node documents this race under
 * `request.reusedSocket`, and the cure is the client's: send it again, once, on a new connection. That is done
 * here (and counted in {@link staleRetries}); a failure on a fresh connection is thrown.
 */
export async function http(url: string, options: HttpOptions = {}): Promise<Answer> {
  try {
    return await httpOnce(url, options);
  } catch (error) {
    const { code, reused } = error as NodeJS.ErrnoException & { reused?: boolean };
    if (!reused || (code !== "ECONNRESET" && code !== "EPIPE")) throw error;
    staleRetries.count++;
    return await httpOnce(url, options);
  }
}

function httpOnce(url: string, options: HttpOptions): Promise<Answer> {
  const method = options.method ?? "GET";
  const agent = options.keepAlive ? (keepAlivePool ??= new Agent({ keepAlive: true, maxSockets: 16 })) : false;
  return new Promise((resolve, reject) => {
    const timeout = options.timeoutMs ?? 10_000;
    const req = request(url, { method, agent, headers: options.headers, timeout }, (res) => {
      readAnswer(res).then(resolve, reject);
    });
    req.on("timeout", () => req.destroy(new Error("no answer in time")));
    req.on("error", (error) => {
      const reused = req.reusedSocket;
      const where = `${method} ${url}: ${error.message}${reused ? " (on a reused connection)" : ""}`;
      reject(Object.assign(error, { reused, message: where }));
    });
    req.end(options.body);
  });
}

/** Reads the whole of a `node:http` response (for the tests that drive `request` themselves). */
export function readAnswer(res: IncomingMessage): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on("data", (chunk: Buffer) => chunks.push(chunk));
    res.on("end", () => {
      const body = Buffer.concat(chunks);
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString("utf8") });
    });
    res.on("error", reject);
  });
}

/** Closes the connections of the keep-alive pool ({@link stopAll} in `mehdb.ts` calls it). */
export function closeKeepAlive(): void {
  keepAlivePool?.destroy();
  keepAlivePool = null;
}

/** `PUT BASE/set/KEY` with `body`: the answer, whatever its status. */
export function put(
  base: string,
  key: string,
  body: string | Buffer,
  options: Omit<HttpOptions, "method" | "body"> = {},
): Promise<Answer> {
  return http(`${base}/set/${key}`, { ...options, method: "PUT", body });
}

/** `DELETE BASE/set/KEY`: the answer, whatever its status. */
export function del(base: string, key: string, options: Omit<HttpOptions, "method" | "body"> = {}): Promise<Answer> {
  return http(`${base}/set/${key}`, { ...options, method: "DELETE" });
}

/** `GET BASE/keys`, which must answer 200: the names it lists. */
export async function listKeys(base: string, options: Omit<HttpOptions, "method" | "body"> = {}): Promise<string[]> {
  const answer = assertStatus(await http(`${base}/keys`, options), 200, `GET ${base}/keys`);
  return JSON.parse(answer.text) as string[];
}

/** The JSON answer of the change feed, `GET /keys?since=…`, as the contract states it. */
export interface Feed {
  cursor: string;
  full: boolean;
  /** Name, size in bytes, modification time in ms. */
  keys: [string, number, number][];
  deleted: string[];
  /** On a page of a full listing (`&limit=N`): the name to ask `&from=` next, or `null` after the last page. */
  next?: string | null;
}

/** `GET BASE/keys?QUERY`, which must answer 200, read as a {@link Feed}. */
export async function readFeed(base: string, query: string, timeoutMs = 10_000): Promise<Feed> {
  const answer = assertStatus(await http(`${base}/keys?${query}`, { timeoutMs }), 200, `GET /keys?${query}`);
  return JSON.parse(answer.text) as Feed;
}

/** Fails the test unless `answer` has `status`; the message names `what` and quotes the body. Returns `answer`. */
export function assertStatus(answer: Answer, status: number, what = "the answer"): Answer {
  assert.equal(answer.status, status, `${what}: ${answer.status} ${answer.text.slice(0, 500)}`);
  return answer;
}

/** Whether `text` is exactly one non-empty line ending in `\n` (how every error is answered). */
export function isOneLine(text: string): boolean {
  return /^[^\n]+\n$/.test(text);
}

/** Fails the test unless `body` is exactly one non-empty line ending in `\n` (see {@link isOneLine}). */
export function assertOneLine(body: { text: string } | Buffer | string, what = "the body"): void {
  const text = typeof body === "string" ? body : Buffer.isBuffer(body) ? body.toString("utf8") : body.text;
  assert.ok(isOneLine(text), `${what} is not one line: ${JSON.stringify(text)}`);
}

/** The one value of header `name` in `answer`; fails the test when it is absent or repeated. */
export function header(answer: { headers: IncomingHttpHeaders }, name: string): string {
  const value = answer.headers[name.toLowerCase()];
  assert.ok(typeof value === "string", `one ${name} header: ${JSON.stringify(value)}`);
  return value;
}

/** The unlabelled samples of one `GET /metrics`. */
export interface Samples {
  /** The sample `name`; throws when the answer has none. */
  get(name: string): number;
}

/** Reads `GET BASE/metrics` once: its unlabelled samples. */
export async function metrics(base: string): Promise<Samples> {
  const answer = await http(`${base}/metrics`);
  if (answer.status !== 200) throw new Error(`GET ${base}/metrics answered ${answer.status}`);
  const samples = new Map<string, number>();
  for (const [, name, value] of answer.text.matchAll(/^([a-zA-Z_:][a-zA-Z0-9_:]*) (\S+)$/gm)) {
    if (name !== undefined) samples.set(name, Number(value));
  }
  return {
    get(name) {
      const value = samples.get(name);
      if (value === undefined) throw new Error(`GET ${base}/metrics has no sample ${name}`);
      return value;
    },
  };
}

/** One unlabelled sample of `GET BASE/metrics`; throws when the answer has none. */
export async function metric(base: string, name: string): Promise<number> {
  return (await metrics(base)).get(name);
}
