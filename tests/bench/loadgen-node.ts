/**
 * The load generator of Node built-ins, used when wrk is missing (or with --load node):
 * N keep-alive connections over raw sockets, one request in flight on each,
 * duration-bounded, latency of every response recorded.
 * Usage: node --import tsx tests/bench/loadgen-node.ts 'JSON of NodeLoadArgs'
 * Prints one JSON line: {"requests","seconds","errors","badStatus","p50Ms","p99Ms"}.
 */

import { connect, type Socket } from "node:net";
import { percentile } from "./stats.ts";

/** What the generator is asked to do (its single argv argument, as JSON). */
export interface NodeLoadArgs {
  port: number;
  connections: number;
  seconds: number;
  method: "GET" | "PUT";
  /** GET: the path; PUT: the path prefix, to which the key number is appended. */
  path: string;
  /** PUT: spread over this many keys. */
  keys: number;
  /** PUT: value size in bytes. */
  valueBytes: number;
  /** Key numbers zero-padded to this many digits. Default: not padded. */
  keyDigits?: number;
  /** A key at random for every request (else in turn). */
  random?: boolean;
  /** Extra request headers, `Name: value`. Default none. */
  headers?: string[];
}

/** Incremental parser of HTTP/1.1 responses (Content-Length or chunked bodies). */
class ResponseParser {
  private buf: Buffer = Buffer.alloc(0);
  private state: "head" | "body" | "chunk-size" | "chunk-data" | "trailer" = "head";
  private need = 0;
  private status = 0;

  /** Feeds bytes; calls `done(status)` for every complete response. */
  feed(chunk: Buffer, done: (status: number) => void): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (this.state === "head") {
        const end = this.buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = this.buf.toString("latin1", 0, end).toLowerCase();
        this.buf = this.buf.subarray(end + 4);
        this.status = Number(head.slice(9, 12));
        const cl = /\r\ncontent-length:\s*(\d+)/.exec(head);
        if (/\r\ntransfer-encoding:[^\r]*chunked/.test(head)) {
          this.state = "chunk-size";
        } else {
          this.need = cl ? Number(cl[1]) : 0;
          this.state = "body";
        }
      } else if (this.state === "body") {
        if (this.buf.length < this.need) return;
        this.buf = this.buf.subarray(this.need);
        this.state = "head";
        done(this.status);
      } else if (this.state === "chunk-size") {
        const end = this.buf.indexOf("\r\n");
        if (end < 0) return;
        const size = parseInt(this.buf.toString("latin1", 0, end), 16);
        this.buf = this.buf.subarray(end + 2);
        if (size === 0) {
          this.state = "trailer";
        } else {
          this.need = size + 2;
          this.state = "chunk-data";
        }
      } else if (this.state === "chunk-data") {
        if (this.buf.length < this.need) return;
        this.buf = this.buf.subarray(this.need);
        this.state = "chunk-size";
      } else {
        const end = this.buf.indexOf("\r\n");
        if (end < 0) return;
        this.buf = this.buf.subarray(end + 2);
        if (end === 0) {
          this.state = "head";
          done(this.status);
        }
      }
    }
  }
}

/** Runs the load and returns the summary printed by the CLI. */
export async function runNodeLoad(a: NodeLoadArgs): Promise<Record<string, number | null>> {
  const body = a.method === "PUT" ? Buffer.alloc(a.valueBytes, 0x76) : null;
  const heads: Buffer[] = [];
  const count = a.method === "PUT" || a.keys > 1 ? a.keys : 1;
  for (let i = 0; i < count; i++) {
    const key = a.keyDigits ? String(i).padStart(a.keyDigits, "0") : String(i);
    const path = count > 1 || a.method === "PUT" ? `${a.path}${key}` : a.path;
    const headers = (a.headers ?? []).map((h) => `${h}\r\n`).join("");
    const extra = (body ? `Content-Length: ${body.length}\r\n` : "") + headers;
    heads.push(Buffer.from(`${a.method} ${path} HTTP/1.1\r\nHost: 127.0.0.1:${a.port}\r\n${extra}\r\n`, "latin1"));
  }
  let latencies = new Float64Array(1 << 16);
  let requests = 0;
  let errors = 0;
  let badStatus = 0;
  let next = 0;
  const start = performance.now();
  const until = start + a.seconds * 1000;

  const record = (ms: number): void => {
    if (requests === latencies.length) {
      const grown = new Float64Array(latencies.length * 2);
      grown.set(latencies);
      latencies = grown;
    }
    latencies[requests++] = ms;
  };

  const runConnection = (): Promise<void> =>
    new Promise((resolveConn) => {
      let sock: Socket;
      let sentAt = 0;
      let inFlight = false;
      const send = (): void => {
        if (performance.now() >= until) {
          sock.destroy();
          resolveConn();
          return;
        }
        const head = heads[a.random ? Math.floor(Math.random() * heads.length) : next++ % heads.length];
        if (head === undefined) throw new Error("no request to send");
        sentAt = performance.now();
        inFlight = true;
        if (body) {
          sock.cork();
          sock.write(head);
          sock.write(body);
          sock.uncork();
        } else {
          sock.write(head);
        }
      };
      const open = (): void => {
        const parser = new ResponseParser();
        sock = connect({ host: "127.0.0.1", port: a.port, noDelay: true }, send);
        sock.on("data", (chunk: Buffer) =>
          parser.feed(chunk, (status) => {
            const now = performance.now();
            inFlight = false;
            if (now <= until) {
              record(now - sentAt);
              if (status < 200 || status > 299) badStatus++;
            }
            send();
          }),
        );
        sock.on("error", () => {});
        sock.on("close", () => {
          if (performance.now() >= until) {
            resolveConn();
            return;
          }
          if (inFlight) errors++;
          inFlight = false;
          setTimeout(open, 10); // the server closed on us: reconnect and go on
        });
      };
      open();
    });

  const hardStop = setTimeout(() => process.exit(3), a.seconds * 1000 + 10_000);
  await Promise.all(Array.from({ length: a.connections }, runConnection));
  clearTimeout(hardStop);
  const seconds = (until - start) / 1000;
  const lat = latencies.subarray(0, requests);
  return {
    requests,
    seconds,
    errors,
    badStatus,
    p50Ms: percentile(lat, 50),
    p99Ms: percentile(lat, 99),
  };
}

// Run as a program (load.ts imports only the type, which is erased).
runNodeLoad(JSON.parse(process.argv[2] ?? "{}") as NodeLoadArgs).then(
  (r) => {
    console.log(JSON.stringify(r));
    process.exit(0);
  },
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
