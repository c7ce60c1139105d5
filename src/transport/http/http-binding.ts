import type { IncomingMessage, ServerResponse } from "node:http";
import { JOSE_CONTENT_TYPE, MESSAGES_PATH, WELL_KNOWN_KMS_PATH } from "../../protocol/constants.js";
import { inspectCompact } from "../../protocol/jose/compact.js";
import { expectsContinue } from "./http-server.js";
import { CorsPolicy, isCorsPath } from "./cors.js";

/** What the HTTP binding needs from the rest of the server; it knows nothing else of it. */
export interface HttpBindingOptions {
  /** The server core: one compact JOSE string in, one out. */
  handle(message: string): Promise<string>;
  /** The `/.well-known/kms` document. */
  wellKnown(): unknown;
  /** Throws when the store is unreachable (for /readyz). */
  ready(): Promise<void>;
  /** Prometheus text exposition for /metrics. */
  metrics(): Promise<{ contentType: string; body: string }>;
  /** The limit of every HTTP body, the batch form's whole envelope included (§10): larger is 413. */
  readonly maxMessageBytes: number;
  readonly maxBatchMessages: number;
  /** Requests in flight (bodies received, replies not yet sent) above which new requests are shed with 429. */
  readonly maxInFlight: number;
  /**
   * True while the server is overloaded (the event loop lags behind): new messages are then
   * shed with 429 at once, before their body is read, instead of queueing without bound.
   */
  overloaded?(): boolean;
  /**
   * How long a client may take to send a request body once the binding starts reading it (ms,
   * default 10 s); then HTTP 408 and the connection is closed.
   */
  readonly bodyReadTimeoutMs?: number;
  /** CORS for browser clients (§3); default: any origin (`*`). */
  readonly cors?: CorsPolicy;
  /** Extra routes (e.g. WebFinger in a later issue); return false when not handled. */
  extraRoutes?(req: IncomingMessage, res: ServerResponse): Promise<boolean>;
}

/** The body is over the size limit (413). */
class BodyTooLarge extends Error {}
/** The client did not send its whole body within the body-read timeout (408). */
class BodyTimeout extends Error {}
/** The client went away before its body was complete: nobody to answer. */
class BodyAborted extends Error {}

/** Default of {@link HttpBindingOptions.bodyReadTimeoutMs}. */
export const DEFAULT_BODY_READ_TIMEOUT_MS = 10_000;
/**
 * After a reply sent before the body was read (413, 429, 415, ...), the rest of the body is read
 * and discarded for at most this long, then the connection is closed. Closing at once, with the
 * client's bytes still arriving, makes the kernel reset the connection, and a reset can destroy
 * the reply before the client reads it (RFC 9112 §9.6, "lingering close").
 */
const LINGER_MS = 2_000;
/** What a refused client may still send during the linger: its declared Content-Length, or at least this. */
const LINGER_MIN_BYTES = 2 * 1024 * 1024;

/**
 * The HTTP binding of §3. Thin on purpose: it reads a body, hands each compact JOSE message to the
 * core, and maps only transport problems to HTTP statuses (413, 415, 429, 408, 400); every KMS
 * outcome, errors included, is HTTP 200 with a JOSE body. Every reply carries
 * `Cache-Control: no-store`.
 *
 * A request counts as in flight (for `maxInFlight`) only once its body is complete: a client that
 * is slow to send its body holds a connection (bounded by the server's connection limit and the
 * body-read timeout), never a slot that legitimate requests need.
 *
 * @example
 * createHttpServer(createHttpHandler({ handle: (m) => core.handle(m), ... }), limits).listen(8484);
 */
