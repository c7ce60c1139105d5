import type { Credential } from "../protocol/messages.js";

/** Who a credential proves: the entity, and until when that proof holds. */
export interface AuthenticatedIdentity {
  /** `user@domain` (bearer) or `kms://host` (certificate credential). */
  readonly entity: string;
  readonly kind: "bearer" | "certificate";
  /** When the proof stops holding (a token's exp); undefined when it has no end of its own. */
  readonly expiresAt?: Date;
  /** RFC 7638 thumbprint of a certificate credential's JWK. */
  readonly thumbprint?: string;
}

/**
 * Turns a request credential into an identity, or throws a KmsError with status 401. One
 * implementation per credential kind lives in src/identity; the server core only sees this.
 */
export interface Authenticator {
  /**
   * @param proofOfPossession for a certificate credential on key agreement: the JWS whose signature
   *   proves possession of the credential's key (§6); absent on later requests of a channel.
   */
  authenticate(credential: Credential, context: { keyAgreement: boolean; proofOfPossession?: string }): Promise<AuthenticatedIdentity>;
}
