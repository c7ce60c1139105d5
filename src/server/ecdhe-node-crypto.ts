import { createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, type KeyObject } from "node:crypto";
import { badRequest } from "../protocol/errors.js";

/**
 * The server's side of the ECDHE of §5 on node:crypto: the same computations as
 * src/protocol/jose/ephemeral-key.ts (which the isomorphic SDK uses), without WebCrypto's
 * async job, key import objects and promise per step. Key agreement is CPU-bound on one core:
 * those costs were about a third of it (bench/RESULTS.md). test/server/ecdhe-node-crypto.test.ts
 * checks both give the node-jose vector's K_ephemeral.
 */

/** EC P-256 public JWK members, nothing else. */
export interface EcPublicJwk {
  readonly kty: "EC";
  readonly crv: "P-256";
  readonly x: string;
  readonly y: string;
}

/**
 * The client's ECDHE public key (field `jwk`): only kty, crv, x, y are read (a `d` member is
 * ignored, §5); a point that is not on P-256 is refused (OpenSSL checks it on import), which
 * stops the invalid-curve attack (§2).
 *
 * @example
 * const peer = importClientEcdhKey(request.jwk); // KeyObject, or a 400 KmsError
 */
export function importClientEcdhKey(jwk: unknown, field = "jwk"): { key: KeyObject; jwk: EcPublicJwk } {
  if (typeof jwk !== "object" || jwk === null || Array.isArray(jwk)) {
    throw badRequest(`field '${field}' must be an EC P-256 public JWK`, "ERR_FIELD");
  }
  const { kty, crv, x, y } = jwk as Record<string, unknown>;
  if (kty !== "EC" || crv !== "P-256" || typeof x !== "string" || typeof y !== "string") {
    throw badRequest(`field '${field}' must be an EC P-256 public JWK (kty EC, crv P-256, x, y)`, "ERR_FIELD");
  }
  const pub: EcPublicJwk = { kty, crv, x, y };
  try {
    return { key: createPublicKey({ key: { ...pub }, format: "jwk" }), jwk: pub };
  } catch {
    throw badRequest(`field '${field}' is not a valid point on P-256`, "ERR_INVALID_POINT");
  }
}

/** A fresh P-256 key pair for one channel, with its public JWK. */
export function generateServerEphemeralKey(): { privateKey: KeyObject; publicJwk: EcPublicJwk } {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const { x, y } = publicKey.export({ format: "jwk" });
  return { privateKey, publicJwk: { kty: "EC", crv: "P-256", x: x!, y: y! } };
}

/**
 * K_ephemeral = HKDF-SHA-256(IKM = Z, the ECDH x-coordinate; salt and info empty; 32 bytes) (§5).
 *
 * @example
 * const kEphemeral = deriveEphemeralKeySync(server.privateKey, client.key);
 */
export function deriveEphemeralKeySync(privateKey: KeyObject, peerPublicKey: KeyObject): Uint8Array {
  const z = diffieHellman({ privateKey, publicKey: peerPublicKey });
  return new Uint8Array(hkdfSync("sha256", z, new Uint8Array(0), new Uint8Array(0), 32));
}
