import { createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import type { JWK } from "jose";

const MAX_CACHED_KEYS = 10_000;
const cache = new Map<string, KeyObject | null>();

/**
 * A node:crypto public key for a registered JWK, imported once and kept in a bounded cache (null
 * when the JWK does not import: an off-curve point, a malformed modulus). Only the public members
 * are read, so a stray `d`, `alg` or `key_ops` can neither leak nor steer anything.
 *
 * @example
 * const key = publicKeyOf({ kty: "EC", crv: "P-256", x, y, kid: "laptop" });
 */
export function publicKeyOf(jwk: JWK): KeyObject | null {
  const members = jwk.kty === "RSA" ? { kty: "RSA", n: jwk.n, e: jwk.e } : { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y };
  const cacheKey = JSON.stringify(members);
  let key = cache.get(cacheKey);
  if (key === undefined) {
    try {
      key = createPublicKey({ key: members as JsonWebKey, format: "jwk" });
    } catch {
      key = null;
    }
    if (cache.size >= MAX_CACHED_KEYS) cache.delete(cache.keys().next().value!);
    cache.set(cacheKey, key);
  }
  return key;
}
