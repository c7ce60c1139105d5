import { STATUS_CODES, type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { Counter, Gauge, type Registry } from "prom-client";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import { WEBSOCKET_PATH, WEBSOCKET_SUBPROTOCOL } from "../../protocol/constants.js";
import { CorsPolicy } from "../http/cors.js";

/** §3: frames processed at once per connection; further frames wait, unread, in the socket. */
const DEFAULT_FRAMES_IN_FLIGHT = 50;
/** §3: the KMS pings every 30 s and closes a connection that has not answered within 30 s. */
const DEFAULT_PING_INTERVAL_MS = 30_000;
const DEFAULT_PONG_TIMEOUT_MS = 30_000;
/** While the server is overloaded, a connection looks again this often whether it may go on. */
const DEFAULT_OVERLOAD_RETRY_MS = 50;
/** On shutdown, frames already read get this long to finish before connections are cut. */
const DEFAULT_CLOSE_GRACE_MS = 5_000;
/** §3: a frame `id` is a string of 1..64 characters. */
const MAX_ID_CHARACTERS = 64;

/** What the WebSocket binding needs from the rest of the server; it knows nothing else of it. */
export interface WsBindingOptions {
  /** The server core: one compact JOSE string in, one out (the same the HTTP binding uses). */
  handle(message: string): Promise<string>;
  /** The `Origin` check of the upgrade (config `corsOrigins`); default: any origin. */
  readonly cors?: CorsPolicy;
  /** A frame larger than this (bytes) closes the connection with 1009 (§10: 1 MiB). */
  readonly maxMessageBytes: number;
  /** Frames processed at once per connection (default 50). */
  readonly maxFramesInFlight?: number;
  /** Default 30 s; tests inject short ones. */
  readonly pingIntervalMs?: number;
  /** A ping unanswered this long terminates the connection (default 30 s). */
  readonly pongTimeoutMs?: number;
  /**
   * True while the server is overloaded (the event loop lags): new upgrades are refused with 429,
   * and open connections start no new frame until it passes (they stop reading their socket).
   */
  overloaded?(): boolean;
  readonly overloadRetryMs?: number;
  /** How long close() lets frames already read finish (default 5 s). */
  readonly closeGraceMs?: number;
  /** Registers `keyward_ws_connections` and `keyward_ws_frames_total` here when given. */
  readonly registry?: Registry;
  readonly logger?: Logger;
}

/** A client frame, as §3 defines it: `id` null when the frame had no valid one, `kmsMessage` absent when the frame is unusable. */
export interface ParsedFrame {
  readonly id: string | null;
  readonly kmsMessage?: string;
}

/**
 * Reads one client text frame (§3): a JSON object with `id` (a string of 1..64 characters) and
 * `kmsMessage` (a string). Other members are ignored, as unknown request fields are (§4). A frame
 * that is not such an object has no `kmsMessage`; its `id` is kept when it was a valid one.
 *
 * @example
 * parseFrame('{"id":"7","kmsMessage":"eyJ..."}') // { id: "7", kmsMessage: "eyJ..." }
 * parseFrame('{"id":"7","kmsMessage":42}')      // { id: "7" }
 * parseFrame("not json")                        // { id: null }
 */
export function parseFrame(text: string): ParsedFrame {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { id: null };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return { id: null };
  const { id, kmsMessage } = value as Record<string, unknown>;
  const validId = typeof id === "string" && id.length > 0 && [...id].length <= MAX_ID_CHARACTERS ? id : null;
  if (validId === null || typeof kmsMessage !== "string") return { id: validId };
  return { id: validId, kmsMessage };
}

/**
 * The WebSocket binding of §3, on the HTTP listener: `GET /kms/ws` upgrades (subprotocol
 * `keyward.kms.v1`, Origin checked against `corsOrigins`); each text frame `{id, kmsMessage}` is
 * handed to the core and answered with exactly one frame `{id, kmsMessage}`. At most 50 frames per
 * connection are in the core at once: beyond that the binding stops reading the socket, and reads
 * on as replies are written out, so a client that floods (or does not read its replies) fills its
 * own TCP window, not the server's memory. Nothing authenticates the socket: every message
 * authenticates in-band.
 *
 * @example
 * const ws = new WsBinding({ handle: (m) => core.handle(m), maxMessageBytes: 1 << 20 });
 * server.on("upgrade", (req, socket, head) => ws.handleUpgrade(req, socket, head));
 * await ws.close();
 */
export class WsBinding {
  private readonly wss: WebSocketServer;
  private readonly connections = new Set<Connection>();
  private readonly cors: CorsPolicy;
  private readonly frames?: Counter<"outcome">;
  private readonly refusals?: Counter<"status">;
  private closing?: Promise<void>;

  constructor(private readonly opts: WsBindingOptions) {
    this.cors = opts.cors ?? new CorsPolicy("*");
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload: opts.maxMessageBytes,
      // No compression: a small frame must not inflate past the limits, and nothing here is bulky.
      perMessageDeflate: false,
      handleProtocols: (offered) => (offered.has(WEBSOCKET_SUBPROTOCOL) ? WEBSOCKET_SUBPROTOCOL : false),
    });
    if (opts.registry) {
      const connections = this.connections;
      new Gauge({
        name: "keyward_ws_connections",
        help: "Open WebSocket connections",
        registers: [opts.registry],
        collect() {
          this.set(connections.size);
        },
      });
      this.frames = new Counter({ name: "keyward_ws_frames_total", help: "WebSocket frames answered, by outcome (message, invalid)", labelNames: ["outcome"], registers: [opts.registry] });
      this.refusals = new Counter({ name: "keyward_ws_upgrades_refused_total", help: "WebSocket upgrades refused, by HTTP status", labelNames: ["status"], registers: [opts.registry] });
    }
  }

  /**
   * Open connections.
   *
   * @example
   * metrics.set(ws.connectionCount);
   */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * The HTTP server's `upgrade` listener. Refuses, with an HTTP status and no upgrade: another
   * path (404), a shutting-down server (503), an Origin not allowed (403), an overloaded server
   * (429, `Retry-After: 1`), and a client that offers subprotocols but not `keyward.kms.v1` (400);
   * `ws` itself refuses a malformed handshake.
   *
   * @example
   * server.on("upgrade", (req, socket, head) => ws.handleUpgrade(req, socket, head));
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // Node's HTTP server removes its own error listener from an upgraded socket: a reset before
    // ws takes over must not become an uncaught exception.
    socket.on("error", () => socket.destroy());
    const path = (req.url ?? "/").split("?")[0];
    if (path !== WEBSOCKET_PATH) return this.refuse(socket, 404, "not found");
    if (this.closing) return this.refuse(socket, 503, "server shutting down");
    const origin = req.headers.origin;
    if (!this.cors.allows(origin)) return this.refuse(socket, 403, "origin not allowed");
    if (this.opts.overloaded?.()) return this.refuse(socket, 429, "KMS overloaded, retry later", { "retry-after": "1" });
    const offered = (req.headers["sec-websocket-protocol"] ?? "").split(",").map((p) => p.trim()).filter((p) => p !== "");
    if (offered.length > 0 && !offered.includes(WEBSOCKET_SUBPROTOCOL)) {
      return this.refuse(socket, 400, `this KMS speaks the subprotocol ${WEBSOCKET_SUBPROTOCOL} (or none)`);
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const connection = new Connection(ws, this.opts, (outcome) => this.frames?.inc({ outcome }));
      this.connections.add(connection);
      ws.once("close", () => this.connections.delete(connection));
      if (this.closing) connection.shutdown();
    });
  }

  /**
   * Refuses new upgrades, stops reading every connection, lets the frames already read finish
   * (up to `closeGraceMs`), then closes each connection with 1001 (going away).
   *
   * @example
   * await ws.close(); // then server.close() no longer waits on upgraded sockets
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const grace = this.opts.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS;
      await Promise.all([...this.connections].map((c) => c.shutdown(grace)));
      await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    })();
    return this.closing;
  }

  private refuse(socket: Duplex, status: number, message: string, headers: Record<string, string> = {}): void {
    this.refusals?.inc({ status: String(status) });
    this.opts.logger?.debug({ status, reason: message }, "websocket upgrade refused");
    if (!socket.writable) return void socket.destroy();
    const body = JSON.stringify({ error: message });
    const head = [
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}`,
      "Connection: close",
      "Content-Type: application/json",
      `Content-Length: ${Buffer.byteLength(body)}`,
      "Cache-Control: no-store",
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    ];
    socket.once("finish", () => socket.destroy());
    socket.end(`${head.join("\r\n")}\r\n\r\n${body}`);
  }
}

/** One WebSocket: frame queue, the in-flight bound, liveness. */
class Connection {
  private readonly queue: string[] = [];
  private inFlight = 0;
  private paused = false;
  /** Set once the connection takes no new frames (closing, closed, shut down). */
  private ended = false;
  private shuttingDown = false;
  private drained?: () => void;
  private readonly maxInFlight: number;
  private readonly pingTimer: NodeJS.Timeout;
  private pongTimer?: NodeJS.Timeout;
  private overloadTimer?: NodeJS.Timeout;

