/**
 * The WebSocket transport ceiling of the transports bench: a bare `ws` server on `/kms/ws` that
 * parses each text frame `{"id","kmsMessage"}` (as the KMS's binding does) and answers it at once
 * with `{"id": <same>, "kmsMessage": <a fixed ping-sized reply>}`: what one Node process can do
 * with the `ws` library and this framing, with no KMS behind it. Prints "listening <port>" once
 * ready. Run pinned to the server core.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { WebSocketServer } from "ws";
import { PING_SIZED_REPLY } from "../lib/bare-reply.js";
import { KMS_WS_PATH } from "../lib/transports.js";

const server = http.createServer((_req, res) => res.writeHead(404).end());
const wss = new WebSocketServer({ server, path: KMS_WS_PATH, perMessageDeflate: false, maxPayload: 1 << 20 });
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    if (isBinary) return ws.close(1003);
    const frame = JSON.parse(data.toString()) as { id: string; kmsMessage: string };
    ws.send(JSON.stringify({ id: frame.id, kmsMessage: PING_SIZED_REPLY }));
  });
});
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`listening ${(server.address() as AddressInfo).port}`);
});
process.once("SIGTERM", () => {
  for (const ws of wss.clients) ws.terminate();
  wss.close();
  server.close(() => process.exit(0));
});
