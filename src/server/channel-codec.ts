import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { CONTENT_ENCRYPTION } from "../protocol/constants.js";

/**
 * The server's codec for common messages (§4: compact JWE, `dir`, A256GCM), on node:crypto.
 *
 * Why not jose here: jose is runtime-agnostic and goes through WebCrypto, which imports a key and
 * schedules an async job per message; on the hot path of every channel request that costs more
 * than the rest of the request together (bench/RESULTS.md). The format is small and fixed, so the
 * server does it directly; the SDK keeps using jose (src/protocol/jose/common-message.ts), and the
 * tests check that each side opens what the other seals (test/server/channel-codec.test.ts).
 *
 * The caller has checked the protected header (alg dir, enc A256GCM, no crit, no zip).
 */
const AES = "aes-256-gcm";

/** Opens a common message; throws on any tampering, a non-empty encrypted key, or bad lengths. */
export function openCommonMessage(key: Uint8Array, message: string): Buffer {
  const parts = message.split(".");
  if (parts.length !== 5 || parts[1] !== "") throw new Error("not a dir JWE");
  const iv = Buffer.from(parts[2]!, "base64url");
  const tag = Buffer.from(parts[4]!, "base64url");
  if (iv.length !== 12 || tag.length !== 16) throw new Error("bad IV or tag length");
  const decipher = createDecipheriv(AES, key, iv);
  decipher.setAAD(Buffer.from(parts[0]!, "ascii"));
  decipher.setAuthTag(tag);
  return Buffer.concat([decipher.update(Buffer.from(parts[3]!, "base64url")), decipher.final()]);
}

/** Seals a JSON payload as a common message with header `{"alg":"dir","enc":"A256GCM","kid":kid}`. */
export function sealCommonMessage(key: Uint8Array, kid: string, payload: unknown): string {
  const header = Buffer.from(JSON.stringify({ alg: "dir", enc: CONTENT_ENCRYPTION, kid })).toString("base64url");
  const iv = randomBytes(12);
  const cipher = createCipheriv(AES, key, iv);
  cipher.setAAD(Buffer.from(header, "ascii"));
  const ct = Buffer.concat([cipher.update(JSON.stringify(payload), "utf8"), cipher.final()]);
  return `${header}..${iv.toString("base64url")}.${ct.toString("base64url")}.${cipher.getAuthTag().toString("base64url")}`;
}
