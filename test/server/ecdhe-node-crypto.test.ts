import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createPrivateKey } from "node:crypto";
import { describe, expect, it } from "vitest";
import { base64url } from "jose";
import { deriveEphemeralKeySync, generateServerEphemeralKey, importClientEcdhKey } from "../../src/server/ecdhe-node-crypto.js";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import { KmsError } from "../../src/protocol/errors.js";

const vectors = JSON.parse(
  readFileSync(fileURLToPath(new URL("../../../shared/vectors/node-jose-vectors.json", import.meta.url)), "utf8"),
);

describe("server ECDHE on node:crypto", () => {
  const ka = vectors.ephemeralKeyAgreement;

  it("gives the node-jose vector's K_ephemeral from the server side", () => {
    const serverPriv = createPrivateKey({ key: ka.serverPrivateJwk, format: "jwk" });
    const client = importClientEcdhKey(ka.clientPrivateJwk); // the `d` member is ignored
    expect(client.jwk).toEqual({ kty: "EC", crv: "P-256", x: ka.clientPrivateJwk.x, y: ka.clientPrivateJwk.y });
    expect(base64url.encode(deriveEphemeralKeySync(serverPriv, client.key))).toBe(ka.kEphemeralB64url);
  });

  it("agrees with the isomorphic WebCrypto derivation the SDK runs", async () => {
    for (let i = 0; i < 5; i++) {
      const server = generateServerEphemeralKey();
      const clientPair = await generateEphemeralKeyPair();
      const clientJwk = await crypto.subtle.exportKey("jwk", clientPair.publicKey);
      const onServer = deriveEphemeralKeySync(server.privateKey, importClientEcdhKey(clientJwk).key);
      const onClient = await deriveEphemeralKey(clientPair.privateKey, await importEcdhPublicKey(server.publicJwk));
      expect(base64url.encode(onServer)).toBe(base64url.encode(onClient));
      expect(Object.keys(server.publicJwk).sort()).toEqual(["crv", "kty", "x", "y"]);
    }
  });

  it("refuses a point off the curve and keys that are not EC P-256 public JWKs, with 400", () => {
    const { x } = generateServerEphemeralKey().publicJwk;
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
});
