import { CompactEncrypt, compactDecrypt } from "jose";
import { CONTENT_ENCRYPTION } from "../constants.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Encrypts a common message (§4): compact JWE, `{"alg":"dir","enc":"A256GCM","kid":<ephemeral uri>}`.
 *
 * @example
 * const jwe = await encryptCommonMessage(kEphemeral, "kms://kms.example.com/ecdhe/1", { status: 200, requestId: "r1" });
 */
export async function encryptCommonMessage(key: Uint8Array | CryptoKey, kid: string, payload: unknown): Promise<string> {
  return new CompactEncrypt(encoder.encode(JSON.stringify(payload)))
    .setProtectedHeader({ alg: "dir", enc: CONTENT_ENCRYPTION, kid })
    .encrypt(key);
}

/**
 * Decrypts a common message and parses its JSON payload. Throws (jose errors) on any tampering,
 * wrong key, or an algorithm other than `dir`/`A256GCM`.
 *
 * @example
 * const { payload } = await decryptCommonMessage(kEphemeral, jwe);
 */
export async function decryptCommonMessage(
  key: Uint8Array | CryptoKey,
  jwe: string,
): Promise<{ payload: unknown; plaintext: string }> {
  const { plaintext } = await compactDecrypt(jwe, key, {
    keyManagementAlgorithms: ["dir"],
    contentEncryptionAlgorithms: [CONTENT_ENCRYPTION],
  });
  const text = decoder.decode(plaintext);
  return { payload: JSON.parse(text), plaintext: text };
}
