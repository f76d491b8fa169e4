/**
 * One key: `GET|HEAD /get/KEY` reads it (`?after=CURSOR`: see `after.ts`),
 * `PUT /set/KEY` stores the body, `DELETE /set/KEY` removes it. A write's
 * `If-Match` / `If-None-Match` are judged here (with `preconditions.ts`) and
 * its answer carries the new `ETag` and `Mehdb-Cursor`. A follower's `/set/`
 * answers are redirects, decided by the route table before these handlers run.
 */
import type { ReadStream } from "node:fs";
import { pipeline } from "node:stream";
import { afterThen } from "./after.ts";
import {
  BAD_REQUEST,
  CONTENT_TOO_LARGE,
  errorCode,
  INSUFFICIENT_STORAGE,
  INTERNAL_SERVER_ERROR,
  NOT_FOUND,
  NOT_MODIFIED,
  OK,
  PRECONDITION_FAILED,
  refuse,
  send,
  type Exchange,
} from "./http.ts";
import { KEY_RULE, keyFromPath } from "../keys.ts";
import { evaluatePreconditions, readPreconditions } from "./preconditions.ts";
import { CURSOR_HEADER } from "../protocol.ts";
import {
  PreconditionFailedError,
  ValueTooLargeError,
  type Entry,
  type Precondition,
  type Store,
} from "../store/store.ts";

/** The key named by the rest of the path; `null` after answering `400` when it breaks the key rules. */
export function requestedKey(x: Exchange): string | null {
  const key = keyFromPath(x.rest);
  if (key === null) refuse(x, BAD_REQUEST, `invalid key: ${KEY_RULE}`);
  return key;
}

/** `GET|HEAD /get/KEY`: the value from the cache (answered synchronously), else from its file. */
export function getValue(x: Exchange): void | Promise<void> {
  const key = requestedKey(x);
  if (key === null) return;
  if (x.params.has("after")) return afterThen(x, key, () => readValue(x, key));
  return readValue(x, key);
}

function readValue(x: Exchange, key: string): void | Promise<void> {
  const { store } = x.ctx;
  const hit = store.cached(key);
  // A cached value keeps its answer's headers, so a GET of it formats nothing.
  if (hit) return sendValue(x, key, hit.entry, hit.body, (hit.headers ??= valueHeaders(store, hit.entry)));
  return store.get(key).then((value) => {
    if (value === null) return send(x, NOT_FOUND, `key not found: ${key}\n`);
    return sendValue(x, key, value.entry, value.body ?? value.stream, valueHeaders(store, value.entry));
  });
}

/** `PUT /set/KEY`: streams the body into the store and answers once it is durable. */
export async function putValue(x: Exchange): Promise<void> {
  const key = requestedKey(x);
  if (key === null) return;
  const { req, res, ctx } = x;
  const { maxValueBytes, log } = ctx;
  const declared = req.headers["content-length"];
  if (declared !== undefined && Number(declared) > maxValueBytes) {
    return refuse(x, CONTENT_TOO_LARGE, `value too large: ${declared} bytes, the limit is ${maxValueBytes}`);
  }
  const precondition = preconditionOf(x, key);
  if (precondition === null) return;
  if (x.expectsContinue) res.writeContinue();
  try {
    const body = req.iterator({ destroyOnReturn: false });
    const { store } = ctx;
    const entry = await store.put(key, body, { maxBytes: maxValueBytes, precondition });
    send(x, OK, "WRITE completed\n", undefined, { ETag: store.etag(entry), [CURSOR_HEADER]: store.cursorOf(entry) });
    log("write", { key, bytes: entry.size });
  } catch (error) {
    if (req.destroyed && !req.complete) {
      log("write-aborted", { key, reason: "the client went away before the value was complete" });
      return;
    }
    if (error instanceof ValueTooLargeError) {
      return refuse(x, CONTENT_TOO_LARGE, `value too large: the limit is ${maxValueBytes} bytes`);
    }
    if (error instanceof PreconditionFailedError) return refuse(x, PRECONDITION_FAILED, error.message);
    const code = (error as NodeJS.ErrnoException).code;
    log("error", { op: "write", key, error: code ?? String(error) });
    if (code === "ENOSPC" || code === "EDQUOT") {
      return refuse(x, INSUFFICIENT_STORAGE, `insufficient storage: the disk is full; ${key} keeps its old value`);
    }
    return refuse(x, INTERNAL_SERVER_ERROR, `write failed: ${code ?? "unexpected error"}; ${key} keeps its old value`);
  }
}

