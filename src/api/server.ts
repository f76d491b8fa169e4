/**
 * The HTTP API over a {@link Store}: the route table, and the node:http
 * server that dispatches to it.
 *
 *     PUT|DELETE /set/KEY   leader: store or remove;  follower: 307 to the leader
 *     GET|HEAD   /get/KEY   the value, or 404
 *     GET        /keys      sorted JSON array of names (`?since=CURSOR[&limit=N[&from=NAME]]`: the change feed;
 *                           `?prefix=`, `?wait=`)
 *     GET        /values    `?keys=a,b,c`: several values at once (a follower's catch-up)
 *     GET        /status    liveness (`?level=full`: readiness, with the key count)
 *     GET        /metrics   Prometheus text
 *     GET|HEAD   /snapshot  a tar of every key, consistent at its `Mehdb-Cursor`
 *     PUT        /snapshot  leader: replaces every key with a tar's;  follower: 307 to the leader
 *     GET|HEAD   /          the status page (HTML)
 *
 * Conditional writes (`If-Match`, `If-None-Match`) are judged in `key.ts`, `?after=CURSOR` in
 * `after.ts`, `?prefix=` and held `?wait=` answers in `feed.ts` and `watch.ts`.
 *
 * A request goes: `onRequest` → `dispatch` parses its query, finds its route,
 * checks its token and method (and, on a follower, redirects writes) → the route's handler, in a
 * file beside this one (`key.ts`, `feed.ts`, `health.ts`, `page.ts`). Every
 * error answer is one line of text; the answers `node:http`
 * would send by itself (malformed request, unmet `Expect`, headers too large,
 * timeouts) are given the same one-line bodies here.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import {
  BAD_REQUEST,
  EXPECTATION_FAILED,
  HEADERS_TOO_LARGE,
  INTERNAL_SERVER_ERROR,
  METHOD_NOT_ALLOWED,
  NOT_FOUND,
  oneLine,
  rawAnswer,
  refuse,
  refuseMethod,
  REQUEST_TIMEOUT,
  send,
  SERVICE_UNAVAILABLE,
  TEMPORARY_REDIRECT,
  UNAUTHORIZED,
  type Context,
  type Exchange,
} from "./http.ts";
import type { Followers } from "./followers.ts";
import { listKeys, sendValues } from "./feed.ts";
import { metrics, status } from "./health.ts";
import { statusPage } from "./page.ts";
import { deleteValue, getValue, putValue, requestedKey } from "./key.ts";
import { getSnapshot, putSnapshot } from "./snapshot.ts";
import { CHALLENGE, type Access } from "./tokens.ts";

/** Time allowed for a request's headers. */
const HEADERS_TIMEOUT_MS = 10_000;
/** Time allowed for a whole request, body included. */
const REQUEST_TIMEOUT_MS = 120_000;
/** How long an idle keep-alive connection stays open (and a socket node:http gave up on lingers). */
const KEEP_ALIVE_TIMEOUT_MS = 5_000;

/** A route's handler: answers the request, synchronously when it can. */
type Handler = (x: Exchange) => void | Promise<void>;

/** One row of the route table. */
interface Route {
  /** The label of its answers in `mehdb_http_requests_total`. */
  label: string;
  /**
   * Which token a method needs when tokens are set: `write` (a follower redirects these to its leader), `read`,
   * `open`. One for every method, or one per method (methods not named need `read`).
   */
  access: Access | Readonly<Record<string, Access>>;
  /** Handlers by method; the keys make the `Allow` header of a `405`. */
  methods: Readonly<Record<string, Handler>>;
  /** The methods as an `Allow` header (derived from `methods`). */
  allow: string;
}

function route(label: string, access: Route["access"], methods: Record<string, Handler>): Route {
  return { label, access, methods, allow: Object.keys(methods).join(", ") };
}

/** What `method` needs on `route`. */
function accessFor(route: Route, method: string): Access {
  return typeof route.access === "string" ? route.access : (route.access[method] ?? "read");
}

/** Routes whose path starts with a prefix (the rest names a key). */
const PREFIX_ROUTES: ReadonlyMap<string, Route> = new Map([
  ["/get/", route("get", "read", { GET: getValue, HEAD: getValue })],
  ["/set/", route("set", "write", { PUT: putValue, DELETE: deleteValue })],
]);

