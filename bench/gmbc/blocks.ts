/**
 * Blocks for the GMBC bench: a signer that extends a chain it tracks itself (the next block only
 * needs the hash of the previous JWS, which the signer produced), and the deterministic operation
 * sequence of the large chain (shared by the server build, the store-direct build and the
 * membership bench, which replays it for the expected answers).
 */
import type { JWK } from "jose";
import { exportJWK, generateKeyPair, importJWK } from "jose";
import { blockHash } from "../../src/primitives/block-hash.js";
import type { Operation } from "../../src/primitives/gmbc/types.js";
import { buildAppendedPayload, signAppendedBlock } from "../../src/primitives/gmbc/sign-block.js";

export const DOMAIN = "example.com";
export const ALICE = `alice@${DOMAIN}`;

export interface SignedBlock {
  readonly jws: string;
  readonly hash: string;
}

/** An ES256 entity key of `creator` (a device key, kid chosen here). */
export interface MemberKey {
  readonly creator: string;
  readonly kid: string;
  readonly privateKey: CryptoKey;
  /** The public JWK with kid, as registered with `create /entities/keys`. */
  readonly publicJwk: JWK & { kid: string };
}

export async function newMemberKey(creator: string, kid: string): Promise<MemberKey> {
  const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true });
  const { kty, crv, x, y } = await exportJWK(publicKey);
  return { creator, kid, privateKey, publicJwk: { kty, crv, x, y, kid } as JWK & { kid: string } };
}

/** The same member key in another process, from its private JWK (with kid). */
export async function memberKeyFromJwk(creator: string, jwk: JWK & { kid: string }): Promise<MemberKey> {
  const { kty, crv, x, y, d, kid } = jwk;
  const privateKey = (await importJWK({ kty, crv, x, y, d }, "ES256")) as CryptoKey;
  return { creator, kid, privateKey, publicJwk: { kty, crv, x, y, kid } as JWK & { kid: string } };
}

/** Signs block after block of one chain, each linked to the one before (`buildAppendedPayload` + `signAppendedBlock`). */
export class ChainSigner {
  constructor(
    private readonly key: MemberKey,
    private tail: string,
  ) {}

  get tailHash(): string {
    return this.tail;
  }

  async next(operations: readonly Operation[]): Promise<SignedBlock> {
    const payload = buildAppendedPayload({ antecedent: this.tail, creator: this.key.creator, operations });
    const jws = await signAppendedBlock(payload, this.key.privateKey, { alg: "ES256", kid: this.key.kid });
    const hash = await blockHash(jws);
    this.tail = hash;
    return { jws, hash };
  }
}

/** mulberry32: a small deterministic PRNG (the large chain must be the same in every process). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface BigChainShape {
  /** Blocks in the chain, genesis included. */
  readonly blocks: number;
  /** Members from block `members - 1` on (alice included). */
  readonly members: number;
  /** Entities m1..m<pool> that come and go (besides alice, a member throughout). */
  readonly pool: number;
  readonly seed: number;
}

export const bigEntity = (i: number): string => `m${i}@${DOMAIN}`;

/**
 * The operations of blocks 1..blocks-1 of the large chain, in order. Genesis: alice. Blocks
 * 1..members-1 add m1, m2, ... (one each), so that `members` entities are members. Every later
 * block removes one random member (never alice, the creator of every block) and adds one random
 * non-member of the pool: the membership stays at `members` while entities leave and come back,
 * so the index holds about `blocks` intervals, several per entity.
 */
export function* bigChainOperations(shape: BigChainShape): Generator<Operation[]> {
  const rand = prng(shape.seed);
  const members: number[] = []; // pool indexes, alice excluded
  const outside: number[] = [];
  for (let i = Math.max(1, shape.members); i <= shape.pool; i++) outside.push(i);
  const take = (list: number[], at: number): number => {
    const v = list[at]!;
    list[at] = list[list.length - 1]!;
    list.pop();
    return v;
  };
  for (let position = 1; position < shape.blocks; position++) {
    if (position < shape.members) {
      members.push(position);
      yield [{ entity: bigEntity(position), optype: "add" }];
    } else {
      const leaving = take(members, Math.floor(rand() * members.length));
      const joining = take(outside, Math.floor(rand() * outside.length));
      members.push(joining);
      outside.push(leaving);
      yield [
        { entity: bigEntity(leaving), optype: "remove" },
        { entity: bigEntity(joining), optype: "add" },
      ];
    }
  }
}

/** Membership intervals [start, end) per entity, from replaying the operations (end Infinity while a member). */
export function intervalsOf(genesisMembers: readonly string[], operations: Iterable<Operation[]>): Map<string, [number, number][]> {
  const intervals = new Map<string, [number, number][]>();
  const open = (e: string, at: number) => {
    let list = intervals.get(e);
    if (!list) intervals.set(e, (list = []));
    list.push([at, Infinity]);
  };
  for (const e of genesisMembers) open(e, 0);
  let position = 1;
  for (const ops of operations) {
    for (const op of ops) {
      if (op.optype === "add") open(op.entity, position);
      else intervals.get(op.entity)![intervals.get(op.entity)!.length - 1]![1] = position;
    }
    position++;
  }
  return intervals;
}

export function memberAt(intervals: Map<string, [number, number][]>, entity: string, position: number): boolean {
  return (intervals.get(entity) ?? []).some(([s, e]) => s <= position && position < e);
}
