import { badRequest } from "../errors.js";

const subtle = () => globalThis.crypto.subtle;
const EC_P256 = { name: "ECDH", namedCurve: "P-256" } as const;

/**
 * Imports a peer's EC P-256 public JWK for ECDH. Only `kty`, `crv`, `x`, `y` are read (a `d`
 * member is ignored, §5); a point that is not on the curve is refused (the invalid-curve attack, §2).
 *
 * @example
 * const peer = await importEcdhPublicKey({ kty: "EC", crv: "P-256", x: "...", y: "..." });
 */
export async function importEcdhPublicKey(jwk: unknown, field = "jwk"): Promise<CryptoKey> {
  if (typeof jwk !== "object" || jwk === null || Array.isArray(jwk)) {
    throw badRequest(`field '${field}' must be an EC P-256 public JWK`, "ERR_FIELD");
  }
  const { kty, crv, x, y } = jwk as Record<string, unknown>;
  if (kty !== "EC" || crv !== "P-256" || typeof x !== "string" || typeof y !== "string") {
    throw badRequest(`field '${field}' must be an EC P-256 public JWK (kty EC, crv P-256, x, y)`, "ERR_FIELD");
  }
  try {
    return await subtle().importKey("jwk", { kty, crv, x, y, ext: true }, EC_P256, true, []);
  } catch {
    throw badRequest(`field '${field}' is not a valid point on P-256`, "ERR_INVALID_POINT");
  }
}

/** A fresh EC P-256 key pair for one ECDHE (a client MUST use a new one per request, §4.6.1). */
export async function generateEphemeralKeyPair(): Promise<CryptoKeyPair> {
  return (await subtle().generateKey(EC_P256, true, ["deriveBits"])) as CryptoKeyPair;
}

/**
 * K_ephemeral = HKDF-SHA-256(IKM = Z (the ECDH x-coordinate), salt = empty, info = empty, L = 32) (§5).
 *
 * @example
 * const k = await deriveEphemeralKey(myPrivateKey, peerPublicKey); // 32 bytes, a dir/A256GCM key
 */
export async function deriveEphemeralKey(privateKey: CryptoKey, peerPublicKey: CryptoKey): Promise<Uint8Array> {
  const z = await subtle().deriveBits({ name: "ECDH", public: peerPublicKey }, privateKey, 256);
  return hkdfSha256(new Uint8Array(z));
}

/** HKDF-SHA-256 with empty salt and info, 32 bytes out: the profile's only use of HKDF. */
export async function hkdfSha256(ikm: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  const key = await subtle().importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const bits = await subtle().deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: new Uint8Array(0) },
    key,
    256,
  );
  return new Uint8Array(bits);
}
