/**
 * The ceiling: a bare node:http server that answers every request with a constant;
 * a request with a body is read to its end first (so PUT ceilings carry the same upload).
 * Usage: node --import tsx tests/bench/ceiling.ts PORT
 */

import { createServer } from "node:http";

const port = Number(process.argv[2]);
const answer = Buffer.from("0123456789");

const server = createServer((req, res) => {
  const length = req.headers["content-length"];
  if (req.headers["transfer-encoding"] === undefined && (length === undefined || length === "0")) {
    res.end(answer);
    return;
  }
  req.on("data", () => {});
  req.on("end", () => res.end(answer));
});
server.listen(port, "127.0.0.1", () => console.log(`event=listening port=${port}`));
for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
