import { WEBSOCKET_PATH, WEBSOCKET_SUBPROTOCOL } from "../protocol/constants.js";
import { KmsTransportError } from "./errors.js";
import { HttpTransport, type KmsTransport } from "./transport.js";

/** The part of the WebSocket API (WHATWG; also `ws`'s WebSocket in Node) the transport uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "close" | "error", listener: () => void): void;
  addEventListener(type: "message", listener: (event: { readonly data: unknown }) => void): void;
}

/** A WebSocket constructor: the browser's global `WebSocket`, or `ws`'s in Node. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface WebSocketTransportOptions {
  /**
   * The KMS's HTTP origin (`https://kms.example.com`: the socket is `wss://kms.example.com/kms/ws`),
   * or a `ws:`/`wss:` URL used as is (discovery then uses the matching http(s) origin).
   */
  readonly url: string;
  /** Default: the global `WebSocket` (browsers, Node ≥ 22). */
  readonly WebSocket?: WebSocketConstructor;
  /** For `discover()` (HTTP GET `/.well-known/kms`); default: the global fetch. */
  readonly fetch?: typeof fetch;
  /** A request with no reply after this long rejects with ERR_TRANSPORT_TIMEOUT (ms; default 30 s). */
  readonly requestTimeoutMs?: number;
}

interface Pending {
  resolve(reply: string): void;
  reject(error: Error): void;
  readonly timer: ReturnType<typeof setTimeout>;
  /** The socket the request went out on, once sent. */
  socket?: WebSocketLike;
}

/** `WebSocket.OPEN` of the WHATWG API (the constructor may not carry the constant). */
const OPEN = 1;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

/**
 * The WebSocket binding (§3) for the SDK: one socket, opened on the first request, offering the
 * subprotocol `keyward.kms.v1`; requests are pipelined as frames `{id, kmsMessage}` with fresh
 * ids and replies matched by `id` (a reply with an unknown id is ignored: KmsClient still checks
 * the `requestId` inside, §4). When the socket closes, every request in flight rejects with
 * `KmsTransportError` `ERR_TRANSPORT_CLOSED`, and the next request opens a new socket; the secure
 * channel is not the socket's, so it survives reconnects. Isomorphic: the WebSocket constructor
 * is injected.
 *
 * @example
 * import { WebSocket } from "ws"; // in Node 20; browsers have a global WebSocket
 * const transport = new WebSocketTransport({ url: "https://kms.example.com", WebSocket });
 * const kms = new KmsClient({ transport, user: "alice@example.com", token, trustRoots: [caPem] });
 * await kms.ping();
 * transport.close();
 */
export class WebSocketTransport implements KmsTransport {
  private readonly socketUrl: string;
  private readonly discovery: HttpTransport;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly timeoutMs: number;
  private socket?: WebSocketLike;
  private opening?: Promise<WebSocketLike>;
  private openingSocket?: WebSocketLike;
  private readonly pending = new Map<string, Pending>();
  private nextId = 0;

  constructor(options: WebSocketTransportOptions) {
    const url = new URL(options.url);
    const secure = url.protocol === "https:" || url.protocol === "wss:";
    if (!["http:", "https:", "ws:", "wss:"].includes(url.protocol)) throw new TypeError(`WebSocketTransport needs an http(s) or ws(s) URL, not ${url.protocol}`);
    const isWs = url.protocol === "ws:" || url.protocol === "wss:";
    this.socketUrl = isWs ? url.href : `${secure ? "wss" : "ws"}://${url.host}${WEBSOCKET_PATH}`;
    this.discovery = new HttpTransport(`${secure ? "https" : "http"}://${url.host}`, options.fetch ?? globalThis.fetch.bind(globalThis));
    const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!impl) throw new TypeError("no WebSocket constructor: pass `WebSocket` (e.g. the `ws` package's in Node 20)");
    this.WebSocketImpl = impl;
    this.timeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /**
   * The socket URL (`ws(s)://…/kms/ws`).
   *
   * @example
   * new WebSocketTransport({ url: "https://kms.example.com", WebSocket }).url; // "wss://kms.example.com/kms/ws"
   */
  get url(): string {
    return this.socketUrl;
  }

