/**
 * "Is X a member at block H": latency of SqliteStore.isMemberAt, in process, on a chain of 10
 * blocks and on the large chain (built by the server into its data dir, or built here through the
 * store's own appendBlocks when asked). Every answer is checked against a replay of the chain's
 * operations. Prints one JSON line (MembershipReport). Configured by the MEMBERSHIP_JOB env (JSON).
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { SqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { MembershipChange, NewBlock } from "../../src/store/store.js";
import type { Operation } from "../../src/primitives/gmbc/types.js";
import { latencyStats, type LatencyStats } from "../lib/stats.js";
import { ALICE, bigChainOperations, bigEntity, ChainSigner, intervalsOf, memberAt, newMemberKey, prng, type BigChainShape } from "./blocks.js";

export interface MembershipJob {
  readonly shape: BigChainShape;
  /** The large chain already in this SQLite file (built by the server); else built here. */
  readonly bigDb?: string;
  readonly bigChainUri?: string;
  readonly smallBlocks: number;
  readonly queries: number;
  readonly warmupQueries: number;
  readonly batch: number;
  /** Small chains in the "many small chains" comparison (0: skip it). */
  readonly manySmall: number;
}

export interface ChainQueries {
  readonly label: string;
  /** Chains queried (a random one per query); `blocks`, `members` and `intervals` are per chain. */
  readonly chains: number;
  readonly blocks: number;
  readonly members: number;
  readonly intervals: number;
  readonly entitiesQueried: number;
  readonly latency: LatencyStats;
  /** Share of queries answered true. */
  readonly trueShare: number;
  readonly wrong: number;
}

export interface MembershipReport {
  readonly small: ChainQueries;
  /** The same small chain, created in the large chain's database (same B-tree depth). */
  readonly smallInBigDb: ChainQueries;
  readonly big: ChainQueries;
  /** Many small chains in one database, a random chain per query: small chains whose index is not all in CPU caches. */
  readonly manySmall?: ChainQueries;
  /** When the large chain was built here through SqliteStore.appendBlocks. */
  readonly storeBuild?: { seconds: number; blocksPerSec: number; signSeconds: number };
  readonly bigDbBytes: number;
  readonly queryPlan: string;
}

const job = JSON.parse(process.env.MEMBERSHIP_JOB ?? "{}") as MembershipJob;
const KMS = "kms://bench.invalid";
const tmp = mkdtempSync(join(os.tmpdir(), "keyward-gmbc-membership-"));

const newBlock = (position: number, jws: string, hash: string, creator: string): NewBlock => ({ position, hash, jws, creator, created: new Date() });

/**
 * A chain written straight through the store (createChain + appendBlocks, the SQL the server
 * runs), blocks signed by alice. The genesis is a stand-in signed by alice too: only the store's
 * handling is measured here, nobody verifies it.
 */
async function buildInStore(store: SqliteStore, uri: string, operations: Iterable<Operation[]>, batch: number): Promise<{ signMs: number; totalMs: number; blocks: number }> {
  const t0 = performance.now();
  const alice = await newMemberKey(ALICE, "alice-bench");
  const genesis = await new ChainSigner(alice, "0".repeat(64)).next([{ entity: ALICE, optype: "add" }]);
  await store.createChain({ uri, requester: ALICE, created: new Date() }, newBlock(0, genesis.jws, genesis.hash, KMS), [ALICE]);
  const signer = new ChainSigner(alice, genesis.hash);
  let position = 1;
  let tail = genesis.hash;
  let signMs = 0;
  let blocks: NewBlock[] = [];
  let changes: MembershipChange[] = [];
  const flush = async () => {
    if (!blocks.length) return;
    if ((await store.appendBlocks(uri, tail, blocks, changes)) !== "appended") throw new Error("store append refused");
    tail = blocks[blocks.length - 1]!.hash;
    blocks = [];
    changes = [];
  };
  for (const ops of operations) {
    const s = performance.now();
    const b = await signer.next(ops);
    signMs += performance.now() - s;
    blocks.push(newBlock(position, b.jws, b.hash, ALICE));
    for (const op of ops) changes.push({ entity: op.entity, optype: op.optype, position });
    position++;
    if (blocks.length === batch) await flush();
  }
  await flush();
  return { signMs, totalMs: performance.now() - t0, blocks: position };
}

