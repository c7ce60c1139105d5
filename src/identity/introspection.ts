import { createHash } from "node:crypto";
import { KmsError, unauthorized } from "../protocol/errors.js";
import { normalizeEntity } from "../protocol/entity.js";
import type { AuthenticatedIdentity } from "./authenticator.js";
import type { BearerTokenValidator } from "./credential-authenticator.js";

export interface TokenIntrospectionOptions {
  /** RFC 7662 introspection endpoint. */
  readonly url: string;
  /** Client credentials of the KMS at the endpoint (client_secret_basic). */
  readonly clientId: string;
  readonly clientSecret: string;
  /** `iss` of the introspection response, when present, must equal this. */
  readonly issuer: string;
  /** `aud` of the introspection response must contain this (the KMS URI). */
  readonly audience: string;
  /** The claim that names the entity (default `email`); no fallback to another claim. */
  readonly entityClaim: string;
  /** Clock leeway for exp/nbf/iat, seconds. */
  readonly leewaySeconds: number;
  /** How long an active result is remembered, seconds, 0–60 (default 60); never beyond the token's exp. */
  readonly cacheSeconds?: number;
  /** Bound of the result cache, entries (default 10,000; the oldest entry is evicted). */
  readonly cacheSize?: number;
  /** Timeout of one introspection call, ms (default 5,000). */
  readonly timeoutMs?: number;
  /** For tests: the HTTP client and the clock (ms). */
  readonly fetch?: typeof fetch;
  readonly now?: () => number;
}

/** The most the profile allows an introspection result to be remembered (§6). */
export const MAX_INTROSPECTION_CACHE_SECONDS = 60;

interface CacheEntry {
  readonly identity: AuthenticatedIdentity;
  /** Clock ms after which the endpoint is asked again. */
  readonly until: number;
}

/**
 * Validates opaque access tokens through RFC 7662 token introspection (§6).
 *
 * Each token is POSTed as `token=…&token_type_hint=access_token`, authenticated with the KMS's
 * client credentials (client_secret_basic), with a 5 s timeout. The response must say
 * `active: true`; `iss`, when present, must be the configured issuer; `aud` must contain the KMS's
 * audience (a token for another service is refused); `exp` must be present and not passed, `nbf`
 * and `iat` not in the future (with leeway); a refresh token is refused. The entity is the
 * configured claim (default `email`), normalized; a response without it is refused: there is no
 * fallback to `sub` or `username`.
 *
 * Fail closed: an unreachable endpoint, a timeout, a non-200 answer or a body that is not a JSON
 * object refuses the token (401, ERR_IDP_UNAVAILABLE). Active results are remembered, keyed by
 * SHA-256 of the token, for at most `cacheSeconds` (≤ 60) and never beyond the token's `exp`, in a
 * bounded cache; concurrent introspections of one token share one call. A revocation therefore
 * takes effect within `cacheSeconds`. No reason or error ever contains the token.
 *
 * Refusal codes (all status 401): ERR_TOKEN_INACTIVE, ERR_TOKEN_EXPIRED, ERR_TOKEN_INVALID,
 * ERR_TOKEN_NO_ENTITY, ERR_IDP_UNAVAILABLE.
 *
 * @example
 * const v = new TokenIntrospector({
 *   url: "https://idp.example.com/token/introspection", clientId: "keyward", clientSecret,
 *   issuer: "https://idp.example.com", audience: "kms://kms.example.com", entityClaim: "email", leewaySeconds: 30,
 * });
 * const id = await v.validate(opaqueToken); // { entity: "alice@example.com", kind: "bearer", expiresAt }
 */
export class TokenIntrospector implements BearerTokenValidator {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inFlight = new Map<string, Promise<AuthenticatedIdentity>>();
  private readonly cacheMs: number;
  private readonly cacheSize: number;
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private readonly fetch: typeof fetch;
  private readonly authorization: string;

  constructor(readonly options: TokenIntrospectionOptions) {
    const seconds = options.cacheSeconds ?? MAX_INTROSPECTION_CACHE_SECONDS;
    this.cacheMs = Math.max(0, Math.min(seconds, MAX_INTROSPECTION_CACHE_SECONDS)) * 1000;
    this.cacheSize = options.cacheSize ?? 10_000;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.now = options.now ?? Date.now;
    this.fetch = options.fetch ?? globalThis.fetch;
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
    this.authorization = `Basic ${Buffer.from(`${formEncode(options.clientId)}:${formEncode(options.clientSecret)}`).toString("base64")}`;
  }