  /**
   * Sends one compact JOSE message and resolves with the KMS's reply to it; rejects with
   * KmsTransportError (ERR_TRANSPORT_CLOSED, ERR_TRANSPORT_TIMEOUT, ERR_TRANSPORT when the socket
   * cannot be opened).
   *
   * @example
   * const reply = await transport.send(compactJwe);
   */
  send(message: string): Promise<string> {
    const id = String(++this.nextId);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(new KmsTransportError("ERR_TRANSPORT_TIMEOUT", `no reply from the KMS within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.connect().then(
        (socket) => {
          const pending = this.pending.get(id);
          if (!pending) return; // timed out while connecting
          try {
            pending.socket = socket;
            socket.send(JSON.stringify({ id, kmsMessage: message }));
          } catch {
            this.settle(id, new KmsTransportError("ERR_TRANSPORT_CLOSED", "the WebSocket closed before the request was sent"));
          }
        },
        (e: Error) => this.settle(id, e),
      );
    });
  }

  /**
   * The KMS's `/.well-known/kms` document, over HTTP on the same origin.
   *
   * @example
   * const { uri, jwk } = (await transport.discover()) as { uri: string; jwk: JsonWebKey };
   */
  discover(): Promise<unknown> {
    return this.discovery.discover();
  }

  /**
   * Closes the socket; requests in flight reject with ERR_TRANSPORT_CLOSED. A later request
   * reconnects. KmsClient.close() does not close its transport: call this too (an open socket
   * keeps a Node process alive).
   *
   * @example
   * await kms.close(); transport.close();
   */
  close(): void {
    for (const socket of [this.socket, this.openingSocket]) {
      if (socket) socket.close(1000);
    }
    this.socket = undefined;
    this.failAll(() => true);
  }

  private connect(): Promise<WebSocketLike> {
    if (this.socket && this.socket.readyState === OPEN) return Promise.resolve(this.socket);
    this.opening ??= new Promise<WebSocketLike>((resolve, reject) => {
      let socket: WebSocketLike;
      try {
        socket = new this.WebSocketImpl(this.socketUrl, [WEBSOCKET_SUBPROTOCOL]);
      } catch (e) {
        // e.g. a browser refusing ws: from an https: page; the next request tries again.
        queueMicrotask(() => (this.opening = undefined));
        reject(new KmsTransportError("ERR_TRANSPORT", `could not open the WebSocket to ${this.socketUrl}: ${e instanceof Error ? e.message : String(e)}`));
        return;
      }
      this.openingSocket = socket;
      let open = false;
      socket.addEventListener("open", () => {
        open = true;
        this.socket = socket;
        this.opening = undefined;
        this.openingSocket = undefined;
        resolve(socket);
      });
      socket.addEventListener("message", (event) => this.onMessage(event.data));
      // "error" is always followed by "close"; the browser API says nothing more (no HTTP status).
      socket.addEventListener("error", () => {});
      socket.addEventListener("close", () => {
        if (!open) {
          if (this.openingSocket === socket) {
            this.opening = undefined;
            this.openingSocket = undefined;
          }
          reject(new KmsTransportError("ERR_TRANSPORT", `could not open the WebSocket to ${this.socketUrl}`));
          return;
        }
        if (this.socket === socket) this.socket = undefined;
        this.failAll((p) => p.socket === socket);
      });
    });
    return this.opening;
  }

  private onMessage(data: unknown): void {
    if (typeof data !== "string") return;
    let frame: unknown;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (typeof frame !== "object" || frame === null) return;
    const { id, kmsMessage } = frame as { id?: unknown; kmsMessage?: unknown };
    if (typeof id !== "string" || typeof kmsMessage !== "string") return;
    const pending = this.pending.get(id);
    if (!pending) return; // not ours (any more): ignored
    this.pending.delete(id);
    clearTimeout(pending.timer);
    pending.resolve(kmsMessage);
  }

  private settle(id: string, error: Error): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    pending.reject(error);
  }

  /** A socket is gone: nothing sent on it will be answered. */
  private failAll(which: (p: Pending) => boolean): void {
    for (const [id, pending] of [...this.pending]) {
      if (which(pending)) this.settle(id, new KmsTransportError("ERR_TRANSPORT_CLOSED", "the WebSocket to the KMS closed with the request in flight"));
    }
  }
}
