import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compactVerify, decodeProtectedHeader, importJWK, type JWK } from "jose";
import { blockHash } from "../../src/primitives/block-hash.js";
import { rfc3339Now, verifyChain, type Operation } from "../../src/primitives/gmbc/index.js";
import { RawClient, staticJwk, startTestKms, type TestKms } from "../helpers/harness.js";
import {
  add,
  append,
  chainSnapshot,
  channel,
  createChain,
  expectStatus,
  forkedPositions,
  newDevice,
  registerDevice,
  remove,
  rowCount,
  signBlock,
  signRaw,
  type Device,
} from "../helpers/gmbc-fixtures.js";

const KMS_URI = "kms://kms.example.com";
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const CAROL = "carol@example.com";
const DAVE = "dave@example.com";
const ERIN = "erin@example.com";

const randomHash = () => randomBytes(32).toString("hex");
const payloadOf = (jws: string) => JSON.parse(Buffer.from(jws.split(".")[1]!, "base64url").toString("utf8")) as Record<string, unknown>;
const inFuture = (ms: number) => rfc3339Now(new Date(Date.now() + ms));

/** One KMS with its users' channels and registered device keys. */
interface World {
  kms: TestKms;
  raw: Record<string, RawClient>;
  dev: Record<string, Device>;
}

async function startWorld(env?: Record<string, string>): Promise<World> {
  const kms = await startTestKms(env ? { env } : {});
  const devices: [string, Device][] = await Promise.all([
    newDevice(ALICE, "alice-ec", "ES256").then((d) => [ALICE, d] as [string, Device]),
    newDevice(BOB, "bob-rsa", "PS256").then((d) => [BOB, d] as [string, Device]),
    newDevice(CAROL, "carol-ec", "ES256").then((d) => [CAROL, d] as [string, Device]),
    newDevice(DAVE, "dave-ec", "ES256").then((d) => [DAVE, d] as [string, Device]),
    newDevice(ERIN, "erin-ec", "ES256").then((d) => [ERIN, d] as [string, Device]),
  ]);
  const raw: Record<string, RawClient> = {};
  const dev: Record<string, Device> = {};
  for (const [user, device] of devices) {
    raw[user] = await channel(kms, user);
    dev[user] = device;
    await registerDevice(raw[user]!, device);
  }
  return { kms, raw, dev };
}

async function retrieveBlocks(raw: RawClient, chainUri: string, antecedent?: string): Promise<string[]> {
  const reply = expectStatus(await raw.request({ method: "retrieve", uri: chainUri, ...(antecedent !== undefined ? { antecedent } : {}) }), 200);
  return reply.blocks as string[];
}

async function keysOverChannel(raw: RawClient, entity: string): Promise<JWK[]> {
  return expectStatus(await raw.request({ method: "retrieve", uri: `/entities/${entity}/keys` }), 200).keys as JWK[];
}

async function verifyOverChannel(kms: TestKms, raw: RawClient, chainUri: string) {
  const blocks = await retrieveBlocks(raw, chainUri);
  return verifyChain(blocks, { kmsKey: await staticJwk(kms.url), kmsUri: KMS_URI, chainUri, keysOf: (e) => keysOverChannel(raw, e) });
}

/** An append that must be refused with `status`, leaving the chain (blocks, tail, length, membership index) as it was. */
async function expectRefused(w: World, via: RawClient, reader: RawClient, chainUri: string, blocks: readonly unknown[], status: number, reason: RegExp) {
  const before = chainSnapshot(w.kms, chainUri);
  const listed = await retrieveBlocks(reader, chainUri);
  expectStatus(await append(via, chainUri, blocks), status, reason);
  expect(chainSnapshot(w.kms, chainUri)).toEqual(before);
  expect(await retrieveBlocks(reader, chainUri)).toEqual(listed);
}

