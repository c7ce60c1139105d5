import { importJWK, type JWK } from "jose";
import { badRequest } from "./errors.js";
import { importEcdhPublicKey } from "./jose/ephemeral-key.js";
import { isSafeIdentifierText } from "./text.js";

const PRIVATE_MEMBERS = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
const ALGS_BY_TYPE: Readonly<Record<string, readonly string[]>> = {
  RSA: ["PS256", "RS256", "RSA-OAEP", "RSA-OAEP-256"],
  EC: ["ES256", "ECDH-ES+A256KW", "ECDH-ES"],
};

/**
 * Validates an entity's device public key (§7): RSA ≥ 2048 bits or EC P-256 (a point on the
 * curve), a non-empty `kid`, no private member, an `alg` (if any) that fits the key type. Returns
 * the public members only, so nothing else a client sent is ever stored or served.
 *
 * @example
 * const jwk = await validateEntityPublicJwk({ kty: "EC", crv: "P-256", x, y, kid: "laptop" });
 */
export async function validateEntityPublicJwk(value: unknown, field = "jwk"): Promise<JWK & { kid: string }> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw badRequest(`field '${field}' must be a JWK object`, "ERR_FIELD");
  const jwk = value as Record<string, unknown>;
  if (PRIVATE_MEMBERS.some((m) => m in jwk)) {
    throw badRequest(`field '${field}' holds private key material: register the public key only`, "ERR_PRIVATE_KEY");
  }
  if (typeof jwk.kid !== "string" || jwk.kid.length === 0 || jwk.kid.length > 256) {
    throw badRequest(`field '${field}.kid' is required (a non-empty string of at most 256 characters)`, "ERR_FIELD");
  }
  if (!isSafeIdentifierText(jwk.kid)) {
    throw badRequest(`field '${field}.kid' must not contain control characters or lone surrogates`, "ERR_FIELD");
  }
  const allowed = typeof jwk.kty === "string" ? ALGS_BY_TYPE[jwk.kty] : undefined;
  if (!allowed) throw badRequest(`field '${field}.kty' must be RSA or EC (P-256)`, "ERR_KEY_TYPE");
  if (jwk.alg !== undefined && (typeof jwk.alg !== "string" || !allowed.includes(jwk.alg))) {
    throw badRequest(`field '${field}.alg' does not fit a ${jwk.kty} key (accepted: ${allowed.join(", ")})`, "ERR_ALG");
  }
  const optional = {
    ...(typeof jwk.alg === "string" ? { alg: jwk.alg } : {}),
    ...(typeof jwk.use === "string" ? { use: jwk.use } : {}),
  };
  if (jwk.kty === "EC") {
    await importEcdhPublicKey(jwk, field); // P-256, on the curve
    return { kty: "EC", crv: "P-256", x: jwk.x as string, y: jwk.y as string, kid: jwk.kid, ...optional };
  }
  if (typeof jwk.n !== "string" || typeof jwk.e !== "string") throw badRequest(`field '${field}' must have RSA members 'n' and 'e'`, "ERR_FIELD");
  const bits = modulusBits(jwk.n);
  if (bits < 2048) throw badRequest(`field '${field}': RSA keys must be at least 2048 bits (got ${bits})`, "ERR_KEY_SIZE");
  try {
    await importJWK({ kty: "RSA", n: jwk.n, e: jwk.e }, "PS256");
  } catch {
    throw badRequest(`field '${field}' is not a valid RSA public key`, "ERR_FIELD");
  }
  return { kty: "RSA", n: jwk.n, e: jwk.e, kid: jwk.kid, ...optional };
}

function modulusBits(n: string): number {
  const bytes = n.replace(/=+$/, "");
  if (!/^[A-Za-z0-9_-]+$/.test(bytes)) return 0;
  const raw = atob(bytes.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (bytes.length % 4)) % 4));
  let i = 0;
  while (i < raw.length && raw.charCodeAt(i) === 0) i++;
  if (i === raw.length) return 0;
  return (raw.length - i - 1) * 8 + Math.floor(Math.log2(raw.charCodeAt(i))) + 1;
}