export function createHttpHandler(opts: HttpBindingOptions): (req: IncomingMessage, res: ServerResponse) => void {
  let inFlight = 0;
  const bodyReadTimeoutMs = opts.bodyReadTimeoutMs ?? DEFAULT_BODY_READ_TIMEOUT_MS;
  const shedding = () => inFlight >= opts.maxInFlight || opts.overloaded?.() === true;
  const shed = (res: ServerResponse) =>
    send(res, 429, "application/json", JSON.stringify({ error: "KMS overloaded, retry later" }), { "retry-after": "1" });

  const serveMessages = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    // Shed before reading the body: an overloaded KMS does not spend time receiving what it will refuse.
    if (shedding()) return shed(res);
    const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
    if (type !== JOSE_CONTENT_TYPE && type !== "application/json") {
      return send(res, 415, "application/json", JSON.stringify({ error: `Content-Type must be ${JOSE_CONTENT_TYPE} or application/json` }));
    }
    // §10: one limit for every HTTP body, the batch form's whole envelope included.
    const body = (await readBody(req, res, opts.maxMessageBytes, bodyReadTimeoutMs)).toString("utf8");
    // In flight from here on only; the loop may have become overloaded while the body arrived.
    if (shedding()) return shed(res);
    inFlight++;
    try {
      await serveBody(type, body, res);
    } finally {
      inFlight--;
    }
  };

  const serveBody = async (type: string, body: string, res: ServerResponse): Promise<void> => {
    if (type === JOSE_CONTENT_TYPE) {
      const message = body.trim();
      const reply = await opts.handle(message);
      return send(res, isCompact(message) ? 200 : 400, JOSE_CONTENT_TYPE, reply);
    }
    let envelope: unknown;
    try {
      envelope = JSON.parse(body);
    } catch {
      envelope = undefined;
    }
    const messages = batchMessages(envelope);
    if (!messages) {
      return send(res, 400, "application/json", JSON.stringify({ error: 'body must be {"destination": "kms://...", "kmsMessages": ["<jose>", ...]}' }));
    }
    if (messages.length > opts.maxBatchMessages) {
      return send(res, 413, "application/json", JSON.stringify({ error: `a batch holds at most ${opts.maxBatchMessages} messages` }));
    }
    // Items are independent (§3): each gets its own reply, in the same order.
    const replies = await Promise.all(messages.map((m) => opts.handle(typeof m === "string" ? m : "")));
    return send(res, 200, "application/json", JSON.stringify({ kmsMessages: replies }));
  };

  const cors = opts.cors ?? new CorsPolicy("*");

  return (req, res) => {
    const path = (req.url ?? "/").split("?")[0]!;
    const run = async (): Promise<void> => {
      if (isCorsPath(path)) {
        // Set before any reply is written, so that every status (413, 415, 429, 404...) carries them.
        const origin = req.headers.origin;
        if (req.method === "OPTIONS") {
          req.resume();
          res.writeHead(204, cors.preflightHeaders(origin));
          return void res.end();
        }
        for (const [name, value] of Object.entries(cors.replyHeaders(origin))) res.setHeader(name, value);
      }
      if (path === MESSAGES_PATH) {
        if (req.method !== "POST") return send(res, 405, "application/json", JSON.stringify({ error: "POST only" }), { allow: "POST" });
        return await serveMessages(req, res);
      }
      if (req.method === "GET" && path === WELL_KNOWN_KMS_PATH) return send(res, 200, "application/json", JSON.stringify(opts.wellKnown()));
      if (req.method === "GET" && path === "/healthz") return send(res, 200, "application/json", '{"status":"ok"}');
      if (req.method === "GET" && path === "/readyz") {
        try {
          await opts.ready();
          return send(res, 200, "application/json", '{"status":"ready"}');
        } catch {
          return send(res, 503, "application/json", '{"status":"store unreachable"}');
        }
      }
      if (req.method === "GET" && path === "/metrics") {
        const m = await opts.metrics();
        return send(res, 200, m.contentType, m.body);
      }
      if (opts.extraRoutes) {
        closeByLingering(req, res);
        if (await opts.extraRoutes(req, res)) return;
      }
      return send(res, 404, "application/json", JSON.stringify({ error: "not found" }));
    };
    run().catch((e) => {
      if (e instanceof BodyAborted || res.destroyed) return;
      if (e instanceof BodyTooLarge) return send(res, 413, "application/json", JSON.stringify({ error: `body over ${opts.maxMessageBytes} bytes` }));
      if (e instanceof BodyTimeout) {
        return send(res, 408, "application/json", JSON.stringify({ error: `body not received within ${bodyReadTimeoutMs / 1000} s` }), { connection: "close" });
      }
      if (!res.headersSent) send(res, 500, "application/json", '{"error":"internal error"}');
      else res.destroy();
    });
  };
}

