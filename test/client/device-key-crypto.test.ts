import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CompactSign, compactVerify, exportJWK, importJWK } from "jose";
import { DeviceKey, GroupKeys, Groups, KmsProtocolError, type DeviceCryptoKeyPair, type KmsClient } from "../../src/client/index.js";
import { startTestKms, type TestKms } from "../helpers/harness.js";

const subtle = globalThis.crypto.subtle;

async function ecdsaPair(curve = "P-256", extractable = false): Promise<CryptoKeyPair> {
  return (await subtle.generateKey({ name: "ECDSA", namedCurve: curve }, extractable, ["sign", "verify"])) as CryptoKeyPair;
}

describe("DeviceKey held as non-extractable CryptoKeys (isomorphic: Node here, Chromium in test/browser)", () => {
  for (const type of ["ec", "rsa"] as const) {
    it(`generate({ extractable: false }) (${type}): CryptoKeys that sign and unwrap but never export; no JWK, no JSON`, async () => {
      const device = await DeviceKey.generate({ type, kid: `web-${type}`, extractable: false });
      expect(device.extractable).toBe(false);
      expect(device.kid).toBe(`web-${type}`);
      expect(device.alg).toBe(type === "ec" ? "ES256" : "PS256");
      expect(Object.keys(device.publicJwk).sort()).toEqual(type === "ec" ? ["crv", "kid", "kty", "x", "y"] : ["e", "kid", "kty", "n"]);
      const keys = device.cryptoKeys!;
      expect(keys.privateKey.extractable).toBe(false);
      expect(keys.unwrappingKey!.extractable).toBe(false);
      expect(keys.unwrappingKey!.algorithm.name).toBe(type === "ec" ? "ECDH" : "RSA-OAEP");
      await expect(subtle.exportKey("jwk", keys.privateKey)).rejects.toThrow();
      await expect(subtle.exportKey("jwk", keys.unwrappingKey!)).rejects.toThrow();
      expect(() => device.privateJwk).toThrow(/non-extractable/);
      expect(() => JSON.stringify(device)).toThrow(/non-extractable/);
      // It signs what verifies with its public JWK (what the KMS registers).
      const jws = await new CompactSign(new TextEncoder().encode("block")).setProtectedHeader({ alg: device.alg, kid: device.kid }).sign(await device.signingKey());
      const { kid: _kid, ...pub } = device.publicJwk;
      await expect(compactVerify(jws, await importJWK(pub, device.alg))).resolves.toBeDefined();
      // Its unwrapping key is the one the KMS wraps to; an algorithm of the other key type is refused.
      expect(await device.unwrappingKey(type === "ec" ? "ECDH-ES+A256KW" : "RSA-OAEP-256")).toBe(keys.unwrappingKey);
      await expect(device.unwrappingKey(type === "ec" ? "RSA-OAEP-256" : "ECDH-ES+A256KW")).rejects.toThrow(/cannot unwrap/);
      if (type === "rsa") await expect(device.unwrappingKey("RSA-OAEP")).rejects.toThrow(/SHA-256, not 'RSA-OAEP'/);
    });
  }

  it("fromCryptoKeyPair restores the same key from its CryptoKeys (a structured clone, as IndexedDB keeps them)", async () => {
    const device = await DeviceKey.generate({ kid: "web", extractable: false });
    const stored = structuredClone(device.cryptoKeys!);
    const again = await DeviceKey.fromCryptoKeyPair(stored);
    expect(again.publicJwk).toEqual(device.publicJwk);
    expect(again.extractable).toBe(false);
    const jws = await new CompactSign(new Uint8Array([1])).setProtectedHeader({ alg: "ES256" }).sign(await again.signingKey());
    const { kid: _kid, ...pub } = device.publicJwk;
    await expect(compactVerify(jws, await importJWK(pub, "ES256"))).resolves.toBeDefined();
    // An application's own pair (no unwrapping key) signs, and says why it cannot unwrap.
    const own = await ecdsaPair();
    const signOnly = await DeviceKey.fromCryptoKeyPair({ kid: "own", ...own });
    expect(signOnly.publicJwk).toEqual({ kty: "EC", crv: "P-256", ...pick(await exportJWK(own.publicKey), "x", "y"), kid: "own" });
    await expect(signOnly.unwrappingKey("ECDH-ES+A256KW")).rejects.toThrow(/no unwrapping key/);
  });

  it("fromCryptoKeyPair refuses hostile or mixed-up stores: wrong curve or algorithm, halves of two pairs, swapped halves, a foreign or wrong-algorithm unwrapping key", async () => {
    const a = (await DeviceKey.generate({ kid: "a", extractable: false })).cryptoKeys!;
    const b = (await DeviceKey.generate({ kid: "b", extractable: false })).cryptoKeys!;
    const p384 = await ecdsaPair("P-384");
    const pkcs1 = (await subtle.generateKey(
      { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
      false,
      ["sign", "verify"],
    )) as CryptoKeyPair;
    const sealedPublic = await subtle.importKey("jwk", await exportJWK(a.publicKey), { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
    const cases: [string, DeviceCryptoKeyPair, RegExp][] = [
      ["no kid", { ...a, kid: undefined as unknown as string }, /needs a 'kid'/],
      ["empty kid", { ...a, kid: "" }, /1\.\.256/],
      ["not a CryptoKey", { ...a, publicKey: { type: "public" } as unknown as CryptoKey }, /public CryptoKey/],
      ["public as private", { ...a, privateKey: a.publicKey }, /private CryptoKey/],
      ["private as public", { ...a, publicKey: a.privateKey }, /public CryptoKey/],
      ["P-384", { kid: "x", ...p384 }, /ECDSA P-256 or RSA-PSS/],
      ["RSASSA-PKCS1-v1_5", { kid: "x", ...pkcs1 }, /ECDSA P-256 or RSA-PSS/],
      ["halves of two pairs", { ...a, privateKey: b.privateKey }, /not one key pair/],
      ["algorithms differ", { ...a, privateKey: pkcs1.privateKey }, /does not match/],
      ["a public key that does not export", { ...a, publicKey: sealedPublic }, /does not export as a JWK/],
      ["foreign unwrapping key", { ...a, unwrappingKey: b.unwrappingKey! }, /not the private key of 'publicKey'/],
      ["signing key as unwrapping key", { ...a, unwrappingKey: a.privateKey }, /ECDH P-256 with usage 'deriveBits'/],
    ];
    for (const [name, keys, message] of cases) {
      await expect(DeviceKey.fromCryptoKeyPair(keys), name).rejects.toThrow(message);
      await expect(DeviceKey.fromCryptoKeyPair(keys), name).rejects.toBeInstanceOf(TypeError);
    }
    await expect(DeviceKey.fromCryptoKeyPair(null as unknown as DeviceCryptoKeyPair)).rejects.toThrow(TypeError);
  });

  it("a JWK-held DeviceKey is unchanged: extractable, privateJwk and toJSON as before, unwrappingKey imports from the JWK", async () => {
    const device = await DeviceKey.generate({ kid: "node" });
    expect(device.extractable).toBe(true);
    expect(device.cryptoKeys).toBeUndefined();
    expect(JSON.parse(JSON.stringify(device))).toEqual(device.privateJwk);
    const key = await device.unwrappingKey("ECDH-ES+A256KW");
    expect(key.algorithm.name).toBe("ECDH");
    expect(key.extractable).toBe(false);
  });

  describe("against a real KMS", () => {
    let kms: TestKms;
    const clients: KmsClient[] = [];
    beforeAll(async () => {
      kms = await startTestKms();
    });
    afterAll(async () => {
      await kms?.close();
    });

    it("a non-extractable device registers, signs blocks and unwraps GKs (EC and RSA); one without an unwrapping key gets ERR_GK_UNWRAP", async () => {
      for (const type of ["ec", "rsa"] as const) {
        const user = type === "ec" ? "alice@example.com" : "bob@example.com";
        const client = kms.client(user);
        clients.push(client);
        const device = await DeviceKey.fromCryptoKeyPair(structuredClone((await DeviceKey.generate({ type, kid: `${type}-web`, extractable: false })).cryptoKeys!));
        const groups = new Groups(client, { user, device });
        await groups.registerDevice();
        const group = await groups.create([user]);
        // A block signed by the non-extractable key (add then remove dave), which the chain verifies.
        await groups.add(group.uri, ["dave@example.com"]);
        await groups.remove(group.uri, ["dave@example.com"]);
        expect((await groups.verify(group.uri)).blocks).toHaveLength(3);
        const gks = new GroupKeys(client, { user, device, chains: groups });
        const jwe = await gks.encryptFor(group.uri, new TextEncoder().encode(`hello ${type}`));
        const reader = new GroupKeys(client, { user, device });
        expect(new TextDecoder().decode((await reader.decrypt(jwe)).plaintext)).toBe(`hello ${type}`);
      }
      // Carol's pair has no unwrapping key: she registers and is a member, but cannot open the GK.
      const carol = "carol@example.com";
      const client = kms.client(carol);
      const own = await ecdsaPair();
      const device = await DeviceKey.fromCryptoKeyPair({ kid: "carol-sign-only", ...own });
      const groups = new Groups(client, { user: carol, device });
      await groups.registerDevice();
      const group = await groups.create([carol]);
      const err = await new GroupKeys(client, { user: carol, device, chains: groups }).currentKey(group.uri).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KmsProtocolError);
      expect(err).toMatchObject({ code: "ERR_GK_UNWRAP", message: expect.stringMatching(/no unwrapping key/) });
    });
  });
});

function pick<T extends object, K extends keyof T>(o: T, ...keys: K[]): Pick<T, K> {
  return Object.fromEntries(keys.map((k) => [k, o[k]])) as Pick<T, K>;
}
