import { createHash } from "node:crypto";
import { errors as joseErrors, jwtVerify, type JWTVerifyGetKey } from "jose";
import { unauthorized } from "../protocol/errors.js";
import { normalizeEntity } from "../protocol/entity.js";
import type { AuthenticatedIdentity } from "./authenticator.js";
import { JwksCache, JwksUnavailableError } from "./jwks-cache.js";
import { echo } from "../protocol/echo.js";

/** §6: asymmetric algorithms only; HMAC and `none` can never verify an access token here. */
export const ACCESS_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"];

export interface BearerJwtOptions {
  readonly issuer: string;
  readonly audience: string;
  readonly jwksUri: string;
  /** The claim that names the entity (default `email`); no fallback to another claim. */
  readonly entityClaim: string;
  /** Clock leeway for exp/nbf/iat, seconds. */
  readonly leewaySeconds: number;
  /** Bound of the verified-token cache (entries). */
  readonly cacheSize?: number;
  /** For tests: a key resolver other than the remote JWKS. */
  readonly keys?: JWTVerifyGetKey;
  /** JWKS cache tuning (see {@link JwksCache}): minimum interval between fetches and maximum age, ms. */
  readonly jwksMinRefetchIntervalMs?: number;
  readonly jwksMaxAgeMs?: number;
  readonly now?: () => number;
}

/**
 * Validates RFC 9068 JWT access tokens locally against the issuer's JWKS (§6): signature with an
 * asymmetric algorithm, `typ` at+jwt, issuer, audience, exp present and not passed, nbf/iat not in
 * the future. The JWKS is cached by a {@link JwksCache}: an unknown `kid` triggers one rate-limited
 * refetch (at most one fetch per 5 s, concurrent requests sharing it), so an identity-provider key
 * rotation causes no failed request; a kid still unknown after it is refused.
 *
 * Verified results are remembered, keyed by SHA-256 of the token, until the token's exp, in a
 * bounded cache (the profile allows it): the hot path of every channel request is one hash.
 *
 * @example
 * const v = new BearerJwtValidator({ issuer, audience: "kms://kms.example.com", jwksUri, entityClaim: "email", leewaySeconds: 30 });
 * const id = await v.validate(token); // { entity: "alice@example.com", kind: "bearer", expiresAt }
 */
export class BearerJwtValidator {
  private readonly keys: JWTVerifyGetKey;
  private readonly cache = new Map<string, AuthenticatedIdentity>();
  private readonly cacheSize: number;
  private readonly now: () => number;

  constructor(private readonly options: BearerJwtOptions) {
    this.keys =
      options.keys ??
      new JwksCache({
        url: options.jwksUri,
        ...(options.jwksMinRefetchIntervalMs !== undefined ? { minRefetchIntervalMs: options.jwksMinRefetchIntervalMs } : {}),
        ...(options.jwksMaxAgeMs !== undefined ? { maxAgeMs: options.jwksMaxAgeMs } : {}),
      }).getKey;
    this.cacheSize = options.cacheSize ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  async validate(token: string): Promise<AuthenticatedIdentity> {
    const cacheKey = createHash("sha256").update(token).digest("base64url");
    const cached = this.cache.get(cacheKey);
    const now = this.now();
    if (cached) {
      if (cached.expiresAt!.getTime() + this.options.leewaySeconds * 1000 > now) return cached;
      this.cache.delete(cacheKey);
      throw unauthorized("bearer token has expired", "ERR_TOKEN_EXPIRED");
    }
    const identity = await this.verify(token, now);
    if (this.cache.size >= this.cacheSize) {
      // Bounded: drop the oldest entry (Map keeps insertion order).
      this.cache.delete(this.cache.keys().next().value!);
    }
    this.cache.set(cacheKey, identity);
    return identity;
  }

  private async verify(token: string, now: number): Promise<AuthenticatedIdentity> {
    let payload;
    try {
      ({ payload } = await jwtVerify(token, this.keys, {
        issuer: this.options.issuer,
        audience: this.options.audience,
        algorithms: ACCESS_TOKEN_ALGORITHMS,
        typ: "at+jwt",
        clockTolerance: this.options.leewaySeconds,
        requiredClaims: ["exp"],
        currentDate: new Date(now),
      }));
    } catch (e) {
      const code = e instanceof joseErrors.JWTExpired ? "ERR_TOKEN_EXPIRED" : e instanceof JwksUnavailableError ? "ERR_IDP_UNAVAILABLE" : "ERR_TOKEN_INVALID";
      throw unauthorized(`bearer token refused: ${describeJoseError(e)}`, code);
    }
    if (typeof payload.iat === "number" && payload.iat * 1000 > now + this.options.leewaySeconds * 1000) {
      throw unauthorized("bearer token refused: 'iat' is in the future", "ERR_TOKEN_INVALID");
    }
    const claim = payload[this.options.entityClaim];
    const entity = typeof claim === "string" ? normalizeEntity(claim) : undefined;
    if (entity === undefined) {
      throw unauthorized(`bearer token refused: claim '${this.options.entityClaim}' is missing or is not user@domain`, "ERR_TOKEN_NO_ENTITY");
    }
    return { entity, kind: "bearer", expiresAt: new Date(payload.exp! * 1000) };
  }
}

/** A reason that helps the caller without echoing the token. */
function describeJoseError(e: unknown): string {
  if (e instanceof joseErrors.JWTExpired) return "token has expired";
  if (e instanceof joseErrors.JWTClaimValidationFailed) return `claim '${echo(e.claim)}' ${e.reason === "check_failed" ? "is not accepted" : e.reason}`;
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return "signature algorithm is not accepted (asymmetric algorithms only)";
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return "signature does not verify";
  if (e instanceof joseErrors.JWKSNoMatchingKey) return "signed by a key the identity provider does not publish";
  if (e instanceof JwksUnavailableError) return "the identity provider's keys are unavailable (JWKS could not be fetched)";
  if (e instanceof joseErrors.JWKSTimeout || e instanceof joseErrors.JOSENotSupported) return "identity provider keys unavailable or unsupported";
  if (e instanceof joseErrors.JWTInvalid || e instanceof joseErrors.JWSInvalid) return "not a valid JWT";
  return "not a valid access token";
}
