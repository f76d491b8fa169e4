/**
 * A raw HTTP/1.1 client over `node:net`, for requests `node:http` would refuse
 * to send (malformed framing, bogus headers, garbage bytes) and for reading
 * exactly what the server put on the wire. Unlike `raw.ts` (one request, one
 * answer) it keeps connections alive, parses several answers on one
 * connection, and writes while it reads (an early answer to a long upload).
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
 * Parses the responses at the start of `data`: the complete ones, and how many
 * bytes they took. Interim `1xx` answers are skipped. Throws on bytes that are
 * not HTTP/1.x.
 */
export function parseResponses(data: Buffer, methods: string[]): { responses: RawResponse[]; used: number } {
  const responses: RawResponse[] = [];
  let at = 0;
  for (;;) {
    const end = data.indexOf("\r\n\r\n", at);
    if (end < 0) break;
    const head = data.subarray(at, end).toString("latin1").split("\r\n");
    const match = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(head[0]);
    if (!match) throw new Error(`not an HTTP response: ${JSON.stringify(head[0].slice(0, 100))}`);
    const status = Number(match[1]);
    const headers: Record<string, string> = {};
    for (const line of head.slice(1)) {
      const colon = line.indexOf(":");
      if (colon <= 0) throw new Error(`bad response header line ${JSON.stringify(line.slice(0, 100))}`);
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    let next = end + 4;
    if (status >= 100 && status < 200) {
      at = next;
      continue;
    }
    const method = methods[responses.length] ?? "GET";
    let body: Buffer = Buffer.alloc(0);
    if (hasBody(method, status)) {
      if (headers["transfer-encoding"]?.toLowerCase().includes("chunked")) {
        const chunks: Buffer[] = [];
        let pos = next;
        let complete = false;
        for (;;) {
          const lineEnd = data.indexOf("\r\n", pos);
          if (lineEnd < 0) break;
          const size = parseInt(data.subarray(pos, lineEnd).toString("latin1"), 16);
          if (!Number.isFinite(size)) throw new Error("bad chunk size in response");
          if (size === 0) {
            const trailerEnd = data.indexOf("\r\n\r\n", lineEnd);
            if (trailerEnd >= 0) {
              pos = trailerEnd + 4;
              complete = true;
            }
            break;
          }
          if (data.length < lineEnd + 2 + size + 2) break;
          chunks.push(data.subarray(lineEnd + 2, lineEnd + 2 + size));
          pos = lineEnd + 2 + size + 2;
        }
        if (!complete) break;
        body = Buffer.concat(chunks);
        next = pos;
      } else if (headers["content-length"] !== undefined) {
        const length = Number(headers["content-length"]);
        if (data.length < next + length) break;
        body = data.subarray(next, next + length);
        next += length;
      } else {
        // Delimited by the end of the connection: only complete once it is closed (handled by the caller).
        break;
      }
    }
    responses.push({ status, headers, body });
    at = next;
  }
  return { responses, used: at };
}

/** What one connection saw. */
export interface Exchange {
  responses: RawResponse[];
  /** Bytes after the last complete response (a response cut short, or garbage). */
  rest: Buffer;
  /** The socket error, if any (`ECONNRESET`, …). */
  error?: string;
  /** True when the client gave up waiting. */
  timedOut: boolean;
}

/**
 * Opens a connection, writes `chunks` one after the other, half-closes the
 * connection (unless `keepOpen`), and reads until the server closes it or
 * `timeoutMs` passes (then destroys it). `methods` tells which responses have
 * no body (`HEAD`).
 */
export function rawExchange(
  port: number,
  chunks: (Buffer | string)[],
  options: { methods?: string[]; timeoutMs?: number; halfClose?: boolean } = {},
): Promise<Exchange> {
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
 * A keep-alive connection that sends one request at a time and reads its
 * response; `closed` once the server closed it (then open a new one).
 */
export class RawConnection {
  #socket: Socket;
  #buffer: Buffer = Buffer.alloc(0);
  #waiter: (() => void) | null = null;
  #error: string | undefined;
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

  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => resolve(new RawConnection(socket)));
      socket.once("error", reject);
    });
  }

  /**
   * Sends `request` and resolves with its response, or with `null` and the
   * reason when the connection closed (or `timeoutMs` passed) before one came.
   */
  async send(request: Buffer | string, method: string, timeoutMs = 10_000): Promise<{ response: RawResponse | null; error?: string }> {
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
      if (parsed.responses.length > 0) {
        this.#buffer = this.#buffer.subarray(parsed.used);
        return { response: parsed.responses[0] };
      }
      if (this.closed) return { response: null, error: this.#error ?? `closed (${this.#buffer.length} bytes unparsed)` };
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

  close(): void {
    this.closed = true;
    this.#socket.destroy();
  }
}

/** Runs `fn` on `items` with at most `limit` at a time. */
export async function pool<T>(items: readonly T[], limit: number, fn: (item: T, worker: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async (_, worker) => {
    while (next < items.length) await fn(items[next++], worker);
  }));
}
