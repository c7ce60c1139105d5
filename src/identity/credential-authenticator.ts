import { unauthorized } from "../protocol/errors.js";
import type { Credential } from "../protocol/messages.js";
import type { AuthenticatedIdentity, Authenticator } from "./authenticator.js";
import type { BearerJwtValidator } from "./bearer-jwt.js";

/**
 * Dispatches a credential to its validator: bearer tokens to the JWT validator; certificate (`jwk`)
 * credentials are refused until trust roots are configured (issue #5 adds chain validation).
 */
export class CredentialAuthenticator implements Authenticator {
  constructor(private readonly bearer: BearerJwtValidator) {}

  async authenticate(credential: Credential): Promise<AuthenticatedIdentity> {
    if ("bearer" in credential && typeof credential.bearer === "string") {
      return this.bearer.validate(credential.bearer);
    }
    throw unauthorized("certificate credentials are not accepted: this KMS has no trust roots configured", "ERR_NO_TRUST_ROOTS");
  }
}