function batchMessages(envelope: unknown): unknown[] | undefined {
  if (typeof envelope !== "object" || envelope === null || Array.isArray(envelope)) return undefined;
  const { kmsMessages, destination } = envelope as Record<string, unknown>;
  if (!Array.isArray(kmsMessages)) return undefined;
  if (destination !== undefined && typeof destination !== "string") return undefined;
  return kmsMessages;
}

function isCompact(message: string): boolean {
  try {
    inspectCompact(message);
    return true;
  } catch {
    return false;
  }
}

/**
 * Reads a body of at most `limit` bytes within `timeoutMs`: refuses at once on a Content-Length
 * over the limit, and while streaming otherwise (chunked). Tells a client waiting for
 * `100 Continue` to go on only here, once every check that needs no body has passed.
 */
function readBody(req: IncomingMessage, res: ServerResponse, limit: number, timeoutMs: number): Promise<Buffer> {
  const declared = req.headers["content-length"];
  if (declared !== undefined && Number(declared) > limit) return Promise.reject(new BodyTooLarge());
  if (expectsContinue(req)) res.writeContinue();
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => done(new BodyTimeout()), timeoutMs);
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return done(new BodyTooLarge());
      chunks.push(chunk);
    };
    const onEnd = () => done(undefined);
    // 'close' before 'end' (or 'error'): the client went away mid-body.
    const onGone = () => done(new BodyAborted());
    const done = (error: Error | undefined) => {
      clearTimeout(timer);
      req.off("data", onData).off("end", onEnd).off("close", onGone).off("error", onGone);
      if (error) reject(error);
      else resolve(Buffer.concat(chunks));
    };
    req.on("data", onData).on("end", onEnd).on("close", onGone).on("error", onGone);
  });
}

/** True while a request's body (declared by Content-Length or chunked) has not all arrived. */
function bodyUnread(req: IncomingMessage): boolean {
  if (req.complete) return false;
  const length = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

/**
 * For a reply that goes out before the request's body was read (a refusal): the reply says
 * `Connection: close`, so that a keep-alive client does not send its next request on a connection
 * about to close, and the connection closes by lingering: after the reply, the rest of the body is
 * read and discarded, for at most {@link LINGER_MS} or a whole body's worth, then the socket is
 * destroyed. Closing at once would make the kernel answer the client's remaining bytes with a
 * reset, which can discard the refusal before the client reads it. Call before the reply's headers
 * are written.
 */
function closeByLingering(req: IncomingMessage, res: ServerResponse): void {
  if (res.headersSent || !bodyUnread(req)) return;
  res.setHeader("connection", "close");
  const socket = req.socket as IncomingMessage["socket"] & { destroySoon?: () => void };
  // Node ends a `Connection: close` response with socket.destroySoon(), which destroys the socket
  // as soon as the reply is written: replace it, for this socket only, with a lingering close.
  socket.destroySoon = () => {
    if (socket.destroyed) return;
    socket.end();
    const close = () => socket.destroy();
    const timer = setTimeout(close, LINGER_MS);
    timer.unref();
    socket.once("close", () => clearTimeout(timer));
    const budget = Math.max(Number(req.headers["content-length"]) || 0, LINGER_MIN_BYTES);
    let discarded = 0;
    req.on("data", (chunk: Buffer) => {
      discarded += chunk.length;
      if (discarded > budget) close();
    });
    req.once("end", close);
    req.resume();
  };
}

function send(res: ServerResponse, status: number, type: string, body: string, headers: Record<string, string> = {}): void {
  closeByLingering(res.req, res);
  res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(body), "cache-control": "no-store", ...headers });
  res.end(body);
}
