/**
 * Load-generator clients for the KMS's three transports (PROTOCOL.md §3), all behind the same
 * `PostClient` the closed-loop phase runner drives (`lib/load.ts`): one compact JOSE message in,
 * the reply's compact JOSE out, so every load generator checks replies the same way whatever
 * carried them.
 *   - http: the hand-parsed keep-alive sockets of `raw-http.ts`, one connection per slot;
 *   - ws:   `connections` WebSocket connections to `/kms/ws`, frames `{"id","kmsMessage"}`, slots
 *           spread over them round robin, replies matched by `id` (several in flight per connection);
 *   - xmpp: `connections` `@xmpp/client` sessions (one user, one resource each) sending `kms` IQs to
 *           the KMS component, pipelined (several IQs in flight per session), replies matched by IQ id.
 * A transport-level success is reported as status 200 with the KMS reply as body; a transport
 * failure (a stanza error, a closed socket, no reply within the timeout) rejects.
 */
import { client as xmppClient, xml, type Client as XmppClient } from "@xmpp/client";
import WebSocket from "ws";
import { rawClient, type PostClient, type SimpleResponse } from "./raw-http.js";
import { JOSE_TYPE, MESSAGES_PATH } from "./kms-session.js";

/** The XML namespace of the KMS payloads over XMPP (§3). */
export const KMS_XMPP_NS = "urn:x-keyward:kms:1";
/** The WebSocket path of the KMS (§3). */
export const KMS_WS_PATH = "/kms/ws";

export type TransportKind = "http" | "ws" | "xmpp";

/** Where and how a load generator reaches a server (the KMS, or a bare reference server). */
export type TransportTarget =
  | { readonly kind: "http"; readonly host: string; readonly port: number; readonly path?: string }
  | { readonly kind: "ws"; readonly url: string; readonly connections: number }
  | {
      readonly kind: "xmpp";
      /** `xmpp://127.0.0.1:<c2s port>`. */
      readonly service: string;
      readonly domain: string;
      readonly username: string;
      readonly password: string;
      /** The JID the IQs go to (the KMS component, or a bare echo component). */
      readonly to: string;
      readonly connections: number;
    };

/** How a target is laid out, for tables: "32 conn × 1", "4 conn × 8". */
export function shapeOf(target: TransportTarget, inFlight: number): string {
  const conns = target.kind === "http" ? inFlight : Math.min(target.connections, inFlight);
  return `${conns} conn × ${fmtPer(inFlight / conns)}`;
}
const fmtPer = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(1));

