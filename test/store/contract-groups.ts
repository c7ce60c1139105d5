import { randomBytes, randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { EntityKeyRecord, GkRecord, MembershipChange, NewBlock, Store } from "../../src/store/store.js";
import { onAFreshStoreEachTest } from "./fresh-store.js";

/** A block at `position` with a fresh hash; the store checks neither the hash nor the JWS. */
export function makeBlock(position: number, creator = "alice@example.com"): NewBlock {
  return {
    position,
    hash: randomBytes(32).toString("hex"),
    jws: `eyJhbGciOiJFUzI1NiJ9.block-${position}-${randomUUID()}.sig`,
    creator,
    // Milliseconds, so that a store truncating to seconds fails the round trip.
    created: new Date(1_700_000_000_123 + position * 1_000),
  };
}

function chainUri(): string {
  return `kms://kms.example.com/gmbc/${randomUUID()}`;
}

function gkUri(): string {
  return `kms://kms.example.com/gk/${randomUUID()}`;
}

const add = (entity: string, position: number): MembershipChange => ({ entity, optype: "add", position });
const remove = (entity: string, position: number): MembershipChange => ({ entity, optype: "remove", position });

/**
 * The contract of the group methods of every {@link Store}: the entity key directory, chains and
 * their membership index, group keys. Same shape as `storeContract` (test/store/contract.ts):
 * `open` returns a fresh, empty store before every test; the suite migrates it, closes it after the
 * test, then calls `cleanup`.
 */
export function groupStoreContract(name: string, open: () => Promise<Store>, cleanup?: () => Promise<void>): void {
  describe(`Store contract (groups): ${name}`, () => {
    let store: Store;
    onAFreshStoreEachTest(open, cleanup, (s) => (store = s));

    /** A chain with its genesis block and genesis members; returns its uri and genesis block. */
    async function newChain(members: readonly string[] = ["alice@example.com", "bob@example.com"]) {
      const uri = chainUri();
      const genesis = makeBlock(0);
      await store.createChain({ uri, requester: "alice@example.com", created: new Date(1_700_000_000_999) }, genesis, members);
      return { uri, genesis };
    }

    /** Membership of `entity` at positions 0..(expected.length - 1). */
    async function memberships(uri: string, entity: string, length: number): Promise<boolean[]> {
      return Promise.all(Array.from({ length }, (_, p) => store.isMemberAt(uri, entity, p)));
    }

    describe("entity keys", () => {
      const key = (overrides: Partial<EntityKeyRecord> = {}): EntityKeyRecord => ({
        entity: "alice@example.com",
        kid: `kid-${randomUUID()}`,
        jwk: { kty: "EC", crv: "P-256", x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", nested: { a: [1, 2, null] } },
        created: new Date(1_700_000_000_123),
        ...overrides,
      });

      it("registers a key and lists it with every field (jwk, created to the ms, no revoked)", async () => {
        const k = key();
        expect(await store.registerEntityKey(k, 16)).toBe("registered");
        const listed = await store.listEntityKeys(k.entity);
        expect(listed).toEqual([k]);
        expect(listed[0]!.created).toBeInstanceOf(Date);
        expect(listed[0]!.created.getTime()).toBe(1_700_000_000_123);
        expect(Object.hasOwn(listed[0]!, "revoked")).toBe(false);
      });

      it("an unknown entity has no keys", async () => {
        expect(await store.listEntityKeys("nobody@example.com")).toEqual([]);
        expect(await store.listEntityKeys("nobody@example.com", { includeRevoked: true })).toEqual([]);
      });

      it("a duplicate kid of the same entity is refused as a duplicate and the first key kept; other entities may reuse the kid", async () => {
        const first = key({ kid: "device-1" });
        expect(await store.registerEntityKey(first, 16)).toBe("registered");
        expect(await store.registerEntityKey(key({ kid: "device-1", jwk: { kty: "OKP" }, created: new Date(1_800_000_000_000) }), 16)).toBe("duplicate");
        expect(await store.listEntityKeys(first.entity)).toEqual([first]);
        const bobs = key({ entity: "bob@example.com", kid: "device-1" });
        expect(await store.registerEntityKey(bobs, 16)).toBe("registered");
        expect(await store.listEntityKeys("bob@example.com")).toEqual([bobs]);
        expect(await store.listEntityKeys(first.entity)).toEqual([first]);
      });

      it("a revoked kid cannot be registered again", async () => {
        const k = key({ kid: "device-1" });
        await store.registerEntityKey(k, 16);
        expect(await store.revokeEntityKey(k.entity, k.kid, new Date(1_700_000_100_000))).toBe(true);
        expect(await store.registerEntityKey(key({ kid: "device-1" }), 16)).toBe("duplicate");
      });

      it("lists oldest first, ties broken by kid in byte order", async () => {
        const keys = [
          key({ kid: "z-late", created: new Date(1_700_000_000_003) }),
          key({ kid: "b", created: new Date(1_700_000_000_002) }),
          key({ kid: "a", created: new Date(1_700_000_000_002) }),
          key({ kid: "B", created: new Date(1_700_000_000_002) }),
          key({ kid: "y-early", created: new Date(1_700_000_000_001) }),
        ];
        for (const k of keys) expect(await store.registerEntityKey(k, 16)).toBe("registered");
        expect((await store.listEntityKeys("alice@example.com")).map((k) => k.kid)).toEqual(["y-early", "B", "a", "b", "z-late"]);
      });

      it("revoke: true once, then false; revoked keys are listed only with includeRevoked, with their revocation time", async () => {
        const a = key({ kid: "a", created: new Date(1_700_000_000_001) });
        const b = key({ kid: "b", created: new Date(1_700_000_000_002) });
        await store.registerEntityKey(a, 16);
        await store.registerEntityKey(b, 16);
        const at = new Date(1_700_000_500_789);
        expect(await store.revokeEntityKey(a.entity, "a", at)).toBe(true);
        expect(await store.revokeEntityKey(a.entity, "a", new Date(1_700_000_900_000))).toBe(false);
        expect(await store.listEntityKeys(a.entity)).toEqual([b]);
        const all = await store.listEntityKeys(a.entity, { includeRevoked: true });
        expect(all).toEqual([{ ...a, revoked: at }, b]);
        expect(all[0]!.revoked).toBeInstanceOf(Date);
        expect(all[0]!.revoked!.getTime()).toBe(1_700_000_500_789);
        expect(Object.hasOwn(all[1]!, "revoked")).toBe(false);
        expect(await store.listEntityKeys(a.entity, { includeRevoked: false })).toEqual([b]);
      });

      it("at most maxActiveKeys unrevoked keys: one more is refused as over the limit and stores nothing; a revoked key frees a place", async () => {
        for (let i = 0; i < 3; i++) expect(await store.registerEntityKey(key({ kid: `k${i}` }), 3)).toBe("registered");
        expect(await store.registerEntityKey(key({ kid: "k3" }), 3)).toBe("limit");
        expect((await store.listEntityKeys("alice@example.com", { includeRevoked: true })).map((k) => k.kid)).toEqual(["k0", "k1", "k2"]);
        // A duplicate kid is reported as such even at the limit.
        expect(await store.registerEntityKey(key({ kid: "k0" }), 3)).toBe("duplicate");
        // Other entities have their own count.
        expect(await store.registerEntityKey(key({ entity: "bob@example.com", kid: "k3" }), 3)).toBe("registered");
        expect(await store.revokeEntityKey("alice@example.com", "k1", new Date(1_700_000_100_000))).toBe(true);
        expect(await store.registerEntityKey(key({ kid: "k3" }), 3)).toBe("registered");
        expect(await store.registerEntityKey(key({ kid: "k4" }), 3)).toBe("limit");
      });

      it("concurrent registrations of one entity never pass the limit", async () => {
        const outcomes = await Promise.all(Array.from({ length: 40 }, (_, i) => store.registerEntityKey(key({ kid: `c${i}` }), 16)));
        expect(outcomes.filter((o) => o === "registered")).toHaveLength(16);
        expect(outcomes.filter((o) => o === "limit")).toHaveLength(24);
        expect(await store.listEntityKeys("alice@example.com")).toHaveLength(16);
      });

      it("revoking an unknown kid, or another entity's kid, is false and changes nothing", async () => {
        const k = key({ kid: "device-1" });
        await store.registerEntityKey(k, 16);
        expect(await store.revokeEntityKey(k.entity, "device-2", new Date())).toBe(false);
        expect(await store.revokeEntityKey("bob@example.com", "device-1", new Date())).toBe(false);
        expect(await store.listEntityKeys(k.entity)).toEqual([k]);
      });
    });

    describe("chains and blocks", () => {
      it("unknown chain: getChain undefined, no blocks, no members", async () => {
        const uri = chainUri();
        expect(await store.getChain(uri)).toBeUndefined();
        expect(await store.getBlocks(uri)).toEqual([]);
        expect(await store.isMemberAt(uri, "alice@example.com", 0)).toBe(false);
        expect(await store.wasEverMember(uri, "alice@example.com")).toBe(false);
      });

      it("createChain stores the chain (length 1, tail = genesis), the genesis block and the genesis members", async () => {
        const { uri, genesis } = await newChain(["alice@example.com", "bob@example.com"]);
        const chain = await store.getChain(uri);
        expect(chain).toEqual({ uri, requester: "alice@example.com", created: new Date(1_700_000_000_999), length: 1, tailHash: genesis.hash });
        expect(chain!.created).toBeInstanceOf(Date);
        const blocks = await store.getBlocks(uri);
        expect(blocks).toEqual([{ ...genesis, chainUri: uri }]);
        expect(blocks[0]!.created.getTime()).toBe(genesis.created.getTime());
        expect(await store.isMemberAt(uri, "alice@example.com", 0)).toBe(true);
        expect(await store.isMemberAt(uri, "bob@example.com", 0)).toBe(true);
        expect(await store.isMemberAt(uri, "carol@example.com", 0)).toBe(false);
        expect(await store.findBlock(genesis.hash)).toEqual({ chainUri: uri, position: 0 });
      });

      it("createChain with an existing uri fails and stores nothing of the second chain", async () => {
        const { uri, genesis } = await newChain(["alice@example.com"]);
        const other = makeBlock(0, "mallory@example.com");
        await expect(store.createChain({ uri, requester: "mallory@example.com", created: new Date() }, other, ["mallory@example.com"])).rejects.toThrow();
        expect((await store.getChain(uri))!.tailHash).toBe(genesis.hash);
        expect(await store.findBlock(other.hash)).toBeUndefined();
        expect(await store.wasEverMember(uri, "mallory@example.com")).toBe(false);
      });

      it("appendBlocks on the tail: appended, blocks in order, new tail and length; getBlocks(after)", async () => {
        const { uri, genesis } = await newChain();
        const b1 = makeBlock(1, "bob@example.com");
        const b2 = makeBlock(2);
        expect(await store.appendBlocks(uri, genesis.hash, [b1, b2], [add("carol@example.com", 1), remove("bob@example.com", 2)])).toBe("appended");
        expect(await store.getChain(uri)).toMatchObject({ uri, length: 3, tailHash: b2.hash });
        expect(await store.getBlocks(uri)).toEqual([genesis, b1, b2].map((b) => ({ ...b, chainUri: uri })));
        expect(await store.getBlocks(uri, -1)).toHaveLength(3);
        expect(await store.getBlocks(uri, 0)).toEqual([b1, b2].map((b) => ({ ...b, chainUri: uri })));
        expect(await store.getBlocks(uri, 1)).toEqual([{ ...b2, chainUri: uri }]);
        expect(await store.getBlocks(uri, 2)).toEqual([]);
        expect(await store.findBlock(b1.hash)).toEqual({ chainUri: uri, position: 1 });
        expect(await store.findBlock(b2.hash)).toEqual({ chainUri: uri, position: 2 });
        // The next append goes on the new tail; the old tail is stale.
        const b3 = makeBlock(3);
        expect(await store.appendBlocks(uri, genesis.hash, [b3], [])).toBe("conflict");
        expect(await store.appendBlocks(uri, b2.hash, [b3], [])).toBe("appended");
        expect((await store.getChain(uri))!.length).toBe(4);
      });

      it("a stale tail is a conflict and stores nothing (blocks, tail, memberships)", async () => {
        const { uri, genesis } = await newChain(["alice@example.com"]);
        const b1 = makeBlock(1);
        expect(await store.appendBlocks(uri, genesis.hash, [b1], [])).toBe("appended");
        const late = makeBlock(1, "bob@example.com");
        expect(await store.appendBlocks(uri, genesis.hash, [late], [add("bob@example.com", 1), remove("alice@example.com", 1)])).toBe("conflict");
        expect(await store.getChain(uri)).toMatchObject({ length: 2, tailHash: b1.hash });
        expect(await store.findBlock(late.hash)).toBeUndefined();
        expect(await store.getBlocks(uri)).toHaveLength(2);
        expect(await store.wasEverMember(uri, "bob@example.com")).toBe(false);
        expect(await store.isMemberAt(uri, "alice@example.com", 1)).toBe(true);
      });

      it("the right tail with blocks not starting at the chain's length is a conflict", async () => {
        const { uri, genesis } = await newChain();
        expect(await store.appendBlocks(uri, genesis.hash, [makeBlock(2)], [])).toBe("conflict");
        expect(await store.appendBlocks(uri, genesis.hash, [makeBlock(0)], [])).toBe("conflict");
        expect(await store.getChain(uri)).toMatchObject({ length: 1, tailHash: genesis.hash });
        expect(await store.getBlocks(uri)).toHaveLength(1);
      });

      it("no blocks: a conflict on a known chain, unknown otherwise", async () => {
        const { uri, genesis } = await newChain();
        expect(await store.appendBlocks(uri, genesis.hash, [], [])).toBe("conflict");
        expect(await store.appendBlocks(chainUri(), genesis.hash, [], [])).toBe("unknown");
      });

      it("appending to an unknown chain is unknown and stores nothing", async () => {
        const uri = chainUri();
        const b = makeBlock(1);
        expect(await store.appendBlocks(uri, "0".repeat(64), [b], [add("carol@example.com", 1)])).toBe("unknown");
        expect(await store.getChain(uri)).toBeUndefined();
        expect(await store.findBlock(b.hash)).toBeUndefined();
        expect(await store.wasEverMember(uri, "carol@example.com")).toBe(false);
      });

      it("findBlock: by hash across chains; unknown hash undefined", async () => {
        const one = await newChain();
        const two = await newChain();
        const b = makeBlock(1);
        await store.appendBlocks(two.uri, two.genesis.hash, [b], []);
        expect(await store.findBlock(one.genesis.hash)).toEqual({ chainUri: one.uri, position: 0 });
        expect(await store.findBlock(two.genesis.hash)).toEqual({ chainUri: two.uri, position: 0 });
        expect(await store.findBlock(b.hash)).toEqual({ chainUri: two.uri, position: 1 });
        expect(await store.findBlock("f".repeat(64))).toBeUndefined();
      });

      it("concurrent appends on one tail: exactly one is appended, the others conflict", async () => {
        const { uri, genesis } = await newChain(["alice@example.com"]);
        const candidates = Array.from({ length: 10 }, (_, i) => ({ block: makeBlock(1), entity: `user${i}@example.com` }));
        const outcomes = await Promise.all(candidates.map((c) => store.appendBlocks(uri, genesis.hash, [c.block], [add(c.entity, 1)])));
        expect(outcomes.filter((o) => o === "appended")).toHaveLength(1);
        expect(outcomes.filter((o) => o === "conflict")).toHaveLength(9);
        const winner = candidates[outcomes.indexOf("appended")]!;
        expect(await store.getChain(uri)).toMatchObject({ length: 2, tailHash: winner.block.hash });
        expect(await store.getBlocks(uri)).toHaveLength(2);
        for (const c of candidates) {
          expect(await store.wasEverMember(uri, c.entity)).toBe(c === winner);
          expect(await store.findBlock(c.block.hash)).toEqual(c === winner ? { chainUri: uri, position: 1 } : undefined);
        }
      });
    });

    describe("membership index", () => {
      it("isMemberAt follows add, remove and re-add over separate appends; wasEverMember remembers", async () => {
        const { uri, genesis } = await newChain(["alice@example.com", "bob@example.com"]);
        const b = [genesis, makeBlock(1), makeBlock(2), makeBlock(3), makeBlock(4)];
        expect(await store.appendBlocks(uri, b[0]!.hash, [b[1]!], [add("carol@example.com", 1)])).toBe("appended");
        expect(await store.appendBlocks(uri, b[1]!.hash, [b[2]!], [remove("bob@example.com", 2)])).toBe("appended");
        expect(await store.appendBlocks(uri, b[2]!.hash, [b[3]!], [remove("carol@example.com", 3)])).toBe("appended");
        expect(await store.appendBlocks(uri, b[3]!.hash, [b[4]!], [add("bob@example.com", 4), add("carol@example.com", 4)])).toBe("appended");
        expect(await memberships(uri, "alice@example.com", 5)).toEqual([true, true, true, true, true]);
        expect(await memberships(uri, "bob@example.com", 5)).toEqual([true, true, false, false, true]);
        expect(await memberships(uri, "carol@example.com", 5)).toEqual([false, true, true, false, true]);
        expect(await memberships(uri, "dave@example.com", 5)).toEqual([false, false, false, false, false]);
        expect(await store.wasEverMember(uri, "bob@example.com")).toBe(true);
        expect(await store.wasEverMember(uri, "carol@example.com")).toBe(true);
        expect(await store.wasEverMember(uri, "dave@example.com")).toBe(false);
      });

      it("a removed member stays a former member (wasEverMember) but not a member", async () => {
        const { uri, genesis } = await newChain(["alice@example.com", "bob@example.com"]);
        expect(await store.appendBlocks(uri, genesis.hash, [makeBlock(1)], [remove("bob@example.com", 1)])).toBe("appended");
        expect(await store.isMemberAt(uri, "bob@example.com", 1)).toBe(false);
        expect(await store.isMemberAt(uri, "bob@example.com", 0)).toBe(true);
        expect(await store.wasEverMember(uri, "bob@example.com")).toBe(true);
      });

      it("several changes of one entity in one append are applied in order", async () => {
        const { uri, genesis } = await newChain(["alice@example.com", "bob@example.com"]);
        const blocks = [makeBlock(1), makeBlock(2), makeBlock(3), makeBlock(4)];
        const changes = [
          add("dave@example.com", 1),
          remove("bob@example.com", 1),
          remove("dave@example.com", 2),
          add("bob@example.com", 2),
          add("dave@example.com", 3),
          remove("alice@example.com", 3),
          remove("bob@example.com", 4),
        ];
        expect(await store.appendBlocks(uri, genesis.hash, blocks, changes)).toBe("appended");
        expect(await memberships(uri, "alice@example.com", 5)).toEqual([true, true, true, false, false]);
        expect(await memberships(uri, "bob@example.com", 5)).toEqual([true, false, true, true, false]);
        expect(await memberships(uri, "dave@example.com", 5)).toEqual([false, true, false, true, true]);
      });

      it("an entity added and removed by the same block was never a member at any position", async () => {
        const { uri, genesis } = await newChain(["alice@example.com"]);
        expect(await store.appendBlocks(uri, genesis.hash, [makeBlock(1)], [add("eve@example.com", 1), remove("eve@example.com", 1)])).toBe("appended");
        expect(await memberships(uri, "eve@example.com", 2)).toEqual([false, false]);
      });

      it("membership is per chain", async () => {
        const one = await newChain(["alice@example.com"]);
        const two = await newChain(["bob@example.com"]);
        expect(await store.isMemberAt(one.uri, "bob@example.com", 0)).toBe(false);
        expect(await store.isMemberAt(two.uri, "alice@example.com", 0)).toBe(false);
        expect(await store.wasEverMember(one.uri, "bob@example.com")).toBe(false);
        expect(await store.appendBlocks(two.uri, two.genesis.hash, [makeBlock(1)], [remove("bob@example.com", 1)])).toBe("appended");
        expect(await store.isMemberAt(one.uri, "alice@example.com", 1)).toBe(true);
      });

      it("a chain with no genesis members", async () => {
        const { uri, genesis } = await newChain([]);
        expect(await store.isMemberAt(uri, "alice@example.com", 0)).toBe(false);
        expect(await store.appendBlocks(uri, genesis.hash, [makeBlock(1)], [add("alice@example.com", 1)])).toBe("appended");
        expect(await memberships(uri, "alice@example.com", 2)).toEqual([false, true]);
      });
    });

    describe("group keys", () => {
      const gk = (overrides: Partial<GkRecord> = {}): GkRecord => ({
        uri: gkUri(),
        requester: "alice@example.com",
        created: new Date(1_700_000_000_321),
        sealedKey: `kw1.sealed-gk-${randomUUID()}`,
        ...overrides,
      });

      it("getGk of an unknown uri is undefined", async () => {
        expect(await store.getGk(gkUri())).toBeUndefined();
      });

      it("an unbound GK round-trips without a block", async () => {
        const g = gk();
        await store.createGk(g);
        const got = await store.getGk(g.uri);
        expect(got).toEqual(g);
        expect(got!.created).toBeInstanceOf(Date);
        expect(got!.created.getTime()).toBe(1_700_000_000_321);
        expect(Object.hasOwn(got!, "block")).toBe(false);
      });

      it("a GK created bound round-trips its block, and cannot be bound again", async () => {
        const g = gk({ block: { hash: "a".repeat(64), chainUri: chainUri(), position: 7 } });
        await store.createGk(g);
        expect(await store.getGk(g.uri)).toEqual(g);
        expect(await store.bindGk(g.uri, { hash: "b".repeat(64), chainUri: chainUri(), position: 1 })).toBe(false);
        expect(await store.getGk(g.uri)).toEqual(g);
      });

      it("a duplicate uri fails", async () => {
        const g = gk();
        await store.createGk(g);
        await expect(store.createGk({ ...g, requester: "mallory@example.com" })).rejects.toThrow();
        expect(await store.getGk(g.uri)).toEqual(g);
      });

      it("concurrent creates: all stored, and a duplicate among them fails alone", async () => {
        const first = gk();
        await store.createGk(first);
        const fresh = Array.from({ length: 20 }, () => gk());
        const outcomes = await Promise.allSettled([
          ...fresh.slice(0, 10).map((g) => store.createGk(g)),
          store.createGk({ ...first, requester: "mallory@example.com" }),
          ...fresh.slice(10).map((g) => store.createGk(g)),
        ]);
        expect(outcomes.map((o) => o.status)).toEqual([...Array(10).fill("fulfilled"), "rejected", ...Array(10).fill("fulfilled")]);
        for (const g of fresh) expect(await store.getGk(g.uri)).toEqual(g);
        expect(await store.getGk(first.uri)).toEqual(first);
      });

      it("bindGk binds once: true, then false with the first block kept", async () => {
        const g = gk();
        await store.createGk(g);
        const first = { hash: "c".repeat(64), chainUri: chainUri(), position: 3 };
        expect(await store.bindGk(g.uri, first)).toBe(true);
        expect(await store.getGk(g.uri)).toEqual({ ...g, block: first });
        expect(await store.bindGk(g.uri, { hash: "d".repeat(64), chainUri: chainUri(), position: 4 })).toBe(false);
        expect((await store.getGk(g.uri))!.block).toEqual(first);
      });

      it("bindGk of an unknown GK is false and creates nothing", async () => {
        const uri = gkUri();
        expect(await store.bindGk(uri, { hash: "e".repeat(64), chainUri: chainUri(), position: 0 })).toBe(false);
        expect(await store.getGk(uri)).toBeUndefined();
      });

      it("concurrent binds: exactly one wins and its block is the one stored", async () => {
        const g = gk();
        await store.createGk(g);
        const blocks = Array.from({ length: 10 }, (_, i) => ({ hash: randomBytes(32).toString("hex"), chainUri: chainUri(), position: i }));
        const results = await Promise.all(blocks.map((b) => store.bindGk(g.uri, b)));
        expect(results.filter(Boolean)).toHaveLength(1);
        expect((await store.getGk(g.uri))!.block).toEqual(blocks[results.indexOf(true)]);
      });
    });
  });
}