/** `DELETE /set/KEY`: removes the key durably; `404` when it is absent. */
export async function deleteValue(x: Exchange): Promise<void> {
  const key = requestedKey(x);
  if (key === null) return;
  const { store, log } = x.ctx;
  const precondition = preconditionOf(x, key);
  if (precondition === null) return;
  try {
    if (!(await store.delete(key, { precondition }))) return refuse(x, NOT_FOUND, `key not found: ${key}`);
    send(x, OK, "DELETE completed\n", undefined, { [CURSOR_HEADER]: store.cursor });
    log("delete", { key });
  } catch (error) {
    if (error instanceof PreconditionFailedError) return refuse(x, PRECONDITION_FAILED, error.message);
    log("error", { op: "delete", key, error: errorCode(error) });
    refuse(x, INTERNAL_SERVER_ERROR, `delete failed: ${errorCode(error)}`);
  }
}

/**
 * The preconditions of `PUT` or `DELETE /set/KEY` (`If-Match`, `If-None-Match`): `undefined` when there are none;
 * `null` after answering `400` (malformed) or `412` (failing already, the body not read); else the check the store
 * judges again in the key's lock, right before the write.
 */
function preconditionOf(x: Exchange, key: string): Precondition | null | undefined {
  const pre = readPreconditions(x.req.headers);
  if (pre === null) return undefined;
  if ("error" in pre) {
    refuse(x, BAD_REQUEST, pre.error);
    return null;
  }
  const { store } = x.ctx;
  const precondition: Precondition = (current) => evaluatePreconditions(pre, key, current && store.etag(current));
  const current = store.stat(key);
  // A DELETE of an absent key is a 404 whatever its preconditions (RFC 9110, 13.2.1: they apply only to a 2xx).
  const failed = x.req.method === "DELETE" && current === undefined ? null : precondition(current);
  if (failed === null) return precondition;
  refuse(x, PRECONDITION_FAILED, failed);
  return null;
}

/** Answers a value: its bytes, or its file streamed; `304` when the client has it already. */
function sendValue(x: Exchange, key: string, entry: Entry, body: Buffer | ReadStream, headers: string[]): void {
  const { req, res, ctx } = x;
  const streamed = !Buffer.isBuffer(body);
  if (notModified(ctx.store, req.headers["if-none-match"], entry)) {
    if (streamed) body.destroy();
    res.writeHead(NOT_MODIFIED, { ETag: ctx.store.etag(entry) });
    res.end();
    ctx.metrics.count(x.route, NOT_MODIFIED);
    return;
  }
  res.writeHead(OK, headers);
  ctx.metrics.count(x.route, OK);
  if (!streamed) return void res.end(body); // node:http sends no body for HEAD
  if (req.method === "HEAD") {
    body.destroy();
    return void res.end();
  }
  // pipeline closes the file when the client goes away early.
  pipeline(body, res, (error) => {
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    if (error && code !== "ERR_STREAM_PREMATURE_CLOSE")
      ctx.log("error", { op: "get", key, error: code ?? error.message });
  });
}

/** The headers of a value's answer (`writeHead`'s flat array form). */
function valueHeaders(store: Store, entry: Entry): string[] {
  return ["Content-Type", "application/octet-stream", "Content-Length", String(entry.size), "ETag", store.etag(entry)];
}

function notModified(store: Store, match: string | undefined, entry: Entry): boolean {
  if (match === undefined) return false;
  const etag = store.etag(entry);
  return match.trim() === "*" || match.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
}
