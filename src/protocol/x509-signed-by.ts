import "reflect-metadata";
import * as x509 from "@peculiar/x509";

/**
 * Whether `issuer` signed `child`: names chain and the signature verifies with the issuer's key
 * (WebCrypto through `globalThis.crypto`, so it runs in browsers and Node). Never throws. Shared
 * by the SDK's KMS identity check (§2) and the server's certificate credentials (§6).
 *
 * @example
 * if (!(await signedBy(leaf, intermediate))) throw new Error("not issued by that CA");
 */
export async function signedBy(child: x509.X509Certificate, issuer: x509.X509Certificate): Promise<boolean> {
  if (child.issuer !== issuer.subject) return false;
  try {
    return await child.verify({ publicKey: issuer.publicKey, signatureOnly: true }, globalThis.crypto);
  } catch {
    return false;
  }
}
