import { unauthorized } from "../protocol/errors.js";
import type { Credential } from "../protocol/messages.js";
import type { AuthenticatedIdentity, Authenticator } from "./authenticator.js";

/** Validates one kind of bearer token (a JWT, or an opaque token through introspection). */
export interface BearerTokenValidator {
  validate(token: string): Promise<AuthenticatedIdentity>;
}

/** Validates a certificate (`jwk` with `x5c`) credential (§6). */
export interface CertificateCredentialVerifier {
  /**
   * @param proofOfPossession on key agreement: the JWS compact that carried the request, which
   *   must verify with the credential's key; absent on later requests of a channel.
   */
  verify(jwk: unknown, context: { keyAgreement: boolean; proofOfPossession?: string }): Promise<AuthenticatedIdentity>;
}

export interface CredentialAuthenticatorOptions {
  /** RFC 9068 JWT access tokens, validated locally. */
  readonly jwt: BearerTokenValidator;
  /** Opaque access tokens through RFC 7662 introspection; absent = opaque tokens refused. */
  readonly introspection?: BearerTokenValidator;
  /** Certificate credentials; absent (no trust roots configured) = refused. */
  readonly certificates?: CertificateCredentialVerifier;
}

/**
 * A compact JWS has three base64url parts; anything else is an opaque token. The signature part
 * may be empty so that an `alg: none` token reaches the JWT validator and is refused as such.
 */
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/**
 * Dispatches a credential to its validator (§6): a bearer token that looks like a JWT to the
 * local JWT validator, any other bearer token to introspection, a `jwk` credential to the
 * certificate verifier. A kind that is not configured is refused with 401 and says so.
 *
 * @example
 * const auth = new CredentialAuthenticator({ jwt: new BearerJwtValidator(opts) });
 * const id = await auth.authenticate({ bearer: token }, { keyAgreement: true });
 */
export class CredentialAuthenticator implements Authenticator {
  constructor(private readonly options: CredentialAuthenticatorOptions) {}

  async authenticate(credential: Credential, context: { keyAgreement: boolean; proofOfPossession?: string }): Promise<AuthenticatedIdentity> {
    if ("bearer" in credential && typeof credential.bearer === "string") {
      const token = credential.bearer;
      if (JWT_SHAPE.test(token)) return this.options.jwt.validate(token);
      if (!this.options.introspection) {
        throw unauthorized("bearer token refused: not a valid JWT, and this KMS has no introspection endpoint configured for opaque tokens", "ERR_TOKEN_INVALID");
      }
      return this.options.introspection.validate(token);
    }
    if (!this.options.certificates) {
      throw unauthorized("certificate credentials are not accepted: this KMS has no trust roots configured", "ERR_NO_TRUST_ROOTS");
    }
    return this.options.certificates.verify((credential as { jwk: unknown }).jwk, context);
  }
}
