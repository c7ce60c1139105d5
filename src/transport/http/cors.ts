/**
 * CORS for browser clients (PROTOCOL.md §3), and the one origin check the HTTP and WebSocket
 * bindings share. Every KMS message authenticates inside its own encryption and no cookie is ever
 * read, so CORS protects nothing of the KMS's; it only lets an operator say which web origins may
 * talk to it from a browser (`corsOrigins`, default `*`).
 */

/** `*` (any origin) or the allowed origins, each as `URL.origin` writes it (`https://app.example.com`). */
export type CorsOrigins = "*" | readonly string[];

/** Endpoints that answer preflights and carry `Access-Control-Allow-Origin` (§3). */
const CORS_PATHS = new Set(["/kms/messages", "/.well-known/kms", "/.well-known/webfinger"]);
const ENTITY_JWKS_PATH = /^\/entities\/[^/]+\/jwks$/;

/** How long a browser may cache a preflight answer (seconds): the policy is configuration, it changes rarely. */
const PREFLIGHT_MAX_AGE_SECONDS = 600;

/**
 * The `corsOrigins` policy: which browser origins may call the KMS, and the headers that say so.
 *
 * @example
 * const cors = new CorsPolicy(["https://app.example.com"]);
 * cors.allows("https://app.example.com"); // true
 * cors.allows("https://evil.example");    // false
 * cors.replyHeaders("https://app.example.com"); // { "access-control-allow-origin": "https://app.example.com", vary: "Origin" }
 */
export class CorsPolicy {
  private readonly any: boolean;
  private readonly origins: ReadonlySet<string>;

  constructor(origins: CorsOrigins = "*") {
    this.any = origins === "*";
    this.origins = new Set(origins === "*" ? [] : origins.map(normalizeOrigin));
  }

  /**
   * Whether a request carrying this `Origin` header value may be served to a browser. An absent
   * header (a non-browser client, or a same-origin GET) is not a cross-origin request: the
   * callers decide what it means (the WebSocket binding accepts it, §3).
   *
   * @example
   * if (!cors.allows(req.headers.origin)) refuse(403);
   */
  allows(origin: string | undefined): boolean {
    if (origin === undefined) return true;
    // Exact match: browsers serialize Origin exactly as URL.origin does, and the list is normalized.
    return this.any || this.origins.has(origin);
  }

  /**
   * Headers for an actual (non-preflight) reply of a CORS endpoint. Empty for an origin not
   * allowed: the browser then refuses the reply, whatever its status. With a list, the answer
   * depends on `Origin`, so every reply says `Vary: Origin` (a cache must not hand one origin's
   * answer to another); `Vary` is a caching header, not a CORS one.
   *
   * @example
   * for (const [k, v] of Object.entries(cors.replyHeaders(req.headers.origin))) res.setHeader(k, v);
   */
  replyHeaders(origin: string | undefined): Record<string, string> {
    if (this.any) return { "access-control-allow-origin": "*" };
    const vary = { vary: "Origin" };
    if (origin === undefined || !this.allows(origin)) return vary;
    return { "access-control-allow-origin": origin, ...vary };
  }

  /**
   * Headers for a preflight (`OPTIONS`) answer: the reply headers plus methods, headers and
   * max-age; only `Vary` (or nothing) for an origin not allowed.
   *
   * @example
   * res.writeHead(204, cors.preflightHeaders(req.headers.origin)).end();
   */
  preflightHeaders(origin: string | undefined): Record<string, string> {
    const headers = this.replyHeaders(origin);
    if (!("access-control-allow-origin" in headers)) return headers;
    return {
      ...headers,
      "access-control-allow-methods": "GET, POST, OPTIONS",
      "access-control-allow-headers": "content-type",
      "access-control-max-age": String(PREFLIGHT_MAX_AGE_SECONDS),
    };
  }
}

/**
 * True for the endpoints CORS applies to (§3): `/kms/messages`, `/.well-known/kms`, WebFinger and
 * `/entities/<acct>/jwks`. Not `/kms/ws` (a WebSocket has no CORS; its Origin is checked at the
 * upgrade) nor the operator endpoints (`/healthz`, `/readyz`, `/metrics`).
 *
 * @example
 * isCorsPath("/entities/alice%40example.com/jwks"); // true
 * isCorsPath("/metrics");                           // false
 */
export function isCorsPath(path: string): boolean {
  return CORS_PATHS.has(path) || ENTITY_JWKS_PATH.test(path);
}

/**
 * A configured origin as browsers serialize it (`URL.origin`: lower-case scheme and host, no
 * default port). A value that is not an http(s) URL is kept as is (the config refuses those).
 *
 * @example
 * normalizeOrigin("HTTPS://App.Example.com:443"); // "https://app.example.com"
 */
export function normalizeOrigin(origin: string): string {
  try {
    const url = new URL(origin);
    if (url.protocol === "http:" || url.protocol === "https:") return url.origin;
  } catch {
    /* not a URL */
  }
  return origin;
}