describe("GMBC (PROTOCOL.md §8)", () => {
  let w: World;
  let limits: World;
  let former: World;
  beforeAll(async () => {
    [w, limits, former] = await Promise.all([
      startWorld(),
      startWorld({ KEYWARD_MAX_BLOCKS_PER_APPEND: "2", KEYWARD_MAX_OPERATIONS_PER_BLOCK: "3" }),
      startWorld({ KEYWARD_GMBC_READERS: "members-and-former" }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([w?.kms.close(), limits?.kms.close(), former?.kms.close()]);
  });

  const alice = () => w.raw[ALICE]!;
  const bob = () => w.raw[BOB]!;
  const carol = () => w.raw[CAROL]!;
  const erin = () => w.raw[ERIN]!;
  const dev = (user: string) => w.dev[user]!;

  // ── Genesis ───────────────────────────────────────────────────────────────────────────────
  describe("genesis (create /blocks)", () => {
    it("201 {block}: a JWS by the static key with exactly the six members", async () => {
      const res = await alice().request({
        method: "create",
        uri: "/blocks",
        requestId: "genesis-1",
        blockPayload: { operations: [add(BOB), add("acct:Carol@EXAMPLE.com")] },
      });
      const reply = expectStatus(res, 201);
      expect(reply.requestId).toBe("genesis-1");
      const jws = reply.block as string;
      expect(typeof jws).toBe("string");
      const { x5c: _x5c, ...bare } = await staticJwk(w.kms.url);
      const { payload, protectedHeader } = await compactVerify(jws, await importJWK(bare, "ES256"));
      expect(protectedHeader.kid).toBe(KMS_URI);
      expect(protectedHeader.alg).toBe("ES256");
      const p = JSON.parse(new TextDecoder().decode(payload)) as Record<string, unknown>;
      expect(Object.keys(p).sort()).toEqual(["created", "creator", "curator", "nonce", "operations", "uri"]);
      expect(p.uri).toMatch(/^kms:\/\/kms\.example\.com\/blocks\/[^/\s]+$/);
      expect(typeof p.nonce).toBe("string");
      expect(p.nonce).not.toBe("");
      expect(p.curator).toBe(KMS_URI);
      expect(p.creator).toBe(KMS_URI);
      expect(p.created).toMatch(RFC3339);
      expect(Math.abs(Date.parse(p.created as string) - Date.now())).toBeLessThan(60_000);
      // Entities are written without acct:, domain in lower case (§7).
      expect(p.operations).toEqual([add(BOB), add("Carol@example.com")]);
      // Stored exactly as returned, and the requester is recorded (not in the block).
      const snap = chainSnapshot(w.kms, p.uri as string);
      expect(snap.chain).toMatchObject({ uri: p.uri, requester: ALICE, length: 1, tail_hash: await blockHash(jws) });
      expect(snap.blocks.map((b) => b.jws)).toEqual([jws]);
      expect(snap.memberships.map((m) => m.entity).sort()).toEqual(["Carol@example.com", BOB]);
      expect(JSON.stringify(p)).not.toContain(ALICE);
    });

    it("creator and created given by the client are ignored; every chain has its own uri and nonce", async () => {
      const ops = [add(ALICE)];
      const r1 = expectStatus(
        await alice().request({ method: "create", uri: "/blocks", blockPayload: { creator: "mallory@example.com", created: "2001-01-01T00:00:00Z", operations: ops } }),
        201,
      );
      const r2 = expectStatus(await alice().request({ method: "create", uri: "kms://kms.example.com/blocks", blockPayload: { operations: ops } }), 201);
      const p1 = payloadOf(r1.block as string);
      const p2 = payloadOf(r2.block as string);
      expect(p1.creator).toBe(KMS_URI);
      expect(p1.created).not.toBe("2001-01-01T00:00:00Z");
      expect(Math.abs(Date.parse(p1.created as string) - Date.now())).toBeLessThan(60_000);
      expect(p1.uri).not.toBe(p2.uri);
      expect(p1.nonce).not.toBe(p2.nonce);
      expect(Object.keys(p1).sort()).toEqual(["created", "creator", "curator", "nonce", "operations", "uri"]);
    });

    it("the requester is recorded even when it does not add itself", async () => {
      const chain = await createChain(erin(), [BOB]);
      expect(chainSnapshot(w.kms, chain.uri).chain?.requester).toBe(ERIN);
      // ...and it is not a member.
      expectStatus(await erin().request({ method: "retrieve", uri: chain.uri }), 403);
    });

    describe("refusals: 400 naming the field, and no chain stored", () => {
      const cases: [string, Record<string, unknown>, RegExp][] = [
        ["no blockPayload", {}, /blockPayload/],
        ["blockPayload not an object", { blockPayload: "ops" }, /blockPayload/],
        ["operations missing", { blockPayload: {} }, /operations/],
        ["operations empty", { blockPayload: { operations: [] } }, /operations/],
        ["operations not an array", { blockPayload: { operations: add(BOB) } }, /operations/],
        ["a remove", { blockPayload: { operations: [add(BOB), remove(CAROL)] } }, /operations\[1\]/],
        ["an unknown optype", { blockPayload: { operations: [{ entity: BOB, optype: "invite" }] } }, /operations\[0\]\.optype/],
        ["a duplicate entity", { blockPayload: { operations: [add(BOB), add(CAROL), add(BOB)] } }, /operations\[2\]/],
        ["a duplicate entity spelled with acct: and another domain case", { blockPayload: { operations: [add(BOB), add("acct:bob@EXAMPLE.com")] } }, /operations\[1\]/],
        ["an invalid entity", { blockPayload: { operations: [add("not-an-entity")] } }, /operations\[0\]\.entity/],
        ["an entity that is not a string", { blockPayload: { operations: [{ entity: 7, optype: "add" }] } }, /operations\[0\]\.entity/],
        ["an operation that is not an object", { blockPayload: { operations: ["bob@example.com"] } }, /operations\[0\]/],
      ];
      it.each(cases)("%s → 400", async (_name, fields, reason) => {
        const counts = [rowCount(w.kms, "chains"), rowCount(w.kms, "blocks"), rowCount(w.kms, "memberships")];
        expectStatus(await alice().request({ method: "create", uri: "/blocks", ...fields }), 400, reason);
        expect([rowCount(w.kms, "chains"), rowCount(w.kms, "blocks"), rowCount(w.kms, "memberships")]).toEqual(counts);
      });

      it("more operations than KEYWARD_MAX_OPERATIONS_PER_BLOCK → 400; exactly the limit → 201", async () => {
        const raw = limits.raw[ALICE]!;
        const count = rowCount(limits.kms, "chains");
        const ops = [add(ALICE), add(BOB), add(CAROL), add(DAVE)];
        expectStatus(await raw.request({ method: "create", uri: "/blocks", blockPayload: { operations: ops } }), 400, /operations/);
        expect(rowCount(limits.kms, "chains")).toBe(count);
        expectStatus(await raw.request({ method: "create", uri: "/blocks", blockPayload: { operations: ops.slice(0, 3) } }), 201);
        expect(rowCount(limits.kms, "chains")).toBe(count + 1);
      });
    });
  });

  // ── Append: success ───────────────────────────────────────────────────────────────────────
  describe("append: success", () => {
    it("an ES256 block → 200 {status, requestId, tail = hash of the block}; membership moves", async () => {
      const chain = await createChain(alice(), [ALICE, BOB]);
      const block = await signBlock(dev(ALICE), { antecedent: chain.hash, operations: [add(DAVE)] });
      const res = await alice().request({ method: "create", uri: chain.uri, requestId: 42, blocks: [block] });
      const reply = expectStatus(res, 200);
      expect(reply).toEqual({ status: 200, requestId: 42, tail: await blockHash(block) });
      const snap = chainSnapshot(w.kms, chain.uri);
      expect(snap.chain).toMatchObject({ length: 2, tail_hash: reply.tail });
      expect(snap.blocks.map((b) => b.jws)).toEqual([chain.jws, block]);
      const store = w.kms.kms.core.services.store;
      expect(await store.isMemberAt(chain.uri, DAVE, 0)).toBe(false);
      expect(await store.isMemberAt(chain.uri, DAVE, 1)).toBe(true);
      expect(await retrieveBlocks(w.raw[DAVE]!, chain.uri)).toEqual([chain.jws, block]);
    });

    it("an RSA PS256 block → 200", async () => {
      const chain = await createChain(alice(), [ALICE, BOB]);
      const block = await signBlock(dev(BOB), { antecedent: chain.hash, operations: [remove(ALICE), add(CAROL)] });
      expect(expectStatus(await bob().request({ method: "create", uri: chain.uri, blocks: [block] }), 200).tail).toBe(await blockHash(block));
      expect(await retrieveBlocks(bob(), chain.uri)).toEqual([chain.jws, block]);
    });

    it("several blocks in one request, later ones by members the earlier ones added", async () => {
      const chain = await createChain(alice(), [ALICE, BOB]);
      const b1 = await signBlock(dev(ALICE), { antecedent: chain.hash, operations: [add(CAROL)] });
      const b2 = await signBlock(dev(CAROL), { antecedent: await blockHash(b1), operations: [remove(BOB), add(DAVE)] });
      const b3 = await signBlock(dev(DAVE), { antecedent: await blockHash(b2), operations: [add(BOB)] });
      const b4 = await signBlock(dev(BOB), { antecedent: await blockHash(b3), operations: [remove(ALICE)] });
      const reply = expectStatus(await alice().request({ method: "create", uri: chain.uri, blocks: [b1, b2, b3, b4] }), 200);
      expect(reply.tail).toBe(await blockHash(b4));
      expect(await retrieveBlocks(bob(), chain.uri)).toEqual([chain.jws, b1, b2, b3, b4]);
      const snap = chainSnapshot(w.kms, chain.uri);
      expect(snap.chain).toMatchObject({ length: 5, tail_hash: reply.tail });
      expect(snap.memberships).toEqual([
        { entity: ALICE, start_pos: 0, end_pos: 4 },
        { entity: BOB, start_pos: 0, end_pos: 2 },
        { entity: BOB, start_pos: 3, end_pos: null },
        { entity: CAROL, start_pos: 1, end_pos: null },
        { entity: DAVE, start_pos: 2, end_pos: null },
      ]);
      const verified = await verifyOverChannel(w.kms, bob(), chain.uri);
      expect(verified.members.members()).toEqual([BOB, CAROL, DAVE]);
    });

    it("creator and operation entities spelled with acct: and another domain case", async () => {
      const chain = await createChain(alice(), [ALICE, BOB]);
      const block = await signBlock(dev(ALICE), {
        antecedent: chain.hash,
        creator: "acct:alice@EXAMPLE.com",
        operations: [add("acct:carol@Example.COM"), remove("bob@EXAMPLE.com")],
      });
      expectStatus(await alice().request({ method: "create", uri: chain.uri, blocks: [block] }), 200);
      const store = w.kms.kms.core.services.store;
      expect(await store.isMemberAt(chain.uri, CAROL, 1)).toBe(true);
      expect(await store.isMemberAt(chain.uri, BOB, 1)).toBe(false);
      expect(await retrieveBlocks(carol(), chain.uri)).toEqual([chain.jws, block]);
      expectStatus(await bob().request({ method: "retrieve", uri: chain.uri }), 403);
    });

    it("a requester may relay blocks that a member signed (requester ≠ creator)", async () => {
      const chain = await createChain(alice(), [ALICE]);
      const block = await signBlock(dev(ALICE), { antecedent: chain.hash, operations: [add(BOB)] });
      // erin is not a member and did not sign it.
      expect(expectStatus(await erin().request({ method: "create", uri: chain.uri, blocks: [block] }), 200).tail).toBe(await blockHash(block));
      expect(await retrieveBlocks(bob(), chain.uri)).toEqual([chain.jws, block]);
    });

    it("a block without kid: the KMS tries the creator's keys (EC and RSA)", async () => {
      const chain = await createChain(alice(), [ALICE, BOB]);
      const b1 = await signBlock(dev(ALICE), { antecedent: chain.hash, operations: [add(CAROL)] }, { kid: null });
      expect(decodeProtectedHeader(b1).kid).toBeUndefined();
      expectStatus(await alice().request({ method: "create", uri: chain.uri, blocks: [b1] }), 200);
      const b2 = await signBlock(dev(BOB), { antecedent: await blockHash(b1), operations: [add(DAVE)] }, { kid: null });
      expectStatus(await alice().request({ method: "create", uri: chain.uri, blocks: [b2] }), 200);
      expect(await retrieveBlocks(alice(), chain.uri)).toEqual([chain.jws, b1, b2]);
    });

    it("a block without kid from an entity with several keys verifies with the right one", async () => {
      const raw = await channel(w.kms, "frank@example.com");
      const other = await newDevice("frank@example.com", "frank-1", "ES256");
      const signer = await newDevice("frank@example.com", "frank-2", "ES256");
      await registerDevice(raw, other);
      await registerDevice(raw, signer);
      const chain = await createChain(raw, ["frank@example.com"]);
      const block = await signBlock(signer, { antecedent: chain.hash, operations: [add(ALICE)] }, { kid: null });
      expectStatus(await raw.request({ method: "create", uri: chain.uri, blocks: [block] }), 200);
    });

    it("created a little in the future (within the 5 minute skew) is accepted", async () => {
      const chain = await createChain(alice(), [ALICE]);
      const block = await signBlock(dev(ALICE), { antecedent: chain.hash, operations: [add(BOB)], created: inFuture(4 * 60_000) });
      expectStatus(await alice().request({ method: "create", uri: chain.uri, blocks: [block] }), 200);
    });

    it("the chain may be named by path alone", async () => {
      const chain = await createChain(alice(), [ALICE]);
      const path = chain.uri.slice(KMS_URI.length);
      const block = await signBlock(dev(ALICE), { antecedent: chain.hash, operations: [add(BOB)] });
      expectStatus(await alice().request({ method: "post", uri: path, blocks: [block] }), 200);
      expect(expectStatus(await alice().request({ method: "get", uri: path }), 200).blocks).toEqual([chain.jws, block]);
    });

    it("exactly the limits (2 blocks, 3 operations each) → 200", async () => {
      const raw = limits.raw[ALICE]!;
      const chain = await createChain(raw, [ALICE]);
      const b1 = await signBlock(limits.dev[ALICE]!, { antecedent: chain.hash, operations: [add(BOB), add(CAROL), add(DAVE)] });
      const b2 = await signBlock(limits.dev[ALICE]!, { antecedent: await blockHash(b1), operations: [remove(BOB), remove(CAROL), remove(DAVE)] });
      expectStatus(await raw.request({ method: "create", uri: chain.uri, blocks: [b1, b2] }), 200);
    });
  });

  // ── Append: refusals ──────────────────────────────────────────────────────────────────────
  describe("append: refusals leave the chain unchanged", () => {
    /** alice, bob, carol are members; dave and erin are not (all have registered keys). */
    let chain: { uri: string; hash: string; jws: string };
    beforeAll(async () => {
      chain = await createChain(alice(), [ALICE, BOB, CAROL]);
    });
    const refused = (blocks: readonly unknown[], status: number, reason: RegExp, via: RawClient = alice()) =>
      expectRefused(w, via, alice(), chain.uri, blocks, status, reason);
    const aliceBlock = (operations: readonly Operation[], extra: { created?: string; antecedent?: string } = {}) =>
      signBlock(dev(ALICE), { antecedent: extra.antecedent ?? chain.hash, operations, ...(extra.created ? { created: extra.created } : {}) });

    describe("400: malformed", () => {
      it("blocks missing, not an array, or empty", async () => {
        for (const blocks of [undefined, "x", []]) {
          const before = chainSnapshot(w.kms, chain.uri);
          expectStatus(await alice().request({ method: "create", uri: chain.uri, ...(blocks !== undefined ? { blocks } : {}) }), 400, /blocks/);
          expect(chainSnapshot(w.kms, chain.uri)).toEqual(before);
        }
      });
      it("a block that is not a JWS", () => refused(["not-a-jws"], 400, /JWS/));
      it("a block that is not a string", () => refused([{ antecedent: "x" }], 400, /JWS/));
      it("a JWE-shaped block (five parts)", () => refused(["a.b.c.d.e"], 400, /JWS/));
      it("a payload that is not JSON", async () => refused([await signRaw(dev(ALICE), "not json at all")], 400, /payload/));
      it("a payload that is a JSON array", async () => refused([await signRaw(dev(ALICE), [1, 2])], 400, /payload/));

      const fields = { antecedent: "", creator: ALICE, created: "", operations: [add(DAVE)] };
      for (const missing of ["antecedent", "creator", "created", "operations"] as const) {
        it(`a payload without '${missing}'`, async () => {
          const p: Record<string, unknown> = { ...fields, antecedent: chain.hash, created: rfc3339Now() };
          delete p[missing];
          await refused([await signRaw(dev(ALICE), p)], 400, new RegExp(missing));
        });
      }
      it("an antecedent that is not a block hash", async () =>
        refused([await signRaw(dev(ALICE), { antecedent: chain.hash.toUpperCase(), creator: ALICE, created: rfc3339Now(), operations: [add(DAVE)] })], 400, /antecedent/));
      it("a creator that is not an entity", async () =>
        refused([await signRaw(dev(ALICE), { antecedent: chain.hash, creator: "alice", created: rfc3339Now(), operations: [add(DAVE)] })], 400, /creator/));
      it("a created that is not RFC 3339", async () =>
        refused([await signRaw(dev(ALICE), { antecedent: chain.hash, creator: ALICE, created: "yesterday", operations: [add(DAVE)] })], 400, /created/));
      it("an empty operations list", async () => refused([await aliceBlock([])], 400, /operations/));
      it("the same entity twice in one block", async () => refused([await aliceBlock([add(DAVE), remove("acct:dave@EXAMPLE.com")])], 400, /operations\[1\]/));
      it("a genesis-shaped block", async () =>
        refused([await signRaw(dev(ALICE), { uri: `${KMS_URI}/blocks/x`, nonce: "n", curator: KMS_URI, creator: KMS_URI, created: rfc3339Now(), operations: [add(DAVE)] })], 400, /genesis/));
      it("created more than 5 minutes in the future", async () => refused([await aliceBlock([add(DAVE)], { created: inFuture(10 * 60_000) })], 400, /created/));
    });

    describe("400: signatures", () => {
      it("signed by a key that is not registered (kid of a registered key)", async () => {
        const impostor = await newDevice(ALICE, "alice-ec", "ES256");
        await refused([await signBlock(impostor, { antecedent: chain.hash, operations: [add(DAVE)] })], 400, /signature/);
      });
      it("signed by a key that is not registered (unknown kid)", async () => {
        const impostor = await newDevice(ALICE, "alice-unknown", "ES256");
        await refused([await signBlock(impostor, { antecedent: chain.hash, operations: [add(DAVE)] })], 400, /signature/);
      });
      it("signed by a key that is not registered, without kid", async () => {
        const impostor = await newDevice(ALICE, "alice-unknown", "ES256");
        await refused([await signBlock(impostor, { antecedent: chain.hash, operations: [add(DAVE)] }, { kid: null })], 400, /signature/);
      });
      it("a kid naming another entity's key (signed with that key)", async () => {
        await refused([await signBlock(dev(BOB), { antecedent: chain.hash, creator: ALICE, operations: [add(DAVE)] })], 400, /signature/);
      });
      it("a kid naming another entity's key, without kid (bob's key does not verify alice's block)", async () => {
        await refused([await signBlock(dev(BOB), { antecedent: chain.hash, creator: ALICE, operations: [add(DAVE)] }, { kid: null })], 400, /signature/);
      });
      it("a tampered payload", async () => {
        const good = await aliceBlock([add(DAVE)]);
        const [h, , s] = good.split(".");
        const p = payloadOf(good);
        const forged = `${h}.${Buffer.from(JSON.stringify({ ...p, operations: [add(ERIN)] })).toString("base64url")}.${s}`;
        await refused([forged], 400, /signature/);
      });
      it("alg that does not fit the key's type (RS256 header on alice's EC key)", async () => {
        const good = await aliceBlock([add(DAVE)]);
        const [, p, s] = good.split(".");
        const header = Buffer.from(JSON.stringify({ alg: "RS256", kid: "alice-ec" })).toString("base64url");
        await refused([`${header}.${p}.${s}`], 400, /signature|alg/);
      });
      it("alg none and HMAC are refused", async () => {
        const p = Buffer.from(JSON.stringify({ antecedent: chain.hash, creator: ALICE, created: rfc3339Now(), operations: [add(DAVE)] })).toString("base64url");
        const none = Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url");
        await refused([`${none}.${p}.`], 400, /alg|none|signature|JWS/);
        const hs = Buffer.from(JSON.stringify({ alg: "HS256", kid: "alice-ec" })).toString("base64url");
        await refused([`${hs}.${p}.c2ln`], 400, /HMAC|HS256|alg/);
      });
      it("a key revoked before the append", async () => {
        const old = await newDevice(CAROL, "carol-old", "ES256");
        await registerDevice(carol(), old);
        const block = await signBlock(old, { antecedent: chain.hash, operations: [add(DAVE)] });
        expectStatus(await carol().request({ method: "delete", uri: `/entities/${CAROL}/keys/carol-old` }), 204);
        await refused([block], 400, /signature/);
        // Without kid, too.
        await refused([await signBlock(old, { antecedent: chain.hash, operations: [add(DAVE)] }, { kid: null })], 400, /signature/);
      });
    });

    describe("400: links, operations, limits", () => {
      it("a later block whose antecedent is not the hash of the block before it", async () => {
        const b1 = await aliceBlock([add(DAVE)]);
        const b2 = await signBlock(dev(BOB), { antecedent: chain.hash, operations: [add(ERIN)] });
        await refused([b1, b2], 400, /antecedent/);
        const b3 = await signBlock(dev(BOB), { antecedent: randomHash(), operations: [add(ERIN)] });
        await refused([b1, b3], 400, /antecedent/);
      });
      it("add of a current member", async () => refused([await aliceBlock([add(BOB)])], 400, /bob@example\.com/));
      it("add of a current member spelled acct: with another domain case", async () => refused([await aliceBlock([add("acct:bob@EXAMPLE.COM")])], 400, /bob@example\.com/));
      it("add of a member added by an earlier block of the same request", async () => {
        const b1 = await aliceBlock([add(DAVE)]);
        const b2 = await signBlock(dev(BOB), { antecedent: await blockHash(b1), operations: [add(DAVE)] });
        await refused([b1, b2], 400, /dave@example\.com/);
      });
      it("remove of a non-member", async () => refused([await aliceBlock([add(DAVE), remove(ERIN)])], 400, /erin@example\.com/));
      it("an operation naming the curator", async () => refused([await aliceBlock([add(KMS_URI)])], 400, /curator|operations\[0\]/));
      it("an operation removing the curator", async () => refused([await aliceBlock([remove(KMS_URI)])], 400, /curator|operations\[0\]/));
      it("more blocks than KEYWARD_MAX_BLOCKS_PER_APPEND (2): 3 blocks", async () => {
        const l = limits;
        const c = await createChain(l.raw[ALICE]!, [ALICE]);
        const d = l.dev[ALICE]!;
        const b1 = await signBlock(d, { antecedent: c.hash, operations: [add(BOB)] });
        const b2 = await signBlock(d, { antecedent: await blockHash(b1), operations: [add(CAROL)] });
        const b3 = await signBlock(d, { antecedent: await blockHash(b2), operations: [add(DAVE)] });
        await expectRefused(l, l.raw[ALICE]!, l.raw[ALICE]!, c.uri, [b1, b2, b3], 400, /blocks|2/);
      });
      it("more operations than KEYWARD_MAX_OPERATIONS_PER_BLOCK (3): 4 operations", async () => {
        const l = limits;
        const c = await createChain(l.raw[ALICE]!, [ALICE]);
        const b1 = await signBlock(l.dev[ALICE]!, { antecedent: c.hash, operations: [add(BOB), add(CAROL), add(DAVE), add(ERIN)] });
        await expectRefused(l, l.raw[ALICE]!, l.raw[ALICE]!, c.uri, [b1], 400, /operations/);
      });
    });

    describe("403: the creator is not a member as of the block before it", () => {
      it("a non-member's block (registered key)", async () => {
        await refused([await signBlock(dev(ERIN), { antecedent: chain.hash, operations: [add(DAVE)] })], 403, /member/, erin());
        // A non-member adding itself is no way in either.
        await refused([await signBlock(dev(ERIN), { antecedent: chain.hash, operations: [add(ERIN)] })], 403, /member/, erin());
      });
      it("a creator removed by an earlier block of the same request", async () => {
        const b1 = await aliceBlock([remove(CAROL)]);
        const b2 = await signBlock(dev(CAROL), { antecedent: await blockHash(b1), operations: [add(DAVE)] });
        await refused([b1, b2], 403, /member/);
      });
      it("a creator that removed itself in the block before", async () => {
        const b1 = await aliceBlock([remove(ALICE)]);
        const b2 = await aliceBlock([add(DAVE)], { antecedent: await blockHash(b1) });
        await refused([b1, b2], 403, /member/, bob());
      });
    });

    describe("409: the first antecedent is not the tail", () => {
      it("an unknown hash", async () => refused([await aliceBlock([add(DAVE)], { antecedent: randomHash() })], 409, /tail|antecedent/));
      it("a stale tail (an earlier block of the chain), after another append landed", async () => {
        const c = await createChain(alice(), [ALICE, BOB]);
        const first = await signBlock(dev(ALICE), { antecedent: c.hash, operations: [add(CAROL)] });
        const late = await signBlock(dev(BOB), { antecedent: c.hash, operations: [add(DAVE)] });
        expectStatus(await append(alice(), c.uri, [first]), 200);
        await expectRefused(w, bob(), alice(), c.uri, [late], 409, /tail|antecedent/);
        // The client re-fetches and retries on the new tail.
        const retried = await signBlock(dev(BOB), { antecedent: await blockHash(first), operations: [add(DAVE)] });
        expectStatus(await append(bob(), c.uri, [retried]), 200);
      });
      it("the hash of a block of another chain", async () => {
        const other = await createChain(alice(), [ALICE]);
        await refused([await aliceBlock([add(DAVE)], { antecedent: other.hash })], 409, /tail|antecedent/);
      });
    });

    describe("order when several apply: 400 (limits, parsing, created, signatures, links), then 409, then 403/400 block by block", () => {
      /** A chain with two blocks, so that the genesis hash is a stale tail. */
      let o: { uri: string; stale: string; tail: string };
      beforeAll(async () => {
        const c = await createChain(alice(), [ALICE, BOB, CAROL]);
        const b = await signBlock(dev(ALICE), { antecedent: c.hash, operations: [add(DAVE)] });
        expectStatus(await append(alice(), c.uri, [b]), 200);
        o = { uri: c.uri, stale: c.hash, tail: await blockHash(b) };
      });
      const refusedOn = (blocks: readonly unknown[], status: number, reason: RegExp, via: RawClient = alice()) => expectRefused(w, via, alice(), o.uri, blocks, status, reason);

      it("stale tail + bad signature → 400", async () => {
        const impostor = await newDevice(ALICE, "alice-ec", "ES256");
        await refusedOn([await signBlock(impostor, { antecedent: o.stale, operations: [add(ERIN)] })], 400, /signature/);
      });
      it("stale tail + created in the future → 400", async () => {
        await refusedOn([await signBlock(dev(ALICE), { antecedent: o.stale, operations: [add(ERIN)], created: inFuture(10 * 60_000) })], 400, /created/);
      });
      it("stale tail + a broken in-request link → 400", async () => {
        const b1 = await signBlock(dev(ALICE), { antecedent: o.stale, operations: [add(ERIN)] });
        const b2 = await signBlock(dev(BOB), { antecedent: o.stale, operations: [remove(ERIN)] });
        await refusedOn([b1, b2], 400, /antecedent/);
      });
      it("stale tail + a malformed block → 400", async () => {
        await refusedOn([await signRaw(dev(ALICE), { antecedent: o.stale, creator: ALICE, operations: [add(ERIN)] })], 400, /created/);
      });
      it("stale tail + too many blocks → 400 (limits first)", async () => {
        const l = limits;
        const c = await createChain(l.raw[ALICE]!, [ALICE]);
        const d = l.dev[ALICE]!;
        const first = await signBlock(d, { antecedent: c.hash, operations: [add(BOB)] });
        expectStatus(await append(l.raw[ALICE]!, c.uri, [first]), 200);
        const b1 = await signBlock(d, { antecedent: c.hash, operations: [add(CAROL)] });
        const b2 = await signBlock(d, { antecedent: await blockHash(b1), operations: [add(DAVE)] });
        const b3 = await signBlock(d, { antecedent: await blockHash(b2), operations: [add(ERIN)] });
        await expectRefused(l, l.raw[ALICE]!, l.raw[ALICE]!, c.uri, [b1, b2, b3], 400, /blocks|2/);
      });
      it("stale tail + a non-member creator → 409", async () => {
        await refusedOn([await signBlock(dev(ERIN), { antecedent: o.stale, operations: [add(ERIN)] })], 409, /tail|antecedent/, erin());
      });
      it("stale tail + a bad operation → 409", async () => {
        await refusedOn([await signBlock(dev(ALICE), { antecedent: o.stale, operations: [add(BOB)] })], 409, /tail|antecedent/);
      });
      it("a non-member creator + a bad operation → 403", async () => {
        await refusedOn([await signBlock(dev(ERIN), { antecedent: o.tail, operations: [add(BOB), remove("zed@example.com")] })], 403, /member/, erin());
      });
      // §8 lists "any operation naming the curator" with the operation checks (add of a member,
      // remove of a non-member, empty list), which come after the tail (409) and the creator's
      // membership (403): such a block is well-formed, only its operation is refused.
      it("stale tail + an operation naming the curator → 409", async () => {
        await refusedOn([await signBlock(dev(ALICE), { antecedent: o.stale, operations: [add(KMS_URI)] })], 409, /tail|antecedent/);
      });
      it("a non-member creator + an operation naming the curator → 403", async () => {
        await refusedOn([await signBlock(dev(ERIN), { antecedent: o.tail, operations: [remove(KMS_URI)] })], 403, /member/, erin());
      });
      it("block by block: a bad operation in block 0 before a non-member in block 1 → 400", async () => {
        const b1 = await signBlock(dev(ALICE), { antecedent: o.tail, operations: [add(BOB)] });
        const b2 = await signBlock(dev(ERIN), { antecedent: await blockHash(b1), operations: [add(ERIN)] });
        await refusedOn([b1, b2], 400, /bob@example\.com/);
      });
      it("block by block: a non-member in block 1 with a bad operation → 403", async () => {
        const ok = await signBlock(dev(ALICE), { antecedent: o.tail, operations: [remove(CAROL)] });
        // carol, removed by block 0, is not a member as of block 1: 403 rather than 400 for her add of a member.
        const bad = await signBlock(dev(CAROL), { antecedent: await blockHash(ok), operations: [add(BOB)] });
        await refusedOn([ok, bad], 403, /member/);
      });
    });
  });

  // ── Unknown objects and methods ───────────────────────────────────────────────────────────
  describe("404 and 405", () => {
    it("append to an unknown chain → 404 (even with garbage blocks)", async () => {
      const uri = `${KMS_URI}/blocks/${randomUUID()}`;
      expectStatus(await append(alice(), uri, ["garbage"]), 404);
      expectStatus(await append(alice(), uri, [await signBlock(dev(ALICE), { antecedent: randomHash(), operations: [add(BOB)] })]), 404);
      expectStatus(await alice().request({ method: "create", uri }), 404);
    });
    it("retrieve an unknown chain → 404", async () => {
      expectStatus(await alice().request({ method: "retrieve", uri: `${KMS_URI}/blocks/${randomUUID()}` }), 404);
      expectStatus(await alice().request({ method: "retrieve", uri: `/blocks/${randomUUID()}`, antecedent: randomHash() }), 404);
    });
    it("a chain of another authority → 404", async () => {
      const chain = await createChain(alice(), [ALICE]);
      const foreign = chain.uri.replace("kms.example.com", "kms.example.org");
      expectStatus(await alice().request({ method: "retrieve", uri: foreign }), 404);
      expectStatus(await append(alice(), foreign, [await signBlock(dev(ALICE), { antecedent: chain.hash, operations: [add(BOB)] })]), 404);
      expect(chainSnapshot(w.kms, chain.uri).chain?.length).toBe(1);
    });
    it("delete /blocks/<unknown> → 404; delete /blocks/<known> → 405; update /blocks → 405", async () => {
      const chain = await createChain(alice(), [ALICE]);
      expectStatus(await alice().request({ method: "delete", uri: `/blocks/${randomUUID()}` }), 404);
      expectStatus(await alice().request({ method: "delete", uri: chain.uri }), 405);
      expectStatus(await alice().request({ method: "update", uri: chain.uri }), 405);
      expectStatus(await alice().request({ method: "update", uri: "/blocks" }), 405);
      expectStatus(await alice().request({ method: "update", uri: `/blocks/${randomUUID()}` }), 404);
      expect(chainSnapshot(w.kms, chain.uri).chain?.length).toBe(1);
    });
  });

  // ── Get ───────────────────────────────────────────────────────────────────────────────────
  describe("get (retrieve <chain uri>)", () => {
    /** genesis [alice, bob]; b1: alice adds carol; b2: bob removes alice (alice is a former member). */
    async function scenario(world: World) {
      const c = await createChain(world.raw[ALICE]!, [ALICE, BOB]);
      const b1 = await signBlock(world.dev[ALICE]!, { antecedent: c.hash, operations: [add(CAROL)] });
      const b2 = await signBlock(world.dev[BOB]!, { antecedent: await blockHash(b1), operations: [remove(ALICE)] });
      expectStatus(await append(world.raw[BOB]!, c.uri, [b1, b2]), 200);
      return { ...c, b1, b2, h1: await blockHash(b1), h2: await blockHash(b2) };
    }
    let s: Awaited<ReturnType<typeof scenario>>;
    beforeAll(async () => {
      s = await scenario(w);
    });

    it("all blocks in chain order, by absolute uri or by path", async () => {
      expect(await retrieveBlocks(bob(), s.uri)).toEqual([s.jws, s.b1, s.b2]);
      expect(await retrieveBlocks(carol(), s.uri.slice(KMS_URI.length))).toEqual([s.jws, s.b1, s.b2]);
      expect(chainSnapshot(w.kms, s.uri).blocks.map((b) => b.jws)).toEqual([s.jws, s.b1, s.b2]);
    });
    it("after an antecedent: only the later blocks; after the tail: an empty list", async () => {
      expect(await retrieveBlocks(bob(), s.uri, s.hash)).toEqual([s.b1, s.b2]);
      expect(await retrieveBlocks(bob(), s.uri, s.h1)).toEqual([s.b2]);
      expect(await retrieveBlocks(bob(), s.uri, s.h2)).toEqual([]);
    });
    it("an unknown antecedent, or one of another chain → 404", async () => {
      expectStatus(await bob().request({ method: "retrieve", uri: s.uri, antecedent: randomHash() }), 404, /antecedent/);
      const other = await createChain(bob(), [BOB]);
      expectStatus(await bob().request({ method: "retrieve", uri: s.uri, antecedent: other.hash }), 404, /antecedent/);
    });
    it("a non-member → 403", async () => {
      expectStatus(await erin().request({ method: "retrieve", uri: s.uri }), 403);
      expectStatus(await erin().request({ method: "retrieve", uri: s.uri, antecedent: s.hash }), 403);
    });
    it("a former member → 403 by default", async () => {
      expectStatus(await alice().request({ method: "retrieve", uri: s.uri }), 403);
    });
    it("a former member → 200 with KEYWARD_GMBC_READERS=members-and-former; never-members still 403", async () => {
      const f = await scenario(former);
      expect(await retrieveBlocks(former.raw[ALICE]!, f.uri)).toEqual([f.jws, f.b1, f.b2]);
      expect(await retrieveBlocks(former.raw[ALICE]!, f.uri, f.h1)).toEqual([f.b2]);
      expect(await retrieveBlocks(former.raw[CAROL]!, f.uri)).toEqual([f.jws, f.b1, f.b2]);
      expectStatus(await former.raw[ERIN]!.request({ method: "retrieve", uri: f.uri }), 403);
      expectStatus(await former.raw[DAVE]!.request({ method: "retrieve", uri: f.uri }), 403);
    });
    it("the whole chain verifies with verifyChain", async () => {
      const v = await verifyOverChannel(w.kms, bob(), s.uri);
      expect(v.tail).toBe(s.h2);
      expect(v.members.members()).toEqual([BOB, CAROL]);
    });
  });

  // ── Concurrency ───────────────────────────────────────────────────────────────────────────
  describe("concurrency: appends on one tail", () => {
    it("10 parallel appends from 10 channels on the same tail: exactly one 200, nine 409, no fork", async () => {
      const chain = await createChain(alice(), [ALICE]);
      const channels = await Promise.all(Array.from({ length: 10 }, () => channel(w.kms, ALICE)));
      let tail = chain.hash;
      for (let round = 0; round < 3; round++) {
        const blocks = await Promise.all(channels.map((_, i) => signBlock(dev(ALICE), { antecedent: tail, operations: [add(`user${round}-${i}@example.com`)] })));
        const replies = await Promise.all(channels.map((raw, i) => append(raw, chain.uri, [blocks[i]])));
        const statuses = replies.map((r) => r.payload.status);
        expect(statuses.filter((s) => s === 200)).toHaveLength(1);
        expect(statuses.filter((s) => s === 409)).toHaveLength(9);
        const winner = replies.find((r) => r.payload.status === 200)!;
        tail = winner.payload.tail as string;
        expect(chainSnapshot(w.kms, chain.uri).chain).toMatchObject({ length: round + 2, tail_hash: tail });
      }
      expect(forkedPositions(w.kms, chain.uri)).toEqual([]);
      const v = await verifyOverChannel(w.kms, alice(), chain.uri);
      expect(v.blocks).toHaveLength(4);
      expect(v.tail).toBe(tail);
      expect(v.members.size).toBe(4);
    });
  });

  describe("two KMS processes on one SQLite file", () => {
    let child: ChildProcess | undefined;
    let node2: TestKms;
    beforeAll(async () => {
      const script = fileURLToPath(new URL("../helpers/gmbc-second-node.ts", import.meta.url));
      const proc = spawn(process.execPath, ["--import", "tsx", script, w.kms.dataDir, w.kms.config.oauthIssuer, w.kms.config.oauthJwksUri], {
        cwd: fileURLToPath(new URL("../..", import.meta.url)),
        stdio: ["pipe", "pipe", "pipe"],
      });
      child = proc;
      const url = await new Promise<string>((resolve, reject) => {
        let out = "";
        let err = "";
        const timer = setTimeout(() => reject(new Error(`second node did not start: ${err}`)), 30_000);
        proc.stdout!.on("data", (d: Buffer) => {
          out += d.toString();
          const m = /KEYWARD_SECOND_NODE_URL=(\S+)/.exec(out);
          if (m) {
            clearTimeout(timer);
            resolve(m[1]!);
          }
        });
        proc.stderr!.on("data", (d: Buffer) => (err += d.toString()));
        proc.once("exit", (code) => {
          clearTimeout(timer);
          reject(new Error(`second node exited (${code}): ${err}`));
        });
      });
      node2 = { ...w.kms, url };
    });
    afterAll(async () => {
      if (child?.pid !== undefined && child.exitCode === null) {
        const exited = new Promise((r) => child!.once("exit", r));
        process.kill(child.pid, "SIGTERM");
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, "SIGKILL");
      }
    });

    it("the second node serves the same chains", async () => {
      const chain = await createChain(alice(), [ALICE]);
      const raw2 = await channel(node2, ALICE);
      expect(await retrieveBlocks(raw2, chain.uri)).toEqual([chain.jws]);
    });

    it("parallel appends on one tail through both nodes: exactly one succeeds, no fork", async () => {
      const chain = await createChain(alice(), [ALICE]);
      const channels = await Promise.all(Array.from({ length: 10 }, (_, i) => channel(i % 2 === 0 ? w.kms : node2, ALICE)));
      let tail = chain.hash;
      for (let round = 0; round < 3; round++) {
        const blocks = await Promise.all(channels.map((_, i) => signBlock(dev(ALICE), { antecedent: tail, operations: [add(`node${round}-${i}@example.com`)] })));
        const replies = await Promise.all(channels.map((raw, i) => append(raw, chain.uri, [blocks[i]])));
        const statuses = replies.map((r) => r.payload.status);
        expect(statuses.filter((s) => s === 200)).toHaveLength(1);
        expect(statuses.filter((s) => s === 409)).toHaveLength(9);
        tail = replies.find((r) => r.payload.status === 200)!.payload.tail as string;
      }
      expect(forkedPositions(w.kms, chain.uri)).toEqual([]);
      const snap = chainSnapshot(w.kms, chain.uri);
      expect(snap.blocks.map((b) => b.position)).toEqual([0, 1, 2, 3]);
      expect(snap.chain).toMatchObject({ length: 4, tail_hash: tail });
      const v = await verifyOverChannel(node2, channels[1]!, chain.uri);
      expect(v.tail).toBe(tail);
      expect(v.members.size).toBe(4);
    });
  });
});
