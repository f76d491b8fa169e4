/**
 * The follower's client of its leader: GET requests with a deadline from start
 * to end over one keep-alive agent, the headers a follower sends, answers read
 * up to a bound, the three kinds of failure the poller's log tells apart
 * (`leader-unreachable`, `leader-error`, `local-error`), and the groups of
 * small values asked for at once (`GET /values`).
 */
import { Agent, request, type ClientRequest, type IncomingMessage } from "node:http";
import { followerHeaders, ProtocolError, type ListedKey } from "../protocol.ts";

/** Where and how a follower reaches its leader (the poller's options of the same names). */
export interface LeaderOptions {
  /** The leader, `http://host:port`. */
  leaderUrl: string;
  /** Time allowed for each request to the leader, from start to the end of its answer, in ms. */
  timeoutMs: number;
  /**
   * This follower's host name, sent as `Mehdb-Follower` on every request to the leader (none when not a valid host
   * name).
   */
  host: string;
  /** The `Authorization` value sent on every request to the leader, asked each time (tokens rotate). */
  authorization: () => string | undefined;
}

/** Connections to the leader at once; more requests wait for one. */
const SOCKETS = 8;
/** Largest listing answer read from the leader (one page, or a whole unpaged listing), in bytes. */
const MAX_LISTING_BYTES = 8 * 1024 * 1024;
/** Limits of one group: keys, listed bytes, characters of the key list. */
const GROUP_KEYS = 256;
const GROUP_BYTES = 2 * 1024 * 1024;
const GROUP_KEY_CHARS = 8000;

/** Error codes of a leader that cannot be reached (name resolution, connection, transport). */
const NETWORK_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EAI_FAIL",
  "EAI_NONAME",
  "ERR_STREAM_PREMATURE_CLOSE",
]);

/** The leader answered, but not as a leader should (status, shape, size). Logged as `leader-error`. */
export class LeaderAnswerError extends Error {
  override name = "LeaderAnswerError";
}

/** An answer longer than the poller reads. */
export class AnswerTooLargeError extends LeaderAnswerError {
  override name = "AnswerTooLargeError";
}

/** No complete answer from the leader in time. Logged as `leader-unreachable`. */
class LeaderTimeoutError extends Error {
  override name = "LeaderTimeoutError";
}

/** Requests to one leader; {@link LeaderClient.close} once the poller has stopped. */
export class LeaderClient {
  #options: LeaderOptions;
  #signal: AbortSignal;
  #agent = new Agent({ keepAlive: true, maxSockets: SOCKETS });
  #requests = 0;

  /** `signal` aborts every request in flight (the poller's stop). */
  constructor(options: LeaderOptions, signal: AbortSignal) {
    this.#options = options;
    this.#signal = signal;
  }

  /** Requests sent so far, retries included. */
  get requests(): number {
    return this.#requests;
  }

