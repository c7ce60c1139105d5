import { CompactEncrypt, compactVerify, decodeProtectedHeader, importJWK } from "jose";
import { describe, expect, it } from "vitest";
import { generateStaticKeyPair } from "../../src/pki/dev-ca.js";
import { PREVIOUS_KEY_DECRYPTION_GRACE_MS, StaticKey } from "../../src/server/static-key.js";

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

describe("StaticKey previous keys (static key rotation)", () => {
  const KID = "kms://kms.example.com";
  const HOUR = 3600_000;

  async function keys() {
    const [cur, ecOld, rsaOld] = await Promise.all([generateStaticKeyPair("ec"), generateStaticKeyPair("ec"), generateStaticKeyPair("rsa")]);
    return {
      current: await StaticKey.fromPkcs8(cur.pkcs8Der, KID, ["current"]),
      ecOld: await StaticKey.fromPkcs8(ecOld.pkcs8Der, KID, ["ec-old"]),
      rsaOld: await StaticKey.fromPkcs8(rsaOld.pkcs8Der, KID, ["rsa-old"]),
    };
  }
  const encryptTo = async (key: StaticKey, alg: string, text: string) => {
    const { x5c: _x, ...bare } = key.publicJwk;
    return new CompactEncrypt(new TextEncoder().encode(text)).setProtectedHeader({ alg, enc: "A256GCM", kid: KID }).encrypt(await importJWK(bare, alg));
  };
  /** What key agreement does: decryptKeyAgreement with the JWE's own header. */
  const decryptWithAny = (key: StaticKey, jwe: string) => {
    const plaintext = key.decryptKeyAgreement(jwe, decodeProtectedHeader(jwe));
    return plaintext === undefined ? undefined : plaintext.toString("utf8");
  };

  it("publishes previous public JWKs newest first, without duplicates of the current key", async () => {
    const { current, ecOld, rsaOld } = await keys();
    const now = Date.now();
    await current.setPreviousKeys([
      { key: ecOld, retiredAt: new Date(now - 2 * HOUR) },
      { key: rsaOld, retiredAt: new Date(now - HOUR) },
      { key: current, retiredAt: new Date(now) }, // a rotation that crashed after archiving
    ]);
    expect(current.previousPublicJwks.map((j) => j.x5c)).toEqual([["rsa-old"], ["ec-old"]]);
    expect(current.previousPublicJwks.every((j) => j.kid === KID && !("d" in j))).toBe(true);
  });

  it("decryptKeyAgreement: the current key, then previous keys of a fitting type within the grace period", async () => {
    const { current, ecOld, rsaOld } = await keys();
    let now = Date.now();
    await current.setPreviousKeys([{ key: ecOld, retiredAt: new Date(now) }, { key: rsaOld, retiredAt: new Date(now) }], () => now);
    expect([...current.acceptedKeyManagementAlgorithms].sort()).toEqual(["ECDH-ES", "ECDH-ES+A256KW", "RSA-OAEP", "RSA-OAEP-256"]);
    expect(decryptWithAny(current, await encryptTo(current, "ECDH-ES+A256KW", "to current"))).toBe("to current");
    expect(decryptWithAny(current, await encryptTo(ecOld, "ECDH-ES+A256KW", "to old"))).toBe("to old");
    expect(decryptWithAny(current, await encryptTo(ecOld, "ECDH-ES", "to old, direct"))).toBe("to old, direct");
    expect(decryptWithAny(current, await encryptTo(rsaOld, "RSA-OAEP-256", "to old rsa"))).toBe("to old rsa");
    expect(decryptWithAny(current, await encryptTo(rsaOld, "RSA-OAEP", "to old rsa, sha-1"))).toBe("to old rsa, sha-1");

    now += PREVIOUS_KEY_DECRYPTION_GRACE_MS;
    expect([...current.acceptedKeyManagementAlgorithms].sort()).toEqual(["ECDH-ES", "ECDH-ES+A256KW"]);
    expect(decryptWithAny(current, await encryptTo(ecOld, "ECDH-ES+A256KW", "too late"))).toBeUndefined();
    expect(decryptWithAny(current, await encryptTo(rsaOld, "RSA-OAEP-256", "too late"))).toBeUndefined();
    // Still published for verification: retiring is the operator's act (docs/static-key-rotation.md).
    expect(current.previousPublicJwks).toHaveLength(2);
  });

  it("refuses a previous key for another KMS", async () => {
    const { current } = await keys();
    const other = await StaticKey.fromPkcs8((await generateStaticKeyPair("ec")).pkcs8Der, "kms://other.example", []);
    await expect(current.setPreviousKeys([{ key: other, retiredAt: new Date() }])).rejects.toThrow("is for kms://other.example, not kms://kms.example.com");
  });
});

describe("kmsDiscoveryDocument", () => {
  it("is the profile's document without previous keys, and adds previousKeys after a rotation", async () => {
    const { kmsDiscoveryDocument } = await import("../../src/server/discovery.js");
    const key = await StaticKey.fromPkcs8((await generateStaticKeyPair("ec")).pkcs8Der, "kms://kms.example.com", ["leaf"]);
    const doc = kmsDiscoveryDocument("kms.example.com", key);
    expect(Object.keys(doc).sort()).toEqual(["jwk", "protocol", "uri"]);
    expect(doc).toMatchObject({ uri: "kms://kms.example.com", jwk: key.publicJwk });
    const old = await StaticKey.fromPkcs8((await generateStaticKeyPair("ec")).pkcs8Der, "kms://kms.example.com", ["old-leaf"]);
    await key.setPreviousKeys([{ key: old, retiredAt: new Date() }]);
    expect(kmsDiscoveryDocument("kms.example.com", key).previousKeys).toEqual([old.publicJwk]);
  });
});