/** Routes with an exact path. */
const EXACT_ROUTES: ReadonlyMap<string, Route> = new Map([
  ["/keys", route("keys", "read", { GET: listKeys, HEAD: listKeys })],
  ["/values", route("values", "read", { GET: sendValues, HEAD: sendValues })],
  ["/status", route("status", "open", { GET: status, HEAD: status })],
  ["/metrics", route("metrics", "open", { GET: metrics, HEAD: metrics })],
  ["/snapshot", route("snapshot", { PUT: "write" }, { GET: getSnapshot, HEAD: getSnapshot, PUT: putSnapshot })],
  ["/", route("page", "open", { GET: statusPage, HEAD: statusPage })],
]);

/** The routes that read or change keys: `503` while the store opens. */
const STORE_ROUTES: ReadonlySet<Route | undefined> = new Set([
  ...PREFIX_ROUTES.values(),
  EXACT_ROUTES.get("/keys"),
  EXACT_ROUTES.get("/values"),
  EXACT_ROUTES.get("/snapshot"),
]);

/** The answers of a path no route takes. */
const UNROUTED = route("other", "open", {});

/** The route of a request path, or `undefined` when none takes it. */
function routeOf(path: string): { route: Route; prefix: string | null } | undefined {
  const prefix = path.startsWith("/get/") ? "/get/" : path.startsWith("/set/") ? "/set/" : null;
  const found = prefix === null ? EXACT_ROUTES.get(path) : PREFIX_ROUTES.get(prefix);
  return found && { route: found, prefix };
}

/** What a request (path and method) needs when tokens are set, from the route table: `write`, `read` or `open`. */
export function accessOf(path: string, method = "GET"): Access {
  const routed = routeOf(path);
  return routed ? accessFor(routed.route, method) : "open";
}

/** Every method some route takes (the `Allow` of a CONNECT). */
const ALL_METHODS = "GET, HEAD, PUT, DELETE";

/** Finds the request's route, checks its token and method, and answers through its handler. */
function dispatch(
  ctx: Context,
  req: IncomingMessage,
  res: ServerResponse,
  expectsContinue: boolean,
): void | Promise<void> {
  const url = req.url ?? "/";
  const q = url.indexOf("?");
  const path = q < 0 ? url : url.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : url.slice(q + 1));
  const routed = routeOf(path);
  const found = routed?.route;
  const x: Exchange = {
    ctx,
    req,
    res,
    route: (found ?? UNROUTED).label,
    rest: routed?.prefix ? path.slice(routed.prefix.length) : "",
    params,
    expectsContinue,
  };
  if (req.headers.host === undefined && req.httpVersion === "1.1") {
    return refuse(exchange(ctx, req, res), BAD_REQUEST, "malformed request: an HTTP/1.1 request needs a Host header");
  }
  if (found === undefined) {
    return refuse(
      x,
      NOT_FOUND,
      `not found: ${path.slice(0, 100)} (try /, /get/KEY, /set/KEY, /keys, /status, /metrics)`,
    );
  }
  // Before the method and the redirect: a follower refuses a bad token itself, a good one gets the 307.
  const access = accessFor(found, req.method ?? "GET");
  const denied = ctx.access?.refusal(req, access);
  if (denied) return refuse({ ...x, route: "auth" }, UNAUTHORIZED, denied, { "WWW-Authenticate": CHALLENGE });
  const handler = found.methods[req.method ?? "GET"];
  if (handler === undefined) return refuseMethod(x, found.allow);
  const opening = ctx.store.opening; // until every name is indexed, no key route answers (never a wrong 404)
  if (opening !== null && STORE_ROUTES.has(found)) {
    return refuse(x, SERVICE_UNAVAILABLE, `not ready yet, ${opening}; try again shortly`, { "Retry-After": "1" });
  }
  if (access === "write" && ctx.role === "follower") return redirectToLeader(x, path);
  const follower = req.headers["mehdb-follower"]; // a follower names itself when it polls
  if (follower !== undefined && ctx.followers) recordWhenAnswered(ctx.followers, x, follower, path);
  return handler(x);
}

/**
 * Records a follower's poll once it is answered, and only then: a refused request (`401` before this, a `400`
 * after) changes nothing.
 */
function recordWhenAnswered(followers: Followers, x: Exchange, name: string | string[], path: string): void {
  x.res.once("finish", () => {
    if (x.res.statusCode < BAD_REQUEST) followers.record(name, path, x.params);
  });
}

