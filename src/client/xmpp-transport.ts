import { KmsProtocolError, KmsTransportError } from "./errors.js";
import type { KmsTransport } from "./transport.js";

/** The namespace of the KMS payloads over XMPP (§3). */
export const KMS_XMPP_NAMESPACE = "urn:x-keyward:kms:1";

/** One IQ request: a single payload element `<name xmlns=…>text</name>` to `to`. */
export interface XmppIqRequest {
  readonly type: "get" | "set";
  readonly to: string;
  readonly name: string;
  readonly xmlns: string;
  readonly text?: string;
}

/** The reply to an {@link XmppIqRequest}. */
export type XmppIqReply =
  | { readonly type: "result"; /** The text of the reply's payload element of the same name and namespace, if present. */ readonly text?: string }
  | { readonly type: "error"; /** The RFC 6120 condition, e.g. `service-unavailable`. */ readonly condition: string };

/**
 * What {@link XmppTransport} needs from the application's own XMPP connection: send an IQ and wait
 * for its reply, and say when the connection is gone. {@link xmppJsConnection} adapts an xmpp.js
 * client; any other XMPP library (Strophe, Stanza, a native bridge) can be adapted the same way.
 *
 * @example
 * const connection: XmppConnection = xmppJsConnection(xmppClient, xml);
 */
export interface XmppConnection {
  /**
   * Sends the IQ and resolves with its reply. Rejects only when it could not be sent, or when the
   * library gave up waiting after `timeoutMs` (the transport keeps its own timer too).
   */
  iq(request: XmppIqRequest, timeoutMs: number): Promise<XmppIqReply>;
  /** True while the connection can send. */
  isOnline(): boolean;
  /** Calls `listener` whenever the connection drops; returns the unsubscribe function. */
  onDisconnect(listener: () => void): () => void;
}

/** An xmpp.js element, structurally: just what the adapter reads. */
export interface XmppJsElementLike {
  readonly attrs: Readonly<Record<string, string | undefined>>;
  getChild(name: string, xmlns?: string): XmppJsElementLike | undefined;
  getChildElements?(): XmppJsElementLike[];
  readonly name?: string;
  text(): string;
}

/** An xmpp.js client (`@xmpp/client`), structurally: the application's own connected client. */
export interface XmppJsClientLike {
  readonly status: string;
  readonly iqCaller: { request(stanza: never, timeout?: number): Promise<XmppJsElementLike> };
  on(event: string, listener: () => void): unknown;
  removeListener(event: string, listener: () => void): unknown;
}

/** xmpp.js's `xml` element factory, structurally (`import { xml } from "@xmpp/client"`). */
export type XmppJsXml = (name: string, attrs: Record<string, string>, ...children: never[]) => unknown;

/**
 * Adapts an xmpp.js client (`@xmpp/client`) and its `xml` factory to {@link XmppConnection}. The
 * SDK takes both from the application, so it has no dependency on xmpp.js itself.
 *
 * @example
 * import { client, xml } from "@xmpp/client";
 * const xmpp = client({ service: "xmpps://chat.example.com", username: "alice", password });
 * await xmpp.start();
 * const transport = new XmppTransport({ connection: xmppJsConnection(xmpp, xml), to: "kms.example.com" });
 */
export function xmppJsConnection(client: XmppJsClientLike, xml: XmppJsXml): XmppConnection {
  return {
    isOnline: () => client.status === "online",
    onDisconnect(listener) {
      const l = () => listener();
      // "disconnect": the socket closed (server gone, network); "offline": the application stopped it.
      client.on("disconnect", l);
      client.on("offline", l);
      return () => {
        client.removeListener("disconnect", l);
        client.removeListener("offline", l);
      };
    },
    async iq(request, timeoutMs) {
      // Children typed `never` so that any library's element type fits; xmpp.js takes strings and elements.
      const payload = request.text === undefined ? xml(request.name, { xmlns: request.xmlns }) : xml(request.name, { xmlns: request.xmlns }, request.text as never);
      const stanza = xml("iq", { type: request.type, to: request.to }, payload as never);
      let reply: XmppJsElementLike;
      try {
        reply = await client.iqCaller.request(stanza as never, timeoutMs);
      } catch (e) {
        // xmpp.js rejects a type='error' reply with a StanzaError carrying the condition.
        const condition = (e as { condition?: unknown }).condition;
        if (typeof condition === "string" && (e as { name?: unknown }).name === "StanzaError") return { type: "error", condition };
        throw e;
      }
      // RFC 6120 §8.1.2.1: the reply comes from the address the request went to; xmpp.js matches by id only.
      const from = reply.attrs.from;
      if (from !== undefined && from.toLowerCase() !== request.to.toLowerCase()) throw new Error(`the reply came from ${from}, not ${request.to}`);
      const child = reply.getChild(request.name, request.xmlns);
      return child === undefined ? { type: "result" } : { type: "result", text: child.text() };
    },
  };
}

export interface XmppTransportOptions {
  /** The application's XMPP connection (see {@link xmppJsConnection}). */
  readonly connection: XmppConnection;
  /** The KMS component's JID, e.g. `kms.example.com`. */
  readonly to: string;
  /** How long to wait for each reply (default 30 s). */
  readonly timeoutMs?: number;
  /**
   * The XMPP server's stanza size limit for this client's stream (Prosody: `c2s_stanza_size_limit`,
   * 256 KiB by default). A larger message is refused here (`ERR_TRANSPORT`), before it is sent:
   * the server would close the whole XMPP connection. Default 256 KiB.
   */
  readonly maxStanzaBytes?: number;
}

