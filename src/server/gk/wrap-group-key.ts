import { constants, createCipheriv, publicEncrypt, randomBytes } from "node:crypto";
import type { GeneralJWE, JWK } from "jose";
import { CONTENT_ENCRYPTION } from "../../protocol/constants.js";
import { publicKeyOf } from "../public-key-cache.js";
import { AES_KW_IV, concatKdf256 } from "../jwe/ecdh-es.js";
import { ephemeralEcdh, uncompressedPoint } from "../ecdhe-node-crypto.js";

/** How a GK is wrapped to one device key: EC P-256 → ECDH-ES+A256KW; RSA → RSA-OAEP-256 unless the key asks for RSA-OAEP. */
export function wrapAlgorithmFor(jwk: JWK): "ECDH-ES+A256KW" | "RSA-OAEP" | "RSA-OAEP-256" {
  if (jwk.kty === "EC") return "ECDH-ES+A256KW";
  return jwk.alg === "RSA-OAEP" ? "RSA-OAEP" : "RSA-OAEP-256";
}

const b64u = (b: Uint8Array | string) => Buffer.from(b).toString("base64url");
const PROTECTED = b64u(JSON.stringify({ enc: CONTENT_ENCRYPTION }));

/** The CEK encrypted to one device key, with the recipient header (RFC 7516 General JSON). */
function wrapCek(cek: Buffer, jwk: JWK): { header: Record<string, unknown>; encrypted_key: string } {
  const key = publicKeyOf(jwk);
  if (!key) throw new Error(`registered key '${jwk.kid}' does not import`);
  const alg = wrapAlgorithmFor(jwk);
  if (alg === "ECDH-ES+A256KW") {
    // createECDH, not generateKeyPairSync + JWK export: see ecdhe-node-crypto.ts (a Node 20 deadlock).
    const { z, publicJwk: epk } = ephemeralEcdh(uncompressedPoint(jwk));
    const kek = concatKdf256(z, alg);
    const kw = createCipheriv("id-aes256-wrap", kek, AES_KW_IV);
    const encryptedKey = Buffer.concat([kw.update(cek), kw.final()]);
    return { header: { alg, kid: jwk.kid, epk }, encrypted_key: b64u(encryptedKey) };
  }
  const encryptedKey = publicEncrypt(
    { key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === "RSA-OAEP" ? "sha1" : "sha256" },
    cek,
  );
  return { header: { alg, kid: jwk.kid }, encrypted_key: b64u(encryptedKey) };
}

/**
 * Wraps a GK's 256-bit key to every device key of an entity (§9): a JWE General JSON
 * Serialization (an object), one recipient per key (header `alg`, `kid`, and `epk` for ECDH),
 * protected header `{"enc":"A256GCM"}`, whose plaintext is
 * `{"kty": "oct", "alg": "A256GCM", "kid": <gk uri>, "k": ...}`.
 *
 * On node:crypto rather than jose: this is most of the work of every GK create and get, and
 * WebCrypto's per-call imports and async jobs tripled it (bench/RESULTS.md). Clients open it with
 * jose (test/server/gk.test.ts unwraps every recipient with `generalDecrypt`).
 *
 * @example
 * const key = wrapGroupKey(keyBytes, "kms://kms.example.com/gks/1", [aliceLaptopJwk, alicePhoneJwk]);
 */
export function wrapGroupKey(keyBytes: Uint8Array, gkUri: string, recipients: readonly JWK[]): GeneralJWE {
  const cek = randomBytes(32);
  const iv = randomBytes(12);
  const gcm = createCipheriv("aes-256-gcm", cek, iv);
  gcm.setAAD(Buffer.from(PROTECTED, "ascii"));
  const plaintext = JSON.stringify({ kty: "oct", alg: CONTENT_ENCRYPTION, kid: gkUri, k: b64u(keyBytes) });
  const ciphertext = Buffer.concat([gcm.update(plaintext, "utf8"), gcm.final()]);
  const jwe = {
    protected: PROTECTED,
    recipients: recipients.map((jwk) => wrapCek(cek, jwk)),
    iv: b64u(iv),
    ciphertext: b64u(ciphertext),
    tag: b64u(gcm.getAuthTag()),
  };
  cek.fill(0);
  return jwe as GeneralJWE;
}
