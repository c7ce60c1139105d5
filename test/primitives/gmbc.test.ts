import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { CompactSign, base64url, exportJWK, generateKeyPair, type JWK } from "jose";
import { KmsError } from "../../src/protocol/errors.js";
import {
  ChainVerificationError,
  Membership,
  applyOperations,
  buildAppendedPayload,
  membershipAt,
  parseBlock,
  signAppendedBlock,
  verifyAppendedBlockSignature,
  verifyChain,
  type AppendedPayload,
  type GenesisPayload,
  type Operation,
  type ParsedBlock,
} from "../../src/primitives/gmbc/index.js";

const vectors = JSON.parse(
  readFileSync(fileURLToPath(new URL("../vectors/node-jose-vectors.json", import.meta.url)), "utf8"),
);

const KMS_URI = "kms://kms.example.com";
const MAX = { maxOperations: 10_000 };
const enc = (v: unknown) => base64url.encode(JSON.stringify(v));
const add = (entity: string): Operation => ({ entity, optype: "add" });
const remove = (entity: string): Operation => ({ entity, optype: "remove" });

/** A hand-made compact JWS with an arbitrary header and payload (signature bytes meaningless). */
const rawJws = (header: unknown, payload: unknown, signature = "c2lnbmF0dXJl") => `${enc(header)}.${enc(payload)}.${signature}`;

async function expectKmsError(p: Promise<unknown> | (() => unknown), code: string, reason?: RegExp) {
  let error: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(KmsError);
  const k = error as KmsError;
  expect(k.status).toBe(400);
  expect(k.code).toBe(code);
  if (reason) expect(k.reason).toMatch(reason);
}

describe("node-jose known-answer vector (appended block)", () => {
  const v = vectors.appendedBlock;

  it("parseBlock gives the vector's payload and hash", async () => {
    const block = await parseBlock(v.compactJws, MAX);
    expect(block.genesis).toBe(false);
    expect(block.payload).toEqual(v.payload);
    expect(block.hash).toBe(v.sha256Hex);
    expect(block.header).toEqual({ alg: "PS256", kid: "alice-laptop" });
    expect(block.jws).toBe(v.compactJws);
  });

  it("verifyAppendedBlockSignature verifies it with the signer's PS256 RSA key", async () => {
    const block = await parseBlock(v.compactJws, MAX);
    const other = await exportJWK((await generateKeyPair("PS256", { extractable: true })).publicKey);
    const key = await verifyAppendedBlockSignature(block, [{ ...other, kid: "alice-old" }, v.signerPublicJwk]);
    expect(key.kid).toBe("alice-laptop");
    // A key that merely carries the right kid does not verify it; a kid that is not the creator's is refused.
    await expectKmsError(
      verifyAppendedBlockSignature(block, [{ ...other, kid: "alice-laptop" }]),
      "ERR_SIGNATURE",
      /signature does not verify with a registered key of alice@example\.com/,
    );
    await expectKmsError(
      verifyAppendedBlockSignature(block, [{ ...v.signerPublicJwk, kid: "bob-laptop" }]),
      "ERR_SIGNATURE",
      /kid 'alice-laptop' names no key of alice@example\.com/,
    );
  });
});

