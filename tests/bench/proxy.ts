/**
 * A counting HTTP proxy put between a follower and its leader: it forwards every
 * request and counts requests, their times, and the bytes on the follower's sockets
 * (request and response, headers included), to measure the cost of an idle tick.
 */

import { Agent, createServer, request as httpRequest } from "node:http";
import type { Socket } from "node:net";

/** Counters of a CountingProxy at one instant. */
export interface ProxyCounts {
  requests: number;
  bytes: number;
  /** performance.now() of each request's arrival. */
  times: number[];
  /** method and path of each request, in order. */
  paths: string[];
}

/** A running proxy: its port, a snapshot of its counters, and close(). */
export interface CountingProxy {
  port: number;
  counts(): ProxyCounts;
  close(): Promise<void>;
}

/** Starts a proxy on 127.0.0.1 (free port) that forwards to 127.0.0.1:`targetPort`. */
export function startCountingProxy(targetPort: number): Promise<CountingProxy> {
  const agent = new Agent({ keepAlive: true });
  const sockets = new Set<Socket>();
  let closedBytes = 0;
  const times: number[] = [];
  const paths: string[] = [];
  const server = createServer((req, res) => {
    times.push(performance.now());
    paths.push(`${req.method} ${req.url}`);
    const up = httpRequest(
      { host: "127.0.0.1", port: targetPort, method: req.method, path: req.url, headers: req.headers, agent },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on("error", () => {
      if (!res.headersSent) res.writeHead(502);
      res.end("proxy: leader unreachable\n");
    });
    req.pipe(up);
  });
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.on("close", () => {
      closedBytes += s.bytesRead + s.bytesWritten;
      sockets.delete(s);
    });
  });
  return new Promise((res) => {
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      res({
        port,
        counts: () => {
          let bytes = closedBytes;
          for (const s of sockets) bytes += s.bytesRead + s.bytesWritten;
          return { requests: times.length, bytes, times: [...times], paths: [...paths] };
        },
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
            agent.destroy();
          }),
      });
    });
  });
}
