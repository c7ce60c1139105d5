import { createHash } from "node:crypto";

/**
 * The pieces of JWE's ECDH-ES key agreement (RFC 7518 §4.6) that the server runs on node:crypto:
 * GK wrapping (encrypt) and key agreement requests to the static key (decrypt).
 */

/** RFC 3394's default initial value, which node's id-aes256-wrap wants given explicitly. */
export const AES_KW_IV = Buffer.from("A6A6A6A6A6A6A6A6", "hex");

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const lengthPrefixed = (b: Uint8Array) => Buffer.concat([u32(b.length), b]);

/**
 * Concat KDF (NIST SP 800-56A, RFC 7518 §4.6.2) for a 256-bit key: one SHA-256 round over
 * counter 1, Z and OtherInfo = AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo (256).
 * `algorithmId` is the `alg` (key wrapping) or the `enc` (ECDH-ES direct).
 *
 * @example
 * const kek = concatKdf256(z, "ECDH-ES+A256KW");
 */
export function concatKdf256(z: Uint8Array, algorithmId: string, apu: Uint8Array = new Uint8Array(0), apv: Uint8Array = new Uint8Array(0)): Buffer {
  const otherInfo = Buffer.concat([lengthPrefixed(Buffer.from(algorithmId, "ascii")), lengthPrefixed(apu), lengthPrefixed(apv), u32(256)]);
  return createHash("sha256").update(u32(1)).update(z).update(otherInfo).digest();
}
