/**
 * Raw HTTP over a TCP socket, for requests a well-behaved client would not
 * send (unencoded paths, `Expect` without a body, malformed framing).
 */
import { connect } from "node:net";

/** What came back on the socket before it closed (or before `timeoutMs`). */
export interface RawAnswer {
  status: number;
  head: string;
  body: string;
  raw: string;
}

/** Writes `request` as is, reads until the server closes or `timeoutMs` passes, and splits the first answer. */
export function rawRequest(port: number, request: string | Buffer, timeoutMs = 2_000): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let raw = "";
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(parseAnswer(raw));
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      raw += chunk.toString("latin1");
      const answer = parseAnswer(raw);
      const length = /\r\ncontent-length: *(\d+)/i.exec(answer.head);
      if (answer.status && length && Buffer.byteLength(answer.body, "latin1") >= Number(length[1])) finish();
    });
    socket.on("end", finish);
    socket.on("error", (error) => (raw ? finish() : reject(error)));
    socket.write(request);
  });
}

function parseAnswer(raw: string): RawAnswer {
  const end = raw.indexOf("\r\n\r\n");
  const head = end < 0 ? raw : raw.slice(0, end);
  const body = end < 0 ? "" : raw.slice(end + 4);
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0);
  return { status, head, body, raw };
}
