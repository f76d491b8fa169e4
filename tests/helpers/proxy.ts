/**
 * A counting TCP proxy on loopback, for measuring what a follower sends to
 * and receives from its leader: bytes in both directions, connections, and
 * the HTTP exchanges (a request line and everything after it on the same
 * connection until the next request line). Closed by `stopAll` at the latest.
 * The suites (tests/replication.test.ts) and the bench's idle-tick figure
 * (tests/bench/replication.ts) both measure with it.
 */
import { once } from "node:events";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { onStopAll } from "./mehdb.ts";

/** One HTTP request and its answer, as seen on the wire. */
export interface Exchange {
  /** `GET /keys?since=… HTTP/1.1` */
  requestLine: string;
  /** `performance.now()` when the request line was seen. */
  at: number;
  /** Bytes from the client: the request (and anything it sent before the next request). */
  bytesUp: number;
  /** Bytes from the server until the next request on this connection. */
  bytesDown: number;
}

/** A running proxy; close it with {@link CountingProxy.close}. */
export interface CountingProxy {
  /** `http://127.0.0.1:PORT`, to use in place of the target's address. */
  url: string;
  port: number;
  /** Connections accepted so far. */
  connections(): number;
  /** Every exchange so far, oldest first. */
  exchanges(): readonly Exchange[];
  /** Total bytes so far, in each direction. */
  bytes(): { up: number; down: number };
  /** `performance.now()` of the last byte seen in either direction. */
  lastActivity(): number;
  close(): Promise<void>;
}

const REQUEST_LINE = /(?:^|\r\n)((?:GET|HEAD|PUT|DELETE|POST|OPTIONS|PATCH) \S+ HTTP\/1\.[01])\r\n/g;

/**
 * Starts a proxy on 127.0.0.1 (a free port) that forwards every connection to `127.0.0.1:targetPort`, until
 * it is closed or `stopAll` runs.
 */
export async function startCountingProxy(targetPort: number): Promise<CountingProxy> {
  const all: Exchange[] = [];
  const sockets = new Set<Socket>();
  let connections = 0;
  let up = 0;
  let down = 0;
  let last = performance.now();

  const server: Server = createServer((client) => {
    connections++;
    const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
    sockets.add(client);
    sockets.add(upstream);
    let current: Exchange | null = null;
    let tail = "";
    client.on("data", (chunk: Buffer) => {
      up += chunk.length;
      last = performance.now();
      // Find request lines (one may be split across chunks: a short tail of the text is kept).
      // The whole chunk counts for the newest exchange it starts, or the current one.
      const text = tail + chunk.toString("latin1");
      let end = 0;
      for (const { 0: whole, 1: requestLine = "", index } of text.matchAll(REQUEST_LINE)) {
        const exchange = { requestLine, at: last, bytesUp: 0, bytesDown: 0 };
        all.push(exchange);
        current = exchange;
        end = index + whole.length;
      }
      if (current !== null) current.bytesUp += chunk.length;
      tail = text.slice(Math.max(end, text.length - 200));
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      down += chunk.length;
      last = performance.now();
      if (current !== null) current.bytesDown += chunk.length;
      client.write(chunk);
    });
    const finish = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    client.on("error", finish);
    upstream.on("error", finish);
    client.on("close", finish);
    upstream.on("close", finish);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  const close = async () => {
    const closed = new Promise((resolve) => server.close(resolve)); // resolves (with an error) if already closed
    for (const socket of sockets) socket.destroy();
    await closed;
  };
  onStopAll(close);
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    connections: () => connections,
    exchanges: () => all,
    bytes: () => ({ up, down }),
    lastActivity: () => last,
    close,
  };
}
