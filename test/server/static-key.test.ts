import { compactVerify, importJWK } from "jose";
import { describe, expect, it } from "vitest";
import { generateStaticKeyPair } from "../../src/pki/dev-ca.js";
import { StaticKey } from "../../src/server/static-key.js";

describe("StaticKey.sign (node:crypto) verifies with jose", () => {
  it.each([
    ["ec", "ES256"],
    ["rsa", "RS256"],
  ] as const)("%s key signs %s with header {alg, kid}", async (type, alg) => {
    const pair = await generateStaticKeyPair(type);
    const key = await StaticKey.fromPkcs8(pair.pkcs8Der, "kms://kms.example.com", []);
    const payload = { status: 401, reason: "unknown ephemeral key", requestId: "é-7" };
    const jws = await key.sign(payload);
    const { x5c: _x, ...jwk } = key.publicJwk;
    const { payload: out, protectedHeader } = await compactVerify(jws, await importJWK(jwk, alg), { algorithms: [alg] });
    expect(protectedHeader).toEqual({ alg, kid: "kms://kms.example.com" });
    expect(JSON.parse(new TextDecoder().decode(out))).toEqual(payload);
  });
});