  async validate(token: string): Promise<AuthenticatedIdentity> {
    const key = createHash("sha256").update(token).digest("base64url");
    const now = this.now();
    const cached = this.cache.get(key);
    if (cached !== undefined) {
      if (cached.identity.expiresAt!.getTime() + this.options.leewaySeconds * 1000 <= now) {
        this.cache.delete(key);
        throw unauthorized("bearer token refused: token has expired", "ERR_TOKEN_EXPIRED");
      }
      if (cached.until > now) return cached.identity;
      this.cache.delete(key);
    }
    if (looksLikeJose(token)) {
      // A compact JWS/JWE that is not a well-formed JWT (e.g. `alg: none` with an empty signature):
      // never an opaque token, and not worth a round trip to the identity provider.
      throw invalid("not a valid JWT (a malformed or unsigned JWS)");
    }
    const running = this.inFlight.get(key);
    if (running !== undefined) return running;
    const call = this.introspect(token).finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, call);
    const identity = await call;
    const until = Math.min(this.now() + this.cacheMs, identity.expiresAt!.getTime());
    if (until > this.now()) {
      if (this.cache.size >= this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(key, { identity, until });
    }
    return identity;
  }

  /** Number of remembered results (for tests and metrics). */
  get cachedResults(): number {
    return this.cache.size;
  }

  private async introspect(token: string): Promise<AuthenticatedIdentity> {
    let res: Response;
    try {
      res = await this.fetch(this.options.url, {
        method: "POST",
        headers: {
          authorization: this.authorization,
          "content-type": "application/x-www-form-urlencoded",
          accept: "application/json",
        },
        body: new URLSearchParams({ token, token_type_hint: "access_token" }).toString(),
        signal: AbortSignal.timeout(this.timeoutMs),
        redirect: "manual",
      });
    } catch (e) {
      const timedOut = e instanceof Error && (e.name === "TimeoutError" || e.name === "AbortError");
      throw unavailable(timedOut ? "did not answer in time" : "is unreachable");
    }
    let body: unknown;
    try {
      if (res.status !== 200) throw unavailable(`answered HTTP ${res.status}`);
      body = JSON.parse(await res.text());
    } catch (e) {
      if (e instanceof KmsError) throw e;
      throw unavailable("answered with a body that is not JSON");
    } finally {
      // Release the connection when the body was not read.
      if (!res.bodyUsed) await res.body?.cancel().catch(() => undefined);
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) throw unavailable("answered with a body that is not a JSON object");
    return this.check(body as Record<string, unknown>);
  }

  private check(r: Record<string, unknown>): AuthenticatedIdentity {
    const { leewaySeconds, issuer, audience, entityClaim } = this.options;
    if (r.active !== true) {
      throw unauthorized("bearer token refused: the identity provider says the token is not active (revoked, expired or unknown)", "ERR_TOKEN_INACTIVE");
    }
    if (r.iss !== undefined && r.iss !== issuer) throw invalid("claim 'iss' is not accepted");
    const aud = r.aud;
    const audiences = typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud : undefined;
    if (audiences === undefined) throw invalid("claim 'aud' is missing (the token must be issued for this KMS)");
    if (!audiences.includes(audience)) throw invalid("claim 'aud' is not accepted (the token was issued for another service)");
    if (isRefreshToken(r.token_type) || isRefreshToken(r.typ)) throw invalid("a refresh token is not an access token");
    const now = this.now();
    const leeway = leewaySeconds * 1000;
    if (typeof r.exp !== "number" || !Number.isFinite(r.exp)) throw invalid("claim 'exp' is missing");
    if (r.exp * 1000 + leeway <= now) throw unauthorized("bearer token refused: token has expired", "ERR_TOKEN_EXPIRED");
    if (r.nbf !== undefined && (typeof r.nbf !== "number" || r.nbf * 1000 > now + leeway)) throw invalid("claim 'nbf' is in the future (token not yet valid)");
    if (r.iat !== undefined && (typeof r.iat !== "number" || r.iat * 1000 > now + leeway)) throw invalid("claim 'iat' is in the future");
    const claim = r[entityClaim];
    const entity = typeof claim === "string" ? normalizeEntity(claim) : undefined;
    if (entity === undefined) {
      throw unauthorized(`bearer token refused: claim '${entityClaim}' is missing or is not user@domain`, "ERR_TOKEN_NO_ENTITY");
    }
    return { entity, kind: "bearer", expiresAt: new Date(r.exp * 1000) };
  }
}

function invalid(what: string) {
  return unauthorized(`bearer token refused: ${what}`, "ERR_TOKEN_INVALID");
}

function unavailable(what: string) {
  return unauthorized(`bearer token refused: the identity provider's introspection endpoint ${what}; opaque tokens cannot be checked`, "ERR_IDP_UNAVAILABLE");
}

/** True when the token's first dot-separated part decodes to a JSON object with `alg`: a JOSE object, not an opaque token. */
function looksLikeJose(token: string): boolean {
  const dot = token.indexOf(".");
  if (dot <= 0) return false;
  try {
    const header: unknown = JSON.parse(Buffer.from(token.slice(0, dot), "base64url").toString("utf8"));
    return typeof header === "object" && header !== null && "alg" in header;
  } catch {
    return false;
  }
}

function isRefreshToken(v: unknown): boolean {
  return typeof v === "string" && /refresh/i.test(v);
}

/** application/x-www-form-urlencoded encoding of one value. */
function formEncode(s: string): string {
  return new URLSearchParams({ v: s }).toString().slice(2);
}