  constructor(
    private readonly ws: WebSocket,
    private readonly opts: WsBindingOptions,
    private readonly count: (outcome: "message" | "invalid") => void,
  ) {
    this.maxInFlight = opts.maxFramesInFlight ?? DEFAULT_FRAMES_IN_FLIGHT;
    ws.on("message", (data, isBinary) => this.onFrame(data, isBinary));
    ws.on("pong", () => {
      clearTimeout(this.pongTimer);
      this.pongTimer = undefined;
    });
    // ws closes the connection itself after an error (1009 over maxPayload, 1002, 1007 ...).
    ws.on("error", (e) => opts.logger?.debug({ err: e.message }, "websocket error"));
    ws.once("close", () => this.dispose());
    this.pingTimer = setInterval(() => this.ping(), opts.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS);
    this.pingTimer.unref();
  }

  /** Stops reading, finishes what was read (at most `graceMs`), closes with 1001. */
  shutdown(graceMs = DEFAULT_CLOSE_GRACE_MS): Promise<void> {
    this.shuttingDown = true;
    this.setPaused(true);
    return new Promise<void>((resolve) => {
      if (this.ws.readyState === WebSocket.CLOSED) return resolve();
      this.ws.once("close", () => resolve());
      const cut = setTimeout(() => this.ws.terminate(), graceMs);
      cut.unref();
      this.ws.once("close", () => clearTimeout(cut));
      const goAway = () => {
        this.ended = true;
        // Read again: the peer's Close frame must get through (frames after it are ignored).
        this.setPaused(false);
        if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1001, "server shutting down");
      };
      if (this.inFlight === 0 && this.queue.length === 0) goAway();
      else {
        this.drained = goAway;
        this.pump();
      }
    });
  }

  private ping(): void {
    if (this.ws.readyState !== WebSocket.OPEN || this.pongTimer) return;
    this.pongTimer = setTimeout(() => {
      this.opts.logger?.debug("websocket ping unanswered: connection terminated");
      this.ws.terminate();
    }, this.opts.pongTimeoutMs ?? DEFAULT_PONG_TIMEOUT_MS);
    this.pongTimer.unref();
    this.ws.ping();
  }

  private onFrame(data: RawData, isBinary: boolean): void {
    if (this.ended) return;
    if (isBinary) {
      // §3: binary frames are not part of the binding; frames read after this one are not answered.
      this.ended = true;
      this.queue.length = 0;
      this.ws.close(1003, "binary frames are not accepted");
      return;
    }
    this.queue.push(rawText(data));
    this.pump();
  }

  /** Starts queued frames while below the bound, and reads the socket only while there is room. */
  private pump(): void {
    while (this.queue.length > 0 && this.inFlight < this.maxInFlight && !this.ended) {
      if (!this.shuttingDown && this.opts.overloaded?.()) {
        this.overloadTimer ??= setTimeout(() => {
          this.overloadTimer = undefined;
          this.pump();
        }, this.opts.overloadRetryMs ?? DEFAULT_OVERLOAD_RETRY_MS);
        break;
      }
      this.start(this.queue.shift()!);
    }
    if (!this.shuttingDown) this.setPaused(this.queue.length > 0 || this.inFlight >= this.maxInFlight);
    if (this.drained && this.inFlight === 0 && this.queue.length === 0) {
      const drained = this.drained;
      this.drained = undefined;
      drained();
    }
  }

  private start(text: string): void {
    this.inFlight++;
    const frame = parseFrame(text);
    this.count(frame.kmsMessage === undefined ? "invalid" : "message");
    // An unusable frame gets the core's own JWS 400 for a non-JOSE message: the binding signs nothing.
    let reply: Promise<string>;
    try {
      reply = this.opts.handle(frame.kmsMessage ?? "");
    } catch (e) {
      reply = Promise.reject(e);
    }
    reply.then(
      (kmsMessage) => this.reply(frame.id, kmsMessage),
      (e: unknown) => {
        // The core answers every message itself; a throw is a server bug, as HTTP's 500 is.
        this.opts.logger?.error({ err: e instanceof Error ? e.message : String(e) }, "websocket frame failed in the core");
        this.ended = true;
        this.queue.length = 0;
        if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1011, "internal error");
        this.done();
      },
    );
  }

  private reply(id: string | null, kmsMessage: string): void {
    if (this.ws.readyState !== WebSocket.OPEN) return this.done();
    // The slot frees once the reply is written to the socket, not when it is queued in memory:
    // a client that stops reading its replies stops its own requests too.
    this.ws.send(JSON.stringify({ id, kmsMessage }), () => this.done());
  }

  private done(): void {
    this.inFlight--;
    this.pump();
  }

  private setPaused(paused: boolean): void {
    if (paused === this.paused || this.ws.readyState !== WebSocket.OPEN) return;
    this.paused = paused;
    if (paused) this.ws.pause();
    else this.ws.resume();
  }

  private dispose(): void {
    this.ended = true;
    this.queue.length = 0;
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    clearTimeout(this.overloadTimer);
    this.drained = undefined;
  }
}

function rawText(data: RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString("utf8");
  return data.toString("utf8");
}
