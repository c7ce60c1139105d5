import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { exportJWK, generateKeyPair, type JWK } from "jose";
import { describe, expect, it } from "vitest";
import { blockHash } from "../../src/primitives/block-hash.js";
import { buildAppendedPayload, parseBlock, signAppendedBlock, verifyAppendedBlockSignature } from "../../src/primitives/gmbc/index.js";
import { blockHashSync, verifyBlockSignature } from "../../src/server/gmbc/node-crypto.js";

const vectors = JSON.parse(readFileSync(fileURLToPath(new URL("../vectors/node-jose-vectors.json", import.meta.url)), "utf8"));

describe("server block hash and signature check (node:crypto) agree with the isomorphic primitives", () => {
  it("block hash: the node-jose vector, and any string", async () => {
    expect(blockHashSync(vectors.appendedBlock.compactJws)).toBe(vectors.appendedBlock.sha256Hex);
    await fc.assert(
      fc.asyncProperty(fc.string(), async (s) => {
        expect(blockHashSync(s)).toBe(await blockHash(s));
      }),
      { numRuns: 200 },
    );
  });

  it("PS256 vector verifies; a flipped signature or another key does not", async () => {
    const block = await parseBlock(vectors.appendedBlock.compactJws, { maxOperations: 10 });
    const jwk = vectors.appendedBlock.signerPublicJwk as JWK;
    expect(await verifyBlockSignature(block.jws, jwk, "PS256")).toBe(true);
    expect(await verifyBlockSignature(block.jws, jwk, "RS256")).toBe(false);
    const tampered = block.jws.slice(0, -2) + (block.jws.endsWith("A") ? "BB" : "AA");
    expect(await verifyBlockSignature(tampered, jwk, "PS256")).toBe(false);
    const other = { ...(await exportJWK((await generateKeyPair("PS256")).publicKey)), kid: "alice-laptop" };
    await expect(verifyAppendedBlockSignature(block, [other], verifyBlockSignature)).rejects.toMatchObject({ status: 400 });
    expect(await verifyAppendedBlockSignature(block, [jwk], verifyBlockSignature)).toEqual(jwk);
  });

  it.each(["ES256", "PS256", "RS256"] as const)("%s: node:crypto and jose agree on good and bad signatures", async (alg) => {
    const { privateKey, publicKey } = await generateKeyPair(alg);
    const jwk = { ...(await exportJWK(publicKey)), kid: "k1" };
    const payload = buildAppendedPayload({ antecedent: "0".repeat(64), creator: "alice@example.com", operations: [{ entity: "bob@example.com", optype: "add" }] });
    const jws = await signAppendedBlock(payload, privateKey as CryptoKey, { alg, kid: "k1" });
    const block = await parseBlock(jws, { maxOperations: 10 });
    expect(await verifyAppendedBlockSignature(block, [jwk], verifyBlockSignature)).toEqual(jwk);
    expect(await verifyAppendedBlockSignature(block, [jwk])).toEqual(jwk);
    const parts = jws.split(".");
    const bad = `${parts[0]}.${Buffer.from(JSON.stringify({ ...payload, creator: "mallory@example.com" })).toString("base64url")}.${parts[2]}`;
    expect(await verifyBlockSignature(bad, jwk, alg)).toBe(false);
    // An off-curve or malformed key never verifies and never throws.
    expect(await verifyBlockSignature(jws, { kty: "EC", crv: "P-256", x: jwk.x ?? "AA", y: jwk.x ?? "AA" }, "ES256")).toBe(false);
  });
});