/** Prosody's default `c2s_stanza_size_limit`. */
const DEFAULT_MAX_STANZA_BYTES = 256 * 1024;
/** Room left for the IQ around the message: `<iq type='set' to=… id=…><kms xmlns=…>…</kms></iq>` (and the server's `from`). */
const IQ_ENVELOPE_BYTES = 1024;

/**
 * The XMPP binding of §3 for the SDK (draft use case 3.2: the XMPP service is the KMS transport):
 * each KMS message is an IQ `set` with `<kms xmlns='urn:x-keyward:kms:1'>` to the KMS component,
 * the reply its IQ result. Requests are pipelined (no batch form), each with its own timeout.
 *
 * Failures are {@link KmsTransportError}s, never hangs: `ERR_TRANSPORT_TIMEOUT` when no reply came
 * in time, `ERR_TRANSPORT_CLOSED` when the connection is down or drops with the request in flight,
 * `ERR_TRANSPORT` for a stanza error (or a result without a `kms` payload). The XMPP server is
 * untrusted: the reply is checked by the client like any other (signature, requestId, §4).
 *
 * @example
 * const kms = new KmsClient({
 *   transport: new XmppTransport({ connection: xmppJsConnection(xmpp, xml), to: "kms.example.com" }),
 *   user: "alice@example.com", token, trustRoots: [caPem],
 * });
 * await kms.ping();
 */
export class XmppTransport implements KmsTransport {
  private readonly connection: XmppConnection;
  private readonly to: string;
  private readonly timeoutMs: number;
  private readonly maxStanzaBytes: number;
  /** The requests in flight: each one's way to fail when the connection drops. */
  private readonly inFlight = new Set<() => void>();
  private subscribed = false;

  constructor(options: XmppTransportOptions) {
    this.connection = options.connection;
    this.to = options.to;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxStanzaBytes = options.maxStanzaBytes ?? DEFAULT_MAX_STANZA_BYTES;
  }

  async send(message: string): Promise<string> {
    const bytes = new TextEncoder().encode(message).length + new TextEncoder().encode(this.to).length + IQ_ENVELOPE_BYTES;
    if (bytes > this.maxStanzaBytes) {
      throw new KmsTransportError("ERR_TRANSPORT", `the message is too large for the XMPP transport (${bytes} bytes as an IQ; the stanza limit is ${this.maxStanzaBytes})`);
    }
    const reply = await this.request({ type: "set", to: this.to, name: "kms", xmlns: KMS_XMPP_NAMESPACE, text: message });
    if (reply === undefined) throw new KmsTransportError("ERR_TRANSPORT", "the KMS component's IQ result carries no kms payload");
    return reply;
  }

  async discover(): Promise<unknown> {
    const text = await this.request({ type: "get", to: this.to, name: "discovery", xmlns: KMS_XMPP_NAMESPACE });
    try {
      if (text === undefined) throw new Error();
      return JSON.parse(text) as unknown;
    } catch {
      throw new KmsProtocolError("ERR_DISCOVERY", "the KMS component's discovery reply is not a JSON document");
    }
  }

  /** One IQ, raced against its timeout and the connection dropping; returns the payload's text. */
  private request(request: XmppIqRequest): Promise<string | undefined> {
    if (!this.connection.isOnline()) {
      return Promise.reject(new KmsTransportError("ERR_TRANSPORT_CLOSED", "the XMPP connection is not online"));
    }
    if (!this.subscribed) {
      // One listener for the transport's lifetime (not one per request: pipelines are long).
      this.subscribed = true;
      this.connection.onDisconnect(() => {
        for (const drop of [...this.inFlight]) drop();
      });
    }
    return new Promise((resolve, reject) => {
      let settled = false;
      const finish = (f: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.inFlight.delete(dropped);
        f();
      };
      const timer = setTimeout(
        () => finish(() => reject(new KmsTransportError("ERR_TRANSPORT_TIMEOUT", `no reply from ${this.to} within ${this.timeoutMs} ms`))),
        this.timeoutMs,
      );
      const dropped = () => finish(() => reject(new KmsTransportError("ERR_TRANSPORT_CLOSED", "the XMPP connection closed with the request in flight")));
      this.inFlight.add(dropped);
      // The library's own wait a little longer than ours, so that ours decides (and its entry is freed).
      this.connection.iq(request, this.timeoutMs + 1_000).then(
        (reply) =>
          finish(() => {
            if (reply.type === "error") reject(new KmsTransportError("ERR_TRANSPORT", `${this.to} answered the IQ with the stanza error ${reply.condition}`));
            else resolve(reply.text);
          }),
        (e: unknown) =>
          finish(() => {
            const closed = !this.connection.isOnline();
            const why = e instanceof Error ? e.message : String(e);
            reject(new KmsTransportError(closed ? "ERR_TRANSPORT_CLOSED" : "ERR_TRANSPORT", `the IQ to ${this.to} failed: ${why}`));
          }),
      );
    });
  }
}