/** An exchange outside the route table (answers counted as `other`). */
function exchange(ctx: Context, req: IncomingMessage, res: ServerResponse): Exchange {
  return { ctx, req, res, route: UNROUTED.label, rest: "", params: new URLSearchParams(), expectsContinue: false };
}

/** A handler threw: logs it and answers 500 (or drops the connection when the answer has begun). */
function failed(ctx: Context, req: IncomingMessage, res: ServerResponse, error: unknown): void {
  ctx.log("error", { op: "request", method: req.method, path: req.url?.slice(0, 200), error: String(error) });
  if (res.headersSent) return void res.destroy();
  send(exchange(ctx, req, res), INTERNAL_SERVER_ERROR, "internal error\n");
}

/** A follower's answer to a write: `307` to the same key (or path) on the leader, the body not read. */
function redirectToLeader(x: Exchange, path: string): void {
  const key = x.route === "set" ? requestedKey(x) : "";
  if (key === null) return;
  const location = `${x.ctx.leaderUrl}${key ? `/set/${key}` : path}`;
  refuse(x, TEMPORARY_REDIRECT, `this is a follower; write to the leader at ${location}`, { Location: location });
}

/**
 * Creates (but does not start) the HTTP server of a leader or a follower over `ctx`. Held watches are not
 * released by its `close`: the caller calls `ctx.watches.close()` first, so that a stop stays prompt.
 */
export function createMehdbServer(ctx: Context): Server {
  const server = createServer({
    headersTimeout: HEADERS_TIMEOUT_MS,
    requestTimeout: REQUEST_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    connectionsCheckingInterval: 1_000,
    requireHostHeader: false, // checked in dispatch(), to answer with a one-line body
  });
  // A client may half-close its side once its request is sent (`nc -N`, some proxies); HTTP/1.1 says that
  // does not end its interest in the answer. By default node:http then aborts the request and ends the
  // socket, so a PUT still fsyncing lost its answer (and may or may not have been stored). With this
  // (undocumented but long-standing) switch Node answers the requests it has, then closes.
  (server as Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;

  const onRequest = (req: IncomingMessage, res: ServerResponse, expectsContinue: boolean) => {
    // Once the server is closing, a keep-alive connection gets its answer and then closes: a busy
    // client would otherwise keep sending on it and hold the shutdown until it is forced.
    if (!server.listening) res.shouldKeepAlive = false;
    // No closure is made per request: most GETs answer synchronously, from the cache.
    let pending: void | Promise<void>;
    try {
      pending = dispatch(ctx, req, res, expectsContinue);
    } catch (error) {
      return failed(ctx, req, res, error);
    }
    if (pending) pending.catch((error: unknown) => failed(ctx, req, res, error));
  };
  server.on("request", (req: IncomingMessage, res: ServerResponse) => onRequest(req, res, false));
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => onRequest(req, res, true));
  server.on("checkExpectation", (req: IncomingMessage, res: ServerResponse) => {
    res.setHeader("Connection", "close");
    send(
      exchange(ctx, req, res),
      EXPECTATION_FAILED,
      `unsupported Expect header: ${String(req.headers.expect).slice(0, 100)}\n`,
    );
  });
  server.on("clientError", (error: NodeJS.ErrnoException & { reason?: string }, socket: Socket) => {
    const inResponse = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage?.headersSent;
    if (error.code === "ECONNRESET" || !socket.writable || inResponse) {
      socket.destroy();
      return;
    }
    const [code, text] =
      error.code === "HPE_HEADER_OVERFLOW"
        ? [HEADERS_TOO_LARGE, "request headers too large"]
        : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? [REQUEST_TIMEOUT, "request timed out"]
          : [BAD_REQUEST, `malformed request: ${oneLine(error.reason ?? error.code ?? "unreadable")}`];
    ctx.metrics.count(UNROUTED.label, code);
    rawAnswer(socket, code, text, KEEP_ALIVE_TIMEOUT_MS);
  });
  // CONNECT goes to its own event; without a listener node:http drops the connection without a word.
  server.on("connect", (req: IncomingMessage, socket: Duplex) => {
    socket.on("error", () => {});
    ctx.metrics.count(UNROUTED.label, METHOD_NOT_ALLOWED);
    const text = `method ${req.method} not allowed: mehdb is not a proxy; use ${ALL_METHODS}`;
    rawAnswer(socket, METHOD_NOT_ALLOWED, text, KEEP_ALIVE_TIMEOUT_MS, `Allow: ${ALL_METHODS}\r\n`);
  });
  return server;
}