describe("parseBlock", () => {
  const appended = {
    antecedent: "a".repeat(64),
    creator: "acct:Alice@Example.COM",
    created: "2015-11-02T19:13:15Z",
    operations: [add("acct:bob@EXAMPLE.com"), remove("carol@example.com")],
  };
  const header = { alg: "ES256", kid: "k" };

  it("normalizes entities and keeps only the known members", async () => {
    const block = await parseBlock(rawJws(header, { ...appended, extra: 1 }), MAX);
    expect(block.payload).toEqual({
      antecedent: "a".repeat(64),
      creator: "Alice@example.com",
      created: "2015-11-02T19:13:15Z",
      operations: [add("bob@example.com"), remove("carol@example.com")],
    });
  });

  it("parses a genesis block", async () => {
    const g = { uri: `${KMS_URI}/blocks/1`, nonce: "n", curator: KMS_URI, creator: KMS_URI, created: "2015-11-02T19:02:15Z", operations: [add("a@x.org")] };
    const block = await parseBlock(rawJws({ alg: "ES256", kid: KMS_URI }, g), MAX);
    expect(block.genesis).toBe(true);
    expect(block.payload).toEqual(g);
    await expectKmsError(parseBlock(rawJws(header, { ...g, operations: [remove("a@x.org")] }), MAX), "ERR_BLOCK", /optype/);
    await expectKmsError(parseBlock(rawJws(header, { ...g, nonce: undefined }), MAX), "ERR_BLOCK", /nonce/);
    await expectKmsError(parseBlock(rawJws(header, { ...g, antecedent: "a".repeat(64) }), MAX), "ERR_BLOCK", /antecedent/);
    await expectKmsError(parseBlock(rawJws(header, { ...g, operations: [add(KMS_URI)] }), MAX), "ERR_OP_CURATOR", /curator/);
  });

  const cases: Array<[string, string, string | RegExp]> = [
    ["not three parts", "a.b", /three/],
    ["header not JSON", `${base64url.encode("nope")}.${enc(appended)}.sig`, /header/],
    ["payload not an object", rawJws(header, [1]), /payload/],
    ["no alg", rawJws({ kid: "k" }, appended), /alg/],
    ["alg none", rawJws({ alg: "none" }, appended, ""), /none/],
    ["HMAC", rawJws({ alg: "HS256" }, appended), /HMAC/],
    ["crit", rawJws({ alg: "ES256", crit: ["b64"], b64: false }, appended), /crit/],
    ["empty signature", rawJws(header, appended, ""), /signature/],
    ["no antecedent", rawJws(header, { ...appended, antecedent: undefined }), /'antecedent'/],
    ["upper-case antecedent", rawJws(header, { ...appended, antecedent: "A".repeat(64) }), /'antecedent'/],
    ["short antecedent", rawJws(header, { ...appended, antecedent: "a".repeat(63) }), /'antecedent'/],
    ["bad creator", rawJws(header, { ...appended, creator: "alice" }), /'creator'/],
    ["no created", rawJws(header, { ...appended, created: undefined }), /'created'/],
    ["bad created", rawJws(header, { ...appended, created: "2015-02-30T00:00:00Z" }), /'created'/],
    ["created not RFC 3339", rawJws(header, { ...appended, created: "Nov 2, 2015" }), /'created'/],
    ["no operations", rawJws(header, { ...appended, operations: undefined }), /'operations'/],
    ["empty operations", rawJws(header, { ...appended, operations: [] }), /'operations'/],
    ["too many operations", rawJws(header, { ...appended, operations: [add("a@x.org"), add("b@x.org"), add("c@x.org")] }), /limit of 2/],
    ["bad entity", rawJws(header, { ...appended, operations: [add("nobody")] }), /operations\[0\]\.entity/],
    ["unknown optype", rawJws(header, { ...appended, operations: [{ entity: "a@x.org", optype: "promote" }] }), /operations\[0\]\.optype/],
    ["duplicate entity", rawJws(header, { ...appended, operations: [add("a@X.org"), remove("acct:a@x.org")] }), /operations\[1\]\.entity.*a@x\.org/],
  ];
  for (const [name, jws, reason] of cases) {
    it(`refuses ${name} with 400`, async () => {
      let error: unknown;
      try {
        await parseBlock(jws, { maxOperations: 2 });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(KmsError);
      expect((error as KmsError).status).toBe(400);
      expect((error as KmsError).reason).toMatch(reason);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// A chain built in the test: the KMS's genesis (ES256), then members with EC and RSA device keys.

interface Device {
  entity: string;
  kid: string;
  alg: "ES256" | "PS256" | "RS256";
  privateKey: CryptoKey;
  publicJwk: JWK;
}

async function device(entity: string, kid: string, alg: Device["alg"]): Promise<Device> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { entity, kid, alg, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid } };
}

async function signGenesis(key: CryptoKey, payload: Partial<GenesisPayload>, alg = "ES256", kid: string | undefined = KMS_URI) {
  const full: GenesisPayload = {
    uri: `${KMS_URI}/blocks/5c1e`,
    nonce: "3f9b8f06-2a7e-4f5e-9e43-1d6c1f0f4b8a",
    curator: KMS_URI,
    creator: KMS_URI,
    created: "2025-01-01T00:00:00Z",
    operations: [add("alice@example.com"), add("carol@example.com")],
    ...payload,
  };
  return new CompactSign(new TextEncoder().encode(JSON.stringify(full)))
    .setProtectedHeader(kid === undefined ? { alg } : { alg, kid })
    .sign(key);
}

async function appendBlock(
  chain: string[],
  signer: Device,
  operations: Operation[],
  overrides: { creator?: string; kid?: string | null; antecedentOf?: string } = {},
): Promise<string> {
  const antecedent = (await parseBlock(overrides.antecedentOf ?? chain[chain.length - 1]!, MAX)).hash;
  const payload = buildAppendedPayload({ antecedent, creator: overrides.creator ?? signer.entity, operations });
  if (overrides.kid === null) {
    return new CompactSign(new TextEncoder().encode(JSON.stringify(payload))).setProtectedHeader({ alg: signer.alg }).sign(signer.privateKey);
  }
  return signAppendedBlock(payload, signer.privateKey, { alg: signer.alg as "ES256", kid: overrides.kid ?? signer.kid });
}

/** One chain and key set for the whole file (RSA key generation is slow); tests copy `chain` before changing it. */
let shared: ReturnType<typeof buildFixture> | undefined;
const fixture = () => (shared ??= buildFixture());

async function buildFixture() {
  const kms = await generateKeyPair("ES256", { extractable: true });
  const kmsKey: JWK = { ...(await exportJWK(kms.publicKey)), kid: KMS_URI };
  const alicePhone = await device("alice@example.com", "alice-phone", "ES256");
  const aliceLaptop = await device("alice@example.com", "alice-laptop", "PS256");
  const bobLaptop = await device("bob@example.com", "bob-laptop", "PS256");
  const carolDesk = await device("carol@example.com", "carol-desk", "PS256");
  const carolOld = await device("carol@example.com", "carol-old", "PS256");
  const carolPhone = await device("carol@example.com", "carol-phone", "ES256");
  const daveTablet = await device("dave@example.com", "dave-tablet", "RS256");
  const malloryPhone = await device("mallory@example.com", "mallory-phone", "ES256");
  // carol-old comes first: block 3 has no kid, so each of carol's RSA keys is tried in turn.
  const devices = [alicePhone, aliceLaptop, bobLaptop, carolOld, carolPhone, carolDesk, daveTablet, malloryPhone];
  const keysOf = async (entity: string) => devices.filter((d) => d.entity === entity).map((d) => d.publicJwk);

  const chain: string[] = [await signGenesis(kms.privateKey, {})];
  chain.push(await appendBlock(chain, alicePhone, [add("bob@example.com")])); // 1: alice (EC) adds bob
  chain.push(await appendBlock(chain, bobLaptop, [remove("alice@example.com"), add("dave@example.com")])); // 2: bob (RSA) removes alice
  chain.push(await appendBlock(chain, carolDesk, [add("erin@example.com")], { kid: null })); // 3: carol, no kid
  chain.push(await appendBlock(chain, daveTablet, [remove("bob@example.com"), add("acct:Alice@EXAMPLE.com")])); // 4: dave (RS256)
  const opts = { kmsKey, kmsUri: KMS_URI, keysOf };
  return { kms, kmsKey, keysOf, chain, opts, alicePhone, aliceLaptop, bobLaptop, carolDesk, carolPhone, daveTablet, malloryPhone };
}

async function expectChainError(p: Promise<unknown>, code: string, index: number, message?: RegExp) {
  let error: unknown;
  try {
    await p;
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(ChainVerificationError);
  const c = error as ChainVerificationError;
  expect({ code: c.code, index: c.index }).toEqual({ code, index });
  expect(c.message).toMatch(new RegExp(`^block ${index} \\([0-9a-f]{8}…\\): `));
  if (message) expect(c.message).toMatch(message);
}

/** Replaces a block's payload and keeps its header and signature. */
function alterPayload(jws: string, change: (p: AppendedPayload) => AppendedPayload): string {
  const [h, p, s] = jws.split(".") as [string, string, string];
  const payload = JSON.parse(new TextDecoder().decode(base64url.decode(p))) as AppendedPayload;
  return `${h}.${enc(change(payload))}.${s}`;
}

describe("verifyChain", () => {
  it("verifies a chain and reports the membership and tail", async () => {
    const f = await fixture();
    const { blocks, members, tail } = await verifyChain(f.chain, f.opts);
    expect(blocks).toHaveLength(5);
    expect(blocks[0]!.genesis).toBe(true);
    expect(tail).toBe(blocks[4]!.hash);
    expect(members.members()).toEqual(["Alice@example.com", "carol@example.com", "dave@example.com", "erin@example.com"]);
    expect(members.size).toBe(4);
    expect(members.has("acct:carol@EXAMPLE.COM")).toBe(true);
    expect(membershipAt(blocks, 0).members()).toEqual(["alice@example.com", "carol@example.com"]);
    expect(membershipAt(blocks, 1).members()).toEqual(["alice@example.com", "bob@example.com", "carol@example.com"]);
    expect(membershipAt(blocks, 2).members()).toEqual(["bob@example.com", "carol@example.com", "dave@example.com"]);
    expect(membershipAt(blocks, 4).members()).toEqual(members.members());
    expect(() => membershipAt(blocks, 5)).toThrow(RangeError);
    expect(blocks[3]!.header.kid).toBeUndefined();
    expect((await verifyAppendedBlockSignature(blocks[3]!, await f.keysOf("carol@example.com"))).kid).toBe("carol-desk");
  });

  it("verifies a genesis block signed by an RSA KMS key (RS256 and PS256), with or without kid", async () => {
    for (const alg of ["RS256", "PS256"] as const) {
      const kms = await generateKeyPair(alg, { extractable: true });
      const kmsKey = { ...(await exportJWK(kms.publicKey)), kid: KMS_URI };
      const keysOf = async () => [];
      await verifyChain([await signGenesis(kms.privateKey, {}, alg)], { kmsKey, kmsUri: KMS_URI, keysOf });
      await verifyChain([await signGenesis(kms.privateKey, {}, alg, undefined)], { kmsKey, kmsUri: KMS_URI, keysOf });
    }
  });

  it("refuses an empty chain", async () => {
    const f = await fixture();
    let error: unknown;
    try {
      await verifyChain([], f.opts);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ChainVerificationError);
    expect((error as ChainVerificationError).code).toBe("ERR_CHAIN_EMPTY");
  });

  it("detects a reordered block", async () => {
    const f = await fixture();
    const c = [...f.chain];
    [c[2], c[3]] = [c[3]!, c[2]!];
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_LINK", 2, /antecedent is not the hash of block 1/);
  });

  it("detects a dropped block", async () => {
    const f = await fixture();
    const c = f.chain.filter((_, i) => i !== 2);
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_LINK", 2, /dropped, reordered or altered/);
    await expectChainError(verifyChain(f.chain.slice(1), f.opts), "ERR_CHAIN_GENESIS", 0);
  });

  it("detects an altered payload (signature kept)", async () => {
    const f = await fixture();
    const c = [...f.chain];
    c[2] = alterPayload(c[2]!, (p) => ({ ...p, operations: [remove("alice@example.com"), add("mallory@example.com")] }));
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_SIGNATURE", 2, /signature does not verify with a registered key of bob@example\.com/);
    // Altering the last block is caught the same way.
    const d = [...f.chain];
    d[4] = alterPayload(d[4]!, (p) => ({ ...p, created: "2025-01-01T00:00:01Z" }));
    await expectChainError(verifyChain(d, f.opts), "ERR_CHAIN_SIGNATURE", 4);
  });

  it("detects a block re-signed by a non-member", async () => {
    const f = await fixture();
    const c = f.chain.slice(0, 2);
    c.push(await appendBlock(c, f.malloryPhone, [remove("alice@example.com")]));
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_NOT_MEMBER", 2, /mallory@example\.com is not a member as of block 1/);
    // A removed member may not append either: alice was removed at block 2.
    const e = f.chain.slice(0, 3);
    e.push(await appendBlock(e, f.alicePhone, [add("mallory@example.com")]));
    await expectChainError(verifyChain(e, f.opts), "ERR_CHAIN_NOT_MEMBER", 3, /alice@example\.com is not a member as of block 2/);
  });

  it("detects a block signed with another entity's key", async () => {
    const f = await fixture();
    const c = f.chain.slice(0, 2);
    // bob's block, signed with alice's key and alice's kid
    c.push(await appendBlock(c, f.alicePhone, [remove("alice@example.com")], { creator: "bob@example.com" }));
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_SIGNATURE", 2, /kid 'alice-phone' names no key of bob@example\.com/);
    // the same without a kid: no key of bob verifies it
    const d = f.chain.slice(0, 2);
    d.push(await appendBlock(d, f.aliceLaptop, [remove("alice@example.com")], { creator: "bob@example.com", kid: null }));
    await expectChainError(verifyChain(d, f.opts), "ERR_CHAIN_SIGNATURE", 2, /registered key of bob@example\.com/);
    // a kid of bob's, but signed by alice's key
    const e = f.chain.slice(0, 2);
    e.push(await appendBlock(e, f.aliceLaptop, [remove("alice@example.com")], { creator: "bob@example.com", kid: "bob-laptop" }));
    await expectChainError(verifyChain(e, f.opts), "ERR_CHAIN_SIGNATURE", 2);
  });

  it("treats an algorithm that does not fit the key as a signature failure", async () => {
    const f = await fixture();
    const c = f.chain.slice(0, 3);
    // carol's RSA key named, but the header says ES256 (signed with carol's EC key)
    const payload = buildAppendedPayload({ antecedent: (await parseBlock(c[2]!, MAX)).hash, creator: "carol@example.com", operations: [add("x@example.com")] });
    c.push(await signAppendedBlock(payload, f.carolPhone.privateKey, { alg: "ES256", kid: "carol-desk" }));
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_SIGNATURE", 3, /does not fit/);
  });

  it("detects a genesis block not signed by the KMS", async () => {
    const f = await fixture();
    const impostor = await generateKeyPair("ES256");
    const c = [...f.chain];
    c[0] = await signGenesis(impostor.privateKey, {});
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_SIGNATURE", 0, /not signed by the KMS static key/);
    // signed by the KMS but naming another key
    const d = [...f.chain];
    d[0] = await signGenesis(f.kms.privateKey, {}, "ES256", "kms://other.example.com");
    await expectChainError(verifyChain(d, f.opts), "ERR_CHAIN_SIGNATURE", 0);
    // a genesis signed by an RSA key while the KMS key is EC: alg does not fit
    const rsa = await generateKeyPair("RS256");
    const e = [...f.chain];
    e[0] = await signGenesis(rsa.privateKey, {}, "RS256");
    await expectChainError(verifyChain(e, f.opts), "ERR_CHAIN_SIGNATURE", 0, /does not fit/);
  });

  it("detects a genesis block with another curator or creator, or another chain uri", async () => {
    const f = await fixture();
    const c = [...f.chain];
    c[0] = await signGenesis(f.kms.privateKey, { curator: "kms://evil.example.com" });
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_GENESIS", 0, /curator is kms:\/\/evil\.example\.com/);
    c[0] = await signGenesis(f.kms.privateKey, { creator: "alice@example.com" });
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_GENESIS", 0, /creator/);
    c[0] = await signGenesis(f.kms.privateKey, { uri: "kms://evil.example.com/blocks/1" });
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_GENESIS", 0, /uri/);
    await expectChainError(verifyChain(f.chain, { ...f.opts, chainUri: `${KMS_URI}/blocks/other` }), "ERR_CHAIN_GENESIS", 0);
    // and a second genesis block later in the chain
    const d = [...f.chain, await signGenesis(f.kms.privateKey, {})];
    await expectChainError(verifyChain(d, f.opts), "ERR_CHAIN_GENESIS", 5);
  });

  it("refuses alg none and HMAC blocks", async () => {
    const f = await fixture();
    const payload = buildAppendedPayload({ antecedent: (await parseBlock(f.chain[2]!, MAX)).hash, creator: "bob@example.com", operations: [add("x@example.com")] });
    const c = [...f.chain.slice(0, 3), rawJws({ alg: "none" }, payload, "")];
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_SIGNATURE", 3, /none/);
    const d = [...f.chain.slice(0, 3), rawJws({ alg: "HS256", kid: "bob-laptop" }, payload)];
    await expectChainError(verifyChain(d, f.opts), "ERR_CHAIN_SIGNATURE", 3, /HMAC/);
    const g = [rawJws({ alg: "none" }, (await parseBlock(f.chain[0]!, MAX)).payload, "")];
    await expectChainError(verifyChain(g, f.opts), "ERR_CHAIN_SIGNATURE", 0);
  });

  it("detects an add of a current member", async () => {
    const f = await fixture();
    const c = [...f.chain];
    c.push(await appendBlock(c, f.carolPhone, [add("dave@example.com")]));
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_OPERATION", 5, /cannot add dave@example\.com: already a member/);
  });

  it("detects a removal of a non-member", async () => {
    const f = await fixture();
    const c = [...f.chain];
    c.push(await appendBlock(c, f.carolPhone, [remove("bob@example.com")]));
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_OPERATION", 5, /cannot remove bob@example\.com: not a member/);
  });

  it("detects an operation on the curator", async () => {
    const f = await fixture();
    const payload: AppendedPayload = {
      antecedent: (await parseBlock(f.chain[4]!, MAX)).hash,
      creator: "carol@example.com",
      created: "2025-01-01T00:00:00Z",
      operations: [remove(KMS_URI)],
    };
    const c = [...f.chain, await signAppendedBlock(payload, f.carolPhone.privateKey, { alg: "ES256", kid: "carol-phone" })];
    await expectChainError(verifyChain(c, f.opts), "ERR_CHAIN_OPERATION", 5, /names the curator/);
    const d = [...f.chain];
    d[0] = await signGenesis(f.kms.privateKey, { operations: [add("alice@example.com"), add("KMS://kms.example.com")] });
    await expectChainError(verifyChain(d, f.opts), "ERR_CHAIN_OPERATION", 0, /curator/);
  });

  it("refuses a block created too far in the future and a malformed block", async () => {
    const f = await fixture();
    await expectChainError(verifyChain(f.chain, { ...f.opts, now: new Date("2024-12-31T23:00:00Z") }), "ERR_CHAIN_MALFORMED", 0, /future/);
    // Blocks were created just now: 4 minutes ago is within the 5-minute skew, 6 minutes is not.
    await verifyChain(f.chain, { ...f.opts, now: new Date(Date.now() - 4 * 60_000) });
    await expectChainError(verifyChain(f.chain, { ...f.opts, now: new Date(Date.now() - 6 * 60_000) }), "ERR_CHAIN_MALFORMED", 1, /future/);
    await expectChainError(verifyChain([...f.chain, "not a block"], f.opts), "ERR_CHAIN_MALFORMED", 5);
  });
});

describe("applyOperations", () => {
  it("refuses naming the entity", async () => {
    const m = new Membership(["alice@example.com"]);
    await expectKmsError(() => applyOperations(m, [add("alice@example.com")]), "ERR_OP_MEMBER", /alice@example\.com/);
    await expectKmsError(() => applyOperations(m, [remove("bob@example.com")]), "ERR_OP_NOT_MEMBER", /bob@example\.com/);
    await expectKmsError(() => applyOperations(m, [add(KMS_URI)], KMS_URI), "ERR_OP_CURATOR", /kms:\/\/kms\.example\.com/);
    await expectKmsError(() => applyOperations(m, [add("c@x.org"), remove("c@x.org")]), "ERR_OP_DUPLICATE", /c@x\.org/);
    expect(m.members()).toEqual(["alice@example.com"]); // unchanged
    expect(applyOperations(new Set(["alice@example.com"]), [remove("acct:alice@EXAMPLE.com")]).size).toBe(0);
  });

  const ENTITIES = ["a@x.org", "b@x.org", "c@x.org", "d@x.org", "curator@x.org"];
  const opArb = fc.record({ entity: fc.constantFrom(...ENTITIES), optype: fc.constantFrom<"add" | "remove">("add", "remove") });

  /** The model: a block's operations are a set applied to a Set; any violation refuses the whole block. */
  function model(start: ReadonlySet<string>, ops: Operation[], curator?: string): Set<string> | "refused" {
    const s = new Set(start);
    if (new Set(ops.map((o) => o.entity)).size !== ops.length) return "refused";
    for (const o of ops) {
      if (o.entity === curator) return "refused";
      if (o.optype === "add" ? s.has(o.entity) : !s.has(o.entity)) return "refused";
      if (o.optype === "add") s.add(o.entity);
      else s.delete(o.entity);
    }
    return s;
  }

  it("either refuses with 400 or matches a Set model", () => {
    fc.assert(
      fc.property(
        fc.subarray(ENTITIES.slice(0, 4)),
        fc.array(opArb, { maxLength: 6 }),
        fc.option(fc.constant("curator@x.org"), { nil: undefined }),
        (start, ops, curator) => {
          const expected = model(new Set(start), ops, curator);
          let result: Membership | undefined;
          try {
            result = applyOperations(new Membership(start), ops, curator);
          } catch (e) {
            expect(e).toBeInstanceOf(KmsError);
            expect((e as KmsError).status).toBe(400);
            expect(expected).toBe("refused");
            return;
          }
          expect(expected).not.toBe("refused");
          expect(result.members()).toEqual([...(expected as Set<string>)].sort());
        },
      ),
      { numRuns: 500 },
    );
  });

  it("membershipAt equals a replay of the blocks", () => {
    const fakeBlock = (i: number, operations: Operation[], genesis: boolean): ParsedBlock => ({
      jws: `h.p.s${i}`,
      hash: i.toString(16).padStart(64, "0"),
      header: { alg: "ES256" },
      genesis,
      payload: genesis
        ? { uri: `${KMS_URI}/blocks/1`, nonce: "n", curator: KMS_URI, creator: KMS_URI, created: "2025-01-01T00:00:00Z", operations }
        : { antecedent: "0".repeat(64), creator: "a@x.org", created: "2025-01-01T00:00:00Z", operations },
    });
    fc.assert(
      fc.property(fc.array(fc.array(opArb, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 8 }), (opLists) => {
        // Keep the op lists that apply, building a valid chain and the model's state after each block.
        const blocks: ParsedBlock[] = [];
        const states: Set<string>[] = [];
        let state = new Set<string>();
        for (const ops of opLists) {
          const genesis = blocks.length === 0;
          const effective = genesis ? ops.map((o) => ({ ...o, optype: "add" as const })) : ops;
          const next = model(state, effective, KMS_URI);
          if (next === "refused") continue;
          blocks.push(fakeBlock(blocks.length, effective, genesis));
          states.push((state = next));
        }
        blocks.forEach((_, i) => expect(membershipAt(blocks, i).members()).toEqual([...states[i]!].sort()));
      }),
      { numRuns: 300 },
    );
  });
});