  /** A listing (`GET /keys…`), read up to {@link MAX_LISTING_BYTES} and parsed. */
  listing(path: string): Promise<unknown> {
    return this.fetch(path, async (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        if (res.statusCode === 401)
          throw new LeaderAnswerError(leaderRefusal(this.#options.authorization() !== undefined));
        throw new LeaderAnswerError(`leader answered ${res.statusCode} to GET /keys`);
      }
      const text = (await readAll(res, MAX_LISTING_BYTES, "GET /keys")).toString("utf8");
      try {
        return JSON.parse(text);
      } catch {
        throw new LeaderAnswerError("leader's answer to GET /keys is not JSON");
      }
    });
  }

  /**
   * GET from the leader over the keep-alive agent, and `read` its answer, all
   * within `timeoutMs` from the start of the request to the end of the answer's
   * body (however slowly it trickles in; what `read` does after the last byte,
   * such as fsyncing a copy, is not counted). Retried once on a stale pooled connection.
   */
  async fetch<T>(path: string, read: (res: IncomingMessage) => Promise<T>): Promise<T> {
    const { leaderUrl, timeoutMs } = this.#options;
    for (let attempt = 0; ; attempt++) {
      this.#requests++;
      let req: ClientRequest | undefined;
      let res: IncomingMessage | undefined;
      const timer = setTimeout(() => {
        const error = new LeaderTimeoutError(`no complete answer to GET ${path.slice(0, 60)} within ${timeoutMs} ms`);
        res?.destroy(error);
        req?.destroy(error);
      }, timeoutMs);
      try {
        res = await new Promise<IncomingMessage>((resolve, reject) => {
          const authorization = this.#options.authorization();
          const headers = {
            ...followerHeaders(this.#options.host),
            ...(authorization === undefined ? undefined : { Authorization: authorization }),
          };
          const sent = request(`${leaderUrl}${path}`, { agent: this.#agent, signal: this.#signal, headers }, resolve);
          req = sent;
          sent.on("error", (error: NodeJS.ErrnoException) =>
            reject(Object.assign(error, { reused: sent.reusedSocket })),
          );
          sent.end();
        });
        res.once("end", () => clearTimeout(timer));
        return await read(res);
      } catch (error) {
        const { code, reused } = error as NodeJS.ErrnoException & { reused?: boolean };
        if (attempt === 0 && res === undefined && reused && (code === "ECONNRESET" || code === "EPIPE")) continue;
        throw error;
      } finally {
        clearTimeout(timer);
      }
    }
  }

  /** Closes the connections to the leader. */
  close(): void {
    this.#agent.destroy();
  }
}

/**
 * A follower's one-line reason when its leader answers `401` (shown by its readiness line); `sent`: it sent a token.
 */
function leaderRefusal(sent: boolean): string {
  return sent
    ? "the leader refused this follower's token (401): MEHDB_READ_TOKEN_FILE must hold the leader's read token"
    : "the leader wants a token (401): give this follower MEHDB_READ_TOKEN_FILE with the leader's read token";
}

/** A `404` is a key gone meanwhile (`false`); any other status than `200` is the leader's error. */
export function isFound(res: IncomingMessage, key: string): boolean {
  if (res.statusCode === 200) return true;
  res.resume();
  if (res.statusCode === 404) return false;
  throw new LeaderAnswerError(`leader answered ${res.statusCode} to GET /get/${key}`);
}

/** The body of `res`, up to `limit` bytes; past that, the answer is dropped and {@link AnswerTooLargeError} thrown. */
export async function readAll(res: IncomingMessage, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit)
      throw new AnswerTooLargeError(
        `leader's answer to ${what} is larger than ${limit} bytes, this follower's bound; not read further`,
      );
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/** The body of `res`, failing unless it is exactly as long as its `Content-Length`. */
export async function* exactly(res: IncomingMessage): AsyncGenerator<Buffer> {
  const declared = res.headers["content-length"];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    yield chunk;
  }
  if (declared !== undefined && size !== Number(declared)) {
    throw new LeaderAnswerError(`value cut short: ${size} of ${declared} bytes`);
  }
}

/** The event a failed tick is logged as: which side failed. */
export type FailureEvent = "leader-unreachable" | "leader-error" | "local-error";

/** Which side failed: the leader cannot be reached, the leader answered wrongly, or this follower. */
export function failureEvent(error: unknown): FailureEvent {
  if (error instanceof LeaderTimeoutError) return "leader-unreachable";
  if (error instanceof LeaderAnswerError || error instanceof ProtocolError) return "leader-error";
  const code = String((error as NodeJS.ErrnoException)?.code ?? "");
  if (code.startsWith("HPE_")) return "leader-error"; // the leader's HTTP itself is malformed
  if (NETWORK_CODES.has(code)) return "leader-unreachable";
  return "local-error"; // EMFILE, ENOSPC, EIO, …: this follower's own failure
}

/** An error in one line of at most 200 characters, with its code. */
export function describeError(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  const text = e?.code && !String(e.message).includes(e.code) ? `${e.code}: ${e.message}` : String(e?.message ?? error);
  return text.replace(/\s+/g, " ").slice(0, 200);
}

/** Splits small listed keys into groups for `GET /values`, within the group limits. */
export function groups(listed: ListedKey[]): ListedKey[][] {
  const out: ListedKey[][] = [];
  let group: ListedKey[] = [];
  let bytes = 0;
  let chars = 0;
  for (const item of listed) {
    if (
      group.length > 0 &&
      (group.length >= GROUP_KEYS || bytes + item[1] > GROUP_BYTES || chars + item[0].length + 1 > GROUP_KEY_CHARS)
    ) {
      out.push(group);
      group = [];
      bytes = 0;
      chars = 0;
    }
    group.push(item);
    bytes += item[1];
    chars += item[0].length + 1;
  }
  if (group.length > 0) out.push(group);
  return out;
}

