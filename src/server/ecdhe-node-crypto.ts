import { createECDH, createPublicKey, hkdfSync } from "node:crypto";
import { badRequest } from "../protocol/errors.js";

/**
 * The server's ephemeral P-256 ECDH on node:crypto: the channel key agreement of §5 and the
 * per-recipient keys of GK wrapping. The same computations as src/protocol/jose/ephemeral-key.ts
 * (which the isomorphic SDK uses), without WebCrypto's async job, key import objects and promise
 * per step: key agreement is CPU-bound, and those were about a third of it (bench/RESULTS.md).
 *
 * Why `createECDH` and not `generateKeyPairSync` + `export({format: "jwk"})`: in Node 20 that pair
 * can deadlock the process. The JWK export holds the new key's mutex while it allocates; a GC
 * there may finalize the key-generation job, whose destructor takes the same mutex (seen here:
 * the GK ceiling bench hung in `~KeyGenJob` under `ExportJWKEcKey`). `createECDH` makes no key
 * object and no job. test/server/ecdhe-node-crypto.test.ts checks the results against the
 * SDK's WebCrypto derivation (itself checked against the node-jose vector).
 */

/** EC P-256 public JWK members, nothing else. */
export interface EcPublicJwk {
  readonly kty: "EC";
  readonly crv: "P-256";
  readonly x: string;
  readonly y: string;
}

/** The uncompressed point (0x04 || X || Y) of a P-256 public JWK whose x and y are 32 bytes each. */
export function uncompressedPoint(jwk: { x?: unknown; y?: unknown }): Buffer {
  const x = Buffer.from(String(jwk.x), "base64url");
  const y = Buffer.from(String(jwk.y), "base64url");
  if (x.length !== 32 || y.length !== 32) throw new Error("a P-256 coordinate is 32 bytes");
  return Buffer.concat([Buffer.of(4), x, y]);
}

/**
 * The client's ECDHE public key (field `jwk`): only kty, crv, x, y are read (a `d` member is
 * ignored, §5); a point that is not on P-256 is refused (OpenSSL checks it on import), which
 * stops the invalid-curve attack (§2).
 *
 * @example
 * const client = importClientEcdhKey(request.jwk); // { point, jwk }, or a 400 KmsError
 */
export function importClientEcdhKey(jwk: unknown, field = "jwk"): { point: Buffer; jwk: EcPublicJwk } {
  if (typeof jwk !== "object" || jwk === null || Array.isArray(jwk)) {
    throw badRequest(`field '${field}' must be an EC P-256 public JWK`, "ERR_FIELD");
  }
  const { kty, crv, x, y } = jwk as Record<string, unknown>;
  if (kty !== "EC" || crv !== "P-256" || typeof x !== "string" || typeof y !== "string") {
    throw badRequest(`field '${field}' must be an EC P-256 public JWK (kty EC, crv P-256, x, y)`, "ERR_FIELD");
  }
  const pub: EcPublicJwk = { kty, crv, x, y };
  try {
    createPublicKey({ key: { ...pub }, format: "jwk" });
    return { point: uncompressedPoint(pub), jwk: pub };
  } catch {
    throw badRequest(`field '${field}' is not a valid point on P-256`, "ERR_INVALID_POINT");
  }
}

/**
 * One ECDH with a fresh P-256 key pair: the shared secret Z (the x-coordinate) with `peerPoint`,
 * and the fresh public key as a JWK. The private key never leaves this call.
 *
 * @example
 * const { z, publicJwk } = ephemeralEcdh(uncompressedPoint(deviceJwk));
 */
export function ephemeralEcdh(peerPoint: Uint8Array): { z: Buffer; publicJwk: EcPublicJwk } {
  const ecdh = createECDH("prime256v1");
  const pub = ecdh.generateKeys();
  const z = ecdh.computeSecret(peerPoint);
  return { z, publicJwk: { kty: "EC", crv: "P-256", x: pub.subarray(1, 33).toString("base64url"), y: pub.subarray(33, 65).toString("base64url") } };
}

/**
 * The server's side of the channel key agreement (§5): a fresh key pair, and K_ephemeral =
 * HKDF-SHA-256(IKM = Z, salt and info empty, 32 bytes).
 *
 * @example
 * const { kEphemeral, publicJwk } = serverEcdhe(importClientEcdhKey(request.jwk).point);
 */
export function serverEcdhe(clientPoint: Uint8Array): { kEphemeral: Uint8Array; publicJwk: EcPublicJwk } {
  const { z, publicJwk } = ephemeralEcdh(clientPoint);
  return { kEphemeral: new Uint8Array(hkdfSync("sha256", z, new Uint8Array(0), new Uint8Array(0), 32)), publicJwk };
}
