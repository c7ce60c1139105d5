/**
 * The reference point of the channel bench: a bare node:http server that reads each POST body in
 * full (as Keyward's HTTP binding does) and answers a fixed compact-JWE-sized body with the same
 * headers Keyward sends. Prints "listening <port>" once ready. Run pinned to the server core.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { PING_SIZED_REPLY } from "../lib/bare-reply.js";

const BODY = PING_SIZED_REPLY;
const LENGTH = String(Buffer.byteLength(BODY));

const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    Buffer.concat(chunks).toString("utf8");
    res.writeHead(200, { "content-type": "application/jose", "content-length": LENGTH, "cache-control": "no-store" });
    res.end(BODY);
  });
});
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`listening ${(server.address() as AddressInfo).port}`);
});
process.once("SIGTERM", () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
