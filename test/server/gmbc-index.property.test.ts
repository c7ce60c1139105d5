import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { blockHash } from "../../src/primitives/block-hash.js";
import { membershipAt, parseBlock, type Operation, type OpType } from "../../src/primitives/gmbc/index.js";
import type { Store } from "../../src/store/store.js";
import { startTestKms, type RawClient, type TestKms } from "../helpers/harness.js";
import { append, chainSnapshot, channel, createChain, newDevice, registerDevice, signBlock, type Device } from "../helpers/gmbc-fixtures.js";

/**
 * The membership index (the store's `isMemberAt`, what the KMS decides appends, reads and GK
 * policies from) must agree, at every position of every chain, with a replay of the chain's
 * blocks (`membershipAt`), whatever sequence of appends, good and bad, the chain went through.
 */

const ENTITIES = ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"] as const;
/** Ways of writing the same entity (§1: acct: prefix accepted, domain compared in lower case). */
const spell = (entity: string, how: number): string => {
  const [local, domain] = entity.split("@") as [string, string];
  return [entity, `acct:${entity}`, `${local}@${domain.toUpperCase()}`, `acct:${local}@${domain[0]!.toUpperCase()}${domain.slice(1)}`][how]!;
};

interface OpSpec {
  e: number;
  /** "toggle": whatever applies as the block is built (add a non-member, remove a member), so that many attempts succeed. */
  optype: OpType | "toggle";
  spelling: number;
}
interface BlockSpec {
  /** An index into ENTITIES, or with `anyone` false, into the current members (so that most creators are members). */
  creator: number;
  anyone: boolean;
  ops: OpSpec[];
}
interface Attempt {
  stale: boolean;
  blocks: BlockSpec[];
}
/** A block as it is sent: entities normalized (the spelling is applied when signing). */
interface ConcreteBlock {
  creator: string;
  ops: { entity: string; optype: OpType; spelling: number }[];
}

const opArb: fc.Arbitrary<OpSpec> = fc.record({
  e: fc.integer({ min: 0, max: 3 }),
  optype: fc.constantFrom<OpType | "toggle">("add", "remove", "toggle", "toggle"),
  spelling: fc.integer({ min: 0, max: 3 }),
});
const blockArb: fc.Arbitrary<BlockSpec> = fc.record({
  creator: fc.integer({ min: 0, max: 3 }),
  anyone: fc.integer({ min: 0, max: 3 }).map((n) => n === 0),
  ops: fc.uniqueArray(opArb, { selector: (o) => o.e, minLength: 1, maxLength: 3 }),
});
const attemptArb: fc.Arbitrary<Attempt> = fc.record({
  stale: fc.integer({ min: 0, max: 5 }).map((n) => n === 0),
  blocks: fc.array(blockArb, { minLength: 1, maxLength: 2 }),
});
const genesisArb = fc.uniqueArray(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 4 });

/** Resolves creators and "toggle" operations against the membership as the blocks would leave it. */
function concretize(members: ReadonlySet<string>, attempt: Attempt): ConcreteBlock[] {
  const m = new Set(members);
  return attempt.blocks.map((b) => {
    const current = [...m].sort();
    const creator = b.anyone || current.length === 0 ? ENTITIES[b.creator]! : current[b.creator % current.length]!;
    const ops = b.ops.map((op) => {
      const entity = ENTITIES[op.e]!;
      const optype: OpType = op.optype === "toggle" ? (m.has(entity) ? "remove" : "add") : op.optype;
      return { entity, optype, spelling: op.spelling };
    });
    for (const op of ops) {
      if (op.optype === "add") m.add(op.entity);
      else m.delete(op.entity);
    }
    return { creator, ops };
  });
}

/** What the profile says the KMS answers (§8's order), and the membership after a success. */
function expected(members: ReadonlySet<string>, stale: boolean, blocks: readonly ConcreteBlock[]): { status: number; after: Set<string> } {
  if (stale) return { status: 409, after: new Set(members) };
  const m = new Set(members);
  for (const b of blocks) {
    if (!m.has(b.creator)) return { status: 403, after: new Set(members) };
    for (const op of b.ops) {
      if (op.optype === "add" ? m.has(op.entity) : !m.has(op.entity)) return { status: 400, after: new Set(members) };
    }
    for (const op of b.ops) {
      if (op.optype === "add") m.add(op.entity);
      else m.delete(op.entity);
    }
  }
  return { status: 200, after: m };
}