interface Target {
  readonly label: string;
  readonly store: SqliteStore;
  /** The chains queried (one picked at random per query), all with the same operations. */
  readonly uris: readonly string[];
  readonly blocks: number;
  readonly entities: readonly string[];
  readonly intervals: Map<string, [number, number][]>;
}

function targetOf(label: string, store: SqliteStore, uris: readonly string[], blocks: number, entities: readonly string[], operations: Iterable<Operation[]>): Target {
  return { label, store, uris, blocks, entities, intervals: intervalsOf([ALICE], operations) };
}

/** `n` random (chain, entity, position) queries of a target, fixed by `seed`. */
function queriesOf(t: Target, n: number, seed: number): { uri: string; entity: string; position: number }[] {
  const rand = prng(seed);
  return Array.from({ length: n }, () => ({
    uri: t.uris.length === 1 ? t.uris[0]! : t.uris[Math.floor(rand() * t.uris.length)]!,
    entity: t.entities[Math.floor(rand() * t.entities.length)]!,
    position: Math.floor(rand() * t.blocks),
  }));
}

/**
 * `count` chains of the same small shape, written through the store (createChain + one
 * appendBlocks each) with stand-in JWS strings (random text; only the store is measured here).
 */
async function buildManySmall(store: SqliteStore, count: number, operations: Operation[][]): Promise<string[]> {
  const uris: string[] = [];
  const fakeBlock = (position: number, creator: string): NewBlock => {
    const jws = randomBytes(300).toString("base64url");
    return newBlock(position, jws, createHash("sha256").update(jws).digest("hex"), creator);
  };
  for (let c = 0; c < count; c++) {
    const uri = `${KMS}/blocks/many-${c}`;
    const genesis = fakeBlock(0, KMS);
    await store.createChain({ uri, requester: ALICE, created: new Date() }, genesis, [ALICE]);
    const blocks = operations.map((_, i) => fakeBlock(i + 1, ALICE));
    const changes = operations.flatMap((ops, i) => ops.map((op) => ({ entity: op.entity, optype: op.optype, position: i + 1 })));
    if ((await store.appendBlocks(uri, genesis.hash, blocks, changes)) !== "appended") throw new Error("store append refused");
    uris.push(uri);
  }
  return uris;
}

/** Runs the targets' queries interleaved in slices of 1,000, timing each call. */
async function measureAll(targets: Target[]): Promise<ChainQueries[]> {
  const warm = targets.map((t, i) => queriesOf(t, job.warmupQueries, 1000 + i));
  const measured = targets.map((t, i) => queriesOf(t, job.queries, 2000 + i));
  for (const [i, t] of targets.entries()) for (const q of warm[i]!) await t.store.isMemberAt(q.uri, q.entity, q.position);
  const lat = targets.map(() => new Float64Array(job.queries));
  const yes = targets.map(() => 0);
  const wrong = targets.map(() => 0);
  const SLICE = 1000;
  for (let from = 0; from < job.queries; from += SLICE) {
    for (const [i, t] of targets.entries()) {
      const qs = measured[i]!;
      const l = lat[i]!;
      for (let k = from; k < Math.min(from + SLICE, job.queries); k++) {
        const q = qs[k]!;
        const t0 = performance.now();
        const answer = await t.store.isMemberAt(q.uri, q.entity, q.position);
        l[k] = performance.now() - t0;
        if (answer) yes[i]!++;
        if (answer !== memberAt(t.intervals, q.entity, q.position)) wrong[i]!++;
      }
    }
  }
  return targets.map((t, i) => {
    let intervals = 0;
    let members = 0;
    for (const list of t.intervals.values()) {
      intervals += list.length;
      if (list[list.length - 1]![1] === Infinity) members++;
    }
    return {
      label: t.label,
      chains: t.uris.length,
      blocks: t.blocks,
      members,
      intervals,
      entitiesQueried: t.entities.length,
      latency: latencyStats(lat[i]!),
      trueShare: yes[i]! / job.queries,
      wrong: wrong[i]!,
    };
  });
}

