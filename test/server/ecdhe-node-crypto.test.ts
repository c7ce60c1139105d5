import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { base64url, importJWK } from "jose";
import { ephemeralEcdh, importClientEcdhKey, serverEcdhe, uncompressedPoint } from "../../src/server/ecdhe-node-crypto.js";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import { KmsError } from "../../src/protocol/errors.js";

const vectors = JSON.parse(
  readFileSync(fileURLToPath(new URL("../vectors/node-jose-vectors.json", import.meta.url)), "utf8"),
);
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("server ECDH on node:crypto (createECDH)", () => {
  const ka = vectors.ephemeralKeyAgreement;

  it("reads the client key of the node-jose vector (the `d` member ignored)", () => {
    const client = importClientEcdhKey(ka.clientPrivateJwk);
    expect(client.jwk).toEqual({ kty: "EC", crv: "P-256", x: ka.clientPrivateJwk.x, y: ka.clientPrivateJwk.y });
    expect(client.point.length).toBe(65);
  });

  it("serverEcdhe gives the K_ephemeral the SDK derives with WebCrypto (from the other side)", async () => {
    for (let i = 0; i < 5; i++) {
      const clientPair = await generateEphemeralKeyPair();
      const clientJwk = await crypto.subtle.exportKey("jwk", clientPair.publicKey);
      const { kEphemeral, publicJwk } = serverEcdhe(importClientEcdhKey(clientJwk).point);
      const onClient = await deriveEphemeralKey(clientPair.privateKey, await importEcdhPublicKey(publicJwk));
      expect(base64url.encode(kEphemeral)).toBe(base64url.encode(onClient));
      expect(Object.keys(publicJwk).sort()).toEqual(["crv", "kty", "x", "y"]);
    }
  });

  it("ephemeralEcdh's Z with the vector's server key is the Z WebCrypto computes", async () => {
    const { z, publicJwk } = ephemeralEcdh(uncompressedPoint(ka.serverPublicJwk));
    const serverPriv = (await importJWK({ ...ka.serverPrivateJwk, alg: "ECDH-ES" }, "ECDH-ES")) as CryptoKey;
    const peer = await importEcdhPublicKey(publicJwk);
    const expected = new Uint8Array(await crypto.subtle.deriveBits({ name: "ECDH", public: peer }, serverPriv, 256));
    expect(hex(z)).toBe(hex(expected));
  });

  it("refuses a point off the curve and keys that are not EC P-256 public JWKs, with 400", () => {
    const { x } = serverEcdhe(importClientEcdhKey(ka.clientPrivateJwk).point).publicJwk;
    const cases: [unknown, string][] = [
      [{ kty: "EC", crv: "P-256", x, y: x }, "ERR_INVALID_POINT"],
      [{ kty: "EC", crv: "P-384", x, y: x }, "ERR_FIELD"],
      [{ kty: "RSA", n: "AQAB", e: "AQAB" }, "ERR_FIELD"],
      ["not a key", "ERR_FIELD"],
      [null, "ERR_FIELD"],
    ];
    for (const [jwk, code] of cases) {
      let caught: unknown;
      try {
        importClientEcdhKey(jwk);
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(KmsError);
      expect((caught as KmsError).status).toBe(400);
      expect((caught as KmsError).code).toBe(code);
    }
  });

  it("computeSecret refuses a point off the curve too (defence in depth)", () => {
    const { x } = serverEcdhe(importClientEcdhKey(ka.clientPrivateJwk).point).publicJwk;
    expect(() => ephemeralEcdh(uncompressedPoint({ x, y: x }))).toThrow();
  });
});
