/**
 * The tests' raw HTTP/1.1 client over `node:net`, for requests `node:http`
 * would refuse to send (unencoded paths, bogus framing, garbage bytes) and
 * for reading exactly what the server put on the wire: one request and its
 * answer ({@link rawRequest}), bytes written while the answers are read
 * ({@link rawExchange}), and a kept-alive connection ({@link RawConnection}).
 */
import { connect, type Socket } from "node:net";

/** One response as read from the wire. */
export interface RawResponse {
  status: number;
  /** Header names in lower case; repeated headers joined with ", ". */
  headers: Record<string, string>;
  body: Buffer;
}

/** Whether a response to a request with this method has a body. */
function hasBody(method: string, status: number): boolean {
  return method !== "HEAD" && status >= 200 && status !== 204 && status !== 304;
}

/**
 * Parses the responses at the start of `data`: the complete ones, and how many bytes they took. Interim `1xx`
 * answers are skipped. `methods` are the requests' methods, in order (a `HEAD` answer has no body). Throws on
 * bytes that are not HTTP/1.x.
 */
export function parseResponses(data: Buffer, methods: readonly string[]): { responses: RawResponse[]; used: number } {
  const responses: RawResponse[] = [];
  let at = 0;
  for (;;) {
    const end = data.indexOf("\r\n\r\n", at);
    if (end < 0) break;
    const [statusLine = "", ...lines] = data.subarray(at, end).toString("latin1").split("\r\n");
    const match = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(statusLine);
    if (!match) throw new Error(`not an HTTP response: ${JSON.stringify(statusLine.slice(0, 100))}`);
    const status = Number(match[1]);
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(":");
      if (colon <= 0) throw new Error(`bad response header line ${JSON.stringify(line.slice(0, 100))}`);
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      const before = headers[name];
      headers[name] = before === undefined ? value : `${before}, ${value}`;
    }
    let next = end + 4;
    if (status >= 100 && status < 200) {
      at = next;
      continue;
    }
    let body: Buffer = Buffer.alloc(0);
    if (hasBody(methods[responses.length] ?? "GET", status)) {
      const length = headers["content-length"];
      if (headers["transfer-encoding"]?.toLowerCase().includes("chunked")) {
        const chunked = dechunk(data, next);
        if (chunked === null) break;
        [body, next] = chunked;
      } else if (length !== undefined) {
        if (data.length < next + Number(length)) break;
        body = data.subarray(next, next + Number(length));
        next += Number(length);
      } else {
        // Delimited by the end of the connection: never complete here.
        break;
      }
    }
    responses.push({ status, headers, body });
    at = next;
  }
  return { responses, used: at };
}

/** The chunked body that starts at `from` and where it ends, or `null` while it is incomplete. */
function dechunk(data: Buffer, from: number): [Buffer, number] | null {
  const chunks: Buffer[] = [];
  for (let pos = from; ;) {
    const lineEnd = data.indexOf("\r\n", pos);
    if (lineEnd < 0) return null;
    const size = parseInt(data.subarray(pos, lineEnd).toString("latin1"), 16);
    if (!Number.isFinite(size)) throw new Error("bad chunk size in response");
    if (size === 0) {
      const trailerEnd = data.indexOf("\r\n\r\n", lineEnd);
      return trailerEnd < 0 ? null : [Buffer.concat(chunks), trailerEnd + 4];
    }
    if (data.length < lineEnd + 2 + size + 2) return null;
    chunks.push(data.subarray(lineEnd + 2, lineEnd + 2 + size));
    pos = lineEnd + 2 + size + 2;
  }
}

/** The first answer to a {@link rawRequest}. */
export interface RawAnswer extends RawResponse {
  /** The body as UTF-8. */
  text: string;
  /** Every byte read, interim answers included, as latin1. */
  raw: string;
}

/**
 * Writes `request` as is on a new connection and resolves with the first final answer as soon as it is
 * complete, or with what came once the server closes or `timeoutMs` (default 10 s) passes: then `status` is
 * that of the first final status line read (0 when none).
 */
export function rawRequest(port: number, request: string | Buffer, timeoutMs = 10_000): Promise<RawAnswer> {
  const method = /^[A-Za-z]+/.exec(request.toString("latin1"))?.[0] ?? "GET";
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let data = Buffer.alloc(0);
    const first = (): RawResponse | undefined => {
      try {
        return parseResponses(data, [method]).responses[0];
      } catch {
        return undefined;
      }
    };
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      const raw = data.toString("latin1");
      const response = first() ?? looseResponse(raw);
      resolve({ ...response, text: response.body.toString("utf8"), raw });
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      if (first() !== undefined) finish();
    });
    socket.on("end", finish);
    socket.on("error", (error) => (data.length > 0 ? finish() : reject(error)));
    socket.write(request);
  });
}

