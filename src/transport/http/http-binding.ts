import type { IncomingMessage, ServerResponse } from "node:http";
import { JOSE_CONTENT_TYPE, MESSAGES_PATH, WELL_KNOWN_KMS_PATH } from "../../protocol/constants.js";
import { inspectCompact } from "../../protocol/jose/compact.js";
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
  readonly maxMessageBytes: number;
  readonly maxBatchMessages: number;
  /** Messages in flight above which new requests are shed with 429. */
  readonly maxInFlight: number;
  /**
   * True while the server is overloaded (the event loop lags behind): new messages are then
   * shed with 429 at once, before their body is read, instead of queueing without bound.
   */
  overloaded?(): boolean;
  /** CORS for browser clients (§3); default: any origin (`*`). */
  readonly cors?: CorsPolicy;
  /** Extra routes (e.g. WebFinger in a later issue); return false when not handled. */
  extraRoutes?(req: IncomingMessage, res: ServerResponse): Promise<boolean>;
}

class BodyTooLarge extends Error {}

/**
 * The HTTP binding of §3. Thin on purpose: it reads a body, hands each compact JOSE message to the
 * core, and maps only transport problems to HTTP statuses (413, 415, 429, 400); every KMS outcome,
 * errors included, is HTTP 200 with a JOSE body.
 *
 * @example
 * http.createServer(createHttpHandler({ handle: (m) => core.handle(m), ... })).listen(8484);
 */
export function createHttpHandler(opts: HttpBindingOptions): (req: IncomingMessage, res: ServerResponse) => void {
  let inFlight = 0;
  // A batch may hold 50 messages of up to 1 MiB each in its JSON envelope.
  const maxBatchBytes = opts.maxMessageBytes * opts.maxBatchMessages + 64 * 1024;

  const serveMessages = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
    if (type !== JOSE_CONTENT_TYPE && type !== "application/json") {
      return send(res, 415, "application/json", JSON.stringify({ error: `Content-Type must be ${JOSE_CONTENT_TYPE} or application/json` }));
    }
    const limit = type === JOSE_CONTENT_TYPE ? opts.maxMessageBytes : maxBatchBytes;
    const body = (await readBody(req, limit)).toString("utf8");

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
    if (messages.some((m) => typeof m === "string" && Buffer.byteLength(m) > opts.maxMessageBytes)) {
      return send(res, 413, "application/json", JSON.stringify({ error: `a message is at most ${opts.maxMessageBytes} bytes` }));
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
        if (inFlight >= opts.maxInFlight || opts.overloaded?.()) {
          req.resume();
          return send(res, 429, "application/json", JSON.stringify({ error: "KMS overloaded, retry later" }), { "retry-after": "1" });
        }
        inFlight++;
        try {
          return await serveMessages(req, res);
        } finally {
          inFlight--;
        }
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
      if (opts.extraRoutes && (await opts.extraRoutes(req, res))) return;
      return send(res, 404, "application/json", JSON.stringify({ error: "not found" }));
    };
    run().catch((e) => {
      if (e instanceof BodyTooLarge) {
        return send(res, 413, "application/json", JSON.stringify({ error: `body over ${opts.maxMessageBytes} bytes` }), { connection: "close" });
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

/** Reads a body up to `limit` bytes; refuses early on Content-Length, and while streaming otherwise. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > limit) {
    req.resume();
    return Promise.reject(new BodyTooLarge());
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners("data");
        req.resume();
        reject(new BodyTooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function send(res: ServerResponse, status: number, type: string, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(body), "cache-control": "no-store", ...headers });
  res.end(body);
}
