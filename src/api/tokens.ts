/**
 * Access tokens: the optional write and read tokens (src/README.md, "Access
 * tokens").
 *
 * `MEHDB_WRITE_TOKEN_FILE` and `MEHDB_READ_TOKEN_FILE` name files holding the
 * tokens (a Kubernetes Secret mounted as files). {@link Tokens} reads them at
 * start, then re-reads them on a timer: a Secret volume swaps its files by
 * renaming a `..data` symlink, so the files are polled (content, through the
 * path) rather than watched by inode. A new token applies within
 * {@link POLL_MS} plus one read; the old one stops working at the same
 * moment.
 *
 * The verdict on a request is {@link judgeAuthorization}, a pure function of
 * the `Authorization` header, the kind of route (the route table's `access`) and the
 * tokens. Tokens are compared in constant time (`timingSafeEqual`, with a
 * length check first: the time taken depends on the configured token's length,
 * never on how much of it a guess got right), and no token is ever logged or
 * put in an answer.
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import type { IncomingHttpHeaders } from "node:http";
import { timingSafeEqual } from "node:crypto";
import type { Logger } from "../log.ts";

/** What a route needs: the write token, the read (or write) token, or nothing. */
export type Access = "write" | "read" | "open";

/** How often the token files are re-read, in ms. */
const POLL_MS = 500;

/** Longest token accepted, in characters (a token file is small; this bounds each re-read). */
const MAX_TOKEN_CHARS = 4096;

/** The challenge sent with every `401` (`WWW-Authenticate`). */
export const CHALLENGE = 'Bearer realm="mehdb"';

/**
 * One configured token, compared in constant time. A request's credentials
 * are written into a buffer made once (as UTF-16 code units, so that every
 * character of any string maps to its own two bytes), so a check allocates
 * nothing but a substring view.
 */
export class Secret {
  readonly #length: number;
  readonly #bytes: Buffer;
  readonly #scratch: Buffer;
  /** The `Authorization` value that carries this token (what a follower sends). */
  readonly header: string;

  /** `token` must pass {@link tokenProblem}. */
  constructor(token: string) {
    this.#length = token.length;
    this.#bytes = Buffer.from(token, "utf16le");
    this.#scratch = Buffer.alloc(this.#bytes.length);
    this.header = `Bearer ${token}`;
  }

