import { constants, createHash, verify } from "node:crypto";
import { publicKeyOf } from "../public-key-cache.js";
import type { SignatureVerifier } from "../../primitives/gmbc/verify-chain.js";

/**
 * node:crypto versions of the two primitives the KMS runs on every appended block: the block hash
 * and the signature check. The primitives' defaults go through WebCrypto (isomorphic, but an async
 * job and a key import per call); on the append hot path that was a third of the work
 * (bench/RESULTS.md). Same results: test/server/gmbc-node-crypto.test.ts checks both against the
 * defaults, the node-jose vector included.
 */

/** Lower-case hex SHA-256 of the ASCII compact serialization (§1). */
export function blockHashSync(jws: string): string {
  return createHash("sha256").update(jws, "utf8").digest("hex");
}

/** Verifies ES256, PS256 and RS256 block signatures with node:crypto; never throws. */
export const verifyBlockSignature: SignatureVerifier = async (jws, jwk, alg) => {
  const key = publicKeyOf(jwk);
  if (!key) return false;
  const dot = jws.lastIndexOf(".");
  const signingInput = Buffer.from(jws.slice(0, dot), "ascii");
  const signature = Buffer.from(jws.slice(dot + 1), "base64url");
  try {
    if (alg === "ES256") {
      return key.asymmetricKeyType === "ec" && verify("sha256", signingInput, { key, dsaEncoding: "ieee-p1363" }, signature);
    }
    if (key.asymmetricKeyType !== "rsa") return false;
    if (alg === "PS256") {
      return verify("sha256", signingInput, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
    }
    if (alg === "RS256") return verify("sha256", signingInput, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
    return false;
  } catch {
    return false;
  }
};
