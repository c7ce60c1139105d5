import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { WebSocket } from "ws";
import { KmsClient, WebSocketTransport, type KmsClientOptions } from "../../src/client/index.js";
import type { TestKms } from "./harness.js";

/** The SDK transports a suite can run over. */
export type TransportKind = "http" | "ws";
export const TRANSPORT_KINDS: readonly TransportKind[] = ["http", "ws"];

/** A WebSocketTransport to a TestKms (Node 20 has no global WebSocket: `ws`'s is injected). */
export function wsTransport(kms: { url: string }, opts: { requestTimeoutMs?: number } = {}): WebSocketTransport {
  return new WebSocketTransport({ url: kms.url, WebSocket, ...opts });
}

/**
 * A KmsClient for `user` on a TestKms over the given transport: "http" is `kms.client(user)`,
 * "ws" the same client with a WebSocketTransport. For parametrizing suites over transports:
 *
 * @example
 * describe.each(TRANSPORT_KINDS)("groups over %s", (kind) => { ... kmsClient(kms, ALICE, kind) ... });
 */
export function kmsClient(kms: TestKms, user: string, kind: TransportKind, opts: Partial<KmsClientOptions> = {}): KmsClient {
  if (kind === "http") return kms.client(user, opts);
  return kms.client(user, { transport: wsTransport(kms), ...opts });
}

/**
 * A TCP relay on loopback in front of `target` (a `http://host:port` origin), so that a test can
 * cut every connection through it at once (`dropAll`), as a network failure or a KMS restart would.
 */
export async function startTcpRelay(target: string): Promise<{ url: string; dropAll(): void; close(): Promise<void> }> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<Socket>();
  const track = (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
    s.on("error", () => s.destroy());
  };
  const server: Server = createServer((client) => {
    const upstream = connect(Number(port), hostname);
    track(client);
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    client.once("close", () => upstream.destroy());
    upstream.once("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address() as AddressInfo;
  const dropAll = () => {
    for (const s of sockets) s.destroy();
  };
  return {
    url: `http://127.0.0.1:${address.port}`,
    dropAll,
    close: () =>
      new Promise<void>((resolve) => {
        dropAll();
        server.close(() => resolve());
      }),
  };
}
