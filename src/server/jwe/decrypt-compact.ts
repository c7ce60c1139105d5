import { constants, createDecipheriv, createPublicKey, diffieHellman, privateDecrypt, type KeyObject } from "node:crypto";
import { AES_KW_IV, concatKdf256 } from "./ecdh-es.js";

const B64URL = /^[A-Za-z0-9_-]*$/;

/** Strict base64url (Buffer's decoder skips characters it does not know). */
function b64(part: string | undefined, what: string): Buffer {
  if (part === undefined || !B64URL.test(part)) throw new Error(`${what} is not base64url`);
  return Buffer.from(part, "base64url");
}

/**
 * Decrypts a compact JWE made to a private key the server holds, with `enc` A256GCM and `alg`
 * ECDH-ES+A256KW, ECDH-ES, RSA-OAEP or RSA-OAEP-256: the key-agreement request to the static key
 * (§5). node:crypto one-shot calls instead of jose's WebCrypto path, which cost a fifth of every
 * ECDHE (bench/RESULTS.md); test/server/jwe-decrypt.test.ts checks it against jose, and node-kms
 * (node-jose) interop runs through it.
 *
 * The caller has checked the header against §2 (alg allowed for this key type, enc A256GCM, no
 * crit or zip, a valid `epk` point). Throws on every failure, with no detail a caller should
 * pass on: a request that does not decrypt is one 401 whatever the reason.
 *
 * @example
 * const plaintext = decryptCompactJwe(message, header, staticPrivateKey);
 */
export function decryptCompactJwe(jwe: string, header: Readonly<Record<string, unknown>>, privateKey: KeyObject): Buffer {
  const parts = jwe.split(".");
  if (parts.length !== 5) throw new Error("not a compact JWE");
  const [protectedB64, encryptedKeyB64, ivB64, ciphertextB64, tagB64] = parts as [string, string, string, string, string];
  const encryptedKey = b64(encryptedKeyB64, "encrypted key");
  const alg = header.alg;

  let cek: Buffer;
  if (alg === "ECDH-ES+A256KW" || alg === "ECDH-ES") {
    if (privateKey.asymmetricKeyType !== "ec") throw new Error("ECDH-ES needs an EC key");
    const { kty, crv, x, y } = (header.epk ?? {}) as Record<string, unknown>;
    const epk = createPublicKey({ key: { kty: kty as string, crv: crv as string, x: x as string, y: y as string }, format: "jwk" });
    const party = (v: unknown, what: string) => (v === undefined ? undefined : typeof v === "string" ? b64(v, what) : fail(`${what} is not a string`));
    const apu = party(header.apu, "apu");
    const apv = party(header.apv, "apv");
    const z = diffieHellman({ privateKey, publicKey: epk });
    if (alg === "ECDH-ES") {
      if (encryptedKey.length !== 0) throw new Error("ECDH-ES has no encrypted key");
      cek = concatKdf256(z, "A256GCM", apu, apv);
    } else {
      const unwrap = createDecipheriv("id-aes256-wrap", concatKdf256(z, alg, apu, apv), AES_KW_IV);
      cek = Buffer.concat([unwrap.update(encryptedKey), unwrap.final()]);
    }
  } else if (alg === "RSA-OAEP" || alg === "RSA-OAEP-256") {
    if (privateKey.asymmetricKeyType !== "rsa") throw new Error("RSA-OAEP needs an RSA key");
    cek = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === "RSA-OAEP" ? "sha1" : "sha256" }, encryptedKey);
  } else {
    throw new Error("unsupported alg");
  }
  if (cek.length !== 32) throw new Error("the content key is not 256 bits");

  const iv = b64(ivB64, "iv");
  const tag = b64(tagB64, "tag");
  if (iv.length !== 12 || tag.length !== 16) throw new Error("A256GCM needs a 96-bit iv and a 128-bit tag");
  const gcm = createDecipheriv("aes-256-gcm", cek, iv, { authTagLength: 16 });
  gcm.setAAD(Buffer.from(protectedB64, "ascii"));
  gcm.setAuthTag(tag);
  const plaintext = Buffer.concat([gcm.update(b64(ciphertextB64, "ciphertext")), gcm.final()]);
  cek.fill(0);
  return plaintext;
}

function fail(message: string): never {
  throw new Error(message);
}
