import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { membershipAt } from "../../src/primitives/gmbc/membership.js";
import { parseBlock } from "../../src/primitives/gmbc/parse-block.js";
import type { ParsedBlock } from "../../src/primitives/gmbc/types.js";
import { startTestKms, type TestKms } from "../helpers/harness.js";
import { add, appendBlock, createGroup, gkKeyFor, Party, remove, type Chain } from "../helpers/gk-fixtures.js";

/**
 * PROTOCOL.md §9's three membership policies, over one scripted history run against three KMS
 * instances (KEYWARD_POLICY=1, 2, 3). "Member at block H" = member once H's own operations apply.
 *
 *   B0 genesis {alice, bob}                 → {alice, bob}
 *   B1 alice adds carol                     → {alice, bob, carol}
 *   B2 alice removes bob                    → {alice, carol}
 *   B3 alice adds dave                      → {alice, carol, dave}
 *   B4 alice re-adds bob                    → {alice, bob, carol, dave}
 *   B5 alice removes carol   (the tail)     → {alice, bob, dave}
 *   (later) B6 alice removes dave           → {alice, bob}
 *
 * GKs: gk@B0 (created with block = B0, right after genesis), gk@B1 (created unbound, bound to B1
 * once the whole history exists), gk@B3 (created with block = B3 when B3 was the tail).
 * erin has a registered key and is never a member.
 */

const POLICIES = [1, 2, 3] as const;
type Policy = (typeof POLICIES)[number];
const NAMES = ["alice", "bob", "carol", "dave", "erin"] as const;
type Name = (typeof NAMES)[number];
const GKS = ["gk@B0", "gk@B1", "gk@B3"] as const;
type GkLabel = (typeof GKS)[number];
const BOUND_AT: Record<GkLabel, number> = { "gk@B0": 0, "gk@B1": 1, "gk@B3": 3 };

/**
 * The expected answers, written out: one mark per policy, in the order 1 2 3 (✓ = 200, ✗ = 403).
 * 1 = member at the bound block; 2 = member at the tail (B5: alice, bob, dave); 3 = both.
 */
const EXPECTED_AT_B5: Record<GkLabel, Record<Name, string>> = {
  //          alice: 1 2 3     bob                 carol               dave                erin
  "gk@B0": { alice: "✓✓✓", bob: "✓✓✓" /* B0 and tail */, carol: "✗✗✗" /* joined at B1, left at B5 */, dave: "✗✓✗", erin: "✗✗✗" },
  "gk@B1": { alice: "✓✓✓", bob: "✓✓✓" /* at B1, and again at the tail */, carol: "✓✗✗", dave: "✗✓✗", erin: "✗✗✗" },
  "gk@B3": { alice: "✓✓✓", bob: "✗✓✗" /* removed at B2, back at B4 */, carol: "✓✗✗", dave: "✓✓✓", erin: "✗✗✗" },
};

/** After B6 (alice removes dave; tail {alice, bob}): only dave's answers under policies 2 and 3 change. */
const EXPECTED_AT_B6: Record<GkLabel, Record<Name, string>> = {
  "gk@B0": { alice: "✓✓✓", bob: "✓✓✓", carol: "✗✗✗", dave: "✗✗✗", erin: "✗✗✗" },
  "gk@B1": { alice: "✓✓✓", bob: "✓✓✓", carol: "✓✗✗", dave: "✗✗✗", erin: "✗✗✗" },
  "gk@B3": { alice: "✓✓✓", bob: "✗✓✗", carol: "✓✗✗", dave: "✓✗✗", erin: "✗✗✗" },
};

const entityOf = (name: Name) => `${name}@example.com`;
const allowed = (table: Record<GkLabel, Record<Name, string>>, gk: GkLabel, name: Name, policy: Policy) => [...table[gk][name]][policy - 1] === "✓";

/** The same table derived by replaying the chain (membershipAt), as a cross-check of the written one. */
function deriveTable(blocks: readonly ParsedBlock[]): Record<GkLabel, Record<Name, string>> {
  const tail = membershipAt(blocks, blocks.length - 1);
  const out = {} as Record<GkLabel, Record<Name, string>>;
  for (const gk of GKS) {
    const atBlock = membershipAt(blocks, BOUND_AT[gk]);
    const row = {} as Record<Name, string>;
    for (const name of NAMES) {
      const e = entityOf(name);
      const m1 = atBlock.has(e);
      const m2 = tail.has(e);
      row[name] = [m1, m2, m1 && m2].map((b) => (b ? "✓" : "✗")).join("");
    }
    out[gk] = row;
  }
  return out;
}

interface World {
  readonly policy: Policy;
  readonly kms: TestKms;
  readonly parties: Record<Name, Party>;
  readonly chain: Chain;
  readonly gks: Record<GkLabel, { uri: string; k: string }>;
}

