/**
 * What every route shares: the server's context, the one request being
 * answered ({@link Exchange}), HTTP statuses by name, and the ways to answer:
 * {@link send} a body, {@link refuse} with a one-line error (dropping an
 * unwanted request body without storing it), {@link rawAnswer} on a socket
 * that node:http has given up on.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Role } from "../config.ts";
import type { Followers } from "./followers.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { PollerState } from "../protocol.ts";
import type { Store } from "../store/store.ts";
import type { Tokens } from "./tokens.ts";
import type { Watches } from "./watch.ts";

export const OK = 200;
export const NOT_MODIFIED = 304;
export const TEMPORARY_REDIRECT = 307;
export const BAD_REQUEST = 400;
export const UNAUTHORIZED = 401;
export const NOT_FOUND = 404;
export const METHOD_NOT_ALLOWED = 405;
export const REQUEST_TIMEOUT = 408;
export const CONFLICT = 409;
export const PRECONDITION_FAILED = 412;
export const CONTENT_TOO_LARGE = 413;
export const EXPECTATION_FAILED = 417;
export const HEADERS_TOO_LARGE = 431;
export const INTERNAL_SERVER_ERROR = 500;
export const SERVICE_UNAVAILABLE = 503;
export const INSUFFICIENT_STORAGE = 507;

/** What a server's routes work with; one per server, built by `main.ts`. */
export interface Context {
  store: Store;
  role: Role;
  /** Where a follower redirects writes (`http://host:port`); `null` on a leader. */
  leaderUrl: string | null;
  /** Largest value accepted, in bytes. */
  maxValueBytes: number;
  log: Logger;
  /** The follower's poller; absent on a leader. */
  poller: PollerState | undefined;
  /** Request counters. */
  metrics: Metrics;
  /** Who may write and read (the token files); `undefined`: everything open. */
  access: Pick<Tokens, "refusal"> | undefined;
  /** This node's host name, shown on the status page. */
  host: string;
  /** The followers that poll this leader; `null` on a follower. */
  followers: Followers | null;
  /** The held `GET /keys?since=…&wait=MS` answers. */
  watches: Watches;
}

/** One request being answered: the server's context, the request and response, and the route's label. */
export interface Exchange {
  readonly ctx: Context;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** The route's label in `mehdb_http_requests_total` (from the route table). */
  readonly route: string;
  /** The path after the route's prefix (`KEY` of `/get/KEY`); empty for exact routes. */
  readonly rest: string;
  /** The query string, parsed once. */
  readonly params: URLSearchParams;
  /** True when the client waits for `100 Continue` before sending its body. */
  readonly expectsContinue: boolean;
}

/** An answer decided before it is sent. */
export interface Reply {
  /** HTTP status: 200, or the refusal's (307, 400, 412). */
  status: number;
  /** One line for errors and redirects (without its newline), JSON for listings. */
  body: string;
  /** Content type. Default `text/plain; charset=utf-8`. */
  type?: string;
  /** More headers (`Location`, `Connection`). */
  headers?: Record<string, string>;
}

/** Bytes of an unwanted request body read and dropped before the server stops reading it. */
const DRAIN_LIMIT = 1024 * 1024;
/** How long a connection whose unwanted body is no longer read stays open for its client to read the answer. */
const LINGER_MS = 2_000;

/** Answers with `body` (a one-line text unless `type` says otherwise) and counts the answer. */
export function send(
  x: Exchange,
  status: number,
  body: string | Buffer,
  type = "text/plain; charset=utf-8",
  headers: Record<string, string> = {},
): void {
  x.res.writeHead(status, { ...headers, "Content-Type": type, "Content-Length": Buffer.byteLength(body) });
  x.res.end(body);
  x.ctx.metrics.count(x.route, status);
}

/** Answers with a one-line error (or redirect) without storing the body; drops what the client still sends. */
export function refuse(x: Exchange, status: number, message: string, headers: Record<string, string> = {}): void {
  const { req, res } = x;
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (!req.complete && bodyExpected(req)) {
    // A body that was not asked for (`Expect: 100-continue`) may never come: the connection closes after the answer.
    // Any other is read and dropped; past a bound, drain() closes the connection a while after the answer. (With
    // `Connection: close` node:http would close it as soon as the answer is out, and a reset for the bytes still
    // coming could make the client lose that answer.)
    if (req.headers.expect !== undefined) headers.Connection = "close";
    drain(req);
  }
  send(x, status, `${message}\n`, "text/plain; charset=utf-8", headers);
}

/** Sends a {@link Reply}: a `200` as it is, anything else as a refusal. */
export function answer(x: Exchange, reply: Reply): void {
  if (reply.status === OK) return send(x, OK, reply.body, reply.type, reply.headers);
  refuse(x, reply.status, reply.body, reply.headers);
}

/** `405` with the `Allow` header. */
export function refuseMethod(x: Exchange, allow: string): void {
  refuse(x, METHOD_NOT_ALLOWED, `method ${x.req.method} not allowed here; use ${allow}`, { Allow: allow });
}

/**
 * Answers on a socket node:http has given up on, in one line, and closes it. No timeout of node:http covers
 * such a socket any more: one whose client never closes its side is destroyed after `lingerMs`.
 */
export function rawAnswer(socket: Duplex, status: number, text: string, lingerMs: number, headers = ""): void {
  const body = `${text}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n${headers}` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
  const linger = setTimeout(() => socket.destroy(), lingerMs);
  linger.unref();
  socket.once("close", () => clearTimeout(linger));
}

/** The error `code` of a system error, else its text: what a log line or a one-line answer shows. */
export function errorCode(error: unknown): string {
  return (error as NodeJS.ErrnoException)?.code ?? String(error);
}

/** A value from the request for a one-line answer: quoted, cut short, printable. */
export function quote(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}...` : text).replace(/[^\x20-\x7e]/g, "?");
}

/** `text` as one short lower-case line. */
export function oneLine(text: string): string {
  return text.replace(/\s+/g, " ").trim().slice(0, 200).toLowerCase();
}

function bodyExpected(req: IncomingMessage): boolean {
  const length = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

/**
 * Reads and drops the rest of a request body, up to {@link DRAIN_LIMIT}. Past that it stops reading and
 * closes the connection {@link LINGER_MS} later: closing at once, with the client's bytes unread, makes the
 * kernel reset the connection, and a client still sending may then lose the answer it was about to read.
 */
function drain(req: IncomingMessage): void {
  let seen = 0;
  const socket = req.socket;
  const onData = (chunk: Buffer) => {
    seen += chunk.length;
    if (seen <= DRAIN_LIMIT) return;
    req.off("data", onData);
    req.pause();
    const linger = setTimeout(() => socket.destroy(), LINGER_MS);
    linger.unref();
    socket.once("close", () => clearTimeout(linger));
  };
  req.on("data", onData);
  req.on("error", () => {});
  req.resume();
}
