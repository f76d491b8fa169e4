/**
 * The HTTP API over a {@link Store}, as the contract's table says:
 *
 *     PUT|DELETE /set/KEY   leader: store or remove;  follower: 307 to the leader
 *     GET|HEAD   /get/KEY   the value, or 404
 *     GET        /keys      sorted JSON array of names (`?since=CURSOR`: the change feed)
 *     GET        /values    `?keys=a,b,c`: several values at once (a follower's catch-up)
 *     GET        /status    liveness (`?level=full`: readiness, with the key count)
 *     GET        /metrics   Prometheus text
 *
 * Every error answer is one line of text. The answers `node:http` would send
 * by itself (malformed request, unmet `Expect`, headers too large, timeouts)
 * are given the same one-line bodies here.
 */
import type { ReadStream } from "node:fs";
import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { pipeline, type Duplex } from "node:stream";
import type { Role } from "./config.ts";
import { isValidKey, KEY_RULE, keyFromPath } from "./keys.ts";
import type { Logger } from "./log.ts";
import { Metrics, sample } from "./metrics.ts";
import { ValueTooLargeError, type Entry, type Store } from "./store.ts";

/** What a follower's poller tells the server (see `sync.ts`). */
export interface ReplicaState {
  /** True once the follower has completed one sync with its leader. */
  readonly synced: boolean;
  /** Seconds since the last good sync; `null` before the first. */
  secondsSinceSync(): number | null;
  /** The last sync error, one line; `null` when the last tick went well. */
  readonly lastError: string | null;
  /** The poller's own metrics, Prometheus text. */
  metrics(): string;
}

/** Options of {@link createMehdbServer}. */
export interface ServerOptions {
  store: Store;
  role: Role;
  /** Where a follower redirects writes (`http://host:port`); `null` on a leader. */
  leaderUrl: string | null;
  /** Largest value accepted, in bytes. */
  maxValueBytes: number;
  log: Logger;
  /** The follower's poller; absent on a leader. */
  replica?: ReplicaState;
  /** Request counters. Default: a new {@link Metrics}. */
  metrics?: Metrics;
  /** Time allowed for a request's headers. Default 10 000 ms. */
  headersTimeoutMs?: number;
  /** Time allowed for a whole request, body included. Default 120 000 ms. */
  requestTimeoutMs?: number;
  /** How long an idle keep-alive connection stays open. Default 5 000 ms. */
  keepAliveTimeoutMs?: number;
}

const OK = 200;
const NOT_MODIFIED = 304;
const TEMPORARY_REDIRECT = 307;
const BAD_REQUEST = 400;
const NOT_FOUND = 404;
const METHOD_NOT_ALLOWED = 405;
const REQUEST_TIMEOUT = 408;
const CONTENT_TOO_LARGE = 413;
const EXPECTATION_FAILED = 417;
const HEADERS_TOO_LARGE = 431;
const INTERNAL_SERVER_ERROR = 500;
const SERVICE_UNAVAILABLE = 503;
const INSUFFICIENT_STORAGE = 507;

/** Every method some path takes (the `Allow` of a method no path takes). */
const ALL_METHODS = "GET, HEAD, PUT, DELETE";

/** Most keys asked for in one `GET /values`. */
const MAX_VALUES_KEYS = 1000;

/** Bytes of an unwanted request body read and dropped before the connection is closed instead. */
const DRAIN_LIMIT = 1024 * 1024;