async function main(): Promise<MembershipReport> {
  const shape = job.shape;
  const smallShape: BigChainShape = { ...shape, blocks: job.smallBlocks };
  const smallOps = () => bigChainOperations(smallShape);
  // Small chain: its own fresh database.
  const smallStore = new SqliteStore(join(tmp, "small.db"));
  const smallUri = `${KMS}/blocks/small`;
  await buildInStore(smallStore, smallUri, smallOps(), job.batch);

  // Large chain: the server's database, or built here.
  let storeBuild: MembershipReport["storeBuild"];
  let bigDb = job.bigDb;
  let bigUri = job.bigChainUri;
  if (!bigDb || !bigUri) {
    bigDb = join(tmp, "big.db");
    bigUri = `${KMS}/blocks/big`;
    const s = new SqliteStore(bigDb);
    const r = await buildInStore(s, bigUri, bigChainOperations(shape), job.batch);
    if (r.blocks !== shape.blocks) throw new Error(`built ${r.blocks} blocks, wanted ${shape.blocks}`);
    storeBuild = { seconds: r.totalMs / 1000, blocksPerSec: (r.blocks - 1) / (r.totalMs / 1000), signSeconds: r.signMs / 1000 };
    await s.close();
  }
  const bigStore = new SqliteStore(bigDb);
  const chain = await bigStore.getChain(bigUri);
  if (!chain || chain.length !== shape.blocks) throw new Error(`the large chain has ${chain?.length ?? 0} blocks, wanted ${shape.blocks}`);
  // The same small chain inside the large chain's database (B-tree depth of a busy KMS).
  const smallInBigUri = `${KMS}/blocks/small-in-big`;
  await buildInStore(bigStore, smallInBigUri, smallOps(), job.batch);

  const smallEntities = [ALICE, ...Array.from({ length: 2 * job.smallBlocks }, (_, i) => bigEntity(i + 1))];
  const bigEntities = [ALICE, ...Array.from({ length: shape.pool }, (_, i) => bigEntity(i + 1))];
  let manyStore: SqliteStore | undefined;
  const targets = [
    targetOf("small", smallStore, [smallUri], job.smallBlocks, smallEntities, smallOps()),
    targetOf("small, in the large chain's db", bigStore, [smallInBigUri], job.smallBlocks, smallEntities, smallOps()),
    targetOf("large", bigStore, [bigUri], shape.blocks, bigEntities, bigChainOperations(shape)),
  ];
  if (job.manySmall > 0) {
    manyStore = new SqliteStore(join(tmp, "many-small.db"));
    const uris = await buildManySmall(manyStore, job.manySmall, [...smallOps()]);
    targets.push(targetOf(`${job.manySmall.toLocaleString("en-US")} small chains, a random one per query`, manyStore, uris, job.smallBlocks, smallEntities, smallOps()));
  }
  const [small, smallInBigDb, big, manySmall] = await measureAll(targets);
  await manyStore?.close();
  await smallStore.close();
  await bigStore.close();
  const db = new Database(bigDb, { readonly: true });
  const plan = (db.prepare(
    "EXPLAIN QUERY PLAN SELECT 1 FROM memberships WHERE chain_uri = ? AND entity = ? AND start_pos <= ? AND (end_pos IS NULL OR end_pos > ?) LIMIT 1",
  ).all(bigUri, ALICE, 1, 1) as { detail: string }[]).map((r) => r.detail).join("; ");
  db.close();
  const bytes = (p: string) => {
    try {
      return statSync(p).size;
    } catch {
      return 0;
    }
  };
  return {
    small: small!,
    smallInBigDb: smallInBigDb!,
    big: big!,
    ...(manySmall ? { manySmall } : {}),
    ...(storeBuild ? { storeBuild } : {}),
    bigDbBytes: bytes(bigDb) + bytes(`${bigDb}-wal`),
    queryPlan: plan,
  };
}

try {
  const report = await main();
  console.log(JSON.stringify(report));
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