  /** Whether `header.slice(from)` is this token; the time taken depends only on the token's length. */
  matches(header: string, from: number): boolean {
    if (header.length - from !== this.#length) return false;
    this.#scratch.write(from === 0 ? header : header.substring(from), 0, "utf16le");
    return timingSafeEqual(this.#scratch, this.#bytes);
  }

  /** Whether this is `token` (for change detection of the file, not for requests). */
  is(token: string): boolean {
    return this.header.length === token.length + 7 && this.header.endsWith(token);
  }
}

/** The tokens in force; `null` where none is configured. */
export interface Secrets {
  write: Secret | null;
  read: Secret | null;
}

/** Why `token` (trimmed file content) cannot be used, or `null` when it can. */
export function tokenProblem(token: string): string | null {
  if (token === "") return "is empty";
  if (token.length > MAX_TOKEN_CHARS) return `holds more than ${MAX_TOKEN_CHARS} characters`;
  if (!/^[\x21-\x7e]+$/.test(token))
    return "holds characters a Bearer token cannot have (only visible ASCII, no spaces inside)";
  return null;
}

/** Where a `Bearer` header's credentials start, or -1 for another scheme or none. The scheme is case-insensitive. */
export function credentialsStart(header: string): number {
  if (header.length < 8) return -1;
  for (let i = 0; i < 6; i++) {
    if ((header.charCodeAt(i) | 0x20) !== "bearer".charCodeAt(i)) return -1;
  }
  let at = 6;
  while (header.charCodeAt(at) === 32 || header.charCodeAt(at) === 9) at++;
  return at === 6 || at === header.length ? -1 : at;
}

/**
 * The verdict on a request's `Authorization` header (its value; an array when
 * the request had several) for a route needing `access`: `null` to let it
 * through, or the one-line reason for a `401`. Writes need the write token
 * (the read token when only that one is set); with a read token set, reads
 * need the read or the write token; `open` routes always pass.
 */
export function judgeAuthorization(
  authorization: string | string[] | undefined,
  access: Access,
  secrets: Secrets,
): string | null {
  if (access === "open") return null;
  const needed = access === "write" ? (secrets.write ?? secrets.read) : secrets.read;
  if (needed === null) return null;
  if (authorization === undefined) {
    return `${needs(access, secrets)}; this request had no Authorization header ` +
      "(curl -L drops it on the redirect to the leader unless given --location-trusted)";
  }
  const [header, more] = Array.isArray(authorization) ? authorization : [authorization];
  if (header === undefined || more !== undefined) {
    const count = Array.isArray(authorization) ? authorization.length : 0;
    return `${needs(access, secrets)}; this request had ${count} Authorization headers, send exactly one`;
  }
  const from = credentialsStart(header);
  if (from < 0) return `${needs(access, secrets)}; the Authorization header is not of the form "Bearer <token>"`;
  // For a read, both comparisons run, whichever matches.
  const ok =
    access === "write"
      ? needed.matches(header, from)
      : Number(needed.matches(header, from)) | Number(secrets.write?.matches(header, from) ?? false);
  return ok
    ? null
    : `${needs(access, secrets)}; the token sent is not valid for ${access === "write" ? "writes" : "reads"}`;
}

/** The start of a refusal: what the route needs. */
function needs(access: Access, secrets: Secrets): string {
  return access === "write"
    ? `unauthorized: writes need "Authorization: Bearer <${secrets.write ? "write" : "read"} token>"`
    : `unauthorized: reads need "Authorization: Bearer <read token>" (or the write token)`;
}

/**
 * The `Authorization` header of a request as {@link judgeAuthorization} takes
 * it: the value, `undefined` when absent, or every value when there are
 * several (node:http keeps only the first in `headers`).
 */
export function authorizationOf(req: {
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
}): string | string[] | undefined {
  const first = req.headers.authorization;
  if (first === undefined) return undefined;
  const raw = req.rawHeaders;
  let count = 0; // the common case, one header, allocates nothing
  for (let i = 0; i < raw.length; i += 2) if (isAuthorizationName(raw[i] ?? "")) count++;
  if (count < 2) return first;
  return raw.filter((_, i) => i % 2 === 1 && isAuthorizationName(raw[i - 1] ?? ""));
}

function isAuthorizationName(name: string): boolean {
  if (name.length !== 13) return false;
  const lower = "authorization";
  for (let i = 0; i < 13; i++) if ((name.charCodeAt(i) | 0x20) !== lower.charCodeAt(i)) return false;
  return true;
}

/** A token file that cannot be used at start; the message is one line naming the variable and the path. */
export class TokenFileError extends Error {
  override name = "TokenFileError";
}

/** Options of {@link Tokens.open}. */
export interface TokensOptions {
  /** `MEHDB_WRITE_TOKEN_FILE`, or `null`. */
  writeFile: string | null;
  /** `MEHDB_READ_TOKEN_FILE`, or `null`. */
  readFile: string | null;
  log: Logger;
}

/** One configured file: its variable, path, and the token last read from it. */
export interface TokenSource {
  kind: "write" | "read";
  variable: string;
  path: string;
  secret: Secret;
  /** The problem last logged for this file, so that it is logged once. */
  problem: string | null;
}

/**
 * The tokens of one process, re-read from their files on an unref'd timer.
 * Create it with {@link Tokens.open}; the server asks {@link Tokens.refusal},
 * a follower's poller {@link Tokens.leaderAuthorization}.
 */
export class Tokens {
  #secrets: Secrets;
  #sources: TokenSource[];
  #log: Logger;
  #timer: NodeJS.Timeout;
  #polling = false;

  /** Use {@link Tokens.open}, which reads and checks the files first. */
  constructor(sources: TokenSource[], log: Logger) {
    this.#sources = sources;
    this.#log = log;
    this.#secrets = {
      write: sources.find((s) => s.kind === "write")?.secret ?? null,
      read: sources.find((s) => s.kind === "read")?.secret ?? null,
    };
    this.#timer = setInterval(() => void this.#poll(), POLL_MS);
    this.#timer.unref();
  }

  /**
   * Reads the configured token files; `undefined` when neither is set (then
   * nothing is protected). Throws {@link TokenFileError} for a file that is
   * missing, unreadable, not a regular file, empty, or holds an unusable token.
   */
  static async open(options: TokensOptions): Promise<Tokens | undefined> {
    const sources: TokenSource[] = [];
    for (const [kind, variable, path] of [
      ["write", "MEHDB_WRITE_TOKEN_FILE", options.writeFile],
      ["read", "MEHDB_READ_TOKEN_FILE", options.readFile],
    ] as const) {
      if (path === null) continue;
      let token: string;
      try {
        token = await readToken(path);
      } catch (error) {
        throw new TokenFileError(`${variable}=${path}: ${describe(error)}`);
      }
      const problem = tokenProblem(token);
      if (problem !== null) throw new TokenFileError(`${variable}=${path}: the token file ${problem}`);
      sources.push({ kind, variable, path, secret: new Secret(token), problem: null });
    }
    if (sources.length === 0) return undefined;
    return new Tokens(sources, options.log);
  }

  /** What is protected, for the start-up log line. */
  describe(): { writes: string; reads: string } {
    const { write, read } = this.#secrets;
    return {
      writes: write ? "write-token" : read ? "read-token" : "open",
      reads: read ? "read-or-write-token" : "open",
    };
  }

  /** The one-line reason to answer `401` to a request for a route needing `access`, or `null` to let it through. */
  refusal(req: { headers: IncomingHttpHeaders; rawHeaders: string[] }, access: Access): string | null {
    const secrets = this.#secrets;
    // No header is read when the route needs no token (open, or its token is not set): most requests.
    const needed = access === "open" ? null : access === "write" ? (secrets.write ?? secrets.read) : secrets.read;
    if (needed === null) return null;
    return judgeAuthorization(authorizationOf(req), access, secrets);
  }

  /** The `Authorization` value a follower sends its leader: `Bearer <read token>`; `undefined` without a read token. */
  leaderAuthorization(): string | undefined {
    return this.#secrets.read?.header;
  }

  /** Stops re-reading the files. */
  close(): void {
    clearInterval(this.#timer);
  }

  async #poll(): Promise<void> {
    if (this.#polling) return;
    this.#polling = true;
    try {
      for (const source of this.#sources) await this.#reread(source);
    } finally {
      this.#polling = false;
    }
  }

  /** Re-reads one file. A file that became unusable keeps its last good token (and says so once). */
  async #reread(source: TokenSource): Promise<void> {
    let problem: string | null;
    let token = "";
    try {
      token = await readToken(source.path);
      problem = tokenProblem(token);
      if (problem !== null) problem = `the token file ${problem}`;
    } catch (error) {
      problem = describe(error);
    }
    const fields = { variable: source.variable, path: source.path };
    if (problem !== null) {
      if (problem !== source.problem)
        this.#log("token-file-problem", { ...fields, error: problem, action: "the last good token stays in force" });
      source.problem = problem;
      return;
    }
    if (source.problem !== null) this.#log("token-file-ok", fields);
    source.problem = null;
    if (source.secret.is(token)) return;
    source.secret = new Secret(token);
    this.#secrets = { ...this.#secrets, [source.kind]: source.secret };
    this.#log("token-changed", { ...fields, effect: "the new token applies now; the old one no longer works" });
  }
}

/**
 * Opens without blocking (a FIFO would block a plain open), so a path that is not a regular file is refused at once.
 */
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK;
/** Largest token file read, in bytes. */
const MAX_FILE_BYTES = 64 * 1024;

async function readToken(path: string): Promise<string> {
  const handle = await open(path, OPEN_FLAGS);
  try {
    checkFile(await handle.stat());
    return (await handle.readFile("utf8")).trim();
  } finally {
    await handle.close();
  }
}

function checkFile(stat: { isFile(): boolean; isDirectory(): boolean; size: number }): void {
  if (stat.isDirectory()) throw new Error("it is a directory, not a file");
  if (!stat.isFile()) throw new Error("it is not a regular file");
  if (stat.size > MAX_FILE_BYTES) throw new Error(`the token file is larger than ${MAX_FILE_BYTES} bytes`);
}

function describe(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  const text =
    e.code === "ENOENT"
      ? "no such file"
      : e.code === "EACCES"
        ? "permission denied (the file cannot be read by this user)"
        : e.code
          ? `cannot read it (${e.code})`
          : String(e.message ?? error);
  return text.replace(/\s+/g, " ").slice(0, 200);
}