/** Creates (but does not start) the HTTP server of a leader or a follower. */
export function createMehdbServer(options: ServerOptions): Server {
  const { store, role, leaderUrl, maxValueBytes, log, replica } = options;
  const metrics = options.metrics ?? new Metrics();

  function handle(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): void | Promise<void> {
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    const query = q < 0 ? "" : url.slice(q + 1);
    const method = req.method ?? "GET";
    if (req.headers.host === undefined && req.httpVersion === "1.1") {
      return refuse(req, res, "other", BAD_REQUEST, "malformed request: an HTTP/1.1 request needs a Host header");
    }

    if (path.startsWith("/get/")) {
      if (method !== "GET" && method !== "HEAD") return refuseMethod(req, res, "get", "GET, HEAD");
      const key = keyFromPath(path.slice(5));
      if (key === null) return refuse(req, res, "get", BAD_REQUEST, `invalid key: ${KEY_RULE}`);
      return getValue(req, res, key);
    }
    if (path.startsWith("/set/")) {
      if (method !== "PUT" && method !== "DELETE") return refuseMethod(req, res, "set", "PUT, DELETE");
      const key = keyFromPath(path.slice(5));
      if (key === null) return refuse(req, res, "set", BAD_REQUEST, `invalid key: ${KEY_RULE}`);
      if (role === "follower") {
        const location = `${leaderUrl}/set/${key}`;
        return refuse(req, res, "set", TEMPORARY_REDIRECT, `this is a follower; write to the leader at ${location}`, {
          Location: location,
        });
      }
      if (method === "DELETE") return deleteValue(req, res, key);
      return putValue(req, res, key, expectsContinue);
    }
    const route = path === "/keys" ? "keys" : path === "/values" ? "values" : path === "/status" ? "status" : path === "/metrics" ? "metrics" : null;
    if (route === null) return refuse(req, res, "other", NOT_FOUND, `not found: ${path.slice(0, 100)} (try /get/KEY, /set/KEY, /keys, /status, /metrics)`);
    if (method !== "GET" && method !== "HEAD") return refuseMethod(req, res, route, "GET, HEAD");
    const params = new URLSearchParams(query);
    if (route === "keys") {
      const since = params.get("since");
      const body = since === null ? JSON.stringify(store.list()) : JSON.stringify(store.changes(since));
      return send(res, "keys", OK, body, "application/json");
    }
    if (route === "values") return sendValues(req, res, params.get("keys") ?? "");
    if (route === "metrics") return send(res, "metrics", OK, renderMetrics(), "text/plain; version=0.0.4; charset=utf-8");
    if (params.get("level") !== "full") return send(res, "status", OK, `${role}\n`);
    return sendReadiness(res);
  }

  async function sendReadiness(res: ServerResponse): Promise<void> {
    const reason = await notReadyReason();
    if (reason !== null) return send(res, "status", SERVICE_UNAVAILABLE, `not ready: ${reason}\n`);
    return send(res, "status", OK, `${store.count} keys${replicaDetail()}\n`);
  }

  function getValue(req: IncomingMessage, res: ServerResponse, key: string): void | Promise<void> {
    const hit = store.cached(key);
    // A cached value keeps its answer's headers, so a GET of it formats nothing.
    if (hit) return sendValue(req, res, key, hit.entry, hit.body, (hit.headers ??= valueHeaders(hit.entry)));
    return store.get(key).then((value) => {
      if (value === null) return send(res, "get", NOT_FOUND, `key not found: ${key}\n`);
      return sendValue(req, res, key, value.entry, value.body ?? value.stream, valueHeaders(value.entry));
    });
  }

  /** Answers a value: its bytes, or its file streamed; `304` when the client has it already. */
  function sendValue(req: IncomingMessage, res: ServerResponse, key: string, entry: Entry, body: Buffer | ReadStream, headers: string[]): void {
    const streamed = !Buffer.isBuffer(body);
    if (notModified(req, entry)) {
      if (streamed) body.destroy();
      return sendNotModified(res, entry);
    }
    res.writeHead(OK, headers);
    metrics.count("get", OK);
    if (!streamed) return void res.end(body); // node:http sends no body for HEAD
    if (req.method === "HEAD") {
      body.destroy();
      return void res.end();
    }
    // pipeline closes the file when the client goes away early.
    pipeline(body, res, (error) => {
      const code = (error as NodeJS.ErrnoException | undefined)?.code;
      if (error && code !== "ERR_STREAM_PREMATURE_CLOSE") log("error", { op: "get", key, error: code ?? error.message });
    });
  }

  /** The headers of a value's answer (`writeHead`'s flat array form). */
  function valueHeaders(entry: Entry): string[] {
    return ["Content-Type", "application/octet-stream", "Content-Length", String(entry.size), "ETag", store.etag(entry)];
  }

  function notModified(req: IncomingMessage, entry: Entry): boolean {
    const match = req.headers["if-none-match"];
    if (match === undefined) return false;
    const etag = store.etag(entry);
    return match.trim() === "*" || match.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
  }

  function sendNotModified(res: ServerResponse, entry: Entry): void {
    res.writeHead(NOT_MODIFIED, { ETag: store.etag(entry) });
    res.end();
    metrics.count("get", NOT_MODIFIED);
  }

  /**
   * `GET /values?keys=a,b,c`: several values in one answer, for a follower's
   * catch-up. For each key in order, a line `KEY SIZE MTIME_MS` and then SIZE
   * bytes, or a line `KEY -` when it is absent.
   */
  async function sendValues(req: IncomingMessage, res: ServerResponse, list: string): Promise<void> {
    const keys = list.split(",");
    if (keys.length > MAX_VALUES_KEYS || !keys.every(isValidKey)) {
      return refuse(req, res, "values", BAD_REQUEST, `keys must be 1-${MAX_VALUES_KEYS} keys separated by commas; ${KEY_RULE}`);
    }
    res.writeHead(OK, { "Content-Type": "application/vnd.mehdb.values" });
    metrics.count("values", OK);
    if (req.method === "HEAD") return void res.end();
    const write = async (bytes: string | Buffer) => {
      if (!res.write(bytes)) await new Promise((resolve) => res.once("drain", resolve).once("close", resolve));
    };
    try {
      for (const key of keys) {
        if (res.destroyed) return;
        const value = await store.get(key);
        if (value === null) {
          await write(`${key} -\n`);
          continue;
        }
        await write(`${key} ${value.entry.size} ${value.entry.mtimeMs}\n`);
        if (value.body) await write(value.body);
        else for await (const chunk of value.stream) await write(chunk as Buffer);
      }
      res.end();
    } catch (error) {
      log("error", { op: "values", error: (error as NodeJS.ErrnoException).code ?? String(error) });
      res.destroy();
    }
  }

  async function putValue(req: IncomingMessage, res: ServerResponse, key: string, expectsContinue: boolean): Promise<void> {
    const declared = req.headers["content-length"];
    if (declared !== undefined && Number(declared) > maxValueBytes) {
      return refuse(req, res, "set", CONTENT_TOO_LARGE, `value too large: ${declared} bytes, the limit is ${maxValueBytes}`);
    }
    if (expectsContinue) res.writeContinue();
    try {
      const entry = await store.put(key, req.iterator({ destroyOnReturn: false }), { maxBytes: maxValueBytes });
      send(res, "set", OK, "WRITE completed\n");
      log("write", { key, bytes: entry.size });
    } catch (error) {
      if (req.destroyed && !req.complete) {
        log("write-aborted", { key, reason: "the client went away before the value was complete" });
        return;
      }
      if (error instanceof ValueTooLargeError) {
        return refuse(req, res, "set", CONTENT_TOO_LARGE, `value too large: the limit is ${maxValueBytes} bytes`);
      }
      const code = (error as NodeJS.ErrnoException).code;
      log("error", { op: "write", key, error: code ?? String(error) });
      if (code === "ENOSPC" || code === "EDQUOT") {
        return refuse(req, res, "set", INSUFFICIENT_STORAGE, `insufficient storage: the disk is full; ${key} keeps its old value`);
      }
      return refuse(req, res, "set", INTERNAL_SERVER_ERROR, `write failed: ${code ?? "unexpected error"}; ${key} keeps its old value`);
    }
  }

  async function deleteValue(req: IncomingMessage, res: ServerResponse, key: string): Promise<void> {
    try {
      if (!(await store.delete(key))) return refuse(req, res, "set", NOT_FOUND, `key not found: ${key}`);
      send(res, "set", OK, "DELETE completed\n");
      log("delete", { key });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? String(error);
      log("error", { op: "delete", key, error: code });
      refuse(req, res, "set", INTERNAL_SERVER_ERROR, `delete failed: ${code}`);
    }
  }

  async function notReadyReason(): Promise<string | null> {
    const unwritable = await store.probeWritable();
    if (unwritable !== null) return unwritable;
    if (replica && !replica.synced) {
      return `no complete sync with the leader at ${leaderUrl} yet${replica.lastError ? ` (${replica.lastError})` : ""}`;
    }
    return null;
  }

  function replicaDetail(): string {
    if (!replica) return "";
    const age = replica.secondsSinceSync();
    const since = age === null ? "" : `, last sync ${age.toFixed(1)} s ago`;
    return `${since}${replica.lastError ? ` (${replica.lastError})` : ""}`;
  }

  function renderMetrics(): string {
    return metrics.render() +
      sample("mehdb_keys", "gauge", "Keys stored.", store.count) +
      sample("mehdb_bytes", "gauge", "Bytes of all values stored.", store.bytes) +
      sample("mehdb_leader", "gauge", "1 on the leader, 0 on a follower.", role === "leader" ? 1 : 0) +
      sample("process_resident_memory_bytes", "gauge", "Resident memory of the process, in bytes.", process.memoryUsage.rss()) +
      (replica ? replica.metrics() : "");
  }

  /** Answers with a one-line error (or redirect) without storing the body; drops what the client still sends. */
  function refuse(
    req: IncomingMessage,
    res: ServerResponse,
    route: string,
    status: number,
    message: string,
    headers: Record<string, string> = {},
  ): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (!req.complete && bodyExpected(req)) {
      if (req.headers.expect !== undefined || Number(req.headers["content-length"] ?? 0) > DRAIN_LIMIT) {
        headers.Connection = "close"; // the body was not asked for, or is too large to read and drop
      }
      drain(req);
    }
    send(res, route, status, `${message}\n`, "text/plain; charset=utf-8", headers);
  }

  function refuseMethod(req: IncomingMessage, res: ServerResponse, route: string, allow: string): void {
    refuse(req, res, route, METHOD_NOT_ALLOWED, `method ${req.method} not allowed here; use ${allow}`, { Allow: allow });
  }

  function send(
    res: ServerResponse,
    route: string,
    status: number,
    body: string,
    type = "text/plain; charset=utf-8",
    headers: Record<string, string> = {},
  ): void {
    res.writeHead(status, { ...headers, "Content-Type": type, "Content-Length": Buffer.byteLength(body) });
    res.end(body);
    metrics.count(route, status);
  }

  function onRequest(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): void {
    // Once the server is closing, a keep-alive connection gets its answer and then closes: a busy
    // client would otherwise keep sending on it and hold the shutdown until it is forced.
    if (!server.listening) res.shouldKeepAlive = false;
    // No closure is made per request: most GETs answer synchronously, from the cache, and under tsx
    // every closure also costs a defineProperty (its name).
    let pending: void | Promise<void>;
    try {
      pending = handle(req, res, expectsContinue);
    } catch (error) {
      return failed(req, res, error);
    }
    if (pending) pending.catch((error: unknown) => failed(req, res, error));
  }

  /** A handler threw: logs it and answers 500 (or drops the connection when the answer has begun). */
  function failed(req: IncomingMessage, res: ServerResponse, error: unknown): void {
    log("error", { op: "request", method: req.method, path: req.url?.slice(0, 200), error: String(error) });
    if (!res.headersSent) send(res, "other", INTERNAL_SERVER_ERROR, "internal error\n");
    else res.destroy();
  }

  const keepAliveTimeoutMs = options.keepAliveTimeoutMs ?? 5_000;
  const server = createServer({
    headersTimeout: options.headersTimeoutMs ?? 10_000,
    requestTimeout: options.requestTimeoutMs ?? 120_000,
    keepAliveTimeout: keepAliveTimeoutMs,
    connectionsCheckingInterval: 1_000,
    requireHostHeader: false, // checked in handle(), to answer with a one-line body
  });
  // A client may half-close its side once its request is sent (`nc -N`, some proxies); HTTP/1.1 says that
  // does not end its interest in the answer. By default node:http then aborts the request and ends the
  // socket, so a PUT still fsyncing lost its answer (and may or may not have been stored). With this
  // (undocumented but long-standing) switch Node answers the requests it has, then closes.
  (server as Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  server.on("request", (req: IncomingMessage, res: ServerResponse) => onRequest(req, res, false));
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => onRequest(req, res, true));
  server.on("checkExpectation", (req: IncomingMessage, res: ServerResponse) => {
    res.setHeader("Connection", "close");
    send(res, "other", EXPECTATION_FAILED, `unsupported Expect header: ${String(req.headers.expect).slice(0, 100)}\n`);
  });
  server.on("clientError", (error: NodeJS.ErrnoException & { reason?: string }, socket: Socket) => {
    const inResponse = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage?.headersSent;
    if (error.code === "ECONNRESET" || !socket.writable || inResponse) {
      socket.destroy();
      return;
    }
    const [status, text] = error.code === "HPE_HEADER_OVERFLOW"
      ? [HEADERS_TOO_LARGE, "request headers too large"]
      : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
      ? [REQUEST_TIMEOUT, "request timed out"]
      : [BAD_REQUEST, `malformed request: ${oneLine(error.reason ?? error.code ?? "unreadable")}`];
    rawAnswer(socket, status, text);
  });
  // CONNECT goes to its own event; without a listener node:http drops the connection without a word.
  server.on("connect", (req: IncomingMessage, socket: Duplex) => {
    socket.on("error", () => {});
    rawAnswer(socket, METHOD_NOT_ALLOWED, `method ${req.method} not allowed: mehdb is not a proxy; use ${ALL_METHODS}`, `Allow: ${ALL_METHODS}\r\n`);
  });

  /**
   * Answers on a socket node:http has given up on, in one line, and closes it. No timeout of node:http
   * covers such a socket any more: one whose client never closes its side is destroyed after a while.
   */
  function rawAnswer(socket: Duplex, status: number, text: string, headers = ""): void {
    metrics.count("other", status);
    const body = `${text}\n`;
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n${headers}` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
    const linger = setTimeout(() => socket.destroy(), keepAliveTimeoutMs);
    linger.unref();
    socket.once("close", () => clearTimeout(linger));
  }
  return server;
}


function bodyExpected(req: IncomingMessage): boolean {
  const length = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

/** Reads and drops the rest of a request body, up to {@link DRAIN_LIMIT}; past that, closes the connection. */
function drain(req: IncomingMessage): void {
  let seen = 0;
  req.on("data", (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > DRAIN_LIMIT) req.socket.destroy();
  });
  req.on("error", () => {});
  req.resume();
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, " ").trim().slice(0, 200).toLowerCase();
}
