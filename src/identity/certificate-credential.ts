import type { AuthenticatedIdentity } from "./authenticator.js";
import type { CertificateCredentialVerifier } from "./credential-authenticator.js";

/** Certificate credentials (§6). Stub: issue #5 fills it in. */
export class CertificateCredentialValidator implements CertificateCredentialVerifier {
  constructor(readonly options: { trustRootsPem: string; now?: () => Date }) {}

  async verify(_jwk: unknown, _context: { keyAgreement: boolean; proofOfPossession?: string }): Promise<AuthenticatedIdentity> {
    throw new Error("not implemented");
  }
}
