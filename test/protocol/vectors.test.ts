import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { base64url, importJWK } from "jose";
import { deriveEphemeralKey, hkdfSha256, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import { decryptCommonMessage, encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { blockHash } from "../../src/primitives/block-hash.js";

/** Known answers made with node-jose 2.2.0 (Cisco node-kms's JOSE library): test/vectors. */
const vectors = JSON.parse(
  readFileSync(fileURLToPath(new URL("../vectors/node-jose-vectors.json", import.meta.url)), "utf8"),
);

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

describe("node-jose known-answer vectors", () => {
  const ka = vectors.ephemeralKeyAgreement;

  it("HKDF-SHA-256(Z) gives the vector's K_ephemeral", async () => {
    const z = Uint8Array.from(ka.sharedSecretZHex.match(/../g).map((h: string) => parseInt(h, 16)));
    expect(base64url.encode(await hkdfSha256(z))).toBe(ka.kEphemeralB64url);
  });

  it("ECDH + HKDF from either side gives K_ephemeral", async () => {
    const clientPriv = (await importJWK({ ...ka.clientPrivateJwk, alg: "ECDH-ES" }, "ECDH-ES", { extractable: true })) as CryptoKey;
    const serverPriv = (await importJWK({ ...ka.serverPrivateJwk, alg: "ECDH-ES" }, "ECDH-ES", { extractable: true })) as CryptoKey;
    const serverPub = await importEcdhPublicKey(ka.serverPublicJwk);
    const clientPub = await importEcdhPublicKey(ka.clientPrivateJwk); // the `d` member is ignored
    expect(base64url.encode(await deriveEphemeralKey(clientPriv, serverPub))).toBe(ka.kEphemeralB64url);
    expect(base64url.encode(await deriveEphemeralKey(serverPriv, clientPub))).toBe(ka.kEphemeralB64url);
    const z = new Uint8Array(await crypto.subtle.deriveBits({ name: "ECDH", public: serverPub }, clientPriv, 256));
    expect(hex(z)).toBe(ka.sharedSecretZHex);
  });

  it("decrypts the node-jose common message", async () => {
    const cm = vectors.commonMessage;
    const { payload } = await decryptCommonMessage(base64url.decode(cm.kEphemeralB64url), cm.compactJwe);
    expect(payload).toEqual(cm.plaintext);
  });

  it("our common message round-trips and carries dir/A256GCM/kid", async () => {
    const cm = vectors.commonMessage;
    const key = base64url.decode(cm.kEphemeralB64url);
    const jwe = await encryptCommonMessage(key, cm.kid, cm.plaintext);
    const header = JSON.parse(new TextDecoder().decode(base64url.decode(jwe.split(".")[0]!)));
    expect(header).toEqual({ alg: "dir", enc: "A256GCM", kid: cm.kid });
    expect((await decryptCommonMessage(key, jwe)).payload).toEqual(cm.plaintext);
  });

  it("a tampered common message does not decrypt", async () => {
    const cm = vectors.commonMessage;
    const parts = cm.compactJwe.split(".");
    const ct = base64url.decode(parts[3]);
    ct[0] = ct[0]! ^ 1;
    parts[3] = base64url.encode(ct);
    await expect(decryptCommonMessage(base64url.decode(cm.kEphemeralB64url), parts.join("."))).rejects.toThrow();
  });

  it("block hash of the appended block", async () => {
    expect(await blockHash(vectors.appendedBlock.compactJws)).toBe(vectors.appendedBlock.sha256Hex);
  });

  it("refuses a point that is not on P-256", async () => {
    const bad = { ...ka.serverPublicJwk, y: ka.clientPrivateJwk.y };
    await expect(importEcdhPublicKey(bad)).rejects.toMatchObject({ status: 400, code: "ERR_INVALID_POINT" });
  });
});
