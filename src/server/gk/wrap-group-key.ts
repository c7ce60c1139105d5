import { base64url, GeneralEncrypt, importJWK, type GeneralJWE, type JWK } from "jose";
import { CONTENT_ENCRYPTION } from "../../protocol/constants.js";

/** How a GK is wrapped to one device key: EC P-256 → ECDH-ES+A256KW; RSA → RSA-OAEP-256 unless the key asks for RSA-OAEP. */
export function wrapAlgorithmFor(jwk: JWK): "ECDH-ES+A256KW" | "RSA-OAEP" | "RSA-OAEP-256" {
  if (jwk.kty === "EC") return "ECDH-ES+A256KW";
  return jwk.alg === "RSA-OAEP" ? "RSA-OAEP" : "RSA-OAEP-256";
}

/**
 * Wraps a GK's 256-bit key to every device key of an entity (§9): a JWE General JSON
 * Serialization (an object), one recipient per key (header `alg` and `kid`), whose plaintext is
 * `{"kty": "oct", "alg": "A256GCM", "kid": <gk uri>, "k": ...}`.
 *
 * @example
 * const key = await wrapGroupKey(keyBytes, "kms://kms.example.com/gks/1", [aliceLaptopJwk, alicePhoneJwk]);
 */
export async function wrapGroupKey(keyBytes: Uint8Array, gkUri: string, recipients: readonly JWK[]): Promise<GeneralJWE> {
  const plaintext = new TextEncoder().encode(JSON.stringify({ kty: "oct", alg: CONTENT_ENCRYPTION, kid: gkUri, k: base64url.encode(keyBytes) }));
  const jwe = new GeneralEncrypt(plaintext).setProtectedHeader({ enc: CONTENT_ENCRYPTION });
  for (const jwk of recipients) {
    const alg = wrapAlgorithmFor(jwk);
    const { kty, crv, x, y, n, e } = jwk;
    const publicOnly = kty === "EC" ? { kty, crv, x, y } : { kty, n, e };
    jwe.addRecipient(await importJWK(publicOnly as JWK, alg)).setUnprotectedHeader({ alg, kid: jwk.kid! });
  }
  return jwe.encrypt();
}