/** Plays the scripted history on one KMS. */
async function buildWorld(policy: Policy): Promise<World> {
  const kms = await startTestKms({ env: { KEYWARD_POLICY: String(policy) } });
  const list = await Promise.all(NAMES.map((n) => Party.open(kms, entityOf(n))));
  const parties = Object.fromEntries(NAMES.map((n, i) => [n, list[i]!])) as Record<Name, Party>;
  const { alice } = parties;

  const createGk = async (block?: string) => {
    const r = await alice.createGk(block);
    expect(r.status, String(r.reason)).toBe(201);
    const { payload, k } = await gkKeyFor(alice, r.gk);
    expect(payload.block).toBe(block);
    return { uri: payload.uri, k };
  };

  const chain = await createGroup(alice, [entityOf("alice"), entityOf("bob")]); // B0
  const gk0 = await createGk(chain.blocks[0]!.hash);
  const gk1 = await createGk(); // bound to B1 later
  await appendBlock(chain, alice, [add(entityOf("carol"))]); // B1
  await appendBlock(chain, alice, [remove(entityOf("bob"))]); // B2
  await appendBlock(chain, alice, [add(entityOf("dave"))]); // B3
  const gk3 = await createGk(chain.blocks[3]!.hash);
  await appendBlock(chain, alice, [add(entityOf("bob"))]); // B4
  await appendBlock(chain, alice, [remove(entityOf("carol"))]); // B5
  const bind = await alice.bindGk(gk1.uri, chain.blocks[1]!.hash);
  expect(bind.status, String(bind.reason)).toBe(200);
  expect((await gkKeyFor(alice, bind.gk)).payload.block).toBe(chain.blocks[1]!.hash);
  return { policy, kms, parties, chain, gks: { "gk@B0": gk0, "gk@B1": gk1, "gk@B3": gk3 } };
}

/** Every (gk, entity) against one KMS: the status, and for a 200 the same k unwrapped with the entity's key. */
async function observe(world: World): Promise<Record<GkLabel, Record<Name, number>>> {
  const out = {} as Record<GkLabel, Record<Name, number>>;
  await Promise.all(
    GKS.map(async (gk) => {
      const row = {} as Record<Name, number>;
      await Promise.all(
        NAMES.map(async (name) => {
          const party = world.parties[name];
          const r = await party.getGk(world.gks[gk].uri);
          row[name] = r.status as number;
          if (r.status === 200) {
            expect((await gkKeyFor(party, r.gk)).k, `${gk} for ${name}`).toBe(world.gks[gk].k);
          } else {
            expect(r.gk).toBeUndefined();
            if (r.status === 403) expect(String(r.reason)).toMatch(/policy/i);
          }
        }),
      );
      out[gk] = row;
    }),
  );
  return out;
}

function expectedStatuses(table: Record<GkLabel, Record<Name, string>>, policy: Policy): Record<GkLabel, Record<Name, number>> {
  return Object.fromEntries(
    GKS.map((gk) => [gk, Object.fromEntries(NAMES.map((n) => [n, allowed(table, gk, n, policy) ? 200 : 403]))]),
  ) as Record<GkLabel, Record<Name, number>>;
}

/** The chain as the KMS returns it, parsed, checked against what the script appended. */
async function fetchChain(world: World): Promise<ParsedBlock[]> {
  const r = await world.parties.alice.call({ method: "retrieve", uri: world.chain.uri });
  expect(r.status, String(r.reason)).toBe(200);
  const blocks = await Promise.all((r.blocks as string[]).map((jws) => parseBlock(jws, { maxOperations: 10_000 })));
  expect(blocks.map((b) => b.hash)).toEqual(world.chain.blocks.map((b) => b.hash));
  return blocks;
}

describe("GK membership policies (PROTOCOL.md §9), one scripted history on three KMS instances", () => {
  const worlds = new Map<Policy, World>();
  beforeAll(async () => {
    for (const w of await Promise.all(POLICIES.map(buildWorld))) worlds.set(w.policy, w);
  });
  afterAll(async () => {
    await Promise.all([...worlds.values()].map((w) => w.kms.close()));
  });

  it("the written table is what a replay of the chain (membershipAt) gives", async () => {
    for (const world of worlds.values()) {
      const blocks = await fetchChain(world);
      expect(blocks).toHaveLength(6);
      expect(membershipAt(blocks, 5).members()).toEqual(["alice@example.com", "bob@example.com", "dave@example.com"]);
      expect(deriveTable(blocks)).toEqual(EXPECTED_AT_B5);
    }
  });

  it.each(POLICIES)("policy %i: every (gk, entity) → 200 (same k, the entity's own key) or 403, as the table says", async (policy) => {
    const world = worlds.get(policy)!;
    expect(world.kms.config.policy).toBe(policy);
    expect(await observe(world)).toEqual(expectedStatuses(EXPECTED_AT_B5, policy));
  });

  it.each(POLICIES)("policy %i: B6 (alice removes dave) changes policy 2/3 answers for dave immediately", async (policy) => {
    const world = worlds.get(policy)!;
    const dave = world.parties.dave;
    const daveNow = async () => Object.fromEntries(await Promise.all(GKS.map(async (gk) => [gk, (await dave.getGk(world.gks[gk].uri)).status]))) as Record<GkLabel, number>;
    const expectDave = (table: Record<GkLabel, Record<Name, string>>) =>
      Object.fromEntries(GKS.map((gk) => [gk, allowed(table, gk, "dave", policy) ? 200 : 403]));

    expect(await daveNow()).toEqual(expectDave(EXPECTED_AT_B5));
    await appendBlock(world.chain, world.parties.alice, [remove(entityOf("dave"))]); // B6
    expect(await daveNow()).toEqual(expectDave(EXPECTED_AT_B6)); // the very next request

    const blocks = await fetchChain(world);
    expect(deriveTable(blocks)).toEqual(EXPECTED_AT_B6);
    expect(await observe(world)).toEqual(expectedStatuses(EXPECTED_AT_B6, policy));
    // Written out for dave: policy 1 keeps gk@B3 (member at B3); 2 and 3 refuse everything now.
    const changed = GKS.filter((gk) => allowed(EXPECTED_AT_B5, gk, "dave", policy) !== allowed(EXPECTED_AT_B6, gk, "dave", policy));
    expect(changed).toEqual(policy === 1 ? [] : policy === 2 ? ["gk@B0", "gk@B1", "gk@B3"] : ["gk@B3"]);
  });
});
