import { generateKeyPairSync, type KeyObject } from "node:crypto";
import fc from "fast-check";
import { CompactEncrypt, compactDecrypt, decodeProtectedHeader, importJWK, type JWK } from "jose";
import { describe, expect, it } from "vitest";
import { decryptCompactJwe } from "../../src/server/jwe/decrypt-compact.js";

/** The server's node:crypto decrypt of key-agreement requests, against jose (the reference). */
describe("decryptCompactJwe (node:crypto) agrees with jose", () => {
  const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const publicJwk = (k: KeyObject) => k.export({ format: "jwk" }) as JWK;

  const encrypt = async (publicKey: KeyObject, alg: string, text: string, extra: Record<string, unknown> = {}) =>
    new CompactEncrypt(new TextEncoder().encode(text))
      .setProtectedHeader({ alg, enc: "A256GCM", kid: "kms://kms.example.com", ...extra })
      .encrypt(await importJWK(publicJwk(publicKey), alg));
  const ours = (jwe: string, key: KeyObject) => decryptCompactJwe(jwe, decodeProtectedHeader(jwe), key).toString("utf8");

  const cases = [
    ["ECDH-ES+A256KW", ec],
    ["ECDH-ES", ec],
    ["RSA-OAEP", rsa],
    ["RSA-OAEP-256", rsa],
  ] as const;

  it.each(cases)("%s: decrypts what jose encrypts, and jose decrypts the same message", async (alg, pair) => {
    const text = JSON.stringify({ method: "create", uri: "/ecdhe", requestId: "é-1" });
    const jwe = await encrypt(pair.publicKey, alg, text);
    expect(ours(jwe, pair.privateKey)).toBe(text);
    const reference = await compactDecrypt(jwe, pair.privateKey, { keyManagementAlgorithms: [alg] });
    expect(new TextDecoder().decode(reference.plaintext)).toBe(text);
  });

  it("ECDH-ES with apu/apv (Concat KDF PartyUInfo/PartyVInfo)", async () => {
    for (const alg of ["ECDH-ES+A256KW", "ECDH-ES"]) {
      const jwe = await new CompactEncrypt(new TextEncoder().encode("with parties"))
        .setProtectedHeader({ alg, enc: "A256GCM" })
        .setKeyManagementParameters({ apu: new TextEncoder().encode("client"), apv: new TextEncoder().encode("kms") })
        .encrypt(await importJWK(publicJwk(ec.publicKey), alg));
      expect(decodeProtectedHeader(jwe).apu).toBeDefined();
      expect(ours(jwe, ec.privateKey)).toBe("with parties");
    }
  });

  it("property: any plaintext round-trips for every algorithm", async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 300 }), fc.constantFrom(...cases), async (text, [alg, pair]) => {
        expect(ours(await encrypt(pair.publicKey, alg, text), pair.privateKey)).toBe(text);
      }),
      { numRuns: 60 },
    );
  });

  it("refuses a tampered part, a wrong key, bad base64url and a mistyped apu", async () => {
    for (const [alg, pair] of cases) {
      const jwe = await encrypt(pair.publicKey, alg, "secret request");
      const parts = jwe.split(".");
      for (let i = 0; i < 5; i++) {
        if (parts[i] === "") continue; // ECDH-ES has no encrypted key
        const tampered = [...parts];
        const c = tampered[i]!;
        const mid = Math.floor(c.length / 2);
        tampered[i] = c.slice(0, mid) + (c[mid] === "A" ? "B" : "A") + c.slice(mid + 1);
        // The header decoded from the untampered message: what the KMS checked before decrypting.
        expect(() => decryptCompactJwe(tampered.join("."), decodeProtectedHeader(jwe), pair.privateKey), `${alg} part ${i}`).toThrow();
      }
      const other = pair === ec ? generateKeyPairSync("ec", { namedCurve: "P-256" }) : generateKeyPairSync("rsa", { modulusLength: 2048 });
      expect(() => ours(jwe, other.privateKey)).toThrow();
      expect(() => ours(jwe, (pair === ec ? rsa : ec).privateKey)).toThrow();
      expect(() => decryptCompactJwe(parts.slice(0, 3).join(".") + ".*" + parts[3] + "." + parts[4], decodeProtectedHeader(jwe), pair.privateKey)).toThrow();
      expect(() => decryptCompactJwe(jwe + ".x", decodeProtectedHeader(jwe), pair.privateKey)).toThrow();
    }
    const jwe = await encrypt(ec.publicKey, "ECDH-ES+A256KW", "x");
    expect(() => decryptCompactJwe(jwe, { ...decodeProtectedHeader(jwe), apu: 7 }, ec.privateKey)).toThrow();
    expect(() => decryptCompactJwe(jwe, { ...decodeProtectedHeader(jwe), alg: "A256KW" }, ec.privateKey)).toThrow();
  });
});