/** Wraps a client so that a reply that never comes becomes an error, not a hung worker. */
export function withTimeout(inner: PostClient, timeoutMs = 30_000): PostClient {
  return {
    post: (slot, body) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no reply within ${timeoutMs / 1000} s (slot ${slot})`)), timeoutMs);
        inner.post(slot, body).then(
          (r) => (clearTimeout(timer), resolve(r)),
          (e: unknown) => (clearTimeout(timer), reject(e instanceof Error ? e : new Error(String(e)))),
        );
      }),
    close: () => inner.close(),
  };
}

/**
 * A connected client for `slots` requests in flight (slot = the phase runner's worker index).
 *
 * @example
 * const client = await connectTransport({ kind: "ws", url: "ws://127.0.0.1:8080/kms/ws", connections: 4 }, 32);
 * const reply = await client.post(0, compactJwe);
 * await client.close();
 */
export async function connectTransport(target: TransportTarget, slots: number, timeoutMs = 30_000): Promise<PostClient> {
  switch (target.kind) {
    case "http":
      return withTimeout(rawClient(target.host, target.port, target.path ?? MESSAGES_PATH, JOSE_TYPE, slots), timeoutMs);
    case "ws":
      return withTimeout(await wsClient(target.url, Math.min(target.connections, slots)), timeoutMs);
    case "xmpp":
      return withTimeout(await xmppIqClient(target, Math.min(target.connections, slots)), timeoutMs);
  }
}

/** One WebSocket connection with any number of frames in flight, replies matched by id. */
class WsConnection {
  private readonly pending = new Map<string, (r: SimpleResponse | Error) => void>();
  private seq = 0;

  private constructor(private readonly ws: WebSocket, private readonly tag: string) {
    ws.on("message", (data, isBinary) => {
      if (isBinary) return this.failAll(new Error("binary frame from the server"));
      let frame: { id?: unknown; kmsMessage?: unknown };
      try {
        frame = JSON.parse(data.toString()) as typeof frame;
      } catch {
        return this.failAll(new Error("a reply frame that is not JSON"));
      }
      const done = typeof frame.id === "string" ? this.pending.get(frame.id) : undefined;
      if (!done) return this.failAll(new Error(`a reply frame with an unknown id (${String(frame.id)})`));
      this.pending.delete(frame.id as string);
      done(typeof frame.kmsMessage === "string" ? { status: 200, body: Buffer.from(frame.kmsMessage, "latin1") } : new Error("a reply frame without kmsMessage"));
    });
    ws.on("close", (code) => this.failAll(new Error(`WebSocket closed by the server (${code})`)));
    ws.on("error", (e) => this.failAll(e));
  }

  static open(url: string, tag: string): Promise<WsConnection> {
    const ws = new WebSocket(url, "keyward.kms.v1", { perMessageDeflate: false });
    return new Promise((resolve, reject) => {
      ws.once("open", () => resolve(new WsConnection(ws, tag)));
      ws.once("error", reject);
    });
  }

  post(body: string): Promise<SimpleResponse> {
    const id = `${this.tag}-${this.seq++}`;
    return new Promise((resolve, reject) => {
      this.pending.set(id, (r) => (r instanceof Error ? reject(r) : resolve(r)));
      this.ws.send(`{"id":"${id}","kmsMessage":"${body}"}`);
    });
  }

  private failAll(e: Error): void {
    const list = [...this.pending.values()];
    this.pending.clear();
    for (const p of list) p(e);
  }

  close(): void {
    this.ws.removeAllListeners("close");
    this.ws.terminate();
  }
}

/** `connections` WebSocket connections; slot s uses connection s mod connections. */
async function wsClient(url: string, connections: number): Promise<PostClient> {
  const conns = await Promise.all(Array.from({ length: connections }, (_, i) => WsConnection.open(url, `c${i}`)));
  return {
    post: (slot, body) => conns[slot % conns.length]!.post(body),
    close: () => conns.forEach((c) => c.close()),
  };
}

/** One logged-in xmpp.js session (PLAIN on loopback, as test/helpers/xmpp-client.ts does; no reconnect). */
async function xmppSession(t: Extract<TransportTarget, { kind: "xmpp" }>, resource: string): Promise<XmppClient> {
  const xmpp = xmppClient({
    service: t.service,
    domain: t.domain,
    resource,
    // PLAIN on loopback: xmpp.js's SCRAM-SHA-1 runs 10,000 PBKDF2 rounds in JavaScript per login.
    credentials: (authenticate: (creds: { username: string; password: string }, mechanism: string) => Promise<void>) =>
      authenticate({ username: t.username, password: t.password }, "PLAIN"),
  });
  xmpp.reconnect.stop();
  xmpp.on("error", () => {}); // failures surface as rejected IQs
  await xmpp.start();
  return xmpp;
}

/** `connections` XMPP sessions sending `kms` IQs to `t.to`, pipelined; slot s uses session s mod connections. */
async function xmppIqClient(t: Extract<TransportTarget, { kind: "xmpp" }>, connections: number): Promise<PostClient> {
  const stamp = `${process.pid}-${Date.now().toString(36)}`;
  const sessions = await Promise.all(Array.from({ length: connections }, (_, i) => xmppSession(t, `bench-${stamp}-${i}`)));
  return {
    post: async (slot, body) => {
      const xmpp = sessions[slot % sessions.length]!;
      // iqCaller matches the result by IQ id; a stanza error rejects (a transport failure, not a KMS reply).
      const result = await xmpp.iqCaller.request(xml("iq", { type: "set", to: t.to }, xml("kms", { xmlns: KMS_XMPP_NS }, body)), 60_000);
      const kms = result.getChild("kms", KMS_XMPP_NS);
      if (!kms) throw new Error("IQ result without a kms element");
      return { status: 200, body: Buffer.from(kms.text(), "latin1") };
    },
    close: async () => {
      await Promise.all(sessions.map((s) => s.stop().catch(() => {})));
    },
  };
}
