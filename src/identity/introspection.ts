import type { AuthenticatedIdentity } from "./authenticator.js";
import type { BearerTokenValidator } from "./credential-authenticator.js";

export interface TokenIntrospectionOptions {
  /** RFC 7662 introspection endpoint. */
  readonly url: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly issuer: string;
  readonly audience: string;
  readonly entityClaim: string;
  readonly leewaySeconds: number;
}

/** Opaque access tokens through RFC 7662 introspection (§6). Stub: issue #5 fills it in. */
export class TokenIntrospector implements BearerTokenValidator {
  constructor(readonly options: TokenIntrospectionOptions) {}

  async validate(_token: string): Promise<AuthenticatedIdentity> {
    throw new Error("not implemented");
  }
}