describe("membership index = replay (property, against a real KMS)", () => {
  let kms: TestKms;
  let relay: RawClient;
  let store: Store;
  const devices = new Map<string, Device>();

  beforeAll(async () => {
    kms = await startTestKms();
    store = kms.kms.core.services.store;
    for (const [i, entity] of ENTITIES.entries()) {
      const device = await newDevice(entity, `${entity.split("@")[0]}-dev`, i % 2 === 1 ? "PS256" : "ES256");
      await registerDevice(await channel(kms, entity), device);
      devices.set(entity, device);
    }
    // Every append is relayed by one requester that is never a member (§8: blocks are self-authenticating).
    relay = await channel(kms, "relay@example.com");
  });
  afterAll(async () => {
    await kms.close();
  });

  it("random append sequences: statuses follow §8, refusals change nothing, and isMemberAt equals membershipAt at every position", async () => {
    const statuses: number[] = [];
    await fc.assert(
      fc.asyncProperty(genesisArb, fc.array(attemptArb, { minLength: 1, maxLength: 15 }), async (genesisMembers, attempts) => {
        const chain = await createChain(relay, genesisMembers.map((i) => ENTITIES[i]!));
        let members = new Set<string>(genesisMembers.map((i) => ENTITIES[i]!));
        const hashes = [chain.hash];

        for (const attempt of attempts) {
          const tail = hashes[hashes.length - 1]!;
          let antecedent = attempt.stale ? (hashes.length > 1 ? hashes[hashes.length - 2]! : randomBytes(32).toString("hex")) : tail;
          const blocks = concretize(members, attempt);
          const jwsList: string[] = [];
          for (const b of blocks) {
            const operations: Operation[] = b.ops.map((op) => ({ entity: spell(op.entity, op.spelling), optype: op.optype }));
            const jws = await signBlock(devices.get(b.creator)!, { antecedent, creator: spell(b.creator, b.ops.length % 4), operations });
            jwsList.push(jws);
            antecedent = await blockHash(jws);
          }

          const want = expected(members, attempt.stale, blocks);
          statuses.push(want.status);
          const before = chainSnapshot(kms, chain.uri);
          const res = await append(relay, chain.uri, jwsList);
          expect({ form: res.form, status: res.payload.status }, String(res.payload.reason)).toEqual({ form: "jwe", status: want.status });
          const after = chainSnapshot(kms, chain.uri);
          if (want.status === 200) {
            const last = await blockHash(jwsList[jwsList.length - 1]!);
            expect(res.payload.tail).toBe(last);
            expect(after.chain).toMatchObject({ length: before.chain!.length + jwsList.length, tail_hash: last });
            expect(after.blocks.slice(0, before.blocks.length)).toEqual(before.blocks);
            expect(after.blocks.slice(before.blocks.length).map((b) => b.jws)).toEqual(jwsList);
            for (const jws of jwsList) hashes.push(await blockHash(jws));
            members = want.after;
          } else {
            expect(after).toEqual(before);
          }
        }

        // Replay the stored chain and compare with the index, position by position.
        const stored = await store.getBlocks(chain.uri);
        expect(stored.map((b) => b.hash)).toEqual(hashes);
        const parsed = await Promise.all(stored.map((b) => parseBlock(b.jws, { maxOperations: 10_000 })));
        for (let p = 0; p < parsed.length; p++) {
          const replay = membershipAt(parsed, p);
          for (const e of ENTITIES) {
            expect(await store.isMemberAt(chain.uri, e, p), `${e} at position ${p}`).toBe(replay.has(e));
          }
        }
        expect(membershipAt(parsed, parsed.length - 1).members()).toEqual([...members].sort());
        for (const e of ENTITIES) {
          const everMember = parsed.some((_, p) => membershipAt(parsed, p).has(e));
          expect(await store.wasEverMember(chain.uri, e), `${e} ever a member`).toBe(everMember);
        }
      }),
      { numRuns: 15 },
    );
    // Every kind of outcome must have been exercised, or the property says little.
    for (const status of [200, 400, 403, 409]) expect(statuses, `no attempt ended ${status}`).toContain(status);
  }, 120_000);
});
