import http from "node:http";
import type { IncomingMessage } from "node:http";

/**
 * The connection-level limits of the KMS's HTTP listener. Every one is a defence against a client
 * that holds server resources without completing requests (slowloris and its relatives).
 */
export interface HttpServerLimits {
  /** How long a client may take to send its request headers, from the first byte (or the connection) on. */
  readonly headersTimeoutMs: number;
  /**
   * How long a client may take to send a whole request, headers and body. The binding's own
   * body-read timeout (408) is shorter and fires first for the bodies it reads; this one is the
   * backstop for bodies nobody reads (a POST to another path, a shed request being discarded).
   */
  readonly requestTimeoutMs: number;
  /** How long an idle keep-alive connection stays open between requests. */
  readonly keepAliveTimeoutMs: number;
  /** A connection on which nothing moves for this long (e.g. a client that never reads its reply) is closed. */
  readonly idleTimeoutMs: number;
  /** Connections beyond this many (per process) are closed as soon as they are accepted. */
  readonly maxConnections: number;
  /** How often Node checks the header and request deadlines (its default, 30 s, would make them that coarse). */
  readonly deadlineCheckIntervalMs: number;
}

/**
 * The defaults of {@link HttpServerLimits}, and why:
 * - headers: the body-read timeout, at most 10 s: a real client sends its headers in one packet,
 *   so 10 s is generous on any network, and an operator who shortens the body-read timeout to cut
 *   slow clients sooner means slow headers too.
 * - request: headers + body-read timeout + 5 s (see requestTimeoutMs).
 * - keep-alive 65 s: longer than the 60 s idle timeout of common load balancers, so a proxy never
 *   reuses a connection the KMS is closing at the same moment (which fails that request).
 * - idle 120 s: only a client that stops reading (or a dead peer) is idle that long mid-request.
 * - 4096 connections per process: far more than a KMS process serves at once (a request is a few
 *   ms of work, clients keep a few connections each), yet it keeps file descriptors for the store
 *   when a flood of connections arrives (running out of them would fail every request, not just
 *   the new connections), and bounds what partly-read bodies can hold (each ≤ 1 MiB, ≤ 10 s).
 *
 * @example
 * const limits = defaultHttpServerLimits(10_000); // body-read timeout 10 s
 * limits.headersTimeoutMs // 10_000
 * limits.requestTimeoutMs // 25_000
 */
export function defaultHttpServerLimits(bodyReadTimeoutMs: number): HttpServerLimits {
  const headersTimeoutMs = Math.min(10_000, bodyReadTimeoutMs);
  return {
    headersTimeoutMs,
    requestTimeoutMs: headersTimeoutMs + bodyReadTimeoutMs + 5_000,
    keepAliveTimeoutMs: 65_000,
    idleTimeoutMs: 120_000,
    maxConnections: 4096,
    deadlineCheckIntervalMs: 1_000,
  };
}

/** Requests whose client sent `Expect: 100-continue` and has not been told to continue yet. */
const awaitingContinue = new WeakSet<IncomingMessage>();

/**
 * True when the client of `req` waits for `100 Continue` before it sends its body (and the server
 * was built by {@link createHttpServer}, which holds that answer back until the body is wanted).
 * A handler that refuses the request first (415, 413 on Content-Length, 429) thus never makes the
 * client send a body nobody reads.
 *
 * @example
 * if (expectsContinue(req)) res.writeContinue();
 */
export function expectsContinue(req: IncomingMessage): boolean {
  return awaitingContinue.has(req);
}

/**
 * The one place where the KMS's HTTP server is built: `node:http` with the {@link HttpServerLimits}
 * applied. Attach further handlers to the returned server (e.g. `server.on("upgrade", ...)` for a
 * WebSocket binding on the same listener).
 *
 * @example
 * const server = createHttpServer(createHttpHandler({ ... }), defaultHttpServerLimits(10_000));
 * server.listen(8484, "127.0.0.1");
 */
export function createHttpServer(listener: http.RequestListener, limits: HttpServerLimits): http.Server {
  const server = http.createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: Math.max(limits.requestTimeoutMs, limits.headersTimeoutMs),
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      connectionsCheckingInterval: limits.deadlineCheckIntervalMs,
    },
    listener,
  );
  server.timeout = limits.idleTimeoutMs;
  server.maxConnections = limits.maxConnections;
  server.on("checkContinue", (req: IncomingMessage, res: http.ServerResponse) => {
    awaitingContinue.add(req);
    listener(req, res);
  });
  return server;
}