/** What can be made of an answer cut short: the first final status line, its headers, the bytes after them. */
function looseResponse(raw: string): RawResponse {
  const heads = raw.split(/(?<=\r\n\r\n)/);
  const at = heads.findIndex((head) => !/^HTTP\/1\.[01] 1\d\d/.test(head));
  const head = heads[at] ?? "";
  const headers: Record<string, string> = {};
  for (const line of head.split("\r\n").slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const body = at < 0 ? "" : heads.slice(at + 1).join("");
  return { status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0), headers, body: Buffer.from(body, "latin1") };
}

/** What one connection of {@link rawExchange} saw. */
export interface RawExchange {
  responses: RawResponse[];
  /** Bytes after the last complete response (a response cut short, or garbage). */
  rest: Buffer;
  /** The socket error, if any (`ECONNRESET`, …). */
  error?: string;
  /** True when the client gave up waiting. */
  timedOut: boolean;
}

/** Options of {@link rawExchange}. */
export interface RawExchangeOptions {
  /** The requests' methods, in order, to tell which responses have no body (`HEAD`). Default all `GET`. */
  methods?: string[];
  /** Destroys the connection after this long. Default 10 000 ms. */
  timeoutMs?: number;
  /** Half-closes the connection once every chunk is written. Default true. */
  halfClose?: boolean;
}

/**
 * Opens a connection, writes `chunks` one after the other while it reads (as curl does with an upload),
 * half-closes it (unless told not to), and reads until the server closes it or `timeoutMs` passes.
 */
export function rawExchange(
  port: number,
  chunks: (Buffer | string)[],
  options: RawExchangeOptions = {},
): Promise<RawExchange> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    const received: Buffer[] = [];
    let error: string | undefined;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy();
    }, options.timeoutMs ?? 10_000);
    socket.on("data", (chunk: Buffer) => received.push(chunk));
    socket.on("error", (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    socket.on("close", () => {
      clearTimeout(timer);
      const data = Buffer.concat(received);
      let parsed: { responses: RawResponse[]; used: number };
      try {
        parsed = parseResponses(data, options.methods ?? []);
      } catch (e) {
        parsed = { responses: [], used: 0 };
        error ??= String(e);
      }
      resolve({ responses: parsed.responses, rest: data.subarray(parsed.used), error, timedOut });
    });
    socket.once("connect", async () => {
      for (const chunk of chunks) {
        if (socket.destroyed) return;
        if (!socket.write(chunk)) await new Promise((r) => socket.once("drain", r).once("close", r));
      }
      if (options.halfClose !== false && !socket.destroyed) socket.end();
    });
  });
}

/**
 * A keep-alive connection that sends one request at a time and reads its response; `closed` once the server
 * closed it (then open a new one).
 */
export class RawConnection {
  #socket: Socket;
  #buffer: Buffer = Buffer.alloc(0);
  #waiter: (() => void) | null = null;
  #error: string | undefined;
  /** True once either side closed the connection. */
  closed = false;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#waiter?.();
    });
    socket.on("error", (e: NodeJS.ErrnoException) => (this.#error = e.code ?? e.message));
    socket.on("close", () => {
      this.closed = true;
      this.#waiter?.();
    });
  }

  /** Connects to 127.0.0.1:`port`. */
  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => resolve(new RawConnection(socket)));
      socket.once("error", reject);
    });
  }

  /**
   * Sends `request` and resolves with its response, or with `null` and the reason when the connection closed
   * (or `timeoutMs` passed) before one came.
   */
  async send(
    request: Buffer | string,
    method: string,
    timeoutMs = 10_000,
  ): Promise<{ response: RawResponse | null; error?: string }> {
    if (this.closed) return { response: null, error: "closed before sending" };
    this.#socket.write(request);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let parsed: { responses: RawResponse[]; used: number };
      try {
        parsed = parseResponses(this.#buffer, [method]);
      } catch (e) {
        this.close();
        return { response: null, error: String(e) };
      }
      const [response] = parsed.responses;
      if (response) {
        this.#buffer = this.#buffer.subarray(parsed.used);
        return { response };
      }
      if (this.closed) {
        return { response: null, error: this.#error ?? `closed (${this.#buffer.length} bytes unparsed)` };
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        this.close();
        return { response: null, error: "timed out" };
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          this.#waiter = null;
          resolve();
        };
      });
    }
  }

  /** Closes the connection. */
  close(): void {
    this.closed = true;
    this.#socket.destroy();
  }
}
